//! The kernel's AF_XDP and BPF interfaces that the crates do not wrap:
//! socket statistics, a map's lookup-and-delete, and shared mappings of
//! mmapable BPF arrays.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    ptr::NonNull,
};

use super::SyscallError;

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a hash map (Linux >= 5.14): the
/// value under `key`, removed in the same call, which narrows the window
/// in which a packet the program counts into it is lost to a few
/// instructions in the kernel. `None` if the key is absent. Older kernels
/// refuse the command for hash maps (`ENOTSUPP` or `EINVAL`); the caller
/// then reads and removes in two calls.
///
/// Taking aya's map keeps this safe: aya checked the map's key and value
/// sizes against `K` and `V` when it made the handle, and the kernel
/// writes exactly one `V`.
pub fn bpf_lookup_and_delete<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    key: &K,
) -> Result<Option<V>, SyscallError> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    /// The `bpf_attr` member of the `BPF_MAP_*_ELEM` commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd().cast_unsigned(),
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the
    // kernel reads a K at `key` and writes a V at `value` (the map's own
    // sizes, which aya checked against K and V).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        let e = SyscallError::last("bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)");
        return match e.io_error.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel wrote the whole value; V is plain data (Pod).
    Ok(Some(unsafe { value.assume_init() }))
}

/// `ENOTSUPP`, the kernel's "operation not supported" (not in libc).
pub const ENOTSUPP: i32 = 524;

/// The kernel's statistics of one AF_XDP socket (struct xdp_statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl XskStats {
    /// Names of [`Self::values`], in order.
    pub const NAMES: [&'static str; 6] = tandem_control::stats::XSK_STATS;

    pub fn values(&self) -> [u64; 6] {
        [
            self.rx_dropped,
            self.rx_invalid_descs,
            self.tx_invalid_descs,
            self.rx_ring_full,
            self.rx_fill_ring_empty_descs,
            self.tx_ring_empty_descs,
        ]
    }
}

const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;

/// getsockopt(XDP_STATISTICS) on an AF_XDP socket.
pub fn xsk_stats(fd: RawFd) -> Result<XskStats, SyscallError> {
    let mut st = XskStats::default();
    let mut len = size_of::<XskStats>() as libc::socklen_t;
    // SAFETY: st is a repr(C) struct of the kernel's layout and len its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_STATISTICS,
            (&raw mut st).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(SyscallError::last("getsockopt(XDP_STATISTICS)"));
    }
    Ok(st)
}

/// A shared read-write mapping of the first `len` bytes of the values of
/// the mmapable array behind `fd` (the kernel refuses a length beyond it).
pub fn map_shared<T>(fd: &OwnedFd, len: usize) -> io::Result<NonNull<T>> {
    // SAFETY: a fresh mapping, checked before use; it aliases nothing in
    // this process.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)
}

/// Unmaps what [`map_shared`] mapped.
///
/// # Safety
/// `p` and `len` are a mapping [`map_shared`] returned, unmapped once,
/// and nothing refers into it afterwards.
pub unsafe fn unmap<T>(p: NonNull<T>, len: usize) {
    // SAFETY: the caller's.
    unsafe { libc::munmap(p.as_ptr().cast(), len) };
}

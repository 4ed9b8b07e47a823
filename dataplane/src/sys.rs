//! The few libc calls tandemd makes itself, each behind a safe wrapper.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// A failed system call.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {io_error}")]
pub struct SyscallError {
    pub call: &'static str,
    #[source]
    pub io_error: io::Error,
}

impl SyscallError {
    fn last(call: &'static str) -> Self {
        Self {
            call,
            io_error: io::Error::last_os_error(),
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (control
/// threads; workers keep a [`Poller`]).
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> bool {
    Poller::new(fds).wait(timeout)
}

/// A fixed set of descriptors to wait on, built once.
pub struct Poller {
    pfds: Vec<libc::pollfd>,
}

impl Poller {
    pub fn new(fds: &[RawFd]) -> Self {
        Self {
            pfds: fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Waits until one descriptor is readable or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: pfds is a valid, initialised array of its length.
        let r = unsafe { libc::poll(self.pfds.as_mut_ptr(), self.pfds.len() as libc::nfds_t, ms) };
        r > 0
    }
}

/// An eventfd: one thread wakes another out of poll().
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> Result<Self, SyscallError> {
        // SAFETY: plain eventfd(2); the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(SyscallError::last("eventfd"));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer; a full counter
        // (EAGAIN) already means "readable", so the result is not needed.
        let _ = unsafe { libc::write(self.fd(), one.as_ptr().cast(), 8) };
    }

    /// Consumes pending signals.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a valid buffer; EAGAIN (nothing
        // pending) is fine.
        let _ = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

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

/// The interface index of `name`.
pub fn if_index(name: &str) -> Result<u32, SyscallError> {
    let c = CString::new(name).map_err(|_| SyscallError {
        call: "if_nametoindex",
        io_error: io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"),
    })?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(SyscallError::last("if_nametoindex"));
    }
    Ok(idx)
}

/// Number of rx queues of `name`, from sysfs.
pub fn rx_queue_count(name: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map_or(1, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .max(1)
}

/// Raw IP sockets that hand datagrams to the kernel's output path, which
/// routes them and resolves the neighbour (queueing the datagram meanwhile).
#[derive(Debug)]
pub struct PuntSocket {
    v4: OwnedFd,
    v6: OwnedFd,
}

fn raw_socket(domain: libc::c_int) -> Result<OwnedFd, SyscallError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(SyscallError::last("socket(SOCK_RAW)"));
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl PuntSocket {
    /// IPPROTO_RAW implies IP_HDRINCL: the datagram goes out as written.
    pub fn new() -> Result<Self, SyscallError> {
        Ok(Self {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
        })
    }

    /// Sends an IPv4 datagram (header included) towards `dst`.
    pub fn send_v4(&self, datagram: &[u8], dst: Ipv4Addr) -> Result<(), SyscallError> {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: datagram and sa are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.v4.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                libc::MSG_DONTWAIT,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SyscallError::last("sendto(raw v4)"));
        }
        Ok(())
    }

    /// Sends an IPv6 datagram (header included) towards `dst`.
    pub fn send_v6(&self, datagram: &[u8], dst: Ipv6Addr) -> Result<(), SyscallError> {
        let sa = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: dst.octets(),
            },
            sin6_scope_id: 0,
        };
        // SAFETY: datagram and sa are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.v6.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                libc::MSG_DONTWAIT,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SyscallError::last("sendto(raw v6)"));
        }
        Ok(())
    }
}

/// A packet socket that sends whole Ethernet frames out of a chosen
/// interface: gratuitous ARP on takeover.
#[derive(Debug)]
pub struct FrameSocket {
    fd: OwnedFd,
}

impl FrameSocket {
    pub fn new() -> Result<Self, SyscallError> {
        // Protocol 0: this socket only sends, it receives nothing.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(SyscallError::last("socket(AF_PACKET)"));
        }
        // SAFETY: fd is a freshly created descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Sends `frame` (Ethernet header included) out of `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> Result<(), SyscallError> {
        let mut sa = zeroed_ll();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex.cast_signed();
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sa are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SyscallError::last("sendto(AF_PACKET)"));
        }
        Ok(())
    }
}

fn zeroed_ll() -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: 0,
        sll_protocol: 0,
        sll_ifindex: 0,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// A gratuitous ARP request for `addr` from `mac`: broadcast, sender and
/// target protocol address both `addr` (RFC 5227's ARP announcement),
/// which neighbours take to update an existing entry at once.
pub fn garp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address zero, as an announcement has it.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Whether the kernel forwards IPv6 on `ifname`
/// (`net.ipv6.conf.<ifname>.forwarding`); false when it cannot be read.
pub fn ipv6_forwarding(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

/// An unsolicited neighbour advertisement for `addr` from `mac` (RFC 4861
/// 7.2.6): to all nodes (ff02::1), from `addr` itself, hop limit 255,
/// Override set so that neighbours replace the link-layer address they
/// have (an entry they do not have is not created), Router as the node's
/// own advertisements have it, and the target link-layer address option.
pub fn unsolicited_na(mac: [u8; 6], addr: Ipv6Addr, router: bool) -> [u8; 86] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; 86];
    f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58; // ICMPv6
    f[21] = 255;
    f[22..38].copy_from_slice(&addr.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    f[54] = 136; // neighbour advertisement
    f[58] = if router { 0x80 } else { 0 } | 0x20;
    f[62..78].copy_from_slice(&addr.octets());
    f[78] = 2; // target link-layer address
    f[79] = 1; // in units of 8 bytes
    f[80..86].copy_from_slice(&mac);
    // The ICMPv6 checksum covers a pseudo-header: source, destination,
    // upper-layer length and next header.
    let mut pseudo = [0u8; 40 + 32];
    pseudo[..32].copy_from_slice(&f[22..54]);
    pseudo[32..36].copy_from_slice(&32u32.to_be_bytes());
    pseudo[39] = 58;
    pseudo[40..].copy_from_slice(&f[54..86]);
    let sum = crate::wire::checksum(&pseudo, 0);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it.
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: lim is a valid rlimit; failure is harmless on memcg-accounted kernels.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const lim) };
    if r != 0 {
        tracing::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}",
            io::Error::last_os_error()
        );
    }
}

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

/// `SO_TIMESTAMPNS` (the 64-bit-time_t "old" value, as on x86-64 and
/// arm64) and its control message type.
const SO_TIMESTAMPNS: libc::c_int = 35;
/// `ICMP_FILTER` on a raw ICMP socket (linux/icmp.h): a bitmask of ICMP
/// types to drop.
const ICMP_FILTER: libc::c_int = 1;

/// A raw ICMP socket bound to one interface and test address, for
/// probes: it sends echo requests and receives only echo replies, each
/// with the kernel's receive time.
pub struct IcmpSocket {
    fd: OwnedFd,
}

impl IcmpSocket {
    pub fn new(ifname: &str, src: Ipv4Addr) -> Result<Self, SyscallError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(SyscallError::last("socket(AF_INET, SOCK_RAW, ICMP)"));
        }
        // SAFETY: fd is a freshly created descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let dev = CString::new(ifname).map_err(|_| SyscallError {
            call: "SO_BINDTODEVICE",
            io_error: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // Everything but echo replies (type 0) is dropped in the kernel.
        let filter: u32 = !1;
        let on: libc::c_int = 1;
        for (level, name, ptr, len, call) in [
            (
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast::<libc::c_void>(),
                dev.as_bytes_with_nul().len(),
                "setsockopt(SO_BINDTODEVICE)",
            ),
            (
                libc::SOL_RAW,
                ICMP_FILTER,
                (&raw const filter).cast(),
                size_of::<u32>(),
                "setsockopt(ICMP_FILTER)",
            ),
            (
                libc::SOL_SOCKET,
                SO_TIMESTAMPNS,
                (&raw const on).cast(),
                size_of::<libc::c_int>(),
                "setsockopt(SO_TIMESTAMPNS)",
            ),
        ] {
            // SAFETY: ptr points at len readable bytes that outlive the call.
            let r = unsafe { libc::setsockopt(raw, level, name, ptr, len as libc::socklen_t) };
            if r < 0 {
                return Err(SyscallError::last(call));
            }
        }
        let sa = sockaddr_in(src);
        // SAFETY: sa is a valid sockaddr_in for the length given.
        let r = unsafe {
            libc::bind(
                raw,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SyscallError::last("bind(ICMP test address)"));
        }
        Ok(Self { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one ICMP message (the kernel adds the IP header).
    pub fn send(&self, dst: Ipv4Addr, msg: &[u8]) -> Result<(), SyscallError> {
        let sa = sockaddr_in(dst);
        // SAFETY: msg and sa are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SyscallError::last("sendto(ICMP)"));
        }
        Ok(())
    }

    /// One received packet (IP header first) and the kernel's receive
    /// time (unix ns, 0 if absent); `None` when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Option<(usize, u64)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: an all-zero msghdr is valid; the pointers set below
        // outlive the call.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &raw mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cmsg.as_mut_ptr().cast();
        mh.msg_controllen = size_of_val(&cmsg);
        // SAFETY: mh describes valid buffers.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut mh, libc::MSG_DONTWAIT) };
        let n = usize::try_from(n).ok()?;
        let mut rx_ns = 0;
        // SAFETY: walking the control messages the kernel wrote into mh.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const mh) };
        while !c.is_null() {
            // SAFETY: c points at a complete cmsghdr inside cmsg.
            let h = unsafe { &*c };
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == SO_TIMESTAMPNS {
                // SAFETY: SCM_TIMESTAMPNS carries a struct timespec.
                let ts: libc::timespec =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                rx_ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(ts.tv_nsec).unwrap_or(0);
            }
            // SAFETY: as above; NXTHDR returns null past the end.
            c = unsafe { libc::CMSG_NXTHDR(&raw const mh, c) };
        }
        Some((n.min(buf.len()), rx_ns))
    }
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    #[test]
    fn unsolicited_na_parses_with_a_valid_checksum_and_overrides() {
        let mac = [2, 0, 0, 0, 0, 0xa1];
        let addr: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        for router in [false, true] {
            let f = unsolicited_na(mac, addr, router);
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6: {:?}", p.net);
            };
            let h = ip.header();
            assert_eq!(h.source_addr(), addr);
            assert_eq!(h.destination_addr(), "ff02::1".parse::<Ipv6Addr>().unwrap());
            assert_eq!(
                h.hop_limit(),
                255,
                "RFC 4861 drops NAs with another hop limit"
            );
            let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
                panic!("not ICMPv6: {:?}", p.transport);
            };
            assert!(icmp.is_checksum_valid(h.source(), h.destination()));
            let Icmpv6Type::NeighborAdvertisement(na) = icmp.icmp_type() else {
                panic!("not an NA: {:?}", icmp.icmp_type());
            };
            assert_eq!(
                (na.router, na.solicited, na.r#override),
                (router, false, true)
            );
            // Target, then the target link-layer address option.
            let body = icmp.payload();
            assert_eq!(body[..16], addr.octets());
            assert_eq!(body[16..18], [2, 1]);
            assert_eq!(body[18..24], mac);
        }
    }

    #[test]
    fn garp_announces_the_address_from_the_mac() {
        let f = garp_frame([2, 0, 0, 0, 0, 0xa1], Ipv4Addr::new(198, 18, 1, 1));
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Arp(arp)) = &p.net else {
            panic!("not ARP: {:?}", p.net);
        };
        assert_eq!(arp.sender_protocol_addr(), [198, 18, 1, 1]);
        assert_eq!(arp.target_protocol_addr(), [198, 18, 1, 1]);
        assert_eq!(arp.sender_hw_addr(), [2, 0, 0, 0, 0, 0xa1]);
        assert_eq!(f[..6], [0xff; 6]);
    }
}

//! The libc calls tandemd makes besides those every part of the node
//! makes (waiting, randomness, the clock: `tandem_control::sys`, re-exported
//! here), each behind a safe wrapper.
//!
//! Design: every unsafe call into the OS lives in this folder: eventfds,
//! interfaces and limits here, sockets in [`socket`], the AF_XDP and BPF
//! calls the crates do not wrap (and shared mappings of BPF arrays) in
//! [`xdp`].
#![expect(
    unsafe_code,
    reason = "the data plane's one folder that calls the C library directly"
)]

mod socket;
mod xdp;

pub use tandem_control::sys::{Poller, monotonic_ns, poll_readable, random_bytes};

pub use self::{
    socket::{FrameSocket, IcmpSocket, PuntSocket},
    xdp::{ENOTSUPP, XskStats, bpf_lookup_and_delete, map_shared, unmap, xsk_stats},
};

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
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

/// Whether the kernel forwards IPv6 on `ifname`
/// (`net.ipv6.conf.<ifname>.forwarding`); false when it cannot be read.
pub fn ipv6_forwarding(ifname: &str) -> bool {
    forwarding("ipv6", ifname)
}

/// Whether the kernel forwards `family` ("ipv4" or "ipv6") on `ifname`
/// (`net.<family>.conf.<ifname>.forwarding`); false when it cannot be
/// read.
pub fn forwarding(family: &str, ifname: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{ifname}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
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

/// Sends each of `msgs` as one datagram on the connected socket `fd`
/// with as few `sendmmsg(2)` calls as the kernel allows (one, unless it
/// stops early); how many went. A message the kernel refuses (a full
/// buffer, an unreachable collector) is skipped, not retried.
pub fn send_many(fd: RawFd, msgs: &[&[u8]]) -> usize {
    const MAX: usize = 64;
    let mut sent = 0;
    let mut at = 0;
    while at < msgs.len() {
        let chunk = &msgs[at..msgs.len().min(at + MAX)];
        let mut iov: [libc::iovec; MAX] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX];
        // SAFETY: zeroed msghdrs are valid (no name, no control data).
        let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
        for (i, m) in chunk.iter().enumerate() {
            iov[i] = libc::iovec {
                iov_base: m.as_ptr().cast_mut().cast(),
                iov_len: m.len(),
            };
            hdrs[i].msg_hdr.msg_iov = &raw mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs[..chunk.len()]` point at iovecs over live buffers
        // that the kernel only reads.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                chunk.len() as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if matches!(e, Some(libc::EAGAIN | libc::ENOBUFS)) {
                // The socket's buffer is full: the rest are lost too.
                break;
            }
            // Another error (an earlier datagram's port unreachable, say)
            // cost the first message: skip it and go on.
            at += 1;
            continue;
        }
        let n = n.unsigned_abs() as usize;
        sent += n;
        at += n;
    }
    sent
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
pub fn nice_this_thread(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid(2) and setpriority(2) on this thread's id, which
    // PRIO_PROCESS takes on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid().cast_unsigned(), nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

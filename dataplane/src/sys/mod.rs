//! The few libc calls tandemd makes itself, each behind a safe wrapper.
//!
//! Design: every unsafe call into the OS lives in this folder: waiting
//! and waking here, sockets in [`socket`], the AF_XDP and BPF calls the
//! crates do not wrap in [`xdp`].

mod socket;
mod xdp;

pub use self::{
    socket::{FrameSocket, IcmpSocket, PuntSocket},
    xdp::{ENOTSUPP, XskStats, bpf_lookup_and_delete, map_shared, unmap, xsk_stats},
};

use std::{
    ffi::CString,
    io,
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
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))
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

/// CLOCK_MONOTONIC_COARSE now, in nanoseconds (the clock the workers
/// publish to the XDP program, which stamps the flow entries with it).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

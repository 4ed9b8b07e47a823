//! The libc calls every part of the node makes, each behind a safe
//! wrapper: waiting on descriptors, randomness, the coarse monotonic
//! clock. The data plane's own (its sockets, AF_XDP statistics, BPF maps,
//! shared mappings of them) are in `tandem_dataplane::sys`, which uses
//! these rather than calling them again.
#![expect(
    unsafe_code,
    reason = "the one module of this crate that calls the C library directly"
)]

use std::{io, os::fd::RawFd, time::Duration};

/// A set of descriptors to wait on, reused from one wait to the next.
#[derive(Debug, Default)]
pub struct Poller {
    pfds: Vec<libc::pollfd>,
}

impl Poller {
    /// Waits for any of `fds` to be readable.
    pub fn new(fds: &[RawFd]) -> Self {
        let mut p = Self::default();
        for &fd in fds {
            p.push(fd, true, false);
        }
        p
    }

    /// Forgets every descriptor, keeping the room.
    pub fn clear(&mut self) {
        self.pfds.clear();
    }

    /// Adds `fd`, waited on for reading and/or writing; its index.
    pub fn push(&mut self, fd: RawFd, read: bool, write: bool) -> usize {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        self.pfds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
        self.pfds.len() - 1
    }

    /// Waits until a descriptor is ready or `timeout` passes (rounded up to
    /// the millisecond: waking early would spin until the deadline);
    /// whether any is ready. An interrupted wait returns false.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: pfds is a valid, initialised array of its length.
        let r = unsafe { libc::poll(self.pfds.as_mut_ptr(), self.pfds.len() as libc::nfds_t, ms) };
        r > 0
    }

    /// Whether descriptor `i` was readable after the last wait.
    pub fn readable(&self, i: usize) -> bool {
        self.pfds
            .get(i)
            .is_some_and(|p| p.revents & libc::POLLIN != 0)
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> bool {
    Poller::new(fds).wait(timeout)
}

/// `N` bytes from the kernel's random source (getrandom(2)).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut at = 0;
    while at < N {
        // SAFETY: getrandom(2) writes at most `N - at` bytes at `b[at..]`.
        let r = unsafe { libc::getrandom(b[at..].as_mut_ptr().cast(), N - at, 0) };
        if let Ok(n) = usize::try_from(r) {
            at += n;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(b)
}

/// CLOCK_MONOTONIC_COARSE now, in nanoseconds: the clock the workers
/// publish to the XDP program, which stamps flow entries with it.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// The group whose members may read a daemon's counters and use its
/// control socket (the segment is 0640, the socket 0660, both root's and
/// this group's when it exists).
pub const GROUP: &str = "tandem";

/// The id of group `name`, from the system's group database; `None` when
/// there is no such group (or it cannot be read).
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `struct group` (pointers null).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf` outlives it;
    // the result is read only when the call says it filled `grp`.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &raw mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Gives `path` to group [`GROUP`] when it exists; whether it did.
pub fn share_with_group(path: &std::path::Path) -> io::Result<bool> {
    match group_id(GROUP) {
        Some(gid) => std::os::unix::fs::chown(path, None, Some(gid)).map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn a_readable_descriptor_wakes_the_poller_and_says_which() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Poller::new(&[a.as_raw_fd(), b.as_raw_fd()]);
        assert!(!p.wait(Duration::from_millis(1)), "nothing written yet");
        std::io::Write::write_all(&mut &a, b"x").unwrap();
        assert!(p.wait(Duration::from_secs(1)));
        assert!(!p.readable(0) && p.readable(1));
        p.clear();
        let w = p.push(a.as_raw_fd(), false, true);
        assert!(
            p.wait(Duration::from_secs(1)),
            "a socket with room is writable"
        );
        assert!(!p.readable(w));
    }

    #[test]
    fn random_bytes_differ_and_the_clock_moves_on() {
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
        let t = monotonic_ns();
        assert!(t > 0 && monotonic_ns() >= t);
    }
}

//! The sockets tandemd sends through besides AF_XDP: raw IP sockets for
//! punted datagrams, a packet socket for announcements, raw ICMP sockets
//! for probes.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use super::SyscallError;

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

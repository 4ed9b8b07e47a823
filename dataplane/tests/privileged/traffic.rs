//! Traffic helpers: ping from the client, a TCP echo server, raw frames.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    thread,
};

use crate::netns::{self, SERVER, Topo};

pub fn ping(topo: &Topo, dst: &str, extra: &[&str]) -> (bool, String) {
    let out = topo
        .client
        .cmd("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1"])
        .args(extra)
        .arg(dst)
        .output()
        .expect("ping");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn tcp_echo_server(topo: &Topo, port: u16) -> thread::JoinHandle<usize> {
    let l = topo
        .server
        .enter(move || TcpListener::bind((SERVER, port)).expect("bind"));
    thread::spawn(move || {
        let mut served = 0;
        l.set_nonblocking(false).expect("blocking");
        for _ in 0..20 {
            let Ok((mut s, _)) = l.accept() else { break };
            served += 1;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        served
    })
}

/// Sends raw Ethernet frames out of `dev` from inside `ns`.
pub fn send_frames(ns: &netns::Ns, dev: &'static str, frames: Vec<Vec<u8>>) {
    ns.enter(move || {
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let ifindex = {
            let c = std::ffi::CString::new(dev).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        // SAFETY: an all-zero sockaddr_ll is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex.cast_signed();
        sll.sll_halen = 6;
        for f in &frames {
            // SAFETY: f and sll are valid for the lengths given.
            let r = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                r,
                f.len().cast_signed(),
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    });
}

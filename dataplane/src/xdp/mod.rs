//! The XDP side of the data plane: the program's loader and the maps that
//! user space shares with it.
//!
//! Design: [`loader`] owns the program and every map it does not hand
//! out; [`flow`] is the mapped flow table the workers write and the
//! program reads (the services' [`tandem_packet::offload::FlowTable`]),
//! and [`clock`] the tick the program stamps entries with.

pub mod clock;
pub mod flow;
pub mod loader;

#[cfg(test)]
#[expect(unsafe_code, reason = "a memfd stands in for a BPF array's mapping")]
mod testutil {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use tandem_packet::offload::Egress;

    /// Where the tests' directions leave.
    pub const OUT: Egress = Egress {
        slot: 1,
        dst_mac: [0xa; 6],
        src_mac: [0xb; 6],
        mtu: 1500,
    };

    /// A memfd of `len` bytes: the same shared mapping as a BPF array's,
    /// without privileges.
    pub fn memfd(len: i64) -> OwnedFd {
        // SAFETY: a fresh memfd, sized before it is mapped.
        unsafe {
            let raw = libc::memfd_create(c"tandem-test".as_ptr(), 0);
            assert!(raw >= 0);
            assert_eq!(libc::ftruncate(raw, len), 0);
            OwnedFd::from_raw_fd(raw)
        }
    }
}

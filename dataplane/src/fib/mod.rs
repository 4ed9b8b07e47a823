//! The forwarding view workers read, mirrored from the kernel: the data
//! structure is the packet layer's ([`tandem_packet::fib`]); [`netlink`]
//! fills it from the kernel's dumps and notifications.

pub mod netlink;

pub use tandem_packet::fib::*;

//! tandem's data plane: the XDP loader, AF_XDP workers and L3 forwarding.
//!
//! Packet path: the XDP program (`tandem-ebpf`) steers service traffic into
//! per-queue AF_XDP sockets; [`worker`] threads parse, route through the
//! kernel's FIB mirrored by [`netlink`] into [`fib`], rewrite ([`forward`],
//! [`wire`]) and transmit. [`replica`] carries sessions to the peer, [`ha`]
//! runs the redundancy state machine; [`daemon`] wires it together for
//! `tandemd`.

pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod fib;
pub mod forward;
pub mod ha;
pub mod handoff;
pub mod hint;
pub mod listing;
pub mod loader;
pub mod netlink;
pub mod offload;
pub mod replica;
pub mod service;
pub mod session;
pub mod sys;
pub mod wire;
pub mod worker;

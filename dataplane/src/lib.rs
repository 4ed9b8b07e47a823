//! tandem's data plane: the XDP loader, AF_XDP workers and L3 forwarding.
//!
//! Design: one folder per thread or subsystem, over a packet layer that
//! does no I/O.
//! - The packet layer: [`wire`] (frame views), [`session`] (the per-worker
//!   table), [`service`] (ownership, firewall, NAPT44), [`forward`] (the
//!   routing decision against the [`fib`] snapshot) and [`counters`] (the
//!   per-worker counter ids and tally).
//! - Threads: [`worker`] (one per queue: rx, decide, tx), [`ha`] (the redundancy driver), [`sync`] (the
//!   data-path side of replication: the rings and the sync thread),
//!   [`fib::netlink`] (the kernel's FIB mirrored into [`fib`]), [`ctl`]
//!   (the control socket) and [`daemon`] (start-up as named steps, then the
//!   control loop).
//! - Below them: [`handoff`] (frames between workers, listing jobs and
//!   wakeups), [`xdp`] (the program's loader, flow map and clock),
//!   [`node`] (the state every thread may read: role, forwarding, requests)
//!   and [`sys`] (the libc calls).
//!
//! Dependencies point down: threads use the packet layer and `xdp`, `node`
//! and `sys`; nothing below imports a thread.

pub mod ctl;
pub mod daemon;
pub mod events;
pub mod fib;
pub mod ha;
pub mod handoff;
pub mod node;
pub mod reload;
pub mod sync;
pub mod sys;
pub mod worker;
pub mod xdp;

/// The packet layer, which is its own crate so that it builds, is tested
/// and is fuzzed without the kernel's libraries.
pub use tandem_packet::{counters, forward, hint, offload, path, service, session, wire};

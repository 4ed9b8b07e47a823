//! tandem's packet layer: everything a worker decides about a frame, with
//! no I/O.
//!
//! Design: smoltcp's layering. [`wire`] reads and rewrites frames in
//! place; [`session`] is a worker's table of flows; [`service`] decides
//! ownership, policy and NAPT44 for a datagram and keeps the sessions;
//! [`forward`] routes against a [`fib`] snapshot and builds the ICMP
//! errors the node originates; [`path`] is the whole decision for one
//! frame, from the Ethernet header to what the worker does next. The
//! worker's counters are [`counters`]; [`offload`] describes a session's
//! fast-path entries and the [`offload::FlowTable`] the services write
//! them to; [`sync`] carries session events between workers and the sync
//! thread. The data plane (`tandem-dataplane`) owns the sockets, the
//! rings, the XDP program and its maps, and the threads; this crate
//! depends on no aya, libxdp or kernel code, so it builds, is tested and
//! is fuzzed on its own.

pub mod counters;
pub mod events;
pub mod fib;
pub mod forward;
pub mod hint;
pub mod offload;
pub mod path;
pub mod service;
pub mod session;
pub mod sync;
pub mod wire;

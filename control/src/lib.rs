//! tandem's control plane. It does no kernel I/O beyond its own files:
//! configuration and the stats segment now; the redundancy state machine and
//! the sync protocol join it as their issues land.
#![deny(unsafe_code)]

pub mod config;
pub mod ctl;
pub mod sessions;
pub mod stats;
pub mod sync;

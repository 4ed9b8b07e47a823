//! tandem's control plane. It does no kernel I/O: configuration now; the
//! redundancy state machine, the sync protocol and the stats segment join it
//! as their issues land.
#![deny(unsafe_code)]

pub mod config;

//! tandem's control plane: configuration, the stats segment, the control
//! socket's requests, and session replication (`sync`: the protocol as a
//! pure core, and the driver that owns its TCP socket). The redundancy
//! state machine joins it with its issue.
#![deny(unsafe_code)]

pub mod config;
pub mod ctl;
pub mod sessions;
pub mod stats;
pub mod sync;

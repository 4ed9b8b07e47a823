//! tandem's control plane: configuration, the stats segment, the control
//! socket's requests, session replication (`sync`: the protocol as a pure
//! core, and the driver that owns its TCP socket) and redundancy (`ha`:
//! the state machine, pure, and the heartbeats).

pub mod config;
pub mod ctl;
pub mod ha;
pub mod sessions;
pub mod stats;
pub mod sync;
pub mod sys;

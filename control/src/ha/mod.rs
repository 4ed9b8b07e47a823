//! Redundancy: the state machine deciding which node of the pair is
//! MASTER (`fsm`, pure), and the heartbeats that carry each node's view to
//! the other (`heartbeat`: wire format and per-path liveness statistics),
//! and probe-based failure detection of the interfaces (`probe`).

pub mod fsm;
pub mod heartbeat;
pub mod probe;

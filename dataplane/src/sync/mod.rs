//! Session replication on the data path: the sync thread ([`thread`]),
//! over the rings between it and the workers, which are the packet
//! layer's ([`tandem_packet::sync`]). The protocol, its codec and the
//! connection state machine are `tandem_control::sync`; a worker's own
//! part is `tandem_packet::service::sync`.

pub mod thread;

pub use tandem_packet::sync::*;

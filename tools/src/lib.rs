//! Operator tools: `tandemstat` (read-only readout: counters from the stats
//! segment without talking to the daemon; session listings, which are not
//! counters, from its control socket) and `tandemctl` (commands).

pub mod ha;
pub mod ipmp;
pub mod model;
pub mod nat;
pub mod prom;
pub mod redundancy;
pub mod sessions;
pub mod view;

//! Operator tools: `tandemstat` (read-only counter readout from the stats
//! segment; it never talks to the daemon) and, later, `tandemctl`.

pub mod ipmp;
pub mod model;
pub mod prom;
pub mod view;

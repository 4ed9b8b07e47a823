//! Why the redundancy driver could not start.

use std::net::SocketAddr;

use crate::sys::SyscallError;

/// Errors building the redundancy driver.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("heartbeat path on {local}: {source}")]
    Heartbeat {
        local: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the XDP flow map (cleared when this node stops forwarding): {0}")]
    FlowMap(#[source] std::io::Error),
    #[error("probe socket on {name}: {source}")]
    ProbeSocket {
        name: String,
        #[source]
        source: SyscallError,
    },
    #[error("the announcement socket: {0}")]
    Announce(#[source] SyscallError),
}

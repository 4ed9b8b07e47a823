//! Why the daemon could not start.

use tandem_control::stats::StatsError;

use crate::{
    ctl::CtlError, fib::netlink::NetlinkError, ha::HaError, service::ServiceError,
    sys::SyscallError, xdp::loader::LoaderError,
};

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the XDP flow map (session offload): {0}")]
    FlowMap(#[source] std::io::Error),
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        #[source]
        source: SyscallError,
    },
    #[error(
        "dataplane.workers = {workers}, but {iface} has only {queues} rx queue(s); every worker \
         needs a queue on each interface (raise the queue count, e.g. `ethtool -L {iface} combined N`)"
    )]
    TooFewQueues {
        workers: u32,
        iface: String,
        queues: u32,
    },
    #[error(
        "{sysctl} = 1: the kernel forwards between tandem's interfaces, so a dead tandemd would \
         leave a router with no firewall and no NAT; set it to 0 (sysctl -w {sysctl}=0; \
         net.ipv4.ip_forward = 1 sets every interface's) or set node.allow_kernel_forwarding = true"
    )]
    KernelForwards { sysctl: String },
    #[error(
        "dataplane.cores: CPU {cpu} is not one this process may run on (it may use {allowed:?})"
    )]
    NoSuchCore { cpu: u32, allowed: Vec<usize> },
    #[error("UMEM configuration: {0}")]
    UmemConfig(#[source] xsk_rs::config::UmemConfigBuilderError),
    #[error("UMEM for worker {worker}: {source}")]
    Umem {
        worker: usize,
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
    #[error("AF_XDP socket on {iface} queue {queue}: {source}")]
    Socket {
        iface: String,
        queue: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Services(#[from] ServiceError),
    #[error("stats segment: {0}")]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    #[error("redundancy: {0}")]
    Ha(#[from] HaError),
    #[error("sync link on {local}: {source}")]
    Sync {
        local: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    /// The exit status: 2 for a start the configuration decides against
    /// (as for a configuration error), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::KernelForwards { .. } => 2,
            _ => 1,
        }
    }
}

//! The netlink thread: follows the kernel's links, addresses, routes and
//! neighbours into the FIB the workers read, publishes the node's state
//! for `tandemstat`, and keeps the program's set of local addresses.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use tandem_control::{
    config::Config,
    stats::{IfaceRole, IfaceState, LinkState, NodeState, SegmentWriter, XdpAttach},
};

use super::{DaemonError, iface::Interfaces};
use crate::{
    fib::{Fib, FibHandle, netlink},
    node::Node,
    xdp::loader::Loader,
};

/// What the node-state publisher needs to describe the interfaces.
#[derive(Clone)]
pub(super) struct StateInfo {
    pub ifaces: Interfaces,
    pub modes: Vec<XdpAttach>,
    pub node: Arc<Node>,
}

impl StateInfo {
    fn node_state(&self, fib: &Fib) -> NodeState {
        let i = &self.ifaces;
        let interfaces = (0..i.names.len())
            .map(|s| IfaceState {
                name: i.names[s].clone(),
                ifindex: i.indexes[s],
                role: if s == 0 {
                    IfaceRole::Inside
                } else {
                    IfaceRole::Outside
                },
                link: match fib.link(i.indexes[s]).and_then(|l| l.oper_up) {
                    Some(true) => LinkState::Up,
                    Some(false) => LinkState::Down,
                    None => LinkState::Unknown,
                },
                xdp: self.modes[s],
                queues: i.queues[s],
            })
            .collect();
        NodeState {
            forward: self.node.forward.load(Ordering::Relaxed),
            interfaces,
        }
    }
}

/// Subscribes to the kernel's changes, then dumps again (events between
/// the first dump and the subscription would be lost) and starts the
/// thread that applies them until `stop`.
pub(super) fn spawn_netlink(
    cfg: &Config,
    info: StateInfo,
    fib_handle: Arc<FibHandle>,
    loader: Arc<Mutex<Loader>>,
    segment: Arc<SegmentWriter>,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<()>, DaemonError> {
    let cfg = cfg.clone();
    let mut mon = netlink::Monitor::subscribe()?;
    let fib = netlink::dump()?;
    fib_handle.publish(fib.clone());
    segment.write_state(&info.node_state(&fib).encode());
    Ok(thread::Builder::new()
        .name("tandem-netlink".into())
        .spawn(move || {
            let publish = |fib: &Fib| {
                fib_handle.publish(fib.clone());
                segment.write_state(&info.node_state(fib).encode());
                let want = local_addresses(fib, &cfg);
                if let Err(e) = loader
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .sync_local_addresses(&want)
                {
                    tracing::error!(error = %e, "updating local addresses");
                }
            };
            if let Err(e) = mon.run(fib, &stop, publish) {
                tracing::error!(error = %e, "netlink monitor stopped");
            }
        })
        .expect("spawn netlink thread"))
}

/// The node's own addresses: every address on any interface of the
/// namespace, plus the configured extras.
pub(super) fn local_addresses(fib: &Fib, cfg: &Config) -> BTreeSet<IpAddr> {
    let mut s: BTreeSet<IpAddr> = cfg.node.local_addresses.iter().copied().collect();
    for (_, l) in fib.links() {
        s.extend(l.v4.iter().map(|a| IpAddr::V4(*a)));
        s.extend(l.v6.iter().map(|a| IpAddr::V6(*a)));
    }
    // An operator may have put a pool address on an interface, but its
    // traffic is service traffic: never the kernel's.
    for a in cfg.pool_addresses() {
        s.remove(&IpAddr::V4(a));
    }
    s
}

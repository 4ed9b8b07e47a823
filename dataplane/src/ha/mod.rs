//! The redundancy thread: runs the state machine ([`Fsm`]) and does its
//! I/O. It sends and hears heartbeats on every path, declares the peer
//! dead when every path has been silent for `keepalive x multiplier`,
//! watches the monitored links (the netlink thread's FIB) and the workers'
//! loop counters (stalls), takes operator requests from the control
//! thread, and carries out takeover and release:
//! - takeover: the XDP role map to forward (the program then also answers
//!   ARP for the NAT pool addresses), the VIPs added to their interfaces,
//!   the sync link's role to active, then a gratuitous ARP for each IPv4
//!   VIP and pool address and an unsolicited neighbour advertisement for
//!   each IPv6 VIP, `garp_count` times;
//! - release: the sync role back to backup, the XDP role map to drop and
//!   the addresses removed, before the heartbeat that announces it.
//!
//! At start the addresses are removed (a killed daemon leaves them on its
//! interfaces) and the node does not forward until the FSM says MASTER.

mod address;
mod error;
mod heartbeat;
mod metrics;
mod probe;

use std::{
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tandem_control::{
    config::Config,
    ha::{
        fsm::{Action, Check, Event, Fsm, Settings, State, Transition},
        heartbeat::{Path, derive_key},
        probe::Prober,
    },
    stats::{self, SegmentWriter},
};

use self::{
    address::{Moving, moving_addresses},
    heartbeat::paths,
    probe::{Probed, probed},
};
pub use self::{
    error::HaError,
    metrics::{Slots, register},
};
use crate::{
    fib::FibReader,
    node::{MastershipRequest, Node},
    sys::{FrameSocket, IcmpSocket, poll_readable},
    xdp::{flow::FlowMap, loader::Loader},
};

/// How often counters reach the segment, and the longest wait between
/// checks of links, workers and requests.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(5);

pub struct HaThread {
    fsm: Fsm,
    paths: Vec<Path>,
    /// The paths' sockets, for poll(2).
    fds: Vec<RawFd>,
    key: Option<[u8; 32]>,
    group: u32,
    node_id: u32,
    incarnation: u64,
    seq: u64,
    epoch: Instant,
    timer: Option<Duration>,
    keepalive: Duration,
    dead: Duration,
    next_send: Instant,
    peer_alive: bool,
    peer_sync: u8,
    /// Monitored links: (ifindex, failed).
    links: Vec<(u32, bool)>,
    /// Workers: (segment slot of their loop counter, last value, when it
    /// last moved, stalled).
    workers: Vec<(u32, u64, Instant, bool)>,
    stall: Duration,
    fib: FibReader,
    loader: Arc<Mutex<Loader>>,
    node: Arc<Node>,
    addresses: Vec<Moving>,
    /// Per interface of an address: its MAC, and whether its IPv6
    /// advertisements carry the Router flag (the kernel's answers to
    /// solicitations carry it when it forwards IPv6 there; ours agree).
    macs: Vec<(u32, [u8; 6], bool)>,
    garp: FrameSocket,
    garp_count: u32,
    garp_interval: Duration,
    garp_left: u32,
    garp_next: Instant,
    requests: mpsc::Receiver<MastershipRequest>,
    segment: Arc<SegmentWriter>,
    slots: Slots,
    changes: u64,
    probes: Vec<Probed>,
    fdt_ms: u32,
    /// The XDP flow map, cleared when this node stops forwarding.
    flows: Option<FlowMap>,
}

/// What the daemon hands the thread.
pub struct Parts {
    pub fib: FibReader,
    pub loader: Arc<Mutex<Loader>>,
    pub node: Arc<Node>,
    pub segment: Arc<SegmentWriter>,
    pub slots: Slots,
    pub requests: mpsc::Receiver<MastershipRequest>,
    pub ifnames: Vec<String>,
    pub ifindexes: Vec<u32>,
    /// Segment slot of each worker's loop counter.
    pub worker_loops: Vec<u32>,
}

impl HaThread {
    /// Binds the heartbeat paths and clears what a killed predecessor
    /// may have left: forwarding on, addresses on the interfaces.
    pub fn new(cfg: &Config, p: Parts) -> Result<Self, HaError> {
        let r = cfg.redundancy.as_ref().expect("[redundancy] configured");
        let s = cfg
            .sync
            .as_ref()
            .expect("validated: [redundancy] needs [sync]");
        let mut bound = Vec::new();
        for (name, local, peer) in paths(cfg, p.fib.fib()) {
            let path = Path::bind(&name, local, peer)
                .map_err(|source| HaError::Heartbeat { local, source })?;
            bound.push(path);
        }
        let addresses: Vec<Moving> = moving_addresses(cfg, &p.ifnames, &p.ifindexes)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let fdt = Duration::from_millis(r.failure_detection_ms.into());
        let flows = {
            let l = p
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.flow_map().map_err(HaError::FlowMap)?
        };
        let mut probes = Vec::new();
        for (side, name, test, targets) in probed(cfg, p.fib.fib(), &p.ifnames) {
            if test.is_none() {
                tracing::warn!(iface = %name, "no test address: probing disabled");
            }
            let socket = test
                .map(|a| IcmpSocket::new(&name, a))
                .transpose()
                .map_err(|source| HaError::ProbeSocket {
                    name: name.clone(),
                    source,
                })?;
            let ident = (std::process::id() as u16).wrapping_add(side);
            probes.push(Probed {
                side,
                name,
                socket,
                prober: Prober::new(ident, &targets, fdt),
            });
        }
        let now = Instant::now();
        let mut t = Self {
            fsm: Fsm::new(Settings {
                node_id: s.node_id,
                priority: r.priority,
                preempt: r.preempt,
                hold_down: Duration::from_millis(r.hold_down_ms.into()),
                policy: r.policy(),
            }),
            fds: bound
                .iter()
                .map(|p| p.socket().as_raw_fd())
                .chain(
                    probes
                        .iter()
                        .filter_map(|p| p.socket.as_ref().map(IcmpSocket::fd)),
                )
                .collect(),
            paths: bound,
            key: s.key.as_ref().map(|k| derive_key(k.as_bytes())),
            group: s.group,
            node_id: s.node_id,
            incarnation: stats::unix_ns(),
            seq: 0,
            epoch: now,
            timer: None,
            keepalive: Duration::from_millis(r.keepalive_ms.into()),
            dead: Duration::from_millis(u64::from(r.keepalive_ms) * u64::from(r.multiplier)),
            next_send: now,
            peer_alive: false,
            peer_sync: 0,
            links: p.ifindexes.iter().map(|i| (*i, false)).collect(),
            workers: p.worker_loops.iter().map(|s| (*s, 0, now, false)).collect(),
            stall: Duration::from_millis(r.stall_ms.into()),
            fib: p.fib,
            loader: p.loader,
            node: p.node,
            addresses,
            macs: Vec::new(),
            garp: FrameSocket::new().map_err(HaError::Announce)?,
            garp_count: r.garp_count,
            garp_interval: Duration::from_millis(r.garp_interval_ms.into()),
            garp_left: 0,
            garp_next: now,
            requests: p.requests,
            segment: p.segment,
            slots: p.slots,
            changes: 0,
            probes,
            fdt_ms: r.failure_detection_ms,
            flows: Some(flows),
        };
        t.release();
        Ok(t)
    }

    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
        thread::Builder::new()
            .name("tandem-ha".into())
            .spawn(move || {
                self.event(Event::Start);
                let mut published = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    self.turn();
                    if published.elapsed() >= PUBLISH_EVERY {
                        self.publish();
                        published = Instant::now();
                    }
                }
                // Leaving: hand mastership over (forced: a warned peer
                // is better than none), give the addresses back even with
                // nobody to take them, and tell the peer at once rather
                // than after its dead interval.
                if self.fsm.state() == State::Master {
                    self.event(Event::Manual {
                        acquire: false,
                        force: true,
                    });
                }
                if self.fsm.state() == State::Master {
                    self.release();
                }
                self.send_heartbeats();
                self.publish();
            })
            .expect("spawn redundancy thread")
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn event(&mut self, ev: Event) {
        let before = self.fsm.state();
        let actions = self.fsm.handle(self.now(), ev);
        let after = self.fsm.state();
        if before != after {
            tracing::info!(from = %before, to = %after, event = ?ev, "redundancy state");
            if before == State::Master || after == State::Master {
                self.changes += 1;
            }
        }
        for a in actions {
            match a {
                Action::TakeOver => self.take_over(),
                Action::Release => self.release(),
                Action::Announce => self.next_send = Instant::now(),
                Action::Arm(t) => self.timer = t,
            }
        }
        if before != after {
            self.publish();
        }
    }

    fn turn(&mut self) {
        let now = Instant::now();
        let mut until = self.next_send.min(now + MAX_WAIT);
        if self.garp_left > 0 {
            until = until.min(self.garp_next);
        }
        if let Some(t) = self.timer {
            until = until.min(self.epoch + t);
        }
        for p in self.probes.iter().filter(|p| p.socket.is_some()) {
            until = until.min(self.epoch + p.prober.due_at());
        }
        poll_readable(&self.fds, until.saturating_duration_since(now));

        let now = Instant::now();
        let mut heard = Vec::new();
        for p in &mut self.paths {
            p.recv(self.key.as_ref(), self.group, self.node_id, now, &mut heard);
        }
        for hb in heard {
            self.peer_alive = true;
            self.peer_sync = hb.sync;
            self.event(Event::Peer(hb.view));
        }
        for p in &mut self.paths {
            if p.check(now, self.dead) {
                tracing::warn!(path = %p.name, "heartbeat path silent");
            }
        }
        if self.peer_alive && !self.paths.iter().any(|p| p.alive) {
            self.peer_alive = false;
            tracing::warn!(
                after_ms = self.dead.as_millis(),
                "peer dead: no heartbeat on any path"
            );
            self.event(Event::PeerDead);
        }
        self.watch_links();
        self.watch_workers(now);
        self.probe();
        if let Some(t) = self.timer
            && self.now() >= t
        {
            self.timer = None;
            self.event(Event::Timer);
        }
        while let Ok(r) = self.requests.try_recv() {
            let _ = r.reply.send(self.request(r.acquire, r.force));
        }
        if Instant::now() >= self.next_send {
            self.send_heartbeats();
        }
        if self.garp_left > 0 && Instant::now() >= self.garp_next {
            self.send_garps();
        }
    }

    fn request(&mut self, acquire: bool, force: bool) -> String {
        let t = if acquire {
            Transition::AcquireManual
        } else {
            Transition::ReleaseManual
        };
        let before = (self.fsm.state(), self.fsm.counts.transitions[t as usize][1]);
        self.event(Event::Manual { acquire, force });
        let after = self.fsm.state();
        if self.fsm.counts.transitions[t as usize][1] > before.1 {
            let why = match (acquire, before.0) {
                (true, State::Master) => "already MASTER".to_owned(),
                (true, State::StandbyWarned) => {
                    "this node's health failed (STANDBY-WARNED); use force".to_owned()
                }
                (true, s) => format!("not now (state {s})"),
                (false, State::Master) => match self.fsm.peer() {
                    None => "no live peer to take over".to_owned(),
                    Some(p) => format!(
                        "the peer cannot take over (state {}, health {}); use force",
                        p.state,
                        if p.healthy { "passed" } else { "failed" }
                    ),
                },
                (false, s) => format!("not MASTER (state {s})"),
            };
            tracing::info!(acquire, force, %why, "mastership request ignored");
            return format!("error: request ignored: {why}");
        }
        tracing::info!(acquire, force, from = %before.0, to = %after, "mastership request");
        format!("ok: {} -> {}", before.0, after)
    }

    fn watch_links(&mut self) {
        self.fib.refresh();
        for id in 0..self.links.len() {
            let (ifindex, failed) = self.links[id];
            let down = self
                .fib
                .fib()
                .link(ifindex)
                .is_none_or(|l| l.oper_up == Some(false));
            if down != failed {
                self.links[id].1 = down;
                let name = self
                    .fib
                    .fib()
                    .link(ifindex)
                    .map_or("?", |l| l.name.as_str())
                    .to_owned();
                tracing::warn!(iface = %name, down, "monitored link");
                let check = Check::Link;
                let id = id as u16;
                self.event(if down {
                    Event::Failure { check, id }
                } else {
                    Event::Recovery { check, id }
                });
            }
        }
    }

    fn watch_workers(&mut self, now: Instant) {
        for id in 0..self.workers.len() {
            let (slot, last, moved, stalled) = self.workers[id];
            let v = self.segment.value(slot).load(Ordering::Relaxed);
            let check = Check::Stall;
            let id16 = id as u16;
            if v != last {
                self.workers[id] = (slot, v, now, false);
                if stalled {
                    tracing::warn!(worker = id, "worker progressing again");
                    self.event(Event::Recovery { check, id: id16 });
                }
            } else if !stalled && now.duration_since(moved) >= self.stall {
                self.workers[id].3 = true;
                tracing::error!(
                    worker = id,
                    after_ms = self.stall.as_millis(),
                    "worker stalled"
                );
                self.event(Event::Failure { check, id: id16 });
            }
        }
    }
}

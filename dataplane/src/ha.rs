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

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tandem_control::{
    config::{Config, Side},
    ha::{
        fsm::{Action, Check, Event, Fsm, Monitored, Settings, State, Transition},
        heartbeat::{Heartbeat, Path, PathStats, derive_key},
        probe::{self, Change, ProbeState, Prober, Record},
    },
    stats::{self, Kind, Schema, SegmentWriter, StatsError},
};

use crate::{
    fib::FibReader,
    loader::Loader,
    netlink,
    sys::{self, FrameSocket, IcmpSocket},
};

/// How often counters reach the segment, and the longest wait between
/// checks of links, workers and requests.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(5);

/// State shared with the sync, netlink and control threads.
#[derive(Debug, Default)]
pub struct Shared {
    /// This node sends its sessions (MASTER); else it installs the peer's.
    pub active: AtomicBool,
    /// The XDP program forwards service traffic.
    pub forward: AtomicBool,
    /// Changes of `forward`, counted, times two, plus `forward`: a worker
    /// that sees it move re-examines its offloads (takes them back; on
    /// becoming MASTER, offloads every established session it holds).
    pub role: AtomicU64,
    /// The sync link's state (0 off, 1 cold, 2 hot), for the heartbeat.
    pub sync_state: AtomicU8,
    /// The last finished probes, for `tandemstat -p`.
    pub probes: Mutex<ProbeLog>,
}

impl Shared {
    /// Records whether the XDP program forwards service traffic.
    pub fn set_forward(&self, on: bool) {
        self.forward.store(on, Ordering::Relaxed);
        let changes = (self.role.load(Ordering::Relaxed) >> 1) + 1;
        self.role
            .store(changes << 1 | u64::from(on), Ordering::Release);
    }
}

/// Finished probes, newest last, each numbered in the order they finished.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// Number of the next record.
    pub next: u64,
    pub records: VecDeque<(u64, String, Record)>,
}

impl ProbeLog {
    /// Records kept; `tandemstat -p` asks twice a second, and probes go
    /// out at most 50 a second per interface.
    pub const KEEP: usize = 1024;

    fn push(&mut self, iface: &str, r: Record) {
        if self.records.len() == Self::KEEP {
            self.records.pop_front();
        }
        self.records.push_back((self.next, iface.to_owned(), r));
        self.next += 1;
    }
}

/// An operator's request and where its answer goes.
pub type Request = (bool, bool, mpsc::Sender<String>);

/// An address that follows mastership.
#[derive(Clone, Debug)]
struct Moving {
    address: IpAddr,
    ifindex: u32,
    ifname: String,
    /// Added to the interface at takeover (a VIP); a NAT pool address is
    /// only announced: the XDP program answers ARP for it.
    kernel: bool,
}

/// Where the redundancy entries sit in the segment.
#[derive(Clone, Debug)]
pub struct Slots {
    gauges: u32,
    events: u32,
    checks: u32,
    paths: u32,
    vips: u32,
    probes: u32,
}

/// The gauges, in slot order.
const GAUGES: [&str; 9] = [
    "tandem_ha_state",
    "tandem_ha_healthy",
    "tandem_ha_peer_alive",
    "tandem_ha_peer_state",
    "tandem_ha_peer_healthy",
    "tandem_ha_peer_priority",
    "tandem_ha_peer_node_id",
    "tandem_ha_peer_sync_state",
    "tandem_ha_mastership_changes_total",
];

/// Per-path values, in slot order.
const PATH_STATS: [(&str, Kind); 12] = [
    ("tandem_ha_heartbeats_sent_total", Kind::Counter),
    ("tandem_ha_heartbeat_send_errors_total", Kind::Counter),
    ("tandem_ha_heartbeats_received_total", Kind::Counter),
    ("tandem_ha_heartbeats_missed_total", Kind::Counter),
    ("tandem_ha_heartbeats_rejected_total", Kind::Counter),
    ("tandem_ha_heartbeats_acked_total", Kind::Counter),
    ("tandem_ha_path_down_total", Kind::Counter),
    ("tandem_ha_rtt_us", Kind::Gauge),
    ("tandem_ha_srtt_us", Kind::Gauge),
    ("tandem_ha_rttvar_us", Kind::Gauge),
    ("tandem_ha_worst_delay_us", Kind::Gauge),
    ("tandem_ha_path_alive", Kind::Gauge),
];

fn path_values(s: &PathStats, alive: bool) -> [u64; 12] {
    [
        s.sent,
        s.send_errors,
        s.received,
        s.missed,
        s.rejected,
        s.acked,
        s.down_count,
        s.rtt_us,
        s.srtt_us,
        s.rttvar_us,
        s.worst_us,
        u64::from(alive),
    ]
}

/// A configured heartbeat path: (name, local, peer).
fn paths(cfg: &Config, fib: &crate::fib::Fib) -> Vec<(String, SocketAddr, SocketAddr)> {
    let (Some(r), Some(s)) = (&cfg.redundancy, &cfg.sync) else {
        return Vec::new();
    };
    let name = |a: IpAddr| {
        fib.links()
            .find(|(_, l)| match a {
                IpAddr::V4(x) => l.v4.contains(&x),
                IpAddr::V6(x) => l.v6.contains(&x),
            })
            .map_or_else(|| a.to_string(), |(_, l)| l.name.clone())
    };
    std::iter::once((s.local, s.peer))
        .chain(r.heartbeat.iter().map(|h| (h.local, h.peer)))
        .map(|(l, p)| {
            (
                name(l),
                SocketAddr::new(l, r.port),
                SocketAddr::new(p, r.port),
            )
        })
        .collect()
}

/// Names the redundancy entries: gauges, event tables, one failure gauge
/// per check (`check=...,name=...`), per-path heartbeat statistics and
/// one entry per moving address (1 while this node holds it).
pub fn register(
    schema: &mut Schema,
    cfg: &Config,
    fib: &crate::fib::Fib,
    ifnames: &[String],
    workers: usize,
) -> Result<Option<Slots>, StatsError> {
    let (Some(r), Some(s)) = (&cfg.redundancy, &cfg.sync) else {
        return Ok(None);
    };
    schema.align_block();
    let gauges = schema.push(GAUGES[0], "", Kind::Gauge)?;
    for g in &GAUGES[1..] {
        let kind = if g.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        schema.push(g, "", kind)?;
    }
    schema.push(
        "tandem_ha_local_info",
        &format!(
            "group={},node_id={},priority={},preempt={}",
            s.group, s.node_id, r.priority, r.preempt
        ),
        Kind::Gauge,
    )?;
    let mut events = None;
    for t in Transition::ALL {
        for count in ["received", "ignored"] {
            let at = schema.push(
                "tandem_ha_transition_events_total",
                &format!("event={},count={count}", t.key()),
                Kind::Counter,
            )?;
            events.get_or_insert(at);
        }
    }
    for m in Monitored::ALL {
        for count in ["received", "ignored"] {
            schema.push(
                "tandem_ha_monitored_events_total",
                &format!("event={},count={count}", m.key()),
                Kind::Counter,
            )?;
        }
    }
    let mut checks = None;
    for (id, name) in ifnames.iter().enumerate() {
        let at = schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={id},name={name}", Check::Link.name()),
            Kind::Gauge,
        )?;
        checks.get_or_insert(at);
    }
    for w in 0..workers {
        schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={w},name=worker{w}", Check::Stall.name()),
            Kind::Gauge,
        )?;
    }
    for (side, name, _, _) in probed(cfg, fib, ifnames) {
        schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={side},name={name}", Check::Probe.name()),
            Kind::Gauge,
        )?;
    }
    let mut first_path = None;
    for (name, local, peer) in paths(cfg, fib) {
        let labels = format!("path={name},local={},peer={}", local.ip(), peer.ip());
        for (stat, kind) in PATH_STATS {
            let at = schema.push(stat, &labels, kind)?;
            first_path.get_or_insert(at);
        }
    }
    let mut vips = None;
    for (kind, m) in moving_addresses(cfg, ifnames, &[0; 2]) {
        let at = schema.push(
            "tandem_ha_address_held",
            &format!("address={},interface={},kind={kind}", m.address, m.ifname),
            Kind::Gauge,
        )?;
        vips.get_or_insert(at);
    }
    let mut probes = None;
    for (_, name, test, targets) in probed(cfg, fib, ifnames) {
        let test = test.map_or_else(String::new, |a| a.to_string());
        let labels = format!("interface={name},testaddr={test}");
        let at = schema.push("tandem_ha_probe_state", &labels, Kind::Gauge)?;
        probes.get_or_insert(at);
        schema.push("tandem_ha_probe_fdt_ms", &labels, Kind::Gauge)?;
        for t in targets {
            let labels = format!("interface={name},target={t}");
            for (stat, kind) in PROBE_STATS {
                schema.push(stat, &labels, kind)?;
            }
        }
    }
    Ok(Some(Slots {
        gauges,
        events: events.expect("transitions"),
        checks: checks.expect("two interfaces"),
        paths: first_path.expect("the sync path"),
        vips: vips.unwrap_or(0),
        probes: probes.unwrap_or(0),
    }))
}

/// Per-target probe values, in slot order.
const PROBE_STATS: [(&str, Kind); 5] = [
    ("tandem_ha_probes_sent_total", Kind::Counter),
    ("tandem_ha_probes_answered_total", Kind::Counter),
    ("tandem_ha_probes_lost_total", Kind::Counter),
    ("tandem_ha_probe_rtt_avg_us", Kind::Gauge),
    ("tandem_ha_probe_rtt_dev_us", Kind::Gauge),
];

/// The probed interfaces: (side id, name, test address, targets). The
/// test address is the interface's first IPv4 address that does not move
/// with mastership; without one, probing is disabled there.
fn probed(
    cfg: &Config,
    fib: &crate::fib::Fib,
    ifnames: &[String],
) -> Vec<(u16, String, Option<Ipv4Addr>, Vec<Ipv4Addr>)> {
    let Some(r) = &cfg.redundancy else {
        return Vec::new();
    };
    let moving: Vec<IpAddr> = moving_addresses(cfg, ifnames, &[0; 2])
        .into_iter()
        .map(|(_, m)| m.address)
        .collect();
    r.probe
        .iter()
        .map(|p| {
            let side = u16::from(p.interface == Side::Outside);
            let name = ifnames[usize::from(side)].clone();
            let test = fib
                .links()
                .find(|(_, l)| l.name == name)
                .and_then(|(_, l)| {
                    l.v4.iter()
                        .copied()
                        .find(|a| !moving.contains(&IpAddr::V4(*a)))
                });
            (side, name, test, p.targets.clone())
        })
        .collect()
}

/// Probing of one interface.
struct Probed {
    side: u16,
    name: String,
    socket: Option<IcmpSocket>,
    prober: Prober,
}

/// The VIPs, then the NAT pool addresses (on the outside interface).
fn moving_addresses(
    cfg: &Config,
    ifnames: &[String],
    ifindexes: &[u32],
) -> Vec<(&'static str, Moving)> {
    let side = |s: Side| match s {
        Side::Inside => 0,
        Side::Outside => 1,
    };
    let mut out = Vec::new();
    if let Some(r) = &cfg.redundancy {
        for v in &r.vip {
            let i = side(v.interface);
            out.push((
                "vip",
                Moving {
                    address: v.address,
                    ifindex: ifindexes[i],
                    ifname: ifnames[i].clone(),
                    kernel: true,
                },
            ));
        }
    }
    for a in crate::daemon::pool_addresses(cfg) {
        out.push((
            "pool",
            Moving {
                address: IpAddr::V4(a),
                ifindex: ifindexes[1],
                ifname: ifnames[1].clone(),
                kernel: false,
            },
        ));
    }
    out
}

pub struct HaThread {
    fsm: Fsm,
    paths: Vec<Path>,
    /// The paths' sockets, for poll(2).
    fds: Vec<std::os::fd::RawFd>,
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
    shared: Arc<Shared>,
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
    requests: mpsc::Receiver<Request>,
    segment: Arc<SegmentWriter>,
    slots: Slots,
    changes: u64,
    probes: Vec<Probed>,
    fdt_ms: u32,
    /// The XDP flow map, cleared when this node stops forwarding.
    flows: Option<crate::offload::FlowMap>,
}

/// What the daemon hands the thread.
pub struct Parts {
    pub fib: FibReader,
    pub loader: Arc<Mutex<Loader>>,
    pub shared: Arc<Shared>,
    pub segment: Arc<SegmentWriter>,
    pub slots: Slots,
    pub requests: mpsc::Receiver<Request>,
    pub ifnames: Vec<String>,
    pub ifindexes: Vec<u32>,
    /// Segment slot of each worker's loop counter.
    pub worker_loops: Vec<u32>,
}

impl HaThread {
    /// Binds the heartbeat paths and clears what a killed predecessor
    /// may have left: forwarding on, addresses on the interfaces.
    pub fn new(cfg: &Config, p: Parts) -> Result<Self, crate::daemon::DaemonError> {
        let r = cfg.redundancy.as_ref().expect("[redundancy] configured");
        let s = cfg
            .sync
            .as_ref()
            .expect("validated: [redundancy] needs [sync]");
        let mut bound = Vec::new();
        for (name, local, peer) in paths(cfg, p.fib.fib()) {
            let path = Path::bind(&name, local, peer)
                .map_err(|source| crate::daemon::DaemonError::Sync { local, source })?;
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
            l.flow_map().map_err(crate::daemon::DaemonError::FlowMap)?
        };
        let mut probes = Vec::new();
        for (side, name, test, targets) in probed(cfg, p.fib.fib(), &p.ifnames) {
            if test.is_none() {
                tracing::warn!(iface = %name, "no test address: probing disabled");
            }
            let socket = test
                .map(|a| IcmpSocket::new(&name, a))
                .transpose()
                .map_err(|source| crate::daemon::DaemonError::Interface {
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
                .map(|p| std::os::fd::AsRawFd::as_raw_fd(p.socket()))
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
            shared: p.shared,
            addresses,
            macs: Vec::new(),
            garp: FrameSocket::new()?,
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
        sys::poll_readable(&self.fds, until.saturating_duration_since(now));

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
        while let Ok((acquire, force, reply)) = self.requests.try_recv() {
            let _ = reply.send(self.request(acquire, force));
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

    /// Takes the probes' replies, then sends those due; a lost or
    /// answered probe is logged, a failure or repair goes to the FSM.
    fn probe(&mut self) {
        let mut buf = [0u8; 256];
        let mut changes = Vec::new();
        let mut done = Vec::new();
        for p in &mut self.probes {
            let Some(sock) = &p.socket else { continue };
            while let Some((n, rx_ns)) = sock.recv(&mut buf) {
                let Some((from, ident, seq)) = probe::parse_reply(&buf[..n]) else {
                    continue;
                };
                if ident != p.prober.ident {
                    continue;
                }
                if let Some((rec, ch)) = p.prober.answered(self.epoch.elapsed(), from, seq, rx_ns) {
                    done.push((p.name.clone(), rec));
                    changes.extend(ch.map(|c| (p.side, p.name.clone(), c)));
                }
            }
            let now = self.epoch.elapsed();
            if p.prober.due(now) {
                let unix = stats::unix_ns();
                let (seq, target, lost, ch) = p.prober.next(now, unix);
                done.extend(lost.map(|r| (p.name.clone(), r)));
                changes.extend(ch.map(|c| (p.side, p.name.clone(), c)));
                if let Err(e) = sock.send(target, &probe::echo_request(p.prober.ident, seq, unix)) {
                    tracing::debug!(iface = %p.name, %target, error = %e, "probe not sent");
                }
            }
        }
        if !done.is_empty() {
            let mut log = self
                .shared
                .probes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, r) in done {
                log.push(&name, r);
            }
        }
        for (side, name, c) in changes {
            let check = Check::Probe;
            if c == Change::Failed {
                tracing::warn!(iface = %name, lost = probe::LOST_TO_FAIL, "probes failed");
                self.event(Event::Failure { check, id: side });
            } else {
                tracing::warn!(iface = %name, answered = probe::ANSWERED_TO_REPAIR, "probes repaired");
                self.event(Event::Recovery { check, id: side });
            }
        }
    }

    fn send_heartbeats(&mut self) {
        let now = Instant::now();
        self.seq += 1;
        let hb = Heartbeat {
            view: self.fsm.view(),
            group: self.group,
            incarnation: self.incarnation,
            seq: self.seq,
            echo_seq: 0,
            echo_hold_us: 0,
            path: 0,
            sync: self.shared.sync_state.load(Ordering::Relaxed),
        };
        for (i, p) in self.paths.iter_mut().enumerate() {
            p.send(
                Heartbeat {
                    path: i as u8,
                    ..hb
                },
                self.key.as_ref(),
                now,
            );
        }
        self.next_send = now + self.keepalive;
    }

    fn take_over(&mut self) {
        {
            let mut l = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = l.set_forward(true) {
                tracing::error!(error = %e, "takeover: setting the XDP role");
            }
        }
        self.shared.set_forward(true);
        self.shared.active.store(true, Ordering::Relaxed);
        for m in self.addresses.iter().filter(|m| m.kernel) {
            if let Err(e) = netlink::set_address(m.ifindex, m.address, true) {
                tracing::error!(error = %e, "takeover: adding an address");
            }
        }
        let fib = self.fib.fib();
        self.macs = self
            .addresses
            .iter()
            .filter_map(|m| {
                fib.link(m.ifindex)
                    .map(|l| (m.ifindex, l.mac, sys::ipv6_forwarding(&m.ifname)))
            })
            .collect();
        self.garp_left = self.garp_count;
        self.garp_next = Instant::now();
        self.send_garps();
        tracing::info!(
            addresses = self.addresses.len(),
            "took over: forwarding, VIPs added, addresses announced"
        );
    }

    fn release(&mut self) {
        self.garp_left = 0;
        self.shared.active.store(false, Ordering::Relaxed);
        {
            let mut l = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = l.set_forward(false) {
                tracing::error!(error = %e, "release: setting the XDP role");
            }
        }
        self.shared.set_forward(false);
        if let Some(f) = self.flows.as_mut() {
            let n = f.clear();
            tracing::info!(entries = n, "release: offloaded flows cleared");
        }
        // Pool addresses too: only an earlier build put them there, and a
        // missing address is no error.
        for m in &self.addresses {
            if let Err(e) = netlink::set_address(m.ifindex, m.address, false) {
                tracing::error!(error = %e, "release: removing an address");
            }
        }
    }

    /// One round of announcements: a gratuitous ARP for each IPv4 address,
    /// an unsolicited neighbour advertisement for each IPv6 one.
    fn send_garps(&mut self) {
        for m in &self.addresses {
            let Some((_, mac, router)) = self.macs.iter().find(|(i, ..)| *i == m.ifindex) else {
                continue;
            };
            let r = match m.address {
                IpAddr::V4(a) => self.garp.send(m.ifindex, &sys::garp_frame(*mac, a)),
                IpAddr::V6(a) => self
                    .garp
                    .send(m.ifindex, &sys::unsolicited_na(*mac, a, *router)),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, address = %m.address, "address announcement");
            }
        }
        self.garp_left -= 1;
        self.garp_next = Instant::now() + self.garp_interval;
    }

    fn publish(&self) {
        let seg = &self.segment;
        let peer = self.fsm.peer();
        let gauges = [
            self.fsm.state() as u64,
            u64::from(self.fsm.healthy()),
            u64::from(self.peer_alive),
            peer.map_or(u64::from(u8::MAX), |p| p.state as u64),
            peer.map_or(0, |p| u64::from(p.healthy)),
            peer.map_or(0, |p| u64::from(p.priority)),
            peer.map_or(0, |p| u64::from(p.node_id)),
            u64::from(self.peer_sync),
            self.changes,
        ];
        let vals = seg.values(self.slots.gauges, GAUGES.len() + 1);
        for (slot, v) in vals.iter().zip(gauges) {
            slot.store(v, Ordering::Relaxed);
        }
        vals[GAUGES.len()].store(1, Ordering::Relaxed);
        let c = &self.fsm.counts;
        let counts: Vec<u64> = c
            .transitions
            .iter()
            .chain(c.monitored.iter())
            .flatten()
            .copied()
            .collect();
        for (slot, v) in seg
            .values(self.slots.events, counts.len())
            .iter()
            .zip(counts)
        {
            slot.store(v, Ordering::Relaxed);
        }
        let failed: Vec<(Check, u16)> = self.fsm.failed().collect();
        let checks = (0..self.links.len())
            .map(|i| (Check::Link, i as u16))
            .chain((0..self.workers.len()).map(|i| (Check::Stall, i as u16)))
            .chain(self.probes.iter().map(|p| (Check::Probe, p.side)));
        let n = self.links.len() + self.workers.len() + self.probes.len();
        for (slot, c) in seg.values(self.slots.checks, n).iter().zip(checks) {
            slot.store(u64::from(failed.contains(&c)), Ordering::Relaxed);
        }
        let mut at = self.slots.probes;
        for p in &self.probes {
            let state = if p.socket.is_some() {
                p.prober.state()
            } else {
                ProbeState::Disabled
            };
            let vals = seg.values(at, 2);
            vals[0].store(state as u64, Ordering::Relaxed);
            vals[1].store(self.fdt_ms.into(), Ordering::Relaxed);
            at += 2;
            for t in &p.prober.targets {
                let v = [
                    t.sent,
                    t.answered,
                    t.lost,
                    t.srtt_us.unwrap_or(0),
                    t.rttvar_us.unwrap_or(0),
                ];
                for (slot, v) in seg.values(at, PROBE_STATS.len()).iter().zip(v) {
                    slot.store(v, Ordering::Relaxed);
                }
                at += PROBE_STATS.len() as u32;
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            let first = self.slots.paths + (i * PATH_STATS.len()) as u32;
            let vals = seg.values(first, PATH_STATS.len());
            for (slot, v) in vals.iter().zip(path_values(&p.stats, p.alive)) {
                slot.store(v, Ordering::Relaxed);
            }
        }
        let held = u64::from(self.fsm.state() == State::Master);
        if !self.addresses.is_empty() {
            for slot in seg.values(self.slots.vips, self.addresses.len()) {
                slot.store(held, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_entry_has_help_and_the_lab_config_registers_all_of_them() {
        let text = include_str!("../../deploy/lab/a.toml");
        let cfg = Config::parse(Path::new("a.toml"), text).unwrap();
        let mut schema = Schema::new();
        let names = ["in0".to_owned(), "out0".to_owned()];
        let fib = crate::fib::Fib::default();
        let slots = register(&mut schema, &cfg, &fib, &names, 2)
            .unwrap()
            .unwrap();
        for e in schema.entries() {
            assert!(stats::help(&e.name).is_some(), "{}", e.name);
        }
        let count = |n: &str| schema.entries().iter().filter(|e| e.name == n).count();
        // Two paths (sync0 and in0), two links, two workers and two probed
        // interfaces checked,
        // two VIPs and one pool address.
        assert_eq!(count("tandem_ha_heartbeats_sent_total"), 2);
        assert_eq!(count("tandem_ha_check_failed"), 6);
        assert_eq!(count("tandem_ha_probes_sent_total"), 2);
        assert_eq!(count("tandem_ha_address_held"), 3);
        assert_eq!(count("tandem_ha_transition_events_total"), 8);
        assert_eq!(count("tandem_ha_monitored_events_total"), 12);
        assert!(slots.paths > slots.checks && slots.vips > slots.paths);
        assert!(
            register(
                &mut Schema::new(),
                &Config::parse(
                    Path::new("x"),
                    "[interfaces]\ninside = \"a\"\noutside = \"b\"\n"
                )
                .unwrap(),
                &fib,
                &names,
                2
            )
            .unwrap()
            .is_none()
        );
    }
}

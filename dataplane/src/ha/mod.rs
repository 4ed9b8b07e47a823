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
mod lease;
mod metrics;
mod probe;
mod watch;

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
        fsm::{Action, Event, Fsm, Refusal, Settings, State},
        heartbeat::{Identity, Path, derive_key},
        probe::Prober,
    },
    stats::SegmentWriter,
};

use self::{
    address::{Moving, moving_addresses},
    heartbeat::paths,
    lease::Lease,
    probe::{Probed, probed},
};
pub use self::{
    error::HaError,
    metrics::{Slots, register},
};
use crate::{
    fib::FibReader,
    node::{MastershipRequest, Node},
    reload::Live,
    sys::{FrameSocket, IcmpSocket, poll_readable, random_bytes},
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
    /// Keys, group, node id and this run's incarnation.
    me: Identity,
    seq: u64,
    epoch: Instant,
    timer: Option<Duration>,
    keepalive: Duration,
    dead: Duration,
    next_send: Instant,
    /// When a heartbeat last went out ahead of time (to prove a new
    /// incarnation of the peer's): at most one per `EARLY_EVERY`.
    sent_early: Instant,
    /// A path's receive budget ran out: poll without waiting.
    backlog: bool,
    peer_alive: bool,
    /// The peer's newest heartbeat fed to the state machine (incarnation,
    /// seq), whichever path brought it.
    fed: Option<(u64, u64)>,
    peer_sync: u8,
    peer_sessions: u64,
    /// Since when a standby has lacked Hot while the master lives (as
    /// this node sees the pair), and how long makes it a warning.
    unsynced_since: Option<Instant>,
    unsynced_warn: Duration,
    /// The MASTER lease (see `lease.rs`).
    lease: Lease,
    /// Heartbeats from the peer's address failed authentication lately.
    key_mismatch: bool,
    /// Monitored links: (ifindex, failed).
    links: Vec<(u32, bool)>,
    /// Workers: (segment slot of their loop counter, last value, when it
    /// last moved, stalled).
    workers: Vec<(u32, u64, Instant, bool)>,
    /// Segment slots of the workers' session gauges.
    worker_sessions: Vec<u32>,
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
    /// The running configuration, and the generation of it applied here.
    live: Arc<Live>,
    generation: u64,
}

/// What the daemon hands the thread.
pub struct Parts {
    pub fib: FibReader,
    pub loader: Arc<Mutex<Loader>>,
    pub node: Arc<Node>,
    pub live: Arc<Live>,
    pub segment: Arc<SegmentWriter>,
    pub slots: Slots,
    pub requests: mpsc::Receiver<MastershipRequest>,
    pub ifnames: Vec<String>,
    pub ifindexes: Vec<u32>,
    /// Segment slot of each worker's loop counter.
    pub worker_loops: Vec<u32>,
    /// Segment slot of each worker's session gauge.
    pub worker_sessions: Vec<u32>,
}

/// How long a heartbeat that failed authentication keeps the key alarm on.
const KEY_ALARM: Duration = Duration::from_secs(2);

/// The fewest milliseconds between heartbeats sent ahead of time.
const EARLY_EVERY: Duration = Duration::from_millis(10);

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
            let device = p
                .fib
                .fib()
                .link_with(local.ip())
                .map(|(_, l)| l.name.clone());
            let path = Path::bind(&name, local, peer, device.as_deref())
                .map_err(|source| HaError::Heartbeat { local, source })?;
            bound.push(path);
        }
        if s.insecure {
            tracing::warn!(
                "[sync] insecure = true: heartbeats and sync messages are not authenticated; \
                 anyone who reaches the sync or heartbeat addresses can forge them"
            );
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
            me: Identity {
                keys: s
                    .key
                    .iter()
                    .chain(&s.accept_keys)
                    .map(|k| derive_key(k.as_bytes()))
                    .collect(),
                group: s.group,
                node_id: s.node_id,
                incarnation: incarnation(),
                fresh: Duration::from_millis(u64::from(r.keepalive_ms) * u64::from(r.multiplier)),
            },
            seq: 0,
            epoch: now,
            timer: None,
            keepalive: Duration::from_millis(r.keepalive_ms.into()),
            dead: Duration::from_millis(u64::from(r.keepalive_ms) * u64::from(r.multiplier)),
            next_send: now,
            sent_early: now,
            backlog: false,
            peer_alive: false,
            fed: None,
            peer_sync: 0,
            peer_sessions: 0,
            unsynced_since: None,
            unsynced_warn: Duration::from_millis(r.unsynced_warn_ms.into()),
            lease: Lease::new(now),
            key_mismatch: false,
            links: p.ifindexes.iter().map(|i| (*i, false)).collect(),
            workers: p.worker_loops.iter().map(|s| (*s, 0, now, false)).collect(),
            worker_sessions: p.worker_sessions,
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
            generation: p.live.generation(),
            live: p.live,
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
                Action::Reannounce => {
                    tracing::info!(
                        term = self.fsm.term(),
                        "the peer released: announcing the addresses again"
                    );
                    self.garp_left = self.garp_count;
                    self.garp_next = Instant::now();
                }
                Action::Arm(t) => self.timer = t,
            }
        }
        if before != after {
            self.publish();
        }
    }

    /// Applies a reloaded configuration: the probes' failure detection
    /// time (all else here is fixed while running).
    fn follow_config(&mut self) {
        let generation = self.live.generation();
        if generation == self.generation {
            return;
        }
        let cfg = self.live.config();
        if let Some(r) = &cfg.redundancy
            && r.failure_detection_ms != self.fdt_ms
        {
            self.fdt_ms = r.failure_detection_ms;
            let fdt = Duration::from_millis(r.failure_detection_ms.into());
            for p in &mut self.probes {
                p.prober.set_fdt(fdt);
            }
        }
        self.generation = generation;
        self.live.applied(self.live.ha_index(), generation);
    }

    fn turn(&mut self) {
        self.node.check_fault(tandem_control::ctl::Thread::Ha);
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
        let wait = if self.backlog {
            Duration::ZERO
        } else {
            until.saturating_duration_since(now)
        };
        poll_readable(&self.fds, wait);

        let now = Instant::now();
        self.notice_lapse(now);
        let mut heard = Vec::new();
        self.backlog = false;
        let mut unproven = false;
        for p in &mut self.paths {
            self.backlog |= p.recv(&self.me, now, &mut heard);
            unproven |= p.unproven_waiting();
        }
        if unproven && now.duration_since(self.sent_early) >= EARLY_EVERY {
            // The peer (re)started: echo its heartbeat now rather than a
            // keepalive later, so that it proves itself sooner.
            self.sent_early = now;
            self.next_send = self.next_send.min(now);
        }
        // The same heartbeat goes out on every path: each is fed to the
        // state machine once, in the order sent, and never one older than
        // one already fed. Another path's backlog (after a freeze, say)
        // must not replay the peer's past over its present.
        heard.sort_by_key(|h| h.seq);
        for hb in heard {
            self.peer_alive = true;
            if self
                .fed
                .is_some_and(|(inc, seq)| inc == hb.incarnation && hb.seq <= seq)
            {
                continue;
            }
            self.fed = Some((hb.incarnation, hb.seq));
            self.peer_sync = hb.sync;
            self.peer_sessions = hb.sessions;
            self.event(Event::Peer(hb.view));
        }
        self.watch_sync(now);
        self.keep_lease(now);
        for p in &mut self.paths {
            if p.check(now, self.dead) {
                tracing::warn!(path = %p.name, "heartbeat path silent");
            }
        }
        let mismatch = self.paths.iter().any(|p| p.key_mismatch(now, KEY_ALARM));
        if mismatch != self.key_mismatch {
            self.key_mismatch = mismatch;
            if mismatch {
                tracing::error!(
                    "heartbeats from the peer's address fail authentication: the two nodes' \
                     keys differ, and each may take the other for dead"
                );
            } else {
                tracing::info!("no heartbeat has failed authentication lately");
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
        self.follow_config();
        if Instant::now() >= self.next_send {
            self.send_heartbeats();
        }
        if self.garp_left > 0 && Instant::now() >= self.garp_next {
            self.send_garps();
        }
    }

    fn request(&mut self, acquire: bool, force: bool) -> String {
        let before = self.fsm.state();
        if let Some(r) = self.fsm.refusal(acquire, force) {
            let why = self.refusal_text(r);
            // The state machine counts the request as ignored.
            self.event(Event::Manual { acquire, force });
            tracing::info!(acquire, force, %why, "mastership request refused");
            return format!("error: request refused: {why}");
        }
        let unsynced = if acquire {
            !self.fsm.hot() && self.fsm.peer().is_some_and(|p| p.state == State::Master)
        } else {
            self.fsm.peer().is_some_and(|p| !p.hot)
        };
        self.event(Event::Manual { acquire, force });
        let after = self.fsm.state();
        tracing::info!(acquire, force, from = %before, to = %after, "mastership request");
        if unsynced {
            let (who, sync) = if acquire {
                ("this node", self.own_sync())
            } else {
                ("the peer", sync_name(self.peer_sync))
            };
            tracing::warn!(
                acquire,
                sync,
                "mastership moved by force while {who} is not Hot: unreplicated sessions are lost"
            );
            return format!(
                "ok: {before} -> {after} (forced: {who}'s sync is {sync}, {})",
                self.loss()
            );
        }
        format!("ok: {before} -> {after}")
    }

    /// What a refused request's answer says.
    fn refusal_text(&self, r: Refusal) -> String {
        match r {
            Refusal::AlreadyMaster => "already MASTER".to_owned(),
            Refusal::NotNow(s) if s == State::Init => format!("not now (state {s})"),
            Refusal::NotNow(s) => format!("not MASTER (state {s})"),
            Refusal::Warned => "this node's health failed (STANDBY-WARNED); use --force".to_owned(),
            Refusal::NoPeer => "no live peer to take over".to_owned(),
            Refusal::PeerIneligible(p) => format!(
                "the peer cannot take over (state {}, health {}); use --force",
                p.state,
                if p.healthy { "passed" } else { "failed" }
            ),
            Refusal::NotHot => format!(
                "this node's sync is {}, not Hot: {}; use --force to take over anyway",
                self.own_sync(),
                self.loss()
            ),
            Refusal::PeerNotHot(_) => format!(
                "the peer's sync is {}, not Hot: {}; use --force to hand over anyway",
                sync_name(self.peer_sync),
                self.loss()
            ),
        }
    }

    /// What a takeover now would lose, as far as the heartbeats tell:
    /// the sessions the standby lacks, and every session made or changed
    /// since its sync stopped being Hot (its copies of the others are
    /// as old as that).
    fn loss(&self) -> String {
        let mine = self.sessions();
        let (master, standby) = if self.fsm.state() == State::Master {
            (mine, self.peer_sessions)
        } else {
            (self.peer_sessions, mine)
        };
        format!(
            "the MASTER holds {master} sessions and the standby {standby} ({} missing there), \
             and no session made or changed since the sync stopped being Hot reached the \
             standby",
            master.saturating_sub(standby)
        )
    }

    fn own_sync(&self) -> &'static str {
        sync_name(self.node.sync_state.load(Ordering::Relaxed))
    }

    /// Sessions in this node's tables.
    fn sessions(&self) -> u64 {
        self.worker_sessions
            .iter()
            .map(|s| self.segment.value(*s).load(Ordering::Relaxed))
            .sum()
    }
}

/// A sync state as the views spell it.
fn sync_name(v: u8) -> &'static str {
    match v {
        2 => "Hot",
        1 => "Cold",
        _ => "Off",
    }
}

/// This run's heartbeat incarnation: random and never 0, so that neither
/// a restart with the clock set back nor a recording of a past run can
/// pass for the live node.
fn incarnation() -> u64 {
    // getrandom(2) does not fail once the pool is initialised (long
    // before a daemon starts); the clock and pid are a fallback all the
    // same, since freshness is proven by echoes, not by this number.
    random_bytes::<8>()
        .map_or_else(
            |_| tandem_control::stats::unix_ns() ^ u64::from(std::process::id()),
            u64::from_ne_bytes,
        )
        .max(1)
}

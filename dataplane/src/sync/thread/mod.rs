//! The sync thread: runs the sync link's [`Driver`], carries the workers'
//! session events to the peer and the peer's records to the workers that
//! own them here, and publishes the replication counters.
//!
//! Active side: when the peer is up the workers' events flow; a cold-sync
//! request starts a walk on every worker and the completion goes out once
//! each has reported its walk done, behind every record the walk sent.
//! While the connection's unsent backlog is over half its limit the rings
//! are left to fill (a walk waits for room; live events overflow and are
//! counted) rather than the backlog growing without bound. Standby side:
//! every connection starts a new generation; installs and refreshes stamp
//! it, and the cold sync's completion sweeps the peer's sessions of older
//! generations (those the active deleted while the link was down).
//!
//! No silent loss: a record the connection cannot batch goes back to its
//! worker as a mark (repair sends it again), and so does an add the peer
//! refused, once. Every second each side sends the peer its digest of the
//! replicated set; a backup whose digest stays different from a steady
//! active's for three seconds asks for a resync (then waits longer before
//! the next, up to five minutes, while they keep differing).

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tandem_control::{
    config::Config,
    stats::SegmentWriter,
    sync::{
        DeleteRecord, Digest, Event, Fatal, NackReason, Op, Role, Settings, SyncState, WireKey,
        driver::{Driver, LinkError, Notice},
    },
};

mod metrics;

use super::{EventsRx, Hub, Ownership, ToSync, ToWorker};
use crate::{handoff::Handoff, node::Node};

pub use self::metrics::{DIGEST_HASH_BITS, Slots, register};

/// How long one turn waits for the sockets: the batching delay's grain.
const TURN: Duration = Duration::from_millis(1);
/// Events taken from one worker's ring per turn.
const DRAIN: usize = 4096;
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Commands the sync thread holds for one worker beyond its ring (about
/// 20 MB): past it an add is refused (counted as `install_failures` and
/// nacked, so the active repairs it) rather than the node losing its
/// memory. Back-pressure ([`HOLD_READS`]) keeps a live link below it.
const MAX_WAITING: usize = 1 << 18;
/// Commands held for one worker beyond which the link is left unread
/// (TCP then slows the active): a cold sync of a million sessions arrives
/// faster than one worker installs it. Far enough below [`MAX_WAITING`]
/// that what one turn has already read fits.
const HOLD_READS: usize = 1 << 16;
/// Deletes the connection could not batch, held to be sent again.
const MAX_PARKED: usize = 1 << 16;
/// Digests go to the peer this often: how soon after the sets agree (or
/// stop agreeing) both nodes say so.
const DIGEST_EVERY: Duration = Duration::from_millis(250);
/// Digest checks in a row that must find the sets different, the active
/// steady and this node idle, before a resync: 3 s of them.
const MISMATCHES: u32 = 12;
/// The wait after a resync before the next one, doubling while the
/// digests keep differing.
const RESYNC_BACKOFF: (Duration, Duration) = (Duration::from_secs(10), Duration::from_mins(5));

/// An operator's `tandemctl request resync`: the reply says what was done
/// or why not.
pub struct ResyncRequest {
    pub reply: std::sync::mpsc::Sender<Result<String, String>>,
}

pub struct SyncThread {
    driver: Driver,
    hub: Arc<Hub>,
    /// Every worker's `events` ring, this thread's end.
    events: Vec<EventsRx>,
    handoff: Arc<Handoff>,
    own: Ownership,
    role: Role,
    /// Unsent bytes the connection refuses new batches beyond.
    max_backlog: usize,
    /// Commands that did not fit a worker's ring yet, in order.
    waiting: Vec<VecDeque<ToWorker>>,
    /// (Standby) the current connection's generation.
    generation: u8,
    /// (Active) the walk under way: its id, workers yet to finish, and the
    /// sessions sent so far.
    walk: u32,
    walk_left: usize,
    walk_sessions: u64,
    segment: Arc<SegmentWriter>,
    slots: Slots,
    /// (adds, deletes) completed at the last rate sample.
    rate_base: (u64, u64),
    /// With `[redundancy]`: the role follows the state machine's
    /// decision, and the link's state goes back into the heartbeats.
    node: Option<Arc<Node>>,
    /// (Active) deletes the connection could not batch yet.
    parked: VecDeque<DeleteRecord>,
    /// Records of `parked` sent again.
    parked_sent: u64,
    /// The peer's last digest, and whether it equalled the one before.
    peer_digest: Option<Digest>,
    /// (Backup) digest checks in a row that found the sets different.
    mismatches: u32,
    /// (Backup) since when the digests have differed with the active
    /// steady and this node idle, whatever resyncs did meanwhile.
    differs_since: Option<Instant>,
    /// (Backup) no automatic resync before this, and the wait after it.
    next_resync: Instant,
    backoff: Duration,
    digest_sent: Instant,
    requests: Option<std::sync::mpsc::Receiver<ResyncRequest>>,
    /// The last connection was refused because the two configurations
    /// disagree on what must agree; cleared once Hot.
    config_refused: bool,
}

impl SyncThread {
    /// Binds the sync address; the link comes up in the thread.
    pub fn new(
        cfg: &Config,
        workers: usize,
        node: Option<Arc<Node>>,
        hub: Arc<Hub>,
        handoff: Arc<Handoff>,
        segment: Arc<SegmentWriter>,
        slots: Slots,
    ) -> io::Result<Option<Self>> {
        let Some(settings) = Settings::from_config(cfg, workers as u16) else {
            return Ok(None);
        };
        let (local, peer) = addresses(cfg).expect("[sync] is configured");
        let (role, max_backlog) = (settings.role, settings.max_backlog);
        let driver = Driver::new(settings, local, peer)?;
        let events = (0..workers)
            .map(|w| hub.events_receiver(w))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| io::Error::other("the workers' event rings were taken already"))?;
        Ok(Some(Self {
            driver,
            hub,
            events,
            handoff,
            own: Ownership::new(cfg, workers),
            role,
            max_backlog,
            waiting: (0..workers).map(|_| VecDeque::new()).collect(),
            generation: 0,
            walk: 0,
            walk_left: 0,
            walk_sessions: 0,
            segment,
            slots,
            rate_base: (0, 0),
            node,
            parked: VecDeque::new(),
            parked_sent: 0,
            peer_digest: None,
            mismatches: 0,
            next_resync: Instant::now(),
            backoff: RESYNC_BACKOFF.0,
            digest_sent: Instant::now(),
            requests: None,
            config_refused: false,
            differs_since: None,
        }))
    }

    /// Takes operators' resync requests from `rx`.
    pub fn take_requests(&mut self, rx: std::sync::mpsc::Receiver<ResyncRequest>) {
        self.requests = Some(rx);
    }

    /// Binds the sync sockets to interface `dev` (see
    /// [`Driver::bind_device`]).
    pub fn bind_device(&mut self, dev: &str) -> io::Result<()> {
        self.driver.bind_device(dev)
    }

    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
        thread::Builder::new()
            .name("tandem-sync".into())
            .spawn(move || {
                let mut published = Instant::now();
                let mut sampled = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    self.turn();
                    if published.elapsed() >= PUBLISH_EVERY {
                        let rates = sampled.elapsed() >= Duration::from_secs(1);
                        if rates {
                            sampled = Instant::now();
                        }
                        self.publish(rates);
                        published = Instant::now();
                    }
                }
                self.hub.set_live(false);
                self.publish(false);
            })
            .expect("spawn sync thread")
    }

    fn turn(&mut self) {
        if let Some(sh) = &self.node {
            sh.check_fault(tandem_control::ctl::Thread::Sync);
            let role = if sh.active.load(Ordering::Relaxed) {
                Role::Active
            } else {
                Role::Backup
            };
            if role != self.role {
                tracing::info!(role = role.name(), "sync role changes");
                self.role = role;
                self.hub.set_live(false);
                self.walk_left = 0;
                self.driver.set_role(role);
                while let Some(n) = self.driver.poll_notice() {
                    self.notice(n);
                }
            }
        }
        let behind = self.waiting.iter().any(|q| q.len() >= HOLD_READS);
        self.driver.hold_reads(behind);
        self.driver.turn(TURN);
        while let Some(n) = self.driver.poll_notice() {
            self.notice(n);
        }
        for w in 0..self.hub.ports.len() {
            for _ in 0..DRAIN {
                // Checked per event: a turn's drain (4096 records, 256 KiB)
                // can exceed a small backlog limit by itself.
                if self.role == Role::Active && self.driver.backlog() >= self.max_backlog / 2 {
                    break;
                }
                let Ok(ev) = self.events[w].pop() else {
                    break;
                };
                self.event(ev);
            }
        }
        while self.role == Role::Active
            && self.driver.is_up()
            && self.driver.backlog() < self.max_backlog / 2
            && let Some(d) = self.parked.pop_front()
        {
            if !self.driver.delete(&d) {
                self.parked.push_front(d);
                break;
            }
            self.parked_sent += 1;
        }
        if self.digest_sent.elapsed() >= DIGEST_EVERY {
            self.digest_sent = Instant::now();
            let d = self.digest();
            self.driver.send_digest(d);
        }
        if let Some(rx) = &self.requests
            && let Ok(req) = rx.try_recv()
        {
            let r = self.resync(true);
            let _ = req.reply.send(r);
        }
        self.deliver();
    }

    /// This node's digest of the replicated set: the workers' shards'.
    fn digest(&self) -> Digest {
        self.hub
            .ports
            .iter()
            .fold(Digest::default(), |d, p| d.merge(p.counts.digest()))
    }

    /// (Backup) asks the active for a resync: its records then stamp a new
    /// generation, and the completion sweeps the sessions it did not carry.
    fn resync(&mut self, operator: bool) -> Result<String, String> {
        if self.role != Role::Backup {
            return Err(
                "this node is the active side: the standby asks for a resync (run it there)".into(),
            );
        }
        self.driver.request_resync().map_err(str::to_string)?;
        self.generation = self.generation.wrapping_add(1);
        let d = self.digest();
        tracing::info!(
            operator,
            sessions = d.sessions,
            peer_sessions = self.peer_digest.map(|p| p.sessions),
            "resync requested"
        );
        Ok(format!(
            "resync requested: the active sends every session again; this node holds {} \
             and sweeps what the resync does not carry",
            d.sessions
        ))
    }

    /// (Backup) the peer's digest came: if the sets differ while the
    /// active was steady (its digest unchanged since the last one) and nothing
    /// waits to be applied here, count it; after [`MISMATCHES`] in a row,
    /// resync (no more often than the backoff allows).
    fn check_digest(&mut self, d: Digest) {
        let steady = self.peer_digest == Some(d);
        self.peer_digest = Some(d);
        if self.role != Role::Backup {
            self.differs_since = None;
        }
        if self.role != Role::Backup
            || self.driver.sync_state() != SyncState::Hot
            || self.driver.resyncing()
        {
            self.mismatches = 0;
            return;
        }
        if self.digest() == d {
            self.mismatches = 0;
            self.differs_since = None;
            self.backoff = RESYNC_BACKOFF.0;
            return;
        }
        let idle = self.waiting.iter().all(VecDeque::is_empty)
            && self.hub.ports.iter().all(|p| p.commands.is_empty());
        if !(steady && idle) {
            return;
        }
        self.differs_since.get_or_insert_with(Instant::now);
        self.driver.stats.digest_mismatches += 1;
        self.mismatches += 1;
        if self.mismatches >= MISMATCHES && Instant::now() >= self.next_resync {
            tracing::warn!(
                sessions = self.digest().sessions,
                peer_sessions = d.sessions,
                "the replicated sets differ while the active is steady: resync"
            );
            if self.resync(false).is_ok() {
                self.mismatches = 0;
                self.next_resync = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(RESYNC_BACKOFF.1);
            }
        }
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Conn(Event::Up(h)) => {
                tracing::info!(
                    peer_node = h.node_id,
                    peer_workers = h.workers,
                    "sync link up"
                );
                match self.role {
                    Role::Active => self.hub.set_live(true),
                    Role::Backup => self.generation = self.generation.wrapping_add(1),
                }
            }
            Notice::Conn(Event::ColdSyncRequested) => {
                self.walk = self.walk.wrapping_add(1);
                self.walk_left = self.hub.ports.len();
                self.walk_sessions = 0;
                tracing::info!(walk = self.walk, "cold sync requested: walking every shard");
                for w in 0..self.hub.ports.len() {
                    self.command(w, ToWorker::Walk { walk: self.walk });
                }
            }
            Notice::Conn(Event::Add { seq, records }) => {
                for rec in records {
                    match self.own.owner(&rec) {
                        Ok((w, stub)) => {
                            let generation = self.generation;
                            self.command(
                                w,
                                ToWorker::Install {
                                    seq,
                                    generation,
                                    rec,
                                },
                            );
                            if let Some(h) = stub {
                                let holder = u8::try_from(w).expect("at most 64 workers");
                                self.command(
                                    h,
                                    ToWorker::Stub {
                                        generation,
                                        rec,
                                        holder,
                                    },
                                );
                            }
                        }
                        Err(reason) => {
                            self.driver.stats.install_failures += 1;
                            self.driver.nack(seq, Op::Add, reason, rec.key);
                        }
                    }
                }
            }
            Notice::Conn(Event::Delete { records, .. }) => {
                for rec in records {
                    self.command(self.own.of_key(&rec.key), ToWorker::Remove { rec });
                }
            }
            Notice::Conn(Event::Refresh { seq, records }) => {
                for rec in records {
                    let generation = self.generation;
                    self.command(
                        self.own.of_key(&rec.key),
                        ToWorker::Refresh {
                            seq,
                            generation,
                            rec,
                        },
                    );
                }
            }
            Notice::Conn(Event::ColdSyncComplete { sessions }) => {
                tracing::info!(sessions, "cold sync complete: sweeping older sessions");
                for w in 0..self.hub.ports.len() {
                    let generation = self.generation;
                    self.command(w, ToWorker::Sweep { generation });
                }
            }
            Notice::Conn(Event::Nacked { op, reason, key }) => {
                tracing::debug!(?op, ?reason, ?key, "peer refused a record");
                let w = self.own.of_key(&key);
                match (op, reason) {
                    (Op::Refresh, NackReason::NotFound) => {
                        self.command(w, ToWorker::Resend { key });
                    }
                    (Op::Add, _) => self.command(w, ToWorker::Mark { key, refused: true }),
                    _ => {}
                }
            }
            Notice::Conn(Event::PeerDigest(d)) => self.check_digest(d),
            Notice::Down(why) => {
                if let LinkError::Protocol(
                    Fatal::Contract(_) | Fatal::Refused("different service sets"),
                ) = &why
                {
                    self.config_refused = true;
                    tracing::error!(
                        reason = %why,
                        "sync refused: the two nodes' configurations disagree on what must agree"
                    );
                } else {
                    tracing::warn!(reason = %why, "sync link down");
                }
                self.hub.set_live(false);
                self.parked.clear();
                self.peer_digest = None;
                self.mismatches = 0;
                // A walk under way belongs to the connection that ended.
                self.walk_left = 0;
            }
        }
    }

    fn event(&mut self, ev: ToSync) {
        // What the connection could not batch while it is up goes back to
        // repair (while it is down, the next cold sync carries it all).
        match ev {
            ToSync::Add(r) => {
                if !self.driver.add(&r) && self.driver.is_up() {
                    self.mark(r.key);
                }
            }
            ToSync::Delete(r) => {
                if !self.driver.delete(&r) && self.driver.is_up() && self.parked.len() < MAX_PARKED
                {
                    self.parked.push_back(r);
                }
            }
            ToSync::Refresh(r) => {
                if !self.driver.refresh(&r) && self.driver.is_up() {
                    self.mark(r.key);
                }
            }
            ToSync::WalkDone { walk, sessions } => {
                if walk == self.walk && self.walk_left > 0 {
                    self.walk_sessions += sessions;
                    self.walk_left -= 1;
                    if self.walk_left == 0 {
                        tracing::info!(sessions = self.walk_sessions, "cold sync sent");
                        self.driver.cold_sync_complete(self.walk_sessions);
                    }
                }
            }
            ToSync::Refused {
                seq,
                op,
                reason,
                key,
            } => {
                if op == Op::Add {
                    self.driver.stats.install_failures += 1;
                }
                self.driver.nack(seq, op, reason, key);
            }
        }
    }

    /// A record the connection could not batch: its owner worker marks the
    /// session for repair.
    fn mark(&mut self, key: WireKey) {
        let w = self.own.of_key(&key);
        self.command(
            w,
            ToWorker::Mark {
                key,
                refused: false,
            },
        );
    }

    /// Queues a command for worker `w`, behind any that wait already.
    fn command(&mut self, w: usize, cmd: ToWorker) {
        let q = &mut self.waiting[w];
        let control = matches!(
            cmd,
            ToWorker::Walk { .. } | ToWorker::Sweep { .. } | ToWorker::Mark { .. }
        );
        if q.len() >= MAX_WAITING && !control {
            // Not silent: the active repairs what it hears refused.
            self.driver.stats.install_failures += 1;
            if let ToWorker::Install { seq, rec, .. } = cmd {
                self.driver
                    .nack(seq, Op::Add, NackReason::TableFull, rec.key);
            }
            return;
        }
        if q.is_empty() {
            if let Err(cmd) = self.hub.ports[w].commands.push(cmd) {
                q.push_back(cmd);
            }
        } else {
            q.push_back(cmd);
        }
    }

    /// Moves waiting commands into the rings and wakes the workers.
    fn deliver(&mut self) {
        for w in 0..self.waiting.len() {
            while let Some(cmd) = self.waiting[w].pop_front() {
                if let Err(cmd) = self.hub.ports[w].commands.push(cmd) {
                    self.waiting[w].push_front(cmd);
                    break;
                }
            }
            if !self.hub.ports[w].commands.is_empty() {
                self.handoff.nudge(w);
            }
        }
    }
}

/// (local, peer) sync socket addresses of `cfg`.
pub fn addresses(cfg: &Config) -> Option<(SocketAddr, SocketAddr)> {
    let s = cfg.sync.as_ref()?;
    Some((
        SocketAddr::new(s.local, s.port),
        SocketAddr::new(s.peer, s.port),
    ))
}

//! A forwarding worker: one pinned thread, its UMEM, its AF_XDP sockets.
//!
//! Design: the worker's sockets share one UMEM, so a frame received on one
//! interface is transmitted on another without a copy. Frames circulate
//! rx -> tx -> completion -> free pool -> fill ring; the pool is a plain
//! stack owned by the thread. Per iteration ([`Worker::run`]): age a step,
//! reap completions and refill ([`port`]), receive a batch per socket and
//! take frames other workers handed over ([`crate::handoff`]), decide each frame
//! ([`decide`]: parse, services, route), transmit per egress socket with
//! one wakeup ([`tx`]), step a listing ([`crate::handoff::listing`]), follow the node's
//! role, step replication, publish counters. When every rx ring and its
//! handoff queue are empty the worker sleeps in poll(); it never spins on a
//! shared core.
#![expect(
    unsafe_code,
    reason = "frames live in the UMEM, shared with the kernel; xsk-rs's ring and frame calls are unsafe"
)]

mod decide;
mod port;
mod tx;

use std::{
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xsk_rs::{FrameDesc, Umem};

use tandem_packet::{
    path::{Arrival, Routes},
    wire::{Headers, ParseError},
};

use self::decide::Out;
pub use self::port::Port;
use crate::{
    counters::{IfaceCounter, Tally, WorkerCounter, WorkerGauge, WorkerStats},
    fib::FibReader,
    forward::{DropReason, Limits},
    handoff::{Handoff, Outbox, listing::Walk},
    hint,
    node::Node,
    offload,
    reload::Live,
    service::Services,
    sys::{Poller, PuntSocket},
};

/// What the daemon hands a worker.
pub struct WorkerParts {
    pub id: usize,
    pub umem: Umem,
    pub ports: Vec<Port>,
    /// Free frames not on any ring.
    pub free: Vec<FrameDesc>,
    pub batch: usize,
    pub fib: FibReader,
    pub limits: Limits,
    pub punt: PuntSocket,
    pub stats: WorkerStats,
    pub stop: Arc<AtomicBool>,
    /// ifindex of each interface slot.
    pub slot_ifindex: Vec<u32>,
    /// Sessions and services; `None` when no service set is configured.
    pub services: Option<Services>,
    pub handoff: Arc<Handoff>,
    pub workers: usize,
    /// Time zero of the session clock (seconds), shared by all workers.
    pub epoch: Instant,
    pub node: Arc<Node>,
    /// The running configuration, which a reload replaces.
    pub live: Arc<Live>,
}

/// Everything a worker thread owns.
pub struct Worker {
    id: usize,
    umem: Umem,
    ports: Vec<Port>,
    free: Vec<FrameDesc>,
    batch: usize,
    fib: FibReader,
    limits: Limits,
    punt: PuntSocket,
    stats: WorkerStats,
    stop: Arc<AtomicBool>,
    slot_ifindex: Vec<u32>,
    services: Option<Services>,
    handoff: Arc<Handoff>,
    /// The batches this worker is filling for other workers.
    outbox: Outbox,
    workers: usize,
    epoch: Instant,
    /// A session listing in progress.
    walk: Option<Walk>,
    node: Arc<Node>,
    /// The `node.role` epoch this worker last acted on.
    role: u64,
    /// The next slot of a pass over the table after a role change.
    rewalk: Option<u32>,
    live: Arc<Live>,
    /// The configuration generation this worker runs.
    generation: u64,
}

/// Slots a clear walks per loop: bounded like a listing's step, so the
/// data path goes on between chunks.
const CLEAR_SLOTS: usize = 4096;
/// How long an idle worker sleeps in poll() before re-checking `stop`.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Sessions aged per loop at most, so that a second in which many expire
/// is spread over loops instead of stopping the rings (a few
/// microseconds per loop).
const AGING_STEP: usize = 256;
/// Subscribers a worker names per NAT service set in `show nat`.
const NAT_TOP: usize = 10;

/// How long an otherwise idle worker waits between listing steps.
const WALK_POLL: Duration = Duration::from_millis(1);

/// The loop's own state: buffers sized once, the counters, and where
/// aging and the per-second gauges stand.
struct Lap {
    tally: Tally,
    rx: Vec<FrameDesc>,
    comp: Vec<FrameDesc>,
    /// The headers the prefetch pass parsed, by the frame's place in its
    /// batch (used only while services run: a node that only routes
    /// needs no prefetch, and the decision parses).
    headers: Vec<Result<Headers, ParseError>>,
    /// Frames waiting for tx, per egress interface slot.
    pending: Vec<Vec<FrameDesc>>,
    /// The port each slot transmits on: the first this worker has there.
    egress: Vec<usize>,
    poller: Poller,
    /// The second the gauges were last taken.
    second: u32,
    created_before: u64,
    deleted_before: u64,
    /// The table's aging has not reached `now` yet: a step per loop.
    aging: bool,
}

impl Worker {
    pub fn new(p: WorkerParts) -> Self {
        Self {
            outbox: p.handoff.outbox(),
            role: p.node.role.load(Ordering::Acquire),
            id: p.id,
            umem: p.umem,
            ports: p.ports,
            free: p.free,
            batch: p.batch,
            fib: p.fib,
            limits: p.limits,
            punt: p.punt,
            stats: p.stats,
            stop: p.stop,
            slot_ifindex: p.slot_ifindex,
            services: p.services,
            handoff: p.handoff,
            workers: p.workers,
            epoch: p.epoch,
            walk: None,
            node: p.node,
            rewalk: None,
            generation: p.live.generation(),
            live: p.live,
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// The worker's sockets.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    fn lap(&self) -> Lap {
        let slots = self.slot_ifindex.len();
        let mut fds: Vec<RawFd> = self.ports.iter().map(Port::fd).collect();
        fds.push(self.handoff.wake_fd(self.id));
        Lap {
            tally: Tally::new(self.workers),
            rx: vec![FrameDesc::default(); self.batch],
            comp: vec![FrameDesc::default(); self.batch * 2],
            headers: vec![Err(ParseError::Truncated); self.batch],
            pending: (0..slots)
                .map(|_| Vec::with_capacity(self.batch * (self.ports.len() + 2)))
                .collect(),
            egress: (0..slots)
                .map(|s| self.ports.iter().position(|p| p.slot == s).unwrap_or(0))
                .collect(),
            poller: Poller::new(&fds),
            second: self.now(),
            created_before: 0,
            deleted_before: 0,
            aging: false,
        }
    }

    /// Runs until `stop` is set; returns the worker for its exit report.
    #[must_use]
    pub fn run(mut self) -> Self {
        let mut lap = self.lap();
        while !self.stop.load(Ordering::Relaxed) {
            if self.node.hang_workers.load(Ordering::Relaxed) {
                // A test's wedged data path: no loop, no progress.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            lap.tally.add(WorkerCounter::Loops, 1);
            let now = self.now();
            self.age(now, &mut lap);
            self.fib.refresh();
            self.reap_completions(&mut lap.comp);
            self.refill(&mut lap.tally);
            let received = self.receive(now, &mut lap);
            let handed = self.take_handoffs(now, &mut lap);
            self.handoff.flush(&mut self.outbox);
            self.step_listing(now, &mut lap.tally);
            self.follow_role(&mut lap.tally);
            self.follow_config();
            let (sync_ready, syncing) = match self.services.as_mut() {
                Some(svc) => {
                    svc.sync_step(now);
                    (svc.sync_ready(), svc.sync_walking() || svc.sync_repairing())
                }
                None => (false, false),
            };
            if received > 0 || handed > 0 {
                self.transmit_pending(&mut lap);
                self.stats.publish(&lap.tally);
            } else if sync_ready {
                // The peer's records wait: apply the next batch at once.
                self.stats.publish(&lap.tally);
            } else {
                self.idle(&mut lap, syncing);
            }
        }
        // Return frames still in completion rings so accounting stays whole.
        self.reap_completions(&mut lap.comp);
        self.stats.publish(&lap.tally);
        self
    }

    /// Moves the fast path's clock, ages a step of the table, and once a
    /// second takes the session gauges.
    fn age(&mut self, now: u32, lap: &mut Lap) {
        let Some(svc) = self.services.as_mut() else {
            return;
        };
        svc.advance_clock();
        if now != lap.second || lap.aging {
            lap.aging = !svc.expire_some(now, AGING_STEP, &mut lap.tally).1;
        }
        if now != lap.second {
            lap.second = now;
            let t = &mut lap.tally;
            let created = t.get(WorkerCounter::SessionsCreated);
            let deleted = t.get(WorkerCounter::SessionsDeleted);
            t.set(WorkerGauge::SessionsActive, svc.table.len() as u64);
            if let Some(e) = svc.events() {
                t.add(WorkerCounter::EventsDropped, e.take_dropped());
            }
            t.set(WorkerGauge::SessionsCapacity, svc.table.capacity() as u64);
            let (bound, ports) = svc.nat_ports();
            t.set(WorkerGauge::NatPortsInUse, bound as u64);
            t.set(WorkerGauge::NatPorts, ports as u64);
            t.set(WorkerGauge::NatPortsCooling, svc.nat_cooling() as u64);
            let (held, blocks, subscribers) = svc.nat_blocks();
            t.set(WorkerGauge::NatBlocksInUse, held as u64);
            t.set(WorkerGauge::NatBlocks, blocks as u64);
            t.set(WorkerGauge::NatSubscribers, subscribers as u64);
            t.set(WorkerGauge::CreatedPerSecond, created - lap.created_before);
            t.set(WorkerGauge::DeletedPerSecond, deleted - lap.deleted_before);
            (lap.created_before, lap.deleted_before) = (created, deleted);
        }
    }

    /// A batch from every socket, each frame decided; how many arrived.
    fn receive(&mut self, now: u32, lap: &mut Lap) -> usize {
        let mut received = 0;
        for pi in 0..self.ports.len() {
            // SAFETY: rx only hands out frames of this worker's UMEM.
            let n = unsafe { self.ports[pi].rx.consume(&mut lap.rx) };
            if n == 0 {
                continue;
            }
            received += n;
            let (slot, ingress) = (self.ports[pi].slot, self.ports[pi].ifindex);
            let services = self.services.is_some();
            if let Some(svc) = self.services.as_ref() {
                // Two passes of hints before the work: the frames'
                // headers, then (parsing them, once) the index entries
                // their lookups read.
                for desc in &lap.rx[..n] {
                    // SAFETY: the frame was just consumed from rx: it is
                    // this worker's alone.
                    let data = unsafe { self.umem.data(desc) };
                    hint::prefetch(data.contents().as_ptr());
                }
                for (desc, h) in lap.rx[..n].iter().zip(&mut lap.headers) {
                    // SAFETY: as above.
                    let frame = unsafe { self.umem.data(desc) }.contents();
                    *h = Headers::parse(frame);
                    if let Ok(h) = h {
                        svc.prefetch(frame, h, Some(ingress));
                    }
                }
            }
            for i in 0..n {
                let mut desc = lap.rx[i];
                let len = desc.lengths().data();
                let t = &mut lap.tally;
                t.iface(slot, IfaceCounter::RxPackets, 1);
                t.iface(slot, IfaceCounter::RxBytes, len as u64);
                t.add(WorkerCounter::RxBytes, len as u64);
                let at = Arrival {
                    len,
                    slot,
                    ingress,
                    handed: false,
                };
                let headers = services.then_some(lap.headers[i]);
                match self.decide(&mut desc, at, headers, now, &mut lap.tally) {
                    Out::Tx(s) => lap.pending[s].push(desc),
                    Out::Free => self.free.push(desc),
                }
            }
        }
        if received > 0 {
            lap.tally.add(WorkerCounter::RxPackets, received as u64);
            lap.tally.add(WorkerCounter::RxBatches, 1);
        }
        received
    }

    /// Frames other workers handed to this one, up to a batch, each copied
    /// into a free frame and decided; how many.
    fn take_handoffs(&mut self, now: u32, lap: &mut Lap) -> usize {
        let mut handed = 0;
        while handed < self.batch {
            let Some(batch) = self.handoff.recv(self.id) else {
                break;
            };
            handed += batch.len();
            lap.tally
                .add(WorkerCounter::HandoffsReceived, batch.len() as u64);
            let services = self.services.is_some();
            if let Some(svc) = self.services.as_ref() {
                for (_, frame) in batch.frames() {
                    hint::prefetch(frame.as_ptr());
                }
                for ((_, frame), h) in batch.frames().zip(&mut lap.headers) {
                    *h = Headers::parse(frame);
                    if let Ok(h) = h {
                        svc.prefetch(frame, h, None);
                    }
                }
            }
            for (i, (parcel, frame)) in batch.frames().enumerate() {
                let Some(mut desc) = self.free.pop() else {
                    lap.tally.drop(parcel.slot, DropReason::HandoffFull);
                    continue;
                };
                {
                    // SAFETY: the frame came from the free pool: no ring
                    // and no other reference holds it.
                    let mut data = unsafe { self.umem.data_mut(&mut desc) };
                    data.cursor().set_pos(usize::MAX);
                    data.contents_mut()[..frame.len()].copy_from_slice(frame);
                }
                let at = Arrival {
                    len: frame.len(),
                    slot: parcel.slot,
                    ingress: parcel.ingress,
                    handed: true,
                };
                let headers = services.then_some(lap.headers[i]);
                match self.decide(&mut desc, at, headers, now, &mut lap.tally) {
                    Out::Tx(s) => lap.pending[s].push(desc),
                    Out::Free => self.free.push(desc),
                }
            }
            self.handoff.recycle(self.id, batch);
        }
        handed
    }

    /// Transmits every slot's pending frames.
    fn transmit_pending(&mut self, lap: &mut Lap) {
        for s in 0..lap.pending.len() {
            if !lap.pending[s].is_empty() {
                self.transmit(lap.egress[s], &mut lap.pending[s], &mut lap.tally);
            }
        }
    }

    /// Nothing arrived: publish, post held frames, and sleep unless a
    /// role pass, aging, a listing or a cold-sync walk is under way.
    fn idle(&mut self, lap: &mut Lap, syncing: bool) {
        lap.tally.add(WorkerCounter::IdlePolls, 1);
        self.stats.publish(&lap.tally);
        // Frames held for an owner that was behind go now.
        self.handoff.flush_all(&mut self.outbox);
        if self.rewalk.is_some() || lap.aging {
            // A pass after a role change, or aging behind: go on at once.
        } else if self.walk.is_some() || syncing {
            // A listing waits on its reader, a cold-sync walk on room in
            // its ring: nap, don't spin.
            lap.poller.wait(WALK_POLL);
        } else if self.handoff.prepare_sleep(self.id) {
            lap.poller.wait(IDLE_POLL);
            self.handoff.awake(self.id);
        }
    }

    /// Takes a listing job if none is under way, and steps the one that is
    /// (a clear ends sessions, counted in `tally`).
    fn step_listing(&mut self, now: u32, tally: &mut Tally) {
        if self.walk.is_none() {
            self.walk = self
                .handoff
                .take_job(self.id)
                .map(|j| Walk::new(j, self.id));
        }
        let Some(w) = self.walk.as_mut() else {
            return;
        };
        let finished = match self.services.as_mut() {
            _ if w.describes_nat() => w.step_nat(|| {
                self.services
                    .as_ref()
                    .map_or_else(Vec::new, |svc| svc.nat_view(NAT_TOP))
            }),
            Some(svc) if w.clears() => w.step_clear(|from, filter| {
                svc.clear_some(from, CLEAR_SLOTS, |s| filter.matches(s), tally)
            }),
            Some(svc) => {
                let (table, mut flows) = svc.listing_view();
                let now_ns = flows.as_ref().map_or(0, |f| f.now_ns());
                w.step(Some(table), |s| {
                    if let Some(f) = flows.as_deref_mut() {
                        offload::add_forwarded(f, s, now, now_ns);
                    }
                })
            }
            None => w.step(None, |_| {}),
        };
        if finished {
            self.walk = None;
        }
    }

    /// After the node's role changed, one bounded step of a pass over the
    /// table: offloads are taken back, and on a node that now forwards
    /// every established session is offloaded, so that the fast path
    /// carries a new MASTER's synced sessions from their first packet.
    fn follow_role(&mut self, tally: &mut Tally) {
        let role = self.node.role.load(Ordering::Acquire);
        if role != self.role {
            self.role = role;
            self.rewalk = Some(0);
            // Only the node that forwards logs session events.
            if let Some(e) = self.services.as_mut().and_then(Services::events) {
                e.active = Node::forwards(role);
            }
        }
        let (Some(from), Some(svc)) = (self.rewalk, self.services.as_mut()) else {
            self.rewalk = None;
            return;
        };
        let routes = Routes {
            fib: self.fib.fib(),
            slots: &self.slot_ifindex,
        };
        self.rewalk =
            svc.reoffload_step(from, Node::forwards(role), |dst| routes.toward(dst), tally);
    }

    /// Applies a reloaded configuration: rules, timeouts and rate limits
    /// (between packets; sessions and offloads stay as they are).
    fn follow_config(&mut self) {
        let generation = self.live.generation();
        if generation == self.generation {
            return;
        }
        let cfg = self.live.config();
        self.limits.icmp.set_rate(cfg.dataplane.icmp_errors_per_sec);
        self.limits.punt.set_rate(cfg.dataplane.punts_per_sec);
        self.limits.reject.set_rate(cfg.sessions.rejects_per_sec);
        if let Some(svc) = self.services.as_mut() {
            svc.reconfigure(&cfg);
            if let Some(e) = svc.events() {
                e.wanted = cfg.log.events.wanted();
            }
        }
        self.generation = generation;
        self.live.applied(self.id, generation);
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }
}

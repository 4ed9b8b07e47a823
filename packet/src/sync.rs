//! Session replication on the data path: the rings between the workers and
//! the sync thread, and the records that travel them. (The protocol, its
//! codec and the connection state machine are `tandem_control::sync`; a
//! worker's own part is [`crate::service::sync`]; the sync thread is the
//! data plane's.)
//!
//! Design: each worker has two bounded lock-free rings with the sync
//! thread. Up the `events` ring go the worker's session events (add on
//! creation, delete on expiry, refresh on a TCP state change or when a
//! busy session's timer is pushed back) and the records of a cold-sync
//! walk; a full ring drops the event and counts it (`send_overflow`), and
//! repair sends it again: the session is marked and a bounded re-walk of
//! the worker's shard sends the marked ones when the ring has room (a lost
//! delete waits in a small parking list instead). What the peer refuses
//! comes back as a mark too, for one more try. Down the `commands` ring go
//! the peer's records for the worker that owns them here (the standby
//! side), walk requests and sweeps. Both rings carry plain `Copy` records:
//! no allocation and no lock on the worker's side, and nothing at all
//! while no peer is connected. Per-session order holds because a session's
//! events all come from its owner worker, through one FIFO ring.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use crossbeam_queue::ArrayQueue;
use tandem_control::{
    config::Config,
    sync::{DeleteRecord, Digest, NackReason, Op, RefreshRecord, SessionRecord, WireKey, wire},
};

use crate::session::{FlowKey, Origin, Session, SessionAction};

/// Events per worker ring, each way: at 600k new sessions per second a
/// worker fills a quarter of it in the sync thread's 1 ms turn.
pub const RING: usize = 16_384;
/// Records a cold-sync walk pushes per worker loop; it waits for this
/// much room so live events always find some.
pub const WALK_CHUNK: usize = 256;

/// From a worker to the sync thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToSync {
    Add(SessionRecord),
    Delete(DeleteRecord),
    Refresh(RefreshRecord),
    /// Walk `walk` is over on this worker: `sessions` records sent.
    WalkDone {
        walk: u32,
        sessions: u64,
    },
    /// (Standby) a record of message `seq` could not be applied.
    Refused {
        seq: u64,
        op: Op,
        reason: NackReason,
        key: WireKey,
    },
}

/// From the sync thread to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// (Standby) install or update the peer's session.
    Install {
        seq: u64,
        generation: u8,
        rec: SessionRecord,
    },
    /// (Standby) remove the peer's session.
    Remove { rec: DeleteRecord },
    /// (Standby) the peer's session is alive: new state and idle time.
    Refresh {
        seq: u64,
        generation: u8,
        rec: RefreshRecord,
    },
    /// (Active) the peer lacks this session: send its add again.
    Resend { key: WireKey },
    /// (Standby) a stub for the peer's session `rec`, which worker
    /// `holder` holds: this worker owns its flow's hash and hands the
    /// flow's packets and records on.
    Stub {
        generation: u8,
        rec: SessionRecord,
        holder: u8,
    },
    /// The session of `key` and `id` that a stub here stands for is gone.
    Unstub { key: WireKey, id: u64 },
    /// (Active) the peer may lack this session's latest record: the sync
    /// thread could not batch it (`refused: false`), or the peer refused
    /// it (`refused: true`: one more try, then it is left to a resync).
    /// Repair sends it again within a second.
    Mark { key: WireKey, refused: bool },
    /// (Active) send every session (a cold sync); a new walk replaces one
    /// under way.
    Walk { walk: u32 },
    /// (Standby) a cold sync ended: remove the peer's sessions it did not
    /// carry (older generations).
    Sweep { generation: u8 },
}

/// A worker's replication counters, read by the sync thread.
#[derive(Default)]
pub struct Counts {
    /// Events dropped because the `events` ring was full.
    pub overflow: AtomicU64,
    /// Peer session adds applied (new sessions and updates of held ones).
    pub installed: AtomicU64,
    pub removed: AtomicU64,
    pub not_found: AtomicU64,
    /// Peer sessions a sweep removed after a cold sync.
    pub swept: AtomicU64,
    /// Records repair sent again (marked sessions, parked deletes).
    pub repaired: AtomicU64,
    /// Sessions the peer refused again after their repair.
    pub abandoned: AtomicU64,
    /// Sessions that ended while marked, before repair sent them.
    pub ended_unsent: AtomicU64,
    /// The worker's shard's digest (see [`Digest`]): its two halves,
    /// stored each loop.
    pub digest_sessions: AtomicU64,
    pub digest_hash: AtomicU64,
}

impl Counts {
    /// The shard's digest as last stored (the halves may be a loop apart).
    pub fn digest(&self) -> Digest {
        Digest {
            sessions: self.digest_sessions.load(Ordering::Relaxed),
            hash: self.digest_hash.load(Ordering::Relaxed),
        }
    }
}

/// A worker's end of its `events` ring.
pub type EventsTx = rtrb::Producer<ToSync>;
/// The sync thread's end of a worker's `events` ring.
pub type EventsRx = rtrb::Consumer<ToSync>;

/// One worker's rings.
pub struct Port {
    /// The two ends of the `events` ring until the worker
    /// ([`Hub::events_sender`]) and the sync thread
    /// ([`Hub::events_receiver`]) take them, once, at start. The lock is
    /// for that hand-over only. One producer and one consumer: a pop never
    /// waits for a push in flight (an MPMC ring's pop spins on it, for a
    /// whole time slice when the pushing worker was preempted on the sync
    /// thread's core).
    events_tx: Mutex<Option<EventsTx>>,
    events_rx: Mutex<Option<EventsRx>>,
    /// From the sync thread, and from other workers (a stub's commands).
    pub commands: ArrayQueue<ToWorker>,
    /// Written by the worker only.
    pub counts: Counts,
}

/// The rings of every worker, shared by the workers and the sync thread.
pub struct Hub {
    pub ports: Vec<Port>,
    /// Whether the workers send their session events: only on the active
    /// side, while the peer is connected.
    live: AtomicBool,
}

impl Hub {
    pub fn new(workers: usize) -> Self {
        Self {
            ports: (0..workers)
                .map(|_| {
                    let (tx, rx) = rtrb::RingBuffer::new(RING);
                    Port {
                        events_tx: Mutex::new(Some(tx)),
                        events_rx: Mutex::new(Some(rx)),
                        commands: ArrayQueue::new(RING),
                        counts: Counts::default(),
                    }
                })
                .collect(),
            live: AtomicBool::new(false),
        }
    }

    /// Worker `w`'s end of its `events` ring; `None` once taken.
    pub fn events_sender(&self, w: usize) -> Option<EventsTx> {
        take(&self.ports.get(w)?.events_tx)
    }

    /// The sync thread's end of worker `w`'s `events` ring; `None` once
    /// taken.
    pub fn events_receiver(&self, w: usize) -> Option<EventsRx> {
        take(&self.ports.get(w)?.events_rx)
    }

    /// Pops worker `w`'s events in place of a sync thread (tests).
    #[cfg(test)]
    pub(crate) fn drain_events(&self, w: usize) -> Vec<ToSync> {
        let mut g = self.ports[w]
            .events_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = g.as_mut().expect("events receiver still in the hub");
        std::iter::from_fn(|| rx.pop().ok()).collect()
    }

    #[inline]
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Bumps a single-writer counter.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

pub fn wire_key(k: &FlowKey) -> WireKey {
    WireKey {
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
    }
}

pub fn flow_key(k: &WireKey) -> FlowKey {
    FlowKey {
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
    }
}

/// The add record of `s` at `now` (seconds on the worker clock).
pub fn record(s: &Session, now: u32) -> SessionRecord {
    let mut flags = 0;
    let (nat_addr, nat_port) = match s.nat() {
        Some((a, p)) => {
            flags |= wire::REC_NAT;
            (a, p)
        }
        None => ([0; 4], 0),
    };
    if s.origin() == Origin::Outside {
        flags |= wire::REC_OUTSIDE;
    }
    if s.is_dnat() {
        flags |= wire::REC_DNAT;
    }
    if s.is_static() {
        flags |= wire::REC_STATIC;
    }
    SessionRecord {
        id: s.id,
        key: wire_key(&s.key),
        state: s.state,
        action: s.action,
        flags,
        service_set: s.service_set,
        nat_addr,
        nat_port,
        age: now.saturating_sub(s.created),
        idle: now.saturating_sub(s.last_seen),
    }
}

pub fn delete_record(s: &Session) -> DeleteRecord {
    DeleteRecord {
        id: s.id,
        key: wire_key(&s.key),
    }
}

pub fn refresh_record(s: &Session, now: u32) -> RefreshRecord {
    RefreshRecord {
        id: s.id,
        key: wire_key(&s.key),
        state: s.state,
        idle: now.saturating_sub(s.last_seen),
    }
}

/// The session a (validated) record describes, as of `now`.
pub fn session(r: &SessionRecord, now: u32) -> Session {
    let origin = if r.flags & wire::REC_OUTSIDE != 0 {
        Origin::Outside
    } else {
        Origin::Inside
    };
    let mut s = Session::new(flow_key(&r.key), r.id, origin, r.service_set, now);
    s.created = now.saturating_sub(r.age);
    s.last_seen = now.saturating_sub(r.idle);
    s.state = r.state;
    s.action = match r.action {
        1 => SessionAction::Drop,
        2 => SessionAction::Reject,
        _ => SessionAction::Forward,
    } as u8;
    if r.flags & wire::REC_DNAT != 0 {
        s.set_dnat(r.nat_addr, r.nat_port);
    } else if r.flags & wire::REC_NAT != 0 {
        s.set_nat(r.nat_addr, r.nat_port);
    }
    if r.flags & wire::REC_STATIC != 0 {
        s.set_static();
    }
    s
}

/// Which local worker owns the peer's sessions: the one the data path
/// would hand the flow to here.
#[derive(Clone, Debug)]
pub struct Ownership {
    workers: usize,
    place: crate::session::Placement,
    /// Per service set: the NAT port range's first port and ports per
    /// worker, if the set translates.
    nat: Vec<Option<(u16, u32)>>,
}

impl Ownership {
    pub fn new(cfg: &Config, workers: usize) -> Self {
        Self {
            workers,
            place: crate::session::Placement::new(cfg, workers),
            nat: cfg
                .service_sets
                .iter()
                .map(|s| {
                    s.nat
                        .as_ref()
                        .map(|n| (n.ports.lo, n.ports.len() / workers as u32))
                })
                .collect(),
        }
    }

    /// Where a peer's session goes here: `(holder, stub)`. The holder is
    /// the worker its flow is placed on, or, for a translated session,
    /// the worker whose share holds its port (return traffic finds it
    /// there). When the two differ (the peer runs another number of
    /// workers), the hash's worker gets a stub that hands the flow on.
    /// `NatConflict` when the port is in no share here.
    pub fn owner(&self, r: &SessionRecord) -> Result<(usize, Option<usize>), NackReason> {
        let origin = if r.flags & wire::REC_OUTSIDE != 0 {
            Origin::Outside
        } else {
            Origin::Inside
        };
        let w = self.place.of(&flow_key(&r.key), origin);
        if r.flags & wire::REC_NAT == 0 {
            return Ok((w, None));
        }
        if r.flags & wire::REC_DNAT != 0 {
            // An outside flow to an inside host: the inside host's packets
            // are placed by its address.
            let inside = session(r, 0).reply_key();
            let w = self.place.of(&inside, Origin::Inside);
            if r.flags & wire::REC_STATIC != 0 {
                return Ok((w, None));
            }
            // Through a mapping: held where the pool pair's port is.
            let holder = self.port_owner(r.service_set, r.key.dport)?;
            return Ok((holder, (holder != w).then_some(w)));
        }
        if r.flags & wire::REC_STATIC != 0 {
            return Ok((w, None));
        }
        let holder = self.port_owner(r.service_set, r.nat_port)?;
        Ok((holder, (holder != w).then_some(w)))
    }

    /// The worker whose share of service set `set`'s pool holds `port`.
    fn port_owner(&self, set: u8, port: u16) -> Result<usize, NackReason> {
        let Some(Some((lo, span))) = self.nat.get(usize::from(set)) else {
            return Err(NackReason::NatConflict);
        };
        let off = u32::from(port.checked_sub(*lo).ok_or(NackReason::NatConflict)?);
        if *span == 0 {
            return Err(NackReason::NatConflict);
        }
        let holder = (off / span) as usize;
        if holder >= self.workers {
            return Err(NackReason::NatConflict);
        }
        Ok(holder)
    }

    /// The first worker to ask about the session whose initiator key is
    /// `k` (a delete, a refresh or a nack names no origin): its worker
    /// were it inside-initiated. That worker passes the command on when
    /// the session is not there (see `Services::elsewhere`).
    pub fn of_key(&self, k: &WireKey) -> usize {
        self.place.of(&flow_key(k), Origin::Inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TcpState;

    #[test]
    fn a_session_survives_its_record() {
        let mut s = Session::new(
            FlowKey::v4([10, 0, 0, 1], [10, 0, 1, 1], 40000, 443, 6),
            77,
            Origin::Inside,
            0,
            100,
        );
        s.state = TcpState::Established as u8;
        s.set_nat([198, 18, 2, 100], 2048);
        s.last_seen = 130;
        let r = record(&s, 140);
        assert_eq!((r.age, r.idle), (40, 10));
        assert_eq!(r.validate(1), Ok(()));
        let back = session(&r, 1000);
        assert_eq!(back.key, s.key);
        assert_eq!(back.id, 77);
        assert_eq!(back.nat(), s.nat());
        assert_eq!(back.reply_key(), s.reply_key());
        assert_eq!(back.origin(), Origin::Inside);
        assert_eq!(back.tcp_state(), Some(TcpState::Established));
        assert_eq!((back.created, back.last_seen), (960, 990));
        let o = Session::new(s.key, 1, Origin::Outside, 0, 0);
        assert_eq!(session(&record(&o, 5), 5).origin(), Origin::Outside);
    }
}

//! A worker's side of session replication (see [`crate::sync`]).
//!
//! Active side: session events go up the worker's ring while the peer is
//! connected, and a cold-sync walk sends every session in chunks of
//! [`WALK_CHUNK`], only when the ring has room for a whole chunk. Standby
//! side: the peer's records are installed into this worker's shard as
//! synced sessions, which age by their timeouts plus the grace delay, keep
//! their NAT bindings reserved in this worker's share of the pool, and are
//! swept after a cold sync if it did not carry them.
//!
//! Repair (active side): an add or refresh that does not fit the ring marks
//! its session `UNSENT`; a delete that does not fit is parked. At most once
//! a second, when the ring has room, a bounded re-walk of the shard sends
//! the marked sessions again (an add, which the peer applies as an update
//! when it holds the session) and the parked deletes. Marks also come from
//! the sync thread, for records it could not batch or the peer refused.

use std::sync::{Arc, atomic::Ordering};

use tandem_control::sync::{DeleteRecord, NackReason, Op, SessionRecord, WireKey, wire::PROTOCOLS};

use super::{Binding, Services, binding, mapping_endpoint, release};
use crate::{
    session::{Origin, Placement, Session, Side},
    sync::{self, Hub, ToSync, ToWorker, WALK_CHUNK, bump},
};

/// Commands a worker applies per loop: bounded, so forwarding never waits
/// long behind a burst of them.
const COMMANDS_PER_LOOP: usize = 256;
/// Slots a cold-sync walk visits per loop (a few microseconds when they
/// are empty; sessions found are bounded by the ring's room).
const WALK_SLOTS: usize = 16 * WALK_CHUNK;
/// Slots a sweep visits per loop.
const SWEEP_CHUNK: usize = 4096;
/// Deletes parked when the ring is full; beyond them a lost delete is
/// left to the digest check and a resync (the peer's copy ages out).
const PARKED: usize = 4096;
/// Seconds between the starts of two repair passes: a refused record is
/// not sent again at once, and a ring kept full is not re-walked in a loop.
/// Sessions marked only because their events were lost are sent sooner:
/// as soon as the ring is empty (the sync thread keeps up again).
const REPAIR_EVERY: u32 = 1;

struct Walk {
    id: u32,
    next: u32,
    sent: u64,
}

/// A worker's replication state.
pub struct WorkerSync {
    hub: Arc<Hub>,
    /// This worker's end of its `events` ring.
    pub(super) events: sync::EventsTx,
    walk: Option<Walk>,
    /// (generation to keep, next slot) of a sweep under way.
    sweep: Option<(u8, u32)>,
    /// Sessions are marked `UNSENT`: a repair pass is due.
    repair_due: bool,
    /// Some of them the peer refused: the pass waits for its second.
    refused_due: bool,
    /// The next slot of the repair pass under way.
    repair: Option<u32>,
    /// No repair pass starts before this second.
    next_repair: u32,
    /// Deletes that did not fit the ring (allocated once).
    parked: Vec<DeleteRecord>,
}

/// Sends an event about a session of protocol `proto` up `worker`'s ring
/// if this side sends and the peer is connected (the hub is live only
/// then) and the protocol replicates; `f` builds it only then. True when
/// the event was due and the ring was full (counted): the caller marks
/// the session for repair.
#[inline]
#[must_use]
pub(super) fn emit(
    replica: Option<&mut WorkerSync>,
    worker: usize,
    proto: u8,
    f: impl FnOnce() -> ToSync,
) -> bool {
    if let Some(r) = replica
        && r.hub.is_live()
        && PROTOCOLS.contains(&proto)
    {
        return !r.push(worker, f());
    }
    false
}

/// A session held by worker `me` whose flow the placement gives another
/// worker has a stub there (see [`ToWorker::Stub`]): it goes with the
/// session.
pub(super) fn unstub(r: &WorkerSync, place: Placement, me: usize, s: &crate::session::Session) {
    // A translated destination's stub is where the inside host's packets
    // go (see `sync::Ownership::owner`).
    let h = if s.is_dnat() {
        place.of(&s.reply_key(), Origin::Inside)
    } else {
        place.of(&s.key, s.origin())
    };
    if h != me && s.is_synced() && s.remote == 0 {
        forward(
            &r.hub,
            me,
            h,
            ToWorker::Unstub {
                key: sync::wire_key(&s.key),
                id: s.id,
            },
        );
    }
}

/// Worker `me` passes a command on to worker `w` (a stub's holder, or a
/// stub's worker); lost (counted as `me`'s overflow) when the ring is
/// full.
fn forward(hub: &Hub, me: usize, w: usize, cmd: ToWorker) {
    if hub.ports[w].commands.push(cmd).is_err() {
        bump(&hub.ports[me].counts.overflow, 1);
    }
}

impl WorkerSync {
    /// Pushes `ev`; false (counted) when the ring is full.
    #[inline]
    fn push(&mut self, worker: usize, ev: ToSync) -> bool {
        if self.events.push(ev).is_err() {
            bump(&self.hub.ports[worker].counts.overflow, 1);
            return false;
        }
        true
    }

    /// Room in the ring for a whole chunk of a walk and its end marker.
    fn room(&self) -> bool {
        self.events.slots() > WALK_CHUNK
    }

    /// A session's event was lost: repair sends it again.
    pub(super) fn mark(&mut self, s: &mut crate::session::Session) {
        s.set_unsent(true);
        self.repair_due = true;
    }

    /// A session ended still marked: the peer never had its latest record
    /// (its delete goes out all the same).
    pub(super) fn ended_unsent(&self, worker: usize) {
        bump(&self.hub.ports[worker].counts.ended_unsent, 1);
    }

    /// A delete was lost: parked for repair while there is room.
    pub(super) fn park(&mut self, d: DeleteRecord) {
        if self.parked.len() < PARKED {
            self.parked.push(d);
        }
    }
}

impl Services {
    /// Joins replication: the worker sends its sessions while the hub is
    /// live (this node active, the peer connected) and installs the
    /// peer's, which outlive their timeouts by `grace`, when told to.
    ///
    /// # Panics
    /// When this worker's end of the ring was taken already (it attaches
    /// once).
    pub fn attach(&mut self, hub: Arc<Hub>, grace: u32) {
        self.table.set_grace(grace);
        let events = hub
            .events_sender(self.worker)
            .expect("a worker attaches to its hub once");
        self.sync = Some(WorkerSync {
            hub,
            events,
            walk: None,
            sweep: None,
            repair_due: false,
            refused_due: false,
            repair: None,
            next_repair: 0,
            parked: Vec::with_capacity(PARKED),
        });
    }

    /// Replication work that can go on at once: commands waiting, or a
    /// sweep under way (the worker loops again without sleeping).
    pub fn sync_ready(&self) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|r| r.sweep.is_some() || !r.hub.ports[self.worker].commands.is_empty())
    }

    /// A repair pass under way, or deletes parked (like a walk, it may
    /// wait for room in the ring).
    pub fn sync_repairing(&self) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|r| r.repair.is_some() || !r.parked.is_empty())
    }

    /// A cold-sync walk under way (it may be waiting for room in the ring:
    /// the worker naps rather than spins).
    pub fn sync_walking(&self) -> bool {
        self.sync.as_ref().is_some_and(|r| r.walk.is_some())
    }

    /// One loop's replication work: a bounded number of commands, then a
    /// chunk of a walk or a sweep.
    pub fn sync_step(&mut self, now: u32) {
        let Some(mut r) = self.sync.take() else {
            return;
        };
        let w = self.worker;
        for _ in 0..COMMANDS_PER_LOOP {
            let Some(cmd) = r.hub.ports[w].commands.pop() else {
                break;
            };
            self.apply(&mut r, cmd, now);
        }
        if r.walk.is_some() && !r.hub.is_live() {
            // The connection it was for ended: its records would only be
            // discarded.
            r.walk = None;
        }
        if let Some(mut walk) = r.walk.take() {
            // Chunk by chunk while the ring has room for a whole one and
            // its end marker (a walk never pushes live events out), and at
            // most WALK_SLOTS slots per loop.
            let mut slots = 0;
            let mut done = false;
            while slots < WALK_SLOTS && r.room() {
                let events = &mut r.events;
                let next = self.table.scan(walk.next, WALK_CHUNK, |s| {
                    let _ = events.push(ToSync::Add(sync::record(s, now)));
                    walk.sent += 1;
                });
                slots += WALK_CHUNK;
                if let Some(n) = next {
                    walk.next = n;
                } else {
                    let end = ToSync::WalkDone {
                        walk: walk.id,
                        sessions: walk.sent,
                    };
                    let _ = r.push(w, end);
                    done = true;
                    break;
                }
            }
            if !done {
                r.walk = Some(walk);
            }
        }
        self.repair_step(&mut r, now);
        // A standby's pools log nothing (it does not forward), but their
        // logs are emptied.
        self.drain_blocks();
        let digest = self.table.digest();
        let counts = &r.hub.ports[w].counts;
        counts
            .digest_sessions
            .store(digest.sessions, Ordering::Relaxed);
        counts.digest_hash.store(digest.hash, Ordering::Relaxed);
        if let Some((keep, from)) = r.sweep {
            let sets = &mut self.sets;
            let (place, me) = (self.placement, self.worker);
            let mut n = 0;
            let next = self.table.sweep(
                from,
                SWEEP_CHUNK,
                |s| s.is_synced() && s.generation != keep,
                |s| {
                    if s.remote == 0 {
                        n += 1;
                    }
                    release(sets, s);
                    unstub(&r, place, me, s);
                },
            );
            bump(&r.hub.ports[w].counts.swept, n);
            r.sweep = next.map(|n| (keep, n));
        }
        self.sync = Some(r);
    }

    /// Sends parked deletes and, during a repair pass, the marked sessions
    /// of a bounded chunk of the shard, while the ring has room.
    fn repair_step(&mut self, r: &mut WorkerSync, now: u32) {
        let WorkerSync {
            hub,
            events,
            walk,
            repair_due,
            refused_due,
            repair,
            next_repair,
            parked,
            ..
        } = r;
        if !hub.is_live() {
            // The next connection's cold sync carries every session; its
            // deletes are moot.
            *repair = None;
            parked.clear();
            return;
        }
        let port = &hub.ports[self.worker];
        let mut sent = 0;
        while events.slots() > WALK_CHUNK
            && let Some(d) = parked.pop()
        {
            let _ = events.push(ToSync::Delete(d));
            sent += 1;
        }
        let drained = events.slots() == events.buffer().capacity();
        if repair.is_none()
            && *repair_due
            && walk.is_none()
            && (now >= *next_repair || (drained && !*refused_due))
        {
            *repair = Some(0);
            *repair_due = false;
            *refused_due = false;
            *next_repair = now + REPAIR_EVERY;
        }
        if let Some(mut from) = *repair {
            let mut slots = 0;
            let mut done = false;
            while slots < WALK_SLOTS && events.slots() > WALK_CHUNK {
                let next = self.table.scan_mut(from, WALK_CHUNK, |s| {
                    if s.is_unsent() {
                        s.set_unsent(false);
                        let _ = events.push(ToSync::Add(sync::record(s, now)));
                        sent += 1;
                    }
                });
                slots += WALK_CHUNK;
                if let Some(n) = next {
                    from = n;
                } else {
                    done = true;
                    break;
                }
            }
            *repair = (!done).then_some(from);
        }
        bump(&port.counts.repaired, sent);
    }

    fn apply(&mut self, r: &mut WorkerSync, cmd: ToWorker, now: u32) {
        let w = self.worker;
        // Records of a newer connection: a sweep for an older one would
        // take the sessions they stamp (the newer cold sync sweeps again).
        if let ToWorker::Install { generation, .. } | ToWorker::Refresh { generation, .. } = cmd
            && r.sweep.is_some_and(|(keep, _)| keep != generation)
        {
            r.sweep = None;
        }
        match cmd {
            ToWorker::Install {
                seq,
                generation,
                rec,
            } => match self.install(&rec, generation, now) {
                Ok(_) => bump(&r.hub.ports[w].counts.installed, 1),
                Err(reason) => {
                    let _ = r.push(
                        w,
                        ToSync::Refused {
                            seq,
                            op: Op::Add,
                            reason,
                            key: rec.key,
                        },
                    );
                }
            },
            // Only the session the delete was for: a parked delete may
            // come after the key was taken by a newer session.
            ToWorker::Remove { rec } => match self
                .find_synced(&rec.key)
                .filter(|&slot| self.table.get(slot).id == rec.id)
            {
                Some(slot) => {
                    let s = self.table.remove(slot);
                    if let Some(h) = s.stub_for() {
                        forward(&r.hub, w, h, cmd);
                    } else {
                        release(&mut self.sets, &s);
                        bump(&r.hub.ports[w].counts.removed, 1);
                        unstub(r, self.placement, w, &s);
                    }
                }
                None => match self.elsewhere(&rec.key) {
                    Some(other) => forward(&r.hub, w, other, cmd),
                    None => bump(&r.hub.ports[w].counts.not_found, 1),
                },
            },
            ToWorker::Stub {
                generation,
                rec,
                holder,
            } => self.install_stub(&rec, generation, holder, now),
            ToWorker::Unstub { key, id } => {
                if let Some(slot) = self
                    .find_synced(&key)
                    .filter(|&slot| self.table.get(slot).remote != 0)
                    .filter(|&slot| self.table.get(slot).id == id)
                {
                    self.table.remove(slot);
                }
            }
            ToWorker::Refresh {
                seq,
                generation,
                rec,
            } => match self.find_synced(&rec.key) {
                Some(slot) if self.table.get(slot).remote != 0 => {
                    let h = self.table.get(slot).stub_for().expect("a stub");
                    forward(&r.hub, w, h, cmd);
                }
                Some(slot) => {
                    let s = self.table.get_mut(slot);
                    s.state = rec.state;
                    s.last_seen = now.saturating_sub(rec.idle).max(s.last_seen);
                    s.generation = generation;
                    self.table.reschedule(slot);
                }
                None if let Some(other) = self.elsewhere(&rec.key) => {
                    forward(&r.hub, w, other, cmd);
                }
                None => {
                    let _ = r.push(
                        w,
                        ToSync::Refused {
                            seq,
                            op: Op::Refresh,
                            reason: NackReason::NotFound,
                            key: rec.key,
                        },
                    );
                }
            },
            ToWorker::Resend { key } | ToWorker::Mark { key, .. }
                if let Some(h) = self.stub_at(&key) =>
            {
                forward(&r.hub, w, h, cmd);
            }
            ToWorker::Resend { key } | ToWorker::Mark { key, .. }
                if self.table.lookup(&sync::flow_key(&key)).is_none()
                    && let Some(other) = self.elsewhere(&key) =>
            {
                forward(&r.hub, w, other, cmd);
            }
            ToWorker::Resend { key } => {
                if let Some((slot, Side::Initiator)) = self.table.lookup(&sync::flow_key(&key)) {
                    let rec = sync::record(self.table.get(slot), now);
                    if !r.push(w, ToSync::Add(rec)) {
                        self.table.get_mut(slot).set_unsent(true);
                        r.repair_due = true;
                    }
                }
            }
            ToWorker::Mark { key, refused } => {
                if let Some((slot, Side::Initiator)) = self.table.lookup(&sync::flow_key(&key)) {
                    let s = self.table.get_mut(slot);
                    if refused && s.was_retried() {
                        bump(&r.hub.ports[w].counts.abandoned, 1);
                    } else {
                        if refused {
                            s.set_retried();
                            r.refused_due = true;
                        }
                        s.set_unsent(true);
                        r.repair_due = true;
                    }
                }
            }
            ToWorker::Walk { walk } => {
                r.walk = Some(Walk {
                    id: walk,
                    next: 0,
                    sent: 0,
                });
            }
            ToWorker::Sweep { generation } => r.sweep = Some((generation, 0)),
        }
    }

    /// A command that names a session by its key alone goes first to the
    /// worker that would hold it were it inside-initiated
    /// ([`crate::sync::Ownership::of_key`]); one that finds no session
    /// there is passed on, once, to the worker that would hold it were it
    /// outside-initiated (the two differ only for IPv4 flows placed by
    /// subscriber).
    fn elsewhere(&self, k: &WireKey) -> Option<usize> {
        let key = sync::flow_key(k);
        // Where its packets from outside go: by the pool port or the
        // static rule for a flow to an outside address of the node.
        let other = self.owner(&key, Origin::Outside);
        (self.placement.of(&key, Origin::Inside) == self.worker && other != self.worker)
            .then_some(other)
    }

    /// The worker a stub here for the initiator key `k` stands for.
    fn stub_at(&self, k: &WireKey) -> Option<usize> {
        match self.table.lookup(&sync::flow_key(k)) {
            Some((slot, Side::Initiator)) => self.table.get(slot).stub_for(),
            _ => None,
        }
    }

    /// Installs a stub for the peer's session `rec`, which worker
    /// `holder` holds here. Whatever holds its key gives way, as for an
    /// install.
    fn install_stub(&mut self, rec: &SessionRecord, generation: u8, holder: u8, now: u32) {
        let mut s = sync::session(rec, now);
        s.set_synced(generation);
        s.remote = holder + 1;
        for k in [s.key, s.reply_key()] {
            if let Some((slot, _)) = self.table.lookup(&k) {
                let old = self.table.remove(slot);
                release(&mut self.sets, &old);
            }
        }
        // A full table leaves the flow without its stub: its packets here
        // find no session (counted as such) until the holder's goes.
        let _ = self.table.insert(s);
    }

    /// A peer's session between two inside hosts through an outside
    /// address of this node (its source-translated side goes to one, or
    /// its translated destination came from one) is hairpinned here too:
    /// the record does not say so, the addresses do.
    fn mark_hairpin(&self, s: &mut Session) {
        if s.nat().is_none() {
            return;
        }
        let other = if s.is_dnat() {
            s.key.src_v4()
        } else {
            s.key.dst_v4()
        };
        if other.is_some_and(|a| self.statics.is_external(a)) {
            s.set_hairpin();
            s.refuse_offload();
        }
    }

    /// The slot of the synced session whose initiator key is `k`.
    fn find_synced(&self, k: &WireKey) -> Option<u32> {
        match self.table.lookup(&sync::flow_key(k)) {
            Some((slot, Side::Initiator)) if self.table.get(slot).is_synced() => Some(slot),
            _ => None,
        }
    }

    /// Installs the peer's session (validated by the protocol); true when
    /// it is new here, false when it updated the copy already held. A
    /// session of this node that holds one of its keys gives way: the
    /// peer is the active side and its view wins.
    pub fn install(
        &mut self,
        rec: &SessionRecord,
        generation: u8,
        now: u32,
    ) -> Result<bool, NackReason> {
        if usize::from(rec.service_set) >= self.sets.len() {
            return Err(NackReason::IllegalServiceSet);
        }
        let mut s = sync::session(rec, now);
        s.set_synced(generation);
        self.mark_hairpin(&mut s);
        if let Some((slot, side)) = self.table.lookup(&s.key) {
            let cur = self.table.get_mut(slot);
            if side == Side::Initiator && cur.is_synced() && cur.id == s.id && cur.nat() == s.nat()
            {
                cur.state = s.state;
                cur.action = s.action;
                cur.last_seen = s.last_seen.max(cur.last_seen);
                cur.generation = generation;
                self.table.reschedule(slot);
                return Ok(false);
            }
            let old = self.table.remove(slot);
            release(&mut self.sets, &old);
        }
        if let Some((slot, _)) = self.table.lookup(&s.reply_key()) {
            let old = self.table.remove(slot);
            release(&mut self.sets, &old);
        }
        if let Some(Binding { addr, port, ep, .. }) = binding(&s) {
            let set = usize::from(s.service_set);
            let Some(pool) = self.sets[set].nat.as_mut() else {
                return Err(NackReason::NatConflict);
            };
            if !pool.reserve(addr, port, ep) {
                // A synced session still holding the binding for another
                // endpoint is stale (its delete was lost, or it went while
                // the link was down): the peer's newer binding wins.
                let stale = pool.holder(addr, port).filter(|&h| {
                    let x = self.table.get(h);
                    x.is_live()
                        && x.is_synced()
                        && binding(x).is_some_and(|b| (b.addr, b.port) == (addr, port))
                });
                let Some(h) = stale else {
                    return Err(NackReason::NatConflict);
                };
                let old = self.table.remove(h);
                release(&mut self.sets, &old);
                let pool = self.sets[set].nat.as_mut().expect("checked above");
                if !pool.reserve(addr, port, ep)
                    && !pool.steal(addr, port, ep, mapping_endpoint(&old))
                {
                    return Err(NackReason::NatConflict);
                }
            }
        }
        // Its outside host is remembered before the insert, so that a
        // refusal's release forgets it again.
        if let Some(b) = binding(&s)
            && let Some(pool) = self.sets[usize::from(s.service_set)].nat.as_mut()
            && pool.remembers_remotes()
        {
            pool.remote(b.addr, b.port, b.remote, true);
        }
        let Ok(slot) = self.table.insert(s) else {
            release(&mut self.sets, &s);
            return Err(NackReason::TableFull);
        };
        if let Some(b) = binding(&s)
            && let Some(pool) = self.sets[usize::from(s.service_set)].nat.as_mut()
        {
            pool.set_holder(b.addr, b.port, slot);
        }
        Ok(true)
    }
}

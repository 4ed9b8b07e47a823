//! A worker's side of session replication (see [`crate::sync`]).
//!
//! Active side: session events go up the worker's ring while the peer is
//! connected, and a cold-sync walk sends every session in chunks of
//! [`WALK_CHUNK`], only when the ring has room for a whole chunk. Standby
//! side: the peer's records are installed into this worker's shard as
//! synced sessions, which age by their timeouts plus the grace delay, keep
//! their NAT bindings reserved in this worker's share of the pool, and are
//! swept after a cold sync if it did not carry them.

use std::sync::Arc;

use tandem_control::sync::{NackReason, Op, SessionRecord, WireKey, wire::PROTOCOLS};

use super::{Services, release};
use crate::{
    session::Side,
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

struct Walk {
    id: u32,
    next: u32,
    sent: u64,
}

/// A worker's replication state.
pub struct WorkerSync {
    hub: Arc<Hub>,
    walk: Option<Walk>,
    /// (generation to keep, next slot) of a sweep under way.
    sweep: Option<(u8, u32)>,
}

/// Sends an event about a session of protocol `proto` up `worker`'s ring
/// if this side sends and the peer is connected (the hub is live only
/// then) and the protocol replicates; `f` builds it only then.
#[inline]
pub(super) fn emit(
    replica: Option<&WorkerSync>,
    worker: usize,
    proto: u8,
    f: impl FnOnce() -> ToSync,
) {
    if let Some(r) = replica
        && r.hub.is_live()
        && PROTOCOLS.contains(&proto)
    {
        push(&r.hub, worker, f());
    }
}

fn push(hub: &Hub, worker: usize, ev: ToSync) {
    let port = &hub.ports[worker];
    if port.events.push(ev).is_err() {
        bump(&port.counts.overflow, 1);
    }
}

impl Services {
    /// Joins replication: the worker sends its sessions while the hub is
    /// live (this node active, the peer connected) and installs the
    /// peer's, which outlive their timeouts by `grace`, when told to.
    pub fn attach(&mut self, hub: Arc<Hub>, grace: u32) {
        self.table.set_grace(grace);
        self.sync = Some(WorkerSync {
            hub,
            walk: None,
            sweep: None,
        });
    }

    /// Replication work that can go on at once: commands waiting, or a
    /// sweep under way (the worker loops again without sleeping).
    pub fn sync_ready(&self) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|r| r.sweep.is_some() || !r.hub.ports[self.worker].commands.is_empty())
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
        if let Some(walk) = r.walk.as_mut() {
            let port = &r.hub.ports[w];
            // Chunk by chunk while the ring has room for a whole one and
            // its end marker (a walk never pushes live events out), and at
            // most WALK_SLOTS slots per loop.
            let mut slots = 0;
            while slots < WALK_SLOTS && port.events.capacity() - port.events.len() > WALK_CHUNK {
                let next = self.table.scan(walk.next, WALK_CHUNK, |s| {
                    let _ = port.events.push(ToSync::Add(sync::record(s, now)));
                    walk.sent += 1;
                });
                slots += WALK_CHUNK;
                if let Some(n) = next {
                    walk.next = n;
                } else {
                    let done = ToSync::WalkDone {
                        walk: walk.id,
                        sessions: walk.sent,
                    };
                    push(&r.hub, w, done);
                    r.walk = None;
                    break;
                }
            }
        }
        if let Some((keep, from)) = r.sweep {
            let sets = &mut self.sets;
            let mut n = 0;
            let next = self.table.sweep(
                from,
                SWEEP_CHUNK,
                |s| s.is_synced() && s.generation != keep,
                |s| {
                    n += 1;
                    release(sets, s);
                },
            );
            bump(&r.hub.ports[w].counts.swept, n);
            r.sweep = next.map(|n| (keep, n));
        }
        self.sync = Some(r);
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
        let counts = &r.hub.ports[w].counts;
        match cmd {
            ToWorker::Install {
                seq,
                generation,
                rec,
            } => match self.install(&rec, generation, now) {
                Ok(_) => bump(&counts.installed, 1),
                Err(reason) => push(
                    &r.hub,
                    w,
                    ToSync::Refused {
                        seq,
                        op: Op::Add,
                        reason,
                        key: rec.key,
                    },
                ),
            },
            ToWorker::Remove { rec } => match self.find_synced(&rec.key) {
                Some(slot) => {
                    let s = self.table.remove(slot);
                    release(&mut self.sets, &s);
                    bump(&counts.removed, 1);
                }
                None => bump(&counts.not_found, 1),
            },
            ToWorker::Refresh {
                seq,
                generation,
                rec,
            } => match self.find_synced(&rec.key) {
                Some(slot) => {
                    let s = self.table.get_mut(slot);
                    s.state = rec.state;
                    s.last_seen = now.saturating_sub(rec.idle).max(s.last_seen);
                    s.generation = generation;
                    self.table.reschedule(slot);
                }
                None => push(
                    &r.hub,
                    w,
                    ToSync::Refused {
                        seq,
                        op: Op::Refresh,
                        reason: NackReason::NotFound,
                        key: rec.key,
                    },
                ),
            },
            ToWorker::Resend { key } => {
                if let Some((slot, Side::Initiator)) = self.table.lookup(&sync::flow_key(&key)) {
                    let rec = sync::record(self.table.get(slot), now);
                    push(&r.hub, w, ToSync::Add(rec));
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
        if let Some((addr, port)) = s.nat() {
            let set = usize::from(s.service_set);
            let Some(pool) = self.sets[set].nat.as_mut() else {
                return Err(NackReason::NatConflict);
            };
            if !pool.reserve(addr, port) {
                // A synced session still holding the binding is stale (its
                // delete was lost, or it went while the link was down):
                // the peer's newer binding wins.
                let stale = pool.holder(addr, port).filter(|&h| {
                    let x = self.table.get(h);
                    x.is_live() && x.is_synced() && x.nat() == Some((addr, port))
                });
                let Some(h) = stale else {
                    return Err(NackReason::NatConflict);
                };
                let old = self.table.remove(h);
                release(&mut self.sets, &old);
                let pool = self.sets[set].nat.as_mut().expect("checked above");
                if !pool.reserve(addr, port) {
                    return Err(NackReason::NatConflict);
                }
            }
        }
        let Ok(slot) = self.table.insert(s) else {
            release(&mut self.sets, &s);
            return Err(NackReason::TableFull);
        };
        if let Some((addr, port)) = s.nat()
            && let Some(pool) = self.sets[usize::from(s.service_set)].nat.as_mut()
        {
            pool.set_holder(addr, port, slot);
        }
        Ok(true)
    }
}

//! How a session ends, by expiry or by an operator's `tandemctl clear
//! sessions [filters]` (a bounded chunk of the table at a time).

use super::{Releases, Services, Set, fastpath::take_back, release, sync};
use crate::{
    counters::{Tally, WorkerCounter},
    events::{EventKind, EventSink},
    offload::FlowTable,
    session::{Placement, Session},
    sync::{ToSync, delete_record},
};

/// What follows a session out of worker `worker`'s table (of `workers`):
/// its offload taken back (true if there was one), its NAT binding
/// released (or queued in `defer`, to be released with others), its stub
/// on another worker dropped, the peer told (the delete parked if the ring
/// is full), and the event log told why, with its final counts (the fast
/// path's included).
pub(super) fn ended<F: FlowTable + ?Sized>(
    s: &Session,
    (sets, defer): (&mut [Set], Option<&mut Releases>),
    flows: Option<&mut F>,
    mut rep: Option<&mut sync::WorkerSync>,
    log: Option<(&mut EventSink, EventKind)>,
    (worker, place): (usize, Placement),
) -> bool {
    let mut last = *s;
    let taken = take_back(flows, &mut last);
    if let Some((sink, why)) = log {
        sink.push(why, &last);
    }
    match defer {
        Some(d) => d.push(sets, s),
        None => release(sets, s),
    }
    if let Some(r) = rep.as_deref() {
        sync::unstub(r, place, worker, s);
        if s.is_unsent() {
            r.ended_unsent(worker);
        }
    }
    if sync::emit(rep.as_deref_mut(), worker, s.key.proto, || {
        ToSync::Delete(delete_record(s))
    }) && let Some(r) = rep
    {
        r.park(delete_record(s));
    }
    taken
}

impl Services {
    /// Ends the sessions `pick` chooses among at most `max_slots` slots
    /// from `from`, as expiry would ([`ended`]). Returns where to go on
    /// (`None`: the table is done) and how many ended.
    pub fn clear_some(
        &mut self,
        from: u32,
        max_slots: usize,
        pick: impl Fn(&Session) -> bool,
        tally: &mut Tally,
    ) -> (Option<u32>, u64) {
        let (mut n, mut taken) = (0u64, 0u64);
        let sets = &mut self.sets;
        let (mut rep, ids) = (self.sync.as_mut(), (self.worker, self.placement));
        let mut flows = self.flows.as_deref_mut();
        let mut events = self.events.as_mut();
        // Stubs are another worker's sessions: that worker clears them.
        let next = self.table.sweep(
            from,
            max_slots,
            |s| s.remote == 0 && pick(s),
            |s| {
                n += 1;
                let log = events.as_deref_mut().map(|e| (e, EventKind::Cleared));
                let sets = (&mut sets[..], None);
                if ended(s, sets, flows.as_deref_mut(), rep.as_deref_mut(), log, ids) {
                    taken += 1;
                }
            },
        );
        tally.add(WorkerCounter::SessionsDeleted, n);
        tally.add(WorkerCounter::OffloadsRemoved, taken);
        self.drain_blocks();
        (next, n)
    }
}

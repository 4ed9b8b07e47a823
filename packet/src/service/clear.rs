//! An operator's `tandemctl clear sessions [filters]`: sessions end as
//! expiry ends them, a bounded chunk of the table at a time.

use super::{Services, fastpath::take_back, release, sync};
use crate::{
    counters::{Tally, WorkerCounter},
    session::Session,
    sync::{ToSync, delete_record},
};

impl Services {
    /// Ends the sessions `pick` chooses among at most `max_slots` slots
    /// from `from`, as expiry would: the offload taken back, the NAT
    /// binding released, the peer told (a delete). Returns where to go on
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
        let (mut rep, worker, workers) = (self.sync.as_mut(), self.worker, self.workers);
        let mut flows = self.flows.as_deref_mut();
        // Stubs are another worker's sessions: that worker clears them.
        let next = self.table.sweep(
            from,
            max_slots,
            |s| s.remote == 0 && pick(s),
            |s| {
                n += 1;
                if take_back(flows.as_deref_mut(), &mut s.clone()) {
                    taken += 1;
                }
                release(sets, s);
                if let Some(r) = rep.as_deref() {
                    sync::unstub(r, workers, worker, s);
                    if s.is_unsent() {
                        r.ended_unsent(worker);
                    }
                }
                if sync::emit(rep.as_deref_mut(), worker, s.key.proto, || {
                    ToSync::Delete(delete_record(s))
                }) && let Some(r) = rep.as_deref_mut()
                {
                    r.park(delete_record(s));
                }
            },
        );
        tally.add(WorkerCounter::SessionsDeleted, n);
        tally.add(WorkerCounter::OffloadsRemoved, taken);
        (next, n)
    }
}

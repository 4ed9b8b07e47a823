//! Session offload from a worker's side: which sessions go to the fast
//! path, installing both directions, taking them back, and the pass over
//! the table when the node's role changes.

use std::net::IpAddr;

use tandem_control::{config, sync::wire::ANSWERED};

use super::Services;
use crate::{
    counters::{Tally, WorkerCounter},
    offload::{self, Egress, FlowTable, WriteError},
    session::{Session, SessionAction, Side, Table, TcpState},
};

impl Services {
    /// Lets this worker offload established sessions of the service sets
    /// that allow it into `flows`.
    pub fn set_flow_map(&mut self, flows: Box<dyn FlowTable>) {
        self.flows = Some(flows);
    }

    /// Moves the fast path's clock to now, if this worker offloads (once
    /// per loop).
    pub fn advance_clock(&self) {
        if let Some(f) = &self.flows {
            f.advance_clock();
        }
    }

    /// Whether any service set offloads.
    pub fn offloads(cfg: &config::Config) -> bool {
        cfg.service_sets.iter().any(|s| s.offload)
    }

    /// The session the last packet made ready for offload, if any.
    pub fn take_offer(&mut self) -> Option<(u32, Side)> {
        self.offer.take()
    }

    /// The table and the flow map, for a listing that adds offloaded
    /// sessions' fast-path counts to its copies.
    pub fn listing_view(&mut self) -> (&Table, Option<&mut (dyn FlowTable + 'static)>) {
        (&self.table, self.flows.as_deref_mut())
    }

    /// Installs both directions of the session in `slot`: the packet from
    /// `side` leaves by `this`, the other direction's by `other`. A map
    /// that is full or refuses leaves the session on the worker path for
    /// good, counted.
    pub fn offload(
        &mut self,
        slot: u32,
        side: Side,
        this: Egress,
        other: Egress,
        tally: &mut Tally,
    ) {
        let Some(flows) = self.flows.as_mut() else {
            return;
        };
        let s = self.table.get_mut(slot);
        let Some(dirs) = offload::directions(s) else {
            s.refuse_offload();
            return;
        };
        let (init_out, reply_out) = match side {
            Side::Initiator => (this, other),
            Side::Responder => (other, this),
        };
        let [(ik, inat), (rk, rnat)] = dirs;
        let r = flows.install(&ik, init_out, inat).and_then(|()| {
            flows.install(&rk, reply_out, rnat).inspect_err(|_| {
                flows.remove_dir(&ik);
            })
        });
        match r {
            Ok(()) => {
                s.set_offloaded(true);
                tally.add(WorkerCounter::OffloadsInstalled, 1);
            }
            Err(e) => {
                s.refuse_offload();
                tally.add(
                    if e == WriteError::Full {
                        WorkerCounter::OffloadMapFull
                    } else {
                        WorkerCounter::OffloadFailures
                    },
                    1,
                );
            }
        }
    }

    /// Whether `s`, not offloaded, should be: established, forwarded, in
    /// a set that offloads, and not refused by the map before.
    pub(super) fn may_offload(&self, s: &Session) -> bool {
        established(s)
            && s.action() == SessionAction::Forward
            && !s.offload_refused()
            && self.sets[usize::from(s.service_set)].offload
    }

    /// One bounded step (`REWALK_SLOTS` slots from `from`) of the pass a
    /// worker makes over its table when the node's role changes: every
    /// offload is taken back (a node that stops forwarding has its map
    /// cleared); on a node that now `forwards`, every session that may be
    /// offloaded is, each direction by the route `route` gives to its
    /// destination (the initiator's toward the responder, the reply
    /// toward the initiator). A session whose routes are not resolved
    /// waits for its next packet. The next slot, or `None` when done.
    pub fn reoffload_step(
        &mut self,
        from: u32,
        forwards: bool,
        mut route: impl FnMut(IpAddr) -> Option<Egress>,
        tally: &mut Tally,
    ) -> Option<u32> {
        self.flows.as_ref()?;
        let end = (from as usize)
            .saturating_add(REWALK_SLOTS)
            .min(self.table.capacity());
        for slot in from as usize..end {
            let slot = u32::try_from(slot).ok()?;
            if !self.table.get(slot).is_live() {
                continue;
            }
            self.unoffload(slot, tally);
            let s = self.table.get(slot);
            if !forwards || !self.may_offload(s) {
                continue;
            }
            // A translated destination's packets go to the inside host.
            let dst = match s.inside_endpoint().filter(|_| s.is_dnat()) {
                Some((a, _)) => IpAddr::from(a),
                None => s.key.dst_ip(),
            };
            let src = s.key.src_ip();
            if let (Some(init_out), Some(reply_out)) = (route(dst), route(src)) {
                self.offload(slot, Side::Initiator, init_out, reply_out, tally);
            }
        }
        (end < self.table.capacity())
            .then(|| u32::try_from(end).ok())
            .flatten()
    }

    /// Takes the session in `slot` back from the fast path, adding what
    /// the program forwarded to its counters.
    pub(super) fn unoffload(&mut self, slot: u32, tally: &mut Tally) {
        let s = self.table.get_mut(slot);
        if take_back(self.flows.as_deref_mut(), s) {
            tally.add(WorkerCounter::OffloadsRemoved, 1);
        }
    }
}

/// Whether `s` has seen its handshake (TCP) or a reply (other protocols;
/// on a synced session, the state its record carried).
pub(super) fn established(s: &Session) -> bool {
    match s.tcp_state() {
        Some(t) => t == TcpState::Established,
        None => s.state == ANSWERED,
    }
}

/// Slots one step of a role-change pass looks at.
const REWALK_SLOTS: usize = 4096;

/// Removes both directions of `s` from `flows` if it is offloaded,
/// folding what the program forwarded into its counters; whether it was.
pub(super) fn take_back<F: FlowTable + ?Sized>(flows: Option<&mut F>, s: &mut Session) -> bool {
    if !s.is_offloaded() {
        return false;
    }
    s.set_offloaded(false);
    if let (Some(flows), Some(dirs)) = (flows, offload::directions(s)) {
        for (i, (k, _)) in dirs.iter().enumerate() {
            if let Some(f) = flows.remove_dir(k) {
                s.packets[i] += f.packets;
                s.bytes[i] += f.bytes;
            }
        }
    }
    true
}

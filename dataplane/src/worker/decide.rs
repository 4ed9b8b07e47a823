//! One frame through the packet layer's decision ([`path::decide`]), and
//! the outside world it asks for: the frame handed to its owner worker,
//! a datagram given to the kernel, the egress slot to transmit on.

use tandem_packet::{
    counters::{Tally, WorkerCounter},
    forward::{Action, DropReason},
    path::{self, Arrival, Context, Decision, Routes},
    wire::{ETH_HLEN, Headers, ParseError},
};
use xsk_rs::FrameDesc;

use super::{Worker, tx::punt};

/// Where a decided frame goes: transmit on an interface slot, or back to
/// the free pool.
pub(super) enum Out {
    Tx(usize),
    Free,
}

impl Worker {
    /// Decides one frame that arrived as `at` (with the headers the
    /// prefetch pass parsed, if it ran). The frame is ready to transmit
    /// when this returns `Out::Tx`.
    pub(super) fn decide(
        &mut self,
        desc: &mut FrameDesc,
        at: Arrival,
        headers: Option<Result<Headers, ParseError>>,
        now: u32,
        tally: &mut Tally,
    ) -> Out {
        let routes = Routes {
            fib: self.fib.fib(),
            slots: &self.slot_ifindex,
        };
        let action = {
            // SAFETY: the frame is this worker's alone: just consumed from
            // rx, or taken from the free pool.
            let mut data = unsafe { self.umem.data_mut(desc) };
            data.cursor().set_pos(usize::MAX);
            let buf = data.contents_mut();
            let mut cx = Context {
                routes,
                limits: &mut self.limits,
                services: self.services.as_mut(),
            };
            let action = match path::decide(&mut cx, buf, at, headers, now, tally) {
                Decision::Act(a) => a,
                Decision::Handoff {
                    to,
                    len,
                    slot,
                    ingress,
                } => {
                    if self
                        .handoff
                        .send(&mut self.outbox, to, slot, ingress, &buf[..len])
                    {
                        tally.handoff(to);
                    } else {
                        tally.drop(at.slot, DropReason::HandoffFull);
                    }
                    return Out::Free;
                }
            };
            match action {
                Action::Punt { l3, len, v6, .. } => {
                    punt(&self.punt, &buf[l3..l3 + len], v6, tally);
                }
                Action::PuntIcmpError { len, v6, .. } | Action::PuntReply { len, v6, .. } => {
                    punt(&self.punt, &buf[ETH_HLEN..len], v6, tally);
                }
                _ => {}
            }
            action
        };
        let Some((oif, len)) = path::account(action, at.slot, tally) else {
            return Out::Free;
        };
        let Some(s) = routes.slot_of(oif) else {
            tally.drop(at.slot, DropReason::ForeignEgress);
            return Out::Free;
        };
        if matches!(action, Action::Forward { .. }) {
            tally.add(WorkerCounter::Forwarded, 1);
        }
        // SAFETY: as above; sets the length to transmit.
        unsafe { self.umem.data_mut(desc) }.cursor().set_pos(len);
        Out::Tx(s)
    }
}

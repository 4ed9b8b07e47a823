//! The decision for one frame: parse, services, route, rewrite, and what
//! the worker does with it next (transmit on a slot, hand it to its owner,
//! punt it, or free it), with the counters each outcome moves.

use std::net::IpAddr;

use xsk_rs::FrameDesc;

use super::Worker;
use crate::{
    counters::{Tally, WorkerCounter},
    fib::{Fib, NextHop},
    forward::{self, Action, DropReason},
    service::{Services, Verdict},
    session::Side,
    wire::{self, ETH_HLEN, PROTO_TCP},
    xdp::offload::Egress,
};

use super::tx::punt;

/// Where a frame came from: its length and the interface it arrived on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Arrival {
    /// Bytes received.
    pub len: usize,
    /// Interface slot, and its ifindex.
    pub slot: usize,
    pub ingress: u32,
}

/// Where a decided frame goes: transmit on an interface slot, or back to
/// the free pool.
pub(super) enum Out {
    Tx(usize),
    Free,
}

/// How this node's interfaces are reached: the FIB snapshot and the
/// ifindex of each interface slot.
#[derive(Clone, Copy)]
pub(super) struct Routes<'a> {
    pub fib: &'a Fib,
    pub slots: &'a [u32],
}

impl Routes<'_> {
    /// The resolved next hop toward `dst`, either family.
    fn lookup(self, dst: IpAddr) -> Option<NextHop> {
        match dst {
            IpAddr::V4(a) => self.fib.lookup4(a),
            IpAddr::V6(a) => self.fib.lookup6(a),
        }
        .ok()
    }

    /// How the fast path sends out of `oif` (an interface this node owns).
    fn egress(self, oif: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Option<Egress> {
        Some(Egress {
            slot: u32::try_from(self.slots.iter().position(|i| *i == oif)?).ok()?,
            dst_mac,
            src_mac,
            mtu: u16::try_from(self.fib.link(oif)?.mtu).unwrap_or(u16::MAX),
        })
    }

    /// How the fast path reaches `dst`, if its next hop is resolved.
    pub fn toward(self, dst: IpAddr) -> Option<Egress> {
        let hop = self.lookup(dst)?;
        self.egress(hop.oif, hop.dst_mac, hop.src_mac)
    }

    /// Offloads the session in `slot` that the packet from `side`, just
    /// routed out of `oif` in `frame`, found established: its direction
    /// leaves as this packet does, the other by the route back to this
    /// packet's sender. An unresolved route back waits for a later packet.
    fn offer(
        self,
        svc: &mut Services,
        (slot, side): (u32, Side),
        oif: u32,
        frame: &[u8],
        tally: &mut Tally,
    ) {
        let mut dst_mac = [0u8; 6];
        let mut src_mac = [0u8; 6];
        dst_mac.copy_from_slice(&frame[..6]);
        src_mac.copy_from_slice(&frame[6..12]);
        let Some(this) = self.egress(oif, dst_mac, src_mac) else {
            return;
        };
        let s = svc.session(slot);
        let back = match side {
            Side::Initiator => s.key.src_ip(),
            Side::Responder => s.key.dst_ip(),
        };
        if let Some(other) = self.toward(back) {
            svc.offload(slot, side, this, other, tally);
        }
    }
}

impl Worker {
    /// Decides one frame that arrived as `at`: parse, services, route,
    /// rewrite. The frame is ready to transmit when this returns
    /// `Out::Tx`.
    pub(super) fn decide(
        &mut self,
        desc: &mut FrameDesc,
        at: Arrival,
        now: u32,
        tally: &mut Tally,
    ) -> Out {
        let action = {
            // SAFETY: the frame is this worker's alone: just consumed from
            // rx, or taken from the free pool.
            let mut data = unsafe { self.umem.data_mut(desc) };
            data.cursor().set_pos(usize::MAX);
            let buf = data.contents_mut();
            let routes = Routes {
                fib: self.fib.fib(),
                slots: &self.slot_ifindex,
            };
            let action = match forward::prepare(buf, at.len) {
                Err(r) => Action::Drop(r),
                Ok(ip) => {
                    let verdict = match self.services.as_mut() {
                        Some(svc) => svc.process(buf, &ip, at.ingress, now, tally),
                        None => Verdict::Pass { snat: None },
                    };
                    match verdict {
                        Verdict::Pass { snat } => {
                            let ip = ip.redirected(buf);
                            let a =
                                forward::route(buf, ip, at.ingress, routes.fib, &mut self.limits);
                            if let (Some(snat), Action::Forward { .. } | Action::Punt { .. }) =
                                (snat, a)
                            {
                                snat.apply(buf, ETH_HLEN);
                            }
                            if let Action::Forward { oif, .. } = a
                                && let Some(svc) = self.services.as_mut()
                                && let Some(offer) = svc.take_offer()
                            {
                                routes.offer(svc, offer, oif, buf, tally);
                            }
                            a
                        }
                        Verdict::Handoff(to) => {
                            let n = ETH_HLEN + ip.datagram_len();
                            if self.handoff.send(
                                &mut self.outbox,
                                to,
                                at.slot,
                                at.ingress,
                                &buf[..n],
                            ) {
                                tally.handoff(to);
                            } else {
                                tally.drop(at.slot, DropReason::HandoffFull);
                            }
                            return Out::Free;
                        }
                        Verdict::Reject(l4) => {
                            if !self.limits.reject.allow() {
                                Action::Drop(DropReason::Policy)
                            } else if l4.proto == PROTO_TCP {
                                match wire::tcp_reset(buf, &ip, &l4) {
                                    Some(rst) => as_reply(forward::route(
                                        buf,
                                        rst,
                                        at.ingress,
                                        routes.fib,
                                        &mut self.limits,
                                    )),
                                    None => Action::Drop(DropReason::Policy),
                                }
                            } else {
                                as_reply(forward::reject_icmp(
                                    buf,
                                    ip,
                                    at.ingress,
                                    routes.fib,
                                    &mut self.limits,
                                ))
                            }
                        }
                        Verdict::Drop(r) => Action::Drop(r),
                    }
                }
            };
            match action {
                Action::Punt { l3, len, v6 } => {
                    punt(&self.punt, &buf[l3..l3 + len], v6, tally);
                }
                Action::PuntIcmpError { len, v6, .. } | Action::PuntReply { len, v6, .. } => {
                    punt(&self.punt, &buf[ETH_HLEN..len], v6, tally);
                }
                _ => {}
            }
            action
        };
        let Some((oif, len)) = count(action, at.slot, tally) else {
            return Out::Free;
        };
        let Some(s) = self.slot_ifindex.iter().position(|i| *i == oif) else {
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

/// Counts what `action` did to a frame that arrived on `slot`; the
/// egress and length when a frame is to be transmitted.
fn count(action: Action, slot: usize, tally: &mut Tally) -> Option<(u32, usize)> {
    match action {
        Action::Forward { oif, len } => Some((oif, len)),
        Action::IcmpError { oif, len, reason } => {
            tally.drop(slot, reason);
            tally.add(WorkerCounter::IcmpErrorsSent, 1);
            Some((oif, len))
        }
        Action::Reply { oif, len, reason } => {
            tally.drop(slot, reason);
            tally.add(WorkerCounter::RejectsSent, 1);
            Some((oif, len))
        }
        Action::PuntIcmpError { reason, .. } => {
            tally.drop(slot, reason);
            tally.add(WorkerCounter::IcmpErrorsSent, 1);
            None
        }
        Action::PuntReply { reason, .. } => {
            tally.drop(slot, reason);
            tally.add(WorkerCounter::RejectsSent, 1);
            None
        }
        Action::IcmpSuppressed { reason } => {
            tally.drop(slot, reason);
            tally.add(WorkerCounter::IcmpErrorsSuppressed, 1);
            None
        }
        Action::Punt { .. } => None,
        Action::Drop(r) => {
            tally.drop(slot, r);
            None
        }
    }
}

/// A routed reject (reset or unreachable) becomes a reply, transmitted or
/// punted to the kernel to resolve its next hop; one that could not be
/// routed leaves the original dropped for policy.
fn as_reply(a: Action) -> Action {
    let reason = DropReason::Policy;
    match a {
        Action::Forward { oif, len } | Action::IcmpError { oif, len, .. } => {
            Action::Reply { oif, len, reason }
        }
        // The reply was built at ETH_HLEN, so l3 + len is where it ends.
        Action::Punt { l3, len, v6 } => Action::PuntReply {
            len: l3 + len,
            v6,
            reason,
        },
        Action::PuntIcmpError { len, v6, .. } => Action::PuntReply { len, v6, reason },
        _ => Action::Drop(reason),
    }
}

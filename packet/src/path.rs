//! The whole decision for one frame, from its Ethernet header to what the
//! worker does next: parse (once: the worker's prefetch pass hands its
//! [`Headers`] in), untag, services, route, rewrite, and offer an
//! established session to the fast path.
//!
//! Design: a pure function of the frame, the FIB snapshot, the rate
//! limiters and the worker's services. What needs the outside world stays
//! with the caller: handing a frame to its owner worker, giving one to
//! the kernel, putting one on a tx ring. [`account`] turns the outcome
//! into counters, the same for every caller (the worker, the fuzzer, the
//! benchmarks).

use std::net::IpAddr;

use crate::{
    counters::{Tally, WorkerCounter},
    fib::{Fib, NextHop, RouteKind},
    forward::{self, Action, DropReason, Limits},
    offload::Egress,
    service::{Services, Verdict},
    session::Side,
    wire::{self, ETH_HLEN, Headers, PROTO_TCP, ParseError},
};

/// Where a frame came from: its length and the interface it arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Bytes received.
    pub len: usize,
    /// Interface slot, and its ifindex.
    pub slot: usize,
    pub ingress: u32,
    /// Handed over by another worker: decided here, never handed on.
    pub handed: bool,
}

/// What the worker does with a decided frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Routing's outcome: transmit, punt, a reply, or a drop.
    Act(Action),
    /// Another worker owns the flow: hand it `frame[..len]` (untagged),
    /// as arrived on interface `slot` (`ingress`): a hairpinned frame's
    /// second pass came in on the outside.
    Handoff {
        to: usize,
        len: usize,
        slot: usize,
        ingress: u32,
    },
}

/// How this node's interfaces are reached: the FIB snapshot and the
/// ifindex of each interface slot.
#[derive(Clone, Copy)]
pub struct Routes<'a> {
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

    /// Whether traffic to `dst` has a route out of an interface this node
    /// forwards on (the route only: whether its next hop is resolved does
    /// not matter here, and the neighbour lookup is left to routing).
    pub fn forwards_to(self, dst: IpAddr) -> bool {
        let oif = match dst {
            IpAddr::V4(a) => self
                .fib
                .route4(a)
                .filter(|r| r.kind != RouteKind::Reject)
                .map(|r| r.oif),
            IpAddr::V6(a) => self
                .fib
                .route6(a)
                .filter(|r| r.kind != RouteKind::Reject)
                .map(|r| r.oif),
        };
        oif.is_some_and(|o| self.slot_of(o).is_some())
    }

    /// The interface slot of `oif`, if this node forwards on it.
    pub fn slot_of(self, oif: u32) -> Option<usize> {
        self.slots.iter().position(|i| *i == oif)
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
        let (dst_mac, src_mac) = wire::macs(frame);
        let Some(this) = self.egress(oif, dst_mac, src_mac) else {
            return;
        };
        let s = svc.session(slot);
        let back = match side {
            Side::Initiator => s.key.src_ip(),
            // The inside host a translated destination went to.
            Side::Responder if s.is_dnat() => match s.inside_endpoint() {
                Some((a, _)) => IpAddr::from(a),
                None => return,
            },
            Side::Responder => s.key.dst_ip(),
        };
        if let Some(other) = self.toward(back) {
            svc.offload(slot, side, this, other, tally);
        }
    }
}

/// What a decision reads and updates besides the frame.
pub struct Context<'a> {
    pub routes: Routes<'a>,
    pub limits: &'a mut Limits,
    /// `None` on a node without service sets: it routes only.
    pub services: Option<&'a mut Services>,
}

/// Decides the frame that arrived as `at` in `buf` (the frame's whole
/// buffer: replies are built in it) at `now` (seconds). `headers` are the
/// frame's as parsed by the caller's prefetch pass, if it made one; they
/// are not parsed again. When this returns [`Decision::Act`] with a
/// transmit, the frame is rewritten and ready.
pub fn decide(
    cx: &mut Context<'_>,
    buf: &mut [u8],
    at: Arrival,
    headers: Option<Result<Headers, ParseError>>,
    now: u32,
    tally: &mut Tally,
) -> Decision {
    decide_pass(cx, buf, at, headers, now, tally, false)
}

/// [`decide`]; `again` on a hairpinned frame's second pass.
fn decide_pass(
    cx: &mut Context<'_>,
    buf: &mut [u8],
    at: Arrival,
    headers: Option<Result<Headers, ParseError>>,
    now: u32,
    tally: &mut Tally,
    again: bool,
) -> Decision {
    let parsed = headers.unwrap_or_else(|| Headers::parse(&buf[..at.len]));
    let h = match parsed {
        Ok(h) => forward::untag(buf, h),
        Err(e) => return Decision::Act(Action::Drop(e.into())),
    };
    let routes = cx.routes;
    let verdict = match cx.services.as_deref_mut() {
        Some(svc) => svc.process_routed(buf, &h, (at.ingress, at.handed), now, tally, &|dst| {
            routes.forwards_to(dst)
        }),
        None => Verdict::Pass { snat: None },
    };
    let fib = cx.routes.fib;
    Decision::Act(match verdict {
        Verdict::Pass { snat } => {
            let ip = h.ip.redirected(buf);
            let a = match forward::route(buf, ip, at.ingress, fib, cx.limits) {
                // Never through the kernel to an interface this node does
                // not forward on (the sync link, a management port): a
                // resolved next hop there is dropped the same way.
                Action::Punt { oif, .. } if cx.routes.slot_of(oif).is_none() => {
                    Action::Drop(DropReason::ForeignEgress)
                }
                a => a,
            };
            if let (Some(snat), Action::Forward { .. } | Action::Punt { .. }) = (snat, a) {
                snat.apply(buf, ETH_HLEN);
            }
            if let Action::Forward { oif, .. } = a
                && let Some(svc) = cx.services.as_deref_mut()
                && let Some(offer) = svc.take_offer()
            {
                cx.routes.offer(svc, offer, oif, buf, tally);
            }
            a
        }
        Verdict::Handoff(to) => {
            return Decision::Handoff {
                to,
                len: ETH_HLEN + h.ip.datagram_len(),
                slot: at.slot,
                ingress: at.ingress,
            };
        }
        Verdict::Hairpin { snat } => {
            let outside = cx
                .services
                .as_deref()
                .map(Services::inside_ifindex)
                .and_then(|i| {
                    let slot = cx.routes.slots.iter().position(|&x| x != i)?;
                    Some((slot, cx.routes.slots[slot]))
                });
            let (Some((slot, ingress)), false) = (outside, again) else {
                return Decision::Act(Action::Drop(DropReason::NoSession));
            };
            // The sender's mapping first; then in again, as from outside,
            // to the mapping (or forward) it was sent to.
            if let Some(snat) = snat {
                snat.apply(buf, ETH_HLEN);
            }
            let len = ETH_HLEN + h.ip.datagram_len();
            let next = Arrival {
                len,
                slot,
                ingress,
                handed: false,
            };
            let headers = Headers::parse(&buf[..len]);
            return decide_pass(cx, buf, next, Some(headers), now, tally, true);
        }
        Verdict::Reject(l4) => {
            if !cx.limits.reject.allow() {
                Action::Drop(DropReason::Policy)
            } else if l4.proto == PROTO_TCP {
                match wire::tcp_reset(buf, &h.ip, &l4) {
                    Some(rst) => as_reply(
                        forward::route(buf, rst, at.ingress, fib, cx.limits),
                        DropReason::Policy,
                    ),
                    None => Action::Drop(DropReason::Policy),
                }
            } else {
                as_reply(
                    forward::reject_icmp(buf, h.ip, at.ingress, fib, cx.limits),
                    DropReason::Policy,
                )
            }
        }
        Verdict::Unreachable(reason) => {
            if cx.limits.reject.allow() {
                as_reply(
                    forward::reject_icmp(buf, h.ip, at.ingress, fib, cx.limits),
                    reason,
                )
            } else {
                Action::Drop(reason)
            }
        }
        Verdict::Drop(r) => Action::Drop(r),
    })
}

/// Counts what `action` did to a frame that arrived on `slot`; the
/// egress and length when a frame is to be transmitted.
pub fn account(action: Action, slot: usize, tally: &mut Tally) -> Option<(u32, usize)> {
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
/// routed leaves the original dropped. Either way the original counts
/// as a drop for `reason`.
fn as_reply(a: Action, reason: DropReason) -> Action {
    match a {
        Action::Forward { oif, len } | Action::IcmpError { oif, len, .. } => {
            Action::Reply { oif, len, reason }
        }
        // The reply was built at ETH_HLEN, so l3 + len is where it ends.
        Action::Punt { l3, len, v6, .. } => Action::PuntReply {
            len: l3 + len,
            v6,
            reason,
        },
        Action::PuntIcmpError { len, v6, .. } => Action::PuntReply { len, v6, reason },
        _ => Action::Drop(reason),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use etherparse::PacketBuilder;

    use super::*;
    use crate::{
        fib::{Link, Route, RouteKind},
        forward::RateLimit,
    };

    const IN: u32 = 2;
    const OUT: u32 = 3;
    /// An interface the node does not forward on (the sync link).
    const SYNC: u32 = 9;

    #[test]
    fn an_unresolved_next_hop_is_punted_only_toward_a_forwarding_interface() {
        let mut fib = Fib::default();
        for (oif, name, net) in [
            (IN, "in0", [198, 18, 1, 0]),
            (OUT, "out0", [198, 18, 2, 0]),
            (SYNC, "sync0", [198, 18, 9, 0]),
        ] {
            *fib.link_mut(oif) = Link {
                name: name.into(),
                mac: [2, 0, 0, 0, 0, oif as u8],
                mtu: 1500,
                oper_up: Some(true),
                v4: vec![],
                v6: vec![],
            };
            fib.upsert_route4(Route {
                prefix: Ipv4Addr::from(net),
                len: 24,
                oif,
                gateway: None,
                priority: 0,
                kind: RouteKind::Unicast,
            });
        }
        let mut limits = Limits {
            icmp: RateLimit::new(100),
            punt: RateLimit::new(100),
            reject: RateLimit::new(100),
        };
        let mut cx = Context {
            routes: Routes {
                fib: &fib,
                slots: &[IN, OUT],
            },
            limits: &mut limits,
            services: None,
        };
        for (dst, want) in [
            ([198, 18, 2, 99], None),
            ([198, 18, 9, 2], Some(DropReason::ForeignEgress)),
        ] {
            let mut buf = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 2])
                .ipv4([198, 18, 1, 10], dst, 64)
                .udp(40000, 7469)
                .write(&mut buf, &[0x5a; 32])
                .unwrap();
            let len = buf.len();
            buf.resize(2048, 0);
            let at = Arrival {
                len,
                slot: 0,
                ingress: IN,
                handed: false,
            };
            let got = decide(&mut cx, &mut buf, at, None, 0, &mut Tally::new(1));
            match want {
                None => assert!(
                    matches!(got, Decision::Act(Action::Punt { oif: OUT, .. })),
                    "{dst:?}: {got:?}"
                ),
                Some(r) => assert_eq!(got, Decision::Act(Action::Drop(r)), "{dst:?}"),
            }
        }
    }
}

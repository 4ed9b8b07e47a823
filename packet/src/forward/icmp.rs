//! ICMP errors the node originates: time exceeded, too big, and the
//! administratively-prohibited unreachable a firewall reject sends.

use std::net::IpAddr;

use super::{Action, DropReason, Limits};
use crate::{
    fib::{Fib, Miss},
    wire::{self, ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ip},
};

/// An ICMP error to originate: why the packet dropped, and the header.
#[derive(Clone, Copy, Debug)]
pub(super) struct IcmpErr {
    reason: DropReason,
    ty: u8,
    code: u8,
    /// The header's second word (next-hop MTU for the "too big" kinds).
    rest: u32,
}

pub(super) const TIME_EXCEEDED_V4: IcmpErr = IcmpErr {
    reason: DropReason::TtlExpired,
    ty: 11,
    code: 0,
    rest: 0,
};
pub(super) const TIME_EXCEEDED_V6: IcmpErr = IcmpErr {
    reason: DropReason::TtlExpired,
    ty: 3,
    code: 0,
    rest: 0,
};

/// Destination unreachable, administratively prohibited: a firewall reject.
const ADMIN_PROHIBITED_V4: IcmpErr = IcmpErr {
    reason: DropReason::Policy,
    ty: 3,
    code: 13,
    rest: 0,
};
const ADMIN_PROHIBITED_V6: IcmpErr = IcmpErr {
    reason: DropReason::Policy,
    ty: 1,
    code: 1,
    rest: 0,
};

/// Answers a prepared datagram that policy rejects with an ICMP
/// administratively-prohibited unreachable (rate-limited like every ICMP
/// error the node originates).
pub fn reject_icmp(buf: &mut [u8], ip: Ip, ingress: u32, fib: &Fib, limits: &mut Limits) -> Action {
    let err = match ip {
        Ip::V4 { .. } => ADMIN_PROHIBITED_V4,
        Ip::V6 { .. } => ADMIN_PROHIBITED_V6,
    };
    icmp_error(buf, ip, ingress, fib, limits, err)
}

/// ICMPv4 destination unreachable, fragmentation needed (RFC 1191).
pub(super) const fn frag_needed(mtu: u32) -> IcmpErr {
    IcmpErr {
        reason: DropReason::TooBig,
        ty: 3,
        code: 4,
        rest: mtu,
    }
}

/// ICMPv6 packet too big (RFC 8201).
pub(super) const fn packet_too_big(mtu: u32) -> IcmpErr {
    IcmpErr {
        reason: DropReason::TooBig,
        ty: 2,
        code: 0,
        rest: mtu,
    }
}

pub(super) fn icmp_error(
    buf: &mut [u8],
    ip: Ip,
    ingress: u32,
    fib: &Fib,
    limits: &mut Limits,
    err: IcmpErr,
) -> Action {
    let IcmpErr {
        reason,
        ty,
        code,
        rest,
    } = err;
    let suppressed = Action::IcmpSuppressed { reason };
    let built = match ip {
        Ip::V4 { l3, ihl, len, .. } => {
            if !wire::may_send_icmp4_error(buf, l3, ihl) {
                return Action::Drop(reason);
            }
            let Some(src) = fib.source4(ingress) else {
                return suppressed;
            };
            if !limits.icmp.allow() {
                return suppressed;
            }
            wire::icmp4_error(buf, l3, len, src, ty, code, rest).map(|(n, to)| (n, IpAddr::V4(to)))
        }
        Ip::V6 { l3, len, .. } => {
            if !wire::may_send_icmp6_error(buf, l3) {
                return Action::Drop(reason);
            }
            let Some(src) = fib.source6(ingress) else {
                return suppressed;
            };
            if !limits.icmp.allow() {
                return suppressed;
            }
            wire::icmp6_error(buf, l3, len, src, ty, code, rest).map(|(n, to)| (n, IpAddr::V6(to)))
        }
    };
    let Some((len, to)) = built else {
        return suppressed;
    };
    let (hop, ethertype) = match to {
        IpAddr::V4(a) => (fib.lookup4(a), ETHERTYPE_IPV4),
        IpAddr::V6(a) => (fib.lookup6(a), ETHERTYPE_IPV6),
    };
    let hop = match hop {
        Ok(h) => h,
        Err(Miss::NoNeighbour { .. }) if limits.punt.allow() => {
            return Action::PuntIcmpError {
                len,
                v6: to.is_ipv6(),
                reason,
            };
        }
        Err(_) => return suppressed,
    };
    wire::write_eth(buf, ETH_HLEN, hop.dst_mac, hop.src_mac, ethertype);
    Action::IcmpError {
        oif: hop.oif,
        len,
        reason,
    }
}

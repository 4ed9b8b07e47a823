//! The per-packet forwarding decision: parse, route, rewrite.
//!
//! Design: a pure function of the frame, the FIB snapshot and a rate limiter,
//! so it is unit-tested and benchmarked without sockets. It rewrites the
//! frame in place and says what the worker does with it; the worker owns
//! rings and counters. A dropped packet is a [`Action::Drop`] with a reason
//! that indexes a counter.

mod icmp;
mod limit;
mod reason;

use self::icmp::{TIME_EXCEEDED_V4, TIME_EXCEEDED_V6, frag_needed, icmp_error, packet_too_big};
pub use self::{
    icmp::reject_icmp,
    limit::{Limits, RateLimit},
    reason::DropReason,
};
use crate::{
    fib::{Fib, Miss, NextHop},
    wire::{self, ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Headers, Ip, ParseError},
};

/// What the worker does with a frame after [`forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Transmit `frame[..len]` on `oif`.
    Forward {
        oif: u32,
        len: usize,
    },
    /// Transmit an ICMP error built in the frame, `frame[..len]`, on `oif`;
    /// the original packet is dropped for `reason`.
    IcmpError {
        oif: u32,
        len: usize,
        reason: DropReason,
    },
    /// The next hop is unresolved: hand `frame[l3..l3 + len]` to the kernel,
    /// which resolves the neighbour and sends it out of `oif`.
    Punt {
        l3: usize,
        len: usize,
        v6: bool,
        oif: u32,
    },
    /// An ICMP error built in the frame whose next hop is unresolved: punt
    /// `frame[ETH_HLEN..len]`; the original packet is dropped for `reason`.
    PuntIcmpError {
        len: usize,
        v6: bool,
        reason: DropReason,
    },
    /// The packet is dropped for `reason`; the ICMP error it deserved was
    /// refused by the rate limit, or has no source address or route.
    IcmpSuppressed {
        reason: DropReason,
    },
    /// Transmit a reply built in the frame (a firewall reject: TCP reset or
    /// ICMP unreachable) on `oif`; the original packet is dropped for `reason`.
    Reply {
        oif: u32,
        len: usize,
        reason: DropReason,
    },
    /// A reply built in the frame whose next hop is unresolved: punt
    /// `frame[ETH_HLEN..len]`; the original packet is dropped for `reason`.
    PuntReply {
        len: usize,
        v6: bool,
        reason: DropReason,
    },
    Drop(DropReason),
}

/// Decides and rewrites one frame. `buf` is the frame's whole buffer (its
/// capacity); the first `rx_len` bytes were received on `ingress`.
/// [`prepare`] then [`route`], for callers with nothing in between.
pub fn forward(
    buf: &mut [u8],
    rx_len: usize,
    ingress: u32,
    fib: &Fib,
    limits: &mut Limits,
) -> Action {
    match prepare(buf, rx_len) {
        Ok(ip) => route(buf, ip, ingress, fib, limits),
        Err(r) => Action::Drop(r),
    }
}

/// Parses the frame's headers and removes a VLAN tag, so the IP datagram
/// starts at `ETH_HLEN` afterwards.
pub fn prepare(buf: &mut [u8], rx_len: usize) -> Result<Ip, DropReason> {
    let ip = wire::parse(&buf[..rx_len])?;
    Ok(untag(
        buf,
        Headers {
            ip,
            l4: Err(ParseError::Truncated),
        },
    )
    .ip)
}

/// Removes a VLAN tag from a frame whose `headers` were parsed: the IP
/// datagram moves up so the new Ethernet header starts at 0 and the
/// datagram at `ETH_HLEN`. The headers, moved with it.
pub fn untag(buf: &mut [u8], headers: Headers) -> Headers {
    let (l3, len) = (headers.ip.l3(), headers.ip.datagram_len());
    if l3 == ETH_HLEN {
        return headers;
    }
    buf.copy_within(l3..l3 + len, ETH_HLEN);
    // The untagged frame says what it carries: a frame handed to another
    // worker is parsed again there, from its Ethernet header.
    let ethertype = match headers.ip {
        Ip::V4 { .. } => ETHERTYPE_IPV4,
        Ip::V6 { .. } => ETHERTYPE_IPV6,
    };
    buf[12..ETH_HLEN].copy_from_slice(&ethertype.to_be_bytes());
    headers.moved_up(l3 - ETH_HLEN)
}

/// Routes a prepared datagram (at `ETH_HLEN`): TTL, FIB lookup, MTU, new
/// Ethernet header.
pub fn route(buf: &mut [u8], ip: Ip, ingress: u32, fib: &Fib, limits: &mut Limits) -> Action {
    match ip {
        Ip::V4 { len, dst, ttl, .. } => {
            if ttl <= 1 {
                return icmp_error(buf, ip, ingress, fib, limits, TIME_EXCEEDED_V4);
            }
            // Decrement first: a punted datagram leaves through the kernel's
            // output path, which does not decrement it again.
            wire::decrement_ttl_v4(buf, ETH_HLEN);
            let hop = fib.lookup4(dst);
            if let Some(mtu) = too_big(fib, &hop, len) {
                // DF set: tell the sender (RFC 1191); else fragmenting is the
                // kernel's job, which this path does not do.
                if ip.dont_fragment(buf) {
                    return icmp_error(buf, ip, ingress, fib, limits, frag_needed(mtu));
                }
                return Action::Drop(DropReason::TooBig);
            }
            let hop = match hop {
                Ok(h) => h,
                Err(m) => return miss(m, ip, limits),
            };
            wire::write_eth(buf, ETH_HLEN, hop.dst_mac, hop.src_mac, ETHERTYPE_IPV4);
            Action::Forward {
                oif: hop.oif,
                len: ETH_HLEN + len,
            }
        }
        Ip::V6 {
            len,
            dst,
            hop_limit,
            ..
        } => {
            if hop_limit <= 1 {
                return icmp_error(buf, ip, ingress, fib, limits, TIME_EXCEEDED_V6);
            }
            wire::decrement_hop_limit_v6(buf, ETH_HLEN);
            let hop = fib.lookup6(dst);
            if let Some(mtu) = too_big(fib, &hop, len) {
                return icmp_error(buf, ip, ingress, fib, limits, packet_too_big(mtu));
            }
            let hop = match hop {
                Ok(h) => h,
                Err(m) => return miss(m, ip, limits),
            };
            wire::write_eth(buf, ETH_HLEN, hop.dst_mac, hop.src_mac, ETHERTYPE_IPV6);
            Action::Forward {
                oif: hop.oif,
                len: ETH_HLEN + len,
            }
        }
    }
}

/// The egress MTU when `len` exceeds it. Checked before the neighbour is
/// known: a datagram the kernel would have to punt is just as oversized.
fn too_big(fib: &Fib, hop: &Result<NextHop, Miss>, len: usize) -> Option<u32> {
    let oif = match hop {
        Ok(h) => h.oif,
        Err(Miss::NoNeighbour { oif }) => *oif,
        Err(Miss::NoRoute) => return None,
    };
    let mtu = fib.link(oif).map_or(0, |l| l.mtu);
    (mtu != 0 && len > mtu as usize).then_some(mtu)
}

fn miss(m: Miss, ip: Ip, limits: &mut Limits) -> Action {
    match m {
        Miss::NoRoute => Action::Drop(DropReason::NoRoute),
        Miss::NoNeighbour { oif } => {
            if limits.punt.allow() {
                Action::Punt {
                    l3: ip.l3(),
                    len: ip.datagram_len(),
                    v6: matches!(ip, Ip::V6 { .. }),
                    oif,
                }
            } else {
                Action::Drop(DropReason::PuntLimited)
            }
        }
    }
}

#[cfg(test)]
mod tests;

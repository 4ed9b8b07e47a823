//! The per-packet forwarding decision: parse, route, rewrite.
//!
//! Design: a pure function of the frame, the FIB snapshot and a rate limiter,
//! so it is unit-tested and benchmarked without sockets. It rewrites the
//! frame in place and says what the worker does with it; the worker owns
//! rings and counters. A dropped packet is a [`Action::Drop`] with a reason
//! that indexes a counter.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    fib::{Fib, Miss, NextHop},
    wire::{self, ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ip, ParseError},
};

/// Why the worker dropped a packet. The discriminant indexes a counter.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than its IP length field says.
    Truncated = 0,
    /// Inconsistent network header (length fields, or not IP at all: the XDP
    /// program passes non-IP frames to the kernel, so that one should not occur).
    BadHeader = 1,
    BadChecksum = 2,
    NoRoute = 3,
    /// TTL/hop limit expired (an ICMP error may have been sent).
    TtlExpired = 4,
    /// Larger than the egress MTU (an ICMP error may have been sent).
    TooBig = 5,
    /// Unresolved neighbour and the punt rate limit was exhausted.
    PuntLimited = 6,
    /// The egress tx ring had no room.
    TxRingFull = 7,
    /// Routed out of an interface tandem does not forward on.
    ForeignEgress = 8,
    /// A non-first fragment: no ports to find its session by.
    Fragment = 9,
    /// No session, and the packet may not open one (TCP without SYN, echo
    /// reply, ICMP error, traffic to a NAT pool address).
    NoSession = 10,
    /// A firewall rule or default said drop (or reject).
    Policy = 11,
    /// The session table was full.
    TableFull = 12,
    /// The owner worker's handoff ring was full.
    HandoffFull = 13,
    /// NAT could not translate: no free port, or a protocol without ports.
    NatFailed = 14,
}

impl DropReason {
    pub const COUNT: usize = 15;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Truncated,
        Self::BadHeader,
        Self::BadChecksum,
        Self::NoRoute,
        Self::TtlExpired,
        Self::TooBig,
        Self::PuntLimited,
        Self::TxRingFull,
        Self::ForeignEgress,
        Self::Fragment,
        Self::NoSession,
        Self::Policy,
        Self::TableFull,
        Self::HandoffFull,
        Self::NatFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::BadChecksum => "bad_checksum",
            Self::NoRoute => "no_route",
            Self::TtlExpired => "ttl_expired",
            Self::TooBig => "too_big",
            Self::PuntLimited => "punt_limited",
            Self::TxRingFull => "tx_ring_full",
            Self::ForeignEgress => "foreign_egress",
            Self::Fragment => "fragment",
            Self::NoSession => "no_session",
            Self::Policy => "policy",
            Self::TableFull => "table_full",
            Self::HandoffFull => "handoff_full",
            Self::NatFailed => "nat_failed",
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Truncated => Self::Truncated,
            ParseError::NotIp | ParseError::BadHeader => Self::BadHeader,
            ParseError::BadChecksum => Self::BadChecksum,
        }
    }
}

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
    /// which resolves the neighbour and sends it.
    Punt {
        l3: usize,
        len: usize,
        v6: bool,
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

/// A token bucket: `rate` events per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u32,
    tokens: u32,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(10) {
            let add = u64::from(self.rate) * elapsed.as_millis() as u64 / 1000;
            if add > 0 {
                self.tokens = (u64::from(self.tokens) + add).min(u64::from(self.rate)) as u32;
                self.last = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Per-worker state the decision needs besides the frame and the FIB.
#[derive(Debug)]
pub struct Limits {
    pub icmp: RateLimit,
    pub punt: RateLimit,
    /// Firewall rejects (resets and unreachables) sent.
    pub reject: RateLimit,
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
    // Untag: the IP datagram moves up so the new Ethernet header starts at 0.
    Ok(if ip.l3() == ETH_HLEN {
        ip
    } else {
        let (l3, len) = (ip.l3(), ip.datagram_len());
        buf.copy_within(l3..l3 + len, ETH_HLEN);
        match ip {
            Ip::V4 {
                ihl, len, dst, ttl, ..
            } => Ip::V4 {
                l3: ETH_HLEN,
                ihl,
                len,
                dst,
                ttl,
            },
            Ip::V6 {
                len,
                dst,
                hop_limit,
                ..
            } => Ip::V6 {
                l3: ETH_HLEN,
                len,
                dst,
                hop_limit,
            },
        }
    })
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
                if buf[ETH_HLEN + 6] & 0x40 != 0 {
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
        Miss::NoNeighbour { .. } => {
            if limits.punt.allow() {
                Action::Punt {
                    l3: ip.l3(),
                    len: ip.datagram_len(),
                    v6: matches!(ip, Ip::V6 { .. }),
                }
            } else {
                Action::Drop(DropReason::PuntLimited)
            }
        }
    }
}

/// An ICMP error to originate: why the packet dropped, and the header.
#[derive(Clone, Copy, Debug)]
struct IcmpErr {
    reason: DropReason,
    ty: u8,
    code: u8,
    /// The header's second word (next-hop MTU for the "too big" kinds).
    rest: u32,
}

const TIME_EXCEEDED_V4: IcmpErr = IcmpErr {
    reason: DropReason::TtlExpired,
    ty: 11,
    code: 0,
    rest: 0,
};
const TIME_EXCEEDED_V6: IcmpErr = IcmpErr {
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
const fn frag_needed(mtu: u32) -> IcmpErr {
    IcmpErr {
        reason: DropReason::TooBig,
        ty: 3,
        code: 4,
        rest: mtu,
    }
}

/// ICMPv6 packet too big (RFC 8201).
const fn packet_too_big(mtu: u32) -> IcmpErr {
    IcmpErr {
        reason: DropReason::TooBig,
        ty: 2,
        code: 0,
        rest: mtu,
    }
}

fn icmp_error(
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::{NetSlice, PacketBuilder, SlicedPacket};

    use super::*;
    use crate::fib::{Link, Route, RouteKind};

    const IN: u32 = 2;
    const OUT: u32 = 3;
    const IN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OUT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x20];

    fn fib() -> Fib {
        let mut f = Fib::default();
        *f.link_mut(IN) = Link {
            name: "in0".into(),
            mac: IN_MAC,
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::new(198, 18, 1, 2)],
            v6: vec!["2001:db8:1::2".parse().unwrap()],
        };
        *f.link_mut(OUT) = Link {
            name: "out0".into(),
            mac: OUT_MAC,
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::new(198, 18, 2, 2)],
            v6: vec![],
        };
        for (p, oif) in [([198, 18, 1, 0], IN), ([198, 18, 2, 0], OUT)] {
            f.upsert_route4(Route {
                prefix: Ipv4Addr::from(p),
                len: 24,
                oif,
                gateway: None,
                priority: 0,
                kind: RouteKind::Unicast,
            });
        }
        for (p, oif) in [("2001:db8:1::", IN), ("2001:db8:2::", OUT)] {
            f.upsert_route6(Route {
                prefix: p.parse().unwrap(),
                len: 64,
                oif,
                gateway: None,
                priority: 0,
                kind: RouteKind::Unicast,
            });
        }
        f.set_neighbour(IN, Ipv4Addr::new(198, 18, 1, 10).into(), Some(CLIENT_MAC));
        f.set_neighbour(OUT, Ipv4Addr::new(198, 18, 2, 10).into(), Some(SERVER_MAC));
        let c6: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let s6: Ipv6Addr = "2001:db8:2::10".parse().unwrap();
        f.set_neighbour(IN, c6.into(), Some(CLIENT_MAC));
        f.set_neighbour(OUT, s6.into(), Some(SERVER_MAC));
        f
    }

    fn limits() -> Limits {
        Limits {
            icmp: RateLimit::new(100),
            punt: RateLimit::new(100),
            reject: RateLimit::new(100),
        }
    }

    fn frame(ttl: u8, dst: [u8; 4], payload: usize) -> (Vec<u8>, usize) {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, IN_MAC)
            .ipv4([198, 18, 1, 10], dst, ttl)
            .udp(40000, 7);
        let mut v = Vec::new();
        b.write(&mut v, &vec![0xab; payload]).unwrap();
        let n = v.len();
        v.resize(2048, 0);
        (v, n)
    }

    #[test]
    fn forwards_with_new_macs_and_ttl() {
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 10);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        assert_eq!(a, Action::Forward { oif: OUT, len: n });
        let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let eth = p.link.unwrap().to_header().unwrap();
        let etherparse::LinkHeader::Ethernet2(eth) = eth else {
            panic!()
        };
        assert_eq!(eth.destination, SERVER_MAC);
        assert_eq!(eth.source, OUT_MAC);
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().ttl(), 63);
        assert_eq!(wire::checksum(&buf[14..34], 0), 0);
    }

    #[test]
    fn trims_link_padding() {
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 0);
        assert_eq!(n, 42);
        let a = forward(&mut buf, 60, IN, &fib(), &mut limits());
        assert_eq!(a, Action::Forward { oif: OUT, len: 42 });
    }

    #[test]
    fn vlan_tag_is_stripped() {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, IN_MAC)
            .single_vlan(7.try_into().unwrap())
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 9)
            .udp(1, 2);
        let mut buf = Vec::new();
        b.write(&mut buf, b"tagged").unwrap();
        let n = buf.len();
        buf.resize(2048, 0);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        assert_eq!(
            a,
            Action::Forward {
                oif: OUT,
                len: n - 4
            }
        );
        let p = SlicedPacket::from_ethernet(&buf[..n - 4]).unwrap();
        assert!(p.vlan().is_none());
        assert_eq!(p.payload_ether_type(), None);
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().ttl(), 8);
    }

    #[test]
    fn ttl_one_becomes_time_exceeded_back_to_sender() {
        let (mut buf, n) = frame(1, [198, 18, 2, 10], 10);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        let Action::IcmpError { oif, len, reason } = a else {
            panic!("{a:?}")
        };
        assert_eq!((oif, reason), (IN, DropReason::TtlExpired));
        let p = SlicedPacket::from_ethernet(&buf[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().source(), [198, 18, 1, 2]);
        assert_eq!(ip.header().destination(), [198, 18, 1, 10]);
    }

    #[test]
    fn time_exceeded_to_an_unresolved_sender_is_punted() {
        let mut f = fib();
        f.set_neighbour(IN, Ipv4Addr::new(198, 18, 1, 10).into(), None);
        let (mut buf, n) = frame(1, [198, 18, 2, 10], 10);
        let a = forward(&mut buf, n, IN, &f, &mut limits());
        let Action::PuntIcmpError { len, v6, reason } = a else {
            panic!("{a:?}")
        };
        assert!(!v6);
        assert_eq!(reason, DropReason::TtlExpired);
        assert_eq!(wire::checksum(&buf[ETH_HLEN..ETH_HLEN + 20], 0), 0);
        assert_eq!(buf[ETH_HLEN + 20], 11);
        assert!(len > ETH_HLEN + 28);
    }

    #[test]
    fn icmp_errors_are_rate_limited() {
        let mut l = Limits {
            icmp: RateLimit::new(2),
            punt: RateLimit::new(2),
            reject: RateLimit::new(2),
        };
        let f = fib();
        let mut got = Vec::new();
        for _ in 0..4 {
            let (mut buf, n) = frame(1, [198, 18, 2, 10], 10);
            got.push(forward(&mut buf, n, IN, &f, &mut l));
        }
        assert!(matches!(got[1], Action::IcmpError { .. }));
        let suppressed = Action::IcmpSuppressed {
            reason: DropReason::TtlExpired,
        };
        assert_eq!(got[2], suppressed);
        assert_eq!(got[3], suppressed);
    }

    #[test]
    fn unresolved_neighbour_punts_within_limit() {
        let (mut buf, n) = frame(64, [198, 18, 2, 99], 10);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        assert_eq!(
            a,
            Action::Punt {
                l3: 14,
                len: n - 14,
                v6: false
            }
        );
        // The kernel's output path will not decrement it: we did.
        assert_eq!(buf[22], 63);
        assert_eq!(wire::checksum(&buf[14..34], 0), 0);
    }

    #[test]
    fn punts_beyond_the_rate_limit_drop() {
        let mut l = Limits {
            icmp: RateLimit::new(1),
            punt: RateLimit::new(1),
            reject: RateLimit::new(1),
        };
        let f = fib();
        let (mut buf, n) = frame(64, [198, 18, 2, 99], 10);
        assert!(matches!(
            forward(&mut buf, n, IN, &f, &mut l),
            Action::Punt { .. }
        ));
        let (mut buf, n) = frame(64, [198, 18, 2, 99], 10);
        assert_eq!(
            forward(&mut buf, n, IN, &f, &mut l),
            Action::Drop(DropReason::PuntLimited)
        );
    }

    #[test]
    fn non_ip_and_bad_header_drop_with_reason() {
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 10);
        buf[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            forward(&mut buf, n, IN, &fib(), &mut limits()),
            Action::Drop(DropReason::BadHeader)
        );
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 10);
        buf[14] = 0x43;
        assert_eq!(
            forward(&mut buf, n, IN, &fib(), &mut limits()),
            Action::Drop(DropReason::BadHeader)
        );
    }

    #[test]
    fn no_route_drops() {
        let (mut buf, n) = frame(64, [203, 0, 113, 1], 10);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        assert_eq!(a, Action::Drop(DropReason::NoRoute));
    }

    #[test]
    fn oversize_with_df_gets_frag_needed() {
        let mut f = fib();
        f.link_mut(OUT).mtu = 100;
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 200);
        buf[20] |= 0x40; // DF
        buf[24..26].copy_from_slice(&[0, 0]);
        let c = wire::checksum(&buf[14..34], 0);
        buf[24..26].copy_from_slice(&c.to_be_bytes());
        let a = forward(&mut buf, n, IN, &f, &mut limits());
        let Action::IcmpError { len, reason, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(reason, DropReason::TooBig);
        assert_eq!(&buf[34..36], &[3, 4]);
        assert_eq!(u32::from_be_bytes(buf[38..42].try_into().unwrap()), 100);
        assert!(len > 42);
    }

    #[test]
    fn oversize_to_an_unresolved_neighbour_is_too_big_not_punted() {
        let mut f = fib();
        f.link_mut(OUT).mtu = 100;
        f.set_neighbour(OUT, Ipv4Addr::new(198, 18, 2, 10).into(), None);
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 200);
        buf[20] |= 0x40; // DF
        buf[24..26].copy_from_slice(&[0, 0]);
        let c = wire::checksum(&buf[14..34], 0);
        buf[24..26].copy_from_slice(&c.to_be_bytes());
        let a = forward(&mut buf, n, IN, &f, &mut limits());
        assert!(
            matches!(
                a,
                Action::IcmpError {
                    reason: DropReason::TooBig,
                    ..
                }
            ),
            "{a:?}"
        );
    }

    #[test]
    fn ipv6_forward_and_hop_limit_expiry() {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, IN_MAC)
            .ipv6(
                "2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets(),
                "2001:db8:2::10".parse::<Ipv6Addr>().unwrap().octets(),
                2,
            )
            .udp(1, 2);
        let mut buf = Vec::new();
        b.write(&mut buf, b"six").unwrap();
        let n = buf.len();
        let orig = buf.clone();
        buf.resize(2048, 0);
        let a = forward(&mut buf, n, IN, &fib(), &mut limits());
        assert_eq!(a, Action::Forward { oif: OUT, len: n });
        assert_eq!(buf[14 + 7], 1);
        let mut buf2 = orig;
        buf2[14 + 7] = 1;
        buf2.resize(2048, 0);
        let a = forward(&mut buf2, n, IN, &fib(), &mut limits());
        assert!(
            matches!(
                a,
                Action::IcmpError {
                    oif: IN,
                    reason: DropReason::TtlExpired,
                    ..
                }
            ),
            "{a:?}"
        );
    }

    #[test]
    fn malformed_frames_drop_with_reason() {
        let (mut buf, n) = frame(64, [198, 18, 2, 10], 10);
        assert_eq!(
            forward(&mut buf, 20, IN, &fib(), &mut limits()),
            Action::Drop(DropReason::Truncated)
        );
        buf[24] ^= 1;
        assert_eq!(
            forward(&mut buf, n, IN, &fib(), &mut limits()),
            Action::Drop(DropReason::BadChecksum)
        );
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10);
        for _ in 0..10 {
            assert!(r.allow_at(t0));
        }
        assert!(!r.allow_at(t0));
        assert!(r.allow_at(t0 + Duration::from_millis(200)));
    }
}

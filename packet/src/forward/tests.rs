use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

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

/// A tagged frame another worker owns is handed over as `prepare` left
/// it (untagged, at `ETH_HLEN`); the owner parses it from the start and
/// must find the same datagram.
#[test]
fn an_untagged_frame_parses_again_as_the_same_datagram() {
    for v6 in [false, true] {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, IN_MAC).single_vlan(7.try_into().unwrap());
        let b = if v6 {
            b.ipv6(
                "2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets(),
                "2001:db8:2::10".parse::<Ipv6Addr>().unwrap().octets(),
                9,
            )
        } else {
            b.ipv4([198, 18, 1, 10], [198, 18, 2, 10], 9)
        };
        let mut buf = Vec::new();
        b.udp(1000, 53).write(&mut buf, b"handed over").unwrap();
        let n = buf.len();
        buf.resize(2048, 0);
        let ip = prepare(&mut buf, n).unwrap();
        assert_eq!(ip.l3(), ETH_HLEN);
        let handed = &buf[..ETH_HLEN + ip.datagram_len()];
        assert_eq!(wire::parse(handed), Ok(ip), "v6: {v6}");
        let l4 = wire::parse_l4(handed, &ip).unwrap();
        assert_eq!((l4.sport, l4.dport), (1000, 53));
    }
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
            v6: false,
            oif: OUT,
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

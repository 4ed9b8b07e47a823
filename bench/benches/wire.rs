//! Micro-benches of the per-packet work, each beside a baseline measured in
//! the same run: `wire/copy_64b` (touching the frame at all) is the floor
//! the parse and the full forwarding decision are compared with.
use std::{hint::black_box, net::Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use tandem_dataplane::{
    fib::{Fib, Link, Route, RouteKind},
    forward::{self, Limits, RateLimit},
    wire,
};

fn frame() -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
        .udp(40000, 9);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 18]).unwrap();
    v
}

fn fib() -> Fib {
    let mut f = Fib::default();
    for (idx, mac, net) in [
        (2, [2, 0, 0, 0, 0, 1], [198, 18, 1, 0]),
        (3, [2, 0, 0, 0, 0, 2], [198, 18, 2, 0]),
    ] {
        *f.link_mut(idx) = Link {
            name: format!("if{idx}"),
            mac,
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::new(net[0], net[1], net[2], 1)],
            v6: vec![],
        };
        f.upsert_route4(Route {
            prefix: Ipv4Addr::from(net),
            len: 24,
            oif: idx,
            gateway: None,
            priority: 0,
            kind: RouteKind::Unicast,
        });
    }
    // A realistic table: some more specific routes ahead of the match.
    for i in 0..16u8 {
        f.upsert_route4(Route {
            prefix: Ipv4Addr::new(10, i, 0, 0),
            len: 16,
            oif: 3,
            gateway: Some(Ipv4Addr::new(198, 18, 2, 254)),
            priority: 0,
            kind: RouteKind::Unicast,
        });
    }
    f.set_neighbour(
        3,
        Ipv4Addr::new(198, 18, 2, 10).into(),
        Some([2, 0, 0, 0, 0, 0x20]),
    );
    f
}

fn benches(c: &mut Criterion) {
    let orig = frame();
    assert_eq!(orig.len(), 60);
    let mut buf = vec![0u8; 2048];
    c.bench_function("wire/copy_64b", |b| {
        b.iter(|| {
            buf[..orig.len()].copy_from_slice(black_box(&orig));
            black_box(&buf);
        });
    });
    c.bench_function("wire/parse_ipv4_udp", |b| {
        b.iter(|| black_box(wire::parse(black_box(&orig))));
    });
    let f = fib();
    let mut limits = Limits {
        icmp: RateLimit::new(1000),
        punt: RateLimit::new(1000),
        reject: RateLimit::new(1000),
    };
    c.bench_function("forward/ipv4_udp_64b", |b| {
        b.iter(|| {
            buf[..orig.len()].copy_from_slice(&orig);
            black_box(forward::forward(
                &mut buf,
                orig.len(),
                2,
                black_box(&f),
                &mut limits,
            ))
        });
    });
}

criterion_group!(wire_benches, benches);
criterion_main!(wire_benches);

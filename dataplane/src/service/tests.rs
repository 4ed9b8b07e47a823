//! The services stage on etherparse-built frames.
#![expect(
    clippy::many_single_char_names,
    reason = "s, t, f: services, tally, frame"
)]

use etherparse::PacketBuilder;
use tandem_control::config::Config;

use super::*;
use crate::wire::{ETH_HLEN, parse};

const IN: u32 = 2;
const OUT: u32 = 3;
const CLIENT: [u8; 4] = [198, 18, 1, 10];
const SERVER: [u8; 4] = [198, 18, 2, 10];
const POOL: [u8; 4] = [198, 18, 2, 100];

fn config(extra: &str) -> Config {
    Config::parse(
        std::path::Path::new("t.toml"),
        &format!(
            "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n\
             [sessions]\nper_worker = 4\n\
             [[service_set]]\nname = \"lab\"\n[service_set.nat]\npool = [\"198.18.2.100\"]\n\
             ports = \"1024-1031\"\n{extra}"
        ),
    )
    .unwrap()
}

fn services(worker: usize, workers: usize, extra: &str) -> Services {
    Services::new(&config(extra), worker, workers, IN, 0)
        .unwrap()
        .unwrap()
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 100, 1000);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut buf = Vec::new();
    b.write(&mut buf, b"payload").unwrap();
    buf.resize(2048, 0);
    buf
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut buf, b"datagram")
        .unwrap();
    buf.resize(2048, 0);
    buf
}

fn run(s: &mut Services, buf: &mut [u8], ingress: u32, now: u32, t: &mut Tally) -> Verdict {
    let ip = parse(buf).unwrap();
    let v = s.process(buf, &ip, ingress, now, t);
    if let Verdict::Pass { snat: Some(n) } = v {
        n.apply(buf, ETH_HLEN);
    }
    v
}

/// (src, sport, dst, dport) of a frame, whose checksums must verify.
fn endpoints(buf: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    wire::testutil::verified_v4(buf)
}

#[test]
fn inside_tcp_is_translated_and_its_replies_come_back() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    let mut syn = tcp(CLIENT, SERVER, 40000, 80, "S");
    assert!(matches!(
        run(&mut s, &mut syn, IN, 1, &mut t),
        Verdict::Pass { snat: Some(_) }
    ));
    assert_eq!(endpoints(&syn), (POOL, 1024, SERVER, 80));
    assert_eq!(t.get(WorkerCounter::SessionsCreated), 1);

    let mut synack = tcp(SERVER, POOL, 80, 1024, "SA");
    assert_eq!(
        run(&mut s, &mut synack, OUT, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&synack), (SERVER, 80, CLIENT, 40000));
    let mut ack = tcp(CLIENT, SERVER, 40000, 80, "A");
    run(&mut s, &mut ack, IN, 2, &mut t);
    let (slot, _) = s
        .table
        .lookup(&FlowKey::v4(CLIENT, SERVER, 40000, 80, 6))
        .unwrap();
    let sess = *s.table.get(slot);
    assert_eq!(sess.tcp_state(), Some(TcpState::Established));
    assert_eq!((sess.packets, sess.last_seen), ([2, 1], 2));
    assert_eq!(sess.origin(), Origin::Inside);
}

#[test]
fn unsolicited_traffic_is_dropped() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    // From the outside to an inside host: the default policy drops.
    let mut f = tcp(SERVER, CLIENT, 5555, 22, "S");
    assert_eq!(
        run(&mut s, &mut f, OUT, 0, &mut t),
        Verdict::Drop(DropReason::Policy)
    );
    // To the pool with no session: never to the kernel, never a session.
    let mut f = udp(SERVER, POOL, 53, 1024);
    assert_eq!(
        run(&mut s, &mut f, OUT, 0, &mut t),
        Verdict::Drop(DropReason::NoSession)
    );
    // A mid-stream segment cannot open a session.
    let mut f = tcp(CLIENT, SERVER, 40000, 80, "A");
    assert_eq!(
        run(&mut s, &mut f, IN, 0, &mut t),
        Verdict::Drop(DropReason::NoSession)
    );
    assert!(s.table.is_empty());
}

#[test]
fn full_table_refuses_and_returns_the_port() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    for p in 0..4 {
        let mut f = udp(CLIENT, SERVER, 5000 + p, 53);
        assert!(matches!(
            run(&mut s, &mut f, IN, 0, &mut t),
            Verdict::Pass { .. }
        ));
    }
    let mut f = udp(CLIENT, SERVER, 6000, 53);
    assert_eq!(
        run(&mut s, &mut f, IN, 0, &mut t),
        Verdict::Drop(DropReason::TableFull)
    );
    assert_eq!(t.get(WorkerCounter::SessionsRefused), 1);
    // The refused session's port went back: after expiry all 8 are free.
    assert_eq!(s.expire(1000, &mut t), 4);
    assert_eq!(t.get(WorkerCounter::SessionsDeleted), 4);
    assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 8);
}

#[test]
fn port_exhaustion_is_counted() {
    let mut t = Tally::new(1);
    // per_worker is 4 in the base config; 8 ports: exhaust with a bigger table.
    let mut cfg = config("");
    cfg.sessions.per_worker = 16;
    let mut s = Services::new(&cfg, 0, 1, IN, 0).unwrap().unwrap();
    for p in 0..8 {
        let mut f = udp(CLIENT, SERVER, 5000 + p, 53);
        run(&mut s, &mut f, IN, 0, &mut t);
    }
    let mut f = udp(CLIENT, SERVER, 7000, 53);
    assert_eq!(
        run(&mut s, &mut f, IN, 0, &mut t),
        Verdict::Drop(DropReason::NatFailed)
    );
    assert_eq!(t.get(WorkerCounter::NatAllocFailures), 1);
}

#[test]
fn flows_are_handed_to_their_owner() {
    let mut w0 = services(0, 2, "");
    let mut w1 = services(1, 2, "");
    let mut t = Tally::new(2);
    // Find a flow worker 1 owns; worker 0 must hand it over.
    let sport = (1000..2000)
        .find(|p| FlowKey::v4(CLIENT, SERVER, *p, 53, 17).symmetric_hash() % 2 == 1)
        .unwrap();
    let mut f = udp(CLIENT, SERVER, sport, 53);
    assert_eq!(run(&mut w0, &mut f, IN, 0, &mut t), Verdict::Handoff(1));
    assert!(matches!(
        run(&mut w1, &mut f, IN, 0, &mut t),
        Verdict::Pass { snat: Some(_) }
    ));
    // Worker 1 translated into its share (1028-1031); the reply, wherever
    // it lands, goes to worker 1.
    let (_, nat_port, _, _) = endpoints(&f);
    assert!((1028..=1031).contains(&nat_port), "{nat_port}");
    let mut reply = udp(SERVER, POOL, 53, nat_port);
    assert_eq!(
        run(&mut w0, &mut reply, OUT, 0, &mut t),
        Verdict::Handoff(1)
    );
    assert_eq!(
        run(&mut w1, &mut reply, OUT, 0, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&reply), (SERVER, 53, CLIENT, sport));
}

#[test]
fn rules_reject_and_allow_before_the_defaults() {
    let mut s = services(
        0,
        1,
        r#"
        [[service_set.firewall.rules]]
        name = "no-telnet"
        protocol = "tcp"
        destination_ports = 23
        action = "reject"
        [[service_set.firewall.rules]]
        name = "ssh-in"
        direction = "outside"
        protocol = "tcp"
        destination_ports = 22
        action = "forward"
        "#,
    );
    let mut t = Tally::new(1);
    let mut f = tcp(CLIENT, SERVER, 40000, 23, "S");
    assert!(matches!(
        run(&mut s, &mut f, IN, 0, &mut t),
        Verdict::Reject(_)
    ));
    let mut f = tcp(SERVER, CLIENT, 5555, 22, "S");
    assert_eq!(
        run(&mut s, &mut f, OUT, 0, &mut t),
        Verdict::Pass { snat: None }
    );
    // Outside-initiated sessions are not translated.
    assert_eq!(endpoints(&f), (SERVER, 5555, CLIENT, 22));
    assert!(!s.table.is_empty());
}

#[test]
fn icmp_error_about_a_translated_datagram_reaches_the_host() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    let mut f = udp(CLIENT, SERVER, 5353, 53);
    run(&mut s, &mut f, IN, 0, &mut t);
    let (_, nat_port, _, _) = endpoints(&f);
    let n = ETH_HLEN + parse(&f).unwrap().datagram_len();
    let quoted = f[ETH_HLEN..n].to_vec();
    let mut err = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(SERVER, POOL, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &quoted)
        .unwrap();
    err.resize(2048, 0);
    assert_eq!(
        run(&mut s, &mut err, OUT, 0, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(&err[30..34], &CLIENT);
    let q = wire::quoted_v4(&err, 42, ETH_HLEN + parse(&err).unwrap().datagram_len()).unwrap();
    assert_eq!((q.src, q.sport), (CLIENT, 5353));
    assert_ne!(nat_port, 5353);
    // An error about nothing we know is dropped.
    let mut stray = err.clone();
    stray[42 + 20..42 + 22].copy_from_slice(&9999u16.to_be_bytes());
    stray[42 + 12..42 + 16].copy_from_slice(&[198, 18, 1, 99]);
    assert_eq!(
        run(&mut s, &mut stray, OUT, 0, &mut t),
        Verdict::Drop(DropReason::NoSession)
    );
}

#[test]
fn rst_closes_and_the_session_ages_out_fast() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    run(
        &mut s,
        &mut tcp(CLIENT, SERVER, 40000, 80, "S"),
        IN,
        10,
        &mut t,
    );
    run(
        &mut s,
        &mut tcp(SERVER, POOL, 80, 1024, "R"),
        OUT,
        10,
        &mut t,
    );
    let (slot, _) = s
        .table
        .lookup(&FlowKey::v4(CLIENT, SERVER, 40000, 80, 6))
        .unwrap();
    assert_eq!(s.table.get(slot).tcp_state(), Some(TcpState::Closed));
    assert_eq!(s.expire(12, &mut t), 1, "tcp_closed is 1 s");
    assert!(s.table.is_empty());
}

#[test]
fn no_service_set_means_no_services() {
    let cfg = Config::parse(
        std::path::Path::new("t.toml"),
        "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n",
    )
    .unwrap();
    assert!(Services::new(&cfg, 0, 1, IN, 0).unwrap().is_none());
}

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
             ports = \"1024-1031\"\nport_reuse_delay_s = 0\n{extra}"
        ),
    )
    .unwrap()
}

/// Services whose pools hand out their lowest free port (the tests name
/// ports), with no reuse delay.
fn services(worker: usize, workers: usize, extra: &str) -> Services {
    let mut s = Services::new(&config(extra), worker, workers, IN, 0)
        .unwrap()
        .unwrap();
    s.lowest_ports_first();
    s
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
    // Four answered sessions: nothing for an early drop to take.
    for p in 0..4 {
        let mut f = udp(CLIENT, SERVER, 5000 + p, 53);
        assert!(matches!(
            run(&mut s, &mut f, IN, 0, &mut t),
            Verdict::Pass { .. }
        ));
        let (_, port, _, _) = endpoints(&f);
        let mut reply = udp(SERVER, POOL, 53, port);
        assert_eq!(
            run(&mut s, &mut reply, OUT, 0, &mut t),
            Verdict::Pass { snat: None }
        );
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
fn a_full_table_ends_an_unanswered_session_for_a_new_one() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    // Three answered sessions and one that never heard back.
    for p in 0..4 {
        let mut f = udp(CLIENT, SERVER, 5000 + p, 53);
        run(&mut s, &mut f, IN, 0, &mut t);
        if p != 2 {
            let (_, port, _, _) = endpoints(&f);
            run(&mut s, &mut udp(SERVER, POOL, 53, port), OUT, 0, &mut t);
        }
    }
    let mut f = udp(CLIENT, SERVER, 6000, 53);
    assert!(matches!(
        run(&mut s, &mut f, IN, 1, &mut t),
        Verdict::Pass { snat: Some(_) }
    ));
    assert_eq!(t.get(WorkerCounter::SessionsEarlyDropped), 1);
    assert_eq!(t.get(WorkerCounter::SessionsDeleted), 1);
    assert_eq!(t.get(WorkerCounter::SessionsRefused), 0);
    assert!(
        s.table
            .lookup(&FlowKey::v4(CLIENT, SERVER, 5002, 53, 17))
            .is_none(),
        "the unanswered session went"
    );
    for p in [5000, 5001, 5003, 6000] {
        assert!(
            s.table
                .lookup(&FlowKey::v4(CLIENT, SERVER, p, 53, 17))
                .is_some(),
            "{p} stayed"
        );
    }
    // Now only answered ones and the new one: the next new flow takes
    // the new one (unanswered too), never an answered session.
    let mut g = udp(CLIENT, SERVER, 6001, 53);
    assert!(matches!(
        run(&mut s, &mut g, IN, 1, &mut t),
        Verdict::Pass { .. }
    ));
    assert_eq!(t.get(WorkerCounter::SessionsEarlyDropped), 2);
    for p in [5000, 5001, 5003, 6001] {
        assert!(
            s.table
                .lookup(&FlowKey::v4(CLIENT, SERVER, p, 53, 17))
                .is_some()
        );
    }
}

#[test]
fn a_flow_the_router_will_drop_makes_no_session_and_no_binding() {
    let mut s = services(0, 1, "");
    let mut t = Tally::new(1);
    let mut f = udp(CLIENT, SERVER, 5000, 53);
    let h = crate::wire::Headers::parse(&f).unwrap();
    let nowhere = |_: std::net::IpAddr| false;
    assert_eq!(
        s.process_routed(&mut f, &h, (IN, false), 0, &mut t, &nowhere),
        Verdict::Pass { snat: None },
        "routed on, to be dropped there"
    );
    assert!(s.table.is_empty());
    assert_eq!(t.get(WorkerCounter::SessionsCreated), 0);
    assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 8);
    let anywhere = |_: std::net::IpAddr| true;
    assert!(matches!(
        s.process_routed(&mut f, &h, (IN, false), 0, &mut t, &anywhere),
        Verdict::Pass { snat: Some(_) }
    ));
    assert_eq!(s.table.len(), 1);
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
        Verdict::Unreachable(DropReason::NatFailed)
    );
    assert_eq!(t.get(WorkerCounter::NatAllocFailures), 1);
    assert_eq!(t.get(WorkerCounter::NatPoolExhausted), 1);
}

#[test]
fn flows_are_handed_to_their_owner() {
    let mut w0 = services(0, 2, "");
    let mut w1 = services(1, 2, "");
    let mut t = Tally::new(2);
    // A subscriber worker 1 owns; worker 0 must hand its flows over.
    let client = client_of(1, 2);
    let sport = 1000;
    let mut f = udp(client, SERVER, sport, 53);
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
    assert_eq!(endpoints(&reply), (SERVER, 53, client, sport));
}

/// An inside host whose flows worker `w` of `workers` owns.
fn client_of(w: usize, workers: usize) -> [u8; 4] {
    let place = Placement {
        workers,
        by_subscriber: true,
    };
    (10..250)
        .map(|i| [198, 18, 1, i])
        .find(|&c| place.of_subscriber(c) == w)
        .unwrap()
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

mod replication {
    use std::sync::Arc;

    use tandem_control::sync::{NackReason, Op};

    use super::*;
    use crate::sync::{self, Hub, ToSync, ToWorker};

    fn events(hub: &Hub) -> Vec<ToSync> {
        hub.drain_events(0)
    }

    fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An active worker and a standby one, each with its own hub.
    fn pair() -> (Services, Arc<Hub>, Services, Arc<Hub>) {
        let ah = Arc::new(Hub::new(1));
        let mut a = services(0, 1, "");
        a.attach(Arc::clone(&ah), 60);
        let (s, sh) = standby();
        (a, ah, s, sh)
    }

    /// One UDP datagram from the client's port `sport` through `a`.
    fn open(a: &mut Services, sport: u16, now: u32, t: &mut Tally) -> Verdict {
        run(a, &mut udp(CLIENT, SERVER, sport, 53), IN, now, t)
    }

    /// Hands the active's add events to the standby as the sync thread would.
    fn carry(from: &Hub, to: &Hub, generation: u8) -> usize {
        let mut n = 0;
        for ev in events(from) {
            if let ToSync::Add(rec) = ev {
                install(to, generation, rec);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn events_flow_only_while_the_peer_is_connected() {
        let (mut a, ah, _, _) = pair();
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        assert!(events(&ah).is_empty(), "no peer, no events");
        ah.set_live(true);
        open(&mut a, 5001, 1, &mut t);
        let evs = events(&ah);
        let [ToSync::Add(rec)] = evs.as_slice() else {
            panic!("{evs:?}");
        };
        assert_eq!(rec.key.sport, 5001);
        assert_eq!(rec.nat_addr, POOL);
        assert_eq!(rec.flags & tandem_control::sync::wire::REC_NAT, 1);
    }

    #[test]
    fn tcp_state_changes_refresh_and_expiry_deletes() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        run(
            &mut a,
            &mut tcp(CLIENT, SERVER, 6000, 80, "S"),
            IN,
            1,
            &mut t,
        );
        let port = match events(&ah).as_slice() {
            [ToSync::Add(r)] => r.nat_port,
            other => panic!("{other:?}"),
        };
        run(
            &mut a,
            &mut tcp(SERVER, POOL, 80, port, "SA"),
            OUT,
            1,
            &mut t,
        );
        let evs = events(&ah);
        assert!(
            matches!(evs.as_slice(), [ToSync::Refresh(r)] if r.state == TcpState::SynReceived as u8),
            "{evs:?}"
        );
        // Idle long past every timeout: the session expires, the peer hears.
        a.expire(100_000, &mut t);
        let evs = events(&ah);
        assert!(
            matches!(evs.as_slice(), [ToSync::Delete(d)] if d.key.sport == 6000),
            "{evs:?}"
        );
    }

    #[test]
    fn a_udp_sessions_first_answer_is_refreshed_once() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        run(&mut a, &mut udp(CLIENT, SERVER, 6001, 53), IN, 1, &mut t);
        let port = match events(&ah).as_slice() {
            [ToSync::Add(r)] if r.state == 0 => r.nat_port,
            other => panic!("{other:?}"),
        };
        // More from the initiator: nothing new for the peer.
        run(&mut a, &mut udp(CLIENT, SERVER, 6001, 53), IN, 1, &mut t);
        assert!(events(&ah).is_empty());
        for _ in 0..2 {
            run(&mut a, &mut udp(SERVER, POOL, 53, port), OUT, 1, &mut t);
        }
        let evs = events(&ah);
        assert!(
            matches!(evs.as_slice(), [ToSync::Refresh(r)] if r.state == tandem_control::sync::wire::ANSWERED),
            "{evs:?}"
        );
    }

    #[test]
    fn a_busy_session_whose_deadline_moves_is_refreshed() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 0, &mut t);
        events(&ah);
        let udp_timeout = a.table.timeouts().udp;
        open(&mut a, 5000, 5, &mut t);
        a.expire(udp_timeout + 1, &mut t);
        let evs = events(&ah);
        assert!(
            matches!(evs.as_slice(), [ToSync::Refresh(r)] if r.idle == udp_timeout + 1 - 5),
            "{evs:?}"
        );
    }

    #[test]
    fn the_standby_installs_holds_the_binding_and_forwards_replies() {
        let (mut a, ah, mut s, sh) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        assert_eq!(carry(&ah, &sh, 1), 1);
        let free = s.sets[0].nat.as_ref().unwrap().available();
        s.sync_step(10);
        assert_eq!(count(&sh.ports[0].counts.installed), 1);
        assert_eq!(s.table.len(), 1);
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), free - 1);
        // After a failover the standby's copy carries the flow both ways.
        let port = a.table.get(0).nat().map_or(0, |(_, p)| p);
        let installed = *s.table.get(s.table.lookup(&a.table.get(0).key).unwrap().0);
        assert!(installed.is_synced());
        assert_eq!(installed.nat(), Some((POOL, port)));
        let mut reply = udp(SERVER, POOL, 53, port);
        assert_eq!(
            run(&mut s, &mut reply, OUT, 11, &mut t),
            Verdict::Pass { snat: None }
        );
        assert_eq!(endpoints(&reply), (SERVER, 53, CLIENT, 5000));
        // The same add again (a cold sync racing a live add) updates in place.
        open(&mut a, 5000, 2, &mut t);
        let rec = sync::record(a.table.get(0), 3);
        install(&sh, 1, rec);
        s.sync_step(12);
        assert_eq!(s.table.len(), 1);
        assert_eq!(count(&sh.ports[0].counts.installed), 2);
        assert!(events(&sh).is_empty(), "nothing refused");
        // A delete removes it and frees the port.
        sh.ports[0]
            .commands
            .push(ToWorker::Remove {
                rec: sync::delete_record(&installed),
            })
            .unwrap();
        s.sync_step(13);
        assert!(s.table.is_empty());
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), free);
        assert_eq!(count(&sh.ports[0].counts.removed), 1);
        sh.ports[0]
            .commands
            .push(ToWorker::Remove {
                rec: sync::delete_record(&installed),
            })
            .unwrap();
        s.sync_step(13);
        assert_eq!(count(&sh.ports[0].counts.not_found), 1);
    }

    #[test]
    fn records_the_standby_cannot_hold_are_refused() {
        let (mut a, ah, mut s, sh) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        // per_worker = 4: the fifth session does not fit.
        for p in 0..4 {
            open(&mut a, 5000 + p, 1, &mut t);
        }
        carry(&ah, &sh, 1);
        s.sync_step(1);
        assert_eq!(s.table.len(), 4);
        let mut extra = sync::record(a.table.get(0), 1);
        extra.key.sport = 9999;
        extra.nat_port = 1030;
        let refresh = tandem_control::sync::RefreshRecord {
            id: 99,
            key: extra.key,
            state: 0,
            idle: 0,
        };
        let mut foreign = extra;
        foreign.key.sport = 9998;
        foreign.nat_addr = [192, 0, 2, 1];
        for cmd in [
            ToWorker::Install {
                seq: 7,
                generation: 1,
                rec: extra,
            },
            ToWorker::Install {
                seq: 8,
                generation: 1,
                rec: foreign,
            },
            ToWorker::Refresh {
                seq: 9,
                generation: 1,
                rec: refresh,
            },
        ] {
            sh.ports[0].commands.push(cmd).unwrap();
        }
        s.sync_step(2);
        let refused: Vec<_> = events(&sh)
            .into_iter()
            .map(|e| match e {
                ToSync::Refused {
                    seq, op, reason, ..
                } => (seq, op, reason),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            refused,
            [
                (7, Op::Add, NackReason::TableFull),
                (8, Op::Add, NackReason::NatConflict),
                (9, Op::Refresh, NackReason::NotFound),
            ]
        );
        // The refused add gave its reserved port back.
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 4);
    }

    #[test]
    fn a_cold_sync_walks_every_session_and_the_standby_sweeps_the_rest() {
        let (mut a, ah, mut s, sh) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        for p in 0..3 {
            open(&mut a, 5000 + p, 1, &mut t);
        }
        // Generation 1: the standby holds all three.
        carry(&ah, &sh, 1);
        s.sync_step(1);
        assert_eq!(s.table.len(), 3);
        // The link drops; the active loses one session meanwhile.
        ah.set_live(false);
        let gone = a.table.lookup(&FlowKey::v4(CLIENT, SERVER, 5001, 53, 17));
        let (slot, _) = gone.unwrap();
        a.table.remove(slot);
        // Reconnected: the active walks its table for generation 2.
        ah.set_live(true);
        ah.ports[0]
            .commands
            .push(ToWorker::Walk { walk: 4 })
            .unwrap();
        a.sync_step(2);
        assert!(!a.sync_walking(), "a small table is walked in one step");
        let evs = events(&ah);
        let adds = evs.iter().filter(|e| matches!(e, ToSync::Add(_))).count();
        assert_eq!(adds, 2);
        assert_eq!(
            evs.last(),
            Some(&ToSync::WalkDone {
                walk: 4,
                sessions: 2
            })
        );
        for ev in evs {
            if let ToSync::Add(rec) = ev {
                install(&sh, 2, rec);
            }
        }
        sh.ports[0]
            .commands
            .push(ToWorker::Sweep { generation: 2 })
            .unwrap();
        s.sync_step(3);
        assert_eq!(s.table.len(), 2, "the session deleted meanwhile is swept");
        assert_eq!(count(&sh.ports[0].counts.swept), 1);
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 6);
    }

    #[test]
    fn a_refresh_the_standby_lacks_is_answered_with_the_session() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        let key = match events(&ah).as_slice() {
            [ToSync::Add(r)] => r.key,
            other => panic!("{other:?}"),
        };
        ah.ports[0].commands.push(ToWorker::Resend { key }).unwrap();
        a.sync_step(2);
        assert!(matches!(events(&ah).as_slice(), [ToSync::Add(r)] if r.key == key));
    }

    #[test]
    fn synced_sessions_outlive_their_timeout_by_the_grace() {
        let (mut a, ah, mut s, sh) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 0, &mut t);
        carry(&ah, &sh, 1);
        s.sync_step(0);
        let udp_timeout = s.table.timeouts().udp;
        s.expire(udp_timeout + 1, &mut t);
        assert_eq!(s.table.len(), 1, "still within the grace");
        s.expire(udp_timeout + 61, &mut t);
        assert!(s.table.is_empty());
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 8);
    }

    /// `workers` workers' services, attached to one hub.
    fn attached(workers: usize) -> (Arc<Hub>, Vec<Services>) {
        let hub = Arc::new(Hub::new(workers));
        let w = (0..workers)
            .map(|i| {
                let mut s = services(i, workers, "");
                s.attach(Arc::clone(&hub), 60);
                s
            })
            .collect();
        (hub, w)
    }

    fn standby() -> (Services, Arc<Hub>) {
        let hub = Arc::new(Hub::new(1));
        let mut s = services(0, 1, "");
        s.attach(Arc::clone(&hub), 60);
        (s, hub)
    }

    fn rec(sport: u16, nat_port: u16) -> tandem_control::sync::SessionRecord {
        let mut x = Session::new(
            FlowKey::v4(CLIENT, SERVER, sport, 53, 17),
            u64::from(sport),
            Origin::Inside,
            0,
            0,
        );
        x.set_nat(POOL, nat_port);
        sync::record(&x, 0)
    }

    fn install(hub: &Hub, generation: u8, rec: tandem_control::sync::SessionRecord) {
        hub.ports[0]
            .commands
            .push(ToWorker::Install {
                seq: 1,
                generation,
                rec,
            })
            .unwrap();
    }

    #[test]
    fn a_newer_binding_from_the_peer_evicts_a_stale_synced_holder() {
        let (mut s, hub) = standby();
        install(&hub, 1, rec(5000, 1030));
        s.sync_step(1);
        // The peer reused port 1030 for another flow (the first one's
        // delete was lost): the newer binding wins.
        install(&hub, 1, rec(6000, 1030));
        s.sync_step(2);
        assert!(hub.drain_events(0).is_empty(), "nothing refused");
        assert_eq!(s.table.len(), 1);
        let k = FlowKey::v4(CLIENT, SERVER, 6000, 53, 17);
        assert!(s.table.lookup(&k).is_some());
        assert_eq!(s.sets[0].nat.as_ref().unwrap().available(), 7);
    }

    #[test]
    fn a_delete_finds_an_outside_initiated_session_on_its_second_worker() {
        // Placed by subscriber: an outside-initiated session lives on its
        // inside host's worker; a delete names only the key, and goes
        // first to the worker the source would pick.
        let (hub, mut w) = attached(2);
        let (inside, remote) = (client_of(1, 2), client_of(0, 2));
        let k = FlowKey::v4(remote, inside, 40000, 22, 6);
        let r = sync::record(&Session::new(k, 9, Origin::Outside, 0, 0), 0);
        let own = sync::Ownership::new(&config(""), 2);
        assert_eq!(own.owner(&r), Ok((1, None)), "the inside host's worker");
        assert_eq!(own.of_key(&r.key), 0, "where a key alone goes first");
        hub.ports[1]
            .commands
            .push(ToWorker::Install {
                seq: 1,
                generation: 1,
                rec: r,
            })
            .unwrap();
        w[1].sync_step(1);
        assert_eq!(w[1].table.len(), 1);
        // A delete, as the sync thread sends it: to the key's first worker.
        let delete = || {
            hub.ports[own.of_key(&r.key)]
                .commands
                .push(ToWorker::Remove {
                    rec: tandem_control::sync::DeleteRecord { id: 9, key: r.key },
                })
                .unwrap();
        };
        delete();
        w[0].sync_step(2);
        w[1].sync_step(2);
        assert_eq!(w[1].table.len(), 0, "passed on and removed");
        assert_eq!(count(&hub.ports[0].counts.not_found), 0);
        assert_eq!(count(&hub.ports[1].counts.removed), 1);
        // A delete for a session nowhere is counted once, where it ends.
        delete();
        w[0].sync_step(3);
        w[1].sync_step(3);
        let lost = count(&hub.ports[0].counts.not_found) + count(&hub.ports[1].counts.not_found);
        assert_eq!(lost, 1);
    }

    #[test]
    fn a_refresh_and_a_delete_find_a_forwarded_session() {
        // A forward's session lives with its inside host (worker 0 here);
        // its key (remote -> pool address) names neither that host nor a
        // pool port: commands by key alone must still find it.
        let forward = "[[service_set.nat.forward]]\nprotocol = \"tcp\"\n\
                       outside = \"198.18.2.100:8080\"\ninside = \"198.18.1.10:80\"\n";
        let inside = client_of(0, 2);
        let forward = forward.replace("198.18.1.10", &std::net::Ipv4Addr::from(inside).to_string());
        let hub = Arc::new(Hub::new(2));
        let mut w: Vec<Services> = (0..2)
            .map(|i| {
                let mut s = services(i, 2, &forward);
                s.attach(Arc::clone(&hub), 60);
                s
            })
            .collect();
        let remote = (10..250)
            .map(|i| [198, 18, 3, i])
            .find(|&r| {
                Placement {
                    workers: 2,
                    by_subscriber: true,
                }
                .of_subscriber(r)
                    == 1
            })
            .unwrap();
        let mut x = Session::new(
            FlowKey::v4(remote, POOL, 40000, 8080, 6),
            9,
            Origin::Outside,
            0,
            0,
        );
        x.set_dnat(inside, 80);
        x.set_static();
        let r = sync::record(&x, 0);
        let own = sync::Ownership::new(&config(&forward), 2);
        assert_eq!(own.owner(&r), Ok((0, None)), "the inside host's worker");
        assert_eq!(own.of_key(&r.key), 1, "where a key alone goes first");
        hub.ports[0]
            .commands
            .push(ToWorker::Install {
                seq: 1,
                generation: 1,
                rec: r,
            })
            .unwrap();
        w[0].sync_step(1);
        assert_eq!(w[0].table.len(), 1);
        let mut refreshed = sync::refresh_record(&x, 0);
        refreshed.state = TcpState::Established as u8;
        hub.ports[own.of_key(&r.key)]
            .commands
            .push(ToWorker::Refresh {
                seq: 2,
                generation: 1,
                rec: refreshed,
            })
            .unwrap();
        w[1].sync_step(2);
        w[0].sync_step(2);
        let (slot, _) = w[0].table.lookup(&x.key).unwrap();
        assert_eq!(
            w[0].table.get(slot).tcp_state(),
            Some(TcpState::Established)
        );
        hub.ports[own.of_key(&r.key)]
            .commands
            .push(ToWorker::Remove {
                rec: tandem_control::sync::DeleteRecord { id: 9, key: r.key },
            })
            .unwrap();
        w[1].sync_step(3);
        w[0].sync_step(3);
        assert_eq!(w[0].table.len(), 0, "passed on and removed");
        assert_eq!(count(&hub.ports[1].counts.not_found), 0);
    }

    #[test]
    fn a_newer_connection_stops_an_older_sweep() {
        let (mut s, hub) = standby();
        for p in 0..3 {
            install(&hub, 1, rec(5000 + p, 1024 + p));
        }
        s.sync_step(1);
        // Sweep for generation 2 queued, then generation 3's cold sync
        // re-sends a session before the sweep ran: the stale sweep stops.
        hub.ports[0]
            .commands
            .push(ToWorker::Sweep { generation: 2 })
            .unwrap();
        install(&hub, 3, rec(5000, 1024));
        s.sync_step(2);
        assert_eq!(s.table.len(), 3, "nothing swept by the older sweep");
        assert!(!s.sync_ready());
    }

    /// Fills `a`'s ring as a sync thread that does not drain would leave
    /// it.
    fn fill(a: &mut Services) {
        let events = &mut a.sync.as_mut().expect("attached").events;
        while events
            .push(ToSync::WalkDone {
                walk: 0,
                sessions: 0,
            })
            .is_ok()
        {}
    }

    #[test]
    fn events_that_do_not_fit_are_repaired_and_the_digests_agree() {
        let (mut a, ah, mut s, sh) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        carry(&ah, &sh, 1);
        s.sync_step(1);
        // The ring full: two adds are lost (counted), their sessions marked.
        fill(&mut a);
        open(&mut a, 5001, 1, &mut t);
        open(&mut a, 5002, 1, &mut t);
        assert_eq!(count(&ah.ports[0].counts.overflow), 2);
        assert_ne!(a.table.digest(), s.table.digest());
        events(&ah);
        // Repair: both sent again, once.
        a.sync_step(2);
        assert_eq!(carry(&ah, &sh, 1), 2);
        s.sync_step(2);
        assert_eq!(count(&ah.ports[0].counts.repaired), 2);
        assert_eq!(a.table.digest(), s.table.digest());
        assert_eq!(a.table.digest().sessions, 3);
        a.sync_step(3);
        assert!(events(&ah).is_empty(), "nothing marked any more");
        // A lost delete is parked and sent when there is room.
        fill(&mut a);
        a.expire(100_000, &mut t);
        assert!(a.table.is_empty());
        assert!(a.sync_repairing(), "deletes parked");
        events(&ah);
        a.sync_step(100_000);
        let deletes = events(&ah)
            .into_iter()
            .filter(|e| matches!(e, ToSync::Delete(_)))
            .count();
        assert_eq!(deletes, 3);
        assert!(!a.sync_repairing());
    }

    #[test]
    fn lost_events_are_repaired_once_the_ring_drains_and_refusals_wait_their_second() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        let repaired = |ah: &Hub| count(&ah.ports[0].counts.repaired);
        // A pass in second 1 sends the first lost add.
        fill(&mut a);
        open(&mut a, 5000, 1, &mut t);
        events(&ah);
        a.sync_step(1);
        assert_eq!(repaired(&ah), 1);
        // Another lost in the same second: while the ring is full no pass
        // starts; once the sync thread has drained it, one does at once.
        fill(&mut a);
        open(&mut a, 5001, 1, &mut t);
        a.sync_step(1);
        assert_eq!(repaired(&ah), 1, "the ring is full");
        events(&ah);
        a.sync_step(1);
        assert_eq!(repaired(&ah), 2, "sent in the same second");
        events(&ah);
        // A refusal waits for the next second, drained ring or not.
        open(&mut a, 5002, 1, &mut t);
        let key = match events(&ah).as_slice() {
            [ToSync::Add(r)] => r.key,
            other => panic!("{other:?}"),
        };
        ah.ports[0]
            .commands
            .push(ToWorker::Mark { key, refused: true })
            .unwrap();
        a.sync_step(1);
        assert_eq!(repaired(&ah), 2, "not again in the second it was refused");
        a.sync_step(2);
        assert_eq!(repaired(&ah), 3);
        assert!(matches!(events(&ah).as_slice(), [ToSync::Add(r)] if r.key == key));
    }

    #[test]
    fn a_refused_session_is_retried_once() {
        let (mut a, ah, _, _) = pair();
        ah.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        let key = match events(&ah).as_slice() {
            [ToSync::Add(r)] => r.key,
            other => panic!("{other:?}"),
        };
        let mark = || {
            ah.ports[0]
                .commands
                .push(ToWorker::Mark { key, refused: true })
                .unwrap();
        };
        mark();
        a.sync_step(1);
        assert!(
            matches!(events(&ah).as_slice(), [ToSync::Add(r)] if r.key == key),
            "sent again"
        );
        mark();
        a.sync_step(2);
        assert!(events(&ah).is_empty(), "not a third time");
        assert_eq!(count(&ah.ports[0].counts.abandoned), 1);
    }

    #[test]
    fn a_late_delete_spares_a_newer_session_of_the_same_key() {
        let (mut s, hub) = standby();
        install(&hub, 1, rec(5000, 1030));
        s.sync_step(1);
        let mut old = rec(5000, 1030);
        old.id = 1;
        hub.ports[0]
            .commands
            .push(ToWorker::Remove {
                rec: tandem_control::sync::DeleteRecord {
                    id: old.id,
                    key: old.key,
                },
            })
            .unwrap();
        s.sync_step(2);
        assert_eq!(s.table.len(), 1, "another id: kept");
        assert_eq!(count(&hub.ports[0].counts.not_found), 1);
    }

    #[test]
    fn a_peer_with_another_worker_count_is_held_by_the_port_owner_behind_a_stub() {
        // The peer runs 1 worker (its port share is the whole range); this
        // node runs 2 (worker 0 holds ports 1024-1027, worker 1 the rest).
        let (hub, mut w) = attached(2);
        let own = sync::Ownership::new(&config(""), 2);
        // A subscriber worker 1 holds here, translated to port 1024.
        let client = client_of(1, 2);
        let sport = 5000;
        let mut r = rec(sport, 1024);
        r.key.src = sync::wire_key(&FlowKey::v4(client, SERVER, sport, 53, 17)).src;
        assert_eq!(own.owner(&r), Ok((0, Some(1))));
        let install = |hub: &Hub| {
            hub.ports[0]
                .commands
                .push(ToWorker::Install {
                    seq: 1,
                    generation: 1,
                    rec: r,
                })
                .unwrap();
            hub.ports[1]
                .commands
                .push(ToWorker::Stub {
                    generation: 1,
                    rec: r,
                    holder: 0,
                })
                .unwrap();
        };
        install(&hub);
        w[0].sync_step(1);
        w[1].sync_step(1);
        assert_eq!((w[0].table.len(), w[1].table.len()), (1, 0));
        assert_eq!(w[1].table.stubs(), 1);
        assert_eq!(w[1].table.digest().sessions, 0, "a stub is not a session");
        // The flow's packets reach worker 1 by its hash: handed to worker 0,
        // which translates them; replies reach worker 0 by their port.
        let mut t = Tally::new(2);
        let mut out = udp(client, SERVER, sport, 53);
        assert_eq!(run(&mut w[1], &mut out, IN, 2, &mut t), Verdict::Handoff(0));
        let h = crate::wire::Headers::parse(&out).unwrap();
        let v = w[0].process_handed(&mut out, &h, IN, 2, &mut t);
        assert!(matches!(v, Verdict::Pass { snat: Some(_) }), "{v:?}");
        let mut back = udp(SERVER, POOL, 53, 1024);
        assert!(matches!(
            run(&mut w[0], &mut back, OUT, 2, &mut t),
            Verdict::Pass { .. }
        ));
        // The peer's delete goes to the hash's worker: the stub passes it on.
        hub.ports[1]
            .commands
            .push(ToWorker::Remove {
                rec: tandem_control::sync::DeleteRecord {
                    id: r.id,
                    key: r.key,
                },
            })
            .unwrap();
        w[1].sync_step(3);
        w[0].sync_step(3);
        assert_eq!((w[0].table.len(), w[1].table.stubs()), (0, 0));
        assert_eq!(w[0].sets[0].nat.as_ref().unwrap().available(), 4);
        // Aged out on its holder: the stub goes with it.
        install(&hub);
        w[0].sync_step(4);
        w[1].sync_step(4);
        assert_eq!(w[1].table.stubs(), 1);
        w[0].expire(100_000, &mut t);
        w[1].sync_step(100_000);
        assert_eq!((w[0].table.len(), w[1].table.stubs()), (0, 0));
    }

    #[test]
    fn a_walk_stops_when_the_peer_goes() {
        let hub = Arc::new(Hub::new(1));
        let mut a = services(0, 1, "");
        a.attach(Arc::clone(&hub), 60);
        hub.set_live(true);
        let mut t = Tally::new(1);
        open(&mut a, 5000, 1, &mut t);
        hub.drain_events(0);
        hub.ports[0]
            .commands
            .push(ToWorker::Walk { walk: 1 })
            .unwrap();
        hub.set_live(false);
        a.sync_step(2);
        assert!(!a.sync_walking());
        assert!(
            !hub.drain_events(0)
                .iter()
                .any(|e| matches!(e, ToSync::Add(_))),
            "no records for a connection that is gone"
        );
    }

    #[test]
    fn a_copy_idle_past_its_deadline_expires_on_the_next_tick() {
        let (mut s, hub) = standby();
        let mut t = Tally::new(1);
        s.expire(1999, &mut t);
        let mut r = rec(5000, 1030);
        // Idle 1000 s: past the 60 s UDP timeout and the 60 s grace, so its
        // deadline's tick was processed long ago.
        r.idle = 1000;
        install(&hub, 1, r);
        s.sync_step(2000);
        assert_eq!(s.table.len(), 1);
        assert_eq!(s.expire(2001, &mut t), 1);
        assert!(s.table.is_empty());
    }
}

/// A second server, and a second inside host.
const SERVER2: [u8; 4] = [198, 18, 2, 11];
const CLIENT2: [u8; 4] = [198, 18, 1, 11];

/// Services of a pool with room for several subscribers (blocks of 16
/// ports) and sessions; lowest ports first.
fn roomy(extra: &str) -> Services {
    let cfg = Config::parse(
        std::path::Path::new("t.toml"),
        &format!(
            "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n\
             [sessions]\nper_worker = 64\n\
             [[service_set]]\nname = \"lab\"\n[service_set.nat]\npool = [\"198.18.2.100\"]\n\
             ports = \"1024-1279\"\nport_reuse_delay_s = 0\nblock_size = 16\n{extra}"
        ),
    )
    .unwrap();
    let mut s = Services::new(&cfg, 0, 1, IN, 0).unwrap().unwrap();
    s.lowest_ports_first();
    s
}

/// Runs a frame from inside that may hairpin: a hairpinned one is
/// translated, then put through again from outside, as the worker does.
fn run_in(s: &mut Services, buf: &mut [u8], now: u32, t: &mut Tally) -> Verdict {
    let ip = parse(buf).unwrap();
    match s.process(buf, &ip, IN, now, t) {
        Verdict::Hairpin { snat } => {
            if let Some(n) = snat {
                n.apply(buf, ETH_HLEN);
            }
            run(s, buf, OUT, now, t)
        }
        Verdict::Pass { snat: Some(n) } => {
            n.apply(buf, ETH_HLEN);
            Verdict::Pass { snat: Some(n) }
        }
        v => v,
    }
}

#[test]
fn filtering_decides_who_reaches_a_mapping_from_outside() {
    for (filtering, other_port, other_host) in [
        ("endpoint-independent", true, true),
        ("address-dependent", true, false),
        ("address-and-port-dependent", false, false),
    ] {
        let mut s = roomy(&format!("filtering = \"{filtering}\"\n"));
        let mut t = Tally::new(1);
        let mut f = udp(CLIENT, SERVER, 40000, 3478);
        run(&mut s, &mut f, IN, 1, &mut t);
        assert_eq!(endpoints(&f), (POOL, 1024, SERVER, 3478));
        // The server's other port, then another host, write to the mapping.
        for (from, port, want) in [(SERVER, 3479, other_port), (SERVER2, 5000, other_host)] {
            let mut f = udp(from, POOL, port, 1024);
            let v = run(&mut s, &mut f, OUT, 1, &mut t);
            if want {
                assert_eq!(v, Verdict::Pass { snat: None }, "{filtering}");
                assert_eq!(endpoints(&f), (from, port, CLIENT, 40000), "{filtering}");
                // The inside host's answer leaves from its mapping.
                let mut back = udp(CLIENT, from, 40000, port);
                run(&mut s, &mut back, IN, 2, &mut t);
                assert_eq!(endpoints(&back), (POOL, 1024, from, port), "{filtering}");
            } else {
                assert_eq!(v, Verdict::Drop(DropReason::NoSession), "{filtering}");
            }
        }
        // The mapping lives while any of its sessions does, then goes.
        let want = 1 + usize::from(other_port) + usize::from(other_host);
        assert_eq!(s.table.len(), want, "{filtering}");
        assert_eq!(s.nat_ports().0, 1, "{filtering}");
        s.expire(1000, &mut t);
        assert_eq!(s.nat_ports().0, 0, "{filtering}");
        // Nothing reaches a mapping that is gone.
        let mut f = udp(SERVER, POOL, 3478, 1024);
        assert_eq!(
            run(&mut s, &mut f, OUT, 1000, &mut t),
            Verdict::Drop(DropReason::NoSession)
        );
    }
}

#[test]
fn a_firewall_rule_still_decides_flows_through_a_mapping() {
    let mut s = roomy(
        "[[service_set.firewall.rules]]\nname = \"no-telnet\"\nprotocol = \"udp\"\n\
         destination_ports = \"40001\"\ndirection = \"outside\"\naction = \"drop\"\n",
    );
    let mut t = Tally::new(1);
    for port in [40000, 40001] {
        let mut f = udp(CLIENT, SERVER, port, 3478);
        run(&mut s, &mut f, IN, 1, &mut t);
    }
    // The rule matches the translated destination (the inside port).
    let mut f = udp(SERVER2, POOL, 5000, 1025);
    assert_eq!(
        run(&mut s, &mut f, OUT, 1, &mut t),
        Verdict::Drop(DropReason::Policy)
    );
    let mut f = udp(SERVER2, POOL, 5000, 1024);
    assert_eq!(
        run(&mut s, &mut f, OUT, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (SERVER2, 5000, CLIENT, 40000));
}

#[test]
fn two_inside_hosts_reach_each_other_through_their_mappings() {
    for filtering in ["endpoint-independent", "address-and-port-dependent"] {
        let mut s = roomy(&format!("filtering = \"{filtering}\"\n"));
        let mut t = Tally::new(1);
        // Each learns its mapping from a server.
        for (host, port) in [(CLIENT, 5000), (CLIENT2, 6000)] {
            let mut f = udp(host, SERVER, port, 3478);
            run(&mut s, &mut f, IN, 1, &mut t);
        }
        let map = |s: &Services, host: [u8; 4], port| {
            let (slot, _) = s
                .table
                .lookup(&FlowKey::v4(host, SERVER, port, 3478, 17))
                .unwrap();
            s.table.get(slot).nat().unwrap()
        };
        let (a, b) = (map(&s, CLIENT, 5000), map(&s, CLIENT2, 6000));
        // B punches toward A's mapping first (under port-dependent
        // filtering A's mapping drops it: A has not sent to B yet).
        let mut f = udp(CLIENT2, a.0, 6000, a.1);
        let v = run_in(&mut s, &mut f, 2, &mut t);
        if filtering == "endpoint-independent" {
            assert_eq!(v, Verdict::Pass { snat: None });
            assert_eq!(
                endpoints(&f),
                (b.0, b.1, CLIENT, 5000),
                "A hears B's mapping"
            );
        } else {
            assert_eq!(v, Verdict::Drop(DropReason::NoSession));
        }
        // A sends to B's mapping: B hears it from A's mapping.
        let mut f = udp(CLIENT, b.0, 5000, b.1);
        assert_eq!(
            run_in(&mut s, &mut f, 2, &mut t),
            Verdict::Pass { snat: None }
        );
        assert_eq!(endpoints(&f), (a.0, a.1, CLIENT2, 6000), "{filtering}");
        // And B's answer reaches A from B's mapping.
        let mut f = udp(CLIENT2, a.0, 6000, a.1);
        assert_eq!(
            run_in(&mut s, &mut f, 3, &mut t),
            Verdict::Pass { snat: None }
        );
        assert_eq!(endpoints(&f), (b.0, b.1, CLIENT, 5000), "{filtering}");
        // No hairpinned session goes to the fast path.
        for slot in 0..4 {
            let x = s.table.get(slot);
            if x.is_live() && x.is_hairpin() {
                assert!(!s.may_offload(x));
            }
        }
    }
}

#[test]
fn a_forwarded_port_reaches_its_host_and_keeps_its_pair() {
    // The forward's port lies in the pool's range: no mapping gets it.
    let mut s = roomy(
        "[[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"198.18.2.100:1024\"\n\
         inside = \"198.18.1.10:80\"\n",
    );
    let mut t = Tally::new(1);
    let mut syn = tcp(SERVER, POOL, 33000, 1024, "S");
    assert_eq!(
        run(&mut s, &mut syn, OUT, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&syn), (SERVER, 33000, CLIENT, 80));
    let mut synack = tcp(CLIENT, SERVER, 80, 33000, "SA");
    run(&mut s, &mut synack, IN, 1, &mut t);
    assert_eq!(endpoints(&synack), (POOL, 1024, SERVER, 33000));
    let (slot, _) = s
        .table
        .lookup(&FlowKey::v4(SERVER, POOL, 33000, 1024, 6))
        .unwrap();
    let x = *s.table.get(slot);
    assert!(x.is_dnat() && x.is_static() && x.origin() == Origin::Outside);
    assert_eq!(x.tcp_state(), Some(TcpState::SynReceived));
    // The record carries it to a peer as it is.
    let r = crate::sync::record(&x, 2);
    assert_eq!(r.validate(1), Ok(()));
    assert_eq!(crate::sync::session(&r, 2).reply_key(), x.reply_key());
    // Dynamic mappings never take the forwarded pair.
    for port in 0..7 {
        let mut f = udp(CLIENT2, SERVER, 7000 + port, 53);
        run(&mut s, &mut f, IN, 1, &mut t);
        assert_ne!(endpoints(&f).1, 1024);
    }
    // An inside host reaches the forward by the outside address too,
    // seen there from its own mapping; the answer goes back the same way.
    let mut syn = tcp(CLIENT2, POOL, 34000, 1024, "S");
    assert_eq!(
        run_in(&mut s, &mut syn, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    let (from, from_port, to, to_port) = endpoints(&syn);
    assert_eq!((from, to, to_port), (POOL, CLIENT, 80));
    let mut synack = tcp(CLIENT, POOL, 80, from_port, "SA");
    assert_eq!(
        run_in(&mut s, &mut synack, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&synack), (POOL, 1024, CLIENT2, 34000));
}

#[test]
fn a_static_translation_works_both_ways_with_its_ports() {
    let mut s =
        roomy("[[service_set.nat.static]]\ninside = \"198.18.1.20\"\noutside = \"198.18.2.120\"\n");
    let mut t = Tally::new(1);
    let (host, outside) = ([198, 18, 1, 20], [198, 18, 2, 120]);
    let mut f = udp(host, SERVER, 5060, 5060);
    run(&mut s, &mut f, IN, 1, &mut t);
    assert_eq!(endpoints(&f), (outside, 5060, SERVER, 5060));
    let mut syn = tcp(SERVER2, outside, 40000, 22, "S");
    assert_eq!(
        run(&mut s, &mut syn, OUT, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&syn), (SERVER2, 40000, host, 22));
    let mut synack = tcp(host, SERVER2, 22, 40000, "SA");
    run(&mut s, &mut synack, IN, 1, &mut t);
    assert_eq!(endpoints(&synack), (outside, 22, SERVER2, 40000));
    // No pool pair is held for either.
    assert_eq!(s.nat_ports().0, 0);
    // Other hosts still leave from the pool.
    let mut f = udp(CLIENT, SERVER, 5060, 5060);
    run(&mut s, &mut f, IN, 1, &mut t);
    assert_eq!(endpoints(&f).0, POOL);
}

#[test]
fn a_standby_holds_inbound_sessions_and_their_mapping() {
    let mut a = roomy("");
    let mut b = roomy("");
    let mut t = Tally::new(1);
    let mut f = udp(CLIENT, SERVER, 40000, 3478);
    run(&mut a, &mut f, IN, 1, &mut t);
    let mut f = udp(SERVER2, POOL, 5000, 1024);
    run(&mut a, &mut f, OUT, 1, &mut t);
    let mut records: Vec<_> = (0..4)
        .map(|slot| *a.table.get(slot))
        .filter(Session::is_live)
        .map(|x| crate::sync::record(&x, 1))
        .collect();
    // The inbound one first: the mapping is built from either.
    records.sort_by_key(|r| r.flags & tandem_control::sync::wire::REC_DNAT == 0);
    for r in &records {
        assert_eq!(b.install(r, 1, 1), Ok(true));
    }
    assert_eq!(b.nat_ports().0, 1);
    // After a takeover the inbound flow goes on, and a new one comes in.
    let mut f = udp(SERVER2, POOL, 5000, 1024);
    assert_eq!(
        run(&mut b, &mut f, OUT, 2, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (SERVER2, 5000, CLIENT, 40000));
    let mut f = udp(SERVER2, POOL, 5001, 1024);
    assert_eq!(
        run(&mut b, &mut f, OUT, 2, &mut t),
        Verdict::Pass { snat: None }
    );
    // Every session's end releases the mapping exactly once.
    b.expire(1000, &mut t);
    assert_eq!(b.nat_ports().0, 0);
}

#[test]
fn flows_from_outside_count_against_the_subscribers_session_limit() {
    let mut s = roomy("sessions_per_subscriber = 3\n");
    let mut t = Tally::new(1);
    let mut f = udp(CLIENT, SERVER, 40000, 3478);
    run(&mut s, &mut f, IN, 1, &mut t);
    let verdicts: Vec<Verdict> = (0..4)
        .map(|i| {
            let mut f = udp(SERVER2, POOL, 5000 + i, 1024);
            run(&mut s, &mut f, OUT, 1, &mut t)
        })
        .collect();
    assert_eq!(
        verdicts[1..],
        [
            Verdict::Pass { snat: None },
            Verdict::Drop(DropReason::NatFailed),
            Verdict::Drop(DropReason::NatFailed)
        ]
    );
    assert_eq!(t.get(WorkerCounter::NatSubscriberSessions), 2);
    assert_eq!(t.get(WorkerCounter::NatAllocFailures), 2);
    assert_eq!(s.table.len(), 3);
}

/// An ICMP port unreachable from `from` to `to` quoting `f`'s datagram.
fn unreachable_about(from: [u8; 4], to: [u8; 4], f: &[u8]) -> Vec<u8> {
    let n = ETH_HLEN + parse(f).unwrap().datagram_len();
    let mut err = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(from, to, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &f[ETH_HLEN..n])
        .unwrap();
    err.resize(2048, 0);
    err
}

/// The datagram an ICMPv4 error (untagged, with a 20-byte IP header)
/// quotes.
fn quote_of(err: &[u8]) -> wire::Quoted {
    let end = ETH_HLEN + parse(err).unwrap().datagram_len();
    wire::quoted_v4(err, 42, end).unwrap()
}

#[test]
fn icmp_errors_of_a_forwarded_flow_are_translated_both_ways() {
    let mut s = roomy(
        "[[service_set.nat.forward]]\nprotocol = \"udp\"\noutside = \"198.18.2.100:1100\"\n\
         inside = \"198.18.1.10:53\"\n",
    );
    let mut t = Tally::new(1);
    let mut q = udp(SERVER, POOL, 33000, 1100);
    run(&mut s, &mut q, OUT, 1, &mut t);
    assert_eq!(endpoints(&q), (SERVER, 33000, CLIENT, 53));
    // The inside host answers the query with an unreachable: it leaves
    // from the forward's address, quoting what the server sent.
    let mut err = unreachable_about(CLIENT, SERVER, &q);
    assert_eq!(
        run(&mut s, &mut err, IN, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(&err[26..30], &POOL);
    let quote = quote_of(&err);
    assert_eq!((quote.dst, quote.dport), (POOL, 1100));
    // The server's unreachable about the host's answer reaches the host.
    let mut answer = udp(CLIENT, SERVER, 53, 33000);
    run(&mut s, &mut answer, IN, 1, &mut t);
    assert_eq!(endpoints(&answer), (POOL, 1100, SERVER, 33000));
    let mut err = unreachable_about(SERVER, POOL, &answer);
    assert_eq!(
        run(&mut s, &mut err, OUT, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(&err[30..34], &CLIENT);
    let quote = quote_of(&err);
    assert_eq!((quote.src, quote.sport), (CLIENT, 53));
}

#[test]
fn a_standby_hairpins_what_its_peer_hairpinned() {
    let (mut a, mut b) = (roomy(""), roomy(""));
    let mut t = Tally::new(1);
    for (host, port) in [(CLIENT, 5000), (CLIENT2, 6000)] {
        let mut f = udp(host, SERVER, port, 3478);
        run(&mut a, &mut f, IN, 1, &mut t);
    }
    let (ma, mb) = ((POOL, 1024), (POOL, 1040));
    let mut f = udp(CLIENT, mb.0, 5000, mb.1);
    assert_eq!(
        run_in(&mut a, &mut f, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (ma.0, ma.1, CLIENT2, 6000));
    let records: Vec<_> = (0..64)
        .map(|slot| *a.table.get(slot))
        .filter(Session::is_live)
        .map(|x| crate::sync::record(&x, 1))
        .collect();
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(b.install(r, 1, 1), Ok(true));
    }
    // After a takeover both hosts go on through their mappings, and no
    // hairpinned session may take the fast path.
    let mut f = udp(CLIENT, mb.0, 5000, mb.1);
    assert_eq!(
        run_in(&mut b, &mut f, 2, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (ma.0, ma.1, CLIENT2, 6000));
    let mut f = udp(CLIENT2, ma.0, 6000, ma.1);
    assert_eq!(
        run_in(&mut b, &mut f, 2, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (mb.0, mb.1, CLIENT, 5000));
    let hairpinned = (0..64)
        .map(|slot| *b.table.get(slot))
        .filter(|x| x.is_live() && x.is_hairpin())
        .inspect(|x| assert!(!b.may_offload(x)))
        .count();
    assert_eq!(hairpinned, 2);
}

#[test]
fn a_hairpin_leaves_from_its_senders_worker_and_enters_at_the_mappings() {
    let mut w0 = services(0, 2, "");
    let mut w1 = services(1, 2, "");
    let mut t = Tally::new(2);
    let (a, b) = (client_of(0, 2), client_of(1, 2));
    // B maps on worker 1 (its share: 1028-1031).
    let mut f = udp(b, SERVER, 6000, 3478);
    run(&mut w1, &mut f, IN, 0, &mut t);
    let (_, mb, _, _) = endpoints(&f);
    // A, on worker 0, writes to B's mapping: translated by A's worker
    // (its share: 1024-1027), then in again from outside, which is B's
    // worker's.
    let mut f = udp(a, POOL, 5000, mb);
    let ip = parse(&f).unwrap();
    let Verdict::Hairpin { snat: Some(n) } = w0.process(&mut f, &ip, IN, 0, &mut t) else {
        panic!("not hairpinned on the sender's worker");
    };
    n.apply(&mut f, ETH_HLEN);
    let (_, ma, _, _) = endpoints(&f);
    assert!((1024..=1027).contains(&ma), "{ma}");
    assert_eq!(run(&mut w0, &mut f, OUT, 0, &mut t), Verdict::Handoff(1));
    assert_eq!(
        run(&mut w1, &mut f, OUT, 0, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (POOL, ma, b, 6000));
}

#[test]
fn a_standby_refusing_a_session_keeps_its_mappings_hosts() {
    // Address-dependent filtering, a table of 4: the second session of a
    // mapping with the same server is refused for room; the server may
    // still reach the mapping through the first.
    let mut b = services(0, 1, "filtering = \"address-dependent\"\n");
    let session = |sport: u16, dport: u16, nat_port: u16| {
        let mut x = Session::new(
            FlowKey::v4(CLIENT, SERVER, sport, dport, 17),
            u64::from(sport) << 16 | u64::from(dport),
            Origin::Inside,
            0,
            0,
        );
        x.set_nat(POOL, nat_port);
        crate::sync::record(&x, 0)
    };
    for (sport, nat_port) in [(5000, 1024), (5001, 1025), (5002, 1026), (5003, 1027)] {
        assert_eq!(b.install(&session(sport, 53, nat_port), 1, 0), Ok(true));
    }
    assert_eq!(
        b.install(&session(5000, 54, 1024), 1, 0),
        Err(tandem_control::sync::NackReason::TableFull)
    );
    let mut t = Tally::new(1);
    let mut f = udp(SERVER, POOL, 99, 1024);
    let v = run(&mut b, &mut f, OUT, 1, &mut t);
    assert_ne!(v, Verdict::Drop(DropReason::NoSession), "filtered out");
}

#[test]
fn an_icmp_error_between_hairpinned_hosts_reaches_the_sender() {
    let mut s = roomy("");
    let mut t = Tally::new(1);
    for (host, port) in [(CLIENT, 5000), (CLIENT2, 6000)] {
        let mut f = udp(host, SERVER, port, 3478);
        run(&mut s, &mut f, IN, 1, &mut t);
    }
    let (ma, mb) = ((POOL, 1024), (POOL, 1040));
    let mut f = udp(CLIENT, mb.0, 5000, mb.1);
    assert_eq!(
        run_in(&mut s, &mut f, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!(endpoints(&f), (ma.0, ma.1, CLIENT2, 6000));
    // B has no socket there: its unreachable goes back through both
    // translations to A, quoting what A sent.
    let mut err = unreachable_about(CLIENT2, ma.0, &f);
    assert_eq!(
        run_in(&mut s, &mut err, 1, &mut t),
        Verdict::Pass { snat: None }
    );
    assert_eq!((&err[26..30], &err[30..34]), (&POOL[..], &CLIENT[..]));
    let quote = quote_of(&err);
    assert_eq!(
        (quote.src, quote.sport, quote.dst, quote.dport),
        (CLIENT, 5000, mb.0, mb.1)
    );
}

use std::{net::Ipv4Addr, thread};

use proptest::prelude::*;

use super::*;

fn hb(node_id: u32, seq: u64) -> Heartbeat {
    Heartbeat {
        view: PeerView {
            state: State::Master,
            priority: 100,
            node_id,
            healthy: true,
            released: false,
            acquire: false,
            force: false,
            hot: true,
            term: 3,
        },
        group: 1,
        incarnation: 1000,
        seq,
        echo_incarnation: 0,
        echo_seq: 0,
        echo_hold_us: 0,
        path: 0,
        sync: 2,
        sessions: 7,
    }
}

fn state() -> impl Strategy<Value = State> {
    (0..5u8).prop_map(|v| State::from_u8(v).unwrap())
}

proptest! {
    #[test]
    fn round_trips(
        st in state(),
        flags in 0..16u8,
        priority: u8,
        node_id in 1..u32::MAX,
        group: u32,
        incarnation: u64,
        seq: u64,
        echo_incarnation: u64,
        sessions: u64,
        term: u64,
        echo_seq: u64,
        echo_hold_us: u32,
        path: u8,
        sync in 0..3u8,
        keyed: bool,
    ) {
        let h = Heartbeat {
            view: PeerView {
                state: st,
                priority,
                node_id,
                healthy: flags & 1 != 0,
                released: flags & 2 != 0,
                acquire: flags & 4 != 0,
                force: flags & 8 != 0,
                hot: sync == 2,
                term,
            },
            group, incarnation, seq, echo_incarnation, echo_seq, echo_hold_us, path, sync,
            sessions,
        };
        let key = derive_key(b"a shared secret of the pair");
        let keys: &[[u8; 32]] = if keyed { std::slice::from_ref(&key) } else { &[] };
        prop_assert_eq!(Heartbeat::decode(&h.encode(keyed.then_some(&key)), keys), Ok(h));
    }

    #[test]
    fn garbage_is_refused_never_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = derive_key(b"k");
        let _ = Heartbeat::decode(&b, &[]);
        prop_assert!(Heartbeat::decode(&b, &[key]).is_err());
    }
}

#[test]
fn every_flipped_bit_of_a_tagged_heartbeat_is_refused() {
    let key = derive_key(b"a shared secret of the pair");
    let good = hb(1, 7).encode(Some(&key));
    for bit in 0..LEN * 8 {
        let mut b = good;
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(Heartbeat::decode(&b, &[key]).is_err(), "bit {bit}");
    }
}

#[test]
fn key_mismatches_and_bad_fields_are_refused() {
    let key = derive_key(b"one secret");
    let other = derive_key(b"another secret");
    let h = hb(1, 1);
    assert_eq!(
        Heartbeat::decode(&h.encode(Some(&key)), &[other]),
        Err(Reject::Auth)
    );
    assert_eq!(
        Heartbeat::decode(&h.encode(Some(&key)), &[]),
        Err(Reject::Auth)
    );
    assert_eq!(
        Heartbeat::decode(&h.encode(None), &[key]),
        Err(Reject::Auth)
    );
    // A rollover: either key is accepted.
    assert_eq!(
        Heartbeat::decode(&h.encode(Some(&key)), &[other, key]),
        Ok(h)
    );
    let mut b = h.encode(None);
    b[4] = 1;
    assert_eq!(Heartbeat::decode(&b, &[]), Err(Reject::Version(1)));
    for (at, v) in [(5, 5), (6, 0x10), (45, 3), (46, 1), (80, 1), (15, 0)] {
        let mut b = h.encode(None);
        b[at] = v;
        if at == 15 {
            b[12..16].fill(0);
        }
        assert_eq!(
            Heartbeat::decode(&b, &[]),
            Err(Reject::Invalid),
            "byte {at}"
        );
    }
    assert_eq!(
        Heartbeat::decode(&h.encode(None)[..LEN - 1], &[]),
        Err(Reject::Malformed)
    );
}

fn pair() -> (Path, Path) {
    let lo = Ipv4Addr::LOCALHOST;
    let a = Path::bind(
        "a",
        SocketAddr::from((lo, 0)),
        SocketAddr::from((lo, 1)),
        None,
    )
    .unwrap();
    let b = Path::bind("b", SocketAddr::from((lo, 0)), a.local, None).unwrap();
    let mut a = a;
    a.peer = b.local;
    (a, b)
}

fn me(node_id: u32, incarnation: u64) -> Identity {
    Identity {
        keys: Vec::new(),
        group: 1,
        node_id,
        incarnation,
        fresh: Duration::from_millis(500),
    }
}

/// Heartbeat `seq` of node `id` in `incarnation`.
fn from(id: u32, incarnation: u64, seq: u64) -> Heartbeat {
    Heartbeat {
        incarnation,
        ..hb(id, seq)
    }
}

/// Reads until something is accepted or refused (100 ms at most).
fn recv_one(p: &mut Path, me: &Identity) -> Vec<Heartbeat> {
    let mut out = Vec::new();
    let seen = |p: &Path| p.stats.received + p.stats.rejected + p.stats.unproven;
    let before = seen(p);
    for _ in 0..100 {
        p.recv(me, Instant::now(), &mut out);
        if seen(p) > before {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    out
}

/// A and B on one path, each having accepted the other's incarnation
/// (1000 for A, 2000 for B): A's first heartbeat is held, B's answer
/// echoes it and is accepted, A's next echoes B's and is accepted.
fn introduced() -> (Path, Path, Identity, Identity) {
    let (mut a, mut b) = pair();
    let (ma, mb) = (me(1, 1000), me(2, 2000));
    a.send(from(1, 1000, 1), None, Instant::now());
    assert!(recv_one(&mut b, &mb).is_empty());
    assert_eq!(b.stats.unproven, 1);
    assert!(b.unproven_waiting());
    b.send(from(2, 2000, 1), None, Instant::now());
    assert_eq!(recv_one(&mut a, &ma).len(), 1, "B echoed A's heartbeat");
    a.send(from(1, 1000, 2), None, Instant::now());
    assert_eq!(recv_one(&mut b, &mb).len(), 1, "A echoed B's heartbeat");
    assert!(!b.unproven_waiting());
    assert!(a.alive && b.alive);
    (a, b, ma, mb)
}

#[test]
fn a_path_measures_round_trips_and_counts_misses_and_replays() {
    let (mut a, mut b, ma, mb) = introduced();
    thread::sleep(Duration::from_millis(3));
    // B answers, echoing A's seq 2 and how long it held it.
    b.send(from(2, 2000, 2), None, Instant::now());
    let got = recv_one(&mut a, &ma);
    assert_eq!((got[0].echo_incarnation, got[0].echo_seq), (1000, 2));
    assert!(got[0].echo_hold_us >= 3000, "{}", got[0].echo_hold_us);
    assert_eq!(a.stats.acked, 2);
    assert!(
        a.stats.rtt_us < 3000,
        "hold time excluded: {}",
        a.stats.rtt_us
    );

    // Seqs 3..5 lost: B counts 3 missed when 6 arrives.
    a.send(from(1, 1000, 6), None, Instant::now());
    recv_one(&mut b, &mb);
    assert_eq!(b.stats.missed, 3);
    // A replay (or reordering) of an older one is refused.
    a.send(from(1, 1000, 5), None, Instant::now());
    assert!(recv_one(&mut b, &mb).is_empty());
    assert_eq!(b.stats.rejected, 1);
    // A heartbeat bearing this node's own id (a looped-back or misconfigured
    // peer) and another group are refused.
    a.send(from(2, 1000, 9), None, Instant::now());
    let mut other = from(1, 1000, 10);
    other.group = 9;
    a.send(other, None, Instant::now());
    assert!(recv_one(&mut b, &mb).is_empty());
    assert!(recv_one(&mut b, &mb).is_empty());
    assert_eq!(b.stats.rejected, 3);
    assert_eq!(b.stats.received, 2);
}

#[test]
fn a_restarted_peer_is_accepted_whatever_its_incarnation_once_it_proves_it_is_live() {
    let (_, mut b, _, mb) = introduced();
    // A restarts with a smaller incarnation (a wall clock set back would
    // once have been refused for good): held until it echoes B.
    let mut a2 = Path::bind(
        "a",
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        b.local,
        None,
    )
    .unwrap();
    b.peer = a2.local;
    let ma2 = me(1, 5);
    a2.send(from(1, 5, 1), None, Instant::now());
    assert!(recv_one(&mut b, &mb).is_empty());
    assert!(b.unproven_waiting());
    // B's next heartbeat echoes A's new life, which proves B to A...
    b.send(from(2, 2000, 3), None, Instant::now());
    let got = recv_one(&mut a2, &ma2);
    assert_eq!((got[0].echo_incarnation, got[0].echo_seq), (5, 1));
    // ...and A's next proves A to B.
    a2.send(from(1, 5, 2), None, Instant::now());
    assert_eq!(recv_one(&mut b, &mb).len(), 1, "echoes B's seq 3");
    assert!(!b.unproven_waiting());
    assert_eq!(b.stats.unproven, 2);
}

#[test]
fn a_recording_of_a_past_life_is_held_not_accepted() {
    let (a, mut b, _, mb) = introduced();
    // A heartbeat of another incarnation whose echo is not fresh: its
    // echo names B's seq 1 of long ago, or an incarnation of B's never
    // run, or nothing.
    let stale = Identity {
        fresh: Duration::ZERO,
        ..mb.clone()
    };
    for (seq, echo_inc, echo_seq) in [(40, 2000, 1), (41, 77, 1), (42, 0, 0)] {
        let rec = Heartbeat {
            echo_incarnation: echo_inc,
            echo_seq,
            ..from(1, 999, seq)
        };
        a.sock.send_to(&rec.encode(None), b.local).unwrap();
        assert!(recv_one(&mut b, &stale).is_empty());
    }
    assert_eq!(b.stats.unproven, 4);
    assert_eq!(b.stats.received, 1);
}

#[test]
fn a_peer_with_another_key_is_an_alarm() {
    let (a, mut b) = pair();
    let mut mb = me(2, 2000);
    mb.keys = vec![derive_key(b"the key B was given")];
    let other = derive_key(b"the key A was given");
    a.sock
        .send_to(&from(1, 1000, 1).encode(Some(&other)), b.local)
        .unwrap();
    assert!(recv_one(&mut b, &mb).is_empty());
    assert_eq!((b.stats.auth_failed, b.stats.rejected), (1, 1));
    let now = Instant::now();
    assert!(b.key_mismatch(now, Duration::from_secs(2)));
    assert!(!b.key_mismatch(now + Duration::from_secs(3), Duration::from_secs(2)));
}

#[test]
fn a_flood_is_read_a_budget_at_a_time() {
    let (a, mut b) = pair();
    let mb = me(2, 2000);
    for i in 0..RECV_BUDGET * 2 {
        a.sock.send_to(&[0u8; 10], b.local).unwrap();
        let _ = i;
    }
    thread::sleep(Duration::from_millis(20));
    let mut out = Vec::new();
    assert!(b.recv(&mb, Instant::now(), &mut out), "more may wait");
    assert_eq!(b.stats.rejected, RECV_BUDGET as u64);
    b.recv(&mb, Instant::now(), &mut out);
    assert!(!b.recv(&mb, Instant::now(), &mut out));
    assert_eq!(b.stats.rejected, 2 * RECV_BUDGET as u64);
}

#[test]
fn a_silent_path_goes_down_once() {
    let (_, b, _, _) = introduced();
    let mut b = b;
    let heard = b.last_heard().unwrap();
    let dead = Duration::from_millis(150);
    assert!(!b.check(heard + Duration::from_millis(100), dead));
    assert!(b.alive);
    assert!(b.check(heard + dead, dead));
    assert!(!b.alive);
    assert!(!b.check(heard + 2 * dead, dead));
    assert_eq!(b.stats.down_count, 1);
}

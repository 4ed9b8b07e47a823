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
        },
        group: 1,
        incarnation: 1000,
        seq,
        echo_seq: 0,
        echo_hold_us: 0,
        path: 0,
        sync: 2,
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
            },
            group, incarnation, seq, echo_seq, echo_hold_us, path, sync,
        };
        let key = derive_key(b"a shared secret of the pair");
        let key = keyed.then_some(&key);
        prop_assert_eq!(Heartbeat::decode(&h.encode(key), key), Ok(h));
    }

    #[test]
    fn garbage_is_refused_never_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = derive_key(b"k");
        let _ = Heartbeat::decode(&b, None);
        prop_assert!(Heartbeat::decode(&b, Some(&key)).is_err());
    }
}

#[test]
fn every_flipped_bit_of_a_tagged_heartbeat_is_refused() {
    let key = derive_key(b"a shared secret of the pair");
    let good = hb(1, 7).encode(Some(&key));
    for bit in 0..LEN * 8 {
        let mut b = good;
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(Heartbeat::decode(&b, Some(&key)).is_err(), "bit {bit}");
    }
}

#[test]
fn key_mismatches_and_bad_fields_are_refused() {
    let key = derive_key(b"one secret");
    let other = derive_key(b"another secret");
    let h = hb(1, 1);
    assert_eq!(
        Heartbeat::decode(&h.encode(Some(&key)), Some(&other)),
        Err(Reject::Auth)
    );
    assert_eq!(
        Heartbeat::decode(&h.encode(Some(&key)), None),
        Err(Reject::Auth)
    );
    assert_eq!(
        Heartbeat::decode(&h.encode(None), Some(&key)),
        Err(Reject::Auth)
    );
    let mut b = h.encode(None);
    b[4] = 2;
    assert_eq!(Heartbeat::decode(&b, None), Err(Reject::Version(2)));
    for (at, v) in [(5, 5), (6, 0x10), (45, 3), (50, 1), (15, 0)] {
        let mut b = h.encode(None);
        b[at] = v;
        if at == 15 {
            b[12..16].fill(0);
        }
        assert_eq!(
            Heartbeat::decode(&b, None),
            Err(Reject::Invalid),
            "byte {at}"
        );
    }
    assert_eq!(
        Heartbeat::decode(&h.encode(None)[..LEN - 1], None),
        Err(Reject::Malformed)
    );
}

fn pair() -> (Path, Path) {
    let lo = Ipv4Addr::LOCALHOST;
    let a = Path::bind("a", SocketAddr::from((lo, 0)), SocketAddr::from((lo, 1))).unwrap();
    let b = Path::bind("b", SocketAddr::from((lo, 0)), a.local).unwrap();
    let mut a = a;
    a.peer = b.local;
    (a, b)
}

fn recv_one(p: &mut Path, own_id: u32) -> Vec<Heartbeat> {
    let mut out = Vec::new();
    for _ in 0..100 {
        p.recv(None, 1, own_id, Instant::now(), &mut out);
        if !out.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    out
}

#[test]
fn a_path_measures_round_trips_and_counts_misses_and_replays() {
    let (mut a, mut b) = pair();
    a.send(hb(1, 1), None, Instant::now());
    let got = recv_one(&mut b, 2);
    assert_eq!(got.len(), 1);
    assert!(b.alive);
    thread::sleep(Duration::from_millis(3));
    // B answers, echoing seq 1 and how long it held it.
    b.send(hb(2, 1), None, Instant::now());
    let got = recv_one(&mut a, 1);
    assert_eq!(got[0].echo_seq, 1);
    assert!(got[0].echo_hold_us >= 3000, "{}", got[0].echo_hold_us);
    assert_eq!(a.stats.acked, 1);
    assert!(
        a.stats.rtt_us < 3000,
        "hold time excluded: {}",
        a.stats.rtt_us
    );
    assert_eq!(a.stats.worst_us, a.stats.rtt_us);

    // Seqs 2..4 lost: B counts 3 missed when 5 arrives.
    a.send(hb(1, 5), None, Instant::now());
    recv_one(&mut b, 2);
    assert_eq!(b.stats.missed, 3);
    // A replay (or reordering) of an older one is refused.
    a.send(hb(1, 4), None, Instant::now());
    assert!(recv_one(&mut b, 2).is_empty());
    assert_eq!(b.stats.rejected, 1);
    // A restarted peer (higher incarnation) starts again at seq 1.
    let mut restarted = hb(1, 1);
    restarted.incarnation += 1;
    a.send(restarted, None, Instant::now());
    assert_eq!(recv_one(&mut b, 2).len(), 1);
    assert_eq!(b.stats.missed, 3);
    // A heartbeat bearing this node's own id (a looped-back or misconfigured
    // peer) and another group are refused.
    a.send(hb(2, 9), None, Instant::now());
    let mut other = hb(1, 10);
    other.group = 9;
    a.send(other, None, Instant::now());
    assert!(recv_one(&mut b, 2).is_empty());
    assert_eq!(b.stats.rejected, 3);
    assert_eq!(b.stats.received, 3);
    assert_eq!(a.stats.sent, 6);
}

#[test]
fn a_silent_path_goes_down_once() {
    let (mut a, mut b) = pair();
    a.send(hb(1, 1), None, Instant::now());
    recv_one(&mut b, 2);
    let heard = b.last_heard().unwrap();
    let dead = Duration::from_millis(150);
    assert!(!b.check(heard + Duration::from_millis(100), dead));
    assert!(b.alive);
    assert!(b.check(heard + dead, dead));
    assert!(!b.alive);
    assert!(!b.check(heard + 2 * dead, dead));
    assert_eq!(b.stats.down_count, 1);
}

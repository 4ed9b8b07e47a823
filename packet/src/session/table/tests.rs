use proptest::prelude::*;

use super::*;
use crate::session::{Origin, tcp::TcpState};

fn sess(i: u16, nat: Option<([u8; 4], u16)>, now: u32) -> Session {
    let mut s = Session::new(
        FlowKey::v4([10, 0, 0, 1], [10, 0, 1, 1], 1000 + i, 53, 17),
        u64::from(i),
        Origin::Inside,
        0,
        now,
    );
    if let Some((a, p)) = nat {
        s.set_nat(a, p);
    }
    s
}

fn timeouts() -> Timeouts {
    Timeouts {
        udp: 30,
        ..Timeouts::default()
    }
}

/// The prefetch hits what a lookup reads: if a hashbrown update moves
/// its entries or probe start, this fails and `probe_start` must follow.
#[test]
fn prefetch_covers_the_entries_lookups_read() {
    let n = 2000;
    let mut t = Table::new(n, timeouts(), 0);
    for i in 0..n as u16 {
        t.insert(sess(i, Some(([198, 18, 2, 100], 2000 + i)), 0))
            .unwrap();
    }
    let (base, size) = t.index.allocator().block.get();
    assert!(base != 0 && size >= t.index.allocation_size());
    let (mut covered, mut keys) = (0, 0);
    for i in 0..n as u16 {
        let s = sess(i, Some(([198, 18, 2, 100], 2000 + i)), 0);
        for k in [s.key, s.reply_key()] {
            let h = k.table_hash();
            let slots = &t.slots;
            let found = t.index.find(h, |&e| key_of(slots, e) == k).unwrap();
            let at = std::ptr::from_ref(found) as usize;
            let (_, first) =
                probe_start(base, size, h, size_of::<u32>()).expect("hashbrown's shape");
            keys += 1;
            // The group's entries: the first and the 15 below it.
            if (first - (GROUP - 1) * size_of::<u32>()..=first).contains(&at) {
                covered += 1;
            }
        }
    }
    // At this load nearly every key sits in its first group.
    assert!(covered * 100 >= keys * 95, "{covered} of {keys} covered");
}

#[test]
fn both_directions_find_one_slot() {
    let mut t = Table::new(8, timeouts(), 0);
    let s = sess(1, Some(([198, 18, 2, 100], 2000)), 0);
    let slot = t.insert(s).unwrap();
    assert_eq!(t.lookup(&s.key), Some((slot, Side::Initiator)));
    let reply = FlowKey::v4([10, 0, 1, 1], [198, 18, 2, 100], 53, 2000, 17);
    assert_eq!(s.reply_key(), reply);
    assert_eq!(t.lookup(&reply), Some((slot, Side::Responder)));
    // The pre-NAT reverse key is not a key of this session.
    assert_eq!(t.lookup(&s.key.reversed()), None);
    t.remove(slot);
    assert_eq!(t.lookup(&s.key), None);
    assert_eq!(t.lookup(&reply), None);
    assert!(t.is_empty());
}

#[test]
fn full_table_refuses_and_never_grows() {
    let mut t = Table::new(64, timeouts(), 0);
    let cap = t.index_capacity();
    for round in 0..50u16 {
        let mut slots = Vec::new();
        for i in 0..64u16 {
            slots.push(t.insert(sess(round * 64 + i, None, 0)).unwrap());
        }
        assert_eq!(t.insert(sess(9999, None, 0)), Err(TableFull));
        for s in slots {
            t.remove(s);
        }
    }
    assert_eq!(t.index_capacity(), cap);
}

#[test]
fn memory_per_session_is_as_documented() {
    // docs/architecture.md, bench/README.md and the example config
    // state ~156 bytes per session of capacity; keep them honest.
    for cap in [65_536, 1 << 20] {
        let t = Table::new(cap, timeouts(), 0);
        let per = t.memory_bytes() / cap;
        assert!((150..=160).contains(&per), "{cap}: {per} bytes per session");
    }
}

#[test]
fn idle_sessions_expire_and_busy_ones_stay() {
    let mut t = Table::new(8, timeouts(), 100);
    let a = t.insert(sess(1, None, 100)).unwrap();
    let b = t.insert(sess(2, None, 100)).unwrap();
    t.advance(120, |a, _| {
        assert_eq!(a, Aged::Extended, "nothing is due yet");
    });
    t.get_mut(b).last_seen = 120;
    let mut gone = Vec::new();
    t.advance(131, |a, s| {
        if a == Aged::Expired {
            gone.push(s.id);
        }
    });
    assert_eq!(gone, [1]);
    assert!(!t.get(a).is_live());
    assert_eq!(t.len(), 1);
    t.advance(151, |a, s| {
        if a == Aged::Expired {
            gone.push(s.id);
        }
    });
    assert_eq!(gone, [1, 2]);
    assert!(t.is_empty());
}

/// Aging in bounded steps: each step ages at most its budget; removing
/// or rescheduling a session of the list being walked (its head among
/// them) loses nothing.
#[test]
fn aging_in_steps_keeps_the_walked_list_whole() {
    let mut t = Table::new(16, timeouts(), 0);
    let slots: Vec<u32> = (0..10)
        .map(|i| t.insert(sess(i, None, 0)).unwrap())
        .collect();
    let mut expired = Vec::new();
    let mut step = |t: &mut Table, now, budget| {
        let mut n = 0;
        let done = t.advance_with(
            now,
            budget,
            |_| {},
            |a, s| {
                assert_eq!(a, Aged::Expired);
                expired.push(s.id);
                n += 1;
            },
        );
        (n, done)
    };
    assert_eq!(step(&mut t, 29, 3), (0, true), "nothing due before 30");
    assert_eq!(step(&mut t, 30, 3), (3, false));
    // The list is walked newest first: the next one due is slot 6.
    t.remove(slots[6]);
    t.remove(slots[2]);
    // A session seen again moves on; one rescheduled to the tick being
    // walked (its list is off the wheel) goes to the next tick.
    t.get_mut(slots[5]).last_seen = 25;
    t.reschedule(slots[5]);
    t.reschedule(slots[4]);
    assert_eq!(step(&mut t, 30, 2), (2, false));
    assert_eq!(step(&mut t, 30, 100), (1, true));
    assert_eq!(t.len(), 2, "slot 5 (due at 55) and slot 4 (due at 30)");
    assert_eq!(step(&mut t, 31, 100), (1, true), "slot 4 at tick 31");
    assert_eq!(step(&mut t, 54, 100), (0, true));
    assert_eq!(step(&mut t, 55, 100), (1, true), "slot 5");
    assert!(t.is_empty());
    expired.sort_unstable();
    assert_eq!(expired, vec![0, 1, 3, 4, 5, 7, 8, 9]);
}

#[test]
fn long_timeouts_survive_wheel_wraps() {
    let mut t = Table::new(
        4,
        Timeouts {
            tcp_established: 10_000,
            ..Timeouts::default()
        },
        0,
    );
    let mut s = sess(1, None, 0);
    s.key.proto = 6;
    s.state = TcpState::Established as u8;
    t.insert(s).unwrap();
    let mut n = 0;
    for now in (0..10_000).step_by(500) {
        t.advance(now, |a, _| n += usize::from(a == Aged::Expired));
    }
    assert_eq!(n, 0);
    t.advance(10_001, |a, _| n += usize::from(a == Aged::Expired));
    assert_eq!(n, 1);
}

proptest! {
    /// Random inserts, removals and clock steps: every live session is
    /// found by both keys, removed ones by neither, len is exact and
    /// nothing expires early.
    #[test]
    fn table_invariants(ops in proptest::collection::vec((0u8..3, 0u16..40, 0u32..20), 1..300)) {
        let mut t = Table::new(16, timeouts(), 0);
        let mut now = 0u32;
        let mut live = std::collections::HashMap::<u16, u32>::new();
        for (op, id, dt) in ops {
            match op {
                0 => {
                    let s = sess(id, Some(([198, 18, 2, 100], 3000 + id)), now);
                    if live.contains_key(&id) {
                        prop_assert!(!t.keys_free(&s));
                    } else if live.len() == 16 {
                        prop_assert_eq!(t.insert(s), Err(TableFull));
                    } else {
                        live.insert(id, t.insert(s).unwrap());
                    }
                }
                1 => {
                    if let Some(slot) = live.remove(&id) {
                        t.remove(slot);
                    }
                }
                _ => {
                    // Small budgets: walks stop midway, and inserts and
                    // removals land between their steps.
                    now += dt;
                    let mut gone = Vec::new();
                    let budget = 1 + usize::from(id % 8);
                    let _ = t.advance_with(now, budget, |_| {}, |a, s| {
                        if a == Aged::Expired {
                            gone.push((s.id as u16, s.last_seen));
                        }
                    });
                    for (id, seen) in gone {
                        prop_assert!(seen + 30 <= now);
                        live.remove(&id);
                    }
                }
            }
            prop_assert_eq!(t.len(), live.len());
            for (&id, &slot) in &live {
                let s = *t.get(slot);
                prop_assert_eq!(s.id, u64::from(id));
                prop_assert_eq!(t.lookup(&s.key), Some((slot, Side::Initiator)));
                prop_assert_eq!(t.lookup(&s.reply_key()), Some((slot, Side::Responder)));
            }
        }
        // Nothing was lost from the wheel: every live session expires.
        let mut gone = std::collections::HashSet::new();
        t.advance(now + 31, |a, s| {
            assert_eq!(a, Aged::Expired);
            gone.insert(s.id as u16);
        });
        prop_assert_eq!(gone, live.keys().copied().collect());
        prop_assert_eq!(t.len(), 0);
    }
}

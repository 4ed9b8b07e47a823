//! Session table micro-benches, each beside a baseline measured in the same
//! run: a plain `hashbrown::HashMap<FlowKey, u32>` doing the same lookups
//! or the same insert/remove churn (`session/raw_hashbrown_*`). The table
//! does more per operation (two keys per session, the reply key rebuilt
//! from the slab, wheel links), so the ratio is its overhead.
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tandem_control::config::Timeouts;
use tandem_dataplane::session::{FlowKey, Origin, Session, Table};

const N: usize = 1 << 20;
const HALF: usize = N / 2;
/// Frames per rx batch in the batched lookup benches.
const BATCH: usize = 32;

fn key(i: usize) -> FlowKey {
    let i = i as u32;
    FlowKey::v4(
        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        [198, 18, 2, 10],
        (i % 50_000) as u16 + 1024,
        443,
        6,
    )
}

/// A pseudo-random visiting order, so lookups miss the cache like traffic.
fn order(n: usize) -> Vec<usize> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

fn session(i: usize) -> Session {
    let mut s = Session::new(key(i), i as u64, Origin::Inside, 0, 0);
    s.set_nat([198, 18, 2, 100], (i % 60_000) as u16 + 1024);
    s
}

fn benches(c: &mut Criterion) {
    let idx = order(N);
    let mut raw: hashbrown::HashMap<FlowKey, u32> = hashbrown::HashMap::with_capacity(N);
    for i in 0..N {
        raw.insert(key(i), i as u32);
    }
    let mut it = idx.iter().cycle();
    c.bench_function("session/raw_hashbrown_hit_1m", |b| {
        b.iter(|| black_box(raw.get(&key(*it.next().unwrap()))));
    });
    drop(raw);

    let mut t = Table::new(N, Timeouts::default(), 0);
    let mut replies = Vec::with_capacity(N);
    for i in 0..N {
        let s = session(i);
        replies.push(s.reply_key());
        t.insert(s).unwrap();
    }
    let mut it = idx.iter().cycle();
    c.bench_function("session/lookup_hit_1m", |b| {
        b.iter(|| black_box(t.lookup(&key(*it.next().unwrap()))));
    });
    let mut it = idx.iter().cycle();
    c.bench_function("session/lookup_reply_hit_1m", |b| {
        b.iter(|| black_box(t.lookup(&replies[*it.next().unwrap()])));
    });
    // A worker's rx batch: 32 lookups one after the other, against the
    // same 32 with every index entry prefetched first (what the worker
    // does per batch). The keys are built outside the timed part.
    let batches: Vec<[FlowKey; BATCH]> = idx
        .chunks_exact(BATCH)
        .take(4096)
        .map(|c| std::array::from_fn(|j| key(c[j])))
        .collect();
    let mut it = batches.iter().cycle();
    c.bench_function("session/lookup_hit_1m_batch32", |b| {
        b.iter(|| {
            for k in it.next().unwrap() {
                black_box(t.lookup(k));
            }
        });
    });
    let mut it = batches.iter().cycle();
    c.bench_function("session/lookup_hit_1m_batch32_prefetched", |b| {
        b.iter(|| {
            let keys = it.next().unwrap();
            for k in keys {
                t.prefetch(k.table_hash());
            }
            for k in keys {
                black_box(t.lookup(k));
            }
        });
    });
    drop(t);

    // Churn at half occupancy: insert one session, remove the oldest.
    let mut raw: hashbrown::HashMap<FlowKey, u32> = hashbrown::HashMap::with_capacity(N);
    for i in 0..HALF {
        raw.insert(key(i), i as u32);
    }
    let mut next = HALF;
    c.bench_function("session/raw_hashbrown_insert_remove", |b| {
        b.iter(|| {
            raw.insert(key(next % N), next as u32);
            raw.remove(&key((next - HALF) % N));
            next += 1;
        });
    });
    drop(raw);

    let mut t = Table::new(N, Timeouts::default(), 0);
    let mut slots = std::collections::VecDeque::with_capacity(N);
    for i in 0..HALF {
        slots.push_back(t.insert(session(i)).unwrap());
    }
    let mut next = HALF;
    c.bench_function("session/insert_expire", |b| {
        b.iter_batched(
            || (),
            |()| {
                slots.push_back(t.insert(session(next % N)).unwrap());
                let old = slots.pop_front().unwrap();
                black_box(t.remove(old));
                next += 1;
            },
            BatchSize::SmallInput,
        );
    });
}

criterion_group! {
    name = session_benches;
    config = Criterion::default().sample_size(30);
    targets = benches
}
criterion_main!(session_benches);

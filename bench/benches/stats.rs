//! Cost of reading an instance's stats segment the way tandemstat does,
//! beside a baseline measured in the same run: `stats/copy_values` (copying
//! the same number of u64 values from plain memory).
use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_control::stats::{Kind, NodeState, Schema, SegmentReader, SegmentWriter};
use tandem_dataplane::counters;

fn benches(c: &mut Criterion) {
    // The layout tandemd builds for 2 workers, 2 CPUs and 4 sockets.
    let ifnames = vec!["in0".to_owned(), "out0".to_owned()];
    let mut schema = Schema::new();
    for w in 0..2 {
        counters::register(&mut schema, w, 2, &ifnames).unwrap();
    }
    for cpu in 0..2 {
        for v in 0..9 {
            schema
                .push(
                    "tandem_xdp_verdicts_total",
                    &format!("cpu={cpu},verdict=v{v}"),
                    Kind::Counter,
                )
                .unwrap();
        }
    }
    for q in 0..4 {
        for st in 0..6 {
            schema
                .push(
                    &format!("tandem_xsk_s{st}_total"),
                    &format!("iface=in0,queue={q}"),
                    Kind::Counter,
                )
                .unwrap();
        }
    }
    let path = std::env::temp_dir().join(format!("tandem-bench-{}.stats", std::process::id()));
    let writer = Arc::new(SegmentWriter::create(&path, &schema, 1, 2, 0).unwrap());
    writer.write_state(&NodeState::default().encode());
    let n = schema.entries().len();
    let r = SegmentReader::open(&path).unwrap();
    let plain = vec![7u64; r.values().len()];
    c.bench_function("stats/copy_values", |b| {
        b.iter(|| black_box(black_box(&plain).clone()));
    });
    c.bench_function("stats/snapshot_values", |b| {
        b.iter(|| black_box(r.values()));
    });
    c.bench_function("stats/snapshot_full", |b| {
        b.iter(|| {
            black_box((r.values(), r.baselines(), r.heartbeat_ns(), r.read_state()));
        });
    });
    c.bench_function("stats/open_and_validate", |b| {
        b.iter(|| black_box(SegmentReader::open(&path).unwrap().entries.len()));
    });
    eprintln!("segment: {n} entries, {} value slots", r.values().len());
    std::fs::remove_file(&path).unwrap();
}

criterion_group!(stats_benches, benches);
criterion_main!(stats_benches);

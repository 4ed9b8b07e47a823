//! The stats-segment reader on an arbitrary file: every input is a
//! segment or an error (another version's, a truncated or a crafted one),
//! never a panic or a read outside the mapping; a segment it accepts can
//! be read whole, as tandemstat reads it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use memmap2::MmapMut;
use tandem_control::stats::{self, NodeState, SegmentReader};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // An anonymous mapping, page-aligned as a file's is.
    let Ok(mut map) = MmapMut::map_anon(data.len()) else {
        return;
    };
    map.copy_from_slice(data);
    let Ok(map) = map.make_read_only() else {
        return;
    };
    let Ok(r) = SegmentReader::from_map(map, Path::new("fuzz.stats")) else {
        return;
    };
    let values = r.values();
    assert_eq!(values.len(), r.baselines().len());
    for e in &r.entries {
        assert!((e.slot as usize) < values.len());
        let _ = r.value(e.slot);
        let _ = e.label("worker");
    }
    let _ = r.heartbeat_ns();
    let _ = r.cleared_ns();
    if let Some(words) = r.read_state() {
        let _ = NodeState::decode(&words);
    }
    let _ = stats::flat_totals(&r);
});

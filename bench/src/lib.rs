//! tandem's benchmarks: criterion micro-benches (`benches/`) and the
//! packet-rate harness (`src/bin/pktrate.rs`).

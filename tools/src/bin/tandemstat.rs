//! tandemstat: read-only counter readout. The shared-memory stats segment it
//! reads is the next piece of work (see docs/architecture.md); until it
//! exists this binary says so and exits 2 rather than print anything.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "tandemstat: the stats segment is not implemented yet; tandemd logs its final counters on exit"
    );
    ExitCode::from(2)
}

//! The packet-rate harness's XDP programs ([`program`] holds them), built
//! like the steering program: for `bpfel-unknown-none` by the data plane's
//! build script, and as an empty binary on the host.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd is how Rust emits BPF's atomic add (core's atomics need CAS, which the target lacks)"
    )
)]

#[cfg(target_arch = "bpf")]
#[path = "../bench_program.rs"]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

//! tandem's XDP steering program ([`program`] holds it). Built for
//! `bpfel-unknown-none` by the data plane's build script; on the host the
//! crate is an empty binary, as aya's template has it, so that `cargo build
//! --workspace` and `cargo clippy --workspace` work anywhere.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd is how Rust emits BPF's atomic add (core's atomics need CAS, which the target lacks)"
    )
)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

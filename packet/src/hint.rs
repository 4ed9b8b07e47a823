//! Hints to the CPU: they change no state and never fault.
#![expect(
    unsafe_code,
    reason = "a prefetch is an intrinsic: it reads nothing and cannot fault"
)]

/// Starts loading the cache line holding `p` into all cache levels. `p`
/// may point anywhere, mapped or not: a prefetch does not fault.
#[inline]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and cannot fault;
    // SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

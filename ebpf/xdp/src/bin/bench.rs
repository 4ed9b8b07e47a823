//! The sink of the packet-rate harness (bench/), not for production:
//! `tandem_sink` counts the harness's UDP frames at the receiving end and
//! drops them, so the rate is measured where traffic arrives.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "bounds checks must be inlined into their callers for the verifier to see them"
)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Index 0: frames counted by the sink.
#[map(name = "TND_SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Ethernet + IPv4 (no options) + UDP.
const UDP_END: usize = 14 + 20 + 8;
/// The harness's destination port (discard).
const DPORT: u16 = 9;

#[inline(always)]
fn frame(ctx: &XdpContext) -> Option<*mut [u8; UDP_END]> {
    let start = ctx.data();
    if start + UDP_END > ctx.data_end() {
        return None;
    }
    Some(start as *mut [u8; UDP_END])
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] entry signature")]
pub fn tandem_sink(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `frame` checked the header bytes.
    let h = unsafe { &*f };
    let ipv4_udp = h[12] == 0x08 && h[13] == 0x00 && h[23] == 17;
    if !ipv4_udp || u16::from_be_bytes([h[36], h[37]]) != DPORT {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

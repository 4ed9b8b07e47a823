//! The programs of the packet-rate harness (bench/), not for production:
//! - `tandem_sink` counts the harness's UDP frames at the receiving end and
//!   drops them, so the rate is measured where traffic arrives; switched to
//!   reflect, it answers them instead (to establish the flows), and it
//!   drops the answers where they come back;
//! - `tandem_gen` is the generator: run with `BPF_PROG_RUN` in live-frames
//!   mode, it stamps each copy of the template with its flow's UDP source
//!   port and sends it out of the ingress device (`XDP_TX`);
//! - `tandem_redirect` is the ceiling of the XDP path: it rewrites the MACs
//!   and redirects every IPv4 frame through a devmap, nothing else;
//! - `tandem_redirect_line` is that ceiling plus the least a fast path with
//!   per-flow state must do: hash the frame's addresses and ports the way
//!   tandem's flow table does, read the flow's 64-byte line in a table of
//!   tandem's default size, and count the packet into it atomically.
#![expect(
    unsafe_code,
    reason = "an XDP program reads and writes the frame and map memory through pointers the verifier checks"
)]
#![expect(
    clippy::inline_always,
    reason = "bounds checks must be inlined into their callers for the verifier to see them"
)]

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use tandem_common::{FLOW_PACKETS_WORD, FlowSlot, flow_hash};

/// Index 0: frames counted by the sink.
#[map(name = "TND_SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: non-zero makes the sink answer each frame (to its source)
/// instead of counting it, so that the flows count as established before a
/// measurement.
#[map(name = "TND_SINK_REFLECT")]
static SINK_REFLECT: Array<u32> = Array::with_max_entries(1, 0);

/// Index 0: how many flows the generator spreads its frames over (UDP
/// source ports from `GEN_PORT_BASE`, `flows` per CPU).
#[map(name = "TND_GEN_FLOWS")]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

/// Index 0: the frame's headers (Ethernet, IPv4, UDP), written into every
/// frame before it is sent: live-frames pages come back to the generator
/// as the device under test left them (MACs, TTL, NAT rewritten), and
/// only the first use of a page copies `data_in`.
#[map(name = "TND_GEN_HEADERS")]
static GEN_HEADERS: Array<[u8; UDP_END]> = Array::with_max_entries(1, 0);

/// Index 0: this CPU's position in its flows.
#[map(name = "TND_GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: the device `tandem_redirect` sends every frame to.
#[map(name = "TND_REDIRECT_PORT")]
static REDIRECT_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// Index 0: destination then source MAC for redirected frames.
#[map(name = "TND_REDIRECT_MACS")]
static REDIRECT_MACS: Array<[u8; 12]> = Array::with_max_entries(1, 0);

/// `BPF_F_MMAPABLE`: slots start page-aligned, one line each, as in
/// tandem's flow table.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The lines `tandem_redirect_line` reads: as many as tandem's flow table
/// has for 2 workers at the default session capacity (32 MiB).
const LINES: u32 = 1 << 19;

/// `tandem_redirect_line`'s table.
#[map(name = "TND_REDIRECT_LINES")]
static REDIRECT_LINES: Array<FlowSlot> = Array::with_max_entries(LINES, BPF_F_MMAPABLE);

/// The generator's first UDP source port.
const GEN_PORT_BASE: u32 = 10000;

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
    // SAFETY: `frame` checked the header bytes; XDP frames are writable.
    let h = unsafe { &mut *f };
    let ipv4_udp = h[12] == 0x08 && h[13] == 0x00 && h[23] == 17;
    if !ipv4_udp {
        return xdp_action::XDP_PASS;
    }
    // A reply the sink sent (back at the generator): dropped uncounted.
    if u16::from_be_bytes([h[34], h[35]]) == DPORT {
        return xdp_action::XDP_DROP;
    }
    if u16::from_be_bytes([h[36], h[37]]) != DPORT {
        return xdp_action::XDP_PASS;
    }
    if SINK_REFLECT.get(0).copied().unwrap_or(0) != 0 {
        // Answer: swap MACs, addresses and ports. Neither checksum changes
        // (the IPv4 sum is order-free; the UDP checksum is 0).
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&h[..6]);
        h.copy_within(6..12, 0);
        h[6..12].copy_from_slice(&mac);
        let mut addr = [0u8; 4];
        addr.copy_from_slice(&h[26..30]);
        h.copy_within(30..34, 26);
        h[30..34].copy_from_slice(&addr);
        let mut port = [0u8; 2];
        port.copy_from_slice(&h[34..36]);
        h.copy_within(36..38, 34);
        h[36..38].copy_from_slice(&port);
        return xdp_action::XDP_TX;
    }
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] entry signature")]
pub fn tandem_gen(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(headers) = GEN_HEADERS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let flows = GEN_FLOWS.get(0).copied().unwrap_or(1).max(1);
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot owned by this CPU while the program runs.
    let n = unsafe { *seq } % flows;
    // SAFETY: as above.
    unsafe { *seq = n + 1 };
    // Each CPU (generator thread) its own flows, as RSS would keep a flow
    // on one queue.
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ports stay below 65536 for the flow counts run"
    )]
    let port = (GEN_PORT_BASE + cpu * flows + n) as u16;
    // SAFETY: `frame` checked the header bytes; live frames are writable.
    // The UDP checksum is 0 (none), so the port needs no checksum update.
    let h = unsafe { &mut *f };
    h.copy_from_slice(headers);
    h[34..36].copy_from_slice(&port.to_be_bytes());
    xdp_action::XDP_TX
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] entry signature")]
pub fn tandem_redirect(ctx: XdpContext) -> u32 {
    redirect::<false>(&ctx)
}

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] entry signature")]
pub fn tandem_redirect_line(ctx: XdpContext) -> u32 {
    redirect::<true>(&ctx)
}

/// Rewrites the MACs of an IPv4 frame and redirects it to the port;
/// with `LINE`, first reads the frame's flow line and counts it there.
#[inline(always)]
fn redirect<const LINE: bool>(ctx: &XdpContext) -> u32 {
    let Some(f) = frame(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `frame` checked the header bytes.
    let h = unsafe { &mut *f };
    if h[12] != 0x08 || h[13] != 0x00 {
        return xdp_action::XDP_PASS;
    }
    if LINE {
        // The flow table's key words (addresses; ports and protocol).
        let w1 = u64::from_le_bytes([h[26], h[27], h[28], h[29], h[30], h[31], h[32], h[33]]);
        let w2 = u64::from_le_bytes([h[34], h[35], h[36], h[37], h[23], 0, 0, 0]);
        let Some(line) = REDIRECT_LINES.get_ptr_mut(flow_hash(w1, w2, 0x5eed) & (LINES - 1)) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: an element of the array; read volatile so that the load
        // stays, and counted atomically, as the fast path counts.
        unsafe {
            let words = line.cast::<u64>();
            if core::ptr::read_volatile(words.add(1)) == w1 {
                return xdp_action::XDP_PASS;
            }
            core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                words.add(FLOW_PACKETS_WORD),
                1,
            );
        }
    }
    let Some(macs) = REDIRECT_MACS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    h[..12].copy_from_slice(macs);
    REDIRECT_PORT
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! tandem's XDP steering program.
//!
//! Design: parse just enough of each frame to decide who handles it. Anything
//! the kernel must see (non-IP, link-local control, traffic to the node's own
//! addresses) is passed; everything else is service traffic and goes to the
//! AF_XDP socket bound to the receiving queue, or is dropped and counted when
//! this node may not forward. Frames whose headers cannot be read (too short,
//! wrong IP version, header length under the minimum) close: they are dropped
//! and counted, never passed to a worker or the kernel. Consistency of the
//! length fields and the IPv4 checksum is the worker's to check and count;
//! the fast path, which forwards without the worker, checks them as the
//! worker does and leaves a datagram that fails to it (one rule for both:
//! such a datagram is dropped and counted, never forwarded), and forwards
//! the datagram alone, without the frame's link padding, as the worker
//! does.
//!
//! While the node forwards, the program also answers ARP requests for the
//! NAT pool addresses. The kernel must not own those addresses: when tandemd
//! dies, the kernel would answer the flows' in-flight segments with resets.
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
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use tandem_common::{
    ArpAnswer, DEFAULT_FLOWS, DEFAULT_FLOWS6, FLOW_BYTES_WORD, FLOW_KEY2_MASK, FLOW_LAST_SEEN_OFF,
    FLOW_NAT_DESTINATION, FLOW_NAT_SOURCE, FLOW_PACKETS_WORD, FLOW_PROBE_OFF, FLOW_SEQ_OFF,
    FLOW_WAYS, FlowEntry, FlowEntry6, FlowSlot, FlowV6Key, IfaceSlot, LocalV4Key, LocalV6Key,
    MAX_ARP_ADDRS, MAX_IFACES, MAX_LOCAL_ADDRS, MAX_QUEUES, NodeRole, XdpCounter, flow_entry,
    flow_hash, xsk_index,
};

#[map(name = "TND_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpCounter::COUNT, 0);
#[map(name = "TND_ROLE")]
static ROLE: Array<NodeRole> = Array::with_max_entries(1, 0);
#[map(name = "TND_IFACES")]
static IFACES: HashMap<u32, IfaceSlot> = HashMap::with_max_entries(MAX_IFACES, 0);
#[map(name = "TND_XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_IFACES * MAX_QUEUES, 0);
#[map(name = "TND_LOCAL_V4")]
static LOCAL_V4: HashMap<LocalV4Key, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map(name = "TND_LOCAL_V6")]
static LOCAL_V6: HashMap<LocalV6Key, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
/// `BPF_F_MMAPABLE`: the workers write and read the slots in place.
const BPF_F_MMAPABLE: u32 = 1 << 10;
#[map(name = "TND_FLOWS")]
static FLOWS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_FLOWS, BPF_F_MMAPABLE);
#[map(name = "TND_TX_PORTS")]
static TX_PORTS: DevMap = DevMap::with_max_entries(MAX_IFACES, 0);
#[map(name = "TND_FLOWS6")]
static FLOWS6: HashMap<FlowV6Key, FlowEntry6> =
    HashMap::with_max_entries(DEFAULT_FLOWS6, BPF_F_NO_PREALLOC);
#[map(name = "TND_ARP_V4")]
static ARP_V4: HashMap<LocalV4Key, ArpAnswer> = HashMap::with_max_entries(MAX_ARP_ADDRS, 0);
/// Written by the workers in place (see `FLOW_TICK_SHIFT`).
#[map(name = "TND_CLOCK")]
static CLOCK: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// What to do with a frame, and which counter says so.
struct Verdict {
    action: u32,
    counter: XdpCounter,
}

const fn verdict(action: u32, counter: XdpCounter) -> Verdict {
    Verdict { action, counter }
}

const PARSE_ERROR: Verdict = verdict(xdp_action::XDP_DROP, XdpCounter::DropParseError);

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] entry signature")]
pub fn tandem_xdp(ctx: XdpContext) -> u32 {
    count(XdpCounter::RxFrames);
    let v = match classify(&ctx) {
        Ok(v) | Err(v) => v,
    };
    count(v.counter);
    v.action
}

#[inline(always)]
fn count(c: XdpCounter) {
    add(c, 1);
}

#[inline(always)]
fn add(c: XdpCounter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: the per-CPU slot belongs to this CPU for the duration of the
        // program; no other writer can run concurrently on it.
        unsafe { *p += n };
    }
}

/// A bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, Verdict> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(PARSE_ERROR);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
fn load_u8(ctx: &XdpContext, off: usize) -> Result<u8, Verdict> {
    // SAFETY: ptr_at checked that the byte lies inside the frame.
    Ok(unsafe { *ptr_at::<u8>(ctx, off)? })
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, off: usize) -> Result<u16, Verdict> {
    // SAFETY: ptr_at checked both bytes lie inside the frame; unaligned read.
    let raw = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 2]>(ctx, off)?) };
    Ok(u16::from_be_bytes(raw))
}

fn classify(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = load_be16(ctx, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = load_be16(ctx, 16)?;
        l3 += 4;
    }
    let role = ROLE.get(0).copied().unwrap_or_default();
    let forward = role.forward != 0;
    // Offloaded sessions first: they are service traffic by construction
    // (never to a local, multicast or broadcast address), so a hit skips
    // the local-address lookup, and the interface lookup too (the
    // program is attached to tandem's interfaces only, and the table holds
    // nothing before they are registered). A punt goes the worker's way
    // below.
    if forward && ethertype == ETH_P_IP && l3 == ETH_HLEN {
        match fast_path(ctx, &role) {
            Fast::Miss => {}
            Fast::Punt(c) => count(c),
            Fast::Done(v) => return Ok(v),
        }
    }
    if forward && ethertype == ETH_P_IPV6 && l3 == ETH_HLEN {
        match fast_path6(ctx) {
            Fast::Miss => {}
            Fast::Punt(c) => count(c),
            Fast::Done(v) => return Ok(v),
        }
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: plain-data value read from a map the program owns.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }).copied() else {
        return Ok(verdict(xdp_action::XDP_PASS, XdpCounter::PassUnknownIface));
    };
    let service = match ethertype {
        ETH_P_IP => ipv4(ctx, l3)?,
        ETH_P_IPV6 => ipv6(ctx, l3)?,
        // Untagged only: the kernel answered the pool on the interface
        // itself, not on VLANs over it.
        ETH_P_ARP if forward && l3 == ETH_HLEN => return Ok(arp(ctx, ifindex, iface.slot)),
        _ => return Ok(verdict(xdp_action::XDP_PASS, XdpCounter::PassNonIp)),
    };
    if let Some(v) = service {
        return Ok(v);
    }
    if !forward {
        return Ok(verdict(xdp_action::XDP_DROP, XdpCounter::DropNotMaster));
    }
    let queue = ctx.rx_queue_index();
    if queue >= iface.queues || queue >= MAX_QUEUES || iface.slot >= MAX_IFACES {
        return Ok(verdict(xdp_action::XDP_DROP, XdpCounter::DropNoSocket));
    }
    match XSKS.redirect(xsk_index(iface.slot, queue), 0) {
        Ok(action) => Ok(verdict(action, XdpCounter::Redirected)),
        Err(_) => Ok(verdict(xdp_action::XDP_DROP, XdpCounter::DropNoSocket)),
    }
}

/// Answers an untagged ARP request for a NAT pool address that arrives on
/// the pool's interface, broadcast or addressed to the interface: the frame
/// becomes the reply in place and goes back out of that interface. Address
/// probes (sender 0.0.0.0) are answered, as the kernel answers them for its
/// own addresses (RFC 5227). Everything else ARP is the kernel's,
/// gratuitous requests included.
///
/// The reply leaves through the devmap, not XDP_TX: a veth sends XDP_TX
/// frames to its peer's ring but wakes the peer only if the peer has an XDP
/// program, so without one the reply would wait there for the next frame.
fn arp(ctx: &XdpContext, ifindex: u32, slot: u32) -> Verdict {
    const KERNEL: Verdict = verdict(xdp_action::XDP_PASS, XdpCounter::PassNonIp);
    let (Ok(eth), Ok(body)) = (
        ptr_at::<[u8; 12]>(ctx, 0),
        ptr_at::<[u8; 28]>(ctx, ETH_HLEN),
    ) else {
        return KERNEL;
    };
    // SAFETY: ptr_at checked that the 28-byte ARP body lies in the frame.
    let a = unsafe { core::ptr::read_unaligned(body) };
    // Ethernet and IPv4 addresses, a request.
    if a[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return KERNEL;
    }
    let sender = [a[14], a[15], a[16], a[17]];
    let target = [a[24], a[25], a[26], a[27]];
    if sender == target {
        return KERNEL;
    }
    let key = LocalV4Key {
        addr_be: u32::from_ne_bytes(target),
    };
    // SAFETY: plain-data value read from a map the program owns.
    let Some(answer) = (unsafe { ARP_V4.get(key) }).copied() else {
        return KERNEL;
    };
    // SAFETY: ptr_at checked the 12 address bytes lie in the frame.
    let e = unsafe { core::ptr::read_unaligned(eth) };
    let to_us = e[..6] == [0xff; 6] || e[..6] == answer.mac;
    if answer.ifindex != ifindex || !to_us {
        return KERNEL;
    }
    let Ok(action) = TX_PORTS.redirect(slot, 0) else {
        return KERNEL;
    };
    let mut hw = [0u8; 12];
    hw[..6].copy_from_slice(&e[6..12]);
    hw[6..].copy_from_slice(&answer.mac);
    let mut r = a;
    r[7] = 2;
    r[8..14].copy_from_slice(&answer.mac);
    r[14..18].copy_from_slice(&target);
    r[18..24].copy_from_slice(&a[8..14]);
    r[24..28].copy_from_slice(&sender);
    // SAFETY: both ranges were bounds-checked by ptr_at, and an XDP frame is
    // writable.
    unsafe {
        core::ptr::write_unaligned(eth.cast_mut(), hw);
        core::ptr::write_unaligned(body.cast_mut(), r);
    }
    verdict(action, XdpCounter::ArpReplied)
}

/// `Ok(Some(v))`: the frame is not service traffic and `v` says where it goes.
/// `Ok(None)`: service traffic.
///
/// Keep every pointer check before any scalar length check: LLVM otherwise
/// folds the pointer checks away using the scalar ones, which the verifier
/// cannot follow.
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Option<Verdict>, Verdict> {
    // SAFETY: ptr_at checked that the 20-byte fixed header lies in the frame.
    let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 20]>(ctx, l3)?) };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(PARSE_ERROR);
    }
    // The whole header, options included, must be in the frame.
    ptr_at::<u8>(ctx, l3 + ihl - 1)?;
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if frag == 0 {
        let l4 = l3 + ihl;
        match h[9] {
            IPPROTO_TCP => check_tcp(ctx, l4)?,
            IPPROTO_UDP | IPPROTO_ICMP => {
                ptr_at::<[u8; 8]>(ctx, l4)?;
            }
            _ => {}
        }
    }
    let dst = [h[16], h[17], h[18], h[19]];
    let key = LocalV4Key {
        addr_be: u32::from_ne_bytes(dst),
    };
    // SAFETY: plain-data value read from a map the program owns.
    if unsafe { LOCAL_V4.get(key) }.is_some() {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassLocal)));
    }
    if dst[0] & 0xf0 == 0xe0 || dst == [255; 4] {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassControl)));
    }
    Ok(None)
}

fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Option<Verdict>, Verdict> {
    // SAFETY: ptr_at checked that the 40-byte header lies in the frame.
    let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 40]>(ctx, l3)?) };
    if h[0] >> 4 != 6 {
        return Err(PARSE_ERROR);
    }
    let l4 = l3 + 40;
    let mut nd = false;
    match h[6] {
        IPPROTO_TCP => check_tcp(ctx, l4)?,
        IPPROTO_UDP => {
            ptr_at::<[u8; 8]>(ctx, l4)?;
        }
        IPPROTO_ICMPV6 => {
            // Router/neighbour discovery (133..=137) belongs to the kernel.
            let ty = load_u8(ctx, l4)?;
            ptr_at::<[u8; 8]>(ctx, l4)?;
            nd = (133..=137).contains(&ty);
        }
        _ => {}
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    // SAFETY: plain-data value read from a map the program owns.
    if unsafe { LOCAL_V6.get(LocalV6Key { addr: dst }) }.is_some() {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassLocal)));
    }
    if nd || dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassControl)));
    }
    Ok(None)
}

/// What the fast path did with a frame.
enum Fast {
    /// Not an offloaded session's: the worker's.
    Miss,
    /// An offloaded session's, but the worker must see it (counter says
    /// why); the frame is untouched.
    Punt(XdpCounter),
    /// Rewritten and redirected.
    Done(Verdict),
}

/// The fast path for offloaded IPv4 sessions: untagged, without options or
/// fragmentation, TCP, UDP or ICMP echo. A flow table hit is rewritten as
/// the worker would (MACs, TTL, NAT with incremental checksums) and
/// redirected out of its egress; packets that change the session's state, and those the
/// worker must answer with an ICMP error, are left to the worker.
#[inline(always)]
fn fast_path(ctx: &XdpContext, role: &NodeRole) -> Fast {
    const L3: usize = ETH_HLEN;
    const L4: usize = ETH_HLEN + 20;
    let Ok(hp) = ptr_at::<[u8; 20]>(ctx, L3) else {
        return Fast::Miss;
    };
    // SAFETY: ptr_at checked that the 20 bytes lie in the frame.
    let h = unsafe { core::ptr::read_unaligned(hp) };
    // Options, or a fragment (MF or an offset): the worker's.
    if h[0] != 0x45 || h[6] & 0x3f != 0 || h[7] != 0 {
        return Fast::Miss;
    }
    let proto = h[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return Fast::Miss;
    }
    // Ports, or ICMP's type, code, checksum and echo identifier.
    let Ok(lp) = ptr_at::<[u8; 8]>(ctx, L4) else {
        return Fast::Miss;
    };
    // SAFETY: ptr_at checked that the 8 bytes lie in the frame.
    let l4 = unsafe { core::ptr::read_unaligned(lp) };
    let (ports, flags, seg_min) = match proto {
        IPPROTO_TCP => {
            // Data offset and flags; a header shorter than 20 bytes is
            // the worker's to count as malformed.
            match load_be16(ctx, L4 + 12) {
                Ok(w) if w >> 12 >= 5 => (
                    [l4[0], l4[1], l4[2], l4[3]],
                    (w & 0xff) as u8,
                    (w >> 12) * 4,
                ),
                _ => return Fast::Miss,
            }
        }
        IPPROTO_UDP => ([l4[0], l4[1], l4[2], l4[3]], 0, 8),
        // Echo request or reply: the session key carries the identifier
        // as both ports. Errors and the rest are the worker's.
        _ if (l4[0] == ICMP_ECHO_REQUEST || l4[0] == ICMP_ECHO_REPLY) && l4[1] == 0 => {
            ([l4[4], l4[5], l4[4], l4[5]], 0, 8)
        }
        _ => return Fast::Miss,
    };
    let w1 = u64::from_le_bytes([h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]]);
    let w2 = u64::from_le_bytes([ports[0], ports[1], ports[2], ports[3], proto, 0, 0, 0]);
    match lookup(w1, w2, role) {
        Some((slot, entry)) => {
            let len = u16::from_be_bytes([h[2], h[3]]);
            if !checksum_verifies(&h) || len < 20 + seg_min {
                return Fast::Punt(XdpCounter::FastPuntHeader);
            }
            forward_flow(ctx, slot, &entry, &h, proto, flags)
        }
        None => Fast::Miss,
    }
}

/// The fast path for offloaded IPv6 sessions: untagged, no extension
/// headers, TCP, UDP or ICMPv6 echo. Nothing is translated (NAPT44 only),
/// so only the MACs and the hop limit change, and no checksum covers
/// either. The same punts as for IPv4.
#[inline(always)]
fn fast_path6(ctx: &XdpContext) -> Fast {
    const L3: usize = ETH_HLEN;
    const L4: usize = ETH_HLEN + 40;
    let Ok(hp) = ptr_at::<[u8; 40]>(ctx, L3) else {
        return Fast::Miss;
    };
    // SAFETY: ptr_at checked that the 40 bytes lie in the frame.
    let h = unsafe { core::ptr::read_unaligned(hp) };
    if h[0] >> 4 != 6 {
        return Fast::Miss;
    }
    let proto = h[6];
    let Ok(lp) = ptr_at::<[u8; 8]>(ctx, L4) else {
        return Fast::Miss;
    };
    // SAFETY: ptr_at checked that the 8 bytes lie in the frame.
    let l4 = unsafe { core::ptr::read_unaligned(lp) };
    let (ports, flags, seg_min) = match proto {
        IPPROTO_TCP => match load_be16(ctx, L4 + 12) {
            Ok(w) if w >> 12 >= 5 => (
                [l4[0], l4[1], l4[2], l4[3]],
                (w & 0xff) as u8,
                (w >> 12) * 4,
            ),
            _ => return Fast::Miss,
        },
        IPPROTO_UDP => ([l4[0], l4[1], l4[2], l4[3]], 0, 8),
        IPPROTO_ICMPV6
            if (l4[0] == ICMPV6_ECHO_REQUEST || l4[0] == ICMPV6_ECHO_REPLY) && l4[1] == 0 =>
        {
            ([l4[4], l4[5], l4[4], l4[5]], 0, 8)
        }
        _ => return Fast::Miss,
    };
    let mut kb = [0u8; 40];
    kb[..32].copy_from_slice(&h[8..40]);
    kb[32..36].copy_from_slice(&ports);
    kb[36] = proto;
    // SAFETY: FlowV6Key is repr(C) and 40 bytes of byte arrays, laid out
    // as `kb`: any bytes make a key.
    let key: FlowV6Key = unsafe { core::mem::transmute(kb) };
    let Some(e) = FLOWS6.get_ptr_mut(key) else {
        return Fast::Miss;
    };
    if proto == IPPROTO_TCP && flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return Fast::Punt(XdpCounter::FastPuntFlags);
    }
    if h[7] <= 1 {
        return Fast::Punt(XdpCounter::FastPuntTtl);
    }
    // SAFETY: an element of the map: its memory stays the map's while the
    // program runs (RCU), though a delete may hand it to the next insert at
    // once, for another direction. So the fields are read first, volatile,
    // and the key copy (written first) last: a reused element reads as a
    // miss.
    let (dst_mac, src_mac, tx_slot, mtu) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*e).dst_mac),
            core::ptr::read_volatile(&raw const (*e).src_mac),
            core::ptr::read_volatile(&raw const (*e).tx_slot),
            core::ptr::read_volatile(&raw const (*e).mtu),
        )
    };
    for i in 0..5 {
        let at = i * 8;
        let want = u64::from_ne_bytes([
            kb[at],
            kb[at + 1],
            kb[at + 2],
            kb[at + 3],
            kb[at + 4],
            kb[at + 5],
            kb[at + 6],
            kb[at + 7],
        ]);
        // SAFETY: the key copy, five aligned words at the value's start.
        if unsafe { core::ptr::read_volatile(e.cast::<u64>().add(i)) } != want {
            return Fast::Miss;
        }
    }
    let len = u32::from(u16::from_be_bytes([h[4], h[5]])) + 40;
    if len > u32::from(mtu) {
        return Fast::Punt(XdpCounter::FastPuntTooBig);
    }
    if len < 40 + u32::from(seg_min) {
        return Fast::Punt(XdpCounter::FastPuntHeader);
    }
    if let Err(f) = fit_to_datagram(ctx, L3 + len as usize) {
        return f;
    }
    let Ok(action) = TX_PORTS.redirect(u32::from(tx_slot), 0) else {
        return Fast::Punt(XdpCounter::FastRedirectFailed);
    };
    let (Ok(eth), Ok(hop)) = (ptr_at::<[u8; 12]>(ctx, 0), ptr_at::<u8>(ctx, L3 + 7)) else {
        return Fast::Miss;
    };
    // SAFETY: the frame ranges were bounds-checked by ptr_at (an XDP frame
    // is writable); `e` as above, its counters only ever added to
    // atomically.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dst_mac);
        macs[6..].copy_from_slice(&src_mac);
        core::ptr::write_unaligned(eth.cast_mut(), macs);
        *hop.cast_mut() = h[7] - 1;
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*e).packets,
            1,
        );
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*e).bytes,
            u64::from(len),
        );
        let tick = clock();
        let last = &raw mut (*e).last_seen;
        if core::ptr::read_volatile(last) != tick {
            core::ptr::write_volatile(last, tick);
        }
    }
    add(XdpCounter::FastForwardedBytes, u64::from(len));
    Fast::Done(verdict(action, XdpCounter::FastForwarded))
}

/// The slot holding key words `w1`/`w2` and its entry, read consistently
/// (see [`FlowSlot`]): the home slot and as many ways after it as its
/// probe byte says. A slot a worker is rewriting reads as a miss.
#[inline(always)]
fn lookup(w1: u64, w2: u64, role: &NodeRole) -> Option<(*mut FlowSlot, FlowEntry)> {
    let home = flow_hash(w1, w2, role.flow_seed) & role.flow_mask;
    let first = FLOWS.get_ptr_mut(home)?;
    if let Some(hit) = probe(first, w1, w2) {
        return hit;
    }
    // SAFETY: a slot of the table; volatile, as workers write it
    // concurrently.
    let ways = u32::from(unsafe { read8(first, FLOW_PROBE_OFF) });
    for way in 1..FLOW_WAYS {
        if way > ways {
            break;
        }
        let slot = FLOWS.get_ptr_mut((home + way) & role.flow_mask)?;
        if let Some(hit) = probe(slot, w1, w2) {
            return hit;
        }
    }
    None
}

/// `None`: `slot` does not hold the key; `Some(None)`: it does, but a
/// worker rewrote it while it was read; `Some(Some(..))`: the slot and
/// its entry.
#[inline(always)]
#[expect(
    clippy::option_option,
    reason = "a miss goes on to the next way, a torn read stops the lookup"
)]
fn probe(slot: *mut FlowSlot, w1: u64, w2: u64) -> Option<Option<(*mut FlowSlot, FlowEntry)>> {
    // SAFETY: a slot of the table; every read is volatile so that none
    // moves outside the two reads of the sequence number.
    unsafe {
        let seq = read16(slot, FLOW_SEQ_OFF);
        let words = slot.cast::<u64>();
        if seq & 1 != 0
            || core::ptr::read_volatile(words.add(1)) != w1
            || core::ptr::read_volatile(words.add(2)) & FLOW_KEY2_MASK != w2
        {
            return None;
        }
        let w = [
            w1,
            core::ptr::read_volatile(words.add(2)),
            core::ptr::read_volatile(words.add(3)),
            core::ptr::read_volatile(words.add(4)),
            core::ptr::read_volatile(words.add(5)),
        ];
        if read16(slot, FLOW_SEQ_OFF) != seq {
            return Some(None);
        }
        Some(Some((slot, flow_entry(&w))))
    }
}

/// # Safety
/// `slot` must point at a live slot.
#[inline(always)]
unsafe fn read8(slot: *mut FlowSlot, off: usize) -> u8 {
    // SAFETY: the caller's; `off` is inside the 64-byte slot.
    unsafe { core::ptr::read_volatile(slot.cast::<u8>().add(off)) }
}

/// # Safety
/// `slot` must point at a live slot.
#[inline(always)]
unsafe fn read16(slot: *mut FlowSlot, off: usize) -> u16 {
    // SAFETY: the caller's; `off` is even and inside the slot.
    unsafe { core::ptr::read_volatile(slot.cast::<u16>().add(off / 2)) }
}

#[inline(always)]
fn forward_flow(
    ctx: &XdpContext,
    slot: *mut FlowSlot,
    f: &FlowEntry,
    h: &[u8; 20],
    proto: u8,
    tcp_flags: u8,
) -> Fast {
    const L3: usize = ETH_HLEN;
    const L4: usize = ETH_HLEN + 20;
    if proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return Fast::Punt(XdpCounter::FastPuntFlags);
    }
    if h[8] <= 1 {
        return Fast::Punt(XdpCounter::FastPuntTtl);
    }
    let len = u16::from_be_bytes([h[2], h[3]]);
    if len > f.mtu {
        return Fast::Punt(XdpCounter::FastPuntTooBig);
    }
    if let Err(c) = fit_to_datagram(ctx, L3 + len as usize) {
        return c;
    }
    // The redirect only records its target, so it can come before the
    // rewrite: a slot without a device leaves the frame untouched for the
    // worker, and there is no separate devmap lookup.
    let Ok(action) = TX_PORTS.redirect(u32::from(f.tx_slot), 0) else {
        return Fast::Punt(XdpCounter::FastRedirectFailed);
    };
    // Translation first, at constant offsets (the verifier follows those,
    // not a pointer LLVM selects between two).
    let icmp = proto == IPPROTO_ICMP;
    let translated = match (f.nat, icmp) {
        (FLOW_NAT_SOURCE, false) => translate::<{ L3 + 12 }, L4>(ctx, f, proto),
        (FLOW_NAT_DESTINATION, false) => translate::<{ L3 + 16 }, { L4 + 2 }>(ctx, f, proto),
        // The echo identifier, whichever end is translated.
        (FLOW_NAT_SOURCE, true) => translate::<{ L3 + 12 }, { L4 + 4 }>(ctx, f, proto),
        (FLOW_NAT_DESTINATION, true) => translate::<{ L3 + 16 }, { L4 + 4 }>(ctx, f, proto),
        _ => true,
    };
    if !translated {
        return Fast::Miss;
    }
    let (Ok(eth), Ok(ttl), Ok(ip_csum)) = (
        ptr_at::<[u8; 12]>(ctx, 0),
        ptr_at::<u8>(ctx, L3 + 8),
        ptr_at::<[u8; 2]>(ctx, L3 + 10),
    ) else {
        return Fast::Miss;
    };
    // SAFETY: as above.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&f.dst_mac);
        macs[6..].copy_from_slice(&f.src_mac);
        core::ptr::write_unaligned(eth.cast_mut(), macs);
        *ttl.cast_mut() = h[8] - 1;
        let old = u16::from_be_bytes(core::ptr::read_unaligned(ip_csum));
        core::ptr::write_unaligned(
            ip_csum.cast_mut(),
            csum_apply(old, f.ip_delta).to_be_bytes(),
        );
        // Atomic adds: a flow RSS spreads over CPUs, or a worker reading
        // the counters, shares the line. Should the slot change hands in
        // the meantime, its next occupant gets this packet's count, as
        // with the kernel's preallocated hash maps.
        let words = slot.cast::<u64>();
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            words.add(FLOW_PACKETS_WORD),
            1,
        );
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            words.add(FLOW_BYTES_WORD),
            u64::from(len),
        );
        let tick = clock();
        let last = slot.cast::<u32>().add(FLOW_LAST_SEEN_OFF / 4);
        if core::ptr::read_volatile(last) != tick {
            core::ptr::write_volatile(last, tick);
        }
    }
    add(XdpCounter::FastForwardedBytes, u64::from(len));
    Fast::Done(verdict(action, XdpCounter::FastForwarded))
}

/// Whether a 20-byte IPv4 header's checksum verifies (RFC 1071: the
/// one's-complement sum of its words, checksum included, is all ones).
#[inline(always)]
fn checksum_verifies(h: &[u8; 20]) -> bool {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// The worker's length rule for a datagram that ends `end` bytes into the
/// frame: a frame that does not hold it is the worker's to drop and count;
/// link padding after it is trimmed, so that what leaves is the datagram
/// alone, as the worker sends it. Packet pointers taken before a trim are
/// stale afterwards: callers take theirs again.
#[inline(always)]
fn fit_to_datagram(ctx: &XdpContext, end: usize) -> Result<(), Fast> {
    let have = ctx.data_end() - ctx.data();
    if end > have {
        return Err(Fast::Punt(XdpCounter::FastPuntHeader));
    }
    if end < have {
        #[expect(clippy::cast_possible_wrap, reason = "a frame is under 64 KiB")]
        let delta = -((have - end) as i32);
        // SAFETY: the helper takes this program's own context; it only
        // moves the frame's end.
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(Fast::Miss);
        }
    }
    Ok(())
}

/// The tick to stamp `last_seen` with: the workers' clock, not the
/// kernel's (see `FLOW_TICK_SHIFT`). Aging needs seconds, and a clock
/// helper call cost more than the rest of the stamping.
#[inline(always)]
fn clock() -> u32 {
    match CLOCK.get_ptr(0) {
        // SAFETY: the map's one element; workers store it whole
        // (aligned), so a volatile read sees one value or the other.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Writes the translated address at `ADDR` and port at `PORT` and patches
/// the transport checksum; false if the frame is too short.
#[inline(always)]
fn translate<const ADDR: usize, const PORT: usize>(
    ctx: &XdpContext,
    f: &FlowEntry,
    proto: u8,
) -> bool {
    let (Ok(addr), Ok(port)) = (ptr_at::<[u8; 4]>(ctx, ADDR), ptr_at::<[u8; 2]>(ctx, PORT)) else {
        return false;
    };
    let csum = match proto {
        IPPROTO_TCP => ptr_at::<[u8; 2]>(ctx, ETH_HLEN + 20 + 16),
        IPPROTO_UDP => ptr_at::<[u8; 2]>(ctx, ETH_HLEN + 20 + 6),
        _ => ptr_at::<[u8; 2]>(ctx, ETH_HLEN + 20 + 2),
    };
    let Ok(csum) = csum else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at; XDP frames are writable; unaligned
    // accesses.
    unsafe {
        core::ptr::write_unaligned(addr.cast_mut(), f.nat_addr);
        core::ptr::write_unaligned(port.cast_mut(), f.nat_port);
        let old = u16::from_be_bytes(core::ptr::read_unaligned(csum));
        // A UDP checksum of zero means none: it stays none.
        if !(proto == IPPROTO_UDP && old == 0) {
            let mut new = csum_apply(old, f.l4_delta);
            if proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            core::ptr::write_unaligned(csum.cast_mut(), new.to_be_bytes());
        }
    }
    true
}

/// RFC 1624 eqn. 3 with a precomputed folded `delta` of `~m + m'` words.
#[inline(always)]
fn csum_apply(csum: u16, delta: u16) -> u16 {
    let mut s = u32::from(!csum) + u32::from(delta);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn check_tcp(ctx: &XdpContext, l4: usize) -> Result<(), Verdict> {
    let data_off = ((load_u8(ctx, l4 + 12)? >> 4) as usize) * 4;
    if data_off < 20 {
        return Err(PARSE_ERROR);
    }
    ptr_at::<[u8; 20]>(ctx, l4)?;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

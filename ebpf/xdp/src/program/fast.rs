//! The fast path: an offloaded session's frame is rewritten as the worker
//! would rewrite it and redirected out of its egress by the program
//! itself, from the flow table the owner worker filled (`TND_FLOWS` for
//! IPv4, `TND_FLOWS6` for IPv6). A frame the worker must see (a state
//! change, an ICMP error to send, a header that breaks the worker's rule)
//! is left untouched for it, under a counter.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::programs::XdpContext;
use tandem_common::{
    FLOW_BYTES_WORD, FLOW_KEY2_MASK, FLOW_LAST_SEEN_OFF, FLOW_NAT_DESTINATION, FLOW_NAT_SOURCE,
    FLOW_PACKETS_WORD, FLOW_PROBE_OFF, FLOW_SEQ_OFF, FLOW_WAYS, FlowEntry, FlowSlot, FlowV6Key,
    NodeRole, XdpCounter, flow_entry, flow_hash,
};

use super::{
    CLOCK, ETH_HLEN, FLOWS, FLOWS6, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST,
    TCP_SYN, TX_PORTS, Verdict, add, load_be16, ptr_at, verdict,
};

/// What the fast path did with a frame.
pub(super) enum Fast {
    /// Not an offloaded session's: the worker's.
    Miss,
    /// An offloaded session's, but the worker must see it (counter says
    /// why); the frame is untouched.
    Punt(XdpCounter),
    /// Rewritten and redirected out of interface slot `.1`, `.2` bytes
    /// long (the frame as sent).
    Done(Verdict, u32, u64),
}

/// The fast path for offloaded IPv4 sessions: untagged, without options or
/// fragmentation, TCP, UDP or ICMP echo. A flow table hit is rewritten as
/// the worker would (MACs, TTL, NAT with incremental checksums) and
/// redirected out of its egress; packets that change the session's state, and those the
/// worker must answer with an ICMP error, are left to the worker.
#[inline(always)]
pub(super) fn fast_path(ctx: &XdpContext, role: &NodeRole) -> Fast {
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
pub(super) fn fast_path6(ctx: &XdpContext) -> Fast {
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
    Fast::Done(
        verdict(action, XdpCounter::FastForwarded),
        u32::from(tx_slot),
        u64::from(len) + L3 as u64,
    )
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
    Fast::Done(
        verdict(action, XdpCounter::FastForwarded),
        u32::from(f.tx_slot),
        u64::from(len) + L3 as u64,
    )
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

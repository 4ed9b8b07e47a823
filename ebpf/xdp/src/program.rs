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
//!
//! Self-fencing: under a redundancy state machine the role carries a lease
//! that the MASTER's redundancy thread renews. Once it runs out (the daemon
//! frozen, wedged or starved) the program acts as on a standby: no service
//! traffic, no fast path, no ARP answers for the pool, and the ARP
//! requests and neighbour solicitations for the VIPs dropped rather than
//! passed to the kernel, which would answer them; all before the peer's
//! dead interval ends and it takes over.
#![expect(
    unsafe_code,
    reason = "an XDP program reads and writes the frame and map memory through pointers the verifier checks"
)]
#![expect(
    clippy::inline_always,
    reason = "bounds checks must be inlined into their callers for the verifier to see them"
)]

mod fast;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use tandem_common::{
    ArpAnswer, COUNTERS_LEN, ControlKey, ControlPeer, DEFAULT_FLOWS, DEFAULT_FLOWS6,
    FastIfaceCounter, FlowEntry6, FlowSlot, FlowV6Key, IfaceSlot, LocalV4Key, LocalV6Key,
    MAX_ARP_ADDRS, MAX_CONTROL, MAX_IFACES, MAX_IFINDEX, MAX_LOCAL_ADDRS, MAX_QUEUES, NodeRole,
    XdpCounter, fast_iface_index, v4_mapped, xsk_index,
};

use self::fast::{Fast, fast_path, fast_path6};

#[map(name = "TND_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
#[map(name = "TND_IFSLOTS")]
static IFSLOTS: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);
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
#[map(name = "TND_FENCED_V6")]
static FENCED_V6: HashMap<LocalV6Key, u32> = HashMap::with_max_entries(MAX_ARP_ADDRS, 0);
#[map(name = "TND_CONTROL")]
static CONTROL: HashMap<ControlKey, ControlPeer> = HashMap::with_max_entries(MAX_CONTROL, 0);
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
    add_at(c as u32, n);
}

#[inline(always)]
fn add_at(i: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(i) {
        // SAFETY: the per-CPU slot belongs to this CPU for the duration of the
        // program; no other writer can run concurrently on it.
        unsafe { *p += n };
    }
}

/// Counts a frame the fast path forwarded: received on the ingress
/// interface (`rx_len` bytes as it came), sent out of `tx_slot` (`tx_len`
/// bytes as it left).
#[inline(always)]
fn count_fast(ctx: &XdpContext, rx_len: u64, tx_slot: u32, tx_len: u64) {
    let ifindex = ctx.ingress_ifindex() as u32;
    if ifindex < MAX_IFINDEX
        && let Some(&s) = IFSLOTS.get(ifindex)
        && s > 0
        && s <= MAX_IFACES
    {
        add_at(fast_iface_index(s - 1, FastIfaceCounter::RxPackets), 1);
        add_at(fast_iface_index(s - 1, FastIfaceCounter::RxBytes), rx_len);
    }
    if tx_slot < MAX_IFACES {
        add_at(fast_iface_index(tx_slot, FastIfaceCounter::TxPackets), 1);
        add_at(fast_iface_index(tx_slot, FastIfaceCounter::TxBytes), tx_len);
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
    // The clock is read only on a node that holds a lease.
    let now = if role.forward != 0 && role.lease_ns != 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };
    let (forward, lapsed) = role.forwards_at(now);
    if lapsed {
        count(XdpCounter::LeaseExpired);
    }
    // Offloaded sessions first: they are service traffic by construction
    // (never to a local, multicast or broadcast address), so a hit skips
    // the local-address lookup, and the interface lookup too (the
    // program is attached to tandem's interfaces only, and the table holds
    // nothing before they are registered). A punt goes the worker's way
    // below.
    let rx_len = (ctx.data_end() - ctx.data()) as u64;
    if forward && ethertype == ETH_P_IP && l3 == ETH_HLEN {
        match fast_path(ctx, &role) {
            Fast::Miss => {}
            Fast::Punt(c) => count(c),
            Fast::Done(v, tx_slot, tx_len) => {
                count_fast(ctx, rx_len, tx_slot, tx_len);
                return Ok(v);
            }
        }
    }
    if forward && ethertype == ETH_P_IPV6 && l3 == ETH_HLEN {
        match fast_path6(ctx) {
            Fast::Miss => {}
            Fast::Punt(c) => count(c),
            Fast::Done(v, tx_slot, tx_len) => {
                count_fast(ctx, rx_len, tx_slot, tx_len);
                return Ok(v);
            }
        }
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: plain-data value read from a map the program owns.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }).copied() else {
        return Ok(verdict(xdp_action::XDP_PASS, XdpCounter::PassUnknownIface));
    };
    let service = match ethertype {
        ETH_P_IP => ipv4(ctx, l3, ifindex)?,
        ETH_P_IPV6 => ipv6(ctx, l3, ifindex, forward)?,
        // Untagged only: the kernel answered the pool on the interface
        // itself, not on VLANs over it.
        ETH_P_ARP if l3 == ETH_HLEN => return Ok(arp(ctx, ifindex, iface.slot, forward)),
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
///
/// A request for a VIP goes to the kernel, which holds the VIP, only
/// while the node forwards; otherwise it is dropped (`ArpFenced`).
fn arp(ctx: &XdpContext, ifindex: u32, slot: u32, forward: bool) -> Verdict {
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
    if answer.kernel != 0 {
        return if forward {
            KERNEL
        } else {
            verdict(xdp_action::XDP_DROP, XdpCounter::ArpFenced)
        };
    }
    if !forward {
        return KERNEL;
    }
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
fn ipv4(ctx: &XdpContext, l3: usize, ifindex: u32) -> Result<Option<Verdict>, Verdict> {
    // SAFETY: ptr_at checked that the 20-byte fixed header lies in the frame.
    let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 20]>(ctx, l3)?) };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(PARSE_ERROR);
    }
    // The whole header, options included, must be in the frame.
    ptr_at::<u8>(ctx, l3 + ihl - 1)?;
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let l4 = l3 + ihl;
    if frag == 0 {
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
        let proto = h[9];
        if frag == 0 && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
            let src = v4_mapped([h[12], h[13], h[14], h[15]]);
            return Ok(Some(local(ctx, l4, v4_mapped(dst), src, proto, ifindex)?));
        }
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassLocal)));
    }
    if dst[0] & 0xf0 == 0xe0 || dst == [255; 4] {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassControl)));
    }
    Ok(None)
}

fn ipv6(
    ctx: &XdpContext,
    l3: usize,
    ifindex: u32,
    forward: bool,
) -> Result<Option<Verdict>, Verdict> {
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
            // A neighbour solicitation for a VIP: the kernel's to answer
            // only while the node forwards.
            if ty == 135
                && !forward
                && let Ok(target) = ptr_at::<[u8; 16]>(ctx, l4 + 8)
            {
                // SAFETY: ptr_at checked the 16 target bytes lie in the frame.
                let addr = unsafe { core::ptr::read_unaligned(target) };
                // SAFETY: plain-data value read from a map the program owns.
                if unsafe { FENCED_V6.get(LocalV6Key { addr }) }.is_some() {
                    return Ok(Some(verdict(xdp_action::XDP_DROP, XdpCounter::ArpFenced)));
                }
            }
        }
        _ => {}
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    // SAFETY: plain-data value read from a map the program owns.
    if unsafe { LOCAL_V6.get(LocalV6Key { addr: dst }) }.is_some() {
        let proto = h[6];
        if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            return Ok(Some(local(ctx, l4, dst, src, proto, ifindex)?));
        }
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassLocal)));
    }
    if nd || dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
        return Ok(Some(verdict(xdp_action::XDP_PASS, XdpCounter::PassControl)));
    }
    Ok(None)
}

/// TCP or UDP to one of the node's addresses: the kernel's, unless it is
/// for a control socket of the pair and does not come from the peer's
/// address on the peer's interface.
#[inline(always)]
fn local(
    ctx: &XdpContext,
    l4: usize,
    dst: [u8; 16],
    src: [u8; 16],
    proto: u8,
    ifindex: u32,
) -> Result<Verdict, Verdict> {
    // SAFETY: ptr_at checked both port bytes lie in the frame.
    let port = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 2]>(ctx, l4 + 2)?) };
    let key = ControlKey {
        addr: dst,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: plain-data value read from a map the program owns.
    if let Some(p) = unsafe { CONTROL.get(key) }
        && (p.ifindex != ifindex || p.peer != src)
    {
        return Ok(verdict(xdp_action::XDP_DROP, XdpCounter::DropControl));
    }
    Ok(verdict(xdp_action::XDP_PASS, XdpCounter::PassLocal))
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

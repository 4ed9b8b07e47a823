//! Kernel/user ABI shared by the XDP program (`tandem-ebpf`) and user space.
//!
//! Design: everything here is `#[repr(C)]` with explicit padding, flags are
//! integers, byte order is in the field name, and map names are constants so
//! the loader and the program cannot drift apart. The `user` feature adds the
//! `aya::Pod` impls that user space needs to read and write the maps.
#![no_std]

/// Map names, as the loader looks them up in the object file.
pub mod map {
    /// `PerCpuArray<u64>` indexed by [`super::XdpCounter`].
    pub const COUNTERS: &str = "TND_COUNTERS";
    /// `Array<NodeRole>`, one entry: may this node forward service traffic.
    pub const ROLE: &str = "TND_ROLE";
    /// `HashMap<u32 ifindex, IfaceSlot>`: interfaces tandem owns.
    pub const IFACES: &str = "TND_IFACES";
    /// `XskMap` indexed by `slot * MAX_QUEUES + rx_queue`.
    pub const XSKS: &str = "TND_XSKS";
    /// `HashMap<LocalV4Key, u32>`: IPv4 addresses that belong to the node.
    pub const LOCAL_V4: &str = "TND_LOCAL_V4";
    /// `HashMap<LocalV6Key, u32>`: IPv6 addresses that belong to the node.
    pub const LOCAL_V6: &str = "TND_LOCAL_V6";
    /// `Array<FlowSlot>` (mmapable, a power of two long): the flow table
    /// of offloaded session directions, which the program forwards itself
    /// (the fast path). See [`super::FlowSlot`].
    pub const FLOWS: &str = "TND_FLOWS";
    /// `DevMap` indexed by interface slot: where the fast path redirects.
    pub const TX_PORTS: &str = "TND_TX_PORTS";
    /// `HashMap<FlowV6Key, FlowEntry6>` (no preallocation): offloaded
    /// IPv6 session directions, which are never translated. Workers write
    /// it with bpf(2), an install at a time.
    pub const FLOWS6: &str = "TND_FLOWS6";
    /// `HashMap<LocalV4Key, ArpAnswer>`: the NAT pool addresses the
    /// program answers ARP requests for while the node forwards, and the
    /// IPv4 VIPs, whose requests reach the kernel only then.
    pub const ARP_V4: &str = "TND_ARP_V4";
    /// `HashMap<LocalV6Key, u32>`: the IPv6 VIPs, whose neighbour
    /// solicitations reach the kernel only while the node forwards.
    pub const FENCED_V6: &str = "TND_FENCED_V6";
    /// `HashMap<ControlKey, ControlPeer>`: the pair's control sockets
    /// (heartbeats, the sync listener), admitted only from the peer's
    /// address on the configured interface.
    pub const CONTROL: &str = "TND_CONTROL";
    /// `Array<u32>` of [`super::MAX_IFINDEX`] entries: an interface's
    /// slot plus one by ifindex (0: not tandem's), for the fast path's
    /// per-interface counters (an array read, not a hash lookup).
    pub const IFSLOTS: &str = "TND_IFSLOTS";
    /// `Array<u32>` (mmapable), one entry: the clock the fast path stamps
    /// `last_seen` with, `CLOCK_MONOTONIC_COARSE >> FLOW_TICK_SHIFT`, which
    /// the workers move forward as they run (see
    /// [`super::FLOW_TICK_SHIFT`]).
    pub const CLOCK: &str = "TND_CLOCK";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "tandem_xdp";

/// Highest number of interfaces the program steers for.
pub const MAX_IFACES: u32 = 8;
/// Highest rx queue index (exclusive) per interface with an XSK.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of each local-address map.
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Entries of the IPv6 flow map as compiled; the loader sizes it from the
/// configuration.
pub const DEFAULT_FLOWS6: u32 = 16_384;
/// Capacity of the ARP answer map (NAT pool addresses of all service sets).
pub const MAX_ARP_ADDRS: u32 = 1024;

/// Entries of the control-socket map: a sync listener and a heartbeat
/// socket per path.
pub const MAX_CONTROL: u32 = 64;
/// Slots of the flow table as compiled (a power of two); the loader sizes
/// it from the configuration.
pub const DEFAULT_FLOWS: u32 = 65_536;

/// Interfaces whose ifindex is at or past this have no fast-path
/// receive counters (their forwarded frames still count as transmitted).
pub const MAX_IFINDEX: u32 = 4096;

/// What the fast path counts per interface slot, after the
/// [`XdpCounter`]s in the same per-CPU array: frames and bytes it took in
/// and sent out, the bytes being the frame's as received and as sent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastIfaceCounter {
    RxPackets = 0,
    RxBytes = 1,
    TxPackets = 2,
    TxBytes = 3,
}

impl FastIfaceCounter {
    pub const COUNT: u32 = 4;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::RxPackets,
        Self::RxBytes,
        Self::TxPackets,
        Self::TxBytes,
    ];
}

/// Entries of the per-CPU counter array: the verdicts, then
/// [`FastIfaceCounter::COUNT`] per interface slot.
pub const COUNTERS_LEN: u32 = XdpCounter::COUNT + MAX_IFACES * FastIfaceCounter::COUNT;

/// Index of fast-path counter `c` of interface `slot` in the counter array.
#[inline]
#[must_use]
pub const fn fast_iface_index(slot: u32, c: FastIfaceCounter) -> u32 {
    XdpCounter::COUNT + slot * FastIfaceCounter::COUNT + c as u32
}

/// Index into the XSK map for an interface slot and rx queue.
#[inline]
#[must_use]
pub const fn xsk_index(slot: u32, queue: u32) -> u32 {
    slot * MAX_QUEUES + queue
}

/// What the XDP program decided for one frame. Each variant is a counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpCounter {
    /// Service traffic redirected into the queue's XSK.
    Redirected = 0,
    /// Non-IP frames (ARP, LLDP, ...) handed to the kernel.
    PassNonIp = 1,
    /// IP traffic addressed to one of the node's own addresses.
    PassLocal = 2,
    /// Link-local control traffic: IPv6 ND/RS/RA, multicast, broadcast.
    PassControl = 3,
    /// Service traffic dropped because the node is not allowed to forward.
    DropNotMaster = 4,
    /// Service traffic with no XSK bound on its rx queue.
    DropNoSocket = 5,
    /// Frames too short or malformed to parse.
    DropParseError = 6,
    /// Frames on an interface tandem does not own (should not happen).
    PassUnknownIface = 7,
    /// Total frames seen.
    RxFrames = 8,
    /// Frames of offloaded sessions forwarded by the program itself.
    FastForwarded = 9,
    /// Frames of offloaded sessions left to the worker: TCP SYN, FIN or
    /// RST (they change the session's state).
    FastPuntFlags = 10,
    /// ... TTL at or below 1 (the worker sends time exceeded).
    FastPuntTtl = 11,
    /// ... larger than the egress takes (the worker sends the ICMP error).
    FastPuntTooBig = 12,
    /// ... the devmap redirect failed (interface gone): the worker routes it.
    FastRedirectFailed = 13,
    /// IP bytes of the frames counted by `FastForwarded` (a sum, not a
    /// count of decisions).
    FastForwardedBytes = 14,
    /// ARP requests for a NAT pool address answered by the program itself
    /// (redirected back out of the interface they came in on).
    ArpReplied = 15,
    /// Frames of offloaded sessions left to the worker because their
    /// header breaks the worker's rule (an IPv4 checksum that does not
    /// verify, or a length the frame does not hold): the worker drops and
    /// counts them as it does every such datagram.
    FastPuntHeader = 16,
    /// Frames that found this node's MASTER lease run out (its daemon
    /// frozen, wedged or starved): handled as on a node that does not
    /// forward.
    LeaseExpired = 17,
    /// ARP requests and neighbour solicitations for a VIP dropped because
    /// the node does not forward (not MASTER, or its lease ran out): the
    /// kernel never answers for a VIP on its own.
    ArpFenced = 18,
    /// Heartbeat or sync traffic to this node that did not come from the
    /// configured peer address on the configured interface: dropped
    /// before the kernel sees it.
    DropControl = 19,
}

impl XdpCounter {
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 20;

    /// Every counter, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Redirected,
        Self::PassNonIp,
        Self::PassLocal,
        Self::PassControl,
        Self::DropNotMaster,
        Self::DropNoSocket,
        Self::DropParseError,
        Self::PassUnknownIface,
        Self::RxFrames,
        Self::FastForwarded,
        Self::FastPuntFlags,
        Self::FastPuntTtl,
        Self::FastPuntTooBig,
        Self::FastRedirectFailed,
        Self::FastForwardedBytes,
        Self::ArpReplied,
        Self::FastPuntHeader,
        Self::LeaseExpired,
        Self::ArpFenced,
        Self::DropControl,
    ];

    /// Counter name as shown by the readout tools (snake_case).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::PassNonIp => "pass_non_ip",
            Self::PassLocal => "pass_local",
            Self::PassControl => "pass_control",
            Self::DropNotMaster => "drop_not_master",
            Self::DropNoSocket => "drop_no_socket",
            Self::DropParseError => "drop_parse_error",
            Self::PassUnknownIface => "pass_unknown_iface",
            Self::RxFrames => "rx_frames",
            Self::FastForwarded => "fast_forwarded",
            Self::FastPuntFlags => "fast_punt_flags",
            Self::FastPuntTtl => "fast_punt_ttl",
            Self::FastPuntTooBig => "fast_punt_too_big",
            Self::FastRedirectFailed => "fast_redirect_failed",
            Self::FastForwardedBytes => "fast_forwarded_bytes",
            Self::ArpReplied => "arp_replied",
            Self::FastPuntHeader => "fast_punt_header",
            Self::LeaseExpired => "lease_expired",
            Self::ArpFenced => "arp_fenced",
            Self::DropControl => "drop_control",
        }
    }
}

/// Value of the role map: whether service traffic is forwarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeRole {
    /// 1: forward service traffic; 0: count it as spurious and drop it.
    pub forward: u32,
    /// The flow table's slot count minus one (a power of two minus one).
    pub flow_mask: u32,
    /// The flow table's hash seed ([`flow_hash`]).
    pub flow_seed: u32,
    pub pad: u32,
    /// Under a redundancy state machine, `forward` holds only until this
    /// `CLOCK_MONOTONIC_COARSE` time (ns), which the MASTER's redundancy
    /// thread renews well within the peer's dead interval: a daemon that
    /// stops running stops forwarding before its peer takes over. 0: no
    /// lease (fixed roles).
    pub lease_ns: u64,
}

impl NodeRole {
    /// Whether a node in this role forwards at `now_ns`
    /// (`CLOCK_MONOTONIC_COARSE`); the second value says the lease ran
    /// out.
    #[inline]
    #[must_use]
    pub const fn forwards_at(&self, now_ns: u64) -> (bool, bool) {
        if self.forward == 0 {
            return (false, false);
        }
        if self.lease_ns != 0 && now_ns >= self.lease_ns {
            return (false, true);
        }
        (true, false)
    }
}

/// Value of the interface map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    /// Dense slot number (< `MAX_IFACES`), used in XSK map indexes.
    pub slot: u32,
    /// Number of rx queues that have an XSK bound.
    pub queues: u32,
}

/// Key of the IPv4 local-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalV4Key {
    /// The address, in network byte order.
    pub addr_be: u32,
}

/// Key of the IPv6 flow map: one direction of an offloaded session, as
/// its packets arrive. Wire byte order; an ICMPv6 echo carries its
/// identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowV6Key {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Value of the IPv6 flow map: the key again, where the direction leaves
/// (devmap slot, MACs, MTU), and what the program forwarded: packets and
/// IP bytes (atomic adds), and the `TND_CLOCK` tick of the latest packet
/// (`ns >> FLOW_TICK_SHIFT`, 0: none).
///
/// The key comes first and the program compares it after reading the
/// rest: the kernel may hand a deleted element to the next insert at once,
/// and fills it front to back, so an element reused for another direction
/// under a reader reads as a miss, never as a mix of two entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry6 {
    pub key: FlowV6Key,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub tx_slot: u16,
    pub mtu: u16,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen: u32,
    pub pad: u32,
}

/// Value of the ARP answer map: the interface a pool address is answered
/// on, and the hardware address the answer gives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpAnswer {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// 1: a VIP, which the kernel holds and answers for; the program only
    /// lets its requests through while the node forwards. 0: a pool
    /// address the program answers for itself.
    pub kernel: u8,
    pub pad: u8,
}

/// Key of the control-socket map: a local address (IPv4 as
/// `::ffff:a.b.c.d`), port and protocol, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// Who may reach a control socket: the peer's address (IPv4 mapped as in
/// [`ControlKey`]) and the interface it must arrive on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlPeer {
    pub peer: [u8; 16],
    pub ifindex: u32,
}

/// An IPv4 address as the control map holds it (`::ffff:a.b.c.d`).
#[must_use]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Key of the IPv6 local-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalV6Key {
    /// The address, as on the wire.
    pub addr: [u8; 16],
}

/// Key of the flow map: one direction of an offloaded session, as its
/// packets arrive (before any translation). Wire byte order throughout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowV4Key {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `FlowEntry::nat`: no translation.
pub const FLOW_NAT_NONE: u8 = 0;
/// `FlowEntry::nat`: rewrite the source address and port.
pub const FLOW_NAT_SOURCE: u8 = 1;
/// `FlowEntry::nat`: rewrite the destination address and port.
pub const FLOW_NAT_DESTINATION: u8 = 2;

/// How the program forwards one direction of an offloaded session. The
/// owner worker builds it once; [`flow_words`] packs it into a
/// [`FlowSlot`] with its key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The new Ethernet header.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The egress interface's slot (its `TX_PORTS` index).
    pub tx_slot: u16,
    /// Longest IP datagram the egress takes.
    pub mtu: u16,
    /// `FLOW_NAT_*`.
    pub nat: u8,
    /// The translated address and port (wire order), for `nat`.
    pub nat_addr: [u8; 4],
    pub nat_port: [u8; 2],
    /// RFC 1624 deltas, folded one's-complement sums of `~old + new` over
    /// the 16-bit words that change: the IPv4 header's (address, and TTL
    /// minus one) and the transport checksum's (address and port).
    pub ip_delta: u16,
    pub l4_delta: u16,
}

/// A direction lives in its home slot (`flow_hash & mask`) or one of the
/// next `FLOW_WAYS - 1` (wrapping); the home slot's `probe` byte says how
/// far lookups must look.
pub const FLOW_WAYS: u32 = 8;

/// One slot of the flow table (`Array<FlowSlot>`, `BPF_F_MMAPABLE`): one
/// cache line of eight little-endian words, so that a lookup costs one
/// line and user space writes and reads it in place, without syscalls.
///
/// - word 0: bytes 0-1 `seq`, byte 2 `probe`, bytes 4-7 `last_seen`;
/// - words 1-5: the key and the [`FlowEntry`], as [`flow_words`] packs them
///   (word 1 source and destination address, word 2 ports, protocol in
///   byte 4 (0: the slot is empty), then `nat` and `mtu`);
/// - word 6: packets, word 7: IP bytes forwarded since the install.
///
/// `seq` is a sequence lock: a writer makes it odd (compare-and-swap, so
/// writers exclude each other), rewrites words 1-7 and `last_seen`, and
/// makes it even again. The program reads `seq`, words 1-5, then `seq`
/// again, and treats a change or an odd value as a miss (the worker's
/// path is always correct). `probe`, in the home slot, is the highest way
/// any direction hashing there took; writers only raise it. `last_seen`
/// is the clock of the `TND_CLOCK` map at the latest packet (wrapping; 0:
/// none yet). The program adds to the counters atomically.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub words: [u64; 8],
}

/// Byte offsets in a [`FlowSlot`].
pub const FLOW_SEQ_OFF: usize = 0;
pub const FLOW_PROBE_OFF: usize = 2;
pub const FLOW_LAST_SEEN_OFF: usize = 4;
/// Word indexes in a [`FlowSlot`].
pub const FLOW_PACKETS_WORD: usize = 6;
pub const FLOW_BYTES_WORD: usize = 7;
/// `last_seen` counts units of 2^20 ns (about 1.05 ms) of
/// `CLOCK_MONOTONIC_COARSE`; it wraps after about 52 days, far beyond any
/// session timeout.
///
/// The program does not read a clock: it stamps what the `TND_CLOCK` map
/// holds, which every worker moves forward once per loop (an idle worker
/// loops every 100 ms). A kernel clock read (`bpf_ktime_get_coarse_ns`)
/// cost the fast path about a tenth of its rate with 10k flows.
pub const FLOW_TICK_SHIFT: u32 = 20;
/// Bits of word 2 that belong to the key (ports and protocol).
pub const FLOW_KEY2_MASK: u64 = (1 << 40) - 1;

/// The key as slot words 1 and 2 (the latter without `nat` and `mtu`).
#[inline]
#[must_use]
pub const fn flow_key_words(k: &FlowV4Key) -> (u64, u64) {
    let s = k.src;
    let d = k.dst;
    let w1 = u64::from_le_bytes([s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]);
    let p = [k.sport[0], k.sport[1], k.dport[0], k.dport[1]];
    let w2 = u64::from_le_bytes([p[0], p[1], p[2], p[3], k.proto, 0, 0, 0]);
    (w1, w2)
}

/// Words 1-5 of the slot holding `e` for key `k`.
#[must_use]
pub const fn flow_words(key: &FlowV4Key, e: &FlowEntry) -> [u64; 5] {
    let (w1, key2) = flow_key_words(key);
    let mtu = e.mtu.to_le_bytes();
    let w2 = key2 | u64::from_le_bytes([0, 0, 0, 0, 0, e.nat, mtu[0], mtu[1]]);
    let (dmac, smac) = (e.dst_mac, e.src_mac);
    let w3 = u64::from_le_bytes([
        dmac[0], dmac[1], dmac[2], dmac[3], dmac[4], dmac[5], smac[0], smac[1],
    ]);
    let slot = e.tx_slot.to_le_bytes();
    let port = e.nat_port;
    let w4 = u64::from_le_bytes([
        smac[2], smac[3], smac[4], smac[5], slot[0], slot[1], port[0], port[1],
    ]);
    let addr = e.nat_addr;
    let (ipd, l4d) = (e.ip_delta.to_le_bytes(), e.l4_delta.to_le_bytes());
    let w5 = u64::from_le_bytes([
        addr[0], addr[1], addr[2], addr[3], ipd[0], ipd[1], l4d[0], l4d[1],
    ]);
    [w1, w2, w3, w4, w5]
}

/// The entry packed into slot words 1-5 (the inverse of [`flow_words`]).
#[inline]
#[must_use]
pub const fn flow_entry(w: &[u64; 5]) -> FlowEntry {
    let b2 = w[1].to_le_bytes();
    let b3 = w[2].to_le_bytes();
    let b4 = w[3].to_le_bytes();
    let b5 = w[4].to_le_bytes();
    FlowEntry {
        dst_mac: [b3[0], b3[1], b3[2], b3[3], b3[4], b3[5]],
        src_mac: [b3[6], b3[7], b4[0], b4[1], b4[2], b4[3]],
        tx_slot: u16::from_le_bytes([b4[4], b4[5]]),
        mtu: u16::from_le_bytes([b2[6], b2[7]]),
        nat: b2[5],
        nat_addr: [b5[0], b5[1], b5[2], b5[3]],
        nat_port: [b4[6], b4[7]],
        ip_delta: u16::from_le_bytes([b5[4], b5[5]]),
        l4_delta: u16::from_le_bytes([b5[6], b5[7]]),
    }
}

/// The home slot hash of a key given as [`flow_key_words`], under the
/// table's random `seed` (so that nobody outside can aim flows at one
/// slot). Two multiply-xorshift rounds: cheap in BPF, and every input bit
/// reaches the low bits the mask keeps.
#[inline]
#[must_use]
pub const fn flow_hash(w1: u64, w2: u64, seed: u32) -> u32 {
    let mut h = (w1 ^ seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w2;
    h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    (h ^ (h >> 32)) as u32
}

#[cfg(feature = "user")]
#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: each impl says why it holds"
)]
mod user {
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::NodeRole {}
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::IfaceSlot {}
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::LocalV4Key {}
    // SAFETY: repr(C), a byte array, no padding.
    unsafe impl aya::Pod for super::LocalV6Key {}
    // SAFETY: repr(C), an integer and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::ArpAnswer {}
    // SAFETY: repr(C), byte arrays only.
    unsafe impl aya::Pod for super::ControlKey {}
    // SAFETY: repr(C), a byte array and an integer, no padding (20 bytes).
    unsafe impl aya::Pod for super::ControlPeer {}
    // SAFETY: repr(C), byte arrays and explicit padding.
    unsafe impl aya::Pod for super::FlowV6Key {}
    // SAFETY: repr(C), integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::FlowEntry6 {}
    // SAFETY: repr(C), byte arrays and explicit padding fields.
    unsafe impl aya::Pod for super::FlowV4Key {}
    // SAFETY: repr(C), eight integers, no padding.
    unsafe impl aya::Pod for super::FlowSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_time_and_none_holds_forever() {
        let role = |forward, lease_ns| NodeRole {
            forward,
            lease_ns,
            ..NodeRole::default()
        };
        assert_eq!(role(1, 0).forwards_at(u64::MAX), (true, false));
        assert_eq!(role(1, 100).forwards_at(99), (true, false));
        assert_eq!(role(1, 100).forwards_at(100), (false, true));
        assert_eq!(role(0, 100).forwards_at(99), (false, false));
        assert_eq!(role(0, 0).forwards_at(0), (false, false));
    }

    #[test]
    fn counter_indexes_are_dense_and_ordered() {
        for (i, c) in XdpCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn flow_types_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowV4Key>(), 16);
        assert_eq!(core::mem::size_of::<FlowSlot>(), 64);
        assert_eq!(core::mem::size_of::<NodeRole>(), 24);
        assert_eq!(core::mem::size_of::<FlowV6Key>(), 40);
        assert_eq!(core::mem::size_of::<FlowEntry6>(), 80);
        assert_eq!(core::mem::size_of::<ArpAnswer>(), 12);
        assert_eq!(core::mem::size_of::<ControlKey>(), 20);
        assert_eq!(core::mem::size_of::<ControlPeer>(), 20);
    }

    fn sample() -> (FlowV4Key, FlowEntry) {
        let k = FlowV4Key {
            src: [198, 18, 1, 10],
            dst: [198, 18, 2, 10],
            sport: [0x9c, 0x40],
            dport: [0, 7],
            proto: 17,
            pad: [0; 3],
        };
        let e = FlowEntry {
            dst_mac: [1, 2, 3, 4, 5, 6],
            src_mac: [7, 8, 9, 10, 11, 12],
            tx_slot: 0x0102,
            mtu: 1500,
            nat: FLOW_NAT_SOURCE,
            nat_addr: [198, 18, 2, 100],
            nat_port: [0x4e, 0x21],
            ip_delta: 0xabcd,
            l4_delta: 0x1234,
        };
        (k, e)
    }

    #[test]
    fn slot_words_round_trip_and_hold_the_key() {
        let (k, e) = sample();
        let w = flow_words(&k, &e);
        assert_eq!(flow_entry(&w), e);
        let (w1, w2) = flow_key_words(&k);
        assert_eq!((w[0], w[1] & FLOW_KEY2_MASK), (w1, w2));
        // An empty slot (protocol 0) never matches a key.
        assert_ne!(0, w2 & FLOW_KEY2_MASK);
        // Every key byte matters.
        let mut other = k;
        other.dport[1] ^= 1;
        assert_ne!(flow_key_words(&other), (w1, w2));
    }

    #[test]
    fn hash_spreads_sequential_ports() {
        // 5000 flows that differ only in the source port, as a generator
        // sends them, over 16k slots: no slot may collect many.
        const SLOTS: usize = 1 << 14;
        let mut hits = [0u8; SLOTS];
        let (mut k, _) = sample();
        for seed in [0, 0x5eed_1234] {
            hits.fill(0);
            for port in 10_000u16..15_000 {
                k.sport = port.to_be_bytes();
                let (w1, w2) = flow_key_words(&k);
                let h = flow_hash(w1, w2, seed) as usize & (SLOTS - 1);
                hits[h] += 1;
            }
            let worst = hits.iter().max().copied().unwrap_or(0);
            let used = hits.iter().filter(|&&n| n > 0).count();
            // Random placement would use about 4.3k slots, with at most 4
            // or 5 in one.
            assert!(
                worst <= 6 && used > 4_100,
                "seed {seed}: worst {worst}, used {used}"
            );
        }
    }

    #[test]
    fn xsk_index_fits_map() {
        assert!(xsk_index(MAX_IFACES - 1, MAX_QUEUES - 1) < MAX_IFACES * MAX_QUEUES);
    }
}

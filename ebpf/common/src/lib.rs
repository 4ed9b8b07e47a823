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
    /// `PerCpuHashMap<FlowV4Key, FlowEntry>`: offloaded session directions,
    /// which the program forwards itself (the fast path). Per CPU, so the
    /// counters need no atomics (the BPF target has no atomic add in Rust).
    pub const FLOWS: &str = "TND_FLOWS";
    /// `DevMap` indexed by interface slot: where the fast path redirects.
    pub const TX_PORTS: &str = "TND_TX_PORTS";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "tandem_xdp";

/// Highest number of interfaces the program steers for.
pub const MAX_IFACES: u32 = 8;
/// Highest rx queue index (exclusive) per interface with an XSK.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of each local-address map.
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Capacity of the flow map as compiled; the loader sizes it from the
/// configuration (two entries per session of capacity).
pub const DEFAULT_FLOWS: u32 = 65_536;

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
}

impl XdpCounter {
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 15;

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
        }
    }
}

/// Value of the role map: whether service traffic is forwarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeRole {
    /// 1: forward service traffic; 0: count it as spurious and drop it.
    pub forward: u32,
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

/// Value of the flow map: how the program forwards one direction, and
/// what it has forwarded. The owner worker writes the same entry for every
/// CPU once; the program adds to its CPU's counters and stamps its
/// `last_seen_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Frames and bytes (IP datagram) this CPU forwarded since the entry
    /// was installed.
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of the last
    /// one; 0: none yet.
    pub last_seen_ns: u64,
    /// The new Ethernet header.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The egress interface's slot (its `TX_PORTS` index).
    pub tx_slot: u32,
    /// Longest IP datagram the egress takes.
    pub mtu: u16,
    /// `FLOW_NAT_*`.
    pub nat: u8,
    pub pad: u8,
    /// The translated address and port (wire order), for `nat`.
    pub nat_addr: [u8; 4],
    pub nat_port: [u8; 2],
    /// RFC 1624 deltas, folded one's-complement sums of `~old + new` over
    /// the 16-bit words that change: the IPv4 header's (address, and TTL
    /// minus one) and the transport checksum's (address and port).
    pub ip_delta: u16,
    pub l4_delta: u16,
    pub pad2: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::NodeRole {}
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::IfaceSlot {}
    // SAFETY: repr(C), only integer fields, no padding.
    unsafe impl aya::Pod for super::LocalV4Key {}
    // SAFETY: repr(C), a byte array, no padding.
    unsafe impl aya::Pod for super::LocalV6Key {}
    // SAFETY: repr(C), byte arrays and explicit padding fields.
    unsafe impl aya::Pod for super::FlowV4Key {}
    // SAFETY: repr(C), integers and byte arrays with explicit padding
    // fields; its size is a multiple of its alignment (checked in tests).
    unsafe impl aya::Pod for super::FlowEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indexes_are_dense_and_ordered() {
        for (i, c) in XdpCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn flow_types_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowV4Key>(), 16);
        assert_eq!(core::mem::size_of::<FlowEntry>(), 56);
    }

    #[test]
    fn xsk_index_fits_map() {
        assert!(xsk_index(MAX_IFACES - 1, MAX_QUEUES - 1) < MAX_IFACES * MAX_QUEUES);
    }
}

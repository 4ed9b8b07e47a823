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
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "tandem_xdp";

/// Highest number of interfaces the program steers for.
pub const MAX_IFACES: u32 = 8;
/// Highest rx queue index (exclusive) per interface with an XSK.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of each local-address map.
pub const MAX_LOCAL_ADDRS: u32 = 1024;

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
}

impl XdpCounter {
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 9;

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
    fn xsk_index_fits_map() {
        assert!(xsk_index(MAX_IFACES - 1, MAX_QUEUES - 1) < MAX_IFACES * MAX_QUEUES);
    }
}

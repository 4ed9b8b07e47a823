//! Worker counters.
//!
//! Design: each worker counts into plain local integers and publishes them
//! once per busy iteration into its own cache-line-aligned block with relaxed
//! atomic stores: one writer per block, no read-modify-write, no sharing of
//! lines between workers. Readers sum the blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::forward::DropReason;

/// Interfaces a worker serves (inside, outside).
pub const IFACES: usize = 2;

/// Worker counters besides drops. The discriminant indexes the block.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerCounter {
    RxPackets = 0,
    RxBytes = 1,
    TxPackets = 2,
    TxBytes = 3,
    /// Iterations that received at least one frame.
    RxBatches = 4,
    /// sendto() wakeups of tx rings.
    TxWakeups = 5,
    /// poll() calls made because every rx ring was empty.
    IdlePolls = 6,
    Forwarded = 7,
    IcmpErrorsSent = 8,
    /// Datagrams handed to the kernel to resolve their next hop.
    Punted = 9,
    /// Punts the kernel refused (sendto failed).
    PuntErrors = 10,
    /// Times the free-frame pool ran dry while refilling a fill ring.
    FillShort = 11,
}

impl WorkerCounter {
    pub const COUNT: usize = 12;
    pub const ALL: [Self; Self::COUNT] = [
        Self::RxPackets,
        Self::RxBytes,
        Self::TxPackets,
        Self::TxBytes,
        Self::RxBatches,
        Self::TxWakeups,
        Self::IdlePolls,
        Self::Forwarded,
        Self::IcmpErrorsSent,
        Self::Punted,
        Self::PuntErrors,
        Self::FillShort,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::RxPackets => "rx_packets",
            Self::RxBytes => "rx_bytes",
            Self::TxPackets => "tx_packets",
            Self::TxBytes => "tx_bytes",
            Self::RxBatches => "rx_batches",
            Self::TxWakeups => "tx_wakeups",
            Self::IdlePolls => "idle_polls",
            Self::Forwarded => "forwarded",
            Self::IcmpErrorsSent => "icmp_errors_sent",
            Self::Punted => "punted",
            Self::PuntErrors => "punt_errors",
            Self::FillShort => "fill_short",
        }
    }
}

/// Per-interface counters of one worker.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceCounter {
    RxPackets = 0,
    RxBytes = 1,
    TxPackets = 2,
    TxBytes = 3,
}

impl IfaceCounter {
    pub const COUNT: usize = 4;
    pub const ALL: [Self; Self::COUNT] = [
        Self::RxPackets,
        Self::RxBytes,
        Self::TxPackets,
        Self::TxBytes,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::RxPackets => "rx_packets",
            Self::RxBytes => "rx_bytes",
            Self::TxPackets => "tx_packets",
            Self::TxBytes => "tx_bytes",
        }
    }
}

/// One worker's published counters.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct WorkerBlock {
    pub counters: [AtomicU64; WorkerCounter::COUNT],
    pub drops: [AtomicU64; DropReason::COUNT],
    pub iface: [[AtomicU64; IfaceCounter::COUNT]; IFACES],
}

/// A worker's private tally, published into its [`WorkerBlock`].
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub counters: [u64; WorkerCounter::COUNT],
    pub drops: [u64; DropReason::COUNT],
    pub iface: [[u64; IfaceCounter::COUNT]; IFACES],
}

impl Tally {
    #[inline]
    pub fn add(&mut self, c: WorkerCounter, n: u64) {
        self.counters[c as usize] += n;
    }

    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    #[inline]
    pub fn iface(&mut self, slot: usize, c: IfaceCounter, n: u64) {
        self.iface[slot][c as usize] += n;
    }

    /// Relaxed stores of every value: the block has this worker as its only
    /// writer, so no read-modify-write is needed.
    pub fn publish(&self, block: &WorkerBlock) {
        for (a, v) in block.counters.iter().zip(&self.counters) {
            a.store(*v, Ordering::Relaxed);
        }
        for (a, v) in block.drops.iter().zip(&self.drops) {
            a.store(*v, Ordering::Relaxed);
        }
        for (row, vals) in block.iface.iter().zip(&self.iface) {
            for (a, v) in row.iter().zip(vals) {
                a.store(*v, Ordering::Relaxed);
            }
        }
    }
}

impl WorkerBlock {
    /// A consistent-enough copy for reporting (each value is exact; values
    /// may be from neighbouring iterations).
    pub fn snapshot(&self) -> Tally {
        let mut t = Tally::default();
        for (v, a) in t.counters.iter_mut().zip(&self.counters) {
            *v = a.load(Ordering::Relaxed);
        }
        for (v, a) in t.drops.iter_mut().zip(&self.drops) {
            *v = a.load(Ordering::Relaxed);
        }
        for (vals, row) in t.iface.iter_mut().zip(&self.iface) {
            for (v, a) in vals.iter_mut().zip(row) {
                *v = a.load(Ordering::Relaxed);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_cache_line_aligned() {
        assert_eq!(std::mem::align_of::<WorkerBlock>(), 64);
        assert_eq!(std::mem::size_of::<WorkerBlock>() % 64, 0);
    }

    #[test]
    fn publish_then_snapshot_round_trips() {
        let mut t = Tally::default();
        t.add(WorkerCounter::RxPackets, 3);
        t.drop(DropReason::BadChecksum);
        t.iface(1, IfaceCounter::TxBytes, 99);
        let b = WorkerBlock::default();
        t.publish(&b);
        let s = b.snapshot();
        assert_eq!(s.counters[WorkerCounter::RxPackets as usize], 3);
        assert_eq!(s.drops[DropReason::BadChecksum as usize], 1);
        assert_eq!(s.iface[1][IfaceCounter::TxBytes as usize], 99);
    }

    #[test]
    fn names_are_unique() {
        let mut n: Vec<_> = WorkerCounter::ALL.iter().map(|c| c.name()).collect();
        n.sort_unstable();
        n.dedup();
        assert_eq!(n.len(), WorkerCounter::COUNT);
        for (i, c) in WorkerCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}

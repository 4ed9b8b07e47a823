//! Worker counters and their place in the stats segment.
//!
//! Design: each worker counts into a plain local [`Tally`] and publishes it
//! once per iteration into its own cache-line-aligned block of segment slots
//! with relaxed stores: one writer per block, no read-modify-write, no line
//! shared between workers. [`register`] lays the block out in exactly the
//! order of [`Tally::values`], so publishing is a zip.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tandem_control::stats::{Kind, Schema, SegmentWriter, StatsError};

use crate::forward::DropReason;

/// Interfaces a worker serves (inside, outside).
pub const IFACES: usize = 2;

/// Worker counters besides drops. The discriminant indexes the tally.
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
    /// Times the free-frame pool could not top up a fill ring by a batch.
    FillShort = 11,
    /// ICMP errors due but not sent: rate limit, no source address or no route.
    IcmpErrorsSuppressed = 12,
    SessionsCreated = 13,
    /// Sessions removed: idle timeout, or closed (RST/FIN) and aged.
    SessionsDeleted = 14,
    /// New sessions refused because the table was full.
    SessionsRefused = 15,
    /// New translated sessions refused: no mapping for them, for any of
    /// the four reasons counted below.
    NatAllocFailures = 16,
    /// Frames other workers handed to this one (it owns their flows).
    HandoffsReceived = 17,
    /// Rejects sent: TCP resets and ICMP administratively-prohibited.
    RejectsSent = 18,
    /// Iterations of the worker's loop (the stall detector watches it).
    Loops = 19,
    /// Sessions handed to the XDP fast path (both directions installed).
    OffloadsInstalled = 20,
    /// Offloaded sessions taken back: closed, expired, or leaving MASTER.
    OffloadsRemoved = 21,
    /// Sessions left on the worker path because the flow map was full.
    OffloadMapFull = 22,
    /// ... because writing the flow map failed otherwise.
    OffloadFailures = 23,
    /// Session and NAT events the event log's ring had no room for.
    EventsDropped = 24,
    /// Sessions that never saw an answer, ended to make room for a new
    /// one in a full table (counted in `sessions_deleted` too).
    SessionsEarlyDropped = 25,
    /// No port block left for a subscriber (on its pool address, once it
    /// has one).
    NatPoolExhausted = 26,
    /// A subscriber's blocks were all full and it may hold no more.
    NatSubscriberPorts = 27,
    /// A subscriber had its most sessions.
    NatSubscriberSessions = 28,
    /// A subscriber opened its most new sessions in a second.
    NatSubscriberRate = 29,
}

impl WorkerCounter {
    pub const COUNT: usize = 30;
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
        Self::IcmpErrorsSuppressed,
        Self::SessionsCreated,
        Self::SessionsDeleted,
        Self::SessionsRefused,
        Self::NatAllocFailures,
        Self::HandoffsReceived,
        Self::RejectsSent,
        Self::Loops,
        Self::OffloadsInstalled,
        Self::OffloadsRemoved,
        Self::OffloadMapFull,
        Self::OffloadFailures,
        Self::EventsDropped,
        Self::SessionsEarlyDropped,
        Self::NatPoolExhausted,
        Self::NatSubscriberPorts,
        Self::NatSubscriberSessions,
        Self::NatSubscriberRate,
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
            Self::IcmpErrorsSuppressed => "icmp_errors_suppressed",
            Self::SessionsCreated => "sessions_created",
            Self::SessionsDeleted => "sessions_deleted",
            Self::SessionsRefused => "sessions_refused",
            Self::NatAllocFailures => "nat_alloc_failures",
            Self::HandoffsReceived => "handoffs_received",
            Self::RejectsSent => "rejects_sent",
            Self::Loops => "loops",
            Self::OffloadsInstalled => "offloads_installed",
            Self::OffloadsRemoved => "offloads_removed",
            Self::OffloadMapFull => "offload_map_full",
            Self::OffloadFailures => "offload_failures",
            Self::EventsDropped => "events_dropped",
            Self::SessionsEarlyDropped => "sessions_early_dropped",
            Self::NatPoolExhausted => "nat_pool_exhausted",
            Self::NatSubscriberPorts => "nat_subscriber_ports_exceeded",
            Self::NatSubscriberSessions => "nat_subscriber_sessions_exceeded",
            Self::NatSubscriberRate => "nat_subscriber_rate_exceeded",
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

/// Per-worker gauges (values, not totals).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerGauge {
    SessionsActive = 0,
    /// Sessions created in the last whole second.
    CreatedPerSecond = 1,
    DeletedPerSecond = 2,
    /// Sessions the worker's table holds at most.
    SessionsCapacity = 3,
    /// (address, port) pairs of the worker's NAT pool shares bound now,
    /// and in all.
    NatPortsInUse = 4,
    NatPorts = 5,
    /// Pairs released and waiting out the reuse delay.
    NatPortsCooling = 6,
    /// Port blocks held by subscribers, and blocks in all.
    NatBlocksInUse = 7,
    NatBlocks = 8,
    /// Subscribers with a mapping or a session.
    NatSubscribers = 9,
}

impl WorkerGauge {
    pub const COUNT: usize = 10;
    pub const ALL: [Self; Self::COUNT] = [
        Self::SessionsActive,
        Self::CreatedPerSecond,
        Self::DeletedPerSecond,
        Self::SessionsCapacity,
        Self::NatPortsInUse,
        Self::NatPorts,
        Self::NatPortsCooling,
        Self::NatBlocksInUse,
        Self::NatBlocks,
        Self::NatSubscribers,
    ];

    pub const fn family(self) -> &'static str {
        match self {
            Self::SessionsActive => "tandem_sessions_active",
            Self::CreatedPerSecond => "tandem_sessions_created_per_second",
            Self::DeletedPerSecond => "tandem_sessions_deleted_per_second",
            Self::SessionsCapacity => "tandem_sessions_capacity",
            Self::NatPortsInUse => "tandem_nat_ports_in_use",
            Self::NatPorts => "tandem_nat_ports",
            Self::NatPortsCooling => "tandem_nat_ports_cooling",
            Self::NatBlocksInUse => "tandem_nat_blocks_in_use",
            Self::NatBlocks => "tandem_nat_blocks",
            Self::NatSubscribers => "tandem_nat_subscribers",
        }
    }
}

/// A worker's private tally.
#[derive(Debug, Clone)]
pub struct Tally {
    pub counters: [u64; WorkerCounter::COUNT],
    /// Drops by ingress interface slot and reason.
    pub drops: [[u64; DropReason::COUNT]; IFACES],
    pub iface: [[u64; IfaceCounter::COUNT]; IFACES],
    pub gauges: [u64; WorkerGauge::COUNT],
    /// Frames handed to each worker, by owning worker.
    pub handoffs: Vec<u64>,
}

impl Tally {
    /// A zero tally for a node of `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            counters: [0; WorkerCounter::COUNT],
            drops: [[0; DropReason::COUNT]; IFACES],
            iface: [[0; IfaceCounter::COUNT]; IFACES],
            gauges: [0; WorkerGauge::COUNT],
            handoffs: vec![0; workers],
        }
    }

    /// Where gauge `g` sits in a worker's block.
    pub const fn gauge_offset(g: WorkerGauge) -> usize {
        WorkerCounter::COUNT
            + IFACES * DropReason::COUNT
            + IFACES * IfaceCounter::COUNT
            + g as usize
    }

    /// Number of values in a worker's block.
    pub const fn values_len(workers: usize) -> usize {
        WorkerCounter::COUNT
            + IFACES * DropReason::COUNT
            + IFACES * IfaceCounter::COUNT
            + WorkerGauge::COUNT
            + workers
    }

    #[inline]
    pub fn add(&mut self, c: WorkerCounter, n: u64) {
        self.counters[c as usize] += n;
    }

    #[inline]
    pub fn get(&self, c: WorkerCounter) -> u64 {
        self.counters[c as usize]
    }

    #[inline]
    pub fn set(&mut self, g: WorkerGauge, v: u64) {
        self.gauges[g as usize] = v;
    }

    #[inline]
    pub fn drop(&mut self, slot: usize, r: DropReason) {
        self.drops[slot][r as usize] += 1;
    }

    #[inline]
    pub fn iface(&mut self, slot: usize, c: IfaceCounter, n: u64) {
        self.iface[slot][c as usize] += n;
    }

    #[inline]
    pub fn handoff(&mut self, to: usize) {
        self.handoffs[to] += 1;
    }

    /// Every value, in block order (the order [`register`] names them).
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.counters
            .iter()
            .chain(self.drops.iter().flatten())
            .chain(self.iface.iter().flatten())
            .chain(self.gauges.iter())
            .chain(self.handoffs.iter())
            .copied()
    }
}

/// Names one worker's block in `schema` (cache-line aligned) and returns
/// its first slot.
pub fn register(
    schema: &mut Schema,
    worker: usize,
    workers: usize,
    ifnames: &[String],
) -> Result<u32, StatsError> {
    schema.align_block();
    let w = format!("worker={worker}");
    let mut first = None;
    for c in WorkerCounter::ALL {
        let s = schema.push(
            &format!("tandem_worker_{}_total", c.name()),
            &w,
            Kind::Counter,
        )?;
        first.get_or_insert(s);
    }
    for name in ifnames.iter().take(IFACES) {
        for r in DropReason::ALL {
            schema.push(
                "tandem_drops_total",
                &format!("{w},iface={name},reason={}", r.name()),
                Kind::Counter,
            )?;
        }
    }
    for name in ifnames.iter().take(IFACES) {
        for c in IfaceCounter::ALL {
            schema.push(
                &format!("tandem_iface_{}_total", c.name()),
                &format!("{w},iface={name}"),
                Kind::Counter,
            )?;
        }
    }
    for g in WorkerGauge::ALL {
        schema.push(g.family(), &w, Kind::Gauge)?;
    }
    for to in 0..workers {
        schema.push(
            "tandem_handoffs_total",
            &format!("{w},to={to}"),
            Kind::Counter,
        )?;
    }
    Ok(first.expect("at least one counter"))
}

/// A worker's block in the segment.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    seg: Arc<SegmentWriter>,
    first: u32,
    len: usize,
}

impl WorkerStats {
    pub fn new(seg: Arc<SegmentWriter>, first: u32, workers: usize) -> Self {
        Self {
            seg,
            first,
            len: Tally::values_len(workers),
        }
    }

    fn slots(&self) -> &[AtomicU64] {
        self.seg.values(self.first, self.len)
    }

    /// Relaxed stores of every value: this worker is the block's only writer.
    pub fn publish(&self, t: &Tally) {
        for (a, v) in self.slots().iter().zip(t.values()) {
            a.store(v, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_order_matches_tally_order() {
        let mut schema = Schema::new();
        let names = vec!["in0".to_owned(), "out0".to_owned()];
        let first = register(&mut schema, 3, 4, &names).unwrap();
        assert_eq!(first % 8, 0, "block starts on a cache line");
        assert_eq!(schema.entries().len(), Tally::values_len(4));
        let mut t = Tally::new(4);
        t.handoff(2);
        t.set(WorkerGauge::SessionsActive, 9);
        t.add(WorkerCounter::Punted, 5);
        t.drop(1, DropReason::BadChecksum);
        t.iface(0, IfaceCounter::TxBytes, 77);
        let p = std::env::temp_dir().join(format!("tandem-ctr-{}", std::process::id()));
        let seg = Arc::new(SegmentWriter::create(&p, &schema, 1, 4, 0).unwrap());
        WorkerStats::new(Arc::clone(&seg), first, 4).publish(&t);
        let r = tandem_control::stats::SegmentReader::open(&p).unwrap();
        let find = |name: &str, labels: &str| {
            let e = r
                .entries
                .iter()
                .find(|e| e.name == name && e.labels == labels)
                .unwrap_or_else(|| panic!("{name}{{{labels}}}"));
            r.value(e.slot)
        };
        assert_eq!(find("tandem_worker_punted_total", "worker=3"), 5);
        assert_eq!(
            find(
                "tandem_drops_total",
                "worker=3,iface=out0,reason=bad_checksum"
            ),
            1
        );
        assert_eq!(
            find("tandem_iface_tx_bytes_total", "worker=3,iface=in0"),
            77
        );
        assert_eq!(find("tandem_handoffs_total", "worker=3,to=2"), 1);
        assert_eq!(find("tandem_sessions_active", "worker=3"), 9);
        let at = first + Tally::gauge_offset(WorkerGauge::SessionsActive) as u32;
        assert_eq!(r.value(at), 9, "the gauge's offset names its slot");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn every_family_has_help() {
        let mut schema = Schema::new();
        register(&mut schema, 0, 2, &["a".into(), "b".into()]).unwrap();
        for e in schema.entries() {
            assert!(tandem_control::stats::help(&e.name).is_some(), "{}", e.name);
        }
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

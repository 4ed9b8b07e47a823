//! The replication counters and gauges in the stats segment: where they
//! sit, and what the sync thread publishes there every 100 ms.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use tandem_control::{
    stats::{Kind, Schema, StatsError},
    sync::{Role, Stats, SyncState},
};

use super::SyncThread;

/// Digest hashes are published in 48 bits: exact as a Prometheus sample.
pub const DIGEST_HASH_BITS: u32 = 48;

/// Gauges published beside the [`Stats`] counters, in this order.
const GAUGES: [(&str, &str, Kind); 19] = [
    ("tandem_sync_role", "", Kind::Gauge),
    ("tandem_sync_connection_up", "", Kind::Gauge),
    ("tandem_sync_state", "", Kind::Gauge),
    ("tandem_sync_add_pending", "", Kind::Gauge),
    ("tandem_sync_add_per_second", "", Kind::Gauge),
    ("tandem_sync_delete_per_second", "", Kind::Gauge),
    ("tandem_sync_swept_total", "", Kind::Counter),
    ("tandem_sync_digest_sessions", "", Kind::Gauge),
    ("tandem_sync_digest_hash", "", Kind::Gauge),
    ("tandem_sync_peer_digest_sessions", "", Kind::Gauge),
    ("tandem_sync_peer_digest_hash", "", Kind::Gauge),
    ("tandem_sync_digest_match", "", Kind::Gauge),
    ("tandem_sync_lag_p50_us", "", Kind::Gauge),
    ("tandem_sync_lag_p99_us", "", Kind::Gauge),
    ("tandem_sync_oldest_unacked_ms", "", Kind::Gauge),
    ("tandem_sync_stalled", "", Kind::Gauge),
    ("tandem_sync_config_refused", "", Kind::Gauge),
    ("tandem_sync_digest_differs_ms", "", Kind::Gauge),
    ("tandem_sync_diverged", "", Kind::Gauge),
];
/// Records waiting this long for the peer's acknowledgement: replication
/// is stalled (a health warning).
const STALLED: Duration = Duration::from_secs(5);
/// Digests that differ this long with the active steady (automatic
/// resyncs included): the standby does not hold the master's sessions and
/// repair cannot fix it (a health warning).
const DIVERGED: Duration = Duration::from_secs(10);

/// Where the replication counters sit in the segment.
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    first: u32,
}

/// Registers the replication entries: one per [`Stats`] field
/// (`tandem_sync_<field>_total`), the gauges, and info entries whose
/// labels name the local and the peer's sync address and the interface
/// that holds the local one (`-` when none does yet).
pub fn register(
    schema: &mut Schema,
    local: SocketAddr,
    peer: SocketAddr,
    interface: &str,
) -> Result<Slots, StatsError> {
    schema.align_block();
    let mut first = None;
    for name in Stats::NAMES {
        let s = schema.push(&format!("tandem_sync_{name}_total"), "", Kind::Counter)?;
        first.get_or_insert(s);
    }
    for (name, labels, kind) in GAUGES {
        schema.push(name, labels, kind)?;
    }
    for (name, a) in [
        ("tandem_sync_local_info", local),
        ("tandem_sync_remote_info", peer),
    ] {
        schema.push(
            name,
            &format!("address={},port={}", a.ip(), a.port()),
            Kind::Gauge,
        )?;
    }
    schema.push(
        "tandem_sync_interface_info",
        &format!("interface={interface}"),
        Kind::Gauge,
    )?;
    Ok(Slots {
        first: first.expect("Stats has fields"),
    })
}

impl SyncThread {
    /// The node's replication counters: the link's, plus what the
    /// workers did with the records.
    pub(super) fn stats(&self) -> (Stats, u64) {
        let mut st = self.driver.stats.clone();
        st.repair_sent += self.parked_sent;
        let mut swept = 0;
        for p in &self.hub.ports {
            let c = &p.counts;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            st.send_overflow += get(&c.overflow);
            st.repair_sent += get(&c.repaired);
            st.repair_abandoned += get(&c.abandoned);
            st.repair_ended += get(&c.ended_unsent);
            swept += get(&c.swept);
            if self.role == Role::Backup {
                st.add_completed += get(&c.installed);
                st.delete_completed += get(&c.removed);
                st.delete_not_found += get(&c.not_found);
            }
        }
        (st, swept)
    }

    pub(super) fn publish(&mut self, rates: bool) {
        let (st, swept) = self.stats();
        let n = Stats::NAMES.len();
        let values = self.segment.values(self.slots.first, n + GAUGES.len());
        for (slot, v) in values.iter().zip(st.values()) {
            slot.store(v, Ordering::Relaxed);
        }
        let state = match self.driver.sync_state() {
            SyncState::Off => 0,
            SyncState::Cold => 1,
            SyncState::Hot => 2,
        };
        if let Some(sh) = &self.node {
            sh.sync_state.store(state as u8, Ordering::Relaxed);
        }
        let gauges = [
            u64::from(self.role == Role::Backup),
            u64::from(self.driver.is_up()),
            state,
            self.driver.add_pending(),
        ];
        for (i, v) in gauges.into_iter().enumerate() {
            values[n + i].store(v, Ordering::Relaxed);
        }
        if rates {
            let (adds, dels) = match self.role {
                Role::Active => (st.add_sent, st.delete_sent),
                Role::Backup => (st.add_completed, st.delete_completed),
            };
            values[n + 4].store(adds - self.rate_base.0.min(adds), Ordering::Relaxed);
            values[n + 5].store(dels - self.rate_base.1.min(dels), Ordering::Relaxed);
            self.rate_base = (adds, dels);
        }
        values[n + 6].store(swept, Ordering::Relaxed);
        let mask = (1u64 << DIGEST_HASH_BITS) - 1;
        let own = self.digest();
        values[n + 7].store(own.sessions, Ordering::Relaxed);
        values[n + 8].store(own.hash & mask, Ordering::Relaxed);
        let peer = self.peer_digest.unwrap_or_default();
        values[n + 9].store(peer.sessions, Ordering::Relaxed);
        values[n + 10].store(peer.hash & mask, Ordering::Relaxed);
        values[n + 11].store(u64::from(self.peer_digest == Some(own)), Ordering::Relaxed);
        if state == 2 {
            self.config_refused = false;
        }
        let waited = self.driver.oldest_unacked();
        let differs = self.differs_since.map_or(Duration::ZERO, |t| t.elapsed());
        let late = [
            self.driver.lag_us(0.5),
            self.driver.lag_us(0.99),
            u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            u64::from(waited >= STALLED),
            u64::from(self.config_refused),
            u64::try_from(differs.as_millis()).unwrap_or(u64::MAX),
            u64::from(differs >= DIVERGED),
        ];
        for (i, v) in late.into_iter().enumerate() {
            values[n + 12 + i].store(v, Ordering::Relaxed);
        }
        // The info entries' value: 1.
        for i in 0..3 {
            self.segment
                .value(self.slots.first + (n + GAUGES.len() + i) as u32)
                .store(1, Ordering::Relaxed);
        }
    }
}

//! A snapshot of one instance's segment and the sums the views print.

use tandem_control::stats::{Entry, NodeState, STALE_AFTER_NS, SegmentReader, StatsError, unix_ns};

/// Values of one moment (or per-second rates, for `-w`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub instance: String,
    pub pid: u32,
    pub workers: u32,
    pub start_ns: u64,
    pub heartbeat_ns: u64,
    pub now_ns: u64,
    pub entries: Vec<Entry>,
    /// Indexed by slot: counters since the last `clear statistics`.
    pub values: Vec<u64>,
    /// Indexed by slot: raw, monotonic values (for Prometheus and rates).
    pub raw: Vec<u64>,
    /// Unix ns of the last clear, 0 if never.
    pub cleared_ns: u64,
    pub state: Option<NodeState>,
}

impl Snapshot {
    pub fn take(instance: &str) -> Result<Self, StatsError> {
        let r = SegmentReader::open_instance(instance)?;
        Ok(Self::from_reader(instance, &r))
    }

    pub fn from_reader(instance: &str, r: &SegmentReader) -> Self {
        let raw = r.values();
        Self {
            instance: instance.to_owned(),
            pid: r.pid,
            workers: r.workers,
            start_ns: r.start_ns,
            heartbeat_ns: r.heartbeat_ns(),
            now_ns: unix_ns(),
            entries: r.entries.clone(),
            values: {
                // Clearing moves counters' baselines; a gauge is a value,
                // shown as it is.
                let base = r.baselines();
                let mut v: Vec<u64> = raw
                    .iter()
                    .zip(&base)
                    .map(|(v, b)| v.saturating_sub(*b))
                    .collect();
                for e in &r.entries {
                    if e.kind == tandem_control::stats::Kind::Gauge
                        && let Some(x) = raw.get(e.slot as usize)
                    {
                        v[e.slot as usize] = *x;
                    }
                }
                v
            },
            raw,
            cleared_ns: r.cleared_ns(),
            state: r.read_state().and_then(|w| NodeState::decode(&w)),
        }
    }

    pub fn heartbeat_age_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.heartbeat_ns)
    }

    /// Heartbeat age in seconds (precision loss only past 2^52 ns).
    #[expect(clippy::cast_precision_loss, reason = "ages are far below 2^52 ns")]
    pub fn heartbeat_age_s(&self) -> f64 {
        self.heartbeat_age_ns() as f64 / 1e9
    }

    pub fn stale(&self) -> bool {
        self.heartbeat_age_ns() > STALE_AFTER_NS
    }

    pub fn uptime_s(&self) -> u64 {
        self.now_ns.saturating_sub(self.start_ns) / 1_000_000_000
    }

    /// Sum of `family` over the entries whose labels include every
    /// `(key, value)` in `filter`.
    pub fn sum(&self, family: &str, filter: &[(&str, &str)]) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.name == family && filter.iter().all(|(k, v)| e.label(k) == Some(v)))
            .map(|e| self.values[e.slot as usize])
            .fold(0, u64::saturating_add)
    }

    /// Distinct values of label `key` on `family`, in first-seen order.
    pub fn label_values(&self, family: &str, key: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.entries.iter().filter(|e| e.name == family) {
            if let Some(v) = e.label(key)
                && !out.iter().any(|o| o == v)
            {
                out.push(v.to_owned());
            }
        }
        out
    }

    /// Per-second rates between `earlier` and `self` for counters; gauges
    /// keep their current value. Same segment layout assumed (checked by
    /// entry count).
    #[must_use]
    pub fn rates_since(&self, earlier: &Self) -> Self {
        let dt = self.now_ns.saturating_sub(earlier.now_ns).max(1);
        let mut out = self.clone();
        if earlier.raw.len() == self.raw.len() {
            for e in &self.entries {
                if e.kind == tandem_control::stats::Kind::Counter {
                    let i = e.slot as usize;
                    let d = self.raw[i].saturating_sub(earlier.raw[i]);
                    out.values[i] = u64::try_from(u128::from(d) * 1_000_000_000 / u128::from(dt))
                        .unwrap_or(u64::MAX);
                }
            }
        }
        out
    }

    /// The interface names, from the state or else from the counters.
    pub fn interface_names(&self) -> Vec<String> {
        match &self.state {
            Some(s) => s.interfaces.iter().map(|i| i.name.clone()).collect(),
            None => self.label_values("tandem_iface_rx_packets_total", "iface"),
        }
    }
}

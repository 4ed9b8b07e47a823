//! The redundancy driver's entries in the stats segment: where they sit
//! ([`Slots`]), what they are called ([`register`]) and how the driver
//! writes them ([`HaThread::publish`]).

use std::sync::atomic::Ordering;

use tandem_control::{
    config::Config,
    ha::{
        fsm::{Check, Monitored, State, Transition},
        heartbeat::PathStats,
        probe::ProbeState,
    },
    stats::{Kind, Schema, StatsError},
};

use super::{HaThread, address::moving_addresses, heartbeat::paths, probe::probed};
use crate::fib::Fib;

/// Where the redundancy entries sit in the segment.
#[derive(Clone, Debug)]
pub struct Slots {
    gauges: u32,
    events: u32,
    checks: u32,
    paths: u32,
    vips: u32,
    probes: u32,
}

/// The gauges, in slot order.
const GAUGES: [&str; 17] = [
    "tandem_ha_state",
    "tandem_ha_healthy",
    "tandem_ha_peer_alive",
    "tandem_ha_peer_state",
    "tandem_ha_peer_healthy",
    "tandem_ha_peer_priority",
    "tandem_ha_peer_node_id",
    "tandem_ha_peer_sync_state",
    "tandem_ha_mastership_changes_total",
    "tandem_ha_sync_state",
    "tandem_ha_peer_sessions",
    "tandem_ha_unsynced_ms",
    "tandem_ha_unsynced_warning",
    "tandem_ha_takeovers_without_hot_total",
    "tandem_ha_insecure",
    "tandem_ha_lease_lapses_total",
    "tandem_ha_key_mismatch",
];

/// Per-path values, in slot order.
const PATH_STATS: [(&str, Kind); 14] = [
    ("tandem_ha_heartbeats_sent_total", Kind::Counter),
    ("tandem_ha_heartbeat_send_errors_total", Kind::Counter),
    ("tandem_ha_heartbeats_received_total", Kind::Counter),
    ("tandem_ha_heartbeats_missed_total", Kind::Counter),
    ("tandem_ha_heartbeats_rejected_total", Kind::Counter),
    ("tandem_ha_heartbeats_acked_total", Kind::Counter),
    ("tandem_ha_path_down_total", Kind::Counter),
    ("tandem_ha_rtt_us", Kind::Gauge),
    ("tandem_ha_srtt_us", Kind::Gauge),
    ("tandem_ha_rttvar_us", Kind::Gauge),
    ("tandem_ha_worst_delay_us", Kind::Gauge),
    ("tandem_ha_path_alive", Kind::Gauge),
    ("tandem_ha_heartbeats_unproven_total", Kind::Counter),
    ("tandem_ha_heartbeats_auth_failed_total", Kind::Counter),
];

fn path_values(s: &PathStats, alive: bool) -> [u64; 14] {
    [
        s.sent,
        s.send_errors,
        s.received,
        s.missed,
        s.rejected,
        s.acked,
        s.down_count,
        s.rtt_us,
        s.srtt_us,
        s.rttvar_us,
        s.worst_us,
        u64::from(alive),
        s.unproven,
        s.auth_failed,
    ]
}

/// Names the redundancy entries: gauges, event tables, one failure gauge
/// per check (`check=...,name=...`), per-path heartbeat statistics and
/// one entry per moving address (1 while this node holds it).
pub fn register(
    schema: &mut Schema,
    cfg: &Config,
    fib: &Fib,
    ifnames: &[String],
    workers: usize,
) -> Result<Option<Slots>, StatsError> {
    let (Some(r), Some(s)) = (&cfg.redundancy, &cfg.sync) else {
        return Ok(None);
    };
    schema.align_block();
    let gauges = schema.push(GAUGES[0], "", Kind::Gauge)?;
    for g in &GAUGES[1..] {
        let kind = if g.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        schema.push(g, "", kind)?;
    }
    schema.push(
        "tandem_ha_local_info",
        &format!(
            "group={},node_id={},priority={},preempt={}",
            s.group, s.node_id, r.priority, r.preempt
        ),
        Kind::Gauge,
    )?;
    let mut events = None;
    for t in Transition::ALL {
        for count in ["received", "ignored"] {
            let at = schema.push(
                "tandem_ha_transition_events_total",
                &format!("event={},count={count}", t.key()),
                Kind::Counter,
            )?;
            events.get_or_insert(at);
        }
    }
    for m in Monitored::ALL {
        for count in ["received", "ignored"] {
            schema.push(
                "tandem_ha_monitored_events_total",
                &format!("event={},count={count}", m.key()),
                Kind::Counter,
            )?;
        }
    }
    let mut checks = None;
    for (id, name) in ifnames.iter().enumerate() {
        let at = schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={id},name={name}", Check::Link.name()),
            Kind::Gauge,
        )?;
        checks.get_or_insert(at);
    }
    for w in 0..workers {
        schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={w},name=worker{w}", Check::Stall.name()),
            Kind::Gauge,
        )?;
    }
    for (side, name, _, _) in probed(cfg, fib, ifnames) {
        schema.push(
            "tandem_ha_check_failed",
            &format!("check={},id={side},name={name}", Check::Probe.name()),
            Kind::Gauge,
        )?;
    }
    let mut first_path = None;
    for (name, local, peer) in paths(cfg, fib) {
        let labels = format!("path={name},local={},peer={}", local.ip(), peer.ip());
        for (stat, kind) in PATH_STATS {
            let at = schema.push(stat, &labels, kind)?;
            first_path.get_or_insert(at);
        }
    }
    let mut vips = None;
    for (kind, m) in moving_addresses(cfg, ifnames, &[0; 2]) {
        let at = schema.push(
            "tandem_ha_address_held",
            &format!("address={},interface={},kind={kind}", m.address, m.ifname),
            Kind::Gauge,
        )?;
        vips.get_or_insert(at);
    }
    let mut probes = None;
    for (_, name, test, targets) in probed(cfg, fib, ifnames) {
        let test = test.map_or_else(String::new, |a| a.to_string());
        let labels = format!("interface={name},testaddr={test}");
        let at = schema.push("tandem_ha_probe_state", &labels, Kind::Gauge)?;
        probes.get_or_insert(at);
        schema.push("tandem_ha_probe_fdt_ms", &labels, Kind::Gauge)?;
        for t in targets {
            let labels = format!("interface={name},target={t}");
            for (stat, kind) in PROBE_STATS {
                schema.push(stat, &labels, kind)?;
            }
        }
    }
    Ok(Some(Slots {
        gauges,
        events: events.expect("transitions"),
        checks: checks.expect("two interfaces"),
        paths: first_path.expect("the sync path"),
        vips: vips.unwrap_or(0),
        probes: probes.unwrap_or(0),
    }))
}

/// Per-target probe values, in slot order.
const PROBE_STATS: [(&str, Kind); 5] = [
    ("tandem_ha_probes_sent_total", Kind::Counter),
    ("tandem_ha_probes_answered_total", Kind::Counter),
    ("tandem_ha_probes_lost_total", Kind::Counter),
    ("tandem_ha_probe_rtt_avg_us", Kind::Gauge),
    ("tandem_ha_probe_rtt_dev_us", Kind::Gauge),
];

impl HaThread {
    pub(super) fn publish(&self) {
        let seg = &self.segment;
        let peer = self.fsm.peer();
        let (unsynced, warning) = self.unsynced();
        let gauges = [
            self.fsm.state() as u64,
            u64::from(self.fsm.healthy()),
            u64::from(self.peer_alive),
            peer.map_or(u64::from(u8::MAX), |p| p.state as u64),
            peer.map_or(0, |p| u64::from(p.healthy)),
            peer.map_or(0, |p| u64::from(p.priority)),
            peer.map_or(0, |p| u64::from(p.node_id)),
            u64::from(self.peer_sync),
            self.changes,
            u64::from(self.node.sync_state.load(Ordering::Relaxed)),
            self.peer_sessions,
            u64::try_from(unsynced.as_millis()).unwrap_or(u64::MAX),
            u64::from(warning),
            self.fsm.counts.takeovers_without_hot,
            u64::from(self.me.keys.is_empty()),
            self.lease.lapses,
            u64::from(self.key_mismatch),
        ];
        let vals = seg.values(self.slots.gauges, GAUGES.len() + 1);
        for (slot, v) in vals.iter().zip(gauges) {
            slot.store(v, Ordering::Relaxed);
        }
        vals[GAUGES.len()].store(1, Ordering::Relaxed);
        let c = &self.fsm.counts;
        let counts: Vec<u64> = c
            .transitions
            .iter()
            .chain(c.monitored.iter())
            .flatten()
            .copied()
            .collect();
        for (slot, v) in seg
            .values(self.slots.events, counts.len())
            .iter()
            .zip(counts)
        {
            slot.store(v, Ordering::Relaxed);
        }
        let failed: Vec<(Check, u16)> = self.fsm.failed().collect();
        let checks = (0..self.links.len())
            .map(|i| (Check::Link, i as u16))
            .chain((0..self.workers.len()).map(|i| (Check::Stall, i as u16)))
            .chain(self.probes.iter().map(|p| (Check::Probe, p.side)));
        let n = self.links.len() + self.workers.len() + self.probes.len();
        for (slot, c) in seg.values(self.slots.checks, n).iter().zip(checks) {
            slot.store(u64::from(failed.contains(&c)), Ordering::Relaxed);
        }
        let mut at = self.slots.probes;
        for p in &self.probes {
            let state = if p.socket.is_some() {
                p.prober.state()
            } else {
                ProbeState::Disabled
            };
            let vals = seg.values(at, 2);
            vals[0].store(state as u64, Ordering::Relaxed);
            vals[1].store(self.fdt_ms.into(), Ordering::Relaxed);
            at += 2;
            for t in &p.prober.targets {
                let v = [
                    t.sent,
                    t.answered,
                    t.lost,
                    t.srtt_us.unwrap_or(0),
                    t.rttvar_us.unwrap_or(0),
                ];
                for (slot, v) in seg.values(at, PROBE_STATS.len()).iter().zip(v) {
                    slot.store(v, Ordering::Relaxed);
                }
                at += PROBE_STATS.len() as u32;
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            let first = self.slots.paths + (i * PATH_STATS.len()) as u32;
            let vals = seg.values(first, PATH_STATS.len());
            for (slot, v) in vals.iter().zip(path_values(&p.stats, p.alive)) {
                slot.store(v, Ordering::Relaxed);
            }
        }
        let held = u64::from(self.fsm.state() == State::Master);
        if !self.addresses.is_empty() {
            for slot in seg.values(self.slots.vips, self.addresses.len()) {
                slot.store(held, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tandem_control::stats;

    use super::*;

    #[test]
    fn every_entry_has_help_and_the_lab_config_registers_all_of_them() {
        let text = include_str!("../../../deploy/lab/a.toml");
        let cfg = Config::parse(Path::new("a.toml"), text).unwrap();
        let mut schema = Schema::new();
        let names = ["in0".to_owned(), "out0".to_owned()];
        let fib = Fib::default();
        let slots = register(&mut schema, &cfg, &fib, &names, 2)
            .unwrap()
            .unwrap();
        for e in schema.entries() {
            assert!(stats::help(&e.name).is_some(), "{}", e.name);
        }
        let count = |n: &str| schema.entries().iter().filter(|e| e.name == n).count();
        // Two paths (sync0 and in0), two links, two workers and two probed
        // interfaces checked,
        // two VIPs and one pool address.
        assert_eq!(count("tandem_ha_heartbeats_sent_total"), 2);
        assert_eq!(count("tandem_ha_check_failed"), 6);
        assert_eq!(count("tandem_ha_probes_sent_total"), 2);
        assert_eq!(count("tandem_ha_address_held"), 3);
        assert_eq!(count("tandem_ha_transition_events_total"), 8);
        assert_eq!(count("tandem_ha_monitored_events_total"), 12);
        assert!(slots.paths > slots.checks && slots.vips > slots.paths);
        assert!(
            register(
                &mut Schema::new(),
                &Config::parse(
                    Path::new("x"),
                    "[interfaces]\ninside = \"a\"\noutside = \"b\"\n"
                )
                .unwrap(),
                &fib,
                &names,
                2
            )
            .unwrap()
            .is_none()
        );
    }
}

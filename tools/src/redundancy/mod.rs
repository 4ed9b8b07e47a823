//! The redundancy views, read from the `tandem_ha_*` entries of the
//! segment: `redundancy-group [terse|brief|extensive]` (modelled on `show
//! services redundancy-group`, shared/reference/001), `peer` (the
//! heartbeat paths' liveness statistics, laid out like the DPD block of
//! reference 003) and the ipmpstat-style group, address and target modes
//! (reference 004).

use tandem_control::ha::{
    fsm::{Monitored, State, Transition},
    heartbeat::PathStats,
    probe::ProbeState,
};

mod rows;
mod show;

pub use self::{
    rows::{
        ADDRESS_FIELDS, GROUP_FIELDS, PROBE_DEFAULT, PROBE_FIELDS, TARGET_FIELDS, address_rows,
        fetch_probes, group_rows, probe_row, probe_state, target_rows,
    },
    show::{Level, peer_json, peer_text, rg_json, rg_text},
};
use crate::{ha::Ha, model::Snapshot};

/// A failed health check: (check, id, name).
pub type Failed = (String, String, String);

/// One heartbeat path's figures.
#[derive(Debug, Clone)]
pub struct PathView {
    pub name: String,
    pub local: String,
    pub peer: String,
    pub alive: bool,
    pub stats: PathStats,
}

/// One probe target's figures.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub address: String,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub avg_us: u64,
    pub dev_us: u64,
}

/// One probed interface.
#[derive(Debug, Clone)]
pub struct ProbeView {
    pub interface: String,
    pub testaddr: String,
    pub state: ProbeState,
    pub fdt_ms: u64,
    pub targets: Vec<TargetView>,
}

/// An address that follows mastership.
#[derive(Debug, Clone)]
pub struct AddressView {
    pub address: String,
    pub interface: String,
    pub kind: String,
    pub held: bool,
}

/// Everything the redundancy views print.
#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "the segment's flag gauges, one field each"
)]
pub struct Rg {
    pub instance: String,
    pub group: String,
    pub node_id: String,
    pub priority: String,
    pub preempt: String,
    pub state: State,
    pub healthy: bool,
    pub peer_alive: bool,
    pub peer_state: Option<State>,
    pub peer_healthy: bool,
    pub peer_priority: u64,
    pub peer_node_id: u64,
    pub peer_sync: u64,
    pub mastership_changes: u64,
    /// This node's sync state (0 off, 1 cold, 2 hot).
    pub own_sync: u64,
    pub peer_sessions: u64,
    /// How long a live standby has lacked Hot, and whether that is a
    /// warning.
    pub unsynced_ms: u64,
    pub unsynced_warning: bool,
    pub takeovers_without_hot: u64,
    pub insecure: bool,
    /// Heartbeats from the peer's address fail authentication.
    pub key_mismatch: bool,
    /// (label, key, received, ignored)
    pub transitions: Vec<(&'static str, &'static str, u64, u64)>,
    pub monitored: Vec<(&'static str, &'static str, u64, u64)>,
    /// Every check: ((check, id, name), failed).
    pub checks: Vec<(Failed, bool)>,
    pub paths: Vec<PathView>,
    pub probes: Vec<ProbeView>,
    pub addresses: Vec<AddressView>,
    pub sync: Option<Ha>,
}

fn state_of(v: u64) -> Option<State> {
    u8::try_from(v).ok().and_then(State::from_u8)
}

impl Rg {
    /// `None` when the instance runs no redundancy state machine.
    pub fn read(s: &Snapshot) -> Option<Self> {
        let info = s
            .entries
            .iter()
            .find(|e| e.name == "tandem_ha_local_info")?;
        let label = |k: &str| info.label(k).unwrap_or("-").to_owned();
        let g = |family: &str| s.sum(family, &[]);
        let events = |family: &str, key: &'static str| {
            (
                s.sum(family, &[("event", key), ("count", "received")]),
                s.sum(family, &[("event", key), ("count", "ignored")]),
            )
        };
        let by = |family: &str, k: &str, v: &str| s.sum(family, &[(k, v)]);
        let checks = s
            .entries
            .iter()
            .filter(|e| e.name == "tandem_ha_check_failed")
            .map(|e| {
                let l = |k: &str| e.label(k).unwrap_or_default().to_owned();
                (
                    (l("check"), l("id"), l("name")),
                    s.values[e.slot as usize] != 0,
                )
            })
            .collect();
        let paths = s
            .label_values("tandem_ha_path_alive", "path")
            .into_iter()
            .map(|p| {
                let st = |f: &str| by(f, "path", &p);
                let e = s
                    .entries
                    .iter()
                    .find(|e| e.name == "tandem_ha_path_alive" && e.label("path") == Some(&p));
                let l = |k: &str| e.and_then(|e| e.label(k)).unwrap_or_default().to_owned();
                PathView {
                    local: l("local"),
                    peer: l("peer"),
                    alive: st("tandem_ha_path_alive") != 0,
                    stats: PathStats {
                        sent: st("tandem_ha_heartbeats_sent_total"),
                        send_errors: st("tandem_ha_heartbeat_send_errors_total"),
                        received: st("tandem_ha_heartbeats_received_total"),
                        missed: st("tandem_ha_heartbeats_missed_total"),
                        rejected: st("tandem_ha_heartbeats_rejected_total"),
                        acked: st("tandem_ha_heartbeats_acked_total"),
                        down_count: st("tandem_ha_path_down_total"),
                        rtt_us: st("tandem_ha_rtt_us"),
                        srtt_us: st("tandem_ha_srtt_us"),
                        rttvar_us: st("tandem_ha_rttvar_us"),
                        worst_us: st("tandem_ha_worst_delay_us"),
                        unproven: st("tandem_ha_heartbeats_unproven_total"),
                        auth_failed: st("tandem_ha_heartbeats_auth_failed_total"),
                    },
                    name: p,
                }
            })
            .collect();
        let probes = s
            .entries
            .iter()
            .filter(|e| e.name == "tandem_ha_probe_state")
            .map(|e| {
                let iface = e.label("interface").unwrap_or_default().to_owned();
                let targets = s
                    .entries
                    .iter()
                    .filter(|t| {
                        t.name == "tandem_ha_probes_sent_total"
                            && t.label("interface") == Some(&iface)
                    })
                    .map(|t| {
                        let addr = t.label("target").unwrap_or_default().to_owned();
                        let v = |f: &str| {
                            s.sum(
                                f,
                                &[("interface", iface.as_str()), ("target", addr.as_str())],
                            )
                        };
                        TargetView {
                            sent: v("tandem_ha_probes_sent_total"),
                            answered: v("tandem_ha_probes_answered_total"),
                            lost: v("tandem_ha_probes_lost_total"),
                            avg_us: v("tandem_ha_probe_rtt_avg_us"),
                            dev_us: v("tandem_ha_probe_rtt_dev_us"),
                            address: addr,
                        }
                    })
                    .collect();
                ProbeView {
                    testaddr: e.label("testaddr").unwrap_or_default().to_owned(),
                    state: ProbeState::from_u64(s.values[e.slot as usize]),
                    fdt_ms: by("tandem_ha_probe_fdt_ms", "interface", &iface),
                    targets,
                    interface: iface,
                }
            })
            .collect();
        let addresses = s
            .entries
            .iter()
            .filter(|e| e.name == "tandem_ha_address_held")
            .map(|e| {
                let l = |k: &str| e.label(k).unwrap_or_default().to_owned();
                AddressView {
                    address: l("address"),
                    interface: l("interface"),
                    kind: l("kind"),
                    held: s.values[e.slot as usize] != 0,
                }
            })
            .collect();
        Some(Self {
            instance: s.instance.clone(),
            group: label("group"),
            node_id: label("node_id"),
            priority: label("priority"),
            preempt: label("preempt"),
            state: state_of(g("tandem_ha_state")).unwrap_or(State::Init),
            healthy: g("tandem_ha_healthy") != 0,
            peer_alive: g("tandem_ha_peer_alive") != 0,
            peer_state: state_of(g("tandem_ha_peer_state")),
            peer_healthy: g("tandem_ha_peer_healthy") != 0,
            peer_priority: g("tandem_ha_peer_priority"),
            peer_node_id: g("tandem_ha_peer_node_id"),
            peer_sync: g("tandem_ha_peer_sync_state"),
            mastership_changes: g("tandem_ha_mastership_changes_total"),
            own_sync: g("tandem_ha_sync_state"),
            peer_sessions: g("tandem_ha_peer_sessions"),
            unsynced_ms: g("tandem_ha_unsynced_ms"),
            unsynced_warning: g("tandem_ha_unsynced_warning") != 0,
            takeovers_without_hot: g("tandem_ha_takeovers_without_hot_total"),
            insecure: g("tandem_ha_insecure") != 0,
            key_mismatch: g("tandem_ha_key_mismatch") != 0,
            transitions: Transition::ALL
                .iter()
                .map(|t| {
                    let (r, i) = events("tandem_ha_transition_events_total", t.key());
                    (t.label(), t.key(), r, i)
                })
                .collect(),
            monitored: Monitored::ALL
                .iter()
                .map(|m| {
                    let (r, i) = events("tandem_ha_monitored_events_total", m.key());
                    (m.label(), m.key(), r, i)
                })
                .collect(),
            checks,
            paths,
            probes,
            addresses,
            sync: Ha::read(s),
        })
    }

    /// The failed checks.
    pub fn failed(&self) -> impl Iterator<Item = &Failed> {
        self.checks.iter().filter(|(_, f)| *f).map(|(c, _)| c)
    }

    /// Interfaces down or failing their probes, each once.
    pub fn failed_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (check, _, name) in self.failed() {
            if check != "worker-stall" && !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }

    fn links_down(&self) -> usize {
        self.failed().filter(|(c, _, _)| c == "link-down").count()
    }

    /// Whether mastership could move now without losing sessions: the
    /// standby's sync (this node's, or the peer's on the MASTER) is Hot.
    pub fn readiness(&self) -> String {
        let (whose, sync) = if self.state == State::Master {
            ("peer sync", self.peer_sync)
        } else {
            ("sync", self.own_sync)
        };
        if !self.peer_alive {
            return "No peer".to_owned();
        }
        if sync == 2 {
            return format!("Ready ({whose} Hot)");
        }
        let name = if sync == 1 { "Cold" } else { "Off" };
        if self.unsynced_ms > 0 {
            format!(
                "Not ready ({whose} {name} for {}.{} s)",
                self.unsynced_ms / 1000,
                self.unsynced_ms % 1000 / 100
            )
        } else {
            format!("Not ready ({whose} {name})")
        }
    }

    /// The health an operator reads: failed (a critical check failed),
    /// warning (replication refused, stalled or diverged: a takeover would
    /// lose sessions), or passed.
    pub fn health(&self) -> &'static str {
        if !self.healthy {
            "failed"
        } else if self
            .sync
            .as_ref()
            .is_some_and(|h| h.config_refused || h.stalled || h.diverged)
        {
            "warning"
        } else {
            "passed"
        }
    }

    /// What every view warns of.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.unsynced_warning {
            w.push(format!(
                "the standby has not been Hot for {} s: a takeover now would lose sessions",
                self.unsynced_ms / 1000
            ));
        }
        if self.key_mismatch {
            w.push(
                "heartbeats from the peer fail authentication: the two nodes' keys differ \
                 (each may take the other for dead)"
                    .to_owned(),
            );
        }
        if let Some(h) = &self.sync {
            if h.config_refused {
                w.push(
                    "sync refused: the two nodes' configurations disagree on what must agree \
                     (service sets, NAT pools and port ranges; tandemd's log names the field)"
                        .to_owned(),
                );
            }
            if h.diverged {
                w.push(format!(
                    "the standby's sessions differ from the master's and have for {} s: \
                     resync and repair have not made it whole",
                    h.digest_differs_ms / 1000
                ));
            }
            if h.stalled {
                w.push(format!(
                    "replication stalled: a record has waited {} ms for the peer's acknowledgement",
                    h.oldest_unacked_ms
                ));
            }
        }
        if self.insecure {
            w.push(
                "no key (insecure = true): heartbeats and sync messages can be forged".to_owned(),
            );
        }
        w
    }

    fn peer_state_name(&self) -> &'static str {
        match (self.peer_alive, self.peer_state) {
            (true, Some(s)) => s.name(),
            _ => "UNKNOWN",
        }
    }

    fn connection(&self) -> &'static str {
        if self.peer_alive {
            "Connected"
        } else {
            "Not connected"
        }
    }

    fn peer_ip(&self) -> String {
        self.sync
            .as_ref()
            .map_or_else(|| "-".to_owned(), |h| h.remote.0.clone())
    }

    fn local_ip(&self) -> String {
        self.sync
            .as_ref()
            .map_or_else(|| "-".to_owned(), |h| h.local.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rg(state: State, failed: &[(&str, &str)]) -> Rg {
        let check = |c: &str, id: &str, n: &str| {
            (
                (c.to_owned(), id.to_owned(), n.to_owned()),
                failed.contains(&(c, n)),
            )
        };
        Rg {
            instance: "a".into(),
            group: "1".into(),
            node_id: "1".into(),
            priority: "200".into(),
            preempt: "false".into(),
            state,
            healthy: failed.is_empty(),
            peer_alive: true,
            peer_state: Some(State::Standby),
            peer_healthy: true,
            peer_priority: 100,
            peer_node_id: 2,
            peer_sync: 2,
            mastership_changes: 1,
            own_sync: 0,
            peer_sessions: 12,
            unsynced_ms: 0,
            unsynced_warning: false,
            takeovers_without_hot: 0,
            insecure: false,
            key_mismatch: false,
            transitions: vec![("Acquire mastership auto", "acquire_auto", 1, 0)],
            monitored: vec![("Link-down", "link_down", 2, 1)],
            checks: vec![
                check("link-down", "0", "in0"),
                check("link-down", "1", "out0"),
                check("worker-stall", "0", "worker0"),
                check("probe-failure", "1", "out0"),
            ],
            paths: Vec::new(),
            probes: vec![ProbeView {
                interface: "out0".into(),
                testaddr: "198.18.2.2".into(),
                state: ProbeState::Ok,
                fdt_ms: 1000,
                targets: vec![TargetView {
                    address: "198.18.2.10".into(),
                    sent: 5,
                    answered: 5,
                    lost: 0,
                    avg_us: 40,
                    dev_us: 10,
                }],
            }],
            addresses: vec![AddressView {
                address: "198.18.2.1".into(),
                interface: "out0".into(),
                kind: "vip".into(),
                held: state == State::Master,
            }],
            sync: None,
        }
    }

    #[test]
    fn group_state_and_the_interface_brackets() {
        let ok = group_rows(&rg(State::Master, &[]));
        assert_eq!(ok[0], ["a", "1", "ok", "1.00s", "in0 out0"]);
        let standby = group_rows(&rg(State::Standby, &[]));
        assert_eq!(standby[0][4], "(in0) (out0)");
        let degraded = group_rows(&rg(State::Master, &[("probe-failure", "out0")]));
        assert_eq!(
            (&*degraded[0][2], &*degraded[0][4]),
            ("degraded", "in0 [out0]")
        );
        let failed = group_rows(&rg(
            State::StandbyWarned,
            &[("link-down", "in0"), ("link-down", "out0")],
        ));
        assert_eq!((&*failed[0][2], &*failed[0][4]), ("failed", "[in0] [out0]"));
        // A stalled worker is not an interface.
        let stalled = group_rows(&rg(State::Master, &[("worker-stall", "worker0")]));
        assert_eq!(stalled[0][2], "ok");
    }

    #[test]
    fn addresses_are_up_and_routed_only_on_the_master() {
        let m = address_rows(&rg(State::Master, &[]));
        assert_eq!(m[0], ["198.18.2.1", "up", "a", "out0", "out0"]);
        let s = address_rows(&rg(State::Standby, &[]));
        assert_eq!(s[0], ["198.18.2.1", "down", "a", "", ""]);
        let t = target_rows(&rg(State::Master, &[]));
        assert_eq!(t[0], ["in0", "disabled", "", ""]);
        assert_eq!(t[1], ["out0", "static", "198.18.2.2", "198.18.2.10"]);
    }

    #[test]
    fn the_levels_add_what_the_reference_adds() {
        let r = rg(State::Master, &[("link-down", "out0")]);
        let terse = rg_text(&r, Level::Terse);
        assert!(
            terse.contains("MASTER") && terse.contains("STANDBY"),
            "{terse}"
        );
        assert!(!terse.contains("health status"));
        let brief = rg_text(&r, Level::Brief);
        assert!(
            brief.contains("Redundancy Set health status         : Failed"),
            "{brief}"
        );
        assert!(
            brief.contains("      Failed Interfaces                  : out0\n"),
            "{brief}"
        );
        assert!(!brief.contains("Transition events"));
        let ext = rg_text(&r, Level::Extensive);
        assert!(ext.contains("Transition events"), "{ext}");
        assert!(
            ext.contains("      Link-down                    2                1"),
            "{ext}"
        );
        let j = rg_json(&r);
        assert_eq!(j["local_state"], "MASTER");
        assert_eq!(j["peer_state"], "STANDBY");
        assert_eq!(j["health"], "failed");
        assert_eq!(j["failed_interfaces"], json!(["out0"]));
        assert_eq!(j["monitored_events"]["link_down"]["ignored"], 1);
        assert_eq!(Level::parse(Some("BRIEF")), Ok(Level::Brief));
        assert!(Level::parse(Some("loud")).is_err());
    }
}

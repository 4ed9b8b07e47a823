//! The redundancy views, read from the `tandem_ha_*` entries of the
//! segment: `redundancy-group [terse|brief|extensive]` (modelled on `show
//! services redundancy-group`, shared/reference/001), `peer` (the
//! heartbeat paths' liveness statistics, laid out like the DPD block of
//! reference 003) and the ipmpstat-style group, address and target modes
//! (reference 004).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use tandem_control::ha::{
    fsm::{Monitored, State, Transition},
    heartbeat::PathStats,
    probe::ProbeState,
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

/// Output level of `redundancy-group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Terse,
    Brief,
    Extensive,
}

impl Level {
    pub fn parse(w: Option<&str>) -> Result<Self, String> {
        match w.map(str::to_ascii_lowercase).as_deref() {
            None | Some("terse") => Ok(Self::Terse),
            Some("brief") => Ok(Self::Brief),
            Some("extensive") => Ok(Self::Extensive),
            Some(o) => Err(format!(
                "unknown level {o:?} (expected terse, brief or extensive)"
            )),
        }
    }
}

fn kv(o: &mut String, indent: usize, key: &str, value: impl std::fmt::Display) {
    let pad = 41usize.saturating_sub(indent);
    let _ = writeln!(o, "{:indent$}{key:<pad$}: {value}", "");
}

/// `redundancy-group` text at `level`.
pub fn rg_text(r: &Rg, level: Level) -> String {
    let mut o = String::new();
    kv(&mut o, 0, "Redundancy Group ID", &r.group);
    kv(
        &mut o,
        2,
        "Number of peer RG connections",
        u8::from(r.peer_alive),
    );
    kv(&mut o, 2, "Local RG IP", r.local_ip());
    if level == Level::Extensive {
        let sum = |f: fn(&PathView) -> u64| r.paths.iter().map(f).sum::<u64>();
        kv(&mut o, 2, "Heartbeat sent count", sum(|p| p.stats.sent));
        kv(
            &mut o,
            2,
            "Heartbeat receive count",
            sum(|p| p.stats.received),
        );
        kv(&mut o, 2, "Heartbeat missed count", sum(|p| p.stats.missed));
        kv(
            &mut o,
            2,
            "Heartbeat rejected count",
            sum(|p| p.stats.rejected),
        );
        kv(
            &mut o,
            2,
            "Heartbeat path down count",
            sum(|p| p.stats.down_count),
        );
        kv(&mut o, 2, "Mastership change count", r.mastership_changes);
    }
    if level == Level::Terse {
        let _ = writeln!(
            o,
            "  {:<10}{:<19}{:<18}{:<18}Status",
            "RS ID", "Local RS state", "Peer RS state", "Peer RG IP"
        );
        let _ = writeln!(
            o,
            "  {:<10}{:<19}{:<18}{:<18}{}",
            1,
            r.state.name(),
            r.peer_state_name(),
            r.peer_ip(),
            r.connection()
        );
        return o;
    }
    kv(&mut o, 2, "Redundancy Set ID", 1);
    kv(&mut o, 4, "Connection status", r.connection());
    kv(&mut o, 4, "Redundancy Set state", r.state.name());
    kv(&mut o, 4, "Redundancy Set peer state", r.peer_state_name());
    kv(&mut o, 4, "Peer RG IP", r.peer_ip());
    kv(
        &mut o,
        4,
        "Redundancy Set health status",
        if r.healthy { "Passed" } else { "Failed" },
    );
    let failed: Vec<&Failed> = r.failed().collect();
    if !failed.is_empty() {
        kv(
            &mut o,
            6,
            "Number of Monitored interface down",
            r.links_down(),
        );
        kv(
            &mut o,
            6,
            "Failed Interfaces",
            r.failed_interfaces().join(" "),
        );
        for (check, _, name) in failed {
            let _ = writeln!(o, "        {name}: {check}");
        }
    }
    if let Some(h) = &r.sync {
        let _ = writeln!(
            o,
            "      {:<22}{:<18}{:<11}{:<15}Synchronization",
            "Sync interface", "Type", "Role", "Connection"
        );
        let _ = writeln!(
            o,
            "      {:<22}{:<18}{:<11}{:<15}{}",
            h.interface, "Inter-chassis", h.role, h.connection, h.synchronization
        );
    }
    if level == Level::Extensive {
        let table = |o: &mut String, title: &str, rows: &[(&str, &str, u64, u64)]| {
            let _ = writeln!(o, "\n    {title:<31}{:<17}Ignored", "Received");
            for (label, _, rcv, ign) in rows {
                let _ = writeln!(o, "      {label:<29}{rcv:<17}{ign}");
            }
        };
        table(&mut o, "Transition events", &r.transitions);
        table(&mut o, "Monitored events", &r.monitored);
    }
    o
}

fn events_json(rows: &[(&str, &str, u64, u64)]) -> Value {
    Value::Object(
        rows.iter()
            .map(|(_, k, r, i)| ((*k).to_owned(), json!({"received": r, "ignored": i})))
            .collect(),
    )
}

/// `redundancy-group --json` (every level: the JSON has it all).
pub fn rg_json(r: &Rg) -> Value {
    let mut m = Map::new();
    m.insert("group".into(), json!(r.group.parse::<u64>().ok()));
    m.insert("node_id".into(), json!(r.node_id.parse::<u64>().ok()));
    m.insert("priority".into(), json!(r.priority.parse::<u64>().ok()));
    m.insert("preempt".into(), json!(r.preempt == "true"));
    m.insert("local_state".into(), json!(r.state.name()));
    m.insert("peer_state".into(), json!(r.peer_state_name()));
    m.insert("peer_connected".into(), json!(r.peer_alive));
    m.insert("local_address".into(), json!(r.local_ip()));
    m.insert("peer_address".into(), json!(r.peer_ip()));
    m.insert(
        "health".into(),
        json!(if r.healthy { "passed" } else { "failed" }),
    );
    m.insert("monitored_interfaces_down".into(), json!(r.links_down()));
    m.insert("failed_interfaces".into(), json!(r.failed_interfaces()));
    m.insert(
        "failed_checks".into(),
        Value::Array(
            r.failed()
                .map(|(c, id, n)| json!({"check": c, "id": id.parse::<u64>().ok(), "name": n}))
                .collect(),
        ),
    );
    m.insert("mastership_changes".into(), json!(r.mastership_changes));
    if let Some(h) = &r.sync {
        m.insert(
            "sync".into(),
            json!({
                "interface": h.interface,
                "role": h.role,
                "connection": h.connection.to_lowercase(),
                "synchronization": h.synchronization.to_lowercase(),
            }),
        );
    }
    m.insert("transition_events".into(), events_json(&r.transitions));
    m.insert("monitored_events".into(), events_json(&r.monitored));
    Value::Object(m)
}

fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// `peer`: who the peer is and each heartbeat path's statistics.
pub fn peer_text(r: &Rg) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Peer {} (node {}), group {}",
        r.peer_ip(),
        if r.peer_node_id == 0 {
            "?".to_owned()
        } else {
            r.peer_node_id.to_string()
        },
        r.group
    );
    let _ = writeln!(
        o,
        "  State: {}, Health: {}, Priority: {}, Liveness: {}",
        r.peer_state_name(),
        if !r.peer_alive {
            "unknown"
        } else if r.peer_healthy {
            "passed"
        } else {
            "failed"
        },
        r.peer_priority,
        if r.peer_alive { "alive" } else { "dead" }
    );
    for p in &r.paths {
        let _ = writeln!(
            o,
            "  Path {}: Local: {}, Remote: {}, {}",
            p.name,
            p.local,
            p.peer,
            if p.alive { "up" } else { "down" }
        );
        let _ = writeln!(o, "   Heartbeat statistics:");
        for (label, v) in [
            ("Heartbeats sent", p.stats.sent.to_string()),
            ("Heartbeats received", p.stats.received.to_string()),
            ("Heartbeat echoes received", p.stats.acked.to_string()),
            ("Heartbeats missed", p.stats.missed.to_string()),
            ("Heartbeats rejected", p.stats.rejected.to_string()),
            ("Send errors", p.stats.send_errors.to_string()),
            ("Path down count", p.stats.down_count.to_string()),
            ("Round trip, last", format!("{} msec", ms(p.stats.rtt_us))),
            (
                "Round trip, smoothed",
                format!("{} msec", ms(p.stats.srtt_us)),
            ),
            (
                "Round trip, deviation",
                format!("{} msec", ms(p.stats.rttvar_us)),
            ),
            (
                "Worst case heartbeat delay",
                format!("{} msec", ms(p.stats.worst_us)),
            ),
        ] {
            let _ = writeln!(o, "    {:<28}{v:>20}", format!("{label}:"));
        }
    }
    o
}

pub fn peer_json(r: &Rg) -> Value {
    json!({
        "peer_address": r.peer_ip(),
        "peer_node_id": r.peer_node_id,
        "peer_state": r.peer_state_name(),
        "peer_alive": r.peer_alive,
        "peer_healthy": r.peer_healthy,
        "peer_priority": r.peer_priority,
        "peer_sync_state": match r.peer_sync { 2 => "hot", 1 => "cold", _ => "off" },
        "paths": r.paths.iter().map(|p| json!({
            "path": p.name,
            "local": p.local,
            "peer": p.peer,
            "alive": p.alive,
            "sent": p.stats.sent,
            "received": p.stats.received,
            "acked": p.stats.acked,
            "missed": p.stats.missed,
            "rejected": p.stats.rejected,
            "send_errors": p.stats.send_errors,
            "path_down": p.stats.down_count,
            "rtt_us": p.stats.rtt_us,
            "srtt_us": p.stats.srtt_us,
            "rttvar_us": p.stats.rttvar_us,
            "worst_delay_us": p.stats.worst_us,
        })).collect::<Vec<_>>(),
    })
}

/// Group mode fields (-g).
pub const GROUP_FIELDS: [&str; 5] = ["GROUP", "GROUPNAME", "STATE", "FDT", "INTERFACES"];

/// ipmpstat's FDT: seconds with two decimals.
fn fdt(ms: u64) -> String {
    format!("{}.{:02}s", ms / 1000, (ms % 1000) / 10)
}

/// Whether an interface is usable: its link is up and its probes (if
/// any) have not failed.
fn usable(r: &Rg, iface: &str) -> bool {
    !r.failed()
        .any(|(c, _, n)| n == iface && c != "worker-stall")
}

/// The monitored interfaces, in id order.
fn interfaces(r: &Rg) -> Vec<String> {
    r.checks
        .iter()
        .filter(|((c, _, _), _)| c == "link-down")
        .map(|((_, _, n), _)| n.clone())
        .collect()
}

/// One row: GROUP is the instance, GROUPNAME the redundancy group id;
/// STATE ok (every interface usable), degraded (some), failed (none);
/// INTERFACES lists active ones bare, usable ones of a node that is not
/// MASTER in parentheses (functioning, not used), unusable ones in
/// brackets.
pub fn group_rows(r: &Rg) -> Vec<Vec<String>> {
    let all = interfaces(r);
    let ok: Vec<&String> = all.iter().filter(|i| usable(r, i)).collect();
    let state = if ok.len() == all.len() {
        "ok"
    } else if ok.is_empty() {
        "failed"
    } else {
        "degraded"
    };
    let master = r.state == State::Master;
    let mut list: Vec<String> = Vec::new();
    if master {
        list.extend(ok.iter().map(|i| (*i).clone()));
    } else {
        list.extend(ok.iter().map(|i| format!("({i})")));
    }
    list.extend(
        all.iter()
            .filter(|i| !usable(r, i))
            .map(|i| format!("[{i}]")),
    );
    let fdt = r
        .probes
        .iter()
        .find(|p| p.state != ProbeState::Disabled)
        .map_or_else(String::new, |p| fdt(p.fdt_ms));
    vec![vec![
        r.instance.clone(),
        r.group.clone(),
        state.to_owned(),
        fdt,
        list.join(" "),
    ]]
}

/// Address mode fields (-a).
pub const ADDRESS_FIELDS: [&str; 5] = ["ADDRESS", "STATE", "GROUP", "INBOUND", "OUTBOUND"];

/// One row per address that follows mastership: up while this node holds
/// it; INBOUND and OUTBOUND name its interface while held and usable.
pub fn address_rows(r: &Rg) -> Vec<Vec<String>> {
    r.addresses
        .iter()
        .map(|a| {
            let via = if a.held && usable(r, &a.interface) {
                a.interface.clone()
            } else {
                String::new()
            };
            vec![
                a.address.clone(),
                if a.held { "up" } else { "down" }.to_owned(),
                r.instance.clone(),
                via.clone(),
                via,
            ]
        })
        .collect()
}

/// Target mode fields (-t).
pub const TARGET_FIELDS: [&str; 4] = ["INTERFACE", "MODE", "TESTADDR", "TARGETS"];

/// One row per monitored interface; MODE `static` (targets from the
/// configuration) or `disabled` (not probed, or no test address).
pub fn target_rows(r: &Rg) -> Vec<Vec<String>> {
    interfaces(r)
        .into_iter()
        .map(|i| match r.probes.iter().find(|p| p.interface == i) {
            Some(p) if p.state != ProbeState::Disabled => vec![
                i,
                "static".to_owned(),
                p.testaddr.clone(),
                p.targets
                    .iter()
                    .map(|t| t.address.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ],
            _ => vec![i, "disabled".to_owned(), String::new(), String::new()],
        })
        .collect()
}

/// The PROBE field of `-i`: the interface's probe state.
pub fn probe_state(r: &Rg, iface: &str) -> &'static str {
    r.probes
        .iter()
        .find(|p| p.interface == iface)
        .map_or("disabled", |p| p.state.name())
}

/// Probe mode fields (-p); RTTAVG and RTTDEV only when asked for.
pub const PROBE_FIELDS: [&str; 8] = [
    "TIME",
    "PROBE",
    "INTERFACE",
    "TARGET",
    "NETRTT",
    "RTT",
    "RTTAVG",
    "RTTDEV",
];
pub const PROBE_DEFAULT: &str = "time,probe,interface,target,netrtt,rtt";

/// One `-p` row; TIME is relative to `start_ns` (negative for probes sent
/// before), round trips in ms with two decimals, empty when lost.
pub fn probe_row(p: &tandem_control::ha::probe::ProbeRow, start_ns: u64) -> Vec<String> {
    // Centiseconds, signed: a probe sent before the start is negative.
    let cs = (i128::from(p.sent_ns) - i128::from(start_ns)) / 10_000_000;
    let sign = if cs < 0 { "-" } else { "" };
    let cs = cs.unsigned_abs();
    let secs = |us: Option<u64>| {
        us.map_or_else(String::new, |u| {
            format!("{}.{:02}ms", u / 1000, (u % 1000) / 10)
        })
    };
    vec![
        format!("{sign}{}.{:02}s", cs / 100, cs % 100),
        p.probe.to_string(),
        p.interface.clone(),
        p.target.to_string(),
        secs(p.net_rtt_us),
        secs(p.rtt_us),
        secs(p.rtt_avg_us),
        secs(p.rtt_dev_us),
    ]
}

/// The finished probes numbered `from` on, asked of the daemon, and the
/// number to ask from next.
pub fn fetch_probes(
    instance: &str,
    from: Option<u64>,
) -> Result<(Vec<tandem_control::ha::probe::ProbeRow>, u64), String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let path = tandem_control::ctl::socket_path(instance);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "instance {instance}: cannot reach tandemd at {}: {e}",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(
        s,
        "{}",
        tandem_control::ctl::Request::ShowProbes { from }.as_line()
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut rows = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        if let Some(e) = line.strip_prefix("error: ") {
            return Err(format!("tandemd: {e}"));
        }
        if let Some(n) = line.strip_prefix("end ") {
            let next = n
                .trim()
                .parse()
                .map_err(|_| format!("bad answer: {line:?}"))?;
            return Ok((rows, next));
        }
        rows.push(serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?);
    }
    Err("tandemd closed the connection before the end of the list".into())
}

#[cfg(test)]
mod tests {
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

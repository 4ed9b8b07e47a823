//! `redundancy-group [terse|brief|extensive]` and `peer`, as text laid
//! out like the reference documents and as JSON.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{Failed, PathView, Rg};

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
        kv(&mut o, 2, "Takeovers without Hot", r.takeovers_without_hot);
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
        warn(&mut o, r);
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
        match r.health() {
            "failed" => "Failed",
            "warning" => "Warning",
            _ => "Passed",
        },
    );
    kv(&mut o, 4, "Takeover readiness", r.readiness());
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
    warn(&mut o, r);
    o
}

/// The warnings, one line each, last.
fn warn(o: &mut String, r: &Rg) {
    for w in r.warnings() {
        let _ = writeln!(o, "  Warning: {w}");
    }
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
    m.insert("health".into(), json!(r.health()));
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
    m.insert("sync_state".into(), json!(sync_key(r.own_sync)));
    m.insert("peer_sync_state".into(), json!(sync_key(r.peer_sync)));
    m.insert("peer_sessions".into(), json!(r.peer_sessions));
    m.insert("takeover_readiness".into(), json!(r.readiness()));
    m.insert("unsynced_ms".into(), json!(r.unsynced_ms));
    m.insert("unsynced_warning".into(), json!(r.unsynced_warning));
    m.insert(
        "takeovers_without_hot".into(),
        json!(r.takeovers_without_hot),
    );
    m.insert("insecure".into(), json!(r.insecure));
    m.insert("key_mismatch".into(), json!(r.key_mismatch));
    m.insert("warnings".into(), json!(r.warnings()));
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

fn sync_key(v: u64) -> &'static str {
    match v {
        2 => "hot",
        1 => "cold",
        _ => "off",
    }
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
            ("Heartbeats awaiting proof", p.stats.unproven.to_string()),
            ("Authentication failures", p.stats.auth_failed.to_string()),
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
        "peer_sync_state": sync_key(r.peer_sync),
        "peer_sessions": r.peer_sessions,
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
            "unproven": p.stats.unproven,
            "auth_failed": p.stats.auth_failed,
            "send_errors": p.stats.send_errors,
            "path_down": p.stats.down_count,
            "rtt_us": p.stats.rtt_us,
            "srtt_us": p.stats.srtt_us,
            "rttvar_us": p.stats.rttvar_us,
            "worst_delay_us": p.stats.worst_us,
        })).collect::<Vec<_>>(),
    })
}

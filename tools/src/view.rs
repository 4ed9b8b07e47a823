//! `tandemstat statistics`: the data-path counters, show-style or JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};
use tandem_control::stats::{IfaceRole, LinkState, XSK_STATS, XdpAttach};

use crate::model::Snapshot;

/// Session counters per worker (JSON keys; `tandem_worker_<key>_total`).
const SESSION_COUNTERS: [&str; 6] = [
    "sessions_created",
    "sessions_deleted",
    "sessions_refused",
    "nat_alloc_failures",
    "handoffs_received",
    "rejects_sent",
];

/// The fast path's own counters: (JSON key, XDP verdict). The frames it
/// forwarded are also in the interfaces' counters (`path="fast"`).
const FAST_VERDICTS: [(&str, &str); 7] = [
    ("forwarded", "fast_forwarded"),
    ("forwarded_bytes", "fast_forwarded_bytes"),
    ("punted_tcp_flags", "fast_punt_flags"),
    ("punted_ttl", "fast_punt_ttl"),
    ("punted_too_big", "fast_punt_too_big"),
    ("punted_header", "fast_punt_header"),
    ("redirect_failed", "fast_redirect_failed"),
];

/// The workers' offload counters (`tandem_worker_KEY_total`).
const FAST_WORKER_COUNTERS: [&str; 4] = [
    "offloads_installed",
    "offloads_removed",
    "offload_map_full",
    "offload_failures",
];

/// Session gauges per worker: (JSON key, family).
const SESSION_GAUGES: [(&str, &str); 3] = [
    ("sessions_active", "tandem_sessions_active"),
    (
        "sessions_created_per_second",
        "tandem_sessions_created_per_second",
    ),
    (
        "sessions_deleted_per_second",
        "tandem_sessions_deleted_per_second",
    ),
];

/// Worker counters in display order: (JSON key, column title).
const WORKER_COLUMNS: [(&str, &str); 8] = [
    ("rx_packets", "Rx packets"),
    ("tx_packets", "Tx packets"),
    ("forwarded", "Forwarded"),
    ("icmp_errors_sent", "ICMP errors"),
    ("punted", "Punted"),
    ("rx_batches", "Rx batches"),
    ("idle_polls", "Idle polls"),
    ("fill_short", "Fill short"),
];

pub fn role_str(r: IfaceRole) -> &'static str {
    match r {
        IfaceRole::Inside => "inside",
        IfaceRole::Outside => "outside",
    }
}

pub fn link_str(l: LinkState) -> &'static str {
    match l {
        LinkState::Up => "up",
        LinkState::Down => "down",
        LinkState::Unknown => "unknown",
    }
}

pub fn xdp_str(x: XdpAttach) -> &'static str {
    match x {
        XdpAttach::None => "none",
        XdpAttach::Native => "native",
        XdpAttach::Generic => "generic",
    }
}

fn iface_drops(s: &Snapshot, name: &str) -> u64 {
    s.sum("tandem_drops_total", &[("iface", name)])
}

/// The JSON document (keys are the snake_case forms of the human fields).
pub fn json(s: &Snapshot) -> Value {
    let interfaces: Vec<Value> = s
        .interface_names()
        .iter()
        .map(|name| {
            let st = s
                .state
                .as_ref()
                .and_then(|st| st.interfaces.iter().find(|i| &i.name == name));
            let f = [("iface", name.as_str())];
            let fast = [("iface", name.as_str()), ("path", "fast")];
            json!({
                "name": name,
                "role": st.map(|i| role_str(i.role)),
                "link": st.map(|i| link_str(i.link)),
                "xdp": st.map(|i| xdp_str(i.xdp)),
                "queues": st.map(|i| i.queues),
                "rx_packets": s.sum("tandem_iface_rx_packets_total", &f),
                "tx_packets": s.sum("tandem_iface_tx_packets_total", &f),
                "rx_bytes": s.sum("tandem_iface_rx_bytes_total", &f),
                "tx_bytes": s.sum("tandem_iface_tx_bytes_total", &f),
                "drops": iface_drops(s, name),
                "fast_path_rx_packets": s.sum("tandem_iface_rx_packets_total", &fast),
                "fast_path_tx_packets": s.sum("tandem_iface_tx_packets_total", &fast),
                "fast_path_rx_bytes": s.sum("tandem_iface_rx_bytes_total", &fast),
                "fast_path_tx_bytes": s.sum("tandem_iface_tx_bytes_total", &fast),
            })
        })
        .collect();
    let workers: Vec<Value> = (0..s.workers)
        .map(|w| {
            let ws = w.to_string();
            let f = [("worker", ws.as_str())];
            let mut o = serde_json::Map::new();
            o.insert("worker".into(), json!(w));
            for (key, _) in WORKER_COLUMNS {
                o.insert(
                    key.into(),
                    json!(s.sum(&format!("tandem_worker_{key}_total"), &f)),
                );
            }
            for key in ["rx_bytes", "tx_bytes", "tx_wakeups", "punt_errors"] {
                o.insert(
                    key.into(),
                    json!(s.sum(&format!("tandem_worker_{key}_total"), &f)),
                );
            }
            o.insert("drops".into(), json!(s.sum("tandem_drops_total", &f)));
            for key in SESSION_COUNTERS {
                o.insert(
                    key.into(),
                    json!(s.sum(&format!("tandem_worker_{key}_total"), &f)),
                );
            }
            for (key, family) in SESSION_GAUGES {
                o.insert(key.into(), json!(s.sum(family, &f)));
            }
            let mut to = serde_json::Map::new();
            for t in s.label_values("tandem_handoffs_total", "to") {
                to.insert(
                    t.clone(),
                    json!(s.sum("tandem_handoffs_total", &[("worker", &ws), ("to", &t)])),
                );
            }
            o.insert("handoffs_to".into(), Value::Object(to));
            Value::Object(o)
        })
        .collect();
    let mut xdp = serde_json::Map::new();
    for v in s.label_values("tandem_xdp_verdicts_total", "verdict") {
        let n = s.sum("tandem_xdp_verdicts_total", &[("verdict", &v)]);
        xdp.insert(v, json!(n));
    }
    let mut fast = serde_json::Map::new();
    for (key, verdict) in FAST_VERDICTS {
        fast.insert(
            key.into(),
            json!(s.sum("tandem_xdp_verdicts_total", &[("verdict", verdict)])),
        );
    }
    for key in FAST_WORKER_COUNTERS {
        fast.insert(
            key.into(),
            json!(s.sum(&format!("tandem_worker_{key}_total"), &[])),
        );
    }
    let mut events = serde_json::Map::new();
    for sink in ["syslog", "ipfix"] {
        let f = [("sink", sink)];
        events.insert(
            format!("{sink}_sent"),
            json!(s.sum("tandem_events_sent_total", &f)),
        );
        events.insert(
            format!("{sink}_send_errors"),
            json!(s.sum("tandem_events_send_errors_total", &f)),
        );
    }
    events.insert(
        "ipfix_messages".into(),
        json!(s.sum("tandem_events_ipfix_messages_total", &[])),
    );
    events.insert(
        "dropped".into(),
        json!(s.sum("tandem_worker_events_dropped_total", &[])),
    );
    let mut drops = serde_json::Map::new();
    for r in s.label_values("tandem_drops_total", "reason") {
        drops.insert(
            r.clone(),
            json!(s.sum("tandem_drops_total", &[("reason", &r)])),
        );
    }
    json!({
        "instance": s.instance,
        "pid": s.pid,
        "uptime_s": s.uptime_s(),
        "heartbeat_age_s": s.heartbeat_age_s(),
        "stale": s.stale(),
        "forward": s.state.as_ref().map(|st| st.forward),
        "cleared_at_unix_s": (s.cleared_ns != 0).then_some(s.cleared_ns / 1_000_000_000),
        "interfaces": interfaces,
        "workers": workers,
        "xdp": xdp,
        "fast_path": fast,
        "events": events,
        "drops": drops,
        "sessions": {
            "active": s.sum("tandem_sessions_active", &[]),
            "created": s.sum("tandem_worker_sessions_created_total", &[]),
            "deleted": s.sum("tandem_worker_sessions_deleted_total", &[]),
            "refused": s.sum("tandem_worker_sessions_refused_total", &[]),
            "nat_alloc_failures": s.sum("tandem_worker_nat_alloc_failures_total", &[]),
            "handoffs": s.sum("tandem_handoffs_total", &[]),
        },
        "sockets": sockets(s),
    })
}

fn sockets(s: &Snapshot) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for e in s
        .entries
        .iter()
        .filter(|e| e.name.starts_with("tandem_xsk_"))
    {
        let (Some(iface), Some(queue)) = (e.label("iface"), e.label("queue")) else {
            continue;
        };
        if seen.contains(&(iface, queue)) {
            continue;
        }
        seen.push((iface, queue));
        let mut o = serde_json::Map::new();
        o.insert("interface".into(), json!(iface));
        o.insert("queue".into(), json!(queue.parse::<u32>().unwrap_or(0)));
        for st in XSK_STATS {
            o.insert(
                st.into(),
                json!(s.sum(
                    &format!("tandem_xsk_{st}_total"),
                    &[("iface", iface), ("queue", queue)]
                )),
            );
        }
        out.push(Value::Object(o));
    }
    out
}

/// The show-style text.
pub fn text(s: &Snapshot, rates: bool) -> String {
    let mut o = String::new();
    let unit = if rates { " (per second)" } else { "" };
    let _ = writeln!(
        o,
        "Instance: {}, PID: {}, Uptime: {}, Workers: {}, Forwarding: {}{}",
        s.instance,
        s.pid,
        hms(s.uptime_s()),
        s.workers,
        match s.state.as_ref().map(|st| st.forward) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "--",
        },
        unit
    );
    if s.cleared_ns != 0 {
        let _ = writeln!(
            o,
            "Counters cleared {} ago",
            hms(s.now_ns.saturating_sub(s.cleared_ns) / 1_000_000_000)
        );
    }
    let _ = writeln!(o, "\nInterfaces:");
    let _ = writeln!(
        o,
        "  {:<10} {:<8} {:<8} {:<8} {:>14} {:>14} {:>16} {:>16} {:>12}",
        "Interface",
        "Role",
        "Link",
        "XDP",
        "Rx packets",
        "Tx packets",
        "Rx bytes",
        "Tx bytes",
        "Drops"
    );
    let doc = json(s);
    for v in doc["interfaces"].as_array().into_iter().flatten() {
        let t = |k: &str| v[k].as_str().unwrap_or("--").to_owned();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "  {:<10} {:<8} {:<8} {:<8} {:>14} {:>14} {:>16} {:>16} {:>12}",
            t("name"),
            t("role"),
            t("link"),
            t("xdp"),
            n("rx_packets"),
            n("tx_packets"),
            n("rx_bytes"),
            n("tx_bytes"),
            n("drops")
        );
    }
    let _ = writeln!(
        o,
        "\nFast path (the XDP program forwarding offloaded sessions; its frames are in the \
         interface counters above):"
    );
    for v in doc["interfaces"].as_array().into_iter().flatten() {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "  {:<10} rx {} packets, {} bytes; tx {} packets, {} bytes",
            v["name"].as_str().unwrap_or("--"),
            n("fast_path_rx_packets"),
            n("fast_path_rx_bytes"),
            n("fast_path_tx_packets"),
            n("fast_path_tx_bytes")
        );
    }
    for (key, _) in FAST_VERDICTS {
        let _ = writeln!(
            o,
            "  {:<24} {:>16}",
            key,
            doc["fast_path"][key].as_u64().unwrap_or(0)
        );
    }
    for key in FAST_WORKER_COUNTERS {
        let _ = writeln!(
            o,
            "  {:<24} {:>16}",
            key,
            doc["fast_path"][key].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(
        o,
        "\nEvent log (session and NAT events; dropped: no room in a worker's ring):"
    );
    for key in [
        "syslog_sent",
        "syslog_send_errors",
        "ipfix_sent",
        "ipfix_send_errors",
        "ipfix_messages",
        "dropped",
    ] {
        let _ = writeln!(
            o,
            "  {:<24} {:>16}",
            key,
            doc["events"][key].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(o, "\nWorkers:");
    let _ = write!(o, "  {:<7}", "Worker");
    for (_, title) in WORKER_COLUMNS {
        let _ = write!(o, " {title:>12}");
    }
    let _ = writeln!(o, " {:>12}", "Drops");
    for w in 0..s.workers {
        let ws = w.to_string();
        let f = [("worker", ws.as_str())];
        let _ = write!(o, "  {w:<7}");
        for (key, _) in WORKER_COLUMNS {
            let _ = write!(
                o,
                " {:>12}",
                s.sum(&format!("tandem_worker_{key}_total"), &f)
            );
        }
        let _ = writeln!(o, " {:>12}", s.sum("tandem_drops_total", &f));
    }
    sessions_text(&mut o, s);
    let _ = writeln!(o, "\nXDP verdicts:");
    for v in s.label_values("tandem_xdp_verdicts_total", "verdict") {
        let _ = writeln!(
            o,
            "  {:<24} {:>16}",
            v,
            s.sum("tandem_xdp_verdicts_total", &[("verdict", &v)])
        );
    }
    let _ = writeln!(o, "\nDrops by reason:");
    for r in s.label_values("tandem_drops_total", "reason") {
        let _ = writeln!(
            o,
            "  {:<24} {:>16}",
            r,
            s.sum("tandem_drops_total", &[("reason", &r)])
        );
    }
    let _ = writeln!(o, "\nAF_XDP sockets (kernel statistics):");
    let _ = write!(o, "  {:<10} {:>5}", "Interface", "Queue");
    for st in XSK_STATS {
        let _ = write!(o, " {st:>24}");
    }
    let _ = writeln!(o);
    for v in sockets(s) {
        let _ = write!(
            o,
            "  {:<10} {:>5}",
            v["interface"].as_str().unwrap_or("--"),
            v["queue"].as_u64().unwrap_or(0)
        );
        for st in XSK_STATS {
            let _ = write!(o, " {:>24}", v[st].as_u64().unwrap_or(0));
        }
        let _ = writeln!(o);
    }
    o
}

/// The sessions block of the text view.
fn sessions_text(out: &mut String, snap: &Snapshot) {
    let _ = writeln!(out, "\nSessions:");
    let _ = writeln!(
        out,
        "  {:<7} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "Worker",
        "Active",
        "Created",
        "Deleted",
        "Refused",
        "Created/s",
        "Deleted/s",
        "NAT failures",
        "Handoffs in",
        "Rejects"
    );
    for w in 0..snap.workers {
        let ws = w.to_string();
        let f = [("worker", ws.as_str())];
        let counter = |k: &str| snap.sum(&format!("tandem_worker_{k}_total"), &f);
        let gauge = |fam: &str| snap.sum(fam, &f);
        let _ = writeln!(
            out,
            "  {w:<7} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}",
            gauge("tandem_sessions_active"),
            counter("sessions_created"),
            counter("sessions_deleted"),
            counter("sessions_refused"),
            gauge("tandem_sessions_created_per_second"),
            gauge("tandem_sessions_deleted_per_second"),
            counter("nat_alloc_failures"),
            counter("handoffs_received"),
            counter("rejects_sent")
        );
    }
}

fn hms(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::hms;

    #[test]
    fn uptime_format() {
        assert_eq!(hms(0), "00:00:00");
        assert_eq!(hms(3661), "01:01:01");
        assert_eq!(hms(90061), "1d 01:01:01");
    }
}

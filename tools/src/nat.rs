//! `tandemstat nat`: the NAT pools, asked of the daemon (per pool address
//! its ports and blocks, the busiest subscribers), with the refusals by
//! reason from the stats segment.

use std::fmt::Write as _;

use serde_json::{Value, json};
use tandem_control::ctl::Request;

use crate::model::Snapshot;

/// The refusal reasons: (JSON key, counter family, what the text says).
pub const REFUSALS: [(&str, &str, &str); 4] = [
    (
        "pool_exhausted",
        "tandem_worker_nat_pool_exhausted_total",
        "Pool exhausted (no free block)",
    ),
    (
        "subscriber_ports_exceeded",
        "tandem_worker_nat_subscriber_ports_exceeded_total",
        "Subscriber port limit",
    ),
    (
        "subscriber_sessions_exceeded",
        "tandem_worker_nat_subscriber_sessions_exceeded_total",
        "Subscriber session limit",
    ),
    (
        "subscriber_rate_exceeded",
        "tandem_worker_nat_subscriber_rate_exceeded_total",
        "Subscriber new-session rate",
    ),
];

/// Asks instance `instance` for its NAT pools: `{"service_sets": [...]}`.
pub fn fetch(instance: &str) -> Result<Value, String> {
    let mut answer = None;
    for line in crate::sessions::ask(instance, &Request::ShowNat)? {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        if let Some(e) = line.strip_prefix("error: ") {
            return Err(format!("tandemd: {e}"));
        }
        if line.starts_with("end ") {
            return answer.ok_or_else(|| "tandemd ended without an answer".to_owned());
        }
        answer = Some(serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?);
    }
    Err("tandemd closed the connection before the end of the answer".into())
}

/// The answer with the refusals added: `failures` (per reason and in
/// all, the counters since start) beside `service_sets`.
pub fn json(answer: &Value, s: &Snapshot) -> Value {
    let mut failures = serde_json::Map::new();
    for (key, family, _) in REFUSALS {
        failures.insert(key.to_owned(), json!(s.sum(family, &[])));
    }
    failures.insert(
        "total".to_owned(),
        json!(s.sum("tandem_worker_nat_alloc_failures_total", &[])),
    );
    json!({
        "service_sets": answer["service_sets"],
        "failures": failures,
    })
}

/// The show-style text of [`json`]'s value.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let sets = v["service_sets"].as_array().cloned().unwrap_or_default();
    if sets.is_empty() {
        out.push_str("No NAT service set.\n");
    }
    for set in &sets {
        let _ = writeln!(out, "Service set: {}", set["name"].as_str().unwrap_or("?"));
        let _ = writeln!(
            out,
            "  Mapping: {}, block size {} ports, {} blocks per subscriber ({} ports), \
             {} sessions per subscriber, {} new sessions/s per subscriber, reuse delay {} s",
            set["mapping"].as_str().unwrap_or("?"),
            n(&set["block_size"]),
            n(&set["blocks_per_subscriber"]),
            n(&set["block_size"]) * n(&set["blocks_per_subscriber"]),
            limit(n(&set["sessions_per_subscriber"])),
            limit(n(&set["subscriber_sessions_per_sec"])),
            n(&set["port_reuse_delay_s"]),
        );
        if let Some(f) = set["filtering"].as_str() {
            let _ = writeln!(out, "  Filtering: {f}");
        }
        for x in set["static"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  Static: {} <-> {}",
                x["inside"].as_str().unwrap_or("?"),
                x["outside"].as_str().unwrap_or("?")
            );
        }
        for f in set["forwards"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  Forward: {} {} -> {}",
                tandem_control::sessions::protocol_name(f["protocol"].as_u64().unwrap_or(0) as u8),
                f["outside"].as_str().unwrap_or("?"),
                f["inside"].as_str().unwrap_or("?")
            );
        }
        let _ = writeln!(out, "  Subscribers: {}", n(&set["subscribers"]));
        let _ = writeln!(
            out,
            "  {:<16} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}",
            "Pool address", "Ports", "In use", "Cooling", "Use %", "Blocks", "In use"
        );
        for a in set["addresses"].as_array().into_iter().flatten() {
            let (ports, used) = (n(&a["ports"]), n(&a["ports_in_use"]));
            let _ = writeln!(
                out,
                "  {:<16} {:>8} {:>8} {:>8} {:>7.1} {:>7} {:>7}",
                a["address"].as_str().unwrap_or("?"),
                ports,
                used,
                n(&a["ports_cooling"]),
                percent(used, ports),
                n(&a["blocks"]),
                n(&a["blocks_in_use"]),
            );
        }
        let top = set["top_subscribers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !top.is_empty() {
            let _ = writeln!(out, "  Top subscribers:");
            let _ = writeln!(
                out,
                "  {:<16} {:<16} {:>7} {:>7} {:>9} {:>6}",
                "Inside", "Pool address", "Blocks", "Ports", "Sessions", "Worker"
            );
            for t in top {
                let _ = writeln!(
                    out,
                    "  {:<16} {:<16} {:>7} {:>7} {:>9} {:>6}",
                    t["inside"].as_str().unwrap_or("?"),
                    t["pool_address"].as_str().unwrap_or("?"),
                    n(&t["blocks"]),
                    n(&t["ports"]),
                    n(&t["sessions"]),
                    n(&t["worker"]),
                );
            }
        }
    }
    let _ = writeln!(out, "Translation failures: {}", n(&v["failures"]["total"]));
    for (key, _, what) in REFUSALS {
        let _ = writeln!(out, "  {what:<32} {}", n(&v["failures"][key]));
    }
    out
}

fn limit(x: u64) -> String {
    if x == 0 {
        "no limit of".to_owned()
    } else {
        x.to_string()
    }
}

#[expect(clippy::cast_precision_loss, reason = "a percentage")]
fn percent(part: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        part as f64 * 100.0 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_field() {
        let v = json!({
            "service_sets": [{
                "name": "lab", "mapping": "endpoint-independent", "block_size": 256,
                "blocks_per_subscriber": 8, "sessions_per_subscriber": 8192,
                "subscriber_sessions_per_sec": 0, "port_reuse_delay_s": 120,
                "subscribers": 2, "filtering": "address-dependent",
                "static": [{"inside": "198.18.1.20", "outside": "198.18.2.120"}],
                "forwards": [{"protocol": 6, "outside": "198.18.2.100:8080",
                              "inside": "198.18.1.10:80"}],
                "addresses": [{"address": "198.18.2.100", "ports": 64512, "ports_in_use": 2048,
                               "ports_cooling": 10, "blocks": 252, "blocks_in_use": 9}],
                "top_subscribers": [{"inside": "198.18.1.10", "pool_address": "198.18.2.100",
                                     "blocks": 8, "ports": 2048, "sessions": 2048, "worker": 1}]
            }],
            "failures": {"pool_exhausted": 0, "subscriber_ports_exceeded": 7,
                         "subscriber_sessions_exceeded": 0, "subscriber_rate_exceeded": 3,
                         "total": 10}
        });
        let t = text(&v);
        for want in [
            "Service set: lab",
            "endpoint-independent, block size 256 ports, 8 blocks per subscriber (2048 ports)",
            "no limit of new sessions/s",
            "Subscribers: 2",
            "Filtering: address-dependent",
            "Static: 198.18.1.20 <-> 198.18.2.120",
            "Forward: TCP 198.18.2.100:8080 -> 198.18.1.10:80",
            "198.18.2.100        64512     2048       10     3.2     252       9",
            "198.18.1.10      198.18.2.100           8    2048      2048      1",
            "Translation failures: 10",
            "Subscriber port limit            7",
            "Subscriber new-session rate      3",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
    }
}

//! Prometheus text exposition (format 0.0.4) of a whole segment, and a
//! minimal `/metrics` server for it.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    time::Duration,
};

use tandem_control::stats::{Kind, LinkState, help};

use crate::model::Snapshot;

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The node's labels: `tandem_instance` names the daemon's instance (not
/// `instance`, which the scrape sets to the target).
fn labels(instance: &str, raw: &str) -> String {
    let mut parts = vec![format!("tandem_instance=\"{}\"", escape_label(instance))];
    for kv in raw.split(',').filter(|s| !s.is_empty()) {
        if let Some((k, v)) = kv.split_once('=') {
            parts.push(format!("{k}=\"{}\"", escape_label(v)));
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// A segment entry's family as Prometheus names it: durations the segment
/// keeps in milliseconds or microseconds (`_ms`, `_us`) are exposed in
/// seconds, the base unit, with the divisor to apply.
pub fn family(name: &str) -> (std::borrow::Cow<'_, str>, u32) {
    for (suffix, div) in [("_ms", 1_000), ("_us", 1_000_000)] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return (format!("{stem}_seconds").into(), div);
        }
    }
    (name.into(), 1)
}

/// The help text of a family exposed in seconds: the segment's says which
/// unit it keeps.
fn help_text(name: &str, div: u32) -> String {
    let text = help(name).unwrap_or("tandem metric.");
    if div == 1 {
        return text.to_owned();
    }
    let text = text
        .trim_end_matches('.')
        .trim_end_matches(", milliseconds")
        .trim_end_matches(", microseconds");
    format!("{text} (seconds).")
}

/// The families every exposition has besides the segment's entries: the
/// daemon's liveness, start and size, and its interfaces.
pub const NODE_FAMILIES: [&str; 6] = [
    "tandem_up",
    "tandem_heartbeat_age_seconds",
    "tandem_start_time_seconds",
    "tandem_workers",
    "tandem_forwarding",
    "tandem_iface_link_up",
];

/// Whether `name` is a family some exposition may carry: a node family,
/// or a segment family (as [`family`] renames it) that has a help text.
pub fn is_family(name: &str) -> bool {
    NODE_FAMILIES.contains(&name)
        || help(name).is_some_and(|_| family(name).1 == 1)
        || name.strip_suffix("_seconds").is_some_and(|stem| {
            help(&format!("{stem}_ms")).is_some() || help(&format!("{stem}_us")).is_some()
        })
}

/// Every metric of the snapshot, families grouped, HELP and TYPE first.
pub fn exposition(s: &Snapshot) -> String {
    let mut o = String::new();
    let inst = labels(&s.instance, "");
    let header = |o: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(o, "# HELP {name} {text}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
    };
    header(
        &mut o,
        "tandem_up",
        "gauge",
        "1 if the daemon's heartbeat is fresh.",
    );
    let _ = writeln!(o, "tandem_up{inst} {}", u8::from(!s.stale()));
    header(
        &mut o,
        "tandem_heartbeat_age_seconds",
        "gauge",
        "Seconds since the daemon last bumped its heartbeat.",
    );
    let _ = writeln!(
        o,
        "tandem_heartbeat_age_seconds{inst} {}",
        s.heartbeat_age_s()
    );
    header(
        &mut o,
        "tandem_start_time_seconds",
        "gauge",
        "Unix time the daemon started.",
    );
    let _ = writeln!(
        o,
        "tandem_start_time_seconds{inst} {}",
        s.start_ns / 1_000_000_000
    );
    header(&mut o, "tandem_workers", "gauge", "Worker threads.");
    let _ = writeln!(o, "tandem_workers{inst} {}", s.workers);
    if let Some(st) = &s.state {
        header(
            &mut o,
            "tandem_forwarding",
            "gauge",
            "1 if the node forwards service traffic.",
        );
        let _ = writeln!(o, "tandem_forwarding{inst} {}", u8::from(st.forward));
        header(
            &mut o,
            "tandem_iface_link_up",
            "gauge",
            "1 if the interface's link is up.",
        );
        for i in &st.interfaces {
            let _ = writeln!(
                o,
                "tandem_iface_link_up{} {}",
                labels(&s.instance, &format!("iface={}", i.name)),
                u8::from(i.link == LinkState::Up)
            );
        }
    }
    let mut families: Vec<&str> = Vec::new();
    for e in &s.entries {
        if !families.contains(&e.name.as_str()) {
            families.push(&e.name);
        }
    }
    for fam in families {
        let mut first = true;
        for e in s.entries.iter().filter(|e| e.name == fam) {
            let (name, div) = family(fam);
            if first {
                let kind = if e.kind == Kind::Gauge {
                    "gauge"
                } else {
                    "counter"
                };
                header(&mut o, &name, kind, &help_text(fam, div));
                first = false;
            }
            let v = s.raw[e.slot as usize];
            let labels = labels(&s.instance, &e.labels);
            if div == 1 {
                let _ = writeln!(o, "{name}{labels} {v}");
            } else {
                #[expect(clippy::cast_precision_loss, reason = "a duration, exact below 2^53")]
                let secs = v as f64 / f64::from(div);
                let _ = writeln!(o, "{name}{labels} {secs}");
            }
        }
    }
    o
}

/// Serves `/metrics` on `listen` until killed; every scrape reads the
/// segment afresh, so a restarted daemon is picked up.
pub fn serve(listen: &str, instance: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    eprintln!(
        "tandemstat: serving /metrics for {instance} on {}",
        l.local_addr()?
    );
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&c).read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = if line.starts_with("GET ") && (path == "/metrics" || path == "/") {
            match Snapshot::take(instance) {
                Ok(s) => ("200 OK", exposition(&s)),
                Err(e) => ("503 Service Unavailable", format!("{e}\n")),
            }
        } else {
            ("404 Not Found", "try /metrics\n".to_owned())
        };
        let _ = write!(
            c,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_quoted_and_escaped() {
        assert_eq!(
            labels("a", "worker=0,reason=x\"y"),
            "{tandem_instance=\"a\",worker=\"0\",reason=\"x\\\"y\"}"
        );
    }

    #[test]
    fn durations_are_exposed_in_seconds() {
        assert_eq!(
            family("tandem_sync_lag_p99_us"),
            ("tandem_sync_lag_p99_seconds".into(), 1_000_000)
        );
        assert_eq!(
            family("tandem_ha_unsynced_ms"),
            ("tandem_ha_unsynced_seconds".into(), 1_000)
        );
        assert_eq!(
            family("tandem_sync_adds_total"),
            ("tandem_sync_adds_total".into(), 1)
        );
        assert_eq!(
            help_text("tandem_ha_rtt_us", 1_000_000),
            "Last heartbeat round trip on a path (seconds)."
        );
    }
}

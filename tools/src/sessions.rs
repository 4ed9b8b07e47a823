//! `tandemstat sessions`: session listings fetched from the daemon's
//! control socket and printed the show-style way.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::{Value, json};
use tandem_control::{
    ctl::{Request, socket_path},
    sessions::{End, Level, Query, Row, endpoint, protocol_name},
};

/// What the daemon answered.
pub enum Answer {
    Rows { rows: Vec<Row>, matched: u64 },
    Count { counts: Value, matched: u64 },
}

/// Sends `req` to instance `instance`'s control socket; the answer's
/// lines follow (10 s at most between two).
pub fn ask(instance: &str, req: &Request) -> Result<std::io::Lines<BufReader<UnixStream>>, String> {
    let path = socket_path(instance);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        format!(
            "instance {instance}: cannot reach tandemd at {}: {e}",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "{}", req.as_line()).map_err(|e| format!("sending the request: {e}"))?;
    Ok(BufReader::new(s).lines())
}

/// Asks instance `instance` for the sessions matching `q`.
pub fn fetch(instance: &str, q: &Query) -> Result<Answer, String> {
    let mut rows = Vec::new();
    let mut counts = None;
    for line in ask(instance, &Request::ShowSessions(q.clone()))? {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        if let Some(e) = line.strip_prefix("error: ") {
            return Err(format!("tandemd: {e}"));
        }
        if let Some(end) = End::parse(&line) {
            return Ok(match counts {
                Some(counts) => Answer::Count {
                    counts,
                    matched: end.matched,
                },
                None => Answer::Rows {
                    rows,
                    matched: end.matched,
                },
            });
        }
        if q.level == Level::Count {
            counts = Some(serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?);
        } else {
            rows.push(serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?);
        }
    }
    Err("tandemd closed the connection before the end of the listing".into())
}

/// JSON for `--json`: `{"count": N, "service_sets": {...}}` for count,
/// else `{"sessions": [...], "matched": N}`.
pub fn json(a: &Answer) -> Value {
    match a {
        Answer::Count { counts, .. } => counts.clone(),
        Answer::Rows { rows, matched } => json!({ "sessions": rows, "matched": matched }),
    }
}

/// The responder's flow: from the destination back to the initiator's
/// (translated) source.
fn reply_flow(r: &Row) -> (String, String) {
    let to = endpoint(
        r.nat_source.unwrap_or(r.source),
        r.nat_source_port.unwrap_or(r.source_port),
        r.protocol,
    );
    let from = endpoint(
        r.nat_destination.unwrap_or(r.destination),
        r.nat_destination_port.unwrap_or(r.destination_port),
        r.protocol,
    );
    (from, to)
}

/// The reply flow's direction letter: the opposite of the session's.
fn other(dir: &str) -> &'static str {
    if dir == "I" { "O" } else { "I" }
}

pub fn text(a: &Answer, level: Level) -> String {
    let mut o = String::new();
    match a {
        Answer::Count { counts, matched } => {
            let _ = writeln!(o, "{:<24} {:>14}", "Service set", "Sessions count");
            if let Some(sets) = counts["service_sets"].as_object() {
                for (name, n) in sets {
                    let _ = writeln!(o, "{name:<24} {:>14}", n.as_u64().unwrap_or(0));
                }
            }
            let _ = writeln!(o, "{:<24} {matched:>14}", "Total");
        }
        Answer::Rows { rows, matched } => {
            if level == Level::Terse {
                let _ = writeln!(
                    o,
                    "{:<20} {:<12} {:<5} {:<24} {:<24} {:<8} {:<3} {:>10}",
                    "Session ID",
                    "Service set",
                    "Flow",
                    "Source",
                    "Dest",
                    "State",
                    "Dir",
                    "Frm count"
                );
            }
            for r in rows {
                session(&mut o, r, level);
            }
            if (rows.len() as u64) < *matched {
                let _ = writeln!(o, "({} of {matched} sessions shown)", rows.len());
            }
        }
    }
    o
}

fn session(o: &mut String, r: &Row, level: Level) {
    let proto = protocol_name(r.protocol);
    let src = endpoint(r.source, r.source_port, r.protocol);
    let dst = endpoint(r.destination, r.destination_port, r.protocol);
    if level == Level::Terse {
        let _ = writeln!(
            o,
            "{:<20} {:<12} {:<5} {:<24} {:<24} {:<8} {:<3} {:>10}",
            r.session_id,
            r.service_set,
            proto,
            src,
            dst,
            r.state,
            r.direction,
            r.frames_initiator + r.frames_responder
        );
        return;
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(
        o,
        "Service Set: {}, Session: {}, ALG: none, Flags: 0x0, IP Action: no, Offload: {}, Asymmetric: no",
        r.service_set,
        r.session_id,
        yes_no(r.offload)
    );
    // The translation: the initiator's source (an inside flow) or its
    // destination (a flow from outside to a mapping, forward or static).
    let translation = match (r.nat_source, r.nat_source_port) {
        (Some(a), Some(p)) => Some(("NAPT-44", "NAT source", &src, a, p)),
        _ => match (r.nat_destination, r.nat_destination_port) {
            (Some(a), Some(p)) => Some(("DNAPT-44", "NAT destination", &dst, a, p)),
            _ => None,
        },
    };
    if matches!(level, Level::Brief | Level::Extensive)
        && let Some((kind, what, from, a, p)) = translation
    {
        let _ = writeln!(o, "NAT PLugin Data:");
        let _ = writeln!(o, "  NAT Action:   Translation Type - {kind}");
        let _ = writeln!(
            o,
            "    {what}  {from:>width$}  ->  {}",
            endpoint(a, p, r.protocol),
            width = 34 - what.len()
        );
    }
    let (rsrc, rdst) = reply_flow(r);
    let _ = writeln!(
        o,
        "{:<6} {:>24}  ->  {:<24} {:<8} {} {:>10}",
        proto, src, dst, r.state, r.direction, r.frames_initiator
    );
    let _ = writeln!(
        o,
        "{:<6} {:>24}  ->  {:<24} {:<8} {} {:>10}",
        proto,
        rsrc,
        rdst,
        r.state,
        other(&r.direction),
        r.frames_responder
    );
    if level == Level::Extensive {
        let _ = writeln!(
            o,
            "  State: {}, Interface: {}, Worker: {}, Age: {} s, Idle: {} s, Timeout in: {} s",
            r.tcp_state.as_deref().unwrap_or("-"),
            r.interface,
            r.worker,
            r.age_s,
            r.idle_s,
            r.timeout_s
        );
        let _ = writeln!(
            o,
            "  Bytes: {} initiator, {} responder",
            r.bytes_initiator, r.bytes_responder
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_names_the_translation_of_either_side() {
        let row = |dnat: bool| Row {
            session_id: 7,
            service_set: "lab".into(),
            protocol: 6,
            source: "198.18.2.10".parse().unwrap(),
            source_port: 40000,
            destination: "198.18.2.100".parse().unwrap(),
            destination_port: 8080,
            nat_source: (!dnat).then(|| "198.18.2.100".parse().unwrap()),
            nat_source_port: (!dnat).then_some(1024),
            nat_destination: dnat.then(|| "198.18.1.10".parse().unwrap()),
            nat_destination_port: dnat.then_some(80),
            state: "Forward".into(),
            tcp_state: None,
            direction: if dnat { "O" } else { "I" }.into(),
            interface: "out0".into(),
            frames_initiator: 1,
            frames_responder: 1,
            bytes_initiator: 60,
            bytes_responder: 60,
            age_s: 1,
            idle_s: 0,
            timeout_s: 20,
            worker: 0,
            offload: false,
        };
        let text = |dnat| {
            let rows = vec![row(dnat)];
            super::text(&Answer::Rows { rows, matched: 1 }, Level::Brief)
        };
        let (out, inbound) = (text(false), text(true));
        assert!(out.contains("Translation Type - NAPT-44\n"), "{out}");
        assert!(
            out.contains("    NAT source         198.18.2.10:40000  ->  198.18.2.100:1024\n"),
            "{out}"
        );
        assert!(
            inbound.contains("Translation Type - DNAPT-44\n"),
            "{inbound}"
        );
        assert!(
            inbound.contains("    NAT destination    198.18.2.100:8080  ->  198.18.1.10:80\n"),
            "{inbound}"
        );
        // The answer comes from where the initiator's packets were sent on.
        assert!(
            inbound.contains("198.18.1.10:80  ->  198.18.2.10:40000"),
            "{inbound}"
        );
    }
}

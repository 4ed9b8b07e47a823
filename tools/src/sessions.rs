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
    if matches!(level, Level::Brief | Level::Extensive)
        && let (Some(a), Some(p)) = (r.nat_source, r.nat_source_port)
    {
        let _ = writeln!(o, "NAT PLugin Data:");
        let _ = writeln!(o, "  NAT Action:   Translation Type - NAPT-44");
        let _ = writeln!(
            o,
            "    NAT source  {:>24}  ->  {}",
            src,
            endpoint(a, p, r.protocol)
        );
    }
    if matches!(level, Level::Brief | Level::Extensive)
        && let (Some(a), Some(p)) = (r.nat_destination, r.nat_destination_port)
    {
        let _ = writeln!(o, "NAT PLugin Data:");
        let _ = writeln!(o, "  NAT Action:   Translation Type - DNAPT-44");
        let _ = writeln!(
            o,
            "    NAT destination  {:>19}  ->  {}",
            dst,
            endpoint(a, p, r.protocol)
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

//! The control socket protocol: one request line, then reply lines.
//!
//! Design: plain text so an operator can drive it with `socat` too. A
//! request is at most [`MAX_REQUEST`] bytes; anything unparsable gets an
//! `error:` reply naming what was wrong, never a dropped connection or a
//! crash. Commands answer `ok`; `show sessions` answers one JSON line per
//! session and `end N` (see [`crate::sessions`]). `tandemctl` and
//! `tandemstat sessions` are the clients; tandemd's control thread the server.

use std::path::PathBuf;

use crate::sessions::{QUERY_WORDS, Query};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1024;

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Set every counter's baseline to its current value.
    ClearStatistics,
    /// List (or count) sessions.
    ShowSessions(Query),
    /// The NAT pools' use per address and their busiest subscribers, as
    /// one JSON line and `end N` (N: the NAT service sets): `show nat`.
    ShowNat,
    /// End the sessions the query matches (its level and limit aside), as
    /// expiry ends them: `clear sessions [filters]`.
    ClearSessions(Query),
    /// Manual switchover: `request acquire|release [force]`.
    Mastership { acquire: bool, force: bool },
    /// (Standby) ask the active for every session again: `request resync`.
    Resync,
    /// Read the configuration file again and apply what may change while
    /// running (`reload`; SIGHUP does the same).
    Reload,
    /// The finished probes numbered `from` on (all kept, if `None`):
    /// `show probes [from N]`, answered by JSON lines and `end N` with
    /// the number to ask from next.
    ShowProbes { from: Option<u64> },
    /// Fault injection for tests (`debug panic ha|sync|control`): the
    /// named thread panics, which must end the daemon. Refused unless
    /// tandemd started with `TANDEM_FAULT_INJECTION=1`.
    Panic(Thread),
    /// Fault injection for tests (`debug hang workers`): every worker
    /// stops making progress (it sleeps without looping) until tandemd
    /// stops. Refused as `Panic` is.
    HangWorkers,
}

/// A daemon thread that a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    Ha = 1,
    Sync = 2,
    Control = 3,
}

impl Thread {
    pub const ALL: [Self; 3] = [Self::Ha, Self::Sync, Self::Control];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ha => "ha",
            Self::Sync => "sync",
            Self::Control => "control",
        }
    }
}

impl Request {
    /// The request as sent on the wire (without the newline).
    pub fn as_line(&self) -> String {
        match self {
            Self::ClearStatistics => "clear statistics".into(),
            Self::ShowSessions(q) => {
                let mut w = vec!["show".to_owned(), "sessions".to_owned()];
                w.extend(q.to_words());
                w.join(" ")
            }
            Self::ClearSessions(q) => {
                let mut w = vec!["clear".to_owned(), "sessions".to_owned()];
                w.extend(q.to_words());
                w.join(" ")
            }
            Self::ShowNat => "show nat".into(),
            Self::ShowProbes { from: None } => "show probes".into(),
            Self::ShowProbes { from: Some(n) } => format!("show probes from {n}"),
            Self::Panic(t) => format!("debug panic {}", t.name()),
            Self::HangWorkers => "debug hang workers".into(),
            Self::Resync => "request resync".into(),
            Self::Reload => "reload".into(),
            Self::Mastership { acquire, force } => format!(
                "request {}{}",
                if *acquire { "acquire" } else { "release" },
                if *force { " force" } else { "" }
            ),
        }
    }
}

const EXPECTED: &str = "reload | clear statistics | clear sessions [...] | show sessions [...] | show nat | show probes [from N] | request acquire|release [force] | request resync | debug panic ha|sync|control | debug hang workers";

/// Parses one request line (whitespace-insensitive, case-insensitive).
pub fn parse_request(line: &str) -> Result<Request, String> {
    // Service set and interface names keep their case; keywords do not.
    let raw: Vec<&str> = line.split_whitespace().collect();
    let lower: Vec<String> = raw.iter().map(|w| w.to_ascii_lowercase()).collect();
    let words: Vec<&str> = lower.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["clear", "statistics"] => Ok(Request::ClearStatistics),
        ["request", "resync"] => Ok(Request::Resync),
        ["reload"] => Ok(Request::Reload),
        ["request", what @ ("acquire" | "release"), rest @ ..] => {
            let force = match rest {
                [] => false,
                ["force"] => true,
                _ => {
                    return Err(format!(
                        "request {what}: unexpected {:?} (expected: request {what} [force])",
                        rest.join(" ")
                    ));
                }
            };
            Ok(Request::Mastership {
                acquire: *what == "acquire",
                force,
            })
        }
        ["debug", "hang", "workers"] => Ok(Request::HangWorkers),
        ["debug", "panic", t] => Thread::ALL
            .into_iter()
            .find(|x| x.name() == *t)
            .map(Request::Panic)
            .ok_or_else(|| {
                format!("debug panic: unknown thread {t:?} (expected ha, sync or control)")
            }),
        ["show", "nat"] => Ok(Request::ShowNat),
        ["show", "probes"] => Ok(Request::ShowProbes { from: None }),
        ["show", "probes", "from", n] => n
            .parse()
            .map(|n| Request::ShowProbes { from: Some(n) })
            .map_err(|_| format!("show probes from: {n:?} is not a number")),
        ["show", "probes", ..] => Err("show probes: expected `show probes [from N]`".into()),
        [verb @ ("show" | "clear"), "sessions", ..] => {
            let mut args: Vec<&str> = Vec::new();
            let mut keep_case = false;
            for (w, r) in words[2..].iter().zip(&raw[2..]) {
                args.push(if keep_case { r } else { w });
                keep_case = matches!(*w, "service-set" | "interface");
            }
            let q = Query::parse(&args)
                .map_err(|e| format!("{verb} sessions: {e} (words: {QUERY_WORDS})"))?;
            Ok(if *verb == "show" {
                Request::ShowSessions(q)
            } else {
                Request::ClearSessions(q)
            })
        }
        [] => Err("empty request".into()),
        ["clear", rest @ ..] => Err(format!(
            "unknown clear target {:?} (expected: {EXPECTED})",
            rest.join(" ")
        )),
        _ => Err(format!(
            "unknown request {:?} (expected: {EXPECTED})",
            line.trim()
        )),
    }
}

/// The control socket of an instance; `TANDEM_RUN_DIR` overrides /run/tandem.
pub fn socket_path(instance: &str) -> PathBuf {
    std::env::var_os("TANDEM_RUN_DIR")
        .map_or_else(|| PathBuf::from("/run/tandem"), PathBuf::from)
        .join(format!("{instance}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clear_statistics_loosely() {
        assert_eq!(
            parse_request("clear statistics"),
            Ok(Request::ClearStatistics)
        );
        assert_eq!(
            parse_request("  CLEAR   Statistics \r"),
            Ok(Request::ClearStatistics)
        );
        assert_eq!(
            parse_request(&Request::ClearStatistics.as_line()),
            Ok(Request::ClearStatistics)
        );
    }

    #[test]
    fn parses_clear_sessions_with_filters() {
        let r = parse_request("clear sessions protocol udp destination-port 53").unwrap();
        let Request::ClearSessions(q) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(q.destination_port, Some(53));
        assert_eq!(parse_request(&r.as_line()).unwrap(), r);
        assert_eq!(
            parse_request("clear sessions"),
            Ok(Request::ClearSessions(Query::default()))
        );
    }

    #[test]
    fn parses_show_sessions_keeping_name_case() {
        let r = parse_request("SHOW sessions count service-set Lab-A interface In0\n").unwrap();
        let Request::ShowSessions(q) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(q.service_set.as_deref(), Some("Lab-A"));
        assert_eq!(q.interface.as_deref(), Some("In0"));
        assert_eq!(parse_request(&r.as_line()).unwrap(), r);
        assert!(
            parse_request("show sessions protocol")
                .unwrap_err()
                .contains("needs a value")
        );
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        assert!(parse_request("").unwrap_err().contains("empty"));
        assert!(
            parse_request("clear everything")
                .unwrap_err()
                .contains("\"everything\"")
        );
        assert!(
            parse_request("reboot now")
                .unwrap_err()
                .contains("unknown request")
        );
        assert!(parse_request("\u{0}\u{ff}garbage").is_err());
        assert!(
            parse_request("request acquire now")
                .unwrap_err()
                .contains("\"now\"")
        );
        assert!(parse_request("request reboot").is_err());
    }

    #[test]
    fn parses_mastership_requests() {
        for acquire in [true, false] {
            for force in [true, false] {
                let r = Request::Mastership { acquire, force };
                assert_eq!(parse_request(&r.as_line()), Ok(r.clone()));
            }
        }
        for r in [
            Request::ShowProbes { from: None },
            Request::ShowProbes { from: Some(77) },
        ] {
            assert_eq!(parse_request(&r.as_line()), Ok(r.clone()));
        }
        assert!(
            parse_request("show probes from x")
                .unwrap_err()
                .contains("\"x\"")
        );
        assert!(parse_request("show probes since 3").is_err());
        for t in Thread::ALL {
            let r = Request::Panic(t);
            assert_eq!(parse_request(&r.as_line()), Ok(r.clone()));
        }
        let r = Request::HangWorkers;
        assert_eq!(parse_request(&r.as_line()), Ok(r.clone()));
        assert!(
            parse_request("debug panic worker")
                .unwrap_err()
                .contains("\"worker\"")
        );
        assert_eq!(
            parse_request("REQUEST Release FORCE"),
            Ok(Request::Mastership {
                acquire: false,
                force: true
            })
        );
    }
}

//! Session listings: the query an operator types, and the rows tandemd
//! answers with over the control socket.
//!
//! Design: `tandemstat sessions ARGS` and the control request
//! `show sessions ARGS` take the same words, parsed here once, so the tool
//! can refuse a bad argument before it connects and the daemon can never
//! disagree with it. Rows travel as JSON lines (one per session) followed by
//! `end N`, so a listing streams in bounded memory on both sides.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::config::{Prefix, Protocol};

/// How much to show per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One line per session.
    Terse,
    /// Both flows of each session.
    #[default]
    Standard,
    /// Both flows and the NAT translation.
    Brief,
    /// Everything: state, timers, bytes, owner.
    Extensive,
    /// Only how many sessions match.
    Count,
}

/// A session listing request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Query {
    pub level: Level,
    pub protocol: Option<u8>,
    pub source_prefix: Option<Prefix>,
    pub destination_prefix: Option<Prefix>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub service_set: Option<String>,
    pub interface: Option<String>,
    pub limit: Option<u64>,
}

/// The words `Query::parse` accepts, for error messages and `--help`.
pub const QUERY_WORDS: &str = "terse|brief|extensive|count, protocol P, source-prefix X, \
     destination-prefix X, source-port N, destination-port N, service-set S, interface I, limit N";

impl Query {
    /// Parses `words` (e.g. `["brief", "protocol", "tcp", "limit", "10"]`).
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Self, String> {
        let mut q = Self::default();
        let mut it = words.iter().map(AsRef::as_ref);
        let mut level_set = false;
        while let Some(w) = it.next() {
            let mut value = |what: &str| {
                it.next()
                    .ok_or_else(|| format!("`{w}` needs a value ({what})"))
            };
            let port = |v: &str| {
                v.parse::<u16>()
                    .map_err(|_| format!("`{w} {v}`: a port is 0..=65535"))
            };
            match w {
                "terse" | "brief" | "extensive" | "count" => {
                    if level_set {
                        return Err(format!("`{w}`: only one of terse, brief, extensive, count"));
                    }
                    level_set = true;
                    q.level = match w {
                        "terse" => Level::Terse,
                        "brief" => Level::Brief,
                        "extensive" => Level::Extensive,
                        _ => Level::Count,
                    };
                }
                "protocol" => {
                    let v = value("tcp, udp, icmp, icmp6 or a number")?;
                    q.protocol = Some(v.parse::<Protocol>()?.0);
                }
                "source-prefix" => q.source_prefix = Some(value("an address or prefix")?.parse()?),
                "destination-prefix" => {
                    q.destination_prefix = Some(value("an address or prefix")?.parse()?);
                }
                "source-port" => q.source_port = Some(port(value("a port")?)?),
                "destination-port" => q.destination_port = Some(port(value("a port")?)?),
                "service-set" => q.service_set = Some(value("a service set name")?.to_owned()),
                "interface" => q.interface = Some(value("an interface name")?.to_owned()),
                "limit" => {
                    let v = value("a count")?;
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| format!("`limit {v}`: a count is a whole number"))?,
                    );
                }
                other => return Err(format!("unknown word `{other}` (expected: {QUERY_WORDS})")),
            }
        }
        Ok(q)
    }

    /// The words that parse back into this query.
    pub fn to_words(&self) -> Vec<String> {
        let mut w = Vec::new();
        match self.level {
            Level::Terse => w.push("terse".into()),
            Level::Standard => {}
            Level::Brief => w.push("brief".into()),
            Level::Extensive => w.push("extensive".into()),
            Level::Count => w.push("count".into()),
        }
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                w.push(k.to_owned());
                w.push(v);
            }
        };
        kv("protocol", self.protocol.map(|p| p.to_string()));
        kv("source-prefix", self.source_prefix.map(|p| p.to_string()));
        kv(
            "destination-prefix",
            self.destination_prefix.map(|p| p.to_string()),
        );
        kv("source-port", self.source_port.map(|p| p.to_string()));
        kv(
            "destination-port",
            self.destination_port.map(|p| p.to_string()),
        );
        kv("service-set", self.service_set.clone());
        kv("interface", self.interface.clone());
        kv("limit", self.limit.map(|n| n.to_string()));
        w
    }
}

/// One session as the daemon reports it. The initiator's flow is
/// `source:source_port -> destination:destination_port` as it arrived
/// (before NAT); `nat_source*` is its translated source, `nat_destination*`
/// its translated destination (a flow from outside to a mapping, a
/// forwarded port or a static translation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub session_id: u64,
    pub service_set: String,
    pub protocol: u8,
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub nat_source: Option<IpAddr>,
    pub nat_source_port: Option<u16>,
    #[serde(default)]
    pub nat_destination: Option<IpAddr>,
    #[serde(default)]
    pub nat_destination_port: Option<u16>,
    /// Forward, Drop or Reject.
    pub state: String,
    /// RFC 793 state for TCP sessions.
    pub tcp_state: Option<String>,
    /// I: initiated from the inside interface; O: from the outside.
    pub direction: String,
    pub interface: String,
    pub frames_initiator: u64,
    pub frames_responder: u64,
    pub bytes_initiator: u64,
    pub bytes_responder: u64,
    pub age_s: u32,
    pub idle_s: u32,
    pub timeout_s: u32,
    pub worker: usize,
    pub offload: bool,
}

/// Protocol name as listings print it.
pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMP6".into(),
        n => n.to_string(),
    }
}

/// `addr:port`, or the bare address for ICMP (no ports to show), with
/// brackets around IPv6 addresses that carry a port.
pub fn endpoint(addr: IpAddr, port: u16, protocol: u8) -> String {
    match (protocol, addr) {
        (1 | 58, a) => a.to_string(),
        (_, IpAddr::V6(a)) => format!("[{a}]:{port}"),
        (_, a) => format!("{a}:{port}"),
    }
}

/// The last line of a listing: how many sessions matched (all of them,
/// even past a limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub matched: u64,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "end {}", self.matched)
    }
}

impl End {
    pub fn parse(line: &str) -> Option<Self> {
        line.strip_prefix("end ")?
            .trim()
            .parse()
            .ok()
            .map(|matched| Self { matched })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_word_and_round_trips() {
        let q = Query::parse(&[
            "brief",
            "protocol",
            "tcp",
            "source-prefix",
            "198.18.1.0/24",
            "destination-prefix",
            "198.18.2.10",
            "source-port",
            "40000",
            "destination-port",
            "80",
            "service-set",
            "lab",
            "interface",
            "in0",
            "limit",
            "10",
        ])
        .unwrap();
        assert_eq!(q.level, Level::Brief);
        assert_eq!(q.protocol, Some(6));
        assert_eq!(q.destination_prefix.unwrap().len, 32);
        assert_eq!(q.limit, Some(10));
        assert_eq!(Query::parse(&q.to_words()).unwrap(), q);
        assert_eq!(Query::parse::<&str>(&[]).unwrap(), Query::default());
    }

    #[test]
    fn bad_words_say_what_was_expected() {
        for (words, want) in [
            (vec!["protocol"], "needs a value"),
            (vec!["protocol", "tcpp"], "tcpp"),
            (vec!["source-port", "70000"], "0..=65535"),
            (vec!["limit", "-1"], "whole number"),
            (vec!["terse", "count"], "only one"),
            (vec!["sideways"], "unknown word `sideways`"),
            (vec!["source-prefix", "10.0.0.0/40"], "prefix length"),
        ] {
            let e = Query::parse(&words).unwrap_err();
            assert!(e.contains(want), "{words:?}: {e}");
        }
    }

    #[test]
    fn rows_and_end_lines_round_trip() {
        let r = Row {
            session_id: 7,
            service_set: "lab".into(),
            protocol: 6,
            source: "198.18.1.10".parse().unwrap(),
            source_port: 40000,
            destination: "198.18.2.10".parse().unwrap(),
            destination_port: 80,
            nat_source: Some("198.18.2.100".parse().unwrap()),
            nat_source_port: Some(1024),
            nat_destination: None,
            nat_destination_port: None,
            state: "Forward".into(),
            tcp_state: Some("ESTABLISHED".into()),
            direction: "I".into(),
            interface: "in0".into(),
            frames_initiator: 3,
            frames_responder: 2,
            bytes_initiator: 300,
            bytes_responder: 200,
            age_s: 5,
            idle_s: 1,
            timeout_s: 7199,
            worker: 1,
            offload: false,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Row>(&line).unwrap(), r);
        assert_eq!(
            End::parse(&End { matched: 42 }.to_string()),
            Some(End { matched: 42 })
        );
        assert_eq!(End::parse("end x"), None);
        assert_eq!(endpoint(r.source, 40000, 6), "198.18.1.10:40000");
        assert_eq!(endpoint(r.source, 0, 1), "198.18.1.10");
        assert_eq!(
            endpoint("2001:db8::1".parse().unwrap(), 53, 17),
            "[2001:db8::1]:53"
        );
    }
}

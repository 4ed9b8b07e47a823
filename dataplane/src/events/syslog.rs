//! Session and NAT events as RFC 5424 syslog messages, structured data
//! carrying every field, one message per UDP datagram (RFC 5426).
//!
//! ```text
//! <134>1 2026-12-03T10:00:00.123Z node-a tandemd 812 SESSION_CREATE [session@32473 id="2"
//!   set="lab" proto="6" origin="inside" src="198.18.1.10" sport="46058" dst="198.18.2.10"
//!   dport="7200" natSrc="198.18.2.100" natSport="25000"] session 2 created: tcp ...
//! ```
//!
//! Timestamps are the logging thread's (milliseconds); a delete's `start`
//! is the session's creation at the session clock's one-second resolution.
//!
//! The SD-ID's enterprise number is 32473, the one RFC 5612 reserves for
//! documentation: tandem has none of its own.

use std::{
    fmt::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use crate::{
    events::EventKind,
    session::{Origin, Session},
};

/// The structured data's SD-ID.
pub const SD_ID: &str = "session@32473";
/// Severity informational.
const SEVERITY: u8 = 6;

/// What every message of this node carries.
pub struct Header {
    pub facility: u8,
    pub hostname: String,
    pub pid: u32,
}

/// A protocol's name where it has a common one.
pub fn proto_name(p: u8) -> Option<&'static str> {
    match p {
        1 => Some("icmp"),
        6 => Some("tcp"),
        17 => Some("udp"),
        58 => Some("ipv6-icmp"),
        _ => None,
    }
}

/// An RFC 3339 timestamp (UTC, milliseconds) of `unix_ms`.
pub fn stamp(unix_ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// The message for `kind` about `s` at `stamp` (see [`stamp`]) into `out`
/// (cleared first). `start_ms` is the session's creation in Unix
/// milliseconds, `set` its service set's name.
pub fn format(
    out: &mut String,
    h: &Header,
    kind: EventKind,
    s: &Session,
    stamp: &str,
    start_ms: u64,
    set: &str,
) {
    out.clear();
    let msgid = match kind {
        EventKind::Create => "SESSION_CREATE",
        EventKind::Expired | EventKind::Cleared | EventKind::EarlyDropped => "SESSION_DELETE",
        EventKind::PortsExhausted => "NAT_PORTS_EXHAUSTED",
        EventKind::BlockAllocated | EventKind::BlockReleased => {
            return block(out, h, kind, s, stamp, set);
        }
    };
    let pri = u16::from(h.facility) * 8 + u16::from(SEVERITY);
    let _ = write!(
        out,
        "<{pri}>1 {stamp} {} tandemd {} {msgid} [{SD_ID} id=\"{}\" set=\"",
        h.hostname, h.pid, s.id
    );
    escape(out, set);
    let k = &s.key;
    let origin = match s.origin() {
        Origin::Inside => "inside",
        Origin::Outside => "outside",
    };
    let _ = write!(
        out,
        "\" proto=\"{}\" origin=\"{origin}\" src=\"{}\" sport=\"{}\" dst=\"{}\" dport=\"{}\"",
        k.proto,
        k.src_ip(),
        k.sport,
        k.dst_ip(),
        k.dport
    );
    let nat = if kind == EventKind::PortsExhausted {
        None
    } else {
        s.nat()
    };
    if let Some((addr, port)) = nat {
        let (which, port_key) = if s.is_dnat() {
            ("natDst", "natDport")
        } else {
            ("natSrc", "natSport")
        };
        let _ = write!(
            out,
            " {which}=\"{}\" {port_key}=\"{port}\"",
            std::net::Ipv4Addr::from(addr)
        );
    }
    let ended = matches!(
        kind,
        EventKind::Expired | EventKind::Cleared | EventKind::EarlyDropped
    );
    if ended {
        let why = match kind {
            EventKind::Expired => "idle-timeout",
            EventKind::Cleared => "cleared",
            _ => "early-drop",
        };
        let _ = write!(
            out,
            " reason=\"{why}\" start=\"{}\" duration=\"{}\" pktsOut=\"{}\" bytesOut=\"{}\" \
             pktsIn=\"{}\" bytesIn=\"{}\"",
            self::stamp(start_ms),
            s.last_seen.saturating_sub(s.created),
            s.packets[0],
            s.bytes[0],
            s.packets[1],
            s.bytes[1]
        );
    }
    out.push_str("] ");
    let proto = Proto(k.proto);
    let _ = match kind {
        EventKind::Create => write!(out, "session {} created: {proto}", s.id),
        EventKind::Expired => write!(out, "session {} ended (idle timeout): {proto}", s.id),
        EventKind::Cleared => write!(out, "session {} ended (cleared): {proto}", s.id),
        EventKind::EarlyDropped => {
            write!(
                out,
                "session {} ended (early drop, table full): {proto}",
                s.id
            )
        }
        EventKind::PortsExhausted => write!(out, "no NAT port free for a new flow: {proto}"),
        EventKind::BlockAllocated | EventKind::BlockReleased => Ok(()),
    };
    let _ = write!(
        out,
        " {} -> {}",
        At(k.src_ip(), k.sport),
        At(k.dst_ip(), k.dport)
    );
    if let Some((a, p)) = nat {
        let _ = write!(out, " as {}:{p}", std::net::Ipv4Addr::from(a));
    }
}

/// A port block event: MSGID `NAT_BLOCK_ALLOC` or `NAT_BLOCK_RELEASE`,
/// the subscriber, the pool address and the block's ports (its first in
/// the session's NAT binding, its last in `key.dport`).
fn block(out: &mut String, h: &Header, kind: EventKind, s: &Session, stamp: &str, set: &str) {
    let (msgid, what) = if kind == EventKind::BlockAllocated {
        ("NAT_BLOCK_ALLOC", "allocated to")
    } else {
        ("NAT_BLOCK_RELEASE", "released by")
    };
    let pri = u16::from(h.facility) * 8 + u16::from(SEVERITY);
    let (pool, first) = s.nat().unwrap_or_default();
    let (pool, last, inside) = (std::net::Ipv4Addr::from(pool), s.key.dport, s.key.src_ip());
    let _ = write!(
        out,
        "<{pri}>1 {stamp} {} tandemd {} {msgid} [{SD_ID} set=\"",
        h.hostname, h.pid
    );
    escape(out, set);
    let _ = write!(
        out,
        "\" subscriber=\"{inside}\" natSrc=\"{pool}\" portFirst=\"{first}\" \
         portLast=\"{last}\"] port block {pool}:{first}-{last} {what} {inside}"
    );
}

/// A protocol by its common name, or `protocol N`; written in place.
struct Proto(u8);

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match proto_name(self.0) {
            Some(n) => f.write_str(n),
            None => write!(f, "protocol {}", self.0),
        }
    }
}

/// `address:port`, an IPv6 address in brackets; written in place.
struct At(std::net::IpAddr, u16);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            std::net::IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            std::net::IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::FlowKey;

    fn header() -> Header {
        Header {
            facility: 16,
            hostname: "node-a".into(),
            pid: 812,
        }
    }

    fn nat_session() -> Session {
        let mut s = Session::new(
            FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 46058, 7200, 6),
            2,
            Origin::Inside,
            0,
            10,
        );
        s.set_nat([198, 18, 2, 100], 25000);
        s
    }

    #[test]
    fn a_create_is_one_rfc5424_line_with_every_field() {
        let mut out = String::new();
        let s = nat_session();
        let at = stamp(1_796_292_000_123).to_string();
        format(&mut out, &header(), EventKind::Create, &s, &at, 0, "lab");
        assert_eq!(
            out,
            "<134>1 2026-12-03T10:00:00.123Z node-a tandemd 812 SESSION_CREATE \
             [session@32473 id=\"2\" set=\"lab\" proto=\"6\" origin=\"inside\" \
             src=\"198.18.1.10\" sport=\"46058\" dst=\"198.18.2.10\" dport=\"7200\" \
             natSrc=\"198.18.2.100\" natSport=\"25000\"] session 2 created: tcp \
             198.18.1.10:46058 -> 198.18.2.10:7200 as 198.18.2.100:25000"
        );
    }

    #[test]
    fn a_delete_carries_why_how_long_and_how_much_and_values_are_escaped() {
        let mut out = String::new();
        let mut s = nat_session();
        s.last_seen = 70;
        s.packets = [5, 4];
        s.bytes = [500, 400];
        let at = stamp(1_796_292_000_000).to_string();
        format(
            &mut out,
            &header(),
            EventKind::Expired,
            &s,
            &at,
            1_796_291_940_000,
            "a\"b]",
        );
        assert!(
            out.contains(" SESSION_DELETE [session@32473 id=\"2\" set=\"a\\\"b\\]\""),
            "{out}"
        );
        assert!(
            out.contains(
                " reason=\"idle-timeout\" start=\"2026-12-03T09:59:00.000Z\" duration=\"60\" \
                 pktsOut=\"5\" bytesOut=\"500\" pktsIn=\"4\" bytesIn=\"400\"] session 2 ended (idle timeout)"
            ),
            "{out}"
        );
    }
}

//! `[log]`: tandemd's own log, and the session and NAT event log.

use std::net::SocketAddr;

use serde::Deserialize;

/// What tandemd logs about itself (to stderr, the journal under systemd),
/// and where session and NAT events go.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a filter of
    /// `target=level` directives as `RUST_LOG` takes them, which, when set,
    /// wins over this key. Changes on reload.
    pub level: String,
    /// The session and NAT event log.
    pub events: Events,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            events: Events::default(),
        }
    }
}

/// Session create/delete and NAT events, to collectors over UDP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Syslog collector (RFC 5424 messages over UDP, RFC 5426), one
    /// message per event.
    pub syslog: Option<SocketAddr>,
    /// Syslog facility: `kern`, `user`, `daemon`, `auth`, ..., `local0`
    /// to `local7`. Messages are informational (severity 6).
    pub facility: String,
    /// The syslog HOSTNAME field; default the system's host name.
    pub hostname: Option<String>,
    /// IPFIX collector (RFC 7011 over UDP): NAT44 session create and
    /// delete and NAT addresses exhausted, as RFC 8158 lays them out.
    pub ipfix: Option<SocketAddr>,
    /// The IPFIX observation domain.
    pub observation_domain: u32,
    /// Seconds between the IPFIX templates sent again (UDP loses them;
    /// a collector that restarts learns them within this).
    pub template_every_s: u32,
    /// Events each worker may hold for the logging thread; beyond it
    /// events are dropped and counted (`tandem_worker_events_dropped_total`).
    /// Fixed at start.
    pub ring: u32,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            syslog: None,
            facility: "local0".into(),
            hostname: None,
            ipfix: None,
            observation_domain: 1,
            template_every_s: 30,
            ring: 65536,
        }
    }
}

/// Syslog facilities by name (RFC 5424 section 6.2.1).
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl Events {
    /// The facility's code.
    pub fn facility_code(&self) -> Option<u8> {
        FACILITIES
            .iter()
            .position(|f| *f == self.facility)
            .map(|i| i as u8)
    }

    /// Whether any collector is configured.
    pub fn wanted(&self) -> bool {
        self.syslog.is_some() || self.ipfix.is_some()
    }
}

impl Log {
    /// Whether `level` reads as a filter: comma-separated directives, each
    /// a level or `target=level`.
    pub fn level_ok(&self) -> bool {
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        !self.level.is_empty()
            && self.level.split(',').all(|d| {
                let level = d.rsplit_once('=').map_or(d, |(target, l)| {
                    if target.is_empty()
                        || !target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
                    {
                        ""
                    } else {
                        l
                    }
                });
                LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
            })
    }

    /// The first invalid key of the section: (key, expected, found).
    pub fn invalid(&self) -> Option<(&'static str, &'static str, String)> {
        let e = &self.events;
        if !self.level_ok() {
            return Some((
                "log.level",
                "error, warn, info, debug, trace or off, or target=level directives",
                format!("{:?}", self.level),
            ));
        }
        if e.facility_code().is_none() {
            return Some((
                "log.events.facility",
                "a syslog facility: kern, user, daemon, auth, ..., local0 to local7",
                format!("{:?}", e.facility),
            ));
        }
        if let Some(h) = &e.hostname
            && (h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Some((
                "log.events.hostname",
                "1 to 255 printable ASCII characters without spaces",
                format!("{h:?}"),
            ));
        }
        if !(1..=3600).contains(&e.template_every_s) {
            return Some((
                "log.events.template_every_s",
                "1..=3600",
                e.template_every_s.to_string(),
            ));
        }
        if !e.ring.is_power_of_two() || !(64..=1 << 20).contains(&e.ring) {
            return Some((
                "log.events.ring",
                "a power of two in 64..=1048576",
                e.ring.to_string(),
            ));
        }
        None
    }
}

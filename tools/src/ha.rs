//! `tandemstat ha`: the replication link, modelled on `show services ha
//! statistics` (shared/reference/000). Every counter is a `Stats` field of
//! the sync module, read from its `tandem_sync_<field>_total` entry; what
//! each one counts here is its doc comment (`tandemstat ha --help` prints
//! them through [`glossary`]).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use tandem_control::sync::Stats;

use crate::model::Snapshot;

/// The replication view of one snapshot.
#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent flags the views read from the segment"
)]
pub struct Ha {
    pub interface: String,
    pub role: &'static str,
    pub connection: &'static str,
    pub synchronization: &'static str,
    pub local: (String, String),
    pub remote: (String, String),
    counters: Vec<(&'static str, u64)>,
    pub add_pending: u64,
    pub add_rate: u64,
    pub delete_rate: u64,
    pub swept: u64,
    /// (sessions, 48-bit hash) of this node's replicated set, and of the
    /// peer's as it last sent it; whether they are equal.
    pub digest: (u64, u64),
    pub peer_digest: (u64, u64),
    pub digest_match: bool,
    /// (Active) replication lag quantiles (µs), and the oldest
    /// unacknowledged record's wait (ms).
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
    pub oldest_unacked_ms: u64,
    pub stalled: bool,
    /// The last connection was refused: the configurations disagree.
    pub config_refused: bool,
    /// (Backup) how long the digests have differed with the active
    /// steady; diverged from 10 s (repair and resync did not fix it).
    pub digest_differs_ms: u64,
    pub diverged: bool,
}

impl Ha {
    /// `None` when the instance has no `[sync]`.
    pub fn read(s: &Snapshot) -> Option<Self> {
        let info = |family: &str, key: &str| {
            s.label_values(family, key)
                .into_iter()
                .next()
                .unwrap_or_else(|| "-".into())
        };
        if !s.entries.iter().any(|e| e.name == "tandem_sync_local_info") {
            return None;
        }
        let gauge = |family: &str| s.sum(family, &[]);
        Some(Self {
            interface: info("tandem_sync_interface_info", "interface"),
            role: if gauge("tandem_sync_role") == 1 {
                "backup"
            } else {
                "active"
            },
            connection: if gauge("tandem_sync_connection_up") == 1 {
                "Up"
            } else {
                "Down"
            },
            synchronization: match gauge("tandem_sync_state") {
                2 => "Hot",
                1 => "Cold",
                _ => "Off",
            },
            local: (
                info("tandem_sync_local_info", "address"),
                info("tandem_sync_local_info", "port"),
            ),
            remote: (
                info("tandem_sync_remote_info", "address"),
                info("tandem_sync_remote_info", "port"),
            ),
            counters: Stats::NAMES
                .iter()
                .map(|n| (*n, s.sum(&format!("tandem_sync_{n}_total"), &[])))
                .collect(),
            add_pending: gauge("tandem_sync_add_pending"),
            add_rate: gauge("tandem_sync_add_per_second"),
            delete_rate: gauge("tandem_sync_delete_per_second"),
            swept: s.sum("tandem_sync_swept_total", &[]),
            digest: (
                gauge("tandem_sync_digest_sessions"),
                gauge("tandem_sync_digest_hash"),
            ),
            peer_digest: (
                gauge("tandem_sync_peer_digest_sessions"),
                gauge("tandem_sync_peer_digest_hash"),
            ),
            digest_match: gauge("tandem_sync_digest_match") == 1,
            lag_p50_us: gauge("tandem_sync_lag_p50_us"),
            lag_p99_us: gauge("tandem_sync_lag_p99_us"),
            oldest_unacked_ms: gauge("tandem_sync_oldest_unacked_ms"),
            stalled: gauge("tandem_sync_stalled") == 1,
            config_refused: gauge("tandem_sync_config_refused") == 1,
            digest_differs_ms: gauge("tandem_sync_digest_differs_ms"),
            diverged: gauge("tandem_sync_diverged") == 1,
        })
    }

    /// A counter by its `Stats` field name.
    pub fn get(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// The show-style text: (section, [(label, field)]) in display order.
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "Connection Status",
        &[
            ("TCP connection establish", "connection_establish"),
            ("TCP connection teardown", "connection_teardown"),
            ("Stateful sync start sent", "sync_start_sent"),
            ("Stateful sync start received", "sync_start_received"),
            ("Cold sync completed count", "cold_sync_completed_count"),
            ("Refused connections", "refused_connections"),
        ],
    ),
    (
        "Session Add Statistics",
        &[
            ("Sent", "add_sent"),
            ("Received", "add_received"),
            ("Completed", "add_completed"),
            ("Nack sent", "add_nack_sent"),
            ("Nack received", "add_nack_received"),
        ],
    ),
    (
        "Session Delete Statistics",
        &[
            ("Sent", "delete_sent"),
            ("Received", "delete_received"),
            ("Completed", "delete_completed"),
            ("Nack sent", "delete_nack_sent"),
            ("Nack received", "delete_nack_received"),
            ("Session not found", "delete_not_found"),
        ],
    ),
    (
        "Session Refresh Statistics",
        &[
            ("Sent", "refresh_sent"),
            ("Received", "refresh_received"),
            ("Nack sent", "refresh_nack_sent"),
            ("Nack received", "refresh_nack_received"),
        ],
    ),
    (
        "Session Error Statistics",
        &[
            ("Install failures", "install_failures"),
            ("Illegal flow type", "illegal_flow_type"),
            ("Illegal service set", "illegal_service_set"),
            ("Send overflow", "send_overflow"),
            ("Send discard", "send_discard"),
        ],
    ),
    (
        "Repair Statistics",
        &[
            ("Repair sent", "repair_sent"),
            ("Repair abandoned", "repair_abandoned"),
            ("Repair ended", "repair_ended"),
            ("Resync requested", "resync_requested"),
            ("Resync received", "resync_received"),
            ("Digest mismatches", "digest_mismatches"),
        ],
    ),
    (
        "Batching Error Statistics",
        &[
            ("Batch begin fail", "batch_begin_failures"),
            ("Batch commit fail", "batch_commit_failures"),
            ("Batch flush fail", "batch_flush_failures"),
        ],
    ),
    (
        "Message Error Statistics",
        &[
            ("Invalid header", "invalid_header"),
            ("Invalid kind", "invalid_kind"),
            ("Invalid length", "invalid_length"),
            ("Authentication failures", "auth_failures"),
            ("Replays", "replays"),
        ],
    ),
    (
        "Codec Error Statistics",
        &[
            ("Encode fail", "encode_failures"),
            ("Decode fail", "decode_failures"),
        ],
    ),
    (
        "Traffic",
        &[
            ("Messages sent", "messages_sent"),
            ("Messages received", "messages_received"),
            ("Bytes sent", "bytes_sent"),
            ("Bytes received", "bytes_received"),
        ],
    ),
];

pub fn text(h: &Ha) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Interface: {}", h.interface);
    let _ = writeln!(o, "  Inter-chassis");
    let _ = writeln!(
        o,
        "    Role: {}, Connection: {}, Synchronization: {}",
        h.role, h.connection, h.synchronization
    );
    let _ = writeln!(o, "  Peers");
    let _ = writeln!(o, "    Local: {}, Port: {}", h.local.0, h.local.1);
    let _ = writeln!(o, "    Remote: {}, Port: {}", h.remote.0, h.remote.1);
    let _ = writeln!(o, "  Replicated Set");
    let _ = writeln!(
        o,
        "    {:<32}{} sessions, hash {:012x}",
        "Local digest:", h.digest.0, h.digest.1
    );
    let _ = writeln!(
        o,
        "    {:<32}{} sessions, hash {:012x}",
        "Peer digest:", h.peer_digest.0, h.peer_digest.1
    );
    let _ = writeln!(
        o,
        "    {:<32}{}",
        "Digests agree:",
        match (h.digest_match, h.digest_differs_ms) {
            (true, _) => "yes".to_owned(),
            (false, 0) => "no".to_owned(),
            (false, ms) => format!(
                "no, for {}.{} s with the active steady",
                ms / 1000,
                ms % 1000 / 100
            ),
        }
    );
    let _ = writeln!(
        o,
        "    {:<32}p50 {} us, p99 {} us",
        "Replication lag:", h.lag_p50_us, h.lag_p99_us
    );
    let _ = writeln!(
        o,
        "    {:<32}{} ms{}",
        "Oldest unacknowledged:",
        h.oldest_unacked_ms,
        if h.stalled { " (stalled)" } else { "" }
    );
    if h.config_refused {
        let _ = writeln!(
            o,
            "    Warning: sync refused: the two configurations disagree (the log names the field)"
        );
    }
    if h.diverged {
        let _ = writeln!(
            o,
            "    Warning: the replicated sets have differed for {} s: resync and repair have not \
             made the standby whole (a full table? Install failures count what it refused)",
            h.digest_differs_ms / 1000
        );
    }
    for (title, rows) in SECTIONS {
        let _ = writeln!(o, "  {title}");
        for (label, field) in *rows {
            let _ = writeln!(o, "    {:<32}{}", format!("{label}:"), h.get(field));
            match *field {
                "add_completed" => {
                    let _ = writeln!(o, "    {:<32}{}", "rate:", h.add_rate);
                }
                "add_nack_received" => {
                    let _ = writeln!(o, "    {:<32}{}", "Add pending:", h.add_pending);
                }
                "delete_completed" => {
                    let _ = writeln!(o, "    {:<32}{}", "rate:", h.delete_rate);
                }
                "send_discard" => {
                    let _ = writeln!(o, "    {:<32}{}", "Sessions swept:", h.swept);
                }
                _ => {}
            }
        }
    }
    o
}

pub fn json(h: &Ha) -> Value {
    let mut m = Map::new();
    m.insert("interface".into(), json!(h.interface));
    m.insert("role".into(), json!(h.role));
    m.insert("connection".into(), json!(h.connection.to_lowercase()));
    m.insert(
        "synchronization".into(),
        json!(h.synchronization.to_lowercase()),
    );
    m.insert("local_address".into(), json!(h.local.0));
    m.insert("local_port".into(), port(&h.local.1));
    m.insert("remote_address".into(), json!(h.remote.0));
    m.insert("remote_port".into(), port(&h.remote.1));
    for (n, v) in &h.counters {
        m.insert((*n).into(), json!(v));
    }
    m.insert("add_rate".into(), json!(h.add_rate));
    m.insert("add_pending".into(), json!(h.add_pending));
    m.insert("delete_rate".into(), json!(h.delete_rate));
    m.insert("sessions_swept".into(), json!(h.swept));
    m.insert("digest_sessions".into(), json!(h.digest.0));
    m.insert("digest_hash".into(), json!(format!("{:012x}", h.digest.1)));
    m.insert("peer_digest_sessions".into(), json!(h.peer_digest.0));
    m.insert(
        "peer_digest_hash".into(),
        json!(format!("{:012x}", h.peer_digest.1)),
    );
    m.insert("digest_match".into(), json!(h.digest_match));
    m.insert("lag_p50_us".into(), json!(h.lag_p50_us));
    m.insert("lag_p99_us".into(), json!(h.lag_p99_us));
    m.insert("oldest_unacked_ms".into(), json!(h.oldest_unacked_ms));
    m.insert("stalled".into(), json!(h.stalled));
    m.insert("config_refused".into(), json!(h.config_refused));
    m.insert("digest_differs_ms".into(), json!(h.digest_differs_ms));
    m.insert("diverged".into(), json!(h.diverged));
    Value::Object(m)
}

fn port(p: &str) -> Value {
    p.parse::<u16>().map_or(Value::Null, |n| json!(n))
}

/// `tandemstat ha --help`'s definitions: every field and what it counts.
pub fn glossary() -> String {
    let mut o = String::from(
        "Fields (JSON keys in brackets):\n  Role [role]: active sends its sessions, backup \
         installs the peer's.\n  Connection [connection]: Up once both hellos were accepted.\n  \
         Synchronization [synchronization]: Off (no link), Cold (a cold sync is under way), Hot \
         (the backup holds every session).\n  Local/Remote [local_address, local_port, \
         remote_address, remote_port]: the configured sync addresses.\n  rate [add_rate, \
         delete_rate]: adds sent (active) or installed (backup) in the last second; the same for \
         deletes.\n  Add pending [add_pending]: adds sent and not yet acknowledged.\n  Sessions \
         swept [sessions_swept]: synced sessions a backup removed after a cold sync no longer \
         carried them.\n  Local/Peer digest [digest_sessions, digest_hash, \
         peer_digest_sessions, peer_digest_hash]: the replicated session set as a count and an \
         order-independent 48-bit hash of its keys, this node's and the peer's (sent every \
         second); equal sets give equal digests.\n  Digests agree [digest_match]: the peer's last \
         digest equals this node's.\n  Replication lag [lag_p50_us, lag_p99_us]: (active) from a \
         record entering a batch to the peer's acknowledgement of it, over the last 10-20 s.\n  \
         Oldest unacknowledged [oldest_unacked_ms, stalled]: how long the oldest record has \
         waited for the peer; stalled from 5 s.\n  [config_refused]: the last connection was \
         refused because the two configurations disagree on what must agree (service set names \
         and order, NAT pools and port ranges); the log names the field.\n  Digests \
         agree ... for [digest_differs_ms, diverged]: (backup) how long the sets have differed \
         with the active steady, automatic resyncs included; diverged from 10 s (a health \
         warning).\n",
    );
    for (title, rows) in SECTIONS {
        let _ = writeln!(o, "{title}:");
        for (label, field) in *rows {
            let i = Stats::NAMES
                .iter()
                .position(|n| n == field)
                .expect("every row is a Stats field");
            let _ = writeln!(o, "  {label} [{field}]: {}", Stats::DOCS[i].trim());
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_shown_once() {
        let mut shown: Vec<&str> = SECTIONS
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|(_, f)| *f))
            .collect();
        shown.sort_unstable();
        let mut all = Stats::NAMES.to_vec();
        all.sort_unstable();
        assert_eq!(shown, all);
        assert!(glossary().contains("Cold sync completed count [cold_sync_completed_count]: "));
    }
}

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
         carried them.\n",
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

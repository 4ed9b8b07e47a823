//! What a sync connection is told at its start: which way sessions flow
//! ([`Role`]), and its [`Settings`]; and how far the backup's copy has come
//! ([`SyncState`]).

use std::time::Duration;

use super::wire::{ROLE_ACTIVE, ROLE_BACKUP};

/// Which way sessions flow on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends its sessions.
    Active,
    /// Receives and installs them.
    Backup,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Backup => "backup",
        }
    }

    pub(super) fn wire(self) -> u8 {
        match self {
            Self::Active => ROLE_ACTIVE,
            Self::Backup => ROLE_BACKUP,
        }
    }
}

/// Synchronization state, as `show services ha statistics` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Not connected, or hellos not yet exchanged.
    Off,
    /// Connected; the cold sync has not finished.
    Cold,
    /// The cold sync finished: the backup holds every session.
    Hot,
}

/// What a connection needs to know about its node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: u32,
    pub group_id: u32,
    pub workers: u16,
    pub role: Role,
    /// Service sets configured: records naming others are refused.
    pub services: usize,
    /// Hash of the service set configuration; the peer's must match.
    pub services_hash: u64,
    /// Shared key: every frame is tagged and checked.
    pub key: Option<Vec<u8>>,
    /// Keys accepted besides `key` at the hello (a rollover).
    pub accept_keys: Vec<Vec<u8>>,
    /// A batch is sent when its body reaches this size...
    pub flush_bytes: usize,
    /// ...or this long after its first record.
    pub flush_delay: Duration,
    /// A keepalive goes out when nothing else did for this long; the peer
    /// is dead when nothing came for `dead_after` of them.
    pub keepalive: Duration,
    pub dead_after: u32,
    /// Unsent bytes beyond which new batches are refused.
    pub max_backlog: usize,
    /// What must agree with the peer, field by field (see
    /// [`crate::config::Config::sync_contract`]).
    pub contract: Vec<(String, String)>,
    /// Capabilities offered besides `CAP_AUTH` (which a key decides):
    /// every one this version has, unless a test plays an older version.
    pub capabilities: u32,
}

impl Settings {
    /// The settings `[sync]` of `cfg` describes, for a node of `workers`
    /// workers; `None` without `[sync]`.
    pub fn from_config(cfg: &crate::config::Config, workers: u16) -> Option<Self> {
        let s = cfg.sync.as_ref()?;
        // Under [redundancy] the node starts as backup; the state machine
        // makes it active when it becomes MASTER.
        let role = match s.role {
            Some(crate::config::SyncRole::Active) => Role::Active,
            Some(crate::config::SyncRole::Backup) | None => Role::Backup,
        };
        let mut out = Self::new(s.node_id, s.group, workers, role);
        out.services = cfg.service_sets.len();
        // What a peer without CAP_CONTRACT compares: the parsed form of
        // every service set as that version printed it.
        out.services_hash = crate::stats::layout::fnv1a(
            legacy_services(&cfg.service_sets).as_bytes(),
            crate::stats::layout::FNV_OFFSET,
        );
        out.key = s.key.as_ref().map(|k| k.as_bytes().to_vec());
        out.accept_keys = s
            .accept_keys
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        out.flush_bytes = s.flush_bytes as usize;
        out.flush_delay = Duration::from_millis(u64::from(s.flush_ms));
        out.keepalive = Duration::from_millis(u64::from(s.keepalive_ms));
        out.dead_after = s.dead_after;
        out.max_backlog = s.max_backlog_kib as usize * 1024;
        out.contract = cfg.sync_contract();
        Some(out)
    }

    /// Defaults for everything but identity and role.
    pub fn new(node_id: u32, group_id: u32, workers: u16, role: Role) -> Self {
        Self {
            node_id,
            group_id,
            workers,
            role,
            services: 0,
            services_hash: 0,
            key: None,
            accept_keys: Vec::new(),
            flush_bytes: 64 * 1024,
            flush_delay: Duration::from_millis(1),
            keepalive: Duration::from_secs(1),
            dead_after: 3,
            max_backlog: 16 << 20,
            contract: Vec::new(),
            capabilities: super::wire::CAP_DIGEST
                | super::wire::CAP_CONTRACT
                | super::wire::CAP_STATIC_NAT,
        }
    }
}

/// The service sets' `Debug` form as a node of the last version without
/// `CAP_CONTRACT` (b62a8f0) printed and hashed it: the fields added since
/// (`nat.port_reuse_delay_s` and the subscriber fields after it) are left
/// out, so that adding one does not break a rolling upgrade from that
/// version. Each is a number or a unit variant: its value ends at the next
/// `,` or space.
pub fn legacy_services(sets: &[crate::config::ServiceSet]) -> String {
    const ADDED: [&str; 9] = [
        ", port_reuse_delay_s: ",
        ", mapping: ",
        ", block_size: ",
        ", blocks_per_subscriber: ",
        ", sessions_per_subscriber: ",
        ", subscriber_sessions_per_sec: ",
        ", filtering: ",
        ", statics: ",
        ", forwards: ",
    ];
    let mut text = format!("{sets:?}");
    for field in ADDED {
        while let Some(at) = text.find(field) {
            let value = text[at + field.len()..]
                .find([',', ' '])
                .unwrap_or(text.len() - at - field.len());
            text.replace_range(at..at + field.len() + value, "");
        }
    }
    text
}

#[cfg(test)]
mod legacy_tests {
    #[test]
    fn the_services_hash_leaves_out_fields_added_since_contracts() {
        let cfg = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[interfaces]\ninside = \"a\"\noutside = \"b\"\n[[service_set]]\nname = \"s\"\n\
             [service_set.nat]\npool = [\"192.0.2.1\"]\nports = \"1024-2047\"\n\
             port_reuse_delay_s = 30\nmapping = \"address-and-port-dependent\"\n\
             block_size = 64\n",
        )
        .unwrap();
        let text = super::legacy_services(&cfg.service_sets);
        assert!(
            text.contains(
                "nat: Some(Nat { pool: [192.0.2.1], ports: PortRange { lo: 1024, hi: 2047 } })"
            ),
            "{text}"
        );
        assert!(!text.contains("port_reuse_delay_s"));
        assert!(!text.contains("subscriber"));
    }
}

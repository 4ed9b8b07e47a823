//! `[sync]`: session replication to the peer node.

use std::{net::IpAddr, path::Path};

use serde::Deserialize;

use super::ConfigError;

/// Which side of the replication this node takes, when no redundancy
/// state machine decides it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncRole {
    /// Sends its sessions to the peer.
    Active,
    /// Installs the peer's sessions; dials the peer and asks for a cold sync.
    Backup,
}

/// The replication link.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// This node's sync address (the listening and dialing address).
    pub local: IpAddr,
    /// The peer's sync address: the only one allowed to connect.
    pub peer: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Fixed role without `[redundancy]`; with it, the state machine
    /// decides (MASTER sends) and this must be unset.
    #[serde(default)]
    pub role: Option<SyncRole>,
    /// This node's id, unique within the pair (1..).
    pub node_id: u32,
    /// The redundancy group both nodes belong to.
    #[serde(default = "default_group")]
    pub group: u32,
    /// Shared secret: when set, every message is authenticated with
    /// HMAC-SHA256 and unauthenticated ones are refused. At least 16
    /// bytes; keep the file readable by root only.
    #[serde(default)]
    pub key: Option<String>,
    /// Keys accepted besides `key`, never used to sign: a key rollover
    /// adds the new key here on both nodes, then makes it `key` one node
    /// at a time, then drops the old one. Each at least 16 bytes.
    #[serde(default)]
    pub accept_keys: Vec<String>,
    /// Run a redundancy pair without a key: heartbeats and sync messages
    /// can then be forged by anyone who reaches the sync or heartbeat
    /// addresses. Logged at every start and shown in the views.
    #[serde(default)]
    pub insecure: bool,
    /// A batch of session records is sent when it reaches this many bytes...
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: u32,
    /// ...or this many milliseconds after its first record.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u32,
    /// A keepalive goes out after this long without traffic...
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u32,
    /// ...and the peer is declared dead after this many silent intervals.
    #[serde(default = "default_dead_after")]
    pub dead_after: u32,
    /// Seconds a synced session outlives its timeout on the backup (the
    /// active refreshes live sessions well within it).
    #[serde(default = "default_grace")]
    pub grace: u32,
    /// KiB of records the connection may hold unsent (beyond what the
    /// socket buffers): past half of it the workers' events wait in their
    /// rings, past all of it records are refused. Either way the sessions
    /// are marked and sent again by repair once there is room.
    #[serde(default = "default_max_backlog_kib")]
    pub max_backlog_kib: u32,
}

fn default_port() -> u16 {
    7468
}
fn default_group() -> u32 {
    1
}
fn default_flush_bytes() -> u32 {
    64 * 1024
}
fn default_flush_ms() -> u32 {
    1
}
fn default_keepalive_ms() -> u32 {
    1000
}
fn default_dead_after() -> u32 {
    3
}
fn default_grace() -> u32 {
    60
}
fn default_max_backlog_kib() -> u32 {
    16 * 1024
}

impl Sync {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected, found: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("sync.{key}"),
            expected,
            found,
        };
        if self.local == self.peer {
            return Err(invalid(
                "peer",
                "an address other than sync.local",
                self.peer.to_string(),
            ));
        }
        if self.local.is_ipv4() != self.peer.is_ipv4() {
            return Err(invalid(
                "peer",
                "the same family as sync.local",
                self.peer.to_string(),
            ));
        }
        if self.port == 0 {
            return Err(invalid("port", "1..=65535", "0".into()));
        }
        if self.node_id == 0 {
            return Err(invalid("node_id", "1..=4294967295", "0".into()));
        }
        if !(128..=1 << 20).contains(&self.max_backlog_kib) {
            return Err(invalid(
                "max_backlog_kib",
                "128..=1048576 (KiB)",
                self.max_backlog_kib.to_string(),
            ));
        }
        if let Some(k) = &self.key
            && k.len() < 16
        {
            return Err(invalid(
                "key",
                "at least 16 bytes",
                format!("{} bytes", k.len()),
            ));
        }
        for (i, k) in self.accept_keys.iter().enumerate() {
            if k.len() < 16 {
                return Err(invalid(
                    &format!("accept_keys[{i}]"),
                    "at least 16 bytes",
                    format!("{} bytes", k.len()),
                ));
            }
        }
        if !self.accept_keys.is_empty() && self.key.is_none() {
            return Err(invalid(
                "accept_keys",
                "a `key` to sign with as well",
                format!("{} keys and no key", self.accept_keys.len()),
            ));
        }
        if self.insecure && self.key.is_some() {
            return Err(invalid(
                "insecure",
                "false when a key is set",
                "true".into(),
            ));
        }
        if !(1024..=512 * 1024).contains(&self.flush_bytes) {
            return Err(invalid(
                "flush_bytes",
                "1024..=524288",
                self.flush_bytes.to_string(),
            ));
        }
        if !(1..=1000).contains(&self.flush_ms) {
            return Err(invalid("flush_ms", "1..=1000", self.flush_ms.to_string()));
        }
        if !(10..=60_000).contains(&self.keepalive_ms) {
            return Err(invalid(
                "keepalive_ms",
                "10..=60000",
                self.keepalive_ms.to_string(),
            ));
        }
        if !(2..=20).contains(&self.dead_after) {
            return Err(invalid("dead_after", "2..=20", self.dead_after.to_string()));
        }
        if self.grace > 3600 {
            return Err(invalid("grace", "0..=3600", self.grace.to_string()));
        }
        Ok(())
    }
}

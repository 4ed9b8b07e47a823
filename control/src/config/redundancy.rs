//! `[redundancy]`: the pair's state machine, its heartbeats, health
//! checks and the addresses that follow mastership.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use serde::Deserialize;

use super::ConfigError;
use crate::ha::fsm::{Check, Policy};

/// Which forwarding interface an address or a check belongs to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Inside,
    Outside,
}

/// An address the MASTER holds: IPv4 added as a /32 and announced by
/// gratuitous ARP, IPv6 added as a /128 without duplicate address
/// detection and announced by unsolicited neighbour advertisements.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub interface: Side,
    pub address: IpAddr,
}

/// A heartbeat path besides the sync link's: this node's address and the
/// peer's on a shared link.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatPath {
    pub local: IpAddr,
    pub peer: IpAddr,
}

/// Probe-based failure detection of one interface: ICMP echoes from its
/// own (test) address to these targets, in turn.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub interface: Side,
    pub targets: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Redundancy {
    /// Higher wins the tie-breaks (then the lower node id).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Take mastership back from a lower-priority master.
    #[serde(default)]
    pub preempt: bool,
    /// Startup wait for the peer, preemption delay, and how long a
    /// switchover request waits for the master's release.
    #[serde(default = "default_hold_down_ms")]
    pub hold_down_ms: u32,
    /// A heartbeat goes out on every path this often...
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u32,
    /// ...and the peer is dead after this many intervals without one on
    /// any path.
    #[serde(default = "default_multiplier")]
    pub multiplier: u32,
    /// Heartbeats' UDP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Paths besides the sync link (sync.local to sync.peer), which is
    /// always one.
    #[serde(default)]
    pub heartbeat: Vec<HeartbeatPath>,
    #[serde(default)]
    pub vip: Vec<Vip>,
    /// Failures that release mastership and make a standby ineligible:
    /// any of "link-down", "probe-failure", "worker-stall"; the others
    /// only warn.
    #[serde(default = "default_critical")]
    pub critical: Vec<String>,
    /// A worker making no progress this long has stalled.
    #[serde(default = "default_stall_ms")]
    pub stall_ms: u32,
    /// Gratuitous ARPs (IPv4) and unsolicited neighbour advertisements
    /// (IPv6) sent per address on takeover, this far apart.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    #[serde(default = "default_garp_interval_ms")]
    pub garp_interval_ms: u32,
    /// Probe-based failure detection time: probes go out a fifth of it
    /// apart and five lost in a row fail the interface.
    #[serde(default = "default_failure_detection_ms")]
    pub failure_detection_ms: u32,
    #[serde(default)]
    pub probe: Vec<Probe>,
    /// A standby that has not been Hot (holding the master's sessions)
    /// for this long while a master lives is a warning in every view.
    #[serde(default = "default_unsynced_warn_ms")]
    pub unsynced_warn_ms: u32,
}

fn default_priority() -> u8 {
    100
}
fn default_hold_down_ms() -> u32 {
    1000
}
fn default_keepalive_ms() -> u32 {
    50
}
fn default_multiplier() -> u32 {
    3
}
fn default_port() -> u16 {
    crate::ha::heartbeat::PORT
}
fn default_critical() -> Vec<String> {
    Check::ALL.iter().map(|c| c.name().to_owned()).collect()
}
fn default_stall_ms() -> u32 {
    1000
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval_ms() -> u32 {
    100
}
fn default_failure_detection_ms() -> u32 {
    1000
}
fn default_unsynced_warn_ms() -> u32 {
    30_000
}

impl Redundancy {
    /// The critical/warn split as the state machine takes it.
    pub fn policy(&self) -> Policy {
        let mut p = Policy {
            critical: [false; 3],
        };
        for c in Check::ALL {
            p.critical[c as usize] = self.critical.iter().any(|n| n == c.name());
        }
        p
    }

    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected, found: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("redundancy.{key}"),
            expected,
            found,
        };
        if self.priority == 0 {
            return Err(invalid("priority", "1..=255", "0".into()));
        }
        if !(100..=60_000).contains(&self.hold_down_ms) {
            return Err(invalid(
                "hold_down_ms",
                "100..=60000",
                self.hold_down_ms.to_string(),
            ));
        }
        if !(10..=1000).contains(&self.keepalive_ms) {
            return Err(invalid(
                "keepalive_ms",
                "10..=1000",
                self.keepalive_ms.to_string(),
            ));
        }
        if !(2..=20).contains(&self.multiplier) {
            return Err(invalid("multiplier", "2..=20", self.multiplier.to_string()));
        }
        if self.port == 0 {
            return Err(invalid("port", "1..=65535", "0".into()));
        }
        for (i, h) in self.heartbeat.iter().enumerate() {
            if h.local == h.peer || h.local.is_ipv4() != h.peer.is_ipv4() {
                return Err(invalid(
                    &format!("heartbeat[{i}].peer"),
                    "an address of the same family as local, other than it",
                    h.peer.to_string(),
                ));
            }
        }
        for (i, v) in self.vip.iter().enumerate() {
            let a = v.address;
            let broadcast = matches!(a, IpAddr::V4(a) if a.is_broadcast());
            if a.is_unspecified() || broadcast || a.is_multicast() || a.is_loopback() {
                return Err(invalid(
                    &format!("vip[{i}].address"),
                    "a unicast address",
                    a.to_string(),
                ));
            }
            if self.vip[..i].iter().any(|o| o.address == a) {
                return Err(invalid(
                    &format!("vip[{i}].address"),
                    "each address once",
                    a.to_string(),
                ));
            }
        }
        for c in &self.critical {
            if !Check::ALL.iter().any(|k| k.name() == c) {
                return Err(invalid(
                    "critical",
                    "a list of \"link-down\", \"probe-failure\", \"worker-stall\"",
                    format!("{c:?}"),
                ));
            }
        }
        if !(200..=60_000).contains(&self.stall_ms) {
            return Err(invalid(
                "stall_ms",
                "200..=60000",
                self.stall_ms.to_string(),
            ));
        }
        if !(1..=10).contains(&self.garp_count) {
            return Err(invalid("garp_count", "1..=10", self.garp_count.to_string()));
        }
        if !(10..=1000).contains(&self.garp_interval_ms) {
            return Err(invalid(
                "garp_interval_ms",
                "10..=1000",
                self.garp_interval_ms.to_string(),
            ));
        }
        if !(1000..=3_600_000).contains(&self.unsynced_warn_ms) {
            return Err(invalid(
                "unsynced_warn_ms",
                "1000..=3600000",
                self.unsynced_warn_ms.to_string(),
            ));
        }
        if !(100..=60_000).contains(&self.failure_detection_ms) {
            return Err(invalid(
                "failure_detection_ms",
                "100..=60000",
                self.failure_detection_ms.to_string(),
            ));
        }
        for (i, p) in self.probe.iter().enumerate() {
            if self.probe[..i].iter().any(|o| o.interface == p.interface) {
                return Err(invalid(
                    &format!("probe[{i}].interface"),
                    "each interface once",
                    format!("{:?}", p.interface).to_lowercase(),
                ));
            }
            if p.targets.is_empty() || p.targets.len() > 8 {
                return Err(invalid(
                    &format!("probe[{i}].targets"),
                    "1 to 8 addresses",
                    p.targets.len().to_string(),
                ));
            }
            for a in &p.targets {
                if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                    return Err(invalid(
                        &format!("probe[{i}].targets"),
                        "unicast addresses",
                        a.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

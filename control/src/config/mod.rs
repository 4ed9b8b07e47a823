//! tandemd's configuration file (TOML).
//!
//! Design: serde does the shape (unknown keys are errors, so a typo never
//! silently falls back to a default); `validate` does the ranges. Every error
//! names the file, the key and what was expected.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

mod log;
mod redundancy;
mod reload;
mod services;
mod sync;

pub use log::{Events, Log};
pub use redundancy::{HeartbeatPath, Probe, Redundancy, Side, Vip};
pub use reload::Changes;
pub use services::{
    Direction, Filtering, Firewall, Forward, MAX_BLOCKS_PER_SUBSCRIBER, Mapping, Nat, PortRange,
    Prefix, Protocol, Rule, RuleAction, ServiceSet, Sessions, Timeouts,
};
pub use sync::{Sync, SyncRole};

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}", one_line(.source))]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub interfaces: Interfaces,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub sessions: Sessions,
    /// Service sets, `[[service_set]]` in the file. None: the node routes
    /// without sessions.
    #[serde(default, rename = "service_set")]
    pub service_sets: Vec<ServiceSet>,
    /// Session replication to the peer; none: the node runs alone.
    #[serde(default)]
    pub sync: Option<Sync>,
    /// The pair's state machine (needs `[sync]`); none: `node.forward`
    /// and `sync.role` fix the roles.
    #[serde(default)]
    pub redundancy: Option<Redundancy>,
    /// tandemd's own log.
    #[serde(default)]
    pub log: Log,
}

/// The two interfaces the node forwards between.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Interface towards the protected side (clients).
    pub inside: String,
    /// Interface towards the outside (servers, the Internet).
    pub outside: String,
}

/// Node identity and addresses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Extra addresses that belong to this node besides those configured on
    /// its interfaces (which are always local); traffic to them goes to the
    /// kernel.
    #[serde(default)]
    pub local_addresses: Vec<IpAddr>,
    /// Whether the node forwards service traffic (default true). With
    /// `[redundancy]` the state machine decides and this must be unset.
    #[serde(default)]
    pub forward: Option<bool>,
    /// Start even though the kernel forwards between the node's interfaces
    /// (`net.ipv4.conf.IF.forwarding` or `net.ipv6.conf.IF.forwarding` is
    /// 1). Off by default: with it on, a dead tandemd leaves a router
    /// that forwards without the firewall and without NAT.
    #[serde(default)]
    pub allow_kernel_forwarding: bool,
}

/// How XDP is attached.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode; falls back to generic with a warning when unsupported.
    #[default]
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// How AF_XDP sockets bind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy where the driver allows it, else copy.
    #[default]
    Auto,
    Copy,
    Zerocopy,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// Data-path sizing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    /// Worker threads; 0 means one per rx queue, capped at the core count
    /// (or at the number of `cores` listed).
    pub workers: u32,
    /// CPUs the workers are pinned to, worker i to `cores[i % len]`; empty
    /// means every CPU of the process's affinity, in order. Listing them
    /// keeps the sync, redundancy and control threads (and the kernel's
    /// own work) off the workers' CPUs.
    pub cores: Vec<u32>,
    pub xdp_mode: XdpMode,
    pub bind: BindMode,
    /// UMEM frame size in bytes: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames per worker, shared by its sockets.
    pub frames_per_worker: u32,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    /// Frames taken from a ring per iteration.
    pub batch: u32,
    /// ICMP errors (time exceeded) a worker may send per second.
    pub icmp_errors_per_sec: u32,
    /// Packets per second a worker may hand to the kernel while their
    /// next hop's neighbour is unresolved.
    pub punts_per_sec: u32,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            workers: 0,
            cores: Vec::new(),
            xdp_mode: XdpMode::Native,
            bind: BindMode::Auto,
            frame_size: 2048,
            frames_per_worker: 8192,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 2048,
            comp_ring: 2048,
            batch: 64,
            icmp_errors_per_sec: 1000,
            punts_per_sec: 1000,
        }
    }
}

/// A TOML error's text (which quotes the offending line under its own)
/// on one line, for an error message.
fn one_line(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', " | ")
}

impl Config {
    /// What the two nodes of a pair must agree on, as (field, value) pairs
    /// named as in this file: the service sets' names and order (records
    /// name their set by index) and their NAT pools and port ranges (a
    /// binding made on one node must be valid on the other). Everything
    /// else may differ while a change rolls through the pair: firewall
    /// rules, inside prefixes, offload, timeouts, limits, probes.
    pub fn sync_contract(&self) -> Vec<(String, String)> {
        let mut out = vec![(
            "service_set".to_owned(),
            format!("{} sets", self.service_sets.len()),
        )];
        for (i, s) in self.service_sets.iter().enumerate() {
            out.push((format!("service_set[{i}].name"), s.name.clone()));
            let (pool, ports) = match &s.nat {
                None => ("none".to_owned(), "none".to_owned()),
                Some(n) => (
                    n.pool
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    format!("{}-{}", n.ports.lo, n.ports.hi),
                ),
            };
            out.push((format!("service_set[{i}].nat.pool"), pool));
            out.push((format!("service_set[{i}].nat.ports"), ports));
        }
        out
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected, found: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            expected,
            found,
        };
        let ifname_ok = |n: &str| !n.is_empty() && n.len() < 16 && !n.contains(['/', ' ']);
        if !ifname_ok(&self.interfaces.inside) {
            return Err(invalid(
                "interfaces.inside",
                "an interface name (1-15 characters)",
                format!("{:?}", self.interfaces.inside),
            ));
        }
        if !ifname_ok(&self.interfaces.outside) {
            return Err(invalid(
                "interfaces.outside",
                "an interface name (1-15 characters)",
                format!("{:?}", self.interfaces.outside),
            ));
        }
        if self.interfaces.inside == self.interfaces.outside {
            return Err(invalid(
                "interfaces.outside",
                "a different interface than interfaces.inside",
                format!("{:?}", self.interfaces.outside),
            ));
        }
        let d = &self.dataplane;
        if d.workers > 64 {
            return Err(invalid(
                "dataplane.workers",
                "0..=64",
                d.workers.to_string(),
            ));
        }
        for (i, c) in d.cores.iter().enumerate() {
            if *c >= 4096 || d.cores[..i].contains(c) {
                return Err(invalid(
                    "dataplane.cores",
                    "distinct CPU numbers below 4096",
                    format!("{:?}", d.cores),
                ));
            }
        }
        if d.frame_size != 2048 && d.frame_size != 4096 {
            return Err(invalid(
                "dataplane.frame_size",
                "2048 or 4096",
                d.frame_size.to_string(),
            ));
        }
        for (key, v) in [
            ("dataplane.rx_ring", d.rx_ring),
            ("dataplane.tx_ring", d.tx_ring),
            ("dataplane.fill_ring", d.fill_ring),
            ("dataplane.comp_ring", d.comp_ring),
        ] {
            if !v.is_power_of_two() || !(64..=65536).contains(&v) {
                return Err(invalid(key, "a power of two in 64..=65536", v.to_string()));
            }
        }
        if d.frames_per_worker < 2 * d.fill_ring || d.frames_per_worker > 1 << 20 {
            return Err(invalid(
                "dataplane.frames_per_worker",
                "at least 2 x fill_ring (one fill ring per interface) and at most 1048576",
                d.frames_per_worker.to_string(),
            ));
        }
        if !(1..=256).contains(&d.batch) {
            return Err(invalid("dataplane.batch", "1..=256", d.batch.to_string()));
        }
        if let Some(s) = &self.sync {
            s.validate(path)?;
        }
        if let Some(r) = &self.redundancy {
            r.validate(path)?;
            let Some(s) = &self.sync else {
                return Err(invalid(
                    "redundancy",
                    "a [sync] section too (the pair's link and identity)",
                    "no [sync]".into(),
                ));
            };
            if s.key.is_none() && !s.insecure {
                return Err(invalid(
                    "sync.key",
                    "a shared key of at least 16 bytes with [redundancy] (heartbeats and \
                     sync messages are authenticated with it), or `insecure = true` in [sync]",
                    "no key".into(),
                ));
            }
            if let Some(role) = s.role {
                return Err(invalid(
                    "sync.role",
                    "no role: [redundancy] decides it",
                    format!("{role:?}").to_lowercase(),
                ));
            }
            if let Some(f) = self.node.forward {
                return Err(invalid(
                    "node.forward",
                    "no value: [redundancy] decides it",
                    f.to_string(),
                ));
            }
        } else if let Some(s) = &self.sync
            && s.role.is_none()
        {
            return Err(invalid(
                "sync.role",
                "\"active\" or \"backup\" (or a [redundancy] section to decide it)",
                "nothing".into(),
            ));
        }
        if let Some((key, expected, found)) = self.log.invalid() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: key.into(),
                expected,
                found,
            });
        }
        self.validate_services(path)
    }

    /// Whether the node forwards from the start: with `[redundancy]` only
    /// once the state machine makes it MASTER.
    pub fn forward_at_start(&self) -> bool {
        self.redundancy.is_none() && self.node.forward.unwrap_or(true)
    }

    /// Every NAT pool address of every service set, in configuration
    /// order.
    pub fn pool_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        let mut all: Vec<std::net::Ipv4Addr> = Vec::new();
        for n in self.service_sets.iter().filter_map(|s| s.nat.as_ref()) {
            let statics = n.statics.iter().map(|s| s.outside);
            let forwards = n.forwards.iter().map(|f| *f.outside.ip());
            for a in n.pool.iter().copied().chain(statics).chain(forwards) {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
        all
    }

    fn validate_services(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, expected, found: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            expected,
            found,
        };
        let s = &self.sessions;
        if !(1..=1 << 24).contains(&s.per_worker) {
            return Err(invalid(
                "sessions.per_worker".into(),
                "1..=16777216",
                s.per_worker.to_string(),
            ));
        }
        for (name, v) in s.timeouts.all() {
            if !(1..=86400 * 7).contains(&v) {
                return Err(invalid(
                    format!("sessions.timeouts.{name}"),
                    "1..=604800 seconds",
                    v.to_string(),
                ));
            }
        }
        if self.service_sets.len() > 255 {
            return Err(invalid(
                "service_set".into(),
                "at most 255 service sets",
                self.service_sets.len().to_string(),
            ));
        }
        let mut pool_owner: Vec<(std::net::Ipv4Addr, &str)> = Vec::new();
        for (i, set) in self.service_sets.iter().enumerate() {
            let at = |k: &str| format!("service_set[{i}].{k}");
            let name_ok = |n: &str| {
                !n.is_empty()
                    && n.len() <= 32
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !name_ok(&set.name) {
                return Err(invalid(
                    at("name"),
                    "1-32 characters of letters, digits, '-', '_', '.'",
                    format!("{:?}", set.name),
                ));
            }
            if self.service_sets[..i].iter().any(|o| o.name == set.name) {
                return Err(invalid(
                    at("name"),
                    "a name no other service set uses",
                    format!("{:?}", set.name),
                ));
            }
            for (r, rule) in set.firewall.rules.iter().enumerate() {
                if rule.name.is_empty() {
                    return Err(invalid(
                        at(&format!("firewall.rules[{r}].name")),
                        "a rule name",
                        "\"\"".into(),
                    ));
                }
            }
            if let Some(nat) = &set.nat {
                if nat.pool.is_empty() || nat.pool.len() > 64 {
                    return Err(invalid(
                        at("nat.pool"),
                        "1 to 64 IPv4 addresses",
                        nat.pool.len().to_string(),
                    ));
                }
                if nat.ports.lo == 0 {
                    return Err(invalid(
                        at("nat.ports"),
                        "a range within 1-65535",
                        format!("{}-{}", nat.ports.lo, nat.ports.hi),
                    ));
                }
                if nat.block_size == 0 {
                    return Err(invalid(
                        at("nat.block_size"),
                        "1 to 65535 ports",
                        "0".into(),
                    ));
                }
                let max = services::MAX_BLOCKS_PER_SUBSCRIBER;
                if nat.blocks_per_subscriber == 0 || nat.blocks_per_subscriber > max {
                    return Err(invalid(
                        at("nat.blocks_per_subscriber"),
                        "1 to 32 blocks",
                        nat.blocks_per_subscriber.to_string(),
                    ));
                }
                for a in &nat.pool {
                    if let Some((_, other)) = pool_owner.iter().find(|(p, _)| p == a) {
                        return Err(invalid(
                            at("nat.pool"),
                            "addresses no other service set's pool has",
                            format!("{a} (also in {other})"),
                        ));
                    }
                    pool_owner.push((*a, &set.name));
                }
                self.validate_static(nat, &set.name, &at, &mut pool_owner, &invalid)?;
            }
        }
        // The XDP program answers ARP for each pool address from a map of
        // this size (`tandem_common::MAX_ARP_ADDRS`).
        if pool_owner.len() > 1024 {
            return Err(invalid(
                "service_set.nat.pool".into(),
                "at most 1024 pool addresses in all service sets",
                pool_owner.len().to_string(),
            ));
        }
        Ok(())
    }

    /// A service set's static translations and forwarded ports: each
    /// outside address (a static one) or (protocol, address, port) (a
    /// forward) and each static inside address used once over all sets;
    /// a static outside address is in no pool.
    fn validate_static<'a>(
        &self,
        nat: &services::Nat,
        set: &'a str,
        at: &dyn Fn(&str) -> String,
        owners: &mut Vec<(std::net::Ipv4Addr, &'a str)>,
        invalid: &dyn Fn(String, &'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let all = || self.service_sets.iter().filter_map(|s| s.nat.as_ref());
        for (i, st) in nat.statics.iter().enumerate() {
            if let Some((_, other)) = owners.iter().find(|(p, _)| *p == st.outside) {
                return Err(invalid(
                    at(&format!("nat.static[{i}].outside")),
                    "an address no pool and no other static translation has",
                    format!("{} (also in {other})", st.outside),
                ));
            }
            owners.push((st.outside, set));
            let inside_twice = all()
                .flat_map(|n| n.statics.iter())
                .filter(|o| o.inside == st.inside)
                .count()
                > 1;
            if inside_twice {
                return Err(invalid(
                    at(&format!("nat.static[{i}].inside")),
                    "an inside address with one static translation",
                    st.inside.to_string(),
                ));
            }
        }
        for (i, f) in nat.forwards.iter().enumerate() {
            if !matches!(f.protocol.0, 6 | 17) || f.outside.port() == 0 || f.inside.port() == 0 {
                return Err(invalid(
                    at(&format!("nat.forward[{i}]")),
                    "protocol tcp or udp, with ports 1-65535",
                    format!("{} {} -> {}", f.protocol.0, f.outside, f.inside),
                ));
            }
            let twice = all()
                .flat_map(|n| n.forwards.iter())
                .filter(|o| o.protocol == f.protocol && o.outside == f.outside)
                .count()
                > 1;
            let on_static = all()
                .flat_map(|n| n.statics.iter())
                .any(|s| s.outside == *f.outside.ip());
            // On a pool address, only its own set's: that set keeps the
            // pair out of its mappings.
            let others_pool = all()
                .filter(|n| !std::ptr::eq(*n, nat))
                .any(|n| n.pool.contains(f.outside.ip()));
            if twice || on_static || others_pool {
                return Err(invalid(
                    at(&format!("nat.forward[{i}].outside")),
                    "a (protocol, address, port) forwarded once, not on a static address \
                     nor on another service set's pool",
                    f.outside.to_string(),
                ));
            }
            if !owners.iter().any(|(a, _)| a == f.outside.ip()) {
                owners.push((*f.outside.ip(), set));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [interfaces]
        inside = "in0"
        outside = "out0"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/tandem/a.toml"), text)
    }

    #[test]
    fn pool_addresses_are_bounded_in_all() {
        let sets = |n: u32| {
            let mut t = GOOD.to_owned();
            for set in 0..n {
                let pool: Vec<String> = (0..64u32)
                    .map(|i| {
                        format!(
                            "\"{}\"",
                            std::net::Ipv4Addr::from(0x0a00_0000 + set * 64 + i)
                        )
                    })
                    .collect();
                let _ = std::fmt::Write::write_fmt(
                    &mut t,
                    format_args!(
                        "[[service_set]]\nname = \"s{set}\"\n[service_set.nat]\npool = [{}]\n",
                        pool.join(", ")
                    ),
                );
            }
            parse(&t)
        };
        assert!(sets(16).is_ok());
        let e = sets(17).unwrap_err().to_string();
        assert!(e.contains("at most 1024 pool addresses"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.interfaces.inside, "in0");
        assert_eq!(cfg.dataplane, Dataplane::default());
        assert!(cfg.forward_at_start());
    }

    #[test]
    fn full_config_parses() {
        let cfg = parse(
            r#"
            [interfaces]
            inside = "in0"
            outside = "out0"
            [node]
            local_addresses = ["198.18.1.1", "2001:db8::1"]
            forward = false
            [dataplane]
            workers = 2
            cores = [1, 0]
            xdp_mode = "generic"
            bind = "copy"
            frame_size = 4096
            "#,
        )
        .unwrap();
        assert_eq!(cfg.dataplane.workers, 2);
        assert_eq!(cfg.dataplane.cores, [1, 0]);
        assert_eq!(cfg.dataplane.xdp_mode, XdpMode::Generic);
        assert_eq!(cfg.dataplane.bind, BindMode::Copy);
        assert_eq!(cfg.node.local_addresses.len(), 2);
        assert!(!cfg.forward_at_start());
    }

    #[test]
    fn redundancy_section_parses_and_owns_the_roles() {
        let sync = "[sync]\nlocal = \"198.18.9.1\"\npeer = \"198.18.9.2\"\nnode_id = 1\n\
                    key = \"sixteen bytes at least\"\n";
        let base = format!(
            "{GOOD}\n{sync}[redundancy]\nheartbeat = [{{ local = \"198.18.1.2\", peer = \"198.18.1.3\" }}]\n\
             vip = [{{ interface = \"inside\", address = \"198.18.1.1\" }}]\n"
        );
        let cfg = parse(&base).unwrap();
        let r = cfg.redundancy.as_ref().unwrap();
        assert_eq!((r.priority, r.preempt, r.hold_down_ms), (100, false, 1000));
        assert_eq!((r.keepalive_ms, r.multiplier, r.port), (50, 3, 7469));
        assert_eq!(r.vip[0].interface, Side::Inside);
        assert_eq!(r.policy().critical, [true; 3]);
        assert_eq!((r.failure_detection_ms, r.probe.len()), (1000, 0));
        assert!(!cfg.forward_at_start(), "the state machine decides");
        let probed = format!(
            "{base}probe = [{{ interface = \"outside\", targets = [\"198.18.2.10\", \"198.18.2.11\"] }}]\n"
        );
        let r = parse(&probed).unwrap().redundancy.unwrap();
        assert_eq!(r.probe[0].interface, Side::Outside);
        assert_eq!(r.probe[0].targets.len(), 2);
        let warn = format!("{base}critical = [\"link-down\"]\n");
        assert_eq!(
            parse(&warn).unwrap().redundancy.unwrap().policy().critical,
            [true, false, false]
        );
        for (extra, key) in [
            ("priority = 0", "redundancy.priority"),
            ("keepalive_ms = 5", "redundancy.keepalive_ms"),
            ("multiplier = 1", "redundancy.multiplier"),
            ("hold_down_ms = 10", "redundancy.hold_down_ms"),
            ("stall_ms = 10", "redundancy.stall_ms"),
            ("unsynced_warn_ms = 10", "redundancy.unsynced_warn_ms"),
            ("garp_count = 0", "redundancy.garp_count"),
            ("garp_interval_ms = 0", "redundancy.garp_interval_ms"),
            ("critical = [\"reboot\"]", "redundancy.critical"),
            ("port = 0", "redundancy.port"),
            (
                "failure_detection_ms = 10",
                "redundancy.failure_detection_ms",
            ),
            (
                "probe = [{ interface = \"inside\", targets = [] }]",
                "redundancy.probe[0].targets",
            ),
            (
                "probe = [{ interface = \"inside\", targets = [\"224.0.0.1\"] }]",
                "redundancy.probe[0].targets",
            ),
            (
                "probe = [{ interface = \"inside\", targets = [\"198.18.1.10\"] }, \
                 { interface = \"inside\", targets = [\"198.18.1.11\"] }]",
                "redundancy.probe[1].interface",
            ),
        ] {
            let e = parse(&format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{extra}: {e}");
        }
        let twice = base.replace(
            "vip = [",
            "vip = [{ interface = \"outside\", address = \"198.18.1.1\" }, ",
        );
        assert!(parse(&twice).unwrap_err().to_string().contains("vip[1]"));
        let v6 = base.replace(
            "vip = [",
            "vip = [{ interface = \"inside\", address = \"2001:db8:1::1\" }, ",
        );
        let r = parse(&v6).unwrap().redundancy.unwrap();
        assert_eq!(
            r.vip[0].address,
            "2001:db8:1::1".parse::<std::net::IpAddr>().unwrap()
        );
        for bad in [
            "ff02::1",
            "::",
            "::1",
            "255.255.255.255",
            "0.0.0.0",
            "127.0.0.1",
        ] {
            let e = parse(&base.replace("198.18.1.1\" }]", &format!("{bad}\" }}]")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("vip[0].address"), "{bad}: {e}");
        }
        let roled = base.replace("node_id = 1", "node_id = 1\nrole = \"active\"");
        assert!(
            parse(&roled)
                .unwrap_err()
                .to_string()
                .contains("`sync.role`")
        );
        let forwarding = base.replace("[sync]", "[node]\nforward = true\n[sync]");
        assert!(
            parse(&forwarding)
                .unwrap_err()
                .to_string()
                .contains("`node.forward`")
        );
        // A key, or insecure said out loud.
        let keyless = base.replace("key = \"sixteen bytes at least\"\n", "");
        let e = parse(&keyless).unwrap_err().to_string();
        assert!(e.contains("`sync.key`") && e.contains("insecure"), "{e}");
        let insecure = keyless.replace("node_id = 1\n", "node_id = 1\ninsecure = true\n");
        assert!(parse(&insecure).unwrap().sync.unwrap().insecure);
        let both = base.replace("node_id = 1\n", "node_id = 1\ninsecure = true\n");
        assert!(
            parse(&both)
                .unwrap_err()
                .to_string()
                .contains("sync.insecure")
        );
        let rollover = base.replace(
            "node_id = 1\n",
            "node_id = 1\naccept_keys = [\"the next sixteen bytes\"]\n",
        );
        assert_eq!(parse(&rollover).unwrap().sync.unwrap().accept_keys.len(), 1);
        let short = base.replace("node_id = 1\n", "node_id = 1\naccept_keys = [\"short\"]\n");
        assert!(
            parse(&short)
                .unwrap_err()
                .to_string()
                .contains("sync.accept_keys[0]")
        );
        let alone = format!("{GOOD}\n[redundancy]\n");
        assert!(parse(&alone).unwrap_err().to_string().contains("[sync]"));
        let roleless = format!("{GOOD}\n{sync}");
        assert!(
            parse(&roleless)
                .unwrap_err()
                .to_string()
                .contains("`sync.role`")
        );
    }

    #[test]
    fn sync_section_parses_with_defaults_and_checks_ranges() {
        let base = format!(
            "{GOOD}\n[sync]\nlocal = \"198.18.9.1\"\npeer = \"198.18.9.2\"\nrole = \"active\"\nnode_id = 1\n"
        );
        let s = parse(&base).unwrap().sync.unwrap();
        assert_eq!(
            (s.port, s.group, s.flush_bytes, s.flush_ms),
            (7468, 1, 65536, 1)
        );
        assert_eq!((s.keepalive_ms, s.dead_after, s.grace), (1000, 3, 60));
        assert_eq!(s.role, Some(SyncRole::Active));
        assert!(s.key.is_none());
        assert!(parse(GOOD).unwrap().sync.is_none());
        for (extra, key) in [
            ("key = \"short\"", "sync.key"),
            ("flush_bytes = 10", "sync.flush_bytes"),
            ("flush_ms = 0", "sync.flush_ms"),
            ("keepalive_ms = 5", "sync.keepalive_ms"),
            ("dead_after = 1", "sync.dead_after"),
            ("grace = 100000", "sync.grace"),
            ("port = 0", "sync.port"),
        ] {
            let e = parse(&format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{extra}: {e}");
        }
        let same = base.replace("198.18.9.2", "198.18.9.1");
        assert!(parse(&same).unwrap_err().to_string().contains("sync.peer"));
        let v6 = base.replace("198.18.9.2", "2001:db8::2");
        assert!(parse(&v6).unwrap_err().to_string().contains("same family"));
        let zero = base.replace("node_id = 1", "node_id = 0");
        assert!(
            parse(&zero)
                .unwrap_err()
                .to_string()
                .contains("sync.node_id")
        );
        let role = base.replace("active", "primary");
        assert!(parse(&role).is_err());
    }

    #[test]
    fn parse_error_names_file_and_key() {
        let e = parse("[interfaces]\ninside = \"in0\"\noutside = 7\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/tandem/a.toml: "), "{e}");
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = parse(&format!("{GOOD}\n[dataplane]\nwokers = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wokers"), "{e}");
    }

    #[test]
    fn missing_section_is_refused() {
        let e = parse("[dataplane]\nworkers = 1\n").unwrap_err().to_string();
        assert!(e.contains("interfaces"), "{e}");
    }

    #[test]
    fn repeated_or_impossible_cores_are_refused() {
        for cores in ["[1, 1]", "[4096]"] {
            let e = parse(&format!("{GOOD}\n[dataplane]\ncores = {cores}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`dataplane.cores`: expected distinct CPU numbers below 4096"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_ring_size_names_key_and_expectation() {
        let e = parse(&format!("{GOOD}\n[dataplane]\nrx_ring = 1000\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/tandem/a.toml: key `dataplane.rx_ring`: expected a power of two in 64..=65536, found 1000"
        );
    }

    #[test]
    fn same_inside_and_outside_is_refused() {
        let e = parse("[interfaces]\ninside = \"in0\"\noutside = \"in0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("interfaces.outside"), "{e}");
    }

    #[test]
    fn bad_xdp_mode_is_refused() {
        let e = parse(&format!("{GOOD}\n[dataplane]\nxdp_mode = \"turbo\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("turbo"), "{e}");
    }

    #[test]
    fn too_few_frames_for_the_fill_rings_is_refused() {
        let e = parse(&format!(
            "{GOOD}\n[dataplane]\nfill_ring = 4096\nframes_per_worker = 4096\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("dataplane.frames_per_worker"), "{e}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for f in ["tandem.example.toml", "lab/a.toml", "lab/b.toml"] {
            let cfg = Config::load(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!cfg.interfaces.inside.is_empty());
        }
        let example = Config::load(&dir.join("tandem.example.toml")).unwrap();
        assert_eq!(
            example.dataplane,
            Dataplane::default(),
            "example documents the defaults"
        );
        assert_eq!(example.sessions, Sessions::default());
        let lab = Config::load(&dir.join("lab/a.toml")).unwrap();
        assert_eq!(lab.service_sets[0].nat.as_ref().unwrap().pool.len(), 1);
    }

    #[test]
    fn service_sets_parse_and_bad_ones_name_their_key() {
        let cfg = parse(&format!(
            r#"{GOOD}
            [sessions]
            per_worker = 1000
            [sessions.timeouts]
            udp = 5
            [[service_set]]
            name = "edge"
            inside_prefixes = ["10.0.0.0/8", "2001:db8::/32"]
            [service_set.firewall]
            outside_initiated = "reject"
            [[service_set.firewall.rules]]
            name = "web-in"
            direction = "outside"
            destination = "10.1.1.1"
            protocol = "tcp"
            destination_ports = "80-81"
            action = "forward"
            [service_set.nat]
            pool = ["192.0.2.1", "192.0.2.2"]
            "#
        ))
        .unwrap();
        assert_eq!(cfg.sessions.per_worker, 1000);
        assert_eq!(cfg.sessions.timeouts.udp, 5);
        assert_eq!(cfg.sessions.timeouts.tcp_established, 7200);
        let s = &cfg.service_sets[0];
        assert_eq!(s.firewall.outside_initiated, RuleAction::Reject);
        assert_eq!(s.firewall.inside_initiated, RuleAction::Forward);
        let r = &s.firewall.rules[0];
        assert_eq!(r.destination_ports, Some(PortRange { lo: 80, hi: 81 }));
        assert_eq!(r.protocol, Some(Protocol(6)));
        assert!(r.destination.unwrap().contains("10.1.1.1".parse().unwrap()));
        assert!(!r.destination.unwrap().contains("10.1.1.2".parse().unwrap()));
        assert_eq!(
            s.nat.as_ref().unwrap().ports,
            PortRange {
                lo: 1024,
                hi: 65535
            }
        );

        let with = parse(&format!(
            "{GOOD}\n[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
             filtering = \"address-dependent\"\n\
             [[service_set.nat.static]]\ninside = \"10.0.0.9\"\noutside = \"192.0.2.9\"\n\
             [[service_set.nat.forward]]\nprotocol = \"udp\"\noutside = \"192.0.2.1:5060\"\n\
             inside = \"10.0.0.5:5060\"\n"
        ))
        .unwrap();
        let n = with.service_sets[0].nat.as_ref().unwrap();
        assert_eq!(n.filtering, Filtering::AddressDependent);
        assert_eq!((n.statics.len(), n.forwards[0].protocol), (1, Protocol(17)));
        // The NAT answers for the pool, static and forwarded addresses.
        assert_eq!(
            with.pool_addresses(),
            [
                "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap(),
                "192.0.2.9".parse().unwrap()
            ]
        );
        for (bad, key) in [
            ("[[service_set]]\nname = \"a b\"\n", "service_set[0].name"),
            (
                "[[service_set]]\nname = \"a\"\n[[service_set]]\nname = \"a\"\n",
                "service_set[1].name",
            ),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = []\n",
                "service_set[0].nat.pool",
            ),
            ("[sessions]\nper_worker = 0\n", "sessions.per_worker"),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
                 [[service_set.nat.static]]\ninside = \"10.0.0.1\"\noutside = \"192.0.2.1\"\n",
                "service_set[0].nat.static[0].outside",
            ),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
                 [[service_set.nat.static]]\ninside = \"10.0.0.1\"\noutside = \"192.0.2.7\"\n\
                 [[service_set.nat.static]]\ninside = \"10.0.0.1\"\noutside = \"192.0.2.8\"\n",
                "service_set[0].nat.static[0].inside",
            ),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
                 [[service_set.nat.forward]]\nprotocol = \"icmp\"\noutside = \"192.0.2.1:80\"\n\
                 inside = \"10.0.0.1:80\"\n",
                "service_set[0].nat.forward[0]",
            ),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
                 [[service_set]]\nname = \"b\"\n[service_set.nat]\npool = [\"192.0.2.2\"]\n\
                 [[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"192.0.2.1:80\"\n\
                 inside = \"10.0.0.1:80\"\n",
                "service_set[1].nat.forward[0].outside",
            ),
            (
                "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"192.0.2.1\"]\n\
                 [[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"192.0.2.1:80\"\n\
                 inside = \"10.0.0.1:80\"\n\
                 [[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"192.0.2.1:80\"\n\
                 inside = \"10.0.0.2:80\"\n",
                "service_set[0].nat.forward[0].outside",
            ),
            ("[sessions.timeouts]\nudp = 0\n", "sessions.timeouts.udp"),
        ] {
            let e = parse(&format!("{GOOD}\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        for bad in [
            "[[service_set]]\nname = \"a\"\ninside_prefixes = [\"10.0.0.0/33\"]\n",
            "[[service_set]]\nname = \"a\"\n[service_set.nat]\npool = [\"1.2.3.4\"]\nports = \"9-1\"\n",
            "[[service_set]]\nname = \"a\"\n[[service_set.firewall.rules]]\nname = \"r\"\nprotocol = \"tcpp\"\naction = \"drop\"\n",
        ] {
            let e = parse(&format!("{GOOD}\n{bad}")).unwrap_err().to_string();
            assert!(e.starts_with("/etc/tandem/a.toml: "), "{e}");
        }
    }

    #[test]
    fn unreadable_file_names_path() {
        let e = Config::load(Path::new("/nonexistent/tandem.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/tandem.toml: cannot read"),
            "{e}"
        );
    }
}

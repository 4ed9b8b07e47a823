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

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
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
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Extra addresses that belong to this node besides those configured on
    /// its interfaces (which are always local); traffic to them goes to the
    /// kernel.
    #[serde(default)]
    pub local_addresses: Vec<IpAddr>,
    /// Whether the node forwards service traffic at start. The redundancy
    /// state machine will own this; until then it is set here.
    #[serde(default = "default_true")]
    pub forward: bool,
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
    /// Worker threads; 0 means one per rx queue, capped at the core count.
    pub workers: u32,
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

impl Default for Node {
    fn default() -> Self {
        Self {
            local_addresses: Vec::new(),
            forward: true,
        }
    }
}

fn default_true() -> bool {
    true
}

impl Config {
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
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, expected, found: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
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
    fn minimal_config_gets_defaults() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.interfaces.inside, "in0");
        assert_eq!(cfg.dataplane, Dataplane::default());
        assert!(cfg.node.forward);
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
            xdp_mode = "generic"
            bind = "copy"
            frame_size = 4096
            "#,
        )
        .unwrap();
        assert_eq!(cfg.dataplane.workers, 2);
        assert_eq!(cfg.dataplane.xdp_mode, XdpMode::Generic);
        assert_eq!(cfg.dataplane.bind, BindMode::Copy);
        assert_eq!(cfg.node.local_addresses.len(), 2);
        assert!(!cfg.node.forward);
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

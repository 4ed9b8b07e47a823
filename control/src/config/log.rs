//! `[log]`: tandemd's own log.

use serde::Deserialize;

/// What tandemd logs about itself (to stderr, the journal under systemd).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a filter of
    /// `target=level` directives as `RUST_LOG` takes them, which, when set,
    /// wins over this key. Changes on reload.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
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
}

//! The configuration loader on arbitrary text: every input is a
//! configuration or an error that names the file, never a panic; a
//! configuration it accepts is one the rest of the control crate takes
//! (the sync settings, the redundancy policy, the pool addresses).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_control::{
    config::{Config, ConfigError},
    sync::Settings,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(path, text) {
        Ok(cfg) => {
            let _ = cfg.forward_at_start();
            let pools = cfg.pool_addresses();
            assert!(
                pools.len() <= 1024,
                "validated: at most 1024 pool addresses"
            );
            if let Some(r) = &cfg.redundancy {
                let _ = r.policy();
            }
            for workers in [1u16, 2, 64] {
                let _ = Settings::from_config(&cfg, workers);
            }
            // What passed once passes again.
            assert!(Config::parse(path, text).is_ok());
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains("fuzz.toml"),
                "an error names its file: {shown}"
            );
            let _ = matches!(e, ConfigError::Invalid { .. });
        }
    }
});

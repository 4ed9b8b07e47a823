//! `cargo xtask install`: the release binaries, the systemd units, the
//! example configuration, the Prometheus rules, the Grafana dashboard and
//! the documentation, where the units and the README expect them.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{root, run};

/// (source under the workspace, destination under the root, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/tandemd", "usr/local/sbin/tandemd", 0o755),
    (
        "target/release/tandemstat",
        "usr/local/bin/tandemstat",
        0o755,
    ),
    ("target/release/tandemctl", "usr/local/bin/tandemctl", 0o755),
    (
        "deploy/tandemd@.service",
        "etc/systemd/system/tandemd@.service",
        0o644,
    ),
    (
        "deploy/tandemstat-serve@.service",
        "etc/systemd/system/tandemstat-serve@.service",
        0o644,
    ),
    (
        "deploy/tandem.example.toml",
        "etc/tandem/tandem.example.toml",
        0o644,
    ),
    (
        "deploy/prometheus/tandem.rules.yml",
        "usr/local/share/tandem/prometheus/tandem.rules.yml",
        0o644,
    ),
    (
        "deploy/prometheus/tandem.rules.test.yml",
        "usr/local/share/tandem/prometheus/tandem.rules.test.yml",
        0o644,
    ),
    (
        "deploy/grafana/tandem.json",
        "usr/local/share/tandem/grafana/tandem.json",
        0o644,
    ),
    ("README.md", "usr/share/doc/tandem/README.md", 0o644),
    (
        "docs/architecture.md",
        "usr/share/doc/tandem/architecture.md",
        0o644,
    ),
];

/// Installs under `destdir` (`/` for this machine). On `/` it also makes
/// group `tandem` if missing and, under a running systemd, reloads it.
pub fn install(destdir: &Path, build: bool) -> Result<()> {
    if build {
        crate::setup::setup()?;
        crate::lab::build_release_bins()?;
    }
    let live = destdir == Path::new("/");
    if live && !crate::is_root() {
        bail!("installing into / needs root (or give --destdir)");
    }
    for (src, dst, mode) in FILES {
        let from = root().join(src);
        let to = destdir.join(dst);
        if !from.exists() {
            bail!(
                "{} is missing (build first, or drop --no-build)",
                from.display()
            );
        }
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Replace, don't write through: a running tandemd keeps its
        // binary's old inode.
        let tmp = to.with_extension("tandem-new");
        fs::copy(&from, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))?;
        fs::rename(&tmp, &to).with_context(|| format!("installing {}", to.display()))?;
        println!("install: {}", to.display());
    }
    if live {
        if tandem_group_missing() {
            run(Command::new("groupadd").args(["--system", "tandem"]))?;
            println!("install: group tandem (its members read counters without root)");
        }
        if Path::new("/run/systemd/system").exists() {
            run(Command::new("systemctl").arg("daemon-reload"))?;
        }
    }
    println!(
        "install: done; next: write /etc/tandem/NAME.toml (see {}), then systemctl enable --now \
         tandemd@NAME tandemstat-serve@NAME",
        destdir.join("etc/tandem/tandem.example.toml").display()
    );
    Ok(())
}

fn tandem_group_missing() -> bool {
    !Command::new("getent")
        .args(["group", "tandem"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs into a fresh folder and checks what landed: every file with
/// its mode, the example configuration valid (`tandemd --check`), and
/// both units verified by systemd-analyze with the binaries they name.
pub fn check() -> Result<()> {
    let dest = std::env::temp_dir().join(format!("tandem-install-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dest);
    install(&dest, false)?;
    let r = (|| -> Result<()> {
        for (_, dst, mode) in FILES {
            let m = fs::metadata(dest.join(dst))
                .with_context(|| format!("{dst} not installed"))?
                .permissions()
                .mode();
            if m & 0o777 != *mode {
                bail!("{dst}: mode {:o}, want {mode:o}", m & 0o777);
            }
        }
        let cfg = dest.join("etc/tandem/tandem.example.toml");
        run(Command::new(dest.join("usr/local/sbin/tandemd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--check"))?;
        // Each installed unit, its /usr/local paths moved under the
        // scratch root: verify finds the installed binaries there.
        let units = dest.join("verify");
        fs::create_dir_all(&units)?;
        for unit in ["tandemd@.service", "tandemstat-serve@.service"] {
            let text = fs::read_to_string(dest.join("etc/systemd/system").join(unit))?
                .replace("/usr/local/", &format!("{}/usr/local/", dest.display()));
            let path = units.join(unit.replace("@.", "@edge1."));
            fs::write(&path, text)?;
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path)
                .output()
                .context("systemd-analyze")?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() || !said.trim().is_empty() {
                bail!("systemd-analyze verify {unit}: {said}");
            }
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dest);
    r
}

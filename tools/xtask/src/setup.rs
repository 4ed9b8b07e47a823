//! `cargo xtask setup`: installs what is missing, nothing else.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{output, run};

/// Debian packages: the eBPF toolchain (LLVM 22 matches rustc's LLVM), what
/// xsk-rs needs to build libxdp, and the tools the lab and tests drive.
const PACKAGES: &[&str] = &[
    "clang",
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "libclang-dev",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "m4",
    "pkg-config",
    "make",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "nftables",
    "python3",
    // promtool checks the Prometheus text (its service is not started:
    // without systemd, invoke-rc.d's policy denies it).
    "prometheus",
    // The event log's test sends RFC 5424 syslog to a real rsyslogd
    // (started by the test; the packaged service is not).
    "rsyslog",
    // The text of the lab's failover pictures.
    "fonts-dejavu-core",
    // The CGNAT test floods new UDP flows from one inside host as an
    // operator would try it.
    "hping3",
];

/// bpf-linker release known to work with LLVM 22 and rustc 1.95 / nightly 1.97.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn install_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages {missing:?}; run `cargo xtask setup` as root (or apt-get install them)"
        );
    }
    eprintln!("xtask setup: installing {missing:?}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn nightly_components() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed to build the XDP program")?;
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        eprintln!("xtask setup: adding {component} to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn llvm_major(version_output: &str) -> Option<u32> {
    let line = version_output
        .lines()
        .find(|l| l.contains("LLVM version") || l.contains("LLVM"))?;
    let digits: String = line
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .to_owned();
    digits.parse().ok()
}

fn bpf_linker() -> Result<()> {
    let rustc = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let want = llvm_major(&rustc).context("cannot read nightly rustc's LLVM version")?;
    if let Ok(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
        eprintln!(
            "xtask setup: bpf-linker is {} (want {BPF_LINKER_VERSION})",
            v.trim()
        );
    }
    eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {want}");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{want}"))
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{want}")))
}

/// Python packages from PyPI, (module, requirement): the Prometheus
/// client, whose parser checks `tandemstat prometheus`, and `netflow`,
/// the IPFIX decoder of the event log's test.
const PYPI: &[(&str, &str)] = &[
    ("prometheus_client", "prometheus_client"),
    ("netflow", "netflow==0.12.2"),
];

fn python_packages() -> Result<()> {
    for (module, requirement) in PYPI {
        let have = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if have {
            continue;
        }
        eprintln!("xtask setup: installing {requirement} from PyPI");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--root-user-action=ignore",
            requirement,
        ]))?;
    }
    Ok(())
}

/// cargo-fuzz release the fuzz targets (fuzz/) are built with.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

fn cargo_fuzz() -> Result<()> {
    if let Ok(v) = output(Command::new("cargo").args(["fuzz", "--version"]))
        && v.contains(CARGO_FUZZ_VERSION)
    {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

pub fn setup() -> Result<()> {
    install_packages()?;
    python_packages()?;
    nightly_components()?;
    bpf_linker()?;
    cargo_fuzz()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_llvm_major_from_rustc() {
        let v = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(v), Some(22));
    }
}

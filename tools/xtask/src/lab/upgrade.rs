//! `cargo xtask lab upgrade`: a rolling upgrade of the lab pair from an
//! older build of tandem to this one, one node at a time, while 100
//! connections echo.
//!
//! The older build is a real one: the commit is exported from this
//! repository's history (`git archive`) into `target/upgrade/<commit>/src`
//! and built there with its own target folder, once. Both nodes start on
//! it; then the standby is upgraded (an old active feeds a new backup),
//! the new node takes over (a new active feeds an old backup), the other
//! node is upgraded, and it takes over again. Every connection must
//! survive all of it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::failover::holds_vip;
use super::{
    build_release_bins, build_topology, down, ha_json, held_traffic, kill_and_wait, master,
    read_pid, start_daemon_from, wait_for,
};
use crate::{cargo, output, root, run};

/// The build one sync protocol version back: the last commit before the
/// digest and contract capabilities (6f5fae3). Its nodes speak wire
/// version 3 without `CAP_DIGEST` or `CAP_CONTRACT`: no digests, no
/// resync on demand, and the hello's services hash instead of the
/// field-by-field contract. Its heartbeat (version 2) and counter segment
/// (layout 1) are this build's.
pub const PREVIOUS: &str = "b62a8f0";

/// Builds `rev`'s tandemd once and returns the folder of its release
/// binaries.
fn build_old(rev: &str) -> Result<PathBuf> {
    let full = output(
        Command::new("git")
            .current_dir(root())
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{rev}^{{commit}}")),
    )
    .with_context(|| {
        format!(
            "lab upgrade: commit {rev} is not in this repository's history (a shallow clone?); \
             the upgrade needs the older build's source"
        )
    })?;
    let full = full.trim();
    let base = root().join("target/upgrade").join(full);
    let src = base.join("src");
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src)?;
        // git archive | tar -x: the tree as it was, without a worktree.
        let archive = output(
            Command::new("sh")
                .current_dir(root())
                .arg("-c")
                .arg(format!(
                    "git archive --format=tar {full} | tar -x -C '{}'",
                    src.display()
                )),
        );
        if let Err(e) = archive {
            let _ = std::fs::remove_dir_all(&src);
            return Err(e.context(format!("exporting {rev}")));
        }
    }
    println!("lab upgrade: building {rev} ({full}) in {}", src.display());
    run(cargo()
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .args([
            "build",
            "--release",
            "-p",
            "tandem-dataplane",
            "--bin",
            "tandemd",
        ]))?;
    Ok(base.join("target/release"))
}

/// Node `n` is the backup with its sync Hot, and the other node is active.
fn hot_backup(n: &str) -> bool {
    let other = if n == "a" { "b" } else { "a" };
    ha_json(n).is_some_and(|v| v["role"] == "backup" && v["synchronization"] == "hot")
        && ha_json(other).is_some_and(|v| v["role"] == "active")
}

fn acquire(n: &str) -> Result<()> {
    let out = output(Command::new(root().join("target/release/tandemctl")).args([
        "--instance",
        n,
        "request",
        "acquire",
    ]))?;
    println!(
        "lab upgrade: tandemctl --instance {n} request acquire: {}",
        out.trim_end()
    );
    Ok(())
}

struct Steps {
    t0: Instant,
}

impl Steps {
    fn done(&self, what: &str, since: Instant) {
        let ms = since.elapsed().as_millis();
        println!(
            "lab upgrade: +{:>6} ms  {what} ({ms} ms)",
            self.t0.elapsed().as_millis()
        );
    }
}

/// Restarts node `n` on the binary in `bin` and waits until it is the
/// Hot backup.
fn upgrade_node(n: &str, bin: &Path, steps: &Steps) -> Result<()> {
    let t = Instant::now();
    if let Some(pid) = read_pid(n) {
        kill_and_wait(pid);
    }
    let pid = start_daemon_from(n, bin)?;
    steps.done(&format!("node {n} restarted on this build (pid {pid})"), t);
    let t = Instant::now();
    wait_for(
        &format!("node {n} STANDBY and Hot"),
        Duration::from_secs(15),
        || hot_backup(n),
    )?;
    steps.done(&format!("node {n} STANDBY and Hot"), t);
    Ok(())
}

/// Node `to` takes over from `from`, which stays up as the backup.
fn switch(from: &str, to: &str, steps: &Steps) -> Result<()> {
    let t = Instant::now();
    acquire(to)?;
    wait_for(
        &format!("the VIPs to move to node {to}"),
        Duration::from_secs(5),
        || holds_vip(to) && !holds_vip(from),
    )?;
    steps.done(&format!("node {to} MASTER with the VIPs"), t);
    let t = Instant::now();
    wait_for(
        &format!("node {from} STANDBY and Hot"),
        Duration::from_secs(15),
        || hot_backup(from),
    )?;
    steps.done(&format!("node {from} STANDBY and Hot"), t);
    Ok(())
}

pub fn upgrade(from: &str) -> Result<()> {
    crate::setup::setup()?;
    let old = build_old(from)?.join("tandemd");
    build_release_bins()?;
    let new = root().join("target/release/tandemd");
    down()?;
    build_topology()?;
    start_daemon_from("a", &old)?;
    wait_for("node a MASTER", Duration::from_secs(5), || {
        master() == Some("a")
    })?;
    start_daemon_from("b", &old)?;
    wait_for("node b STANDBY and Hot", Duration::from_secs(15), || {
        hot_backup("b")
    })?;
    println!("lab upgrade: both nodes run {from}; a is MASTER, b STANDBY and Hot");
    let (mut server, client) = held_traffic(12, None)?;
    // Every connection opens and replicates first.
    thread::sleep(Duration::from_secs(3));
    let steps = Steps { t0: Instant::now() };
    let r = (|| -> Result<()> {
        // An old active feeds a new backup...
        upgrade_node("b", &new, &steps)?;
        // ...a new active feeds an old backup...
        switch("a", "b", &steps)?;
        // ...and both run this build, with a failover between them.
        upgrade_node("a", &new, &steps)?;
        switch("b", "a", &steps)
    })();
    let out = client.wait_with_output()?;
    let _ = server.kill();
    let _ = server.wait();
    r?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(summary)
        .with_context(|| format!("no summary from traffic hold: {text}"))?;
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    println!(
        "lab upgrade {from} -> this build: kept {}/{} connections, longest gap {} ms, UDP lost {} \
         of {}",
        num("kept"),
        num("conns"),
        num("max_gap_ms"),
        num("udp_lost"),
        num("udp_sent")
    );
    if num("conns") == 0 || num("kept") != num("conns") {
        bail!(
            "lab upgrade: {} of {} connections kept",
            num("kept"),
            num("conns")
        );
    }
    Ok(())
}

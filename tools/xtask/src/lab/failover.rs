//! `cargo xtask lab failover`: fail the MASTER while connections echo,
//! undo the failure, and say what survived and how long each step took.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::picture::{self, Timeline};
use super::{
    How, NAMESPACES, Node, ha_json, held_traffic, ip, kill_and_wait, master, ns_exists, pid_alive,
    read_pid, start_daemon, wait_for,
};
use crate::{cargo, output, root, run, traffic::unix_ms};

/// What one failover run measured.
pub struct Outcome {
    pub from: &'static str,
    pub to: &'static str,
    pub conns: u64,
    pub kept: u64,
    pub max_gap_ms: u64,
    /// Trigger to the VIPs on the new master; `None` if they never moved.
    pub moved_ms: Option<u64>,
    /// Restore to the old master back as STANDBY with its sync Hot.
    pub rejoined_ms: Option<u64>,
}

/// Fails the master while 100 connections echo, restores what the case
/// broke and waits for the old master to be STANDBY and Hot again; draws
/// the run's timeline into `picture` if given.
pub fn failover_once(how: How, quiet: bool, picture: Option<&Path>) -> Result<Outcome> {
    for ns in NAMESPACES {
        if !ns_exists(ns) {
            bail!("lab is not up (namespace {ns} missing); run `cargo xtask lab up`");
        }
    }
    let Some(old) = master() else {
        bail!("no node holds the VIPs: no MASTER to fail over from");
    };
    let new = if old == "a" { "b" } else { "a" };
    if read_pid(new).is_none_or(|p| !pid_alive(p)) {
        bail!("node {new} is not running: nobody to take over");
    }
    let say = |m: String| {
        if !quiet {
            println!("{m}");
        }
    };
    let timeline = picture.map(|p| p.with_extension("json"));
    let (mut server, client) = held_traffic(8, timeline.as_deref())?;
    // Let every connection open and settle (and replicate) first.
    thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    let fault_unix_ms = unix_ms();
    let old_ns = format!("tnd-{old}");
    match how {
        How::Kill => {
            let pid = read_pid(old).context("master's pid")?;
            crate::signal(pid, libc::SIGKILL);
            say(format!(
                "failover: SIGKILL to node {old}'s tandemd (pid {pid})"
            ));
        }
        How::Box => {
            links(&old_ns, "down")?;
            say(format!(
                "failover: node {old}'s in0, out0 and sync0 set down (box death)"
            ));
        }
        How::Link => {
            ip(&["-n", &old_ns, "link", "set", "out0", "down"])?;
            say(format!(
                "failover: node {old}'s out0 set down (monitored link)"
            ));
        }
        How::Switch => {
            let out = Command::new(root().join("target/release/tandemctl"))
                .args(["--instance", new, "request", "acquire"])
                .output()?;
            say(format!(
                "failover: tandemctl --instance {new} request acquire: {}",
                String::from_utf8_lossy(&out.stdout).trim_end()
            ));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // The new master holds the VIPs; a killed daemon leaves them on the
    // old node, which `master()` does not count.
    let moved = wait_for("the VIPs to move", Duration::from_secs(5), || {
        holds_vip(new) && (how == How::Kill || !holds_vip(old))
    })
    .map(|_| t0.elapsed());
    let moved_unix_ms = unix_ms();
    let out = client.wait_with_output()?;
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    if !quiet {
        print!("{text}");
    }
    match &moved {
        Ok(d) => say(format!(
            "failover: node {new} holds the VIPs {} ms after the trigger",
            d.as_millis()
        )),
        Err(e) => say(format!("failover: {e}")),
    }
    let restored = Instant::now();
    match how {
        How::Kill => {
            let pid = start_daemon(old)?;
            say(format!(
                "failover: node {old}'s tandemd restarted (pid {pid})"
            ));
        }
        How::Box => links(&old_ns, "up")?,
        How::Link => ip(&["-n", &old_ns, "link", "set", "out0", "up"])?,
        How::Switch => {}
    }
    let joined = wait_for(
        &format!("node {old} STANDBY and Hot"),
        Duration::from_secs(15),
        || {
            ha_json(old).is_some_and(|v| v["role"] == "backup" && v["synchronization"] == "hot")
                && ha_json(new).is_some_and(|v| v["role"] == "active")
        },
    )
    .map(|_| restored.elapsed());
    match &joined {
        Ok(d) => say(format!(
            "failover: node {old} back as STANDBY and Hot {} ms after the restore",
            d.as_millis()
        )),
        Err(e) => say(format!("failover: node {old}: {e}")),
    }
    let summary = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(summary)
        .with_context(|| format!("no summary from traffic hold: {text}"))?;
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    if let (Some(png), Some(json)) = (picture, &timeline) {
        let t = Timeline::load(json)?;
        let marks = picture::marks(
            &t,
            (fault_unix_ms, format!("fault: {}", how.describe(old))),
            moved.is_ok().then_some(moved_unix_ms),
            new,
        );
        let title = format!(
            "lab failover {}: node {old} -> {new}; {}/{} connections kept, longest gap {} ms, \
             UDP {} of {} lost",
            format!("{how:?}").to_lowercase(),
            num("kept"),
            num("conns"),
            num("max_gap_ms"),
            num("udp_lost"),
            num("udp_sent")
        );
        picture::draw(&t, &marks, &title, png)?;
        say(format!("failover: timeline picture {}", png.display()));
    }
    let ms = |d: &Result<Duration>| {
        d.as_ref()
            .ok()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    Ok(Outcome {
        from: old,
        to: new,
        conns: num("conns"),
        kept: num("kept"),
        max_gap_ms: num("max_gap_ms"),
        moved_ms: ms(&moved),
        rejoined_ms: ms(&joined),
    })
}

/// Sets a node's three links down (box death) or up, in one `ip -batch`
/// so that they go within microseconds of each other: one at a time, the
/// node would see its first link fail and announce its release on a link
/// still up, which a dead box cannot do.
pub(super) fn links(ns: &str, how: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("ip -batch")?;
    let mut stdin = child.stdin.take().context("ip -batch stdin")?;
    std::io::Write::write_all(
        &mut stdin,
        format!("link set sync0 {how}\nlink set in0 {how}\nlink set out0 {how}\n").as_bytes(),
    )?;
    drop(stdin);
    let st = child.wait()?;
    if !st.success() {
        bail!("ip -n {ns} -batch: links {how} failed: {st}");
    }
    Ok(())
}

/// Whether node `n` has the inside VIP on in0.
pub(super) fn holds_vip(n: &str) -> bool {
    output(Command::new("ip").args(["-n", &format!("tnd-{n}"), "-4", "-o", "addr", "show", "in0"]))
        .is_ok_and(|t| t.contains("inet 198.18.1.1/"))
}

pub(super) fn failover(how: How, picture: Option<&Path>) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "tandem-tools"]))?;
    let png = picture.map_or_else(
        || {
            root().join("target/lab").join(format!(
                "failover-{}.png",
                format!("{how:?}").to_lowercase()
            ))
        },
        Path::to_path_buf,
    );
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let o = failover_once(how, false, Some(&png))?;
    println!(
        "failover {how:?}: {} -> {}: kept {}/{}, longest gap {} ms",
        o.from, o.to, o.kept, o.conns, o.max_gap_ms
    );
    if o.kept != o.conns || o.moved_ms.is_none() || o.rejoined_ms.is_none() {
        bail!(
            "lab failover: {} of {} connections kept, VIPs {}, node {} {}",
            o.kept,
            o.conns,
            if o.moved_ms.is_some() {
                "moved"
            } else {
                "did not move"
            },
            o.from,
            if o.rejoined_ms.is_some() {
                "rejoined"
            } else {
                "did not rejoin as STANDBY+Hot"
            }
        );
    }
    Ok(())
}

pub(super) fn restart(node: Node) -> Result<()> {
    let n = node.name();
    if !ns_exists(&format!("tnd-{n}")) {
        bail!("lab is not up (namespace tnd-{n} missing); run `cargo xtask lab up`");
    }
    if let Some(pid) = read_pid(n) {
        kill_and_wait(pid);
    }
    let pid = start_daemon(n)?;
    println!("tandemd --instance {n} restarted in tnd-{n} (pid {pid})");
    Ok(())
}

//! `cargo xtask lab chaos`: faults drawn from a catalogue by a seeded
//! generator, each under 100 echoing TCP connections and a numbered UDP
//! stream; after each the pair must be whole again (one MASTER, the other
//! STANDBY and Hot) and the invariants hold: every connection alive, no
//! two MASTERs for longer than the detection time (but in a partition,
//! where each side is alone by definition), the standby holding exactly
//! the master's sessions, no NAT binding held twice. A table per fault
//! kind, a JSON file if asked, and a non-zero exit on any violation.
//!
//! Two MASTERs count only while both daemons run (a killed, panicked or
//! stopped one forwards nothing once its lease has run out), and not in
//! the faults that isolate a node (box death, partition), where each side
//! is alone and the hosts reach only one of them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    NAMESPACES, SERVER,
    failover::holds_vip,
    ha_json, held_traffic, ip, master, ns_exists,
    picture::{self, Timeline},
    read_pid, start_daemon, up, wait_for,
};
use crate::{root, traffic::unix_ms};

/// The fault kinds, in catalogue order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// SIGKILL the MASTER's tandemd; restart it.
    Kill,
    /// The MASTER's three links down at once; up again.
    Box,
    /// SIGSTOP the MASTER's tandemd for 0.2 to 10 s.
    Freeze,
    /// The MASTER's monitored out0 down; up again.
    Link,
    /// The sync link cut and restored (no takeover).
    SyncCut,
    /// The sync link cut and the heartbeats dropped by the switch: both
    /// nodes alone; then healed.
    Partition,
    /// The STANDBY's tandemd restarted.
    StandbyRestart,
    /// The STANDBY restarted while a bulk run crosses the MASTER.
    StandbyRestartLoad,
    /// `tandemctl request acquire` on a Hot STANDBY.
    SwitchHot,
    /// The same on a STANDBY whose sync is cut: refused, nothing moves.
    SwitchCold,
    /// A LAN host floods both nodes' heartbeat sockets.
    HeartbeatFlood,
    /// A thread of the MASTER's tandemd panics; it is restarted.
    Panic,
}

impl Fault {
    const ALL: [Self; 12] = [
        Self::Kill,
        Self::Box,
        Self::Freeze,
        Self::Link,
        Self::SyncCut,
        Self::Partition,
        Self::StandbyRestart,
        Self::StandbyRestartLoad,
        Self::SwitchHot,
        Self::SwitchCold,
        Self::HeartbeatFlood,
        Self::Panic,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Box => "box",
            Self::Freeze => "freeze",
            Self::Link => "link",
            Self::SyncCut => "sync-cut",
            Self::Partition => "partition",
            Self::StandbyRestart => "standby-restart",
            Self::StandbyRestartLoad => "standby-restart-load",
            Self::SwitchHot => "switch-hot",
            Self::SwitchCold => "switch-cold",
            Self::HeartbeatFlood => "heartbeat-flood",
            Self::Panic => "panic",
        }
    }

    /// Whether the MASTER is expected to change hands (the newer master
    /// keeps it after a box death or a partition).
    const fn moves(self) -> bool {
        matches!(
            self,
            Self::Kill
                | Self::Box
                | Self::Freeze
                | Self::Link
                | Self::Partition
                | Self::SwitchHot
                | Self::Panic
        )
    }

    /// Whether two MASTERs are a violation in this fault.
    const fn single_master(self) -> bool {
        !matches!(self, Self::Box | Self::Partition)
    }
}

/// xorshift64*: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The faults of a run: the whole catalogue in a seeded order first (so
/// that 12 faults cover every kind), then seeded draws.
fn plan(faults: usize, seed: u64) -> Vec<Fault> {
    let mut rng = Rng(seed | 1);
    let mut all = Fault::ALL.to_vec();
    for i in (1..all.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        all.swap(i, j);
    }
    (0..faults)
        .map(|i| {
            all.get(i).copied().unwrap_or_else(|| {
                Fault::ALL[usize::try_from(rng.below(Fault::ALL.len() as u64)).unwrap_or(0)]
            })
        })
        .collect()
}

/// What one fault did, and what broke.
struct Outcome {
    fault: Fault,
    detail: String,
    conns: u64,
    kept: u64,
    max_gap_ms: u64,
    udp_sent: u64,
    udp_lost: u64,
    dual_ms: u64,
    violations: Vec<String>,
}

/// Both nodes' redundancy states as their segments say, with whether the
/// daemon runs (alive and not stopped).
fn states() -> [(Option<u64>, bool); 2] {
    ["a", "b"].map(|n| {
        let running = read_pid(n).is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|state| !matches!(state, "T" | "t" | "Z" | "X"))
            })
        });
        let state = rg_json(n).and_then(|v| match v["local_state"].as_str() {
            Some("MASTER") => Some(2),
            Some("STANDBY") => Some(3),
            Some(_) => Some(0),
            None => None,
        });
        (state, running)
    })
}

fn tool(name: &str) -> Command {
    Command::new(root().join("target/release").join(name))
}

fn rg_json(node: &str) -> Option<Value> {
    let out = tool("tandemstat")
        .args(["--instance", node, "redundancy-group", "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Sessions a node lists: the keys, and the NAT bindings.
fn sessions(node: &str) -> Option<(BTreeSet<String>, Vec<String>)> {
    let out = tool("tandemstat")
        .args(["--instance", node, "sessions", "--json"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut keys = BTreeSet::new();
    let mut nat = Vec::new();
    for r in v["sessions"].as_array()? {
        keys.insert(format!(
            "{} {}:{} {}:{}",
            r["protocol"], r["source"], r["source_port"], r["destination"], r["destination_port"]
        ));
        if !r["nat_source"].is_null() {
            nat.push(format!(
                "{} {}:{}",
                r["protocol"], r["nat_source"], r["nat_source_port"]
            ));
        }
    }
    Some((keys, nat))
}

/// The pair is whole: one MASTER holding the VIPs, the other STANDBY and
/// Hot. Returns the MASTER.
fn whole(limit: Duration) -> Result<&'static str> {
    let mut m = None;
    wait_for("the pair whole (MASTER, STANDBY and Hot)", limit, || {
        m = master();
        m.is_some_and(|m| {
            let s = if m == "a" { "b" } else { "a" };
            ha_json(s).is_some_and(|v| v["role"] == "backup" && v["synchronization"] == "hot")
                && ha_json(m).is_some_and(|v| v["role"] == "active")
                && states()
                    .iter()
                    .filter(|(st, run)| *st == Some(2) && *run)
                    .count()
                    == 1
        })
    })?;
    m.context("no MASTER")
}

fn ns(node: &str) -> String {
    format!("tnd-{node}")
}

fn nft(rules: &str) -> Result<()> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", "tnd-sw", "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    if !c.wait()?.success() {
        bail!("nft in tnd-sw failed");
    }
    Ok(())
}

fn restart_node(node: &str) -> Result<()> {
    if let Some(pid) = read_pid(node) {
        super::kill_and_wait(pid);
    }
    start_daemon(node).map(|_| ())
}

fn ctl(node: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(tool("tandemctl")
        .args(["--instance", node])
        .args(args)
        .output()?)
}

/// Applies `f` to the pair whose MASTER is `m` and undoes it; returns a
/// line saying what was done, and the violations it saw itself.
fn apply(f: Fault, m: &'static str, rng: &mut Rng) -> Result<(String, Vec<String>)> {
    let s = if m == "a" { "b" } else { "a" };
    let mut bad = Vec::new();
    let detail = match f {
        Fault::Kill => {
            let pid = read_pid(m).context("master's pid")?;
            crate::signal(pid, libc::SIGKILL);
            thread::sleep(Duration::from_secs(2));
            start_daemon(m)?;
            format!("SIGKILL to {m}")
        }
        Fault::Box => {
            super::failover::links(&ns(m), "down")?;
            thread::sleep(Duration::from_secs(2));
            super::failover::links(&ns(m), "up")?;
            format!("{m}'s links down for 2 s")
        }
        Fault::Freeze => {
            let ms = 200 + rng.below(9_800);
            let pid = read_pid(m).context("master's pid")?;
            crate::signal(pid, libc::SIGSTOP);
            thread::sleep(Duration::from_millis(ms));
            crate::signal(pid, libc::SIGCONT);
            format!("SIGSTOP to {m} for {ms} ms")
        }
        Fault::Link => {
            ip(&["-n", &ns(m), "link", "set", "out0", "down"])?;
            thread::sleep(Duration::from_secs(2));
            ip(&["-n", &ns(m), "link", "set", "out0", "up"])?;
            format!("{m}'s out0 down for 2 s")
        }
        Fault::SyncCut => {
            ip(&["-n", &ns(m), "link", "set", "sync0", "down"])?;
            thread::sleep(Duration::from_secs(2));
            ip(&["-n", &ns(m), "link", "set", "sync0", "up"])?;
            format!("{m}'s sync0 down for 2 s")
        }
        Fault::Partition => {
            let ms = 1000 + rng.below(3000);
            ip(&["-n", &ns(m), "link", "set", "sync0", "down"])?;
            nft("add table bridge chaos\n\
                 add chain bridge chaos hb { type filter hook forward priority 0; }\n\
                 add rule bridge chaos hb udp dport 7469 drop\n")?;
            thread::sleep(Duration::from_millis(ms));
            ip(&[
                "netns", "exec", "tnd-sw", "nft", "delete", "table", "bridge", "chaos",
            ])?;
            ip(&["-n", &ns(m), "link", "set", "sync0", "up"])?;
            let healed = Instant::now();
            let one = wait_for("one MASTER after the heal", Duration::from_secs(5), || {
                states()
                    .iter()
                    .filter(|(st, run)| *st == Some(2) && *run)
                    .count()
                    == 1
            });
            match one {
                Ok(_) if healed.elapsed() > Duration::from_secs(1) => bad.push(format!(
                    "one MASTER only {} ms after the heal",
                    healed.elapsed().as_millis()
                )),
                Ok(_) => {}
                Err(e) => bad.push(e.to_string()),
            }
            format!("full partition for {ms} ms")
        }
        Fault::StandbyRestart => {
            restart_node(s)?;
            format!("{s} (STANDBY) restarted")
        }
        Fault::StandbyRestartLoad => {
            let bulk = Command::new("ip")
                .args(["netns", "exec", "tnd-client"])
                .arg(std::env::current_exe()?)
                .args([
                    "traffic", "client", "--server", SERVER, "--tcp", "20", "--rounds", "200",
                    "--udp", "2000",
                ])
                .stdout(Stdio::null())
                .spawn()?;
            thread::sleep(Duration::from_millis(300));
            restart_node(s)?;
            let _ = bulk.wait_with_output();
            format!("{s} (STANDBY) restarted under a bulk run")
        }
        Fault::SwitchHot => {
            let out = ctl(s, &["request", "acquire"])?;
            if !out.status.success() {
                bad.push(format!(
                    "acquire on the Hot standby refused: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            format!("acquire on {s} (Hot)")
        }
        Fault::SwitchCold => {
            ip(&["-n", &ns(m), "link", "set", "sync0", "down"])?;
            let off = wait_for("the standby's sync Off", Duration::from_secs(6), || {
                ha_json(s).is_some_and(|v| v["synchronization"] != "hot")
            });
            let out = ctl(s, &["request", "acquire"])?;
            ip(&["-n", &ns(m), "link", "set", "sync0", "up"])?;
            if off.is_err() {
                bad.push("the standby stayed Hot with its sync link cut".into());
            } else if out.status.code() != Some(1)
                || !String::from_utf8_lossy(&out.stderr).contains("not Hot")
            {
                bad.push(format!("acquire on a cold standby not refused: {out:?}"));
            }
            format!("acquire on {s} (not Hot): refused")
        }
        Fault::HeartbeatFlood => {
            let out = Command::new("ip")
                .args(["netns", "exec", "tnd-client"])
                .arg(std::env::current_exe()?)
                .args([
                    "traffic",
                    "flood",
                    "--seconds",
                    "2",
                    "--targets",
                    "198.18.1.2:7469,198.18.1.3:7469,198.18.9.1:7469,198.18.9.2:7469",
                ])
                .output()?;
            format!(
                "heartbeat flood from the client: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        }
        Fault::Panic => {
            let thread = if rng.below(2) == 0 { "sync" } else { "ha" };
            let out = ctl(m, &["debug", "panic", thread])?;
            if !out.status.success() {
                bad.push(format!("debug panic refused: {out:?}"));
            }
            let pid = read_pid(m).context("master's pid")?;
            if wait_for("the panicked daemon to end", Duration::from_secs(2), || {
                !super::pid_alive(pid)
            })
            .is_err()
            {
                bad.push(format!("{m} lived on after its {thread} thread panicked"));
            }
            thread::sleep(Duration::from_secs(1));
            start_daemon(m)?;
            format!("panic in {m}'s {thread} thread")
        }
    };
    Ok((detail, bad))
}

/// One fault under traffic, and the checks after it.
fn run_one(f: Fault, rng: &mut Rng) -> Result<Outcome> {
    let m = whole(Duration::from_secs(30))?;
    let life = if f == Fault::Freeze { 18 } else { 9 };
    let png = root().join(format!("target/lab/chaos-{}.png", f.name()));
    std::fs::create_dir_all(png.parent().expect("a directory"))?;
    let timeline = png.with_extension("json");
    let (mut server, client) = held_traffic(life, Some(&timeline))?;
    thread::sleep(Duration::from_secs(2));
    // Two MASTERs count while both daemons run; the VIPs' move to the
    // other node is timed for the picture.
    let stop = Arc::new(AtomicBool::new(false));
    let dual = Arc::new(AtomicU64::new(0));
    let moved_at = Arc::new(AtomicU64::new(0));
    let other = if m == "a" { "b" } else { "a" };
    let watch = {
        let (stop, dual, moved_at) = (Arc::clone(&stop), Arc::clone(&dual), Arc::clone(&moved_at));
        thread::spawn(move || {
            let mut since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                if moved_at.load(Ordering::Relaxed) == 0 && holds_vip(other) {
                    moved_at.store(unix_ms(), Ordering::Relaxed);
                }
                let both = states().iter().all(|(st, run)| *st == Some(2) && *run);
                match (both, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(t)) => {
                        let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                        dual.fetch_max(ms, Ordering::Relaxed);
                        since = None;
                    }
                    _ => {}
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let fault_unix_ms = unix_ms();
    let applied = apply(f, m, rng);
    let out = client.wait_with_output()?;
    let _ = server.kill();
    let _ = server.wait();
    let (detail, mut violations) = applied?;
    let joined = whole(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let _ = watch.join();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .with_context(|| format!("no summary from traffic hold: {text}"))?;
    let num = |k: &str| summary[k].as_u64().unwrap_or(0);
    let t = Timeline::load(&timeline)?;
    let moved = moved_at.load(Ordering::Relaxed);
    let marks = picture::marks(
        &t,
        (fault_unix_ms, format!("fault: {}", f.name())),
        (moved != 0).then_some(moved),
        other,
    );
    picture::draw(
        &t,
        &marks,
        &format!(
            "lab chaos {} ({detail}): {}/{} connections kept, longest gap {} ms, UDP {} of {} lost",
            f.name(),
            num("kept"),
            num("conns"),
            num("max_gap_ms"),
            num("udp_lost"),
            num("udp_sent")
        ),
        &png,
    )?;
    let outcome = Outcome {
        fault: f,
        detail,
        conns: num("conns"),
        kept: num("kept"),
        max_gap_ms: num("max_gap_ms"),
        udp_sent: num("udp_sent"),
        udp_lost: num("udp_lost"),
        dual_ms: dual.load(Ordering::Relaxed),
        violations: Vec::new(),
    };
    match joined {
        Err(e) => violations.push(format!("the pair never became whole: {e}")),
        Ok(m2) => {
            if f.moves() == (m2 == m) && f != Fault::Freeze {
                violations.push(format!(
                    "MASTER {m} before, {m2} after: {}",
                    if f.moves() {
                        "mastership should have moved"
                    } else {
                        "mastership should have stayed"
                    }
                ));
            }
            let s2 = if m2 == "a" { "b" } else { "a" };
            // The standby converges on the master's set within a second
            // or so once the connections have closed.
            let mut last = String::new();
            let same = wait_for("the standby's sessions", Duration::from_secs(5), || match (
                sessions(m2),
                sessions(s2),
            ) {
                (Some((mk, nat)), Some((sk, _))) => {
                    let unique: BTreeSet<&String> = nat.iter().collect();
                    last = format!(
                        "MASTER {} sessions, standby {}, {} NAT bindings ({} distinct)",
                        mk.len(),
                        sk.len(),
                        nat.len(),
                        unique.len()
                    );
                    mk == sk && unique.len() == nat.len()
                }
                _ => false,
            });
            if same.is_err() {
                violations.push(format!("session sets differ: {last}"));
            }
        }
    }
    if outcome.kept < outcome.conns {
        violations.push(format!(
            "{} of {} connections lost",
            outcome.conns - outcome.kept,
            outcome.conns
        ));
    }
    if f.single_master() && outcome.dual_ms > 300 {
        violations.push(format!("two MASTERs for {} ms", outcome.dual_ms));
    }
    Ok(Outcome {
        violations,
        ..outcome
    })
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs `faults` faults drawn with `seed`; prints the table, writes
/// `json` if given; fails on any violation.
pub fn chaos(faults: usize, seed: u64, json: Option<&Path>) -> Result<()> {
    if NAMESPACES.iter().any(|n| !ns_exists(n)) {
        up()?;
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let plan = plan(faults, seed);
    println!(
        "chaos: {faults} faults, seed {seed}: {}",
        plan.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
    );
    let mut results = Vec::new();
    for (i, f) in plan.into_iter().enumerate() {
        let o = run_one(f, &mut rng)?;
        println!(
            "{:>3} {:<21} kept {}/{} gap {} ms udp lost {}/{} dual {} ms  {}{}",
            i + 1,
            f.name(),
            o.kept,
            o.conns,
            o.max_gap_ms,
            o.udp_lost,
            o.udp_sent,
            o.dual_ms,
            o.detail,
            if o.violations.is_empty() {
                String::new()
            } else {
                format!("\n    VIOLATION: {}", o.violations.join("; "))
            }
        );
        results.push(o);
    }
    let mut by: BTreeMap<Fault, Vec<&Outcome>> = BTreeMap::new();
    for o in &results {
        by.entry(o.fault).or_default().push(o);
    }
    println!(
        "\n{:<21} {:>4} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10}",
        "fault",
        "runs",
        "kept",
        "gap min",
        "gap med",
        "gap max",
        "udp lost",
        "dual ms",
        "violations"
    );
    let mut rows = Vec::new();
    for (f, os) in &by {
        let mut gaps: Vec<u64> = os.iter().map(|o| o.max_gap_ms).collect();
        let (conns, kept) = os
            .iter()
            .fold((0, 0), |(c, k), o| (c + o.conns, k + o.kept));
        let lost: u64 = os.iter().map(|o| o.udp_lost).max().unwrap_or(0);
        let dual: u64 = os.iter().map(|o| o.dual_ms).max().unwrap_or(0);
        let bad: usize = os.iter().map(|o| o.violations.len()).sum();
        let (min, max) = (
            gaps.iter().copied().min().unwrap_or(0),
            gaps.iter().copied().max().unwrap_or(0),
        );
        let med = median(&mut gaps);
        println!(
            "{:<21} {:>4} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10}",
            f.name(),
            os.len(),
            format!("{kept}/{conns}"),
            min,
            med,
            max,
            lost,
            dual,
            bad
        );
        rows.push(json!({
            "fault": f.name(), "runs": os.len(), "conns": conns, "kept": kept,
            "gap_min_ms": min, "gap_median_ms": med, "gap_max_ms": max,
            "udp_lost_max": lost, "dual_master_max_ms": dual, "violations": bad,
        }));
    }
    let violations: Vec<String> = results
        .iter()
        .enumerate()
        .flat_map(|(i, o)| {
            o.violations
                .iter()
                .map(move |v| format!("fault {} ({}): {v}", i + 1, o.fault.name()))
        })
        .collect();
    if let Some(path) = json {
        let faults: Vec<Value> = results
            .iter()
            .map(|o| {
                json!({
                    "fault": o.fault.name(), "detail": o.detail, "conns": o.conns,
                    "kept": o.kept, "max_gap_ms": o.max_gap_ms, "udp_sent": o.udp_sent,
                    "udp_lost": o.udp_lost, "dual_master_ms": o.dual_ms,
                    "violations": o.violations,
                })
            })
            .collect();
        let doc = json!({"seed": seed, "faults": faults, "kinds": rows, "violations": violations});
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !violations.is_empty() {
        bail!(
            "chaos: {} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    println!("chaos: {} faults, no violation", results.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_reproducible_and_covers_every_kind_in_twelve() {
        let p = plan(30, 7);
        assert_eq!(p, plan(30, 7));
        assert_ne!(p, plan(30, 8));
        let first: BTreeSet<Fault> = p[..12].iter().copied().collect();
        assert_eq!(first.len(), Fault::ALL.len());
    }
}

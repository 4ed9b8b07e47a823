//! `cargo xtask lab`: the lab pair of DESIGN.md in network namespaces.
//!
//! ```text
//! tnd-client 198.18.1.10/24 (gw 198.18.1.1) --+-- br-in  --+-- tnd-a in0 198.18.1.2  | tnd-b in0 198.18.1.3
//! tnd-server 198.18.2.10/24 (gw 198.18.2.1) --+-- br-out --+-- tnd-a out0 198.18.2.2 | tnd-b out0 198.18.2.3
//! tnd-a sync0 198.18.9.1/30 <---- veth ----> tnd-b sync0 198.18.9.2/30
//! ```
//! Bridges live in tnd-sw. Both nodes run tandemd under the redundancy
//! state machine: A starts first and becomes MASTER (it forwards, holds
//! the VIPs 198.18.1.1 and 198.18.2.1 and the NAT pool address), then B
//! joins as STANDBY with a copy of every session. `failover` kills the
//! master or asks the standby to take over while connections echo, and
//! prints what survived. Every veth has two queues so both workers see
//! traffic.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

mod chaos;
mod failover;
mod picture;
mod upgrade;
pub use self::upgrade::PREVIOUS;

use self::failover::{failover, holds_vip, restart};
use crate::{cargo, output, root, run};

#[derive(Subcommand, Clone)]
pub enum LabCmd {
    /// Build the namespaces and start tandemd on both nodes (returns; daemons keep running).
    Up,
    /// Restart one node's tandemd (SIGTERM, wait, start again with the same config).
    Restart {
        #[arg(value_enum)]
        node: Node,
    },
    /// Stop every lab process and remove every lab namespace.
    Down,
    /// Show namespaces, daemons, XDP attachment and VIP ownership.
    Status,
    /// Run bounded TCP/UDP/ICMP flows client -> server and print what crossed.
    Traffic,
    /// Fail the master while 100 TCP connections echo every 10 ms; print
    /// how many survived, the longest gap any saw and when the VIPs moved.
    /// `kill`: SIGKILL the master's tandemd; `box`: set its in0, out0 and
    /// sync0 down; `switch`: `tandemctl request acquire` on the standby;
    /// `link`: set its out0 down. Then undo the failure (restart, links up)
    /// and wait until the old master is STANDBY with its sync Hot.
    /// A timeline picture of the run goes to PICTURE (default
    /// target/lab/failover-HOW.png).
    Failover {
        #[arg(value_enum, default_value = "kill")]
        how: How,
        #[arg(long)]
        picture: Option<PathBuf>,
    },
    /// Apply FAULTS faults drawn with SEED from a catalogue (kill, box,
    /// freeze, link, sync-cut, partition, standby-restart[-load],
    /// switch-hot, switch-cold, heartbeat-flood, panic), each under 100
    /// echoing TCP connections and a numbered UDP stream; after each, wait
    /// for the pair to be whole and check the invariants (connections
    /// kept, a single MASTER, the standby's sessions equal the master's,
    /// no NAT binding twice). Prints a table per fault kind; exits 1 on any
    /// violation. The first 12 faults cover every kind.
    Chaos {
        #[arg(long, default_value_t = 12)]
        faults: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write every fault's figures and the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A rolling upgrade from an older build while 100 TCP connections
    /// echo: both nodes start on commit FROM (built once under
    /// target/upgrade); the standby restarts on this build and gets Hot,
    /// takes over, the other node restarts on this build and takes over
    /// again. Fails unless every connection survives. The default FROM is
    /// the last build of the previous sync protocol (no digest or
    /// contract capability).
    Upgrade {
        #[arg(long, default_value = upgrade::PREVIOUS)]
        from: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// SIGKILL the master's tandemd; restart it afterwards.
    Kill,
    /// Box death: the master's in0, out0 and sync0 go down; up afterwards.
    Box,
    /// `tandemctl request acquire` on the standby.
    Switch,
    /// The master's monitored out0 goes down; up afterwards.
    Link,
}

impl How {
    /// What the fault does to node `old`, for a picture's label.
    pub fn describe(self, old: &str) -> String {
        match self {
            Self::Kill => format!("SIGKILL to node {old}'s tandemd"),
            Self::Box => format!("node {old}'s links down"),
            Self::Switch => "switchover requested".to_owned(),
            Self::Link => format!("node {old}'s out0 down"),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Node {
    A,
    B,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
}

const NAMESPACES: [&str; 5] = ["tnd-sw", "tnd-client", "tnd-server", "tnd-a", "tnd-b"];
const SERVER: &str = "198.18.2.10";
const QUEUES: &str = "2";

fn state_dir() -> PathBuf {
    PathBuf::from("/run/tandem/lab")
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn ns_run(ns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn ns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// A veth pair with `QUEUES` queues on both ends.
fn veth(ns1: &str, name1: &str, ns2: &str, name2: &str) -> Result<()> {
    ip(&[
        "link",
        "add",
        name1,
        "netns",
        ns1,
        "numrxqueues",
        QUEUES,
        "numtxqueues",
        QUEUES,
        "type",
        "veth",
        "peer",
        "name",
        name2,
        "netns",
        ns2,
        "numrxqueues",
        QUEUES,
        "numtxqueues",
        QUEUES,
    ])
}

fn addr(ns: &str, cidr: &str, dev: &str) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])
}

fn up_link(ns: &str, dev: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", dev, "up"])
}

fn build_topology() -> Result<()> {
    for ns in NAMESPACES {
        ip(&["netns", "add", ns])?;
        up_link(ns, "lo")?;
    }
    for br in ["br-in", "br-out"] {
        ip(&["-n", "tnd-sw", "link", "add", br, "type", "bridge"])?;
        up_link("tnd-sw", br)?;
    }
    // (namespace, its interface, switch port, bridge)
    let ports = [
        ("tnd-client", "eth0", "cl0", "br-in"),
        ("tnd-a", "in0", "a-in", "br-in"),
        ("tnd-b", "in0", "b-in", "br-in"),
        ("tnd-server", "eth0", "sv0", "br-out"),
        ("tnd-a", "out0", "a-out", "br-out"),
        ("tnd-b", "out0", "b-out", "br-out"),
    ];
    for (ns, dev, port, br) in ports {
        veth(ns, dev, "tnd-sw", port)?;
        ip(&["-n", "tnd-sw", "link", "set", port, "master", br])?;
        up_link("tnd-sw", port)?;
        up_link(ns, dev)?;
    }
    veth("tnd-a", "sync0", "tnd-b", "sync0")?;
    up_link("tnd-a", "sync0")?;
    up_link("tnd-b", "sync0")?;

    // A veth hands TCP/UDP on with the checksum still to be filled in
    // (CHECKSUM_PARTIAL); a frame that crosses AF_XDP loses that state, so
    // the end hosts must checksum in software. Real NICs are not affected.
    for ns in ["tnd-client", "tnd-server"] {
        output(
            Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"]),
        )?;
    }
    // The node's XDP program redirects offloaded flows straight into these
    // veths; a veth drops redirected frames (without a counter) unless its
    // receiving end has GRO on or an XDP program. Real NICs are not
    // affected.
    for port in ["a-in", "a-out", "b-in", "b-out"] {
        output(Command::new("ip").args([
            "netns", "exec", "tnd-sw", "ethtool", "-K", port, "gro", "on",
        ]))?;
    }
    // XPS on every sending veth: a frame leaves on the tx queue of the CPU
    // that sends it, which is the rx queue (and so the worker) it reaches
    // on the node; without it every flow lands on queue 0.
    for (ns, dev) in [
        ("tnd-client", "eth0"),
        ("tnd-server", "eth0"),
        ("tnd-sw", "a-in"),
        ("tnd-sw", "a-out"),
        ("tnd-sw", "b-in"),
        ("tnd-sw", "b-out"),
    ] {
        for q in 0..2 {
            output(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sh", "-c"])
                    .arg(format!(
                        "echo {} > /sys/class/net/{dev}/queues/tx-{q}/xps_cpus",
                        1 << q
                    )),
            )?;
        }
    }
    addr("tnd-client", "198.18.1.10/24", "eth0")?;
    ip(&[
        "-n",
        "tnd-client",
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
    ])?;
    addr("tnd-server", "198.18.2.10/24", "eth0")?;
    ip(&[
        "-n",
        "tnd-server",
        "route",
        "add",
        "default",
        "via",
        "198.18.2.1",
    ])?;
    for (ns, inside, outside, sync) in [
        ("tnd-a", "198.18.1.2/24", "198.18.2.2/24", "198.18.9.1/30"),
        ("tnd-b", "198.18.1.3/24", "198.18.2.3/24", "198.18.9.2/30"),
    ] {
        addr(ns, inside, "in0")?;
        addr(ns, outside, "out0")?;
        addr(ns, sync, "sync0")?;
        // Only tandemd forwards: the kernel of a node never does.
        ns_run(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
        ns_run(ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
    }
    // The VIPs are tandemd's to add: they follow mastership.
    Ok(())
}

fn tandemd_path() -> PathBuf {
    root().join("target/release/tandemd")
}

fn start_daemon(node: &str) -> Result<u32> {
    start_daemon_from(node, &tandemd_path())
}

/// Starts node `node`'s tandemd from the binary `bin` (`lab upgrade` runs
/// an older build).
fn start_daemon_from(node: &str, bin: &std::path::Path) -> Result<u32> {
    let dir = state_dir();
    fs::create_dir_all(&dir)?;
    let log = dir.join(format!("{node}.log"));
    let cfg = root().join(format!("deploy/lab/{node}.toml"));
    let f = fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &format!("tnd-{node}")])
        .arg(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--instance", node])
        // The lab is a test bench: `lab chaos` panics threads on purpose.
        .env("TANDEM_FAULT_INJECTION", "1")
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .context("starting tandemd")?;
    let pid = child.id();
    fs::write(dir.join(format!("{node}.pid")), pid.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("running") {
            return Ok(pid);
        }
        if !pid_alive(pid) || Instant::now() > deadline {
            bail!(
                "tandemd on node {node} did not start; its log ({}):\n{text}",
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn pid_alive(pid: u32) -> bool {
    // Zombies count as dead.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

fn read_pid(node: &str) -> Option<u32> {
    fs::read_to_string(state_dir().join(format!("{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn kill_and_wait(pid: u32) {
    crate::signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        crate::signal(pid, libc::SIGKILL);
    }
}

pub fn down() -> Result<()> {
    for node in ["a", "b"] {
        if let Some(pid) = read_pid(node) {
            kill_and_wait(pid);
        }
    }
    for ns in NAMESPACES {
        if !ns_exists(ns) {
            continue;
        }
        // Anything else still running in the namespace (echo servers, ...).
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", ns])) {
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                kill_and_wait(p);
            }
        }
        ip(&["netns", "del", ns])?;
    }
    let _ = fs::remove_dir_all(state_dir());
    Ok(())
}

fn up() -> Result<()> {
    crate::setup::setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tandem-dataplane",
        "--bin",
        "tandemd",
    ]))?;
    down()?;
    build_topology()?;
    let a = start_daemon("a")?;
    wait_for("node a MASTER", Duration::from_secs(5), || {
        master() == Some("a")
    })?;
    let b = start_daemon("b")?;
    wait_for("node b STANDBY", Duration::from_secs(5), || {
        log_has("b", "to=STANDBY")
    })?;
    println!(
        "lab up: tandemd --instance a in tnd-a (pid {a}, MASTER: forwarding, VIPs, sync active), \
         --instance b in tnd-b (pid {b}, STANDBY: sync backup)"
    );
    Ok(())
}

/// The echo server (for `seconds` and 10 more) and, once it listens,
/// `traffic hold` of 100 connections and a UDP stream from the client for
/// `seconds`, its report on the returned child's stdout (and every
/// echo's time in `timeline`, if given).
fn held_traffic(
    seconds: u64,
    timeline: Option<&Path>,
) -> Result<(std::process::Child, std::process::Child)> {
    let xtask = std::env::current_exe()?;
    let server = Command::new("ip")
        .args(["netns", "exec", "tnd-server"])
        .arg(&xtask)
        .args(["traffic", "serve", "--port", "7", "--seconds"])
        .arg((seconds + 10).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the echo server")?;
    thread::sleep(Duration::from_millis(300));
    let client = Command::new("ip")
        .args(["netns", "exec", "tnd-client"])
        .arg(&xtask)
        .args([
            "traffic",
            "hold",
            "--server",
            SERVER,
            "--conns",
            "100",
            "--seconds",
        ])
        .arg(seconds.to_string())
        .args(timeline.map(|p| format!("--timeline={}", p.display())))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the held connections")?;
    Ok((server, client))
}

/// The release binaries the lab runs (tandemd, tandemstat, tandemctl).
pub(crate) fn build_release_bins() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tandem-dataplane",
        "-p",
        "tandem-tools",
        "--bins",
    ]))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

fn log_has(node: &str, needle: &str) -> bool {
    fs::read_to_string(state_dir().join(format!("{node}.log"))).is_ok_and(|t| t.contains(needle))
}

/// The node whose tandemd runs and holds the inside VIP, as the kernel
/// sees it (a killed daemon leaves its addresses behind until restarted).
fn master() -> Option<&'static str> {
    ["a", "b"]
        .into_iter()
        .find(|n| read_pid(n).is_some_and(pid_alive) && holds_vip(n))
}

/// The `tandemstat ha --json` of a node, when it answers.
fn ha_json(node: &str) -> Option<serde_json::Value> {
    let out = Command::new(root().join("target/release/tandemstat"))
        .args(["--instance", node, "ha", "--json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn sys_counter(ns: &str, dev: &str, name: &str) -> u64 {
    output(
        Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/statistics/{name}")),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

fn xdp_mode(ns: &str, dev: &str) -> String {
    let out =
        output(Command::new("ip").args(["-n", ns, "-d", "link", "show", dev])).unwrap_or_default();
    if out.contains("xdpgeneric") {
        "generic".into()
    } else if out.contains("xdp") {
        "native".into()
    } else {
        "-".into()
    }
}

fn status() {
    let missing: Vec<_> = NAMESPACES.iter().filter(|n| !ns_exists(n)).collect();
    if missing.len() == NAMESPACES.len() {
        println!("lab is down (no tnd-* namespaces)");
        return;
    }
    if !missing.is_empty() {
        println!("lab is incomplete: missing {missing:?}");
    }
    println!(
        "{:<7} {:<16} {:<9} {:<9} {:<24} {:>10} {:>10}",
        "NODE", "DAEMON", "XDP-IN0", "XDP-OUT0", "VIPS", "IN0-RX", "OUT0-TX"
    );
    for node in ["a", "b"] {
        let ns = format!("tnd-{node}");
        if !ns_exists(&ns) {
            continue;
        }
        let daemon = match read_pid(node) {
            Some(p) if pid_alive(p) => format!("running {p}"),
            Some(p) => format!("dead {p}"),
            None => "idle".into(),
        };
        let addrs = output(Command::new("ip").args(["-n", &ns, "-4", "-o", "addr", "show"]))
            .unwrap_or_default();
        let vips: Vec<&str> = ["198.18.1.1", "198.18.2.1"]
            .into_iter()
            .filter(|v| addrs.contains(&format!("inet {v}/")))
            .collect();
        println!(
            "{:<7} {:<16} {:<9} {:<9} {:<24} {:>10} {:>10}",
            ns,
            daemon,
            xdp_mode(&ns, "in0"),
            xdp_mode(&ns, "out0"),
            if vips.is_empty() {
                "-".to_string()
            } else {
                vips.join(",")
            },
            sys_counter(&ns, "in0", "rx_packets"),
            sys_counter(&ns, "out0", "tx_packets"),
        );
    }
    if let Some(node) = ["a", "b"]
        .into_iter()
        .find(|n| read_pid(n).is_some_and(pid_alive))
    {
        println!("log: {}", state_dir().join(format!("{node}.log")).display());
    }
}

fn traffic() -> Result<()> {
    for ns in NAMESPACES {
        if !ns_exists(ns) {
            bail!("lab is not up (namespace {ns} missing); run `cargo xtask lab up`");
        }
    }
    let Some(node) = master() else {
        bail!("no node holds the VIPs (no MASTER); see `cargo xtask lab status`");
    };
    let ns = format!("tnd-{node}");
    let fwd = output(Command::new("ip").args([
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-n",
        "net.ipv4.ip_forward",
    ]))?;
    println!(
        "{ns} (MASTER) net.ipv4.ip_forward={}: only tandemd can forward",
        fwd.trim()
    );
    let xtask = std::env::current_exe()?;
    let mut server = Command::new("ip")
        .args(["netns", "exec", "tnd-server"])
        .arg(&xtask)
        .args(["traffic", "serve", "--port", "7", "--seconds", "60"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting echo server")?;
    thread::sleep(Duration::from_millis(300));
    let before = sys_counter(&ns, "in0", "rx_packets");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            "tnd-client",
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            SERVER,
        ])
        .output()?;
    let ping_text = String::from_utf8_lossy(&ping.stdout);
    let ping_line = ping_text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no ping summary");
    println!("icmp: {ping_line}");
    let client = Command::new("ip")
        .args(["netns", "exec", "tnd-client"])
        .arg(&xtask)
        .args([
            "traffic", "client", "--server", SERVER, "--tcp", "20", "--udp", "200",
        ])
        .output()?;
    print!("{}", String::from_utf8_lossy(&client.stdout));
    eprint!("{}", String::from_utf8_lossy(&client.stderr));
    let _ = server.kill();
    let _ = server.wait();
    let after = sys_counter(&ns, "in0", "rx_packets");
    println!(
        "{ns} in0 received {} packets during the run",
        after.saturating_sub(before)
    );
    if !ping.status.success() || !client.status.success() {
        bail!("lab traffic: not everything crossed the MASTER ({ns})");
    }
    Ok(())
}

pub fn lab(cmd: Option<LabCmd>) -> Result<()> {
    if !crate::is_root() {
        bail!("the lab needs root (network namespaces, XDP, AF_XDP)");
    }
    match cmd {
        Some(LabCmd::Up) => up(),
        Some(LabCmd::Down) => down(),
        Some(LabCmd::Restart { node }) => restart(node),
        Some(LabCmd::Status) => {
            status();
            Ok(())
        }
        Some(LabCmd::Traffic) => traffic(),
        Some(LabCmd::Failover { how, ref picture }) => failover(how, picture.as_deref()),
        Some(LabCmd::Upgrade { from }) => upgrade::upgrade(&from),
        Some(LabCmd::Chaos { faults, seed, json }) => {
            // It builds its own lab: a fresh machine needs the toolchain.
            crate::setup::setup()?;
            build_release_bins()?;
            chaos::chaos(faults, seed, json.as_deref())
        }
        None => {
            up()?;
            traffic()?;
            status();
            Ok(())
        }
    }
}

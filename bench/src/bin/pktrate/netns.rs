//! The harness's namespaces (generator, device under test, sink, sync
//! peer), the tandemd it starts in the DUT, and the sync peer it runs.

// The harness's parts share one vocabulary: its imports, arguments and
// helpers.
use super::*;

pub(crate) const GEN: &str = "tb-gen";
pub(crate) const DUT: &str = "tb-dut";
pub(crate) const SINK: &str = "tb-sink";
pub(crate) const PEER: &str = "tb-peer";
pub(crate) const SYNC_KEY: &str = "pktrate-sync-shared-key";

pub(crate) fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

pub(crate) fn teardown() {
    for n in [GEN, DUT, SINK, PEER] {
        if let Ok(p) = sh(&["ip", "netns", "pids", n]) {
            for pid in p.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process inside our own bench namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = sh(&["ip", "netns", "del", n]);
    }
}

pub(crate) fn mac(n: &str, dev: &str) -> Result<[u8; 6]> {
    let s = ns(n, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

pub(crate) fn ifindex(n: &str, dev: &str) -> Result<u32> {
    Ok(ns(n, &["cat", &format!("/sys/class/net/{dev}/ifindex")])?
        .trim()
        .parse()?)
}

/// Runs `ip` with its arguments as one whitespace-separated string.
pub(crate) fn ip(args: &str) -> Result<String> {
    let mut v = vec!["ip"];
    v.extend(args.split_whitespace());
    sh(&v)
}

pub(crate) fn topology() -> Result<()> {
    teardown();
    for n in [GEN, DUT, SINK] {
        ip(&format!("netns add {n}"))?;
        ip(&format!("-n {n} link set lo up"))?;
    }
    for (a, an, b, bn) in [(GEN, "gen0", DUT, "in0"), (DUT, "out0", SINK, "sink0")] {
        ip(&format!(
            "link add {an} netns {a} numrxqueues 2 numtxqueues 2 type veth \
             peer name {bn} netns {b} numrxqueues 2 numtxqueues 2"
        ))?;
    }
    for (n, cidr, dev) in [
        (GEN, "198.18.1.10/24", "gen0"),
        (DUT, "198.18.1.1/24", "in0"),
        (DUT, "198.18.2.1/24", "out0"),
        (SINK, "198.18.2.10/24", "sink0"),
    ] {
        ip(&format!("-n {n} addr add {cidr} dev {dev}"))?;
        ip(&format!("-n {n} link set {dev} up"))?;
    }
    // Static neighbours: no ARP in the measured window.
    let fmt = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for (addr, (n, d), via) in [
        ("198.18.2.10", (SINK, "sink0"), "out0"),
        ("198.18.1.10", (GEN, "gen0"), "in0"),
    ] {
        let m = fmt(mac(n, d)?);
        ip(&format!(
            "-n {DUT} neigh replace {addr} lladdr {m} dev {via} nud permanent"
        ))?;
    }
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    // The sync link to a replication peer (used by --sync only).
    ip(&format!("netns add {PEER}"))?;
    ip(&format!(
        "link add sync0 netns {DUT} type veth peer name sync0 netns {PEER}"
    ))?;
    for (n, cidr) in [(DUT, "198.18.9.1/30"), (PEER, "198.18.9.2/30")] {
        ip(&format!("-n {n} addr add {cidr} dev sync0"))?;
        ip(&format!("-n {n} link set sync0 up"))?;
    }
    // Interfaces for a backup tandemd in tb-peer (--cold-sync): each a veth
    // whose other end stays in tb-peer, carrying no traffic.
    for dev in ["in0", "out0"] {
        ip(&format!(
            "link add {dev} netns {PEER} type veth peer name {dev}p netns {PEER}"
        ))?;
        ip(&format!("-n {PEER} link set {dev} up"))?;
        ip(&format!("-n {PEER} link set {dev}p up"))?;
    }
    Ok(())
}

/// `[sync]` for tandemd (active) or the peer (backup).
pub(crate) fn sync_section(role: &str) -> String {
    let (local, peer, id) = if role == "active" {
        ("198.18.9.1", "198.18.9.2", 1)
    } else {
        ("198.18.9.2", "198.18.9.1", 2)
    };
    format!(
        "[sync]\nlocal = \"{local}\"\npeer = \"{peer}\"\nrole = \"{role}\"\nnode_id = {id}\n\
         key = \"{SYNC_KEY}\"\n"
    )
}

/// A replication backup in tb-peer: a real sync driver that dials tandemd,
/// asks for a cold sync and counts the session adds it receives (it
/// installs nothing: what is measured is the active side's cost).
pub(crate) struct Peer {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) adds: Arc<AtomicU64>,
    pub(crate) handle: thread::JoinHandle<Result<()>>,
}

impl Peer {
    pub(crate) fn start(dut_config: &str) -> Result<Self> {
        use tandem_control::{
            config::Config,
            sync::{
                Event, Settings,
                driver::{Driver, Notice},
            },
        };
        // The peer's configuration: tandemd's with the backup's [sync], so
        // the service sets hash the same.
        let text = format!("{}{}", dut_config, sync_section("backup"));
        let cfg = Config::parse(std::path::Path::new("peer.toml"), &text)?;
        let settings = Settings::from_config(&cfg, 2).context("[sync] configured")?;
        let stop = Arc::new(AtomicBool::new(false));
        let adds = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&adds));
        let handle = thread::spawn(move || -> Result<()> {
            enter_ns(PEER)?;
            let mut d = Driver::new(
                settings,
                "198.18.9.2:7468".parse()?,
                "198.18.9.1:7468".parse()?,
            )?;
            while !s.load(Ordering::Relaxed) {
                d.turn(Duration::from_millis(1));
                while let Some(n) = d.poll_notice() {
                    if let Notice::Conn(Event::Add { records, .. }) = n {
                        a.fetch_add(records.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        });
        Ok(Self { stop, adds, handle })
    }

    pub(crate) fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("peer thread panicked"))??;
        Ok(self.adds.load(Ordering::Relaxed))
    }
}

pub(crate) struct Tandemd {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

pub(crate) fn start_tandemd(bin: &PathBuf, workers: u32) -> Result<Tandemd> {
    start_tandemd_with(bin, workers, "")
}

/// tandemd with `extra` appended to the base configuration.
pub(crate) fn start_tandemd_with(bin: &PathBuf, workers: u32, extra: &str) -> Result<Tandemd> {
    start_tandemd_in(DUT, "pktrate", bin, workers, extra)
}

/// tandemd in namespace `netns` (interfaces in0 and out0) as `instance`
/// (its segment, configuration and log are named after it).
pub(crate) fn start_tandemd_in(
    netns: &str,
    instance: &str,
    bin: &PathBuf,
    workers: u32,
    extra: &str,
) -> Result<Tandemd> {
    let dir = std::env::temp_dir();
    let cfg = dir.join(format!("tandem-{instance}.toml"));
    let log = dir.join(format!("tandem-{instance}.log"));
    fs::write(
        &cfg,
        format!(
            "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n[dataplane]\nworkers = {workers}\nbind = \"copy\"\n{extra}"
        ),
    )?;
    let f = fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--instance", instance])
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" running") {
            return Ok(Tandemd { child, log });
        }
        if Instant::now() > deadline {
            bail!("tandemd did not start:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time a process's threads have run, in ns, by role: workers
/// (`tandem-w*`), the sync thread, the event log's, and the rest
/// (redundancy, netlink, main).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cpu {
    pub(crate) workers: u64,
    pub(crate) sync: u64,
    /// The event log's thread.
    pub(crate) log: u64,
    pub(crate) other: u64,
}

impl Cpu {
    pub(crate) fn total(&self) -> u64 {
        self.workers + self.sync + self.log + self.other
    }

    pub(crate) fn since(&self, before: &Self) -> Self {
        Self {
            workers: self.workers.saturating_sub(before.workers),
            sync: self.sync.saturating_sub(before.sync),
            log: self.log.saturating_sub(before.log),
            other: self.other.saturating_sub(before.other),
        }
    }
}

impl Tandemd {
    /// CPU time of every thread so far (`/proc/PID/task/*/schedstat`:
    /// nanoseconds on a CPU, softirq work done in the thread's context
    /// included).
    pub(crate) fn cpu(&self) -> Result<Cpu> {
        let mut c = Cpu::default();
        for t in fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let t = t?.path();
            let (Ok(comm), Ok(st)) = (
                fs::read_to_string(t.join("comm")),
                fs::read_to_string(t.join("schedstat")),
            ) else {
                continue; // the thread ended
            };
            let ns: u64 = st
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match comm.trim() {
                n if n.starts_with("tandem-w") => c.workers += ns,
                "tandem-sync" => c.sync += ns,
                "tandem-log" => c.log += ns,
                _ => c.other += ns,
            }
        }
        Ok(c)
    }

    /// Stops it and returns the exit report (final counters, XSK statistics).
    pub(crate) fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        self.child.wait()?;
        let text = fs::read_to_string(&self.log)?;
        Ok(text
            .lines()
            .filter(|l| l.contains("final counters"))
            .map(|l| l.split_once("daemon: ").map_or(l, |(_, r)| r).to_owned())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

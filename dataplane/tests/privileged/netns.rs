//! Fresh network namespaces, veth pairs and a running tandemd for the
//! privileged tests. Everything made here is removed on drop.

use std::{
    fs,
    io::Read as _,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Whether this process may create namespaces and load XDP programs.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd`, panicking with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    sh(Command::new("ip").args(args))
}

/// `ip` with its arguments given as one whitespace-separated string.
pub fn ipw(args: &str) -> String {
    sh(Command::new("ip").args(args.split_whitespace()))
}

/// A network namespace that is deleted (with its processes) on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "tt{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that entered this namespace. Sockets created
    /// there stay in the namespace wherever they are used afterwards.
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let f_ns = fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    pub fn sysctl(&self, kv: &str) {
        sh(self.cmd("sysctl").args(["-qw", kv]));
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let s = sh(self.cmd("cat").arg(format!("/sys/class/net/{dev}/ifindex")));
        s.trim().parse().expect("ifindex")
    }

    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let s = sh(self.cmd("cat").arg(format!("/sys/class/net/{dev}/address")));
        let mut m = [0u8; 6];
        for (i, p) in s.trim().split(':').enumerate() {
            m[i] = u8::from_str_radix(p, 16).expect("mac");
        }
        m
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(pid) = p.parse::<i32>() {
                    // SAFETY: kill(2) on a process of our test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// client (c0) -- (in0) node (out0) -- (s0) server, two queues per veth,
/// the kernel's forwarding off in node.
pub struct Topo {
    pub client: Ns,
    pub node: Ns,
    pub server: Ns,
}

pub const CLIENT: &str = "198.18.1.10";
pub const NODE_IN: &str = "198.18.1.1";
pub const SERVER: &str = "198.18.2.10";
pub const NODE_IN6: &str = "2001:db8:1::1";
pub const SERVER6: &str = "2001:db8:2::10";

impl Topo {
    pub fn new() -> Self {
        let client = Ns::new("c");
        let node = Ns::new("n");
        let server = Ns::new("s");
        let (c, n, s) = (&client.name, &node.name, &server.name);
        for (a, an, b, bn) in [(c, "c0", n, "in0"), (s, "s0", n, "out0")] {
            ipw(&format!(
                "link add {an} netns {a} numrxqueues 2 numtxqueues 2 type veth \
                 peer name {bn} netns {b} numrxqueues 2 numtxqueues 2"
            ));
        }
        for cmd in [
            format!("-n {c} addr add 198.18.1.10/24 dev c0"),
            format!("-n {s} addr add 198.18.2.10/24 dev s0"),
            format!("-n {n} addr add 198.18.1.1/24 dev in0"),
            format!("-n {n} addr add 198.18.2.1/24 dev out0"),
            format!("-n {c} -6 addr add 2001:db8:1::10/64 dev c0 nodad"),
            format!("-n {s} -6 addr add 2001:db8:2::10/64 dev s0 nodad"),
            format!("-n {n} -6 addr add 2001:db8:1::1/64 dev in0 nodad"),
            format!("-n {n} -6 addr add 2001:db8:2::1/64 dev out0 nodad"),
            format!("-n {c} link set c0 up"),
            format!("-n {s} link set s0 up"),
            format!("-n {n} link set in0 up"),
            format!("-n {n} link set out0 up"),
            format!("-n {c} route add default via {NODE_IN}"),
            format!("-n {s} route add default via 198.18.2.1"),
            format!("-n {c} -6 route add default via {NODE_IN6}"),
            format!("-n {s} -6 route add default via 2001:db8:2::1"),
        ] {
            ipw(&cmd);
        }
        // See README: partial checksums do not survive AF_XDP on veth.
        sh(client.cmd("ethtool").args(["-K", "c0", "tx", "off"]));
        sh(server.cmd("ethtool").args(["-K", "s0", "tx", "off"]));
        // The XDP fast path redirects into c0 and s0; a veth drops
        // redirected frames unless its receiving end has GRO on (or an XDP
        // program), without a counter.
        sh(client.cmd("ethtool").args(["-K", "c0", "gro", "on"]));
        sh(server.cmd("ethtool").args(["-K", "s0", "gro", "on"]));
        node.sysctl("net.ipv4.ip_forward=0");
        node.sysctl("net.ipv6.conf.all.forwarding=0");
        Self {
            client,
            node,
            server,
        }
    }

    /// Whether XDP is attached to `dev` in the node.
    pub fn xdp_attached(&self, dev: &str) -> bool {
        ip(&["-n", &self.node.name, "link", "show", dev]).contains("xdp")
    }
}

pub fn tandemd_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandemd"))
}

/// tandemstat, built next to tandemd by `cargo test --workspace`.
pub fn tandemstat_path() -> PathBuf {
    let p = tandemd_path().with_file_name("tandemstat");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build -p tandem-tools` (cargo xtask test does)",
        p.display()
    );
    p
}

/// `tandemstat --instance <instance> ARGS` as a command.
pub fn tandemstat(instance: &str) -> Command {
    let mut c = Command::new(tandemstat_path());
    c.args(["--instance", instance]);
    c
}

/// A tandemd running in a namespace, its stderr in a file.
pub struct Daemon {
    child: Option<Child>,
    /// The instance name: names the stats segment.
    pub instance: String,
    log: PathBuf,
    cfg: PathBuf,
}

pub const BASE_CONFIG: &str = "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n\
                               [dataplane]\nbind = \"copy\"\n";

impl Daemon {
    pub fn start(ns: &Ns, config: &str) -> Self {
        Self::start_logging(ns, config, Some("info"))
    }

    /// [`Self::start`] with `RUST_LOG` set to `rust_log`, or unset (the
    /// configuration's `log.level` then decides).
    pub fn start_logging(ns: &Ns, config: &str, rust_log: Option<&str>) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir();
        let cfg = dir.join(format!("tandem-test-{}-{n}.toml", std::process::id()));
        let log = dir.join(format!("tandem-test-{}-{n}.log", std::process::id()));
        fs::write(&cfg, config).expect("write config");
        let f = fs::File::create(&log).expect("log file");
        let instance = format!("tt{}-{n}", std::process::id());
        let mut cmd = ns.cmd(tandemd_path().to_str().expect("utf-8 path"));
        match rust_log {
            Some(l) => cmd.env("RUST_LOG", l),
            None => cmd.env_remove("RUST_LOG"),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .args(["--instance", &instance])
            .env("NO_COLOR", "1")
            // `tandemctl debug panic` is refused without it.
            .env("TANDEM_FAULT_INJECTION", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("spawn tandemd");
        let mut d = Self {
            child: Some(child),
            log,
            cfg,
            instance,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = d.log_text();
            if text.contains("tandemd: running") || text.contains(" running") {
                return d;
            }
            let exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() <= deadline,
                "tandemd did not start ({exited:?}):\n{text}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        // Strip ANSI colour codes in case the subscriber emitted them.
        let mut out = String::with_capacity(s.len());
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\x1b' {
                for d in it.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The exit status once tandemd has ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The configuration file it was started with (a reload reads it).
    pub fn config_path(&self) -> &std::path::Path {
        &self.cfg
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id().cast_signed())
    }

    /// Sends `sig` and waits (bounded) for the exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("daemon already stopped");
        // `ip netns exec` execs tandemd, so the child pid is tandemd's.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id().cast_signed(), sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return (st, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tandemd did not exit on signal {sig}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the final counters from the exit log.
    /// A counter of the running daemon, read from its stats segment
    /// (`flat_totals` naming: `worker.x`, `drop.y`, ...).
    pub fn counter(&self, key: &str) -> u64 {
        let path = tandem_control::stats::segment_path(&self.instance);
        let r = tandem_control::stats::SegmentReader::open(&path).expect("stats segment");
        tandem_control::stats::flat_totals(&r)
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| panic!("no counter {key}"), |(_, v)| v)
    }

    pub fn stop(&mut self) -> Counters {
        let (st, log) = self.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "tandemd exited {st}:\n{log}");
        Counters::from_log(&log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.log);
        let _ = fs::remove_file(tandem_control::stats::segment_path(&self.instance));
        let _ = fs::remove_file(tandem_control::ctl::socket_path(&self.instance));
        let _ = fs::remove_file(&self.cfg);
    }
}

/// The `name=value` pairs of tandemd's "final counters" log line.
#[derive(Debug)]
pub struct Counters(Vec<(String, u64)>);

impl Counters {
    pub fn from_log(log: &str) -> Self {
        let line = log
            .lines()
            .find_map(|l| l.split_once("final counters: ").map(|(_, r)| r.to_owned()))
            .unwrap_or_else(|| panic!("no final counters in log:\n{log}"));
        Self(
            line.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Sum over every key starting with `prefix`.
    pub fn sum_prefix(&self, prefix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Sum over every key ending in `suffix` (e.g. all sockets' `.rx_ring_full`).
    pub fn sum_suffix(&self, suffix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| panic!("no counter {key}"), |(_, v)| *v)
    }
}

/// `promtool check metrics` on a Prometheus text: its complaints, empty
/// when clean (Debian's prometheus package; `cargo xtask setup` installs
/// it).
pub fn promtool_complaints(text: &str) -> String {
    use std::io::Write as _;
    let mut p = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(p) => p,
        Err(e) => return format!("promtool: {e} (cargo xtask setup installs it)"),
    };
    let _ = p.stdin.take().map(|mut i| i.write_all(text.as_bytes()));
    match p.wait_with_output() {
        Ok(out) => {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                said
            } else {
                format!("promtool failed ({}): {said}", out.status)
            }
        }
        Err(e) => format!("promtool: {e}"),
    }
}

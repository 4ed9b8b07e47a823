//! Start, stop, crash and refusal of bad input at start.

use std::{thread, time::Duration};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, Daemon, SERVER, Topo},
    traffic::ping,
};

fn sigterm_detaches_and_sigkill_leaves_nothing_behind() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    check(
        topo.xdp_attached("in0") && topo.xdp_attached("out0"),
        "XDP attached",
    )?;
    let (st, log) = d.signal_and_wait(libc::SIGTERM);
    check(st.success(), format!("SIGTERM exit: {st}\n{log}"))?;
    check(
        !topo.xdp_attached("in0") && !topo.xdp_attached("out0"),
        "XDP detached on SIGTERM",
    )?;

    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let pid = d.pid();
    check(pid > 0, "pid")?;
    let (st, _) = d.signal_and_wait(libc::SIGKILL);
    check(!st.success(), "SIGKILL exit")?;
    // The BPF link dies with the process: nothing is left attached.
    let mut gone = false;
    for _ in 0..50 {
        if !topo.xdp_attached("in0") && !topo.xdp_attached("out0") {
            gone = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    check(gone, "XDP still attached after SIGKILL")?;
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("restart after a crash forwards:\n{out}"))?;
    d.stop();
    Ok(())
}

/// tandemd started in the node's namespace with configuration `text`,
/// run to its end (a start that must fail).
fn start_once(topo: &Topo, tag: &str, text: &str) -> Result<std::process::Output, Failed> {
    let file = std::env::temp_dir().join(format!("tandem-{tag}-{}.toml", std::process::id()));
    std::fs::write(&file, text)?;
    let out = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    Ok(out?)
}

fn missing_interface_is_a_clear_error() -> Result<(), Failed> {
    let topo = Topo::new();
    let out = start_once(
        &topo,
        "noif",
        "[interfaces]\ninside = \"nope0\"\noutside = \"out0\"\n",
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), "missing interface accepted")?;
    check(
        err.contains("interface nope0"),
        format!("error does not name the interface: {err}"),
    )?;
    check(
        !topo.xdp_attached("out0"),
        "a failed start must attach nothing",
    )?;
    Ok(())
}

/// `dataplane.cores` pins the worker there (the last CPU: not where it
/// would go by default); a CPU the process cannot use is refused, named.
fn workers_run_on_the_configured_cores() -> Result<(), Failed> {
    let topo = Topo::new();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let last = cpus - 1;
    let cfg = BASE_CONFIG.replace(
        "[dataplane]\n",
        &format!("[dataplane]\nworkers = 1\ncores = [{last}]\n"),
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    let mut pinned = None;
    for t in std::fs::read_dir(format!("/proc/{}/task", d.pid()))? {
        let t = t?.path();
        if std::fs::read_to_string(t.join("comm"))?.trim() == "tandem-w0" {
            let status = std::fs::read_to_string(t.join("status"))?;
            pinned = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned());
        }
    }
    check(
        pinned.as_deref() == Some(last.to_string().as_str()),
        format!("worker 0 allowed on {pinned:?}, configured [{last}]"),
    )?;
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("forwards from CPU {last}:\n{out}"))?;
    d.stop();

    let out = start_once(
        &topo,
        "cores",
        &BASE_CONFIG.replace("[dataplane]\n", &format!("[dataplane]\ncores = [{cpus}]\n")),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        // A failed start (1), like a missing interface: the file is valid
        // (`--check` passes it) and this machine lacks what it names.
        out.status.code() == Some(1)
            && err.contains("dataplane.cores")
            && err.contains(&format!("CPU {cpus}")),
        format!("CPU {cpus} of {cpus}: {:?} {err}", out.status.code()),
    )?;
    check(
        !topo.xdp_attached("in0"),
        "a refused start attaches nothing",
    )?;
    Ok(())
}

/// The kernel forwarding between the node's interfaces: tandemd refuses
/// to start (2), naming the sysctl, unless the configuration accepts it.
fn kernel_forwarding_is_refused_unless_accepted() -> Result<(), Failed> {
    let topo = Topo::new();
    for sysctl in [
        "net.ipv4.conf.out0.forwarding",
        "net.ipv6.conf.in0.forwarding",
    ] {
        topo.node.sysctl(&format!("{sysctl}=1"));
        let out = start_once(&topo, "fwd", BASE_CONFIG)?;
        let err = String::from_utf8_lossy(&out.stderr);
        check(
            out.status.code() == Some(2) && err.contains(&format!("{sysctl} = 1")),
            format!("{sysctl}=1: {:?} {err}", out.status.code()),
        )?;
        check(
            !topo.xdp_attached("in0"),
            "a refused start attaches nothing",
        )?;
        topo.node.sysctl(&format!("{sysctl}=0"));
    }
    // Accepted: it starts, with a warning, and forwards.
    topo.node.sysctl("net.ipv4.ip_forward=1");
    let cfg = BASE_CONFIG.replace(
        "[dataplane]\n",
        "[node]\nallow_kernel_forwarding = true\n[dataplane]\n",
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(
        ok,
        format!("forwards with the kernel's forwarding accepted:\n{out}"),
    )?;
    d.stop();
    topo.node.sysctl("net.ipv4.ip_forward=0");
    Ok(())
}

/// Under systemd's protocol: READY=1 once XDP is attached and the threads
/// run, WATCHDOG=1 at half `WATCHDOG_USEC` while the workers make
/// progress and none once they hang, STOPPING=1 on SIGTERM. The test is
/// the service manager: it owns `NOTIFY_SOCKET`.
fn systemd_readiness_and_a_watchdog_fed_only_by_working_workers() -> Result<(), Failed> {
    use std::os::unix::net::UnixDatagram;
    let topo = Topo::new();
    let dir = std::env::temp_dir().join(format!("tandem-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sock = UnixDatagram::bind(dir.join("notify"))?;
    let cfg = dir.join("t.toml");
    std::fs::write(&cfg, BASE_CONFIG)?;
    let instance = format!("tn{}", std::process::id());
    let mut child = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&cfg)
        .args(["--instance", &instance])
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env("WATCHDOG_USEC", "1000000")
        .env("TANDEM_FAULT_INJECTION", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let recv = |wait: Duration| -> Option<String> {
        sock.set_read_timeout(Some(wait)).ok()?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let result = (|| -> Result<(), Failed> {
        let first = recv(Duration::from_secs(15)).ok_or("no notification")?;
        check(
            first.lines().any(|l| l == "READY=1"),
            format!("first: {first:?}"),
        )?;
        check(
            topo.xdp_attached("in0") && topo.xdp_attached("out0"),
            "READY=1 before XDP was attached",
        )?;
        let t0 = std::time::Instant::now();
        let mut pings = 0;
        while t0.elapsed() < Duration::from_millis(1800) {
            if recv(Duration::from_millis(200)).is_some_and(|m| m.trim() == "WATCHDOG=1") {
                pings += 1;
            }
        }
        check(pings >= 2, format!("{pings} WATCHDOG=1 in 1.8 s at 0.5 s"))?;
        let o = std::process::Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
            .args(["--instance", &instance, "debug", "hang", "workers"])
            .output()?;
        check(o.status.success(), format!("debug hang workers: {o:?}"))?;
        // One ping may be on its way; then none.
        let _ = recv(Duration::from_millis(700));
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            if let Some(m) = recv(Duration::from_millis(200)) {
                check(m.trim() != "WATCHDOG=1", "a ping while the workers hang")?;
            }
        }
        Ok(())
    })();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    let stopping = recv(Duration::from_secs(10));
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    check(
        stopping.is_some_and(|m| m.lines().any(|l| l == "STOPPING=1")),
        "STOPPING=1 on SIGTERM",
    )
}

/// Group `tandem` reads the counters and uses the control socket: the
/// segment is root:tandem 0640, the socket root:tandem 0660; a process of
/// user nobody in that group runs tandemstat and tandemctl, one outside
/// it is refused. (The group is made for the test if the box lacks it.)
fn group_tandem_reads_counters_and_uses_the_socket() -> Result<(), Failed> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let made = tandem_control::sys::group_id("tandem").is_none();
    if made {
        let o = std::process::Command::new("groupadd")
            .args(["--system", "tandem"])
            .output()?;
        check(o.status.success(), format!("groupadd tandem: {o:?}"))?;
    }
    let gid = tandem_control::sys::group_id("tandem").ok_or("no group tandem")?;
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    // The tools where user nobody may run them.
    let bin = std::env::temp_dir().join(format!("tandem-group-{}", std::process::id()));
    std::fs::create_dir_all(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    for tool in ["tandemstat", "tandemctl"] {
        std::fs::copy(
            netns::tandemstat_path().with_file_name(tool),
            bin.join(tool),
        )?;
    }
    let as_nobody = |groups: &str, tool: &str, args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                &format!("--groups={groups}"),
                "--",
            ])
            .arg(bin.join(tool))
            .args(["--instance", &d.instance])
            .args(args)
            .output()
    };
    let result = (|| -> Result<(), Failed> {
        let seg = std::fs::metadata(tandem_control::stats::segment_path(&d.instance))?;
        let sock = std::fs::metadata(tandem_control::ctl::socket_path(&d.instance))?;
        check(
            seg.gid() == gid && seg.mode() & 0o777 == 0o640,
            format!("segment gid {} mode {:o}", seg.gid(), seg.mode() & 0o777),
        )?;
        check(
            sock.gid() == gid && sock.mode() & 0o777 == 0o660,
            format!("socket gid {} mode {:o}", sock.gid(), sock.mode() & 0o777),
        )?;
        let member = gid.to_string();
        let o = as_nobody(&member, "tandemstat", &["statistics", "--json"])?;
        check(
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"interfaces\""),
            format!("tandemstat as a member: {o:?}"),
        )?;
        let o = as_nobody(&member, "tandemctl", &["clear", "statistics"])?;
        check(o.status.success(), format!("tandemctl as a member: {o:?}"))?;
        let o = as_nobody("65534", "tandemstat", &["statistics"])?;
        check(
            !o.status.success()
                && String::from_utf8_lossy(&o.stderr)
                    .to_lowercase()
                    .contains("permission denied"),
            format!("tandemstat outside the group: {o:?}"),
        )?;
        Ok(())
    })();
    d.stop();
    let _ = std::fs::remove_dir_all(&bin);
    if made {
        let _ = std::process::Command::new("groupdel")
            .arg("tandem")
            .output();
    }
    result
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "group_tandem_reads_counters_and_uses_the_socket",
        group_tandem_reads_counters_and_uses_the_socket,
    ),
    (
        "systemd_readiness_and_a_watchdog_fed_only_by_working_workers",
        systemd_readiness_and_a_watchdog_fed_only_by_working_workers,
    ),
    (
        "kernel_forwarding_is_refused_unless_accepted",
        kernel_forwarding_is_refused_unless_accepted,
    ),
    (
        "workers_run_on_the_configured_cores",
        workers_run_on_the_configured_cores,
    ),
    (
        "sigterm_detaches_and_sigkill_leaves_nothing_behind",
        sigterm_detaches_and_sigkill_leaves_nothing_behind,
    ),
    (
        "missing_interface_is_a_clear_error",
        missing_interface_is_a_clear_error,
    ),
];

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

fn missing_interface_is_a_clear_error() -> Result<(), Failed> {
    let topo = Topo::new();
    let cfg = std::env::temp_dir().join(format!("tandem-noif-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[interfaces]\ninside = \"nope0\"\noutside = \"out0\"\n",
    )?;
    let out = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let _ = std::fs::remove_file(&cfg);
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

    let file = std::env::temp_dir().join(format!("tandem-cores-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        BASE_CONFIG.replace("[dataplane]\n", &format!("[dataplane]\ncores = [{cpus}]\n")),
    )?;
    let out = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_file(&file);
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

pub const TESTS: &[(&str, Test)] = &[
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

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

pub const TESTS: &[(&str, Test)] = &[
    (
        "sigterm_detaches_and_sigkill_leaves_nothing_behind",
        sigterm_detaches_and_sigkill_leaves_nothing_behind,
    ),
    (
        "missing_interface_is_a_clear_error",
        missing_interface_is_a_clear_error,
    ),
];

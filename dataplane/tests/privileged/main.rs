//! Privileged end-to-end tests: real namespaces, veths, the real XDP program,
//! AF_XDP sockets and tandemd, with the kernel's own forwarding turned off.
//!
//! Without root these are reported as ignored; with `CI` set they fail
//! instead, so CI can never pass by skipping them.
#![expect(
    unsafe_code,
    reason = "the privileged tests enter namespaces, signal and ptrace daemons directly"
)]

mod cgnat;
mod counters;
mod events;
mod failover;
mod forwarding;
mod frame;
mod lifecycle;
mod netns;
mod offload;
mod reload;
mod replication;
mod sessions;
mod traffic;
mod xdp;

use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

type Test = fn() -> Result<(), Failed>;

pub fn check(cond: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

/// Not privileged: runs everywhere.
fn bad_config_is_refused_naming_file_and_key() -> Result<(), Failed> {
    let cfg = std::env::temp_dir().join(format!("tandem-bad-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n[dataplane]\nrx_ring = 1000\n",
    )?;
    let out = Command::new(netns::tandemd_path())
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let _ = std::fs::remove_file(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(2),
        format!("exit status {:?}", out.status.code()),
    )?;
    check(
        err.contains(cfg.to_str().unwrap()),
        format!("file not named: {err}"),
    )?;
    check(
        err.contains("dataplane.rx_ring"),
        format!("key not named: {err}"),
    )?;
    check(
        err.contains("power of two"),
        format!("expectation not stated: {err}"),
    )?;
    Ok(())
}

/// Tests that load both cores for seconds (a full-rate hping3 flood):
/// they run alone, so that the pairs' heartbeats in tests running beside
/// them are not starved into failovers the tests did not ask for.
const HEAVY: &[&str] = &["a_flooding_host_stays_within_its_limit_and_others_get_in"];

/// Runs `f`, alone if `name` is [`HEAVY`] (every other test holds a
/// shared lock while it runs).
fn alone_if_heavy(name: &str, f: Test) -> Result<(), Failed> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    if HEAVY.contains(&name) {
        let _alone = LOCK
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    } else {
        let _shared = LOCK
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }
}

fn main() {
    let args = Arguments::from_args();
    let privileged = netns::privileged();
    let in_ci = std::env::var_os("CI").is_some();
    let all = [
        cgnat::TESTS,
        counters::TESTS,
        events::TESTS,
        failover::TESTS,
        forwarding::TESTS,
        lifecycle::TESTS,
        offload::TESTS,
        reload::TESTS,
        replication::TESTS,
        sessions::TESTS,
        sessions::MORE,
        xdp::TESTS,
    ];
    let mut trials: Vec<Trial> = all
        .iter()
        .flat_map(|t| t.iter())
        .map(|&(name, f)| {
            if privileged {
                Trial::test(name, move || alone_if_heavy(name, f))
            } else if in_ci {
                Trial::test(name, || {
                    Err(
                        "needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces) and CI is set: \
                         privileged tests must run in CI, not be skipped"
                            .into(),
                    )
                })
            } else {
                Trial::test(name, f).with_ignored_flag(true)
            }
        })
        .collect();
    trials.push(Trial::test(
        "bad_config_is_refused_naming_file_and_key",
        bad_config_is_refused_naming_file_and_key,
    ));
    libtest_mimic::run(&args, trials).exit();
}

//! `cargo xtask setup|test|lab|bench`: the project's own automation.
//!
//! Design: every command that needs the toolchain calls `setup` first, and
//! `setup` only installs what is missing, so a fresh machine and a warm one
//! run the same command.

mod install;
mod lab;
mod setup;
mod traffic;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tandem's build, test and lab automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks: Debian packages, nightly rust-src,
    /// bpf-linker built against Debian's LLVM 22. Idempotent.
    Setup,
    /// Run everything CI runs: fmt, clippy (host and bpfel), all tests
    /// including the privileged namespace tests (needs root).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// The lab pair in network namespaces (see DESIGN.md). Without a
    /// subcommand: up, traffic, status.
    Lab {
        #[command(subcommand)]
        cmd: Option<lab::LabCmd>,
    },
    /// Run the benchmarks (criterion micro-benches and the packet-rate
    /// harness); see bench/README.md.
    Bench {
        /// Arguments passed to the packet-rate harness.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install the release binaries (built first), the systemd units, the
    /// example configuration, the Prometheus rules, the Grafana dashboard
    /// and the docs under DESTDIR (default /: /usr/local/sbin,
    /// /usr/local/bin, /etc/systemd/system, /etc/tandem,
    /// /usr/local/share/tandem, /usr/share/doc/tandem); on / it also adds
    /// group tandem and reloads a running systemd.
    Install {
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
        /// Install what target/release holds, without building.
        #[arg(long)]
        no_build: bool,
        /// Instead: install into a scratch folder and check what landed
        /// (modes, `tandemd --check` of the example, `systemd-analyze
        /// verify` of the units with the installed binaries).
        #[arg(long)]
        check: bool,
    },
    /// Internal: traffic endpoints the lab runs inside its namespaces.
    #[command(hide = true)]
    Traffic {
        #[command(subcommand)]
        cmd: traffic::TrafficCmd,
    },
}

/// The workspace root (the parent of tools/xtask).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

#[expect(unsafe_code, reason = "geteuid(2): xtask's one C call besides signals")]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to process `pid` (a daemon or a traffic endpoint the lab
/// started); a process already gone is no error here.
#[expect(unsafe_code, reason = "kill(2): the lab stops what it started")]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(pid.cast_signed(), sig) };
}

/// Fuzz targets (fuzz/fuzz_targets) `test` runs, each for a bounded time
/// from its checked-in seeds (fuzz/seeds/NAME) and the working corpus.
const FUZZ_TARGETS: [&str; 5] = [
    "packet_path",
    "sync_decode",
    "sync_conn",
    "config",
    "stats_segment",
];
const FUZZ_SECONDS: u32 = 20;
/// The chaos run of every test run: 12 faults cover every kind once.
const CHAOS_FAULTS: usize = 12;
const CHAOS_SEED: u64 = 23;

fn test(no_lint: bool) -> Result<()> {
    setup::setup()?;
    let in_ci = std::env::var_os("CI").is_some();
    if !is_root() {
        if in_ci {
            bail!(
                "cargo xtask test: CI is set but this is not root; the privileged namespace, XDP \
                 and AF_XDP tests cannot run, and CI must not pass by skipping them"
            );
        }
        eprintln!(
            "xtask: not root: privileged tests will be reported as ignored (run as root for the full suite)"
        );
    }
    if !no_lint {
        eprintln!("xtask: cargo fmt --check");
        run(cargo().args(["fmt", "--all", "--check"]))?;
        // The whole workspace: on the host the XDP crate is an empty binary.
        eprintln!("xtask: clippy (host)");
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        eprintln!("xtask: clippy (bpfel)");
        run(Command::new("rustup")
            .current_dir(root().join("ebpf/xdp"))
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--target-dir",
            ])
            .arg(root().join("target/bpf-clippy"))
            .args(["--", "-D", "warnings"]))?;
    }
    eprintln!("xtask: cargo test --workspace");
    let totals = run_tests(cargo().args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--exclude",
        "tandem-ebpf",
        "--",
        "--test-threads",
        "1",
    ]))?;
    let mut totals = totals;
    for target in FUZZ_TARGETS {
        eprintln!("xtask: fuzz {target} for {FUZZ_SECONDS} s");
        // libFuzzer writes new inputs to the first folder, which must exist.
        std::fs::create_dir_all(root().join("fuzz/corpus").join(target))?;
        let ok = Command::new("rustup")
            .current_dir(root())
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(root().join("fuzz/corpus").join(target))
            .arg(root().join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={FUZZ_SECONDS}"))
            .status()
            .with_context(|| format!("running fuzz target {target}"))?
            .success();
        println!(
            "fuzz {target}: {}",
            if ok {
                "ok"
            } else {
                "FAILED (see fuzz/artifacts/)"
            }
        );
        if ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
            totals.failures.push(format!("fuzz {target}"));
        }
    }
    // The pair under a short seeded chaos run: every fault kind once.
    if is_root() {
        eprintln!("xtask: lab chaos --faults {CHAOS_FAULTS} --seed {CHAOS_SEED}");
        let r = lab::lab(Some(lab::LabCmd::Chaos {
            faults: CHAOS_FAULTS,
            seed: CHAOS_SEED,
            json: Some(root().join("target/chaos.json")),
        }));
        let _ = lab::down();
        match r {
            Ok(()) => {
                println!("lab chaos: ok");
                totals.passed += 1;
            }
            Err(e) => {
                println!("lab chaos: FAILED: {e:#}");
                totals.failed += 1;
                totals.failures.push("lab chaos".into());
            }
        }
        // A rolling upgrade from the previous sync protocol's build.
        eprintln!("xtask: lab upgrade --from {}", lab::PREVIOUS);
        let r = lab::lab(Some(lab::LabCmd::Upgrade {
            from: lab::PREVIOUS.into(),
        }));
        let _ = lab::down();
        match r {
            Ok(()) => {
                println!("lab upgrade: ok");
                totals.passed += 1;
            }
            Err(e) => {
                println!("lab upgrade: FAILED: {e:#}");
                totals.failed += 1;
                totals.failures.push("lab upgrade".into());
            }
        }
    } else {
        totals.ignored += 2;
    }
    // The install step into a scratch root, checked there.
    eprintln!("xtask: install --destdir (scratch) and check");
    let r = lab::build_release_bins().and_then(|()| install::check());
    match r {
        Ok(()) => {
            println!("install: ok");
            totals.passed += 1;
        }
        Err(e) => {
            println!("install: FAILED: {e:#}");
            totals.failed += 1;
            totals.failures.push("install".into());
        }
    }
    for name in &totals.failures {
        match totals.reasons.iter().find(|(n, _)| n == name) {
            Some((_, why)) => println!("FAILED: {name}: {why}"),
            None => println!("FAILED: {name}"),
        }
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || totals.passed == 0 {
        bail!("test run failed");
    }
    Ok(())
}

/// The failure being printed ("---- NAME ----"): its name and first lines.
type Why = Option<(String, Vec<String>)>;

impl Totals {
    /// Counts one line of libtest's output (the harness's own tests
    /// print the same): its results, the failed tests' names and the
    /// first lines of their failures, named again at the end of the run,
    /// where a log's tail shows them.
    fn scan(&mut self, line: &str, why: &mut Why) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" ----"))
        {
            let name = name.split_whitespace().next().unwrap_or(name).to_owned();
            *why = Some((name, Vec::new()));
        } else if let Some((name, lines)) = why.as_mut() {
            if line.trim().is_empty() || lines.len() == 3 {
                self.reasons.push((name.clone(), lines.join(" / ")));
                *why = None;
            } else {
                lines.push(line.trim().to_owned());
            }
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" FAILED"))
            .and_then(|l| l.trim_end().strip_suffix("..."))
        {
            self.failures.push(name.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(word), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match word {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// The failed tests' names, as printed, and the first lines of
    /// what each printed.
    failures: Vec<String>,
    reasons: Vec<(String, String)>,
}

/// Runs a libtest-style test command, echoing its output, and sums the
/// "test result:" lines of every test binary.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut t = Totals::default();
    let stdout = child.stdout.take().context("test stdout")?;
    let mut why = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        t.scan(&line, &mut why);
    }
    let status = child.wait()?;
    if !status.success() {
        t.failed = t.failed.max(1);
    }
    Ok(t)
}

fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    run(cargo().args([
        "bench",
        "-p",
        "tandem-bench",
        "--bench",
        "wire",
        "--bench",
        "stats",
        "--bench",
        "session",
    ]))?;
    lab::build_release_bins()?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "tandem-bench",
            "--bin",
            "pktrate",
            "--",
        ])
        .args(args))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Test { no_lint } => test(no_lint),
        Cmd::Lab { cmd } => lab::lab(cmd),
        Cmd::Install {
            destdir,
            no_build,
            check,
        } => {
            if check {
                if !no_build {
                    lab::build_release_bins()?;
                }
                install::check()
            } else {
                install::install(&destdir, !no_build)
            }
        }
        Cmd::Bench { args } => bench(&args),
        Cmd::Traffic { cmd } => traffic::run(&cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_named_with_its_first_lines() {
        let mut t = Totals::default();
        let mut why = None;
        for line in [
            "test a::ok ... ok",
            "test b::bad ... FAILED",
            "test c_mimic                                 ... FAILED",
            "",
            "failures:",
            "",
            "---- b::bad stdout ----",
            "thread 'b::bad' panicked at x.rs:1:1:",
            "assertion failed",
            "",
            "---- c_mimic ----",
            "the servers saw None",
            "",
            "test result: FAILED. 1 passed; 2 failed; 3 ignored; 0 measured",
        ] {
            t.scan(line, &mut why);
        }
        assert_eq!((t.passed, t.failed, t.ignored), (1, 2, 3));
        assert_eq!(t.failures, ["b::bad", "c_mimic"]);
        assert_eq!(
            t.reasons,
            [
                (
                    "b::bad".to_owned(),
                    "thread 'b::bad' panicked at x.rs:1:1: / assertion failed".to_owned()
                ),
                ("c_mimic".to_owned(), "the servers saw None".to_owned())
            ]
        );
    }
}

//! tandemd: the tandem data-plane daemon.
use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser;
use tandem_control::config::Config;
use tandem_dataplane::{daemon::Daemon, reload::SetLog};

/// Stateful services node data plane: steers service traffic with XDP into
/// per-queue AF_XDP sockets and forwards it between the inside and outside
/// interfaces using the kernel's routes and neighbours.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); see deploy/tandem.example.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Instance name: the stats segment is /dev/shm/tandem/NAME.stats.
    #[arg(long, default_value = "default", value_name = "NAME")]
    instance: String,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let set_log = init_log();
    end_on_panic();
    let args = Args::parse();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandemd: {}", tandem_control::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = set_log(&cfg.log.level) {
        eprintln!("tandemd: log.level {:?}: {e}", cfg.log.level);
        return ExitCode::from(2);
    }
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("tandemd: installing signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    // SIGHUP reloads (`systemctl reload` runs `tandemctl reload`, which
    // does the same and waits for the answer).
    let reload = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload)) {
        eprintln!("tandemd: installing signal handler: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!(instance = %args.instance, config = %args.config.display(), "starting");
    let mut daemon = match Daemon::start(&cfg, &args.instance, stop) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tandemd: {}", tandem_control::error_chain(&e));
            return ExitCode::from(e.exit_code());
        }
    };
    daemon.reload_from(args.config, reload, Some(set_log));
    tracing::info!("running");
    daemon.run_until_stopped();
    ExitCode::SUCCESS
}

/// Logs to stderr (the journal under systemd) through a filter that
/// `log.level` sets, at start and on reload, unless `RUST_LOG` is set:
/// then that filter stays. Returns the setter.
fn init_log() -> SetLog {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new("info")));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Box::new(move |level: &str| {
        if pinned {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// A panic in any thread ends the process. A daemon whose redundancy or
/// sync thread died would go on forwarding as MASTER and publishing its
/// last state ("Hot") while nothing decides or replicates; dead, its peer
/// takes over within the detection time and a supervisor restarts it.
fn end_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            "a thread panicked: ending the process so that the peer takes over"
        );
        std::process::abort();
    }));
}

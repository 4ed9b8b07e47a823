//! tandemd: the tandem data-plane daemon.
use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser;
use tandem_control::config::Config;
use tandem_dataplane::daemon::Daemon;

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    end_on_panic();
    let args = Args::parse();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandemd: {}", tandem_control::error_chain(&e));
            return ExitCode::from(2);
        }
    };
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
    tracing::info!(instance = %args.instance, config = %args.config.display(), "starting");
    let daemon = match Daemon::start(&cfg, &args.instance, stop) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tandemd: {}", tandem_control::error_chain(&e));
            return ExitCode::from(e.exit_code());
        }
    };
    tracing::info!("running");
    daemon.run_until_stopped();
    ExitCode::SUCCESS
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

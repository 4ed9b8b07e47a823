//! tandemctl: commands to a running tandemd over its control socket.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tandem_control::ctl::{Request, socket_path};

/// Send a command to tandemd --instance NAME over /run/tandem/NAME.sock
/// ($TANDEM_RUN_DIR overrides the directory). Exit status: 0 done,
/// 1 the daemon refused, 2 no daemon or bad arguments.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[arg(long, default_value = "default")]
    instance: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Read the configuration file again and apply what may change while
    /// tandemd runs: firewall rules, session timeouts, rate limits
    /// (rejects, ICMP errors, punts), the probes' failure detection time
    /// and log.level. Sessions and offloads stay; new flows meet the new
    /// rules. A file that does not parse, or that changes anything else
    /// (interfaces, workers, rings, tables, NAT pools, sync, redundancy),
    /// changes nothing: the answer names the keys and exit status is 1.
    /// SIGHUP and `systemctl reload tandemd@NAME` do the same.
    Reload,
    /// Reset counters as shown by tandemstat's views (Prometheus keeps the
    /// raw monotonic values).
    Clear {
        #[command(subcommand)]
        what: ClearWhat,
    },
    /// Manual switchover (needs [redundancy]), or a resync (`resync`, on
    /// the standby, needs [sync]). `acquire` on the STANDBY
    /// asks the MASTER to release and takes over once it has; `release`
    /// on the MASTER hands over to an eligible STANDBY. Mastership moves
    /// only to a node whose sync is Hot (it holds every session): a
    /// request refused (the standby not Hot, nobody to hand over to, this
    /// node's health failed) exits 1 and says why and how many sessions
    /// would be lost; --force overrides and the answer says what it cost.
    Request {
        #[command(subcommand)]
        what: RequestWhat,
    },
    /// Fault injection for tests: only when tandemd started with
    /// TANDEM_FAULT_INJECTION=1.
    Debug {
        #[command(subcommand)]
        what: DebugWhat,
    },
}

#[derive(Subcommand, Debug)]
enum DebugWhat {
    /// Make a daemon thread panic (ha, sync or control): tandemd must end
    /// at once, so that its peer takes over.
    Panic {
        #[arg(value_parser = ["ha", "sync", "control"])]
        thread: String,
    },
    /// Make every worker stop making progress (a wedged data path): the
    /// systemd watchdog is no longer fed.
    Hang {
        #[arg(value_parser = ["workers"])]
        what: String,
    },
}

#[derive(Subcommand, Debug)]
enum RequestWhat {
    Acquire {
        /// Even when this node's health failed (STANDBY-WARNED) or its
        /// sync is not Hot (the master's unreplicated sessions are lost).
        #[arg(long)]
        force: bool,
    },
    Release {
        /// Even when the peer's health failed (STANDBY-WARNED) or its sync
        /// is not Hot (the sessions it lacks are lost).
        #[arg(long)]
        force: bool,
    },
    /// On the standby: ask the active to send every session again (a
    /// resync). The standby keeps what it holds meanwhile (sync stays Hot)
    /// and then removes what the resync did not carry. tandemd asks for
    /// one by itself when the two nodes' digests keep differing.
    Resync,
}

#[derive(Subcommand, Debug)]
enum ClearWhat {
    /// Counters: the views count from now (Prometheus stays monotonic).
    Statistics,
    /// End the sessions the filters match (all, without any), as expiry
    /// ends them: offloads taken back, NAT bindings released, the peer
    /// told. Filters as for `tandemstat sessions`: protocol P,
    /// source-prefix X, destination-prefix X, source-port N,
    /// destination-port N, service-set S, interface I.
    Sessions {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        filters: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let req = match args.cmd {
        Cmd::Debug {
            what: DebugWhat::Panic { thread },
        } => match tandem_control::ctl::parse_request(&format!("debug panic {thread}")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tandemctl: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Debug {
            what: DebugWhat::Hang { .. },
        } => Request::HangWorkers,
        Cmd::Clear {
            what: ClearWhat::Statistics,
        } => Request::ClearStatistics,
        Cmd::Clear {
            what: ClearWhat::Sessions { filters },
        } => match tandem_control::ctl::parse_request(&format!(
            "clear sessions {}",
            filters.join(" ")
        )) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tandemctl: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Request {
            what: RequestWhat::Acquire { force },
        } => Request::Mastership {
            acquire: true,
            force,
        },
        Cmd::Request {
            what: RequestWhat::Release { force },
        } => Request::Mastership {
            acquire: false,
            force,
        },
        Cmd::Request {
            what: RequestWhat::Resync,
        } => Request::Resync,
        Cmd::Reload => Request::Reload,
    };
    let path = socket_path(&args.instance);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "tandemctl: instance {:?}: cannot reach {}: {e} (is tandemd running?)",
                args.instance,
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    let sent = writeln!(s, "{}", req.as_line());
    if sent.is_err() || BufReader::new(&s).read_line(&mut reply).is_err() || reply.is_empty() {
        eprintln!("tandemctl: no reply from {}", path.display());
        return ExitCode::from(2);
    }
    let reply = reply.trim_end();
    if reply == "ok" || reply.starts_with("ok:") {
        println!("{reply}");
        ExitCode::SUCCESS
    } else {
        eprintln!("tandemctl: {reply}");
        ExitCode::from(1)
    }
}

//! tandemstat: print an instance's counters from its stats segment.
use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    thread,
    time::Duration,
};

use clap::{ArgGroup, Parser, Subcommand};
use tandem_control::sessions::Query;
use tandem_tools::{ha, ipmp, model::Snapshot, prom, sessions, view};

/// Read-only readout of a tandem instance's counters (from
/// /dev/shm/tandem/NAME.stats, or $TANDEM_STATS_DIR/NAME.stats; never talks
/// to the daemon) and of its sessions (from its control socket,
/// /run/tandem/NAME.sock or $TANDEM_RUN_DIR/NAME.sock).
///
/// Without a command or mode flag it prints `statistics`. The ipmpstat-style
/// modes print one row per object: -i interfaces (INTERFACE ACTIVE GROUP
/// FLAGS LINK PROBE STATE). FLAGS: s = node is standby (not forwarding),
/// d = link down, i = no XDP program attached. GROUP is the instance.
/// -g, -a, -p and -t (groups, addresses, probes, targets) and the
/// redundancy-group and peer views are not built yet (the state machine
/// runs; its counters are in the segment and the Prometheus output) and
/// are refused.
///
/// Exit status: 0 ok, 2 bad arguments or no usable segment. A daemon whose
/// heartbeat is older than 3 s is reported stale on stderr; output is still
/// printed.
#[derive(Parser, Debug)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "ipmpstat's single-letter flags"
)]
#[command(version, group(ArgGroup::new("mode").args(["i", "g", "a", "p", "t"])))]
struct Args {
    /// Instance name.
    #[arg(long, default_value = "default", global = true)]
    instance: String,
    /// Interface mode.
    #[arg(short = 'i')]
    i: bool,
    /// Group mode (not yet available).
    #[arg(short = 'g')]
    g: bool,
    /// Address mode (not yet available).
    #[arg(short = 'a')]
    a: bool,
    /// Probe mode (not yet available).
    #[arg(short = 'p')]
    p: bool,
    /// Target mode (not yet available).
    #[arg(short = 't')]
    t: bool,
    /// Fields to print, comma-separated, case-insensitive, or `all`.
    #[arg(short = 'o', value_name = "FIELD,...")]
    fields: Option<String>,
    /// Machine-parsable output: no header, ':'-separated; requires -o.
    #[arg(short = 'P')]
    parsable: bool,
    /// Numeric output (addresses are never resolved; accepted for ipmpstat
    /// compatibility).
    #[arg(short = 'n')]
    numeric: bool,
    /// Refresh every SECONDS, showing per-second deltas of counters.
    #[arg(short = 'w', value_name = "SECONDS", global = true)]
    watch: Option<f64>,
    /// With -w: stop after COUNT refreshes.
    #[arg(short = 'c', value_name = "COUNT", global = true)]
    count: Option<u64>,
    /// JSON output (snake_case keys).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Data-path counters: interfaces, workers, XDP verdicts, drops, sockets.
    Statistics,
    /// The whole segment in Prometheus text format (node_exporter textfile ready).
    Prometheus,
    /// Serve the Prometheus text at http://ADDR/metrics.
    Serve {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9417")]
        listen: String,
    },
    /// Sessions, asked of the daemon: [terse|brief|extensive|count]
    /// [protocol P] [source-prefix X] [destination-prefix X] [source-port N]
    /// [destination-port N] [service-set S] [interface I] [limit N].
    /// Addresses and ports are the initiator's, before NAT. Default level:
    /// both flows of each session; brief adds the NAT translation;
    /// extensive adds TCP state, timers, bytes and the owning worker.
    Sessions {
        #[arg(value_name = "WORD", num_args = 0..)]
        words: Vec<String>,
    },
    /// Session replication to the peer (`show services ha statistics`):
    /// role, connection, synchronization state, addresses, and the add,
    /// delete, refresh, error, batching and codec counters. `--help` defines
    /// every field.
    #[command(after_long_help = ha::glossary())]
    Ha {
        /// Only if the sync link is on this interface.
        interface: Option<String>,
    },
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tandemstat: {msg}");
    ExitCode::from(2)
}

fn warn_stale(s: &Snapshot) {
    if s.stale() {
        let alive = std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
        eprintln!(
            "tandemstat: warning: instance {} is stale: heartbeat {:.1} s old (pid {} {})",
            s.instance,
            s.heartbeat_age_s(),
            s.pid,
            if alive {
                "not progressing"
            } else {
                "not running"
            }
        );
    }
}

/// Renders one frame of the chosen view.
fn render(args: &Args, s: &Snapshot, rates: bool) -> Result<String, String> {
    if args.i {
        let sel =
            ipmp::select(args.fields.as_deref(), &ipmp::IFACE_FIELDS).map_err(|e| e.to_string())?;
        if args.json {
            return Ok(format!("{}\n", ipmp::iface_json(s, &sel)));
        }
        return Ok(ipmp::render(
            &ipmp::IFACE_FIELDS,
            &sel,
            &ipmp::iface_rows(s),
            args.parsable,
        ));
    }
    match &args.cmd {
        Some(Cmd::Ha { interface }) => {
            let h = ha::Ha::read(s).ok_or_else(|| {
                format!(
                    "instance {} has no session replication ([sync])",
                    s.instance
                )
            })?;
            if let Some(i) = interface
                && *i != h.interface
            {
                return Err(format!(
                    "no sync link on interface {i} (instance {} syncs over {})",
                    s.instance, h.interface
                ));
            }
            if args.json {
                Ok(format!("{}\n", ha::json(&h)))
            } else {
                Ok(ha::text(&h))
            }
        }
        Some(Cmd::Prometheus) => Ok(prom::exposition(s)),
        _ if args.json => Ok(format!("{}\n", view::json(s))),
        _ => Ok(view::text(s, rates)),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.g || args.a || args.p || args.t {
        return fail(
            "-g, -a, -p and -t (the redundancy views) are not built yet; -i is \
             available, and the redundancy counters are in `tandemstat prometheus`",
        );
    }
    if args.parsable && args.fields.is_none() {
        return fail("-P requires -o FIELD,... (an explicit list of fields)");
    }
    if args.parsable && !args.i {
        return fail("-P applies to the ipmpstat-style modes (-i)");
    }
    if args.fields.is_some() && !args.i {
        return fail("-o applies to the ipmpstat-style modes (-i)");
    }
    let _ = args.numeric;
    if let Some(Cmd::Sessions { words }) = &args.cmd {
        if args.watch.is_some() {
            return fail("-w applies to counters, not to session listings");
        }
        let q = match Query::parse(words) {
            Ok(q) => q,
            Err(e) => return fail(&format!("sessions: {e}")),
        };
        return match sessions::fetch(&args.instance, &q) {
            Ok(a) => {
                if args.json {
                    println!("{}", sessions::json(&a));
                } else {
                    print!("{}", sessions::text(&a, q.level));
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    if let Some(Cmd::Serve { listen }) = &args.cmd {
        return match prom::serve(listen, &args.instance) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("serve {listen}: {e}")),
        };
    }
    if let Some(w) = args.watch
        && !(w.is_finite() && w > 0.0)
    {
        return fail("-w needs a positive number of seconds");
    }
    let mut prev = match Snapshot::take(&args.instance) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    warn_stale(&prev);
    let Some(interval) = args.watch else {
        return match render(&args, &prev, false) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    };
    let clear = std::io::stdout().is_terminal() && !args.json && !args.parsable;
    let mut n = 0u64;
    loop {
        thread::sleep(Duration::from_secs_f64(interval));
        let cur = match Snapshot::take(&args.instance) {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
        warn_stale(&cur);
        let shown = cur.rates_since(&prev);
        let out = match render(&args, &shown, true) {
            Ok(o) => o,
            Err(e) => return fail(&e),
        };
        let mut stdout = std::io::stdout().lock();
        if clear {
            let _ = write!(stdout, "\x1b[H\x1b[2J");
        }
        if write!(stdout, "{out}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
        prev = cur;
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            return ExitCode::SUCCESS;
        }
    }
}

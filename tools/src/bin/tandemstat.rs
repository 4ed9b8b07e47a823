//! tandemstat: print an instance's counters from its stats segment.
use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    thread,
    time::Duration,
};

use clap::{ArgGroup, Parser, Subcommand};
use tandem_control::sessions::Query;
use tandem_tools::{ha, ipmp, model::Snapshot, nat, prom, redundancy, sessions, view};

/// Read-only readout of a tandem instance's counters (from
/// /dev/shm/tandem/NAME.stats, or $TANDEM_STATS_DIR/NAME.stats; never talks
/// to the daemon) and of its sessions (from its control socket,
/// /run/tandem/NAME.sock or $TANDEM_RUN_DIR/NAME.sock).
///
/// Without a command or mode flag it prints `statistics`. The ipmpstat-style
/// modes print one row per object:
///   -i interfaces: INTERFACE ACTIVE GROUP FLAGS LINK PROBE STATE. FLAGS:
///      s = node is standby (not forwarding), d = link down, i = no XDP
///      program attached. GROUP is the instance.
///   -g the redundancy group: GROUP (instance) GROUPNAME (group id) STATE
///      (ok: every monitored interface usable, degraded: some, failed: none)
///      FDT (probe failure detection time) INTERFACES (active ones bare,
///      functioning ones of a node that is not MASTER in parentheses,
///      unusable ones in brackets).
///   -a addresses that follow mastership (VIPs, NAT pool): ADDRESS STATE
///      (up while held) GROUP INBOUND OUTBOUND.
///   -t probe targets: INTERFACE MODE (static or disabled) TESTADDR TARGETS.
///   -p probes as they finish, until interrupted (or -c COUNT probes):
///      TIME PROBE INTERFACE TARGET NETRTT RTT [RTTAVG RTTDEV]; asked of
///      the daemon's control socket.
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
    /// Group mode.
    #[arg(short = 'g')]
    g: bool,
    /// Address mode.
    #[arg(short = 'a')]
    a: bool,
    /// Probe mode (runs until interrupted, or -c COUNT probes).
    #[arg(short = 'p')]
    p: bool,
    /// Target mode.
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
    /// With -w: stop after COUNT refreshes; with -p: after COUNT probes.
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
    /// Data-path counters: interfaces (the workers' frames and the fast
    /// path's), the fast path, workers, XDP verdicts, drops, sockets.
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
    /// The redundancy state machine (`show services redundancy-group`):
    /// terse (default) is the one-line summary of local and peer state;
    /// brief adds health, failed interfaces and checks and the sync link;
    /// extensive adds heartbeat totals and the received/ignored tables of
    /// transition and monitored events. `--json` carries everything.
    RedundancyGroup {
        /// terse | brief | extensive
        level: Option<String>,
    },
    /// The NAT pools (asked of the daemon): per service set its mapping,
    /// filtering and limits, its static translations and forwarded ports,
    /// per pool address the ports in use and cooling and the port blocks
    /// in use, the subscribers and the ten with the most ports; and the
    /// translations refused, by reason (from the counters).
    Nat,
    /// The peer as the heartbeats see it: its state, health and priority,
    /// and per path sent, received, echoed, missed and rejected heartbeats,
    /// path-down count and round trips (last, smoothed, deviation, worst).
    Peer,
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

/// Rows of an ipmpstat-style mode.
type Rows = fn(&redundancy::Rg) -> Vec<Vec<String>>;

/// Renders one frame of the chosen view.
fn render(args: &Args, s: &Snapshot, rates: bool) -> Result<String, String> {
    let rg = || {
        redundancy::Rg::read(s).ok_or_else(|| {
            format!(
                "instance {} runs no redundancy state machine ([redundancy])",
                s.instance
            )
        })
    };
    let mode: Option<(&[&'static str], Rows)> = if args.g {
        Some((&redundancy::GROUP_FIELDS, redundancy::group_rows))
    } else if args.a {
        Some((&redundancy::ADDRESS_FIELDS, redundancy::address_rows))
    } else if args.t {
        Some((&redundancy::TARGET_FIELDS, redundancy::target_rows))
    } else {
        None
    };
    if let Some((fields, rows)) = mode {
        let sel = ipmp::select(args.fields.as_deref(), fields).map_err(|e| e.to_string())?;
        let rows = rows(&rg()?);
        if args.json {
            return Ok(format!("{}\n", ipmp::rows_json(fields, &sel, &rows)));
        }
        return Ok(ipmp::render(fields, &sel, &rows, args.parsable));
    }
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
                let mut v = ha::json(&h);
                v["warnings"] = serde_json::json!(warnings(s));
                Ok(format!("{v}\n"))
            } else {
                Ok(ha::text(&h) + &warning_lines(s))
            }
        }
        Some(Cmd::RedundancyGroup { level }) => {
            let level = redundancy::Level::parse(level.as_deref())?;
            let r = rg()?;
            if args.json {
                Ok(format!("{}\n", redundancy::rg_json(&r)))
            } else {
                Ok(redundancy::rg_text(&r, level))
            }
        }
        Some(Cmd::Peer) => {
            let r = rg()?;
            if args.json {
                Ok(format!("{}\n", redundancy::peer_json(&r)))
            } else {
                Ok(redundancy::peer_text(&r) + &warning_lines(s))
            }
        }
        Some(Cmd::Prometheus) => Ok(prom::exposition(s)),
        _ if args.json => Ok(format!("{}\n", view::json(s))),
        _ => Ok(view::text(s, rates) + &warning_lines(s)),
    }
}

/// What the redundancy views warn of (a standby not Hot for too long, no
/// key), for the other views too.
fn warnings(s: &Snapshot) -> Vec<String> {
    redundancy::Rg::read(s).map_or_else(Vec::new, |r| r.warnings())
}

fn warning_lines(s: &Snapshot) -> String {
    let mut out = String::new();
    for w in warnings(s) {
        out.push_str("Warning: ");
        out.push_str(&w);
        out.push('\n');
    }
    out
}

/// `-p`: asks the daemon for finished probes twice a second and prints
/// them until interrupted or `-c COUNT` have been printed.
fn probes(args: &Args) -> ExitCode {
    if args.watch.is_some() {
        return fail("-p streams by itself; -w does not apply");
    }
    let spec = args
        .fields
        .clone()
        .unwrap_or_else(|| redundancy::PROBE_DEFAULT.to_owned());
    let sel = match ipmp::select(Some(&spec), &redundancy::PROBE_FIELDS) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let start = tandem_control::stats::unix_ns();
    // Probes sent in the last two seconds are shown too, with negative
    // times, as ipmpstat shows those sent before it started.
    let mut from = None;
    let mut printed = 0u64;
    let mut header = !args.parsable && !args.json;
    let mut widths: Vec<usize> = sel
        .iter()
        .map(|i| redundancy::PROBE_FIELDS[*i].len().max(10))
        .collect();
    loop {
        let (rows, next) = match redundancy::fetch_probes(&args.instance, from) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let fresh = rows
            .iter()
            .filter(|r| from.is_some() || r.sent_ns + 2_000_000_000 >= start);
        let mut stdout = std::io::stdout().lock();
        for r in fresh {
            let row = redundancy::probe_row(r, start);
            let out = if args.json {
                let mut o = serde_json::Map::new();
                for i in &sel {
                    o.insert(
                        redundancy::PROBE_FIELDS[*i].to_ascii_lowercase(),
                        row[*i].clone().into(),
                    );
                }
                format!("{}\n", serde_json::Value::Object(o))
            } else if args.parsable {
                let vals: Vec<String> = sel.iter().map(|i| row[*i].clone()).collect();
                format!("{}\n", ipmp::parsable_line(&vals))
            } else {
                let mut o = String::new();
                if header {
                    header = false;
                    let cells: Vec<String> = sel
                        .iter()
                        .zip(&widths)
                        .map(|(i, w)| format!("{:<w$}", redundancy::PROBE_FIELDS[*i]))
                        .collect();
                    o.push_str(cells.join("  ").trim_end());
                    o.push('\n');
                }
                for (w, i) in widths.iter_mut().zip(&sel) {
                    *w = (*w).max(row[*i].len());
                }
                let cells: Vec<String> = sel
                    .iter()
                    .zip(&widths)
                    .map(|(i, w)| {
                        let v = if row[*i].is_empty() { "--" } else { &row[*i] };
                        format!("{v:<w$}")
                    })
                    .collect();
                o.push_str(cells.join("  ").trim_end());
                o.push('\n');
                o
            };
            if stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
            printed += 1;
            if args.count.is_some_and(|c| printed >= c) {
                return ExitCode::SUCCESS;
            }
        }
        drop(stdout);
        from = Some(next);
        thread::sleep(Duration::from_millis(500));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ipmp_mode = args.i || args.g || args.a || args.p || args.t;
    if args.parsable && args.fields.is_none() {
        return fail("-P requires -o FIELD,... (an explicit list of fields)");
    }
    if args.parsable && !ipmp_mode {
        return fail("-P applies to the ipmpstat-style modes (-i -g -a -p -t)");
    }
    if args.fields.is_some() && !ipmp_mode {
        return fail("-o applies to the ipmpstat-style modes (-i -g -a -p -t)");
    }
    if ipmp_mode && args.cmd.is_some() {
        return fail("a mode flag (-i -g -a -p -t) and a command do not go together");
    }
    if args.p {
        return probes(&args);
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
    if let Some(Cmd::Nat) = &args.cmd {
        if args.watch.is_some() {
            return fail("-w applies to counters, not to the NAT pools");
        }
        let answer = match nat::fetch(&args.instance) {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let snap = match Snapshot::take(&args.instance) {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
        let v = nat::json(&answer, &snap);
        if args.json {
            println!("{v}");
        } else {
            print!("{}", nat::text(&v));
        }
        return ExitCode::SUCCESS;
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

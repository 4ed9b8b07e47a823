//! tandemd's control socket: commands, and session listings gathered from
//! the workers.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write},
    os::{fd::AsRawFd as _, unix::net::UnixListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tandem_control::{
    config::{Config, Timeouts},
    ctl::{MAX_REQUEST, Request, parse_request},
    ha::probe::ProbeRow,
    sessions::{End, Level, Query, Row},
    stats::{self, SegmentWriter},
};

use crate::{
    handoff::{
        Handoff,
        listing::{Chunk, Job, Match},
    },
    node::{MastershipRequest, Node},
    session::{Origin, Session, TcpState, timeout},
    sys,
};

/// What the control thread needs from the daemon.
pub struct Ctx {
    pub segment: Arc<SegmentWriter>,
    pub stop: Arc<AtomicBool>,
    pub handoff: Arc<Handoff>,
    pub workers: usize,
    pub cfg: Config,
    /// Time zero of the workers' session clock.
    pub epoch: Instant,
    /// The redundancy thread's request queue (with `[redundancy]`).
    pub ha: Option<mpsc::Sender<MastershipRequest>>,
    /// Resync requests to the sync thread, with `[sync]`.
    pub sync: Option<mpsc::Sender<crate::sync::thread::ResyncRequest>>,
    /// What the redundancy thread shares (the probe log).
    pub node: Arc<Node>,
    /// Reloads the configuration; holds the running one.
    pub reload: Arc<crate::reload::Reloader>,
}

/// How long a listing waits for a worker's next chunk.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

/// Streams the sessions matching `q` to `out` as JSON lines (or, for
/// `count`, one JSON object) and returns the closing line.
/// The service sets' names, and `q` as a filter over sessions.
fn compile(q: &Query, ctx: &Ctx) -> Result<(Vec<String>, Match), String> {
    let names: Vec<String> = ctx
        .cfg
        .service_sets
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let (inside, outside) = (&ctx.cfg.interfaces.inside, &ctx.cfg.interfaces.outside);
    let filter = Match::compile(q, &names, inside, outside)?;
    Ok((names, filter))
}

fn list_sessions(q: &Query, ctx: &Ctx, out: &mut impl Write) -> Result<End, String> {
    let (names, filter) = compile(q, ctx)?;
    let count_only = q.level == Level::Count;
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel(4 * ctx.workers.max(1));
    for w in 0..ctx.workers {
        let job = Job {
            filter: filter.clone(),
            count_only,
            clear: false,
            nat: false,
            sets: names.len(),
            tx: tx.clone(),
            cancel: Arc::clone(&cancel),
        };
        if ctx.handoff.post_job(w, job).is_err() {
            cancel.store(true, Ordering::Relaxed);
            return Err(format!(
                "worker {w} has too many listings queued; try again"
            ));
        }
    }
    drop(tx);
    let now = u32::try_from(ctx.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
    let timeouts = ctx.reload.live().config().sessions.timeouts;
    let limit = q.limit.unwrap_or(u64::MAX);
    let (mut written, mut matched, mut done) = (0u64, 0u64, 0usize);
    let mut by_set = vec![0u64; names.len()];
    let result = loop {
        if done == ctx.workers {
            break Ok(());
        }
        match rx.recv_timeout(WORKER_ANSWER) {
            Ok(Chunk::Nat { .. }) => {}
            Ok(Chunk::Rows { worker, sessions }) => {
                let mut failed = None;
                for s in sessions
                    .iter()
                    .take((limit - written).try_into().unwrap_or(usize::MAX))
                {
                    let row = row(s, worker, now, &names, &timeouts, ctx);
                    let line = serde_json::to_string(&row).map_err(|e| e.to_string())?;
                    if let Err(e) = writeln!(out, "{line}") {
                        failed = Some(format!("writing to the client: {e}"));
                        break;
                    }
                    written += 1;
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
            Ok(Chunk::Done {
                matched: m,
                by_set: b,
                ..
            }) => {
                done += 1;
                matched += m;
                for (t, n) in by_set.iter_mut().zip(b) {
                    *t += n;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!(
                    "{} of {} workers did not answer within {WORKER_ANSWER:?}",
                    ctx.workers - done,
                    ctx.workers
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    cancel.store(true, Ordering::Relaxed);
    result?;
    if count_only {
        let sets: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&by_set)
            .map(|(n, c)| (n.clone(), serde_json::json!(c)))
            .collect();
        let line = serde_json::json!({ "count": matched, "service_sets": sets });
        writeln!(out, "{line}").map_err(|e| format!("writing to the client: {e}"))?;
    }
    Ok(End { matched })
}

/// Ends the sessions `q` matches on every worker (`clear sessions`), each
/// worker a bounded chunk per loop; how many ended.
fn clear_sessions(q: &Query, ctx: &Ctx) -> Result<u64, String> {
    let (names, filter) = compile(q, ctx)?;
    let (tx, rx) = mpsc::sync_channel(4 * ctx.workers.max(1));
    let cancel = Arc::new(AtomicBool::new(false));
    for w in 0..ctx.workers {
        let job = Job {
            filter: filter.clone(),
            count_only: true,
            clear: true,
            nat: false,
            sets: names.len(),
            tx: tx.clone(),
            cancel: Arc::clone(&cancel),
        };
        if ctx.handoff.post_job(w, job).is_err() {
            return Err(format!(
                "worker {w} has too many jobs queued (the {w} before it are clearing); try again"
            ));
        }
    }
    drop(tx);
    let (mut ended, mut done) = (0u64, 0usize);
    while done < ctx.workers {
        match rx.recv_timeout(WORKER_ANSWER) {
            Ok(Chunk::Done { matched, .. }) => {
                done += 1;
                ended += matched;
            }
            Ok(Chunk::Rows { .. } | Chunk::Nat { .. }) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "{} of {} workers did not finish within {WORKER_ANSWER:?} ({ended} sessions \
                     cleared so far)",
                    ctx.workers - done,
                    ctx.workers
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!(sessions = ended, query = %Request::ClearSessions(q.clone()).as_line(), "sessions cleared");
    Ok(ended)
}

/// Subscribers `show nat` names per service set.
const NAT_TOP: usize = 10;

/// One NAT service set summed over the workers: per pool address (ports,
/// in use, cooling, blocks, blocks in use), the subscribers, and every
/// worker's busiest.
type NatSum = (
    std::collections::BTreeMap<[u8; 4], [u64; 5]>,
    u64,
    Vec<serde_json::Value>,
);

/// Writes the NAT service sets' pools as one JSON line, gathered from
/// every worker: per pool address its ports and blocks (in use, cooling,
/// in all), the subscribers and the busiest ones. Returns how many NAT
/// service sets there are.
fn show_nat(ctx: &Ctx, out: &mut impl Write) -> Result<usize, String> {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    let (tx, rx) = mpsc::sync_channel(4 * ctx.workers.max(1));
    let cancel = Arc::new(AtomicBool::new(false));
    for w in 0..ctx.workers {
        let job = Job {
            filter: Match::default(),
            count_only: true,
            clear: false,
            nat: true,
            sets: ctx.cfg.service_sets.len(),
            tx: tx.clone(),
            cancel: Arc::clone(&cancel),
        };
        if ctx.handoff.post_job(w, job).is_err() {
            return Err(format!("worker {w} has too many jobs queued; try again"));
        }
    }
    drop(tx);
    let mut sets: BTreeMap<u8, NatSum> = BTreeMap::new();
    let mut done = 0;
    while done < ctx.workers {
        match rx.recv_timeout(WORKER_ANSWER) {
            Ok(Chunk::Nat {
                worker,
                sets: views,
            }) => {
                for v in views {
                    let (addrs, subs, top) = sets.entry(v.set).or_default();
                    *subs += v.subscribers as u64;
                    for a in v.addresses {
                        let t = addrs.entry(a.addr).or_default();
                        for (x, y) in t.iter_mut().zip([
                            a.ports,
                            a.ports_in_use,
                            a.ports_cooling,
                            a.blocks,
                            a.blocks_in_use,
                        ]) {
                            *x += u64::from(y);
                        }
                    }
                    top.extend(v.top.iter().map(|s| {
                        serde_json::json!({
                            "inside": Ipv4Addr::from(s.inside).to_string(),
                            "pool_address": Ipv4Addr::from(s.pool_addr).to_string(),
                            "blocks": s.blocks,
                            "ports": s.ports,
                            "sessions": s.sessions,
                            "worker": worker,
                        })
                    }));
                }
            }
            Ok(Chunk::Done { .. }) => done += 1,
            Ok(Chunk::Rows { .. }) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "{} of {} workers did not answer within {WORKER_ANSWER:?}",
                    ctx.workers - done,
                    ctx.workers
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut list = Vec::new();
    for (i, s) in ctx.cfg.service_sets.iter().enumerate() {
        let Some(nat) = &s.nat else { continue };
        let (addrs, subs, mut top) = sets.remove(&(i as u8)).unwrap_or_default();
        top.sort_by_key(|t| std::cmp::Reverse((t["ports"].as_u64(), t["sessions"].as_u64())));
        top.truncate(NAT_TOP);
        let addresses: Vec<serde_json::Value> = addrs
            .iter()
            .map(|(a, t)| {
                serde_json::json!({
                    "address": Ipv4Addr::from(*a).to_string(),
                    "ports": t[0],
                    "ports_in_use": t[1],
                    "ports_cooling": t[2],
                    "blocks": t[3],
                    "blocks_in_use": t[4],
                })
            })
            .collect();
        list.push(serde_json::json!({
            "name": s.name,
            "mapping": match nat.mapping {
                tandem_control::config::Mapping::EndpointIndependent => "endpoint-independent",
                tandem_control::config::Mapping::AddressAndPortDependent => {
                    "address-and-port-dependent"
                }
            },
            // Under address-and-port-dependent mapping a pair serves one
            // session: its filtering is the same, whatever is set.
            "filtering": match (nat.mapping, nat.filtering) {
                (
                    tandem_control::config::Mapping::EndpointIndependent,
                    tandem_control::config::Filtering::EndpointIndependent,
                ) => "endpoint-independent",
                (
                    tandem_control::config::Mapping::EndpointIndependent,
                    tandem_control::config::Filtering::AddressDependent,
                ) => "address-dependent",
                _ => "address-and-port-dependent",
            },
            "static": nat.statics.iter().map(|x| serde_json::json!({
                "inside": x.inside.to_string(),
                "outside": x.outside.to_string(),
            })).collect::<Vec<_>>(),
            "forwards": nat.forwards.iter().map(|f| serde_json::json!({
                "protocol": f.protocol.0,
                "outside": f.outside.to_string(),
                "inside": f.inside.to_string(),
            })).collect::<Vec<_>>(),
            "block_size": nat.block_size,
            "blocks_per_subscriber": nat.blocks_per_subscriber,
            "sessions_per_subscriber": nat.sessions_per_subscriber,
            "subscriber_sessions_per_sec": nat.subscriber_sessions_per_sec,
            "port_reuse_delay_s": nat.port_reuse_delay_s,
            "subscribers": subs,
            "addresses": addresses,
            "top_subscribers": top,
        }));
    }
    let n = list.len();
    let line = serde_json::json!({ "service_sets": list });
    writeln!(out, "{line}").map_err(|e| format!("writing to the client: {e}"))?;
    Ok(n)
}

fn row(
    s: &Session,
    worker: usize,
    now: u32,
    names: &[String],
    timeouts: &Timeouts,
    ctx: &Ctx,
) -> Row {
    let dnat = s.nat().filter(|_| s.is_dnat());
    let nat = s.nat().filter(|_| !s.is_dnat());
    let (interface, direction) = match s.origin() {
        Origin::Inside => (&ctx.cfg.interfaces.inside, "I"),
        Origin::Outside => (&ctx.cfg.interfaces.outside, "O"),
    };
    let idle = now.saturating_sub(s.last_seen);
    Row {
        session_id: s.id,
        service_set: names
            .get(usize::from(s.service_set))
            .cloned()
            .unwrap_or_default(),
        protocol: s.key.proto,
        source: s.key.src_ip(),
        source_port: s.key.sport,
        destination: s.key.dst_ip(),
        destination_port: s.key.dport,
        nat_source: nat.map(|(a, _)| std::net::IpAddr::from(a)),
        nat_source_port: nat.map(|(_, p)| p),
        nat_destination: dnat.map(|(a, _)| std::net::IpAddr::from(a)),
        nat_destination_port: dnat.map(|(_, p)| p),
        state: format!("{:?}", s.action()),
        tcp_state: s.tcp_state().map(|t: TcpState| t.to_string()),
        direction: direction.into(),
        interface: interface.clone(),
        frames_initiator: s.packets[0],
        frames_responder: s.packets[1],
        bytes_initiator: s.bytes[0],
        bytes_responder: s.bytes[1],
        age_s: now.saturating_sub(s.created),
        idle_s: idle,
        timeout_s: timeout(timeouts, s).saturating_sub(idle),
        worker,
        offload: s.is_offloaded(),
    }
}

/// The finished probes numbered `from` on, one JSON line each, then
/// `end N` (N: the number to ask from next).
fn show_probes(from: Option<u64>, ctx: &Ctx, out: &mut impl Write) -> String {
    if ctx.ha.is_none() {
        return "error: no [redundancy] configured: nothing probes".to_owned();
    }
    let (rows, next) = {
        let log = ctx
            .node
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<ProbeRow> = log
            .records
            .iter()
            .filter(|(id, _, _)| from.is_none_or(|f| *id >= f))
            .map(|(id, name, r)| ProbeRow::new(*id, name, r))
            .collect();
        (rows, log.next)
    };
    for r in &rows {
        let Ok(line) = serde_json::to_string(r) else {
            continue;
        };
        if writeln!(out, "{line}").is_err() {
            return "error: writing to the client".to_owned();
        }
    }
    format!("end {next}")
}

/// Errors binding the control socket.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("instance already running: its control socket {0} answers")]
    InUse(std::path::PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the instance's control socket (0660, group `tandem` when it
/// exists), replacing a stale one left
/// by a dead daemon but refusing to steal a live one.
pub fn bind_control_socket(instance: &str) -> Result<UnixListener, CtlError> {
    use std::os::unix::{fs::PermissionsExt as _, net::UnixStream};
    let path = tandem_control::ctl::socket_path(instance);
    let io = |source| CtlError::Io {
        path: path.clone(),
        source,
    };
    if UnixStream::connect(&path).is_ok() {
        return Err(CtlError::InUse(path));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    // Group `tandem`'s members may use it (tandemctl, session listings).
    tandem_control::sys::share_with_group(&path).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    Ok(l)
}

/// Serves control requests until `stop`. One line in, one line out; a slow
/// or silent client is cut off after a second.
pub fn serve_control(l: &UnixListener, ctx: &Ctx) {
    while !ctx.stop.load(Ordering::Relaxed) {
        if !sys::poll_readable(&[l.as_raw_fd()], Duration::from_millis(200)) {
            continue;
        }
        let Ok((conn, _)) = l.accept() else { continue };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let read = BufReader::new((&conn).take(MAX_REQUEST as u64 + 1)).read_line(&mut line);
        let reply = match read {
            Err(e) => format!("error: reading request: {e}"),
            Ok(_) if line.len() > MAX_REQUEST => {
                format!("error: request longer than {MAX_REQUEST} bytes")
            }
            Ok(_) if !line.ends_with('\n') => "error: request must end with a newline".to_owned(),
            Ok(_) => match parse_request(&line) {
                Ok(Request::ClearStatistics) => {
                    ctx.segment.clear(stats::unix_ns());
                    tracing::info!("statistics cleared");
                    "ok".to_owned()
                }
                Ok(Request::Mastership { acquire, force }) => match &ctx.ha {
                    None => "error: no [redundancy] configured: roles are fixed".to_owned(),
                    Some(tx) => {
                        let (reply, answer) = mpsc::channel();
                        if tx
                            .send(MastershipRequest {
                                acquire,
                                force,
                                reply,
                            })
                            .is_err()
                        {
                            "error: the redundancy thread has stopped".to_owned()
                        } else {
                            answer
                                .recv_timeout(Duration::from_secs(2))
                                .unwrap_or_else(|_| {
                                    "error: no answer from the redundancy thread".to_owned()
                                })
                        }
                    }
                },
                Ok(Request::Resync) => match &ctx.sync {
                    None => "error: no [sync] configured: nothing to resync".to_owned(),
                    Some(tx) => {
                        let (reply, answer) = mpsc::channel();
                        if tx
                            .send(crate::sync::thread::ResyncRequest { reply })
                            .is_err()
                        {
                            "error: the sync thread has stopped".to_owned()
                        } else {
                            match answer.recv_timeout(Duration::from_secs(2)) {
                                Ok(Ok(m)) => format!("ok: {m}"),
                                Ok(Err(e)) => format!("error: {e}"),
                                Err(_) => "error: no answer from the sync thread".to_owned(),
                            }
                        }
                    }
                },
                Ok(Request::Reload) => match ctx.reload.reload() {
                    Ok(m) => format!("ok: {m}"),
                    Err(e) => format!("error: {e}"),
                },
                Ok(Request::Panic(t)) => {
                    if std::env::var_os("TANDEM_FAULT_INJECTION").is_none_or(|v| v != "1") {
                        "error: fault injection is off (start tandemd with TANDEM_FAULT_INJECTION=1)"
                            .to_owned()
                    } else {
                        tracing::warn!(thread = t.name(), "fault injected: panic");
                        ctx.node.fault.store(t as u8, Ordering::Relaxed);
                        // The control thread's own panic comes after its answer.
                        let _ = writeln!(&conn, "ok: the {} thread panics", t.name());
                        ctx.node.check_fault(tandem_control::ctl::Thread::Control);
                        continue;
                    }
                }
                Ok(Request::HangWorkers) => {
                    if std::env::var_os("TANDEM_FAULT_INJECTION").is_none_or(|v| v != "1") {
                        "error: fault injection is off (start tandemd with TANDEM_FAULT_INJECTION=1)"
                            .to_owned()
                    } else {
                        tracing::warn!("fault injected: the workers hang");
                        ctx.node.hang_workers.store(true, Ordering::Relaxed);
                        "ok: the workers hang".to_owned()
                    }
                }
                Ok(Request::ShowProbes { from }) => {
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    show_probes(from, ctx, &mut &conn)
                }
                Ok(Request::ClearSessions(q)) => match clear_sessions(&q, ctx) {
                    Ok(n) => format!("ok: {n} sessions cleared"),
                    Err(e) => format!("error: {e}"),
                },
                Ok(Request::ShowNat) => {
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    match show_nat(ctx, &mut &conn) {
                        Ok(sets) => format!("end {sets}"),
                        Err(e) => format!("error: {e}"),
                    }
                }
                Ok(Request::ShowSessions(q)) => {
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    match list_sessions(&q, ctx, &mut &conn) {
                        Ok(end) => end.to_string(),
                        Err(e) => format!("error: {e}"),
                    }
                }
                Err(e) => format!("error: {e}"),
            },
        };
        let _ = (&conn).write_all(format!("{reply}\n").as_bytes());
    }
}

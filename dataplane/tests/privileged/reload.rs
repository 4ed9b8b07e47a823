//! Live reload under traffic: `tandemctl reload` and SIGHUP apply rules,
//! timeouts and the log level without losing a session or an offload; a
//! file that changes what only a restart changes, or does not parse,
//! changes nothing.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, Daemon, SERVER, Topo},
    sessions::{POOL, open_connections, recording_echo_server, sessions_json},
};

const RULE: &str = "[[service_set.firewall.rules]]\nname = \"no-7201\"\nprotocol = \"tcp\"\n\
                    destination_ports = 7201\naction = \"reject\"\n";

/// Offloaded NAT services; `rules` go into the set, `extra` before it.
fn config(extra: &str, rules: &str) -> String {
    format!(
        "{BASE_CONFIG}{extra}[[service_set]]\nname = \"lab\"\noffload = true\n{rules}\
         [service_set.nat]\npool = [\"{POOL}\"]\nports = \"20000-29999\"\n"
    )
}

/// `tandemctl reload` against `d`: (exit code, stdout and stderr).
fn reload(d: &Daemon) -> Result<(i32, String), Failed> {
    let o = Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
        .args(["--instance", &d.instance, "reload"])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok((o.status.code().unwrap_or(-1), text))
}

/// Whether a new connection to the server's `port` opens (else it was
/// refused: a reset, the firewall's or the server's).
fn opens(topo: &Topo, port: u16) -> Result<bool, Failed> {
    let r = topo.client.enter(move || {
        TcpStream::connect_timeout(
            &format!("{SERVER}:{port}").parse().unwrap(),
            Duration::from_secs(2),
        )
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(false),
        Err(e) => Err(format!("connect to {port}: {e}").into()),
    }
}

/// The ids of the established TCP sessions on the fast path.
fn offloaded(d: &Daemon) -> Result<Vec<u64>, Failed> {
    let listed = sessions_json(d, &["protocol", "tcp"])?;
    let rows = listed["sessions"].as_array().ok_or("no sessions array")?;
    let mut ids: Vec<u64> = rows
        .iter()
        .filter(|r| r["offload"] == true && r["tcp_state"] == "ESTABLISHED")
        .filter_map(|r| r["session_id"].as_u64())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn reload_applies_rules_live_and_keeps_sessions() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start_logging(&topo.node, &config("", ""), None);
    let (_, held_srv) = recording_echo_server(&topo, 7200, 20);
    let (_, other_srv) = recording_echo_server(&topo, 7201, 20);
    let held = open_connections(&topo, 7200, 10)?;
    check(opens(&topo, 7201)?, "port 7201 refused before any rule")?;

    // Traffic on every held connection all along: an echo each 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let pumps: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let (stop, echoes) = (Arc::clone(&stop), Arc::clone(&echoes));
            thread::spawn(move || -> Result<(), String> {
                let mut back = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let msg = [i as u8; 64];
                    s.write_all(&msg).map_err(|e| format!("conn {i}: {e}"))?;
                    s.read_exact(&mut back)
                        .map_err(|e| format!("conn {i}: {e}"))?;
                    if back != msg {
                        return Err(format!("conn {i}: echo mismatch"));
                    }
                    echoes.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            })
        })
        .collect();
    // The held sessions reach the fast path.
    let until = Instant::now() + Duration::from_secs(5);
    while offloaded(&d)?.len() < 10 {
        check(
            Instant::now() < until,
            format!("not offloaded: {:?}", offloaded(&d)?),
        )?;
        thread::sleep(Duration::from_millis(100));
    }
    let fast = offloaded(&d)?;

    // A rule and a timeout, and the log at debug, by tandemctl.
    std::fs::write(
        d.config_path(),
        config(
            "[sessions.timeouts]\ntcp_established = 3600\n[log]\nlevel = \"debug\"\n",
            RULE,
        ),
    )?;
    let (code, text) = reload(&d)?;
    check(
        code == 0
            && text.contains("service_set[0].firewall")
            && text.contains("sessions.timeouts.tcp_established")
            && text.contains("log.level"),
        format!("reload: exit {code}: {text}"),
    )?;
    check(!opens(&topo, 7201)?, "the new rule does not reject 7201")?;
    check(opens(&topo, 7200)?, "7200 refused after the reload")?;
    check(
        d.log_text()
            .contains("every worker runs configuration generation 1"),
        format!("log.level debug not applied:\n{}", d.log_text()),
    )?;
    let listed = sessions_json(&d, &["protocol", "tcp", "destination-port", "7200"])?;
    let rows = listed["sessions"].as_array().ok_or("no sessions array")?;
    let established: Vec<_> = rows
        .iter()
        .filter(|r| r["tcp_state"] == "ESTABLISHED")
        .collect();
    check(
        established.len() == 10
            && established.iter().all(|r| {
                r["timeout_s"]
                    .as_u64()
                    .is_some_and(|t| t > 3000 && t <= 3600)
            }),
        format!("timeouts not the new 3600 s: {listed}"),
    )?;

    // What only a restart changes is refused by name; the rule stays.
    std::fs::write(
        d.config_path(),
        config("[sessions]\nper_worker = 1024\n", RULE).replace("in0", "in9"),
    )?;
    let (code, text) = reload(&d)?;
    check(
        code == 1 && text.contains("interfaces.inside") && text.contains("sessions.per_worker"),
        format!("fixed keys: exit {code}: {text}"),
    )?;
    // A file that does not parse changes nothing either.
    std::fs::write(d.config_path(), "[interfaces\ninside = ")?;
    let (code, text) = reload(&d)?;
    check(
        code == 1 && text.contains("the running configuration stays"),
        format!("broken file: exit {code}: {text}"),
    )?;
    check(!opens(&topo, 7201)?, "the rule went with a refused reload")?;

    // SIGHUP, as `kill -HUP` would: the rule goes again.
    std::fs::write(d.config_path(), config("", ""))?;
    let hups = d.log_text().matches("reload: reloaded").count();
    // SAFETY: kill(2) on our own child's pid.
    let hup = unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    check(hup == 0, "kill -HUP")?;
    let until = Instant::now() + Duration::from_secs(5);
    while d.log_text().matches("reload: reloaded").count() == hups {
        check(
            Instant::now() < until,
            format!("no reload on SIGHUP:\n{}", d.log_text()),
        )?;
        thread::sleep(Duration::from_millis(50));
    }
    check(d.exited().is_none(), "SIGHUP ended tandemd")?;
    check(
        opens(&topo, 7201)?,
        "7201 still refused after the SIGHUP reload",
    )?;

    let before = echoes.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(300));
    // Still offloaded, none taken back, while the connections live.
    let now = offloaded(&d)?;
    check(
        now == fast,
        format!("offloaded sessions {fast:?} before the reloads, {now:?} after"),
    )?;
    stop.store(true, Ordering::Relaxed);
    for p in pumps {
        p.join().map_err(|_| "pump thread")??;
    }
    check(
        echoes.load(Ordering::Relaxed) > before,
        "the held connections stopped echoing",
    )?;
    let c = d.stop();
    // The two connections the rule refused, by a reset of tandem's own.
    check(
        c.get("worker.rejects_sent") == 2,
        format!("rejects sent: {}", c.get("worker.rejects_sent")),
    )?;
    drop((held_srv, other_srv));
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[(
    "reload_applies_rules_live_and_keeps_sessions",
    reload_applies_rules_live_and_keeps_sessions,
)];

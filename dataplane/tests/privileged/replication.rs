//! Session replication between two tandemd nodes over a real TCP sync
//! link: node A forwards client <-> server with NAPT44 and replicates;
//! node B (not forwarding) installs A's sessions.

use std::{
    collections::BTreeSet,
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, Daemon, Ns, Topo, ipw, sh},
    sessions::{POOL, open_connections, recording_echo_server, sessions_json},
};

const KEY: &str = "replication-test-shared-key";

/// The lab's services with replication, short TCP close timeouts (so
/// deletes follow closes within seconds) and a fast keepalive.
fn config(node: &str, role: &str, local: &str, peer: &str, id: u32) -> String {
    let forward = if role == "active" { "true" } else { "false" };
    format!(
        "{BASE_CONFIG}[node]\nforward = {forward}\n\
         [sessions]\n[sessions.timeouts]\ntcp_closing = 1\ntcp_time_wait = 1\n\
         [sync]\nlocal = \"{local}\"\npeer = \"{peer}\"\nrole = \"{role}\"\nnode_id = {id}\n\
         key = \"{KEY}\"\nkeepalive_ms = 100\n\
         # node {node}\n\
         [[service_set]]\nname = \"lab\"\n[service_set.nat]\npool = [\"{POOL}\"]\n\
         ports = \"20000-29999\"\n"
    )
}

/// Topo (client, A, server) plus node B, whose in0/out0 lead to a stub
/// namespace, and the sync link A sync0 198.18.9.1 <-> B sync0 198.18.9.2.
struct Pair {
    topo: Topo,
    b: Ns,
    _stub: Ns,
}

impl Pair {
    fn new() -> Self {
        let topo = Topo::new();
        let b = Ns::new("b");
        let stub = Ns::new("x");
        let (a, bn, x) = (&topo.node.name, &b.name, &stub.name);
        for (dev, peer) in [("in0", "xi"), ("out0", "xo")] {
            ipw(&format!(
                "link add {dev} netns {bn} numrxqueues 2 numtxqueues 2 type veth \
                 peer name {peer} netns {x} numrxqueues 2 numtxqueues 2"
            ));
            ipw(&format!("-n {bn} link set {dev} up"));
            ipw(&format!("-n {x} link set {peer} up"));
            // B's fast path redirects into the stub once it is MASTER.
            sh(stub.cmd("ethtool").args(["-K", peer, "gro", "on"]));
        }
        ipw(&format!(
            "link add sync0 netns {a} type veth peer name sync0 netns {bn}"
        ));
        for cmd in [
            format!("-n {bn} addr add 198.18.1.3/24 dev in0"),
            format!("-n {bn} addr add 198.18.2.3/24 dev out0"),
            format!("-n {a} addr add 198.18.9.1/30 dev sync0"),
            format!("-n {bn} addr add 198.18.9.2/30 dev sync0"),
            format!("-n {a} link set sync0 up"),
            format!("-n {bn} link set sync0 up"),
        ] {
            ipw(&cmd);
        }
        b.sysctl("net.ipv4.ip_forward=0");
        Self {
            topo,
            b,
            _stub: stub,
        }
    }

    fn start_a(&self) -> Daemon {
        Daemon::start(
            &self.topo.node,
            &config("a", "active", "198.18.9.1", "198.18.9.2", 1),
        )
    }

    fn start_b(&self) -> Daemon {
        Daemon::start(
            &self.b,
            &config("b", "backup", "198.18.9.2", "198.18.9.1", 2),
        )
    }
}

/// The replicated content of every session: identity, flows, NAT binding,
/// action, TCP state, direction (not frame counts: those are per node).
fn content(d: &Daemon) -> Result<BTreeSet<String>, Failed> {
    let v = sessions_json(d, &["extensive"])?;
    let rows = v["sessions"].as_array().ok_or("no sessions array")?;
    Ok(rows
        .iter()
        .map(|r| {
            [
                "session_id",
                "service_set",
                "protocol",
                "source",
                "source_port",
                "destination",
                "destination_port",
                "nat_source",
                "nat_source_port",
                "state",
                "tcp_state",
                "direction",
            ]
            .iter()
            .map(|k| r[*k].to_string())
            .collect::<Vec<_>>()
            .join(" ")
        })
        .collect())
}

pub fn count(d: &Daemon) -> Result<u64, Failed> {
    let v = sessions_json(d, &["count"])?;
    Ok(v["count"].as_u64().ok_or(format!("count: {v}"))?)
}

/// Waits (bounded) until B holds exactly A's sessions, `want` of them.
fn converge(a: &Daemon, b: &Daemon, want: u64, what: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ca, cb) = (content(a)?, content(b)?);
        if ca.len() as u64 == want && ca == cb {
            return Ok(());
        }
        if Instant::now() > deadline {
            let only_a: Vec<_> = ca.difference(&cb).take(3).collect();
            let only_b: Vec<_> = cb.difference(&ca).take(3).collect();
            return Err(format!(
                "{what}: A holds {} sessions (want {want}), B {}; only on A: {only_a:?}; \
                 only on B: {only_b:?}\nB's log:\n{}",
                ca.len(),
                cb.len(),
                b.log_text()
            )
            .into());
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Closes connections and checks the rest still echo.
fn echo_all(conns: &mut [TcpStream]) -> Result<(), Failed> {
    use std::io::{Read as _, Write as _};
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&[i as u8; 64])?;
        let mut back = [0u8; 64];
        s.read_exact(&mut back)?;
    }
    Ok(())
}

fn ha(d: &Daemon) -> Result<serde_json::Value, Failed> {
    let o = netns::tandemstat(&d.instance)
        .args(["ha", "--json"])
        .output()?;
    check(
        o.status.success(),
        format!("tandemstat ha: {}", String::from_utf8_lossy(&o.stderr)),
    )?;
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// Waits (bounded) until `f` holds on `d`'s `ha --json`.
pub fn wait_ha(
    d: &Daemon,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = ha(d)?;
        if f(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {v}").into());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn sessions_replicate_and_survive_restart_and_link_cut() -> Result<(), Failed> {
    let pair = Pair::new();
    let a = pair.start_a();
    let mut b = pair.start_b();
    wait_ha(&b, "B up and hot", |v| {
        v["connection"] == "up" && v["synchronization"] == "hot"
    })?;

    let (_peers, _server) = recording_echo_server(&pair.topo, 7500, 300);
    let mut conns = open_connections(&pair.topo, 7500, 200)?;
    converge(&a, &b, 200, "200 live connections")?;
    // The counters are published every 100 ms: wait for them.
    wait_ha(&a, "A's view of 200 adds", |v| {
        v["role"] == "active"
            && v["interface"] == "sync0"
            && v["local_address"] == "198.18.9.1"
            && v["add_sent"].as_u64() >= Some(200)
            && v["add_completed"].as_u64() >= Some(200)
            && v["auth_failures"] == 0
    })?;
    wait_ha(&b, "B's view of 200 adds", |v| {
        v["role"] == "backup" && v["add_completed"].as_u64() >= Some(200)
    })?;
    // An operator clears one session on A: B deletes it too. (Its
    // connection is among the 50 closed next.)
    let port = conns[199].local_addr()?.port().to_string();
    let o = std::process::Command::new(crate::netns::tandemstat_path().with_file_name("tandemctl"))
        .args([
            "--instance",
            &a.instance,
            "clear",
            "sessions",
            "source-port",
            &port,
        ])
        .output()?;
    check(
        String::from_utf8_lossy(&o.stdout).trim() == "ok: 1 sessions cleared",
        format!("clear sessions on A: {o:?}"),
    )?;
    converge(&a, &b, 199, "one session cleared on A")?;

    // Closed connections are deleted on A once they age out (1 s), and B
    // follows.
    conns.truncate(150);
    converge(&a, &b, 150, "50 connections closed")?;
    wait_ha(&b, "B's view of 50 deletes", |v| {
        v["delete_completed"].as_u64() >= Some(50) && v["delete_received"].as_u64() >= Some(50)
    })?;

    // B restarted while the connections carry traffic: it cold-syncs back
    // to A's sessions.
    b.stop();
    echo_all(&mut conns)?;
    let b = pair.start_b();
    echo_all(&mut conns)?;
    converge(&a, &b, 150, "B restarted")?;
    wait_ha(&b, "B hot after its restart", |v| {
        v["synchronization"] == "hot"
            && v["cold_sync_completed_count"].as_u64() >= Some(1)
            && v["sync_start_sent"].as_u64() >= Some(1)
    })?;
    wait_ha(&a, "A served a second cold sync", |v| {
        v["sync_start_received"].as_u64() >= Some(2)
    })?;

    // The sync link cut: B misses 50 closes and 30 new connections...
    ipw(&format!("-n {} link set sync0 down", pair.topo.node.name));
    wait_ha(&b, "B sees the link down", |v| v["connection"] == "down")?;
    conns.truncate(100);
    conns.extend(open_connections(&pair.topo, 7500, 30)?);
    let cut = Instant::now() + Duration::from_secs(3);
    while count(&a)? != 130 && Instant::now() < cut {
        thread::sleep(Duration::from_millis(200));
    }
    check(
        count(&b)? == 150,
        "B keeps its sessions while the link is down",
    )?;
    // ...and catches up when it is restored, with nothing done by hand.
    ipw(&format!("-n {} link set sync0 up", pair.topo.node.name));
    converge(&a, &b, 130, "link restored")?;
    // The listing is live, the counters reach the segment every 100 ms:
    // wait for them rather than read them once.
    wait_ha(&b, "B after the link came back", |v| {
        v["cold_sync_completed_count"].as_u64() >= Some(2)
            && v["sessions_swept"].as_u64() >= Some(50)
    })?;
    echo_all(&mut conns)?;
    Ok(())
}

fn a_wrong_key_is_refused_and_counted() -> Result<(), Failed> {
    let pair = Pair::new();
    let a = pair.start_a();
    // B with another key: its hello fails authentication, nothing syncs.
    let bad =
        config("b", "backup", "198.18.9.2", "198.18.9.1", 2).replace(KEY, "some-other-shared-key");
    let mut b = Daemon::start(&pair.b, &bad);
    let v = wait_ha(&a, "A counts B's failed authentications", |v| {
        v["auth_failures"].as_u64() >= Some(1)
    })?;
    // TCP connects, but no hello is accepted: never up, never synchronized.
    check(
        v["connection"] == "down" && v["synchronization"] == "off" && v["sync_start_received"] == 0,
        format!("A: {v}"),
    )?;
    check(ha(&b)?["synchronization"] == "off", "B never synchronized")?;
    // With the right key the same pair comes up.
    b.stop();
    let b = pair.start_b();
    wait_ha(&b, "B hot with the right key", |v| {
        v["synchronization"] == "hot"
    })?;
    Ok(())
}

/// Replication under overload: A's side of the sync link throttled to
/// 2 Mbit/s by tbf while 160,000 new UDP sessions arrive as fast as the
/// client sends them. Events overflow the workers' rings (counted), the
/// sessions are marked and repair sends them again; once the load stops
/// and the link is whole again, both nodes' digests agree and B holds
/// exactly A's sessions, with nothing done by hand. Then an operator's
/// resync on B changes nothing and is counted on both sides.
fn an_overloaded_sync_link_converges_by_repair() -> Result<(), Failed> {
    fn cfg(node: &str, role: &str, local: &str, peer: &str, id: u32) -> String {
        config(node, role, local, peer, id)
            .replace(
                "keepalive_ms = 100\n",
                "keepalive_ms = 100\nmax_backlog_kib = 128\n",
            )
            .replace("[sessions]\n", "[sessions]\nper_worker = 200000\n")
            .replace("[sessions.timeouts]\n", "[sessions.timeouts]\nudp = 600\n")
            // A firewall without NAT: the pool's ports do not bound the
            // number of sessions.
            .replace(
                &format!("[service_set.nat]\npool = [\"{POOL}\"]\nports = \"20000-29999\"\n"),
                "",
            )
    }
    let pair = Pair::new();
    let a = Daemon::start(
        &pair.topo.node,
        &cfg("a", "active", "198.18.9.1", "198.18.9.2", 1),
    );
    let b = Daemon::start(&pair.b, &cfg("b", "backup", "198.18.9.2", "198.18.9.1", 2));
    wait_ha(&b, "B hot", |v| v["synchronization"] == "hot")?;
    let node = &pair.topo.node;
    let tbf = |verb: &str| {
        let mut c = node.cmd("tc");
        c.args(["qdisc", verb, "dev", "sync0", "root"]);
        if verb == "add" {
            c.args(["tbf", "rate", "2mbit", "burst", "16kb", "latency", "100ms"]);
        }
        sh(&mut c)
    };
    tbf("add");
    let socks: Vec<std::net::UdpSocket> = (0..4)
        .map(|_| {
            pair.topo
                .client
                .enter(|| std::net::UdpSocket::bind((netns::CLIENT, 0)).expect("bind"))
        })
        .collect();
    let load = Instant::now();
    for port in 1..=40_000u16 {
        for s in &socks {
            let _ = s.send_to(b"x", (netns::SERVER, port));
        }
    }
    let sent = load.elapsed();
    thread::sleep(Duration::from_millis(500));
    let v = ha(&a)?;
    check(
        v["send_overflow"].as_u64() > Some(0),
        format!("the load overflowed the rings: {v}"),
    )?;
    let created = a.counter("worker.sessions_created");
    tbf("del");
    let healed = Instant::now();
    let agree = |d: &Daemon| -> Result<bool, Failed> {
        let v = ha(d)?;
        Ok(v["digest_match"] == true && v["digest_sessions"].as_u64() >= Some(created / 2))
    };
    let deadline = healed + Duration::from_secs(20);
    while !(agree(&a)? && agree(&b)?) {
        if Instant::now() > deadline {
            return Err(format!(
                "no agreement 20 s after the load: A {}\nB {}",
                ha(&a)?,
                ha(&b)?
            )
            .into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let took = healed.elapsed();
    let (va, vb) = (ha(&a)?, ha(&b)?);
    eprintln!(
        "overload: {created} sessions created in {sent:?}; overflow {}, repaired {}, \
         batch refusals {}, resyncs {}; digests agree {took:?} after the link healed",
        va["send_overflow"], va["repair_sent"], va["batch_begin_failures"], vb["resync_requested"]
    );
    let resyncs = vb["resync_requested"].as_u64().unwrap_or(0);
    check(
        va["repair_sent"].as_u64() > Some(0)
            && va["digest_hash"] == vb["digest_hash"]
            && va["digest_sessions"] == vb["digest_sessions"],
        format!("repaired: A {va}\nB {vb}"),
    )?;
    check(
        count(&a)? == count(&b)? && count(&a)? == created,
        format!("A {} B {} created {created}", count(&a)?, count(&b)?),
    )?;
    // The listing, independent of the digest: the same sessions.
    check(content(&a)? == content(&b)?, "B holds exactly A's sessions")?;
    // An operator's resync: nothing to repair, both sides count it.
    let o = std::process::Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
        .args(["--instance", &b.instance, "request", "resync"])
        .output()?;
    check(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("resync requested"),
        format!("resync on B: {o:?}"),
    )?;
    let o = std::process::Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
        .args(["--instance", &a.instance, "request", "resync"])
        .output()?;
    check(
        o.status.code() == Some(1) && String::from_utf8_lossy(&o.stderr).contains("standby"),
        format!("resync on the active A: {o:?}"),
    )?;
    wait_ha(&a, "A walked for the resync", |v| {
        v["resync_received"].as_u64() >= Some(resyncs + 1) && v["digest_match"] == true
    })?;
    // Under the small backlog limit the resync's records may be refused
    // and repaired: bounded, but not within wait_ha's 10 s.
    wait_ha(&b, "B resynced", |v| {
        v["cold_sync_completed_count"].as_u64() >= Some(resyncs + 2)
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ha(&b)?["digest_match"] != true && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    wait_ha(&b, "B resynced and agrees", |v| {
        v["resync_requested"].as_u64() >= Some(resyncs + 1)
            && v["cold_sync_completed_count"].as_u64() >= Some(resyncs + 2)
            && v["digest_match"] == true
            && v["synchronization"] == "hot"
    })?;
    check(count(&b)? == created, "the resync kept every session")?;
    Ok(())
}

/// A standby too small for the master's sessions (`sessions.per_worker`
/// may differ between the nodes): B refuses what does not fit, repair
/// and automatic resyncs cannot help, and after 10 s the replicated sets
/// are reported diverged, in `ha --json` and as a warning in the text
/// view. Once the master's sessions fit again an operator's resync makes
/// the standby whole and the warning goes.
fn a_standby_too_small_is_reported_diverged() -> Result<(), Failed> {
    let pair = Pair::new();
    let a = pair.start_a();
    let small = config("b", "backup", "198.18.9.2", "198.18.9.1", 2)
        .replace("[sessions]\n", "[sessions]\nper_worker = 16\n");
    let b = Daemon::start(&pair.b, &small);
    wait_ha(&b, "B up and hot", |v| v["synchronization"] == "hot")?;
    let (_peers, _server) = recording_echo_server(&pair.topo, 7700, 100);
    let mut conns = open_connections(&pair.topo, 7700, 80)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut v = ha(&b)?;
    while v["diverged"] != true && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        v = ha(&b)?;
    }
    check(
        v["diverged"] == true
            && v["digest_match"] == false
            && v["digest_differs_ms"].as_u64() >= Some(10_000)
            && v["install_failures"].as_u64() > Some(0)
            && v["digest_sessions"].as_u64() < Some(80),
        format!("B diverged within 30 s: {v}"),
    )?;
    let o = netns::tandemstat(&b.instance).args(["ha"]).output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    check(
        text.contains("Warning: the replicated sets have differed for")
            && text.contains("Digests agree:")
            && text.contains("with the active steady"),
        format!("the text view warns:\n{text}"),
    )?;
    // Down to 10 connections, which fit; the closed ones age out on A
    // (1 s) and their deletes reach B.
    conns.truncate(10);
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(&a)? != 10 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    check(count(&a)? == 10, "A down to 10 sessions")?;
    let o = std::process::Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
        .args(["--instance", &b.instance, "request", "resync"])
        .output()?;
    check(o.status.success(), format!("resync on B: {o:?}"))?;
    converge(&a, &b, 10, "B resynced with room")?;
    wait_ha(&b, "B whole: digests agree, not diverged", |v| {
        v["digest_match"] == true && v["diverged"] == false && v["digest_differs_ms"] == 0
    })?;
    echo_all(&mut conns)?;
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "a_standby_too_small_is_reported_diverged",
        a_standby_too_small_is_reported_diverged,
    ),
    (
        "an_overloaded_sync_link_converges_by_repair",
        an_overloaded_sync_link_converges_by_repair,
    ),
    (
        "sessions_replicate_and_survive_restart_and_link_cut",
        sessions_replicate_and_survive_restart_and_link_cut,
    ),
    (
        "a_wrong_key_is_refused_and_counted",
        a_wrong_key_is_refused_and_counted,
    ),
];

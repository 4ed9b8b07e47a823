//! Sessions, the stateful firewall and NAPT44 on the real packet path.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, CLIENT, Daemon, SERVER, Topo, ipw, sh},
    traffic::{ping, send_frames},
};

pub const POOL: &str = "198.18.2.100";

/// The lab's services: default firewall, NAPT44 to 198.18.2.100.
pub fn nat_config(extra: &str) -> String {
    format!(
        "{BASE_CONFIG}{extra}[[service_set]]\nname = \"lab\"\n\
         [service_set.nat]\npool = [\"{POOL}\"]\nports = \"20000-29999\"\n"
    )
}

/// A TCP echo server that records the address of every peer it accepts.
pub fn recording_echo_server(
    topo: &Topo,
    port: u16,
    conns: usize,
) -> (Arc<Mutex<Vec<SocketAddr>>>, thread::JoinHandle<()>) {
    echo_server_at(topo, SERVER, port, conns)
}

/// [`recording_echo_server`] on the server's IPv6 address.
pub fn recording_echo_server6(
    topo: &Topo,
    port: u16,
    conns: usize,
) -> (Arc<Mutex<Vec<SocketAddr>>>, thread::JoinHandle<()>) {
    echo_server_at(topo, netns::SERVER6, port, conns)
}

fn echo_server_at(
    topo: &Topo,
    addr: &'static str,
    port: u16,
    conns: usize,
) -> (Arc<Mutex<Vec<SocketAddr>>>, thread::JoinHandle<()>) {
    let l = topo
        .server
        .enter(move || TcpListener::bind((addr, port)).expect("bind"));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    let h = thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, peer)) = l.accept() else { break };
            seen.lock().unwrap().push(peer);
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (peers, h)
}

fn napt44_translates_and_the_firewall_holds() -> Result<(), Failed> {
    let topo = Topo::new();
    // As an earlier tandemd left it: the kernel holding the pool address.
    ipw(&format!(
        "-n {} addr add {POOL}/32 dev out0",
        topo.node.name
    ));
    let mut d = Daemon::start(&topo.node, &nat_config(""));
    let held = sh(topo
        .node
        .cmd("ip")
        .args(["-4", "addr", "show", "dev", "out0"]));
    check(
        !held.contains(&format!("{POOL}/32")),
        format!("the kernel still holds the pool address:\n{held}"),
    )?;

    let (peers, server) = recording_echo_server(&topo, 7100, 20);
    let conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            topo.client.enter(|| {
                TcpStream::connect_timeout(
                    &format!("{SERVER}:7100").parse().unwrap(),
                    Duration::from_secs(3),
                )
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("connect through NAT: {e}"))?;
    for (i, mut s) in conns.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let msg = [i as u8; 1200];
        s.write_all(&msg)?;
        let mut back = [0u8; 1200];
        s.read_exact(&mut back)?;
        check(back == msg, "echo through NAT mismatched")?;
    }
    server.join().map_err(|_| "server thread")?;
    let peers = peers.lock().unwrap().clone();
    check(
        peers.len() == 20,
        format!("server saw {} peers", peers.len()),
    )?;
    for p in &peers {
        check(
            p.ip().to_string() == POOL,
            format!("server saw {p}, not the pool address"),
        )?;
    }

    // UDP and ICMP echo are translated too.
    let srv = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 7101)).expect("bind"));
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    cli.set_read_timeout(Some(Duration::from_secs(2)))?;
    srv.set_read_timeout(Some(Duration::from_secs(2)))?;
    cli.send_to(b"hello", (SERVER, 7101))?;
    let mut buf = [0u8; 64];
    let (n, from) = srv.recv_from(&mut buf)?;
    check(from.ip().to_string() == POOL, format!("UDP from {from}"))?;
    srv.send_to(&buf[..n], from)?;
    let (n, _) = cli.recv_from(&mut buf)?;
    check(&buf[..n] == b"hello", "UDP echo through NAT")?;
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("ping through NAT:\n{out}"))?;

    // The outside may not open connections to the inside...
    let inside = topo
        .client
        .enter(|| TcpListener::bind((CLIENT, 7102)).expect("bind"));
    inside.set_nonblocking(true)?;
    let r = topo.server.enter(|| {
        TcpStream::connect_timeout(
            &format!("{CLIENT}:7102").parse().unwrap(),
            Duration::from_secs(1),
        )
    });
    check(r.is_err(), "an unsolicited connection got in")?;
    check(
        inside.accept().is_err(),
        "the inside listener saw a connection",
    )?;
    // ...nor reach the kernel through the pool address: no RST, just silence.
    let r = topo.server.enter(|| {
        TcpStream::connect_timeout(
            &format!("{POOL}:20001").parse().unwrap(),
            Duration::from_secs(1),
        )
    });
    match r {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => return Err(format!("connect to the pool address: {other:?}").into()),
    }

    let c = d.stop();
    check(
        c.get("worker.sessions_created") >= 22,
        format!("sessions created: {}", c.get("worker.sessions_created")),
    )?;
    check(
        c.get("drop.policy") >= 1,
        "unsolicited SYNs counted as policy",
    )?;
    check(
        c.get("drop.no_session") >= 1,
        "SYNs to the pool counted as no_session",
    )?;
    check(
        c.get("xdp.pass_local") == 0,
        "traffic to the pool address reached the kernel",
    )?;
    // The server found the pool address's MAC through the program.
    check(
        c.get("xdp.arp_replied") >= 1,
        format!(
            "ARP for the pool answered {} times",
            c.get("xdp.arp_replied")
        ),
    )?;
    // Two workers: the translated replies of half the flows land on the
    // other worker's queue and are handed over.
    check(
        c.sum_prefix("handoff.") >= 1
            && c.get("worker.handoffs_received") == c.sum_prefix("handoff."),
        format!("handoffs: {c:?}"),
    )?;
    Ok(())
}

fn idle_sessions_age_out() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(
        &topo.node,
        &nat_config("[sessions]\n[sessions.timeouts]\nudp = 2\n"),
    );
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    for p in 0..5u16 {
        cli.send_to(b"x", (SERVER, 7200 + p))?;
    }
    thread::sleep(Duration::from_millis(500));
    let created = d.counter("worker.sessions_created");
    check(created == 5, format!("5 sessions, got {created}"))?;
    thread::sleep(Duration::from_secs(4));
    let c = d.stop();
    check(
        c.get("worker.sessions_deleted") == 5,
        format!("deleted: {}", c.get("worker.sessions_deleted")),
    )?;
    Ok(())
}

/// `tandemstat --instance I sessions WORDS --json`, parsed.
pub fn sessions_json(d: &Daemon, words: &[&str]) -> Result<serde_json::Value, String> {
    let o = netns::tandemstat(&d.instance)
        .arg("sessions")
        .args(words)
        .arg("--json")
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Opens `n` connections from the client to the server's echo port and
/// checks each echoes once; they stay open while the returned streams live.
pub fn open_connections(topo: &Topo, port: u16, n: usize) -> Result<Vec<TcpStream>, Failed> {
    open_connections_from(topo, CLIENT, port, n)
}

/// [`open_connections`] from the client's address `from`.
pub fn open_connections_from(
    topo: &Topo,
    from: &'static str,
    port: u16,
    n: usize,
) -> Result<Vec<TcpStream>, Failed> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut s = topo
            .client
            .enter(move || {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())?;
                s.connect_timeout(
                    &format!("{SERVER}:{port}")
                        .parse::<SocketAddr>()
                        .unwrap()
                        .into(),
                    Duration::from_secs(3),
                )?;
                Ok::<TcpStream, std::io::Error>(s.into())
            })
            .map_err(|e| format!("connection {i}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(&[i as u8; 100])?;
        let mut back = [0u8; 100];
        s.read_exact(&mut back)?;
        conns.push(s);
    }
    Ok(conns)
}

fn sixty_connections_are_sixty_sessions() -> Result<(), Failed> {
    let topo = Topo::new();
    let daemon = Daemon::start(&topo.node, &nat_config(""));
    let (_peers, _server) = recording_echo_server(&topo, 7300, 60);
    let conns = open_connections(&topo, 7300, 60)?;
    let web = ["protocol", "tcp", "destination-port", "7300"];

    let v = sessions_json(&daemon, &[&["count"][..], &web[..]].concat())?;
    check(v["count"] == 60, format!("count: {v}"))?;
    check(v["service_sets"]["lab"] == 60, format!("per set: {v}"))?;

    let v = sessions_json(&daemon, &[&web[..], &["terse", "limit", "5"][..]].concat())?;
    check(
        v["sessions"].as_array().map(Vec::len) == Some(5) && v["matched"] == 60,
        format!("limit 5: {v}"),
    )?;

    let port = conns[7].local_addr()?.port().to_string();
    let v = sessions_json(&daemon, &["extensive", "source-port", &port])?;
    let rows = v["sessions"].as_array().ok_or("no sessions array")?;
    check(rows.len() == 1, format!("source-port {port}: {v}"))?;
    let r = &rows[0];
    check(r["nat_source"] == POOL, format!("NAT source: {r}"))?;
    check(r["tcp_state"] == "ESTABLISHED", format!("state: {r}"))?;
    check(
        r["direction"] == "I" && r["interface"] == "in0",
        format!("{r}"),
    )?;
    check(
        r["frames_initiator"].as_u64() >= Some(3) && r["frames_responder"].as_u64() >= Some(2),
        format!("frame counts: {r}"),
    )?;

    for (words, want) in [
        (vec!["count", "interface", "out0"], 0),
        (vec!["count", "source-prefix", "198.18.1.0/24"], 60),
        (vec!["count", "destination-prefix", "198.18.3.0/24"], 0),
        (vec!["count", "protocol", "udp"], 0),
        (vec!["count", "service-set", "lab"], 60),
    ] {
        let v = sessions_json(&daemon, &words)?;
        check(v["count"] == want, format!("{words:?}: {v}"))?;
    }
    let e = sessions_json(&daemon, &["count", "service-set", "nope"]).unwrap_err();
    check(e.contains("unknown service set `nope`"), e.clone())?;

    // The capacity and pool gauges (taken once a second): 60 bindings of
    // the pool's 10,000 pairs (one address, ports 20000-29999, split over
    // the workers), in tables of non-zero capacity.
    let sum = |fam: &str| -> Option<u64> {
        let path = tandem_control::stats::segment_path(&daemon.instance);
        let r = tandem_control::stats::SegmentReader::open(&path).ok()?;
        let v: Vec<u64> = r
            .entries
            .iter()
            .filter(|e| e.name == fam)
            .map(|e| r.value(e.slot))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while sum("tandem_nat_ports_in_use") != Some(60) && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(100));
    }
    check(
        sum("tandem_nat_ports_in_use") == Some(60) && sum("tandem_nat_ports") == Some(10_000),
        format!(
            "NAT pairs in use {:?} of {:?}",
            sum("tandem_nat_ports_in_use"),
            sum("tandem_nat_ports")
        ),
    )?;
    check(
        sum("tandem_sessions_capacity") > Some(60),
        format!("table capacity {:?}", sum("tandem_sessions_capacity")),
    )?;

    let o = netns::tandemstat(&daemon.instance)
        .args(["sessions", "brief", "limit", "1"])
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    check(
        text.contains("Service Set: lab, Session: ")
            && text.contains("NAT source")
            && text.contains(&format!("{POOL}:"))
            && text.contains("(1 of 60 sessions shown)"),
        format!("brief text:\n{text}"),
    )?;
    // tandemctl clear sessions: by filter, then all; NAT bindings go too.
    let clear = |words: &[&str]| -> Result<String, Failed> {
        let o = std::process::Command::new(netns::tandemstat_path().with_file_name("tandemctl"))
            .args(["--instance", &daemon.instance, "clear", "sessions"])
            .args(words)
            .output()?;
        check(
            o.status.success(),
            format!("clear sessions {words:?}: {o:?}"),
        )?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let port = conns[3].local_addr()?.port().to_string();
    let said = clear(&["protocol", "tcp", "source-port", &port])?;
    check(said == "ok: 1 sessions cleared", said)?;
    let v = sessions_json(&daemon, &["count"])?;
    check(v["count"] == 59, format!("after one cleared: {v}"))?;
    let said = clear(&["protocol", "udp"])?;
    check(said == "ok: 0 sessions cleared", said)?;
    let deleted = daemon.counter("worker.sessions_deleted");
    let said = clear(&[])?;
    check(said == "ok: 59 sessions cleared", said)?;
    let v = sessions_json(&daemon, &["count"])?;
    check(v["count"] == 0, format!("after all cleared: {v}"))?;
    check(
        daemon.counter("worker.sessions_deleted") == deleted + 59,
        "the cleared sessions count as deleted",
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while sum("tandem_nat_ports_in_use") != Some(0) && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(100));
    }
    check(
        sum("tandem_nat_ports_in_use") == Some(0),
        format!(
            "NAT pairs in use after the clear: {:?}",
            sum("tandem_nat_ports_in_use")
        ),
    )?;
    // ...and wait out the reuse delay (120 s) before a new mapping may
    // take them: 60 cooling, none free yet of those.
    check(
        sum("tandem_nat_ports_cooling") == Some(60),
        format!(
            "NAT pairs cooling after the clear: {:?}",
            sum("tandem_nat_ports_cooling")
        ),
    )?;
    drop(conns);
    Ok(())
}

/// A SYN from `sport` to the server, as the client (`macs`: its own, the
/// node's) would send it.
fn syn_frame(macs: ([u8; 6], [u8; 6]), sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
        .tcp(sport, 7400, 1, 1000)
        .syn()
        .write(&mut f, &[])
        .expect("build SYN");
    f
}

fn syn_flood_beyond_capacity_leaves_room_for_new_users() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, &nat_config("[sessions]\nper_worker = 64\n"));
    let (_peers, _server) = recording_echo_server(&topo, 7400, 10);
    let mut conns = open_connections(&topo, 7400, 10)?;
    // 2000 SYNs from ports the client's kernel does not use.
    let macs = (topo.client.mac("c0"), topo.node.mac("in0"));
    let flood: Vec<Vec<u8>> = (0..2000u16).map(|i| syn_frame(macs, 50000 + i)).collect();
    send_frames(&topo.client, "c0", flood);
    thread::sleep(Duration::from_millis(300));
    let v = sessions_json(&d, &["count"])?;
    check(
        v["count"].as_u64() <= Some(128),
        format!("over capacity: {v}"),
    )?;
    // The established connections are undisturbed...
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&[i as u8; 100])?;
        let mut back = [0u8; 100];
        s.read_exact(&mut back)
            .map_err(|e| format!("connection {i} after the flood: {e}"))?;
    }
    // ...and new users (another inside host: the flooding one is held to
    // its own limits) get in at once: the flood's sessions (reset by the
    // client's kernel, or never answered) make room (early drop), where
    // they used to hold the table for their timeout.
    ipw(&format!(
        "-n {} addr add 198.18.1.11/24 dev c0",
        topo.client.name
    ));
    let (_peers2, _server2) = recording_echo_server(&topo, 7401, 5);
    let fresh = open_connections_from(&topo, "198.18.1.11", 7401, 5)?;
    let c = d.stop();
    check(
        c.get("worker.sessions_early_dropped") >= 1
            && c.get("drop.table_full") == c.get("worker.sessions_refused"),
        format!("early drops and refusals: {c:?}"),
    )?;
    drop(fresh);
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "sixty_connections_are_sixty_sessions",
        sixty_connections_are_sixty_sessions,
    ),
    (
        "syn_flood_beyond_capacity_leaves_room_for_new_users",
        syn_flood_beyond_capacity_leaves_room_for_new_users,
    ),
    (
        "napt44_translates_and_the_firewall_holds",
        napt44_translates_and_the_firewall_holds,
    ),
    ("idle_sessions_age_out", idle_sessions_age_out),
];

/// The service-stage counters ordinary traffic leaves alone.
fn service_counters_move() -> Result<(), Failed> {
    let topo = Topo::new();
    let cfg = format!(
        "{BASE_CONFIG}[[service_set]]\nname = \"lab\"\n\
         [[service_set.firewall.rules]]\nname = \"no-telnet\"\nprotocol = \"tcp\"\n\
         destination_ports = 23\naction = \"reject\"\n\
         [[service_set.firewall.rules]]\nname = \"no-tftp\"\nprotocol = \"udp\"\n\
         destination_ports = 69\naction = \"reject\"\n\
         [service_set.nat]\npool = [\"{POOL}\"]\nports = \"20000-20007\"\n"
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    // Reject: a reset, so the connection is refused at once.
    let r = topo.client.enter(|| {
        TcpStream::connect_timeout(
            &format!("{SERVER}:23").parse().unwrap(),
            Duration::from_secs(2),
        )
    });
    check(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        format!("telnet: {r:?}"),
    )?;
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    cli.send_to(b"rrq", (SERVER, 69))?;
    // Fragments: the first opens the echo session, the rest are dropped.
    let (ok, _) = ping(&topo, SERVER, &["-s", "3000"]);
    check(
        !ok,
        "fragmented pings crossed a node that does not reassemble",
    )?;
    // Eight ports for two workers: the client's worker has four (the
    // echo's and three sockets'), so its fifth mapping has none.
    for p in 0..12u16 {
        let s = topo
            .client
            .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
        s.send_to(b"x", (SERVER, 7500 + p))?;
    }
    // The gauges are refreshed each second.
    thread::sleep(Duration::from_millis(1300));
    let st = stats(&d)?;
    check(
        st["sessions"]["created"].as_u64() >= Some(4)
            && st["sessions"]["active"] == st["sessions"]["created"],
        format!("sessions block: {}; all: {st}", st["sessions"]),
    )?;
    let c = d.stop();
    for key in [
        "worker.rejects_sent",
        "drop.policy",
        "drop.fragment",
        "drop.nat_failed",
        "worker.nat_alloc_failures",
    ] {
        check(c.get(key) >= 1, format!("{key} did not move: {c:?}"))?;
    }
    check(
        c.get("worker.rejects_sent") >= 2,
        format!("TCP and UDP rejects: {c:?}"),
    )?;
    Ok(())
}

fn stats(d: &Daemon) -> Result<serde_json::Value, String> {
    let o = netns::tandemstat(&d.instance)
        .args(["statistics", "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())
}

/// Flows the router drops (their egress is an interface tandem does not
/// forward on, as a peer's sync address behind the sync link would be)
/// make no session and take no NAT binding, however many there are.
fn flows_the_router_drops_make_no_session() -> Result<(), Failed> {
    let topo = Topo::new();
    let n = &topo.node.name;
    for cmd in [
        format!("-n {n} link add x0 type veth peer name x1"),
        format!("-n {n} addr add 198.18.77.1/24 dev x0"),
        format!("-n {n} link set x0 up"),
        format!("-n {n} link set x1 up"),
    ] {
        ipw(&cmd);
    }
    let mut d = Daemon::start(&topo.node, &nat_config(""));
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    for i in 0..200u16 {
        cli.send_to(b"x", ("198.18.77.5", 9000 + i))?;
    }
    // A flow that does leave, to compare.
    cli.send_to(b"x", (SERVER, 9))?;
    thread::sleep(Duration::from_millis(1300));
    let st = stats(&d)?;
    let c = d.stop();
    check(
        c.get("worker.sessions_created") == 1 && c.get("drop.foreign_egress") >= 200,
        format!(
            "{} sessions created, {} dropped as foreign_egress",
            c.get("worker.sessions_created"),
            c.get("drop.foreign_egress")
        ),
    )?;
    check(
        st["sessions"]["active"] == 1,
        format!("sessions block: {}", st["sessions"]),
    )?;
    Ok(())
}

pub const MORE: &[(&str, Test)] = &[
    ("service_counters_move", service_counters_move),
    (
        "flows_the_router_drops_make_no_session",
        flows_the_router_drops_make_no_session,
    ),
];

//! Carrier-grade NAT on the real packet path: endpoint-independent
//! mapping and per-subscriber port blocks and limits.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{CLIENT, Daemon, SERVER, Topo, ipw},
    sessions::{POOL, nat_config, recording_echo_server, sessions_json},
};

/// A second server address, on the server's interface.
const SERVER2: &str = "198.18.2.11";
/// A second inside host, on the client's interface.
const CLIENT2: &str = "198.18.1.11";
/// A third: of the node's two workers, 198.18.1.10 and .11 are worker 0's
/// subscribers, 198.18.1.12 worker 1's.
const OTHER: &str = "198.18.1.12";

/// Binds a UDP socket in the server at `addr:port` that reports the
/// source of the first datagram it gets (within 3 s).
fn udp_witness(
    topo: &Topo,
    addr: &'static str,
    port: u16,
) -> thread::JoinHandle<Option<SocketAddr>> {
    let s = topo
        .server
        .enter(move || UdpSocket::bind((addr, port)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).ok().map(|(_, from)| from)
    })
}

fn one_socket_keeps_its_mapping_toward_two_servers() -> Result<(), Failed> {
    let topo = Topo::new();
    ipw(&format!(
        "-n {} addr add {SERVER2}/24 dev s0",
        topo.server.name
    ));
    let mut node = Daemon::start(&topo.node, &nat_config(""));
    // UDP (RFC 4787 REQ-1): one socket, two servers.
    let w1 = udp_witness(&topo, SERVER, 9100);
    let w2 = udp_witness(&topo, SERVER2, 9100);
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 40000)).expect("bind"));
    cli.send_to(b"one", (SERVER, 9100))?;
    cli.send_to(b"two", (SERVER2, 9100))?;
    let (seen1, seen2) = (w1.join().unwrap(), w2.join().unwrap());
    check(
        seen1.is_some() && seen1 == seen2 && seen1.is_some_and(|x| x.ip().to_string() == POOL),
        format!("UDP: the servers saw {seen1:?} and {seen2:?}"),
    )?;
    // TCP (RFC 5382 REQ-1): two connections from one local port.
    let (p1, _s1) = recording_echo_server(&topo, 9200, 1);
    let p2 = {
        let l = topo
            .server
            .enter(|| std::net::TcpListener::bind((SERVER2, 9200)).expect("bind"));
        thread::spawn(move || l.accept().ok())
    };
    let connect = |to: &'static str| {
        topo.client.enter(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&"198.18.1.10:40001".parse::<SocketAddr>().unwrap().into())?;
            s.connect_timeout(
                &format!("{to}:9200").parse::<SocketAddr>().unwrap().into(),
                Duration::from_secs(3),
            )?;
            Ok::<TcpStream, std::io::Error>(s.into())
        })
    };
    let c1 = connect(SERVER).map_err(|e| format!("first connection: {e}"))?;
    let c2 = connect(SERVER2).map_err(|e| format!("second connection: {e}"))?;
    let second = p2.join().unwrap().map(|(_, peer)| peer);
    let first = p1.lock().unwrap().first().copied();
    check(
        first.is_some() && first == second,
        format!("TCP: the servers saw {first:?} and {second:?}"),
    )?;
    let listed = sessions_json(&node, &["source-prefix", "198.18.1.10/32", "count"])?;
    node.stop();
    check(
        listed["count"].as_u64() >= Some(4),
        format!("the client's sessions: {listed}"),
    )?;
    drop((c1, c2));
    Ok(())
}

fn a_flooding_host_stays_within_its_limit_and_others_get_in() -> Result<(), Failed> {
    let topo = Topo::new();
    ipw(&format!(
        "-n {} addr add {CLIENT2}/24 dev c0",
        topo.client.name
    ));
    // The defaults: blocks of 256 ports, 8 per subscriber (2048 ports),
    // 2000 new sessions a second per subscriber.
    let mut d = Daemon::start(&topo.node, &nat_config(""));
    let (_peers, _server) = recording_echo_server(&topo, 7500, 20);
    // hping3 floods new UDP flows (a new source port per packet) from the
    // client's first address for 5 s.
    let mut flood = topo
        .client
        .cmd("timeout")
        .args([
            "-s", "INT", "5", "hping3", "--flood", "--udp", "-q", "-p", "9",
        ])
        .args(["-s", "1024", "-a", CLIENT, SERVER])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    thread::sleep(Duration::from_millis(1500));
    // Meanwhile the second host opens 20 connections at once.
    let t0 = Instant::now();
    let opened: Vec<_> = (0..20)
        .map(|_| {
            topo.client.enter(|| {
                thread::spawn(|| {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                    s.bind(&format!("{CLIENT2}:0").parse::<SocketAddr>().unwrap().into())?;
                    // The flood overruns the node's receive rings, which
                    // drop frames whoever sent them: a SYN may need its
                    // retransmissions (1, 3 and 7 s on).
                    s.connect_timeout(
                        &format!("{SERVER}:7500")
                            .parse::<SocketAddr>()
                            .unwrap()
                            .into(),
                        Duration::from_secs(10),
                    )?;
                    Ok::<TcpStream, std::io::Error>(s.into())
                })
            })
        })
        .collect();
    let opened: Vec<_> = opened.into_iter().map(|h| h.join().unwrap()).collect();
    let took = t0.elapsed();
    let during = sessions_json(&d, &["source-prefix", "198.18.1.10/32", "count"])?;
    let _ = flood.wait();
    let failed: Vec<String> = opened
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    let flooder = sessions_json(&d, &["source-prefix", "198.18.1.10/32", "count"])?;
    let nat = nat_json(&d)?;
    let c = d.stop();
    check(
        failed.is_empty(),
        format!(
            "{} of 20 connections failed during the flood: {failed:?}",
            failed.len()
        ),
    )?;
    let sessions = flooder["count"].as_u64().unwrap_or(u64::MAX);
    check(
        (256..=2048).contains(&sessions),
        format!("the flooding host has {sessions} sessions (during the flood: {during})"),
    )?;
    let refused = c.get("worker.nat_subscriber_ports_exceeded")
        + c.get("worker.nat_subscriber_rate_exceeded");
    check(
        refused > 0
            && c.get("worker.nat_alloc_failures")
                == refused
                    + c.get("worker.nat_pool_exhausted")
                    + c.get("worker.nat_subscriber_sessions_exceeded")
            && c.get("drop.nat_failed") >= refused,
        format!("refusals: {c:?}"),
    )?;
    check(
        c.get("worker.rejects_sent") > 0,
        format!("no ICMP unreachable for the refused flows: {c:?}"),
    )?;
    // tandemstat nat: the flooding host heads the list, within its 8
    // blocks and 2048 ports, on one pool address; the other host has its
    // own block; the refusals match the counters.
    let set = &nat["service_sets"][0];
    let top = &set["top_subscribers"];
    check(
        top[0]["inside"] == CLIENT
            && top[0]["blocks"].as_u64() <= Some(8)
            && top[0]["ports"].as_u64() <= Some(2048)
            && top[0]["ports"].as_u64() >= Some(256)
            && top[0]["pool_address"] == POOL
            && top.as_array().is_some_and(|t| {
                t.iter()
                    .any(|s| s["inside"] == CLIENT2 && s["blocks"] == 1 && s["ports"] == 20)
            })
            && set["subscribers"] == 2
            && set["addresses"][0]["blocks_in_use"].as_u64() <= Some(9),
        format!("tandemstat nat: {nat}"),
    )?;
    check(
        nat["failures"]["total"].as_u64() > Some(0)
            && nat["failures"]["subscriber_ports_exceeded"].as_u64()
                <= Some(c.get("worker.nat_subscriber_ports_exceeded")),
        format!("tandemstat nat failures: {}", nat["failures"]),
    )?;
    eprintln!(
        "flood: {sessions} sessions for the flooding host, {refused} refused; 20 connections in {took:?}"
    );
    drop(opened);
    Ok(())
}

/// A STUN-like server in the server at `SERVER:3478`: answers each
/// datagram with its source as text, until `n` are answered or 5 s.
fn reflector(topo: &Topo, n: usize) -> thread::JoinHandle<()> {
    let s = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 3478)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let Ok((_, from)) = s.recv_from(&mut buf) else {
                return;
            };
            let _ = s.send_to(from.to_string().as_bytes(), from);
        }
    })
}

/// The mapping of `sock` as the reflector saw it.
fn mapping_of(sock: &UdpSocket) -> Result<SocketAddr, Failed> {
    sock.send_to(b"who", (SERVER, 3478))?;
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(std::str::from_utf8(&buf[..n])?.parse()?)
}

/// UDP hole punching through one NAT (RFC 4787 REQ-9, hairpinning): two
/// inside hosts learn their mappings from a server, then write to each
/// other's mapping; each hears the other from the other's mapping. The
/// two hosts are placed on different workers (of the two this machine's
/// cores give the node), so the hairpin crosses a handoff each way.
fn two_inside_hosts_reach_each_other_through_their_mappings() -> Result<(), Failed> {
    let topo = Topo::new();
    ipw(&format!(
        "-n {} addr add {OTHER}/24 dev c0",
        topo.client.name
    ));
    let mut node = Daemon::start(&topo.node, &nat_config(""));
    let stun = reflector(&topo, 2);
    let (a, b) = topo.client.enter(|| {
        (
            UdpSocket::bind((CLIENT, 0)).expect("bind"),
            UdpSocket::bind((OTHER, 0)).expect("bind"),
        )
    });
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    let (ma, mb) = (mapping_of(&a)?, mapping_of(&b)?);
    let _ = stun.join();
    check(
        ma.ip().to_string() == POOL && mb.ip().to_string() == POOL && ma != mb,
        format!("mappings {ma} and {mb}"),
    )?;
    // Each writes to the other's mapping, then each reads.
    a.send_to(b"from a", mb)?;
    b.send_to(b"from b", ma)?;
    let mut buf = [0u8; 64];
    let (len, from) = b.recv_from(&mut buf)?;
    check(
        &buf[..len] == b"from a" && from == ma,
        format!("B heard {:?} from {from} (A's mapping {ma})", &buf[..len]),
    )?;
    let (len, from) = a.recv_from(&mut buf)?;
    check(
        &buf[..len] == b"from b" && from == mb,
        format!("A heard {:?} from {from} (B's mapping {mb})", &buf[..len]),
    )?;
    // Sessions, each way: A's and B's to the server, and the hairpin's
    // halves (each host's own, and the one through the other's mapping).
    let listed = sessions_json(&node, &["protocol", "udp", "count"])?;
    let c = node.stop();
    check(
        listed["count"].as_u64() >= Some(4)
            && c.get("drop.no_session") == 0
            && c.get("worker.handoffs_received") >= 2,
        format!("sessions {listed}; counters {c:?}"),
    )?;
    eprintln!("hole punching through one NAT: A {ma}, B {mb}");
    Ok(())
}

/// A 1:1 static translation and a forwarded port, both ways and
/// hairpinned: the server reaches the forwarded port's inside host and
/// the static host's address; the static host leaves from its own
/// address with its own port; and the static host reaches the forward
/// through the pool address, seen there from its static address.
fn static_nat_and_port_forwarding_work_both_ways() -> Result<(), Failed> {
    const STATIC_IN: &str = CLIENT2;
    const STATIC_OUT: &str = "198.18.2.120";
    let topo = Topo::new();
    ipw(&format!(
        "-n {} addr add {STATIC_IN}/24 dev c0",
        topo.client.name
    ));
    let cfg = format!(
        "{}[[service_set.nat.static]]\ninside = \"{STATIC_IN}\"\noutside = \"{STATIC_OUT}\"\n\
         [[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"{POOL}:8080\"\n\
         inside = \"{CLIENT}:9300\"\n",
        nat_config("")
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    // The forward's inside server: two connections, each echoed once.
    let listener = topo
        .client
        .enter(|| std::net::TcpListener::bind((CLIENT, 9300)).expect("bind"));
    let inside = thread::spawn(move || {
        let mut peers = Vec::new();
        for _ in 0..2 {
            let Ok((mut c, peer)) = listener.accept() else {
                break;
            };
            peers.push(peer);
            let mut buf = [0u8; 16];
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            if let Ok(n) = std::io::Read::read(&mut c, &mut buf) {
                let _ = std::io::Write::write_all(&mut c, &buf[..n]);
            }
        }
        peers
    });
    let echo = |mut c: TcpStream| -> Result<(), Failed> {
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        std::io::Write::write_all(&mut c, b"hello")?;
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut c, &mut buf)?;
        check(&buf == b"hello", "echo through the forward")
    };
    let to: SocketAddr = format!("{POOL}:8080").parse()?;
    let from_server = topo
        .server
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .map_err(|e| format!("server to the forward: {e}"))?;
    let server_port = from_server.local_addr()?.port();
    echo(from_server)?;
    let hairpin = topo
        .client
        .enter(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(
                &format!("{STATIC_IN}:0")
                    .parse::<SocketAddr>()
                    .unwrap()
                    .into(),
            )?;
            s.connect_timeout(&to.into(), Duration::from_secs(3))?;
            Ok::<TcpStream, std::io::Error>(s.into())
        })
        .map_err(|e| format!("static host to the forward: {e}"))?;
    let hairpin_port = hairpin.local_addr()?.port();
    echo(hairpin)?;
    let peers = inside.join().unwrap();
    check(
        peers.first() == Some(&SocketAddr::new(SERVER.parse()?, server_port))
            && peers.get(1) == Some(&SocketAddr::new(STATIC_OUT.parse()?, hairpin_port)),
        format!(
            "the forward's host saw {peers:?} (server port {server_port},              the static host's port {hairpin_port})"
        ),
    )?;
    // The static host, out and in, on its own address and port.
    let w = udp_witness(&topo, SERVER, 9101);
    let host = topo
        .client
        .enter(|| UdpSocket::bind((STATIC_IN, 5000)).expect("bind"));
    host.set_read_timeout(Some(Duration::from_secs(3)))?;
    host.send_to(b"out", (SERVER, 9101))?;
    let seen = w.join().unwrap();
    check(
        seen.is_some_and(|x| x.to_string() == format!("{STATIC_OUT}:5000")),
        format!("the server saw the static host as {seen:?}"),
    )?;
    let srv = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 9102)).expect("bind"));
    srv.send_to(b"in", (STATIC_OUT, 5000))?;
    let mut buf = [0u8; 8];
    let (n, from) = host.recv_from(&mut buf)?;
    check(
        &buf[..n] == b"in" && from.to_string() == format!("{SERVER}:9102"),
        format!("the static host heard {:?} from {from}", &buf[..n]),
    )?;
    let listed = sessions_json(&d, &["destination-port", "8080"])?;
    d.stop();
    let rows = listed["sessions"].as_array().cloned().unwrap_or_default();
    check(
        rows.iter().any(|r| {
            r["direction"] == "O"
                && r["nat_destination"] == CLIENT
                && r["nat_destination_port"] == 9300
        }),
        format!("sessions to the forward: {listed}"),
    )?;
    Ok(())
}

/// `tandemstat --instance I nat --json`, parsed.
pub fn nat_json(d: &Daemon) -> Result<serde_json::Value, String> {
    let o = crate::netns::tandemstat(&d.instance)
        .args(["nat", "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// hping3 runs: the flood test needs it.
fn hping3_present() -> bool {
    Command::new("hping3").arg("--version").output().is_ok()
}

fn flood_test() -> Result<(), Failed> {
    check(
        hping3_present(),
        "hping3 is missing (cargo xtask setup installs it)".to_owned(),
    )?;
    a_flooding_host_stays_within_its_limit_and_others_get_in()
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "one_socket_keeps_its_mapping_toward_two_servers",
        one_socket_keeps_its_mapping_toward_two_servers,
    ),
    (
        "a_flooding_host_stays_within_its_limit_and_others_get_in",
        flood_test,
    ),
    (
        "two_inside_hosts_reach_each_other_through_their_mappings",
        two_inside_hosts_reach_each_other_through_their_mappings,
    ),
    (
        "static_nat_and_port_forwarding_work_both_ways",
        static_nat_and_port_forwarding_work_both_ways,
    ),
];

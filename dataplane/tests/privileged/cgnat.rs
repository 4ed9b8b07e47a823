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
];

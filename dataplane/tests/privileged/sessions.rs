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
    netns::{BASE_CONFIG, CLIENT, Daemon, SERVER, Topo},
    traffic::ping,
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
fn recording_echo_server(
    topo: &Topo,
    port: u16,
    conns: usize,
) -> (Arc<Mutex<Vec<SocketAddr>>>, thread::JoinHandle<()>) {
    let l = topo
        .server
        .enter(move || TcpListener::bind((SERVER, port)).expect("bind"));
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
    let mut d = Daemon::start(&topo.node, &nat_config(""));

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

pub const TESTS: &[(&str, Test)] = &[
    (
        "napt44_translates_and_the_firewall_holds",
        napt44_translates_and_the_firewall_holds,
    ),
    ("idle_sessions_age_out", idle_sessions_age_out),
];

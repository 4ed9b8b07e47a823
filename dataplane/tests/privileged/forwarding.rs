//! Forwarding across the node: v4, v6, the node's own addresses, ICMP errors, standby.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, CLIENT, Daemon, NODE_IN, NODE_IN6, SERVER, SERVER6, Topo},
    traffic::{ping, tcp_echo_server},
};

fn forwards_tcp_udp_icmp_with_ip_forward_off() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);

    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("ping through the node failed:\n{out}"))?;
    check(
        out.contains("ttl=63"),
        format!("TTL not decremented once:\n{out}"),
    )?;

    // 20 concurrent TCP connections with 20 echo rounds each.
    let server = tcp_echo_server(&topo, 7000);
    let conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            topo.client.enter(|| {
                TcpStream::connect_timeout(
                    &format!("{SERVER}:7000").parse().unwrap(),
                    Duration::from_secs(3),
                )
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tcp connect through the node: {e}"))?;
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || -> std::io::Result<()> {
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                for r in 0..20u8 {
                    let msg = [i as u8 ^ r; 1000];
                    s.write_all(&msg)?;
                    let mut back = [0u8; 1000];
                    s.read_exact(&mut back)?;
                    if back != msg {
                        return Err(std::io::Error::other("echo mismatch"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .expect("tcp thread")
            .map_err(|e| format!("tcp echo: {e}"))?;
    }
    drop(server);

    // 200 UDP echoes.
    let srv = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 7001)).expect("bind"));
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        srv.set_read_timeout(Some(Duration::from_secs(5))).ok();
        while let Ok((n, from)) = srv.recv_from(&mut buf) {
            let _ = srv.send_to(&buf[..n], from);
        }
    });
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    cli.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut answered = 0;
    for i in 0..200u32 {
        cli.send_to(&i.to_be_bytes(), (SERVER, 7001))?;
        let mut b = [0u8; 16];
        if let Ok((4, _)) = cli.recv_from(&mut b)
            && b[..4] == i.to_be_bytes()
        {
            answered += 1;
        }
    }
    check(
        answered == 200,
        format!("{answered}/200 UDP echoes came back"),
    )?;

    let c = d.stop();
    check(
        c.get("worker.forwarded") >= 3 + 2 * 20 * 20 + 400,
        "forwarded counter too low",
    )?;
    check(
        c.get("xdp.redirected") == c.get("worker.rx_packets"),
        "XDP redirected != worker rx",
    )?;
    check(
        c.get("in0.rx_packets") > 0 && c.get("out0.rx_packets") > 0,
        "per-interface rx",
    )?;
    check(
        c.get("in0.tx_packets") > 0 && c.get("out0.tx_packets") > 0,
        "per-interface tx",
    )?;
    Ok(())
}

fn forwards_ipv6_and_expires_hop_limit() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    // A fresh namespace's IPv6 needs a moment (link-local DAD) before
    // neighbour discovery answers; wait until the node answers both ends.
    let answers = |ns: &netns::Ns, dst: &str| {
        ns.cmd("ping")
            .args(["-6", "-c", "1", "-W", "1", dst])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ready = (0..20).any(|_| {
        let ok = answers(&topo.client, NODE_IN6) && answers(&topo.server, "2001:db8:2::1");
        if !ok {
            thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    check(ready, "the node's IPv6 address never answered")?;
    let (ok, out) = ping(&topo, SERVER6, &["-6"]);
    check(ok, format!("ping6 through the node failed:\n{out}"))?;
    check(
        out.contains("ttl=63"),
        format!("hop limit not decremented once:\n{out}"),
    )?;
    let (ok, out) = ping(&topo, SERVER6, &["-6", "-t", "1"]);
    check(!ok, "hop limit 1 must not reach the server")?;
    check(
        out.contains(&format!("From {NODE_IN6}")) && out.contains("Time exceeded"),
        format!("no ICMPv6 time exceeded from the node:\n{out}"),
    )?;
    let (ok, out) = ping(&topo, NODE_IN6, &["-6"]);
    check(ok, format!("ping6 to the node itself:\n{out}"))?;
    let c = d.stop();
    check(
        c.get("worker.icmp_errors_sent") == 3,
        "three ICMPv6 errors counted",
    )?;
    let (fwd, punted) = (c.get("worker.forwarded"), c.get("worker.punted"));
    check(
        fwd + punted >= 6,
        format!(
            "3 echoes + 3 replies, the first echo may be punted for ND: forwarded {fwd} punted {punted}"
        ),
    )?;
    Ok(())
}

fn node_address_traffic_reaches_the_kernel() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let l = topo
        .node
        .enter(|| TcpListener::bind((NODE_IN, 2222)).expect("bind"));
    let acc = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("read");
        b
    });
    let mut s = topo
        .client
        .enter(|| TcpStream::connect((NODE_IN, 2222)))
        .map_err(|e| format!("connect to the node's own address: {e}"))?;
    s.write_all(b"hello")?;
    check(
        &acc.join().expect("accept thread") == b"hello",
        "kernel socket got the bytes",
    )?;
    let (ok, out) = ping(&topo, NODE_IN, &[]);
    check(
        ok && out.contains("ttl=64"),
        format!("ping to the node:\n{out}"),
    )?;
    let c = d.stop();
    check(c.get("xdp.pass_local") >= 5, "pass_local counted")?;
    check(
        c.get("worker.rx_packets") == 0,
        "no node traffic reached a worker",
    )?;
    Ok(())
}

fn ttl_expiry_sends_time_exceeded() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let (ok, out) = ping(&topo, SERVER, &["-t", "1"]);
    check(!ok, "ping with TTL 1 must not reach the server")?;
    check(
        out.contains(&format!("From {NODE_IN}")) && out.contains("Time to live exceeded"),
        format!("no time-exceeded from the node:\n{out}"),
    )?;
    let c = d.stop();
    check(
        c.get("worker.icmp_errors_sent") == 3,
        "three ICMP errors counted",
    )?;
    check(c.get("drop.ttl_expired") == 3, "three TTL drops counted")?;
    Ok(())
}

fn standby_drops_service_traffic_but_answers_for_itself() -> Result<(), Failed> {
    let topo = Topo::new();
    let cfg = format!("{BASE_CONFIG}[node]\nforward = false\n");
    let mut d = Daemon::start(&topo.node, &cfg);
    let (ok, _) = ping(&topo, SERVER, &[]);
    check(!ok, "a node that may not forward must not forward")?;
    let (ok, out) = ping(&topo, NODE_IN, &[]);
    check(
        ok,
        format!("the node's own address must still answer:\n{out}"),
    )?;
    let c = d.stop();
    check(c.get("xdp.drop_not_master") == 3, "drop_not_master counted")?;
    check(c.get("worker.rx_packets") == 0, "nothing reached a worker")?;
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "forwards_tcp_udp_icmp_with_ip_forward_off",
        forwards_tcp_udp_icmp_with_ip_forward_off,
    ),
    (
        "forwards_ipv6_and_expires_hop_limit",
        forwards_ipv6_and_expires_hop_limit,
    ),
    (
        "node_address_traffic_reaches_the_kernel",
        node_address_traffic_reaches_the_kernel,
    ),
    (
        "ttl_expiry_sends_time_exceeded",
        ttl_expiry_sends_time_exceeded,
    ),
    (
        "standby_drops_service_traffic_but_answers_for_itself",
        standby_drops_service_traffic_but_answers_for_itself,
    ),
];

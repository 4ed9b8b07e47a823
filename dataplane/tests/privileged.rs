//! Privileged end-to-end tests: real namespaces, veths, the real XDP program,
//! AF_XDP sockets and tandemd, with the kernel's own forwarding turned off.
//!
//! Without root these are reported as ignored; with `CI` set they fail
//! instead, so CI can never pass by skipping them.

mod netns;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use libtest_mimic::{Arguments, Failed, Trial};
use netns::{BASE_CONFIG, CLIENT, Daemon, NODE_IN, NODE_IN6, SERVER, SERVER6, Topo};

type Test = fn() -> Result<(), Failed>;

fn check(cond: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

fn ping(topo: &Topo, dst: &str, extra: &[&str]) -> (bool, String) {
    let out = topo
        .client
        .cmd("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1"])
        .args(extra)
        .arg(dst)
        .output()
        .expect("ping");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tcp_echo_server(topo: &Topo, port: u16) -> thread::JoinHandle<usize> {
    let l = topo
        .server
        .enter(move || TcpListener::bind((SERVER, port)).expect("bind"));
    thread::spawn(move || {
        let mut served = 0;
        l.set_nonblocking(false).expect("blocking");
        for _ in 0..20 {
            let Ok((mut s, _)) = l.accept() else { break };
            served += 1;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        served
    })
}

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

/// Sends raw Ethernet frames out of `dev` from inside `ns`.
fn send_frames(ns: &netns::Ns, dev: &'static str, frames: Vec<Vec<u8>>) {
    ns.enter(move || {
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let ifindex = {
            let c = std::ffi::CString::new(dev).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        // SAFETY: an all-zero sockaddr_ll is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex.cast_signed();
        sll.sll_halen = 6;
        for f in &frames {
            // SAFETY: f and sll are valid for the lengths given.
            let r = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                r,
                f.len().cast_signed(),
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    });
}

fn malformed_frames_are_dropped_and_counted() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let dst = topo.node.mac("in0");
    let src = topo.client.mac("c0");
    let eth = |ethertype: u16| {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    };
    let ipv4 = |proto: u8, total: u16, ihl: u8, l4: &[u8]| {
        let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[198, 18, 1, 10, 198, 18, 2, 10]);
        let c = tandem_dataplane::wire::checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    };
    let mut frames = Vec::new();
    // 1. Ethernet header announcing IPv4, then 6 bytes.
    let mut f = eth(0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0]);
    frames.push(f);
    // 2. IHL of 3 words.
    let mut f = eth(0x0800);
    f.extend(ipv4(17, 28, 3, &[0; 8]));
    frames.push(f);
    // 3. Total length beyond the frame.
    let mut f = eth(0x0800);
    f.extend(ipv4(17, 1400, 5, &[0; 8]));
    frames.push(f);
    // 4. TCP with a data offset of 2 words.
    let mut tcp = [0u8; 20];
    tcp[12] = 0x20;
    let mut f = eth(0x0800);
    f.extend(ipv4(6, 40, 5, &tcp));
    frames.push(f);
    // 5. Well-formed but for the IPv4 header checksum: the worker's check.
    let mut f = eth(0x0800);
    let mut h = ipv4(17, 28, 5, &[0x9c, 0x40, 0, 7, 0, 8, 0, 0]);
    h[10] ^= 0xff;
    f.extend(h);
    frames.push(f);
    send_frames(&topo.client, "c0", frames);

    // The node is unharmed: traffic still crosses.
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("ping after malformed frames:\n{out}"))?;
    let c = d.stop();
    check(
        c.get("xdp.drop_parse_error") == 4,
        format!("xdp.drop_parse_error = {}", c.get("xdp.drop_parse_error")),
    )?;
    check(c.get("drop.bad_checksum") == 1, "worker bad_checksum")?;
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

fn sigterm_detaches_and_sigkill_leaves_nothing_behind() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    check(
        topo.xdp_attached("in0") && topo.xdp_attached("out0"),
        "XDP attached",
    )?;
    let (st, log) = d.signal_and_wait(libc::SIGTERM);
    check(st.success(), format!("SIGTERM exit: {st}\n{log}"))?;
    check(
        !topo.xdp_attached("in0") && !topo.xdp_attached("out0"),
        "XDP detached on SIGTERM",
    )?;

    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let pid = d.pid();
    check(pid > 0, "pid")?;
    let (st, _) = d.signal_and_wait(libc::SIGKILL);
    check(!st.success(), "SIGKILL exit")?;
    // The BPF link dies with the process: nothing is left attached.
    let mut gone = false;
    for _ in 0..50 {
        if !topo.xdp_attached("in0") && !topo.xdp_attached("out0") {
            gone = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    check(gone, "XDP still attached after SIGKILL")?;
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("restart after a crash forwards:\n{out}"))?;
    d.stop();
    Ok(())
}

fn missing_interface_is_a_clear_error() -> Result<(), Failed> {
    let topo = Topo::new();
    let cfg = std::env::temp_dir().join(format!("tandem-noif-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[interfaces]\ninside = \"nope0\"\noutside = \"out0\"\n",
    )?;
    let out = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let _ = std::fs::remove_file(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), "missing interface accepted")?;
    check(
        err.contains("interface nope0"),
        format!("error does not name the interface: {err}"),
    )?;
    check(
        !topo.xdp_attached("out0"),
        "a failed start must attach nothing",
    )?;
    Ok(())
}

fn stats_json(instance: &str) -> serde_json::Value {
    let o = netns::tandemstat(instance)
        .args(["statistics", "--json"])
        .output()
        .expect("tandemstat");
    assert!(
        o.status.success(),
        "tandemstat: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("tandemstat JSON")
}

fn iface_counter(v: &serde_json::Value, name: &str, key: &str) -> u64 {
    v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .and_then(|i| i[key].as_u64())
        .unwrap_or_else(|| panic!("no {name}.{key} in {v}"))
}

fn stats_segment_counts_a_udp_exchange_exactly() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let srv = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 7002)).expect("bind"));
    srv.set_read_timeout(Some(Duration::from_secs(5)))?;
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok((len, from)) = srv.recv_from(&mut buf) {
            let _ = srv.send_to(&buf[..len], from);
            n += 1;
        }
        n
    });
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    cli.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; 16];
    let mut exchange = |i: u32| -> Result<(), Failed> {
        cli.send_to(&i.to_be_bytes(), (SERVER, 7002))?;
        cli.recv_from(&mut b)
            .map_err(|e| format!("echo {i}: {e}"))?;
        Ok(())
    };
    // Warm-up: neighbours resolved on both sides before counting.
    exchange(0)?;
    thread::sleep(Duration::from_millis(700));
    let before = stats_json(&d.instance);
    for i in 1..=1000 {
        exchange(i)?;
    }
    // Workers publish every iteration; XDP counters every 500 ms.
    thread::sleep(Duration::from_millis(700));
    let after = stats_json(&d.instance);
    let delta = |name: &str, key: &str| {
        iface_counter(&after, name, key) - iface_counter(&before, name, key)
    };
    check(
        delta("in0", "rx_packets") == 1000,
        format!("in0 rx {}", delta("in0", "rx_packets")),
    )?;
    check(
        delta("out0", "rx_packets") == 1000,
        format!("out0 rx {}", delta("out0", "rx_packets")),
    )?;
    check(
        delta("in0", "tx_packets") == 1000,
        format!("in0 tx {}", delta("in0", "tx_packets")),
    )?;
    check(
        delta("out0", "tx_packets") == 1000,
        format!("out0 tx {}", delta("out0", "tx_packets")),
    )?;
    // A 4-byte payload: 14 + 20 + 8 + 4 = 46-byte frames (veth does not pad).
    check(
        delta("in0", "rx_bytes") == 1000 * 46,
        format!("in0 rx bytes {}", delta("in0", "rx_bytes")),
    )?;
    let summed = |v: &serde_json::Value| -> u64 {
        v["interfaces"].as_array().map_or(0, |a| {
            a.iter()
                .map(|i| i["rx_packets"].as_u64().unwrap_or(0))
                .sum()
        })
    };
    check(
        summed(&after) - summed(&before) >= 2000,
        "summed rx_packets",
    )?;
    let xdp = |v: &serde_json::Value| v["xdp"]["redirected"].as_u64().unwrap_or(0);
    check(
        xdp(&after) - xdp(&before) == 2000,
        format!("XDP redirected {}", xdp(&after) - xdp(&before)),
    )?;
    d.stop();
    drop(echo);
    Ok(())
}

fn sigstopped_daemon_is_reported_stale() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let fresh = netns::tandemstat(&d.instance).arg("--json").output()?;
    check(
        !String::from_utf8_lossy(&fresh.stderr).contains("stale"),
        "a running daemon is not stale",
    )?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.pid(), libc::SIGSTOP) };
    let t0 = std::time::Instant::now();
    let mut seen = None;
    while t0.elapsed() < Duration::from_secs(5) {
        let o = netns::tandemstat(&d.instance).arg("-i").output()?;
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        if e.contains("stale") {
            check(
                o.status.success() && !o.stdout.is_empty(),
                "output still printed",
            )?;
            seen = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(d.pid(), libc::SIGCONT) };
    let took = seen.ok_or("never reported stale")?;
    check(
        took <= Duration::from_secs(4),
        format!("stale after {took:?}"),
    )?;
    thread::sleep(Duration::from_millis(500));
    let o = netns::tandemstat(&d.instance).arg("-i").output()?;
    check(
        !String::from_utf8_lossy(&o.stderr).contains("stale"),
        "fresh again after SIGCONT",
    )?;
    d.stop();
    Ok(())
}

fn metrics_are_served_over_http() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let mut server = topo
        .node
        .cmd(netns::tandemstat_path().to_str().unwrap())
        .args([
            "--instance",
            &d.instance,
            "serve",
            "--listen",
            "127.0.0.1:9417",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let body = topo.node.enter(|| {
        for _ in 0..50 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", 9417)) {
                let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                return out;
            }
            thread::sleep(Duration::from_millis(100));
        }
        String::new()
    });
    let _ = server.kill();
    let _ = server.wait();
    check(
        body.starts_with("HTTP/1.0 200 OK"),
        format!("response: {body:.200}"),
    )?;
    check(
        body.contains("# TYPE tandem_xdp_verdicts_total counter")
            && body.contains("tandem_worker_rx_packets_total{"),
        "metrics body",
    )?;
    d.stop();
    Ok(())
}

fn tandemctl_clears_statistics_and_survives_garbage() -> Result<(), Failed> {
    use std::os::unix::net::UnixStream;
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let (ok, _) = ping(&topo, SERVER, &[]);
    check(ok, "ping")?;
    thread::sleep(Duration::from_millis(300));
    check(
        iface_counter(&stats_json(&d.instance), "in0", "rx_packets") >= 3,
        "traffic counted",
    )?;
    let ctl = netns::tandemd_path().with_file_name("tandemctl");
    let out = Command::new(&ctl)
        .args(["--instance", &d.instance, "clear", "statistics"])
        .output()?;
    check(
        out.status.success() && out.stdout == b"ok\n",
        format!("tandemctl: {}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let view = stats_json(&d.instance);
    check(
        iface_counter(&view, "in0", "rx_packets") == 0,
        "cleared view",
    )?;
    check(
        view["cleared_at_unix_s"].as_u64().is_some(),
        "clear time shown",
    )?;
    let prom = netns::tandemstat(&d.instance).arg("prometheus").output()?;
    let prom = String::from_utf8_lossy(&prom.stdout);
    check(
        prom.lines().any(|l| {
            l.starts_with("tandem_iface_rx_packets_total{")
                && l.contains("iface=\"in0\"")
                && !l.ends_with(" 0")
        }),
        "Prometheus keeps the raw monotonic counters",
    )?;
    // Malformed requests get an error reply; the daemon keeps serving.
    let path = tandem_control::ctl::socket_path(&d.instance);
    for bad in [
        &b"reboot\n"[..],
        b"\xff\xfe\x00\n",
        &[b'x'; 5000][..],
        b"no newline",
    ] {
        let mut s = UnixStream::connect(&path)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let _ = s.write_all(bad);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        check(
            reply.starts_with("error: "),
            format!("reply to garbage: {reply:?}"),
        )?;
    }
    let (ok, _) = ping(&topo, SERVER, &[]);
    check(ok, "still forwarding after garbage")?;
    // A second daemon for the same instance is refused, the first untouched.
    let cfg = std::env::temp_dir().join(format!("tandem-dup-{}.toml", std::process::id()));
    std::fs::write(&cfg, BASE_CONFIG)?;
    let dup = topo
        .node
        .cmd(netns::tandemd_path().to_str().unwrap())
        .arg("--config")
        .arg(&cfg)
        .args(["--instance", &d.instance])
        .output()?;
    let _ = std::fs::remove_file(&cfg);
    check(!dup.status.success(), "duplicate instance started")?;
    check(
        String::from_utf8_lossy(&dup.stderr).contains("already running"),
        format!("{}", String::from_utf8_lossy(&dup.stderr)),
    )?;
    let c = d.stop();
    check(
        c.get("worker.forwarded") >= 6,
        "first daemon kept forwarding",
    )?;
    check(!path.exists(), "socket removed on exit")?;
    Ok(())
}

/// The drop and pressure counters that ordinary traffic never moves.
fn rare_counters_move() -> Result<(), Failed> {
    let topo = Topo::new();
    let n = &topo.node.name;
    for cmd in [
        format!("-n {n} link add ext0 type veth peer name ext1"),
        format!("-n {n} addr add 203.0.113.1/24 dev ext0"),
        format!("-n {n} link set ext0 up"),
        format!("-n {n} link set ext1 up"),
        format!("-n {n} neigh replace 203.0.113.5 lladdr 02:00:00:00:00:05 dev ext0 nud permanent"),
    ] {
        netns::ipw(&cmd);
    }
    let cfg = format!(
        "{BASE_CONFIG}icmp_errors_per_sec = 1\npunts_per_sec = 1\nframes_per_worker = 128\nfill_ring = 64\n"
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    let run = |args: &[&str]| {
        let (_, out) = ping(&topo, args[args.len() - 1], &args[..args.len() - 1]);
        out
    };
    run(&["198.51.100.1"]);
    run(&["203.0.113.5"]);
    run(&["-t", "1", SERVER]);
    run(&["198.18.2.77"]);
    let c = d.stop();
    // drop.too_big: forward's unit test oversize_with_df_gets_frag_needed.
    for key in [
        "drop.no_route",
        "drop.foreign_egress",
        "drop.icmp_suppressed",
        "drop.punt_limited",
        "worker.punted",
        "worker.fill_short",
        "worker.icmp_errors_sent",
    ] {
        check(c.get(key) >= 1, format!("{key} did not move"))?;
    }
    Ok(())
}

/// Not privileged: runs everywhere.
fn bad_config_is_refused_naming_file_and_key() -> Result<(), Failed> {
    let cfg = std::env::temp_dir().join(format!("tandem-bad-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n[dataplane]\nrx_ring = 1000\n",
    )?;
    let out = Command::new(netns::tandemd_path())
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let _ = std::fs::remove_file(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(2),
        format!("exit status {:?}", out.status.code()),
    )?;
    check(
        err.contains(cfg.to_str().unwrap()),
        format!("file not named: {err}"),
    )?;
    check(
        err.contains("dataplane.rx_ring"),
        format!("key not named: {err}"),
    )?;
    check(
        err.contains("power of two"),
        format!("expectation not stated: {err}"),
    )?;
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let privileged = netns::privileged();
    let in_ci = std::env::var_os("CI").is_some();
    let priv_tests: [(&str, Test); 13] = [
        ("rare_counters_move", rare_counters_move),
        (
            "tandemctl_clears_statistics_and_survives_garbage",
            tandemctl_clears_statistics_and_survives_garbage,
        ),
        (
            "stats_segment_counts_a_udp_exchange_exactly",
            stats_segment_counts_a_udp_exchange_exactly,
        ),
        (
            "sigstopped_daemon_is_reported_stale",
            sigstopped_daemon_is_reported_stale,
        ),
        ("metrics_are_served_over_http", metrics_are_served_over_http),
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
            "malformed_frames_are_dropped_and_counted",
            malformed_frames_are_dropped_and_counted,
        ),
        (
            "standby_drops_service_traffic_but_answers_for_itself",
            standby_drops_service_traffic_but_answers_for_itself,
        ),
        (
            "sigterm_detaches_and_sigkill_leaves_nothing_behind",
            sigterm_detaches_and_sigkill_leaves_nothing_behind,
        ),
        (
            "missing_interface_is_a_clear_error",
            missing_interface_is_a_clear_error,
        ),
    ];
    let mut trials: Vec<Trial> = priv_tests
        .into_iter()
        .map(|(name, f)| {
            if privileged {
                Trial::test(name, f)
            } else if in_ci {
                Trial::test(name, || {
                    Err(
                        "needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces) and CI is set: \
                         privileged tests must run in CI, not be skipped"
                            .into(),
                    )
                })
            } else {
                Trial::test(name, f).with_ignored_flag(true)
            }
        })
        .collect();
    trials.push(Trial::test(
        "bad_config_is_refused_naming_file_and_key",
        bad_config_is_refused_naming_file_and_key,
    ));
    libtest_mimic::run(&args, trials).exit();
}

//! The stats segment and its readers against a running daemon.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use libtest_mimic::Failed;

use crate::{
    Test, check, frame,
    netns::{self, BASE_CONFIG, CLIENT, Daemon, SERVER, Topo},
    traffic::{ping, send_frames},
};

pub fn stats_json(instance: &str) -> serde_json::Value {
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

pub fn iface_counter(v: &serde_json::Value, name: &str, key: &str) -> u64 {
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

fn malformed_frames_are_dropped_and_counted() -> Result<(), Failed> {
    let topo = Topo::new();
    let mut d = Daemon::start(&topo.node, BASE_CONFIG);
    let cases = frame::malformed(topo.node.mac("in0"), topo.client.mac("c0"));
    let mut want: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (counter, _) in &cases {
        *want.entry(counter).or_default() += 1;
    }
    send_frames(
        &topo.client,
        "c0",
        cases.into_iter().map(|(_, f)| f).collect(),
    );

    // The node is unharmed: traffic still crosses.
    let (ok, out) = ping(&topo, SERVER, &[]);
    check(ok, format!("ping after malformed frames:\n{out}"))?;
    let c = d.stop();
    for (counter, n) in want {
        check(
            c.get(counter) == n,
            format!("{counter} = {}, want {n}", c.get(counter)),
        )?;
    }
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
        format!("-n {n} link set out0 mtu 1000"),
    ] {
        netns::ipw(&cmd);
    }
    // The node's own firewall refuses to send to 198.18.2.66, so handing
    // such a datagram to the kernel fails.
    netns::sh(topo.node.cmd("nft").arg(
        "add table ip tnd_test; \
         add chain ip tnd_test out { type filter hook output priority 0; }; \
         add rule ip tnd_test out ip daddr 198.18.2.66 drop",
    ));
    // Small pools and rings put the worker under pressure with an ordinary
    // burst: the rx ring overflows while frames wait in the fill ring.
    let cfg = format!(
        "{BASE_CONFIG}icmp_errors_per_sec = 1\npunts_per_sec = 1\nframes_per_worker = 256\n\
         fill_ring = 128\nrx_ring = 64\n"
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    let run = |args: &[&str]| {
        let (_, out) = ping(&topo, args[args.len() - 1], &args[..args.len() - 1]);
        out
    };
    run(&["198.51.100.1"]);
    run(&["203.0.113.5"]);
    run(&["-t", "1", SERVER]);
    run(&["-M", "do", "-s", "1200", SERVER]);
    run(&["198.18.2.77"]);
    // Let the punt bucket refill so the next punt is attempted.
    thread::sleep(Duration::from_millis(1100));
    run(&["198.18.2.66"]);
    let burst = || {
        topo.client.enter(|| {
            let s = UdpSocket::bind((CLIENT, 0)).expect("bind");
            for _ in 0..5000 {
                let _ = s.send_to(&[0u8; 18], (SERVER, 9));
            }
        });
    };
    burst();
    let c = d.stop();
    for key in [
        "drop.no_route",
        "drop.foreign_egress",
        "drop.too_big",
        "drop.punt_limited",
        "worker.punted",
        "worker.punt_errors",
        "worker.icmp_errors_sent",
        "worker.icmp_errors_suppressed",
    ] {
        check(c.get(key) >= 1, format!("{key} did not move: {c:?}"))?;
    }
    for stat in [".rx_ring_full", ".tx_ring_empty_descs"] {
        check(
            c.sum_suffix(stat) >= 1,
            format!("xsk {stat} did not move: {c:?}"),
        )?;
    }
    // Few frames and a tx ring smaller than what one batch forwards: the
    // fill ring runs dry and the tx ring overflows. The burst arrives
    // while the daemon is stopped, so that the rx ring is full when it
    // runs again and its first batch (128 frames) exceeds the tx ring
    // (64), whatever the timing of the sender.
    let cfg = format!(
        "{BASE_CONFIG}frames_per_worker = 256\nfill_ring = 128\ntx_ring = 64\nbatch = 256\n"
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(d.pid(), libc::SIGSTOP) };
    burst();
    // SAFETY: as above.
    unsafe { libc::kill(d.pid(), libc::SIGCONT) };
    thread::sleep(Duration::from_millis(500));
    let c = d.stop();
    for key in ["drop.tx_ring_full", "worker.fill_short"] {
        check(c.get(key) >= 1, format!("{key} did not move: {c:?}"))?;
    }
    check(
        c.sum_suffix(".rx_fill_ring_empty_descs") >= 1,
        format!("xsk .rx_fill_ring_empty_descs did not move: {c:?}"),
    )?;
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[
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
        "tandemctl_clears_statistics_and_survives_garbage",
        tandemctl_clears_statistics_and_survives_garbage,
    ),
    (
        "malformed_frames_are_dropped_and_counted",
        malformed_frames_are_dropped_and_counted,
    ),
    ("rare_counters_move", rare_counters_move),
];

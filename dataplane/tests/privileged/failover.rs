//! Failover of a pair under the redundancy state machine, on the lab's
//! shape: client and both nodes' in0 on one bridge, server and both
//! out0 on another, sync0 between the nodes. Held TCP connections echo
//! through the MASTER while it fails; they must all survive.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{BASE_CONFIG, Daemon, Ns, ipw, sh},
    replication::{count, wait_ha},
    sessions::POOL,
};

pub const TESTS: &[(&str, Test)] = &[
    (
        "failover_sigkill_of_the_master_keeps_connections_and_it_rejoins_standby",
        sigkill_of_the_master_keeps_connections_and_it_rejoins_standby,
    ),
    (
        "failover_a_forwarded_port_keeps_working",
        a_forwarded_port_keeps_working,
    ),
    (
        "failover_an_endpoint_keeps_its_mapping",
        an_endpoint_keeps_its_mapping,
    ),
    (
        "failover_manual_switchover_and_back",
        manual_switchover_and_back,
    ),
    (
        "failover_link_down_on_the_master_and_a_sync_partition_alone",
        link_down_on_the_master_and_a_sync_partition_alone,
    ),
    (
        "failover_box_death_then_a_full_partition_heals_to_one_master",
        box_death_then_a_full_partition_heals_to_one_master,
    ),
    (
        "failover_probe_failure_hands_over_and_the_views_show_it",
        probe_failure_hands_over_and_the_views_show_it,
    ),
    (
        "failover_worker_stall_hands_over_and_recovers",
        worker_stall_hands_over_and_recovers,
    ),
    (
        "failover_ipv6_vips_move_with_unsolicited_advertisements",
        ipv6_vips_move_with_unsolicited_advertisements,
    ),
    (
        "failover_offloaded_sessions_follow_the_master",
        offloaded_sessions_follow_the_master,
    ),
    (
        "failover_mastership_moves_by_request_only_to_a_hot_node",
        mastership_moves_by_request_only_to_a_hot_node,
    ),
    (
        "failover_a_panicking_thread_ends_the_daemon_and_the_peer_takes_over",
        a_panicking_thread_ends_the_daemon_and_the_peer_takes_over,
    ),
    (
        "failover_a_frozen_master_fences_itself_and_yields_when_it_wakes",
        a_frozen_master_fences_itself_and_yields_when_it_wakes,
    ),
    (
        "failover_a_control_plane_flood_from_a_lan_changes_nothing",
        a_control_plane_flood_from_a_lan_changes_nothing,
    ),
    (
        "failover_a_key_mismatch_is_an_alarm_in_every_view",
        a_key_mismatch_is_an_alarm_in_every_view,
    ),
    (
        "failover_a_key_rollover_keeps_the_pair_hot",
        a_key_rollover_keeps_the_pair_hot,
    ),
    (
        "failover_preemption_waits_for_hot",
        preemption_waits_for_hot,
    ),
    (
        "failover_a_rolling_rule_change_keeps_sync_and_a_pool_change_is_refused",
        a_rolling_rule_change_keeps_sync_and_a_pool_change_is_refused,
    ),
    (
        "failover_worker_counts_may_differ",
        worker_counts_may_differ,
    ),
];

const SERVER: &str = "198.18.2.10";
const PORT: u16 = 7;
/// IPv6 beside the lab's IPv4 (documentation prefix), for the IPv6 VIP test.
const SERVER6: &str = "2001:db8:2::10";
const VIP6_IN: &str = "2001:db8:1::1";
const VIP6_OUT: &str = "2001:db8:2::1";

struct Lab {
    sw: Ns,
    client: Ns,
    server: Ns,
    a: Ns,
    b: Ns,
}

impl Lab {
    fn new() -> Self {
        let (sw, client, server, a, b) = (
            Ns::new("sw"),
            Ns::new("c"),
            Ns::new("s"),
            Ns::new("a"),
            Ns::new("b"),
        );
        let s = &sw.name;
        for br in ["bi", "bo"] {
            ipw(&format!("-n {s} link add {br} type bridge"));
            ipw(&format!("-n {s} link set {br} up"));
        }
        for (ns, dev, port, br) in [
            (&client, "eth0", "c0", "bi"),
            (&a, "in0", "ai", "bi"),
            (&b, "in0", "bin", "bi"),
            (&server, "eth0", "s0", "bo"),
            (&a, "out0", "ao", "bo"),
            (&b, "out0", "bout", "bo"),
        ] {
            ipw(&format!(
                "link add {dev} netns {} numrxqueues 2 numtxqueues 2 type veth \
                 peer name {port} netns {s} numrxqueues 2 numtxqueues 2",
                ns.name
            ));
            ipw(&format!("-n {s} link set {port} master {br}"));
            ipw(&format!("-n {s} link set {port} up"));
            ipw(&format!("-n {} link set {dev} up", ns.name));
            // The nodes' fast path redirects into their switch ports; a
            // veth end takes redirected frames only with GRO on.
            if ns.name != client.name && ns.name != server.name {
                sh(sw.cmd("ethtool").args(["-K", port, "gro", "on"]));
            }
        }
        ipw(&format!(
            "link add sync0 netns {} type veth peer name sync0 netns {}",
            a.name, b.name
        ));
        for (ns, cidr) in [(&client, "198.18.1.10/24"), (&server, "198.18.2.10/24")] {
            ipw(&format!("-n {} addr add {cidr} dev eth0", ns.name));
            // Checksums in software: a frame through AF_XDP loses the
            // veth's partial-checksum state.
            ns.cmd("ethtool")
                .args(["-K", "eth0", "tx", "off"])
                .output()
                .ok();
        }
        ipw(&format!(
            "-n {} route add default via 198.18.1.1",
            client.name
        ));
        ipw(&format!(
            "-n {} route add default via 198.18.2.1",
            server.name
        ));
        for (ns, i, o, y) in [
            (&a, "198.18.1.2/24", "198.18.2.2/24", "198.18.9.1/30"),
            (&b, "198.18.1.3/24", "198.18.2.3/24", "198.18.9.2/30"),
        ] {
            ipw(&format!("-n {} addr add {i} dev in0", ns.name));
            ipw(&format!("-n {} addr add {o} dev out0", ns.name));
            ipw(&format!("-n {} addr add {y} dev sync0", ns.name));
            ipw(&format!("-n {} link set sync0 up", ns.name));
            ns.sysctl("net.ipv4.ip_forward=0");
        }
        Self {
            sw,
            client,
            server,
            a,
            b,
        }
    }

    fn config(node: &str) -> String {
        let (local, peer, id, prio, hl, hp) = if node == "a" {
            (
                "198.18.9.1",
                "198.18.9.2",
                1,
                200,
                "198.18.1.2",
                "198.18.1.3",
            )
        } else {
            (
                "198.18.9.2",
                "198.18.9.1",
                2,
                100,
                "198.18.1.3",
                "198.18.1.2",
            )
        };
        format!(
            "{BASE_CONFIG}[sync]\nlocal = \"{local}\"\npeer = \"{peer}\"\nnode_id = {id}\n\
             key = \"failover-test-shared-key\"\n\
             [redundancy]\npriority = {prio}\n\
             heartbeat = [{{ local = \"{hl}\", peer = \"{hp}\" }}]\n\
             vip = [{{ interface = \"inside\", address = \"198.18.1.1\" }}, \
                    {{ interface = \"outside\", address = \"198.18.2.1\" }}]\n\
             probe = [{{ interface = \"inside\", targets = [\"198.18.1.10\"] }}, \
                      {{ interface = \"outside\", targets = [\"198.18.2.10\"] }}]\n\
             [[service_set]]\nname = \"lab\"\n[service_set.nat]\npool = [\"{POOL}\"]\n\
             ports = \"20000-29999\"\n"
        )
    }

    /// IPv6 on every interface of the lab, the gateways being the IPv6
    /// VIPs of [`Self::config6`]. No DAD: addresses are usable at once.
    fn add_ipv6(&self) {
        for (ns, gw, cidr) in [
            (&self.client, VIP6_IN, "2001:db8:1::10/64"),
            (&self.server, VIP6_OUT, "2001:db8:2::10/64"),
        ] {
            ipw(&format!("-n {} -6 addr add {cidr} dev eth0 nodad", ns.name));
            ipw(&format!("-n {} -6 route add default via {gw}", ns.name));
        }
        for (ns, host) in [(&self.a, 2), (&self.b, 3)] {
            for (dev, net) in [("in0", 1), ("out0", 2)] {
                ipw(&format!(
                    "-n {} -6 addr add 2001:db8:{net}::{host}/64 dev {dev} nodad",
                    ns.name
                ));
            }
        }
    }

    /// [`Self::config`] with an IPv6 VIP on each side too, and a service
    /// set without NAT for the inside IPv6 prefix ahead of the NAPT44 one
    /// (which drops what it cannot translate).
    fn config6(node: &str) -> String {
        Self::config(node)
            .replace(
                "vip = [",
                &format!(
                    "vip = [{{ interface = \"inside\", address = \"{VIP6_IN}\" }}, \
                     {{ interface = \"outside\", address = \"{VIP6_OUT}\" }}, "
                ),
            )
            .replace(
                "[[service_set]]\nname = \"lab\"",
                "[[service_set]]\nname = \"lab6\"\ninside_prefixes = [\"2001:db8:1::/64\"]\n\
                 [[service_set]]\nname = \"lab\"",
            )
    }

    /// A MASTER, then B joined as STANDBY and Hot.
    fn start(&self) -> Result<(Daemon, Daemon), Failed> {
        self.start_with(Self::config)
    }

    fn start_with(&self, config: fn(&str) -> String) -> Result<(Daemon, Daemon), Failed> {
        let a = Daemon::start(&self.a, &config("a"));
        wait("A MASTER holding the VIP", || {
            state(&a) == Some(2) && holds_vip(&self.a)
        })?;
        let b = Daemon::start(&self.b, &config("b"));
        wait("B STANDBY", || state(&b) == Some(3))?;
        wait_ha(&b, "B hot", |v| {
            v["role"] == "backup" && v["synchronization"] == "hot"
        })?;
        check(!holds_vip(&self.b), "the STANDBY holds no VIP")?;
        Ok((a, b))
    }
}

/// The daemon's `tandem_ha_state` gauge.
fn state(d: &Daemon) -> Option<u64> {
    gauge(d, "tandem_ha_state")
}

fn gauge(d: &Daemon, name: &str) -> Option<u64> {
    let path = tandem_control::stats::segment_path(&d.instance);
    let r = tandem_control::stats::SegmentReader::open(&path).ok()?;
    r.entries
        .iter()
        .find(|e| e.name == name)
        .map(|e| r.value(e.slot))
}

fn holds_vip(ns: &Ns) -> bool {
    holds(ns, "in0", "198.18.1.1/32")
}

fn wait(what: &str, ok: impl Fn() -> bool) -> Result<Duration, Failed> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("timed out waiting for {what}").into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(start.elapsed())
}

/// An echo server in the server namespace until `stop`.
fn echo_server(lab: &Lab, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    echo_server_on(lab, SERVER, stop)
}

fn echo_server_on(lab: &Lab, addr: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    echo_server_in(&lab.server, addr, stop)
}

/// An echo server in `ns` at `addr` until `stop`.
fn echo_server_in(ns: &Ns, addr: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let addr: std::net::IpAddr = addr.parse().expect("server address");
    let l = ns.enter(move || TcpListener::bind((addr, PORT)).expect("bind echo server"));
    l.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let stop = Arc::clone(&stop);
                    thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 256];
                        while !stop.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// Connections that echo 32 bytes every 10 ms until `stop`; each thread
/// returns its longest gap between answers, or why it failed.
fn hold(
    lab: &Lab,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Result<Duration, String>>> {
    hold_to(lab, SERVER, n, stop)
}

fn hold_to(
    lab: &Lab,
    server: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Result<Duration, String>>> {
    let to = std::net::SocketAddr::new(server.parse().expect("server address"), PORT);
    hold_from(&lab.client, to, n, stop)
}

/// [`hold`] from namespace `ns` to `to`.
fn hold_from(
    ns: &Ns,
    to: std::net::SocketAddr,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Result<Duration, String>>> {
    (0..n)
        .map(|i| {
            let s = ns.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)));
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let mut s = s.map_err(|e| format!("connection {i}: connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                let (mut msg, mut back) = ([0u8; 32], [0u8; 32]);
                let mut last = Instant::now();
                let mut worst = Duration::ZERO;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    msg[..8].copy_from_slice(&round.to_be_bytes());
                    msg[8] = i as u8;
                    s.write_all(&msg)
                        .and_then(|()| s.read_exact(&mut back))
                        .map_err(|e| format!("connection {i} round {round}: {e}"))?;
                    if back != msg {
                        return Err(format!("connection {i} round {round}: echo mismatch"));
                    }
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                    round += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(worst)
            })
        })
        .collect()
}

/// Joins the held connections: all must have survived; the longest gap.
fn survivors(h: Vec<thread::JoinHandle<Result<Duration, String>>>) -> Result<Duration, Failed> {
    let n = h.len();
    let results: Vec<_> = h
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())))
        .collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    check(
        failed.is_empty(),
        format!(
            "{} of {n} connections failed; first: {:?}",
            failed.len(),
            failed.first()
        ),
    )?;
    Ok(results.into_iter().flatten().max().unwrap_or_default())
}

fn sigkill_of_the_master_keeps_connections_and_it_rejoins_standby() -> Result<(), Failed> {
    let lab = Lab::new();
    let (mut a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 30, &stop);
    thread::sleep(Duration::from_secs(1));
    wait("B to hold A's 30 sessions", || {
        count(&b).is_ok_and(|c| c >= 30)
    })?;

    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(a.pid(), libc::SIGKILL) };
    let took = wait("B MASTER holding the VIP", || {
        state(&b) == Some(2) && holds_vip(&lab.b)
    })?;
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("sigkill: B took over after {took:?}; longest gap {gap:?}");
    let b_log = b.log_text();
    check(b_log.contains("peer dead"), "B saw the peer die")?;
    check(
        b.counter("ha.monitored.peer_dead.received") == 1
            && b.counter("ha.transition.acquire_auto.received") == 1,
        "B counted the peer's death and its acquisition",
    )?;
    let (punted, forwarded) = (b.counter("worker.punted"), b.counter("worker.forwarded"));
    check(
        punted * 20 < forwarded,
        format!(
            "B forwards (only the first packets wait for ARP): {punted} punted, {forwarded} forwarded"
        ),
    )?;

    // The killed A's kernel does not hold the pool address: a segment
    // that still reaches it (the server's entry not yet moved) is dropped,
    // not answered with a reset that would kill the connection.
    let mac = lab.a.mac("out0").map(|b| format!("{b:02x}")).join(":");
    let srv = &lab.server.name;
    ipw(&format!(
        "-n {srv} neigh replace {POOL} lladdr {mac} dev eth0 nud permanent"
    ));
    let to = std::net::SocketAddr::new(POOL.parse()?, PORT);
    let syn = lab
        .server
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_millis(300)));
    ipw(&format!("-n {srv} neigh del {POOL} dev eth0"));
    match syn {
        Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
        other => {
            return Err(format!("a SYN to the pool address at the killed A: {other:?}").into());
        }
    }

    // A comes back: it drops what the killed daemon left on its
    // interfaces, joins as STANDBY and cold-syncs B's sessions.
    let (st, _) = a.signal_and_wait(libc::SIGKILL);
    check(!st.success(), "A was killed")?;
    let a2 = Daemon::start(&lab.a, &Lab::config("a"));
    wait("A STANDBY", || state(&a2) == Some(3))?;
    check(
        !holds_vip(&lab.a),
        "the restarted A removed the VIPs it had left",
    )?;
    wait_ha(&a2, "A hot", |v| {
        v["role"] == "backup" && v["synchronization"] == "hot"
    })?;
    check(state(&b) == Some(2), "B is still MASTER")?;
    check(
        count(&a2)? == count(&b)?,
        format!("A holds B's sessions: {} vs {}", count(&a2)?, count(&b)?),
    )?;
    Ok(())
}

/// `tandemctl request WORDS` for `d`.
fn ctl(d: &Daemon, words: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::netns::tandemstat_path().with_file_name("tandemctl"))
        .args(["--instance", &d.instance, "request"])
        .args(words)
        .output()
        .expect("tandemctl")
}

fn manual_switchover_and_back() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    // A release on the STANDBY, an acquire on the MASTER: refused, said why.
    let o = ctl(&b, &["release"]);
    check(
        o.status.code() == Some(1) && String::from_utf8_lossy(&o.stderr).contains("not MASTER"),
        format!("release on the standby: {o:?}"),
    )?;
    let o = ctl(&b, &["acquire"]);
    check(o.status.success(), format!("acquire on B: {o:?}"))?;
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY", || state(&a) == Some(3) && !holds_vip(&lab.a))?;
    thread::sleep(Duration::from_millis(500));
    let o = ctl(&b, &["release"]);
    check(o.status.success(), format!("release on B: {o:?}"))?;
    wait("A MASTER again", || {
        state(&a) == Some(2) && holds_vip(&lab.a)
    })?;
    wait("B STANDBY again", || state(&b) == Some(3))?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("switchover and back: longest gap {gap:?}");
    check(
        b.counter("ha.transition.acquire_manual.received") == 1
            && b.counter("ha.transition.release_manual.received") == 2
            && b.counter("ha.transition.release_manual.ignored") == 1,
        "B counted its manual requests",
    )?;
    check(
        a.counter("ha.monitored.peer_acquire.received") >= 1
            && a.counter("ha.transition.release_auto.received") == 1,
        "A released on B's request",
    )?;
    Ok(())
}

fn link_down_on_the_master_and_a_sync_partition_alone() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    // The sync link alone fails: the inside heartbeat still flows, so
    // nothing changes hands.
    ipw(&format!("-n {} link set sync0 down", lab.a.name));
    thread::sleep(Duration::from_millis(600));
    check(
        state(&a) == Some(2) && state(&b) == Some(3),
        format!(
            "states after the sync cut: A {:?} B {:?}",
            state(&a),
            state(&b)
        ),
    )?;
    check(
        gauge(&b, "tandem_ha_peer_alive") == Some(1),
        "B still hears A",
    )?;
    check(
        b.counter("ha.sync0.path_down") == 1 && b.counter("ha.monitored.peer_dead.received") == 0,
        "one path down, the peer alive",
    )?;
    ipw(&format!("-n {} link set sync0 up", lab.a.name));
    wait_ha(&b, "B hot again", |v| v["synchronization"] == "hot")?;

    // The master's monitored outside link goes down: it hands over.
    ipw(&format!("-n {} link set out0 down", lab.a.name));
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY-WARNED", || state(&a) == Some(4))?;
    check(
        gauge(&a, "tandem_ha_healthy") == Some(0),
        "A's health failed",
    )?;
    check(
        a.counter("ha.monitored.link_down.received") == 1
            && a.counter("ha.transition.release_auto.received") == 1,
        "A counted the link-down and its release",
    )?;
    // Repaired, A becomes an eligible STANDBY; no preemption.
    ipw(&format!("-n {} link set out0 up", lab.a.name));
    wait("A STANDBY", || state(&a) == Some(3))?;
    thread::sleep(Duration::from_millis(300));
    check(state(&b) == Some(2), "B stays MASTER")?;
    Ok(())
}

/// Sets A's three links down or up within microseconds (one `ip -batch`).
fn box_links(lab: &Lab, how: &str) -> Result<(), Failed> {
    let mut c = std::process::Command::new("ip")
        .args(["-n", &lab.a.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    c.stdin.take().ok_or("stdin")?.write_all(
        format!("link set sync0 {how}\nlink set in0 {how}\nlink set out0 {how}\n").as_bytes(),
    )?;
    check(c.wait()?.success(), format!("ip -batch: A's links {how}"))
}

fn box_death_then_a_full_partition_heals_to_one_master() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    wait("B to hold A's 20 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;

    // Box death: every link of A at once. B hears nothing more on either
    // path and takes over after 3 keepalives.
    let t0 = Instant::now();
    box_links(&lab, "down")?;
    wait("B MASTER holding the VIP", || {
        state(&b) == Some(2) && holds_vip(&lab.b)
    })?;
    let took = t0.elapsed();
    check(
        b.counter("ha.monitored.peer_dead.received") == 1,
        "B declared A dead",
    )?;
    // 3 keepalives of 50 ms, and scheduling slack on a loaded 2-core box;
    // the figure itself is for the bench, this catches a detector that
    // waits for something else (the sync link's 3 s silence, say).
    check(
        took < Duration::from_secs(1),
        format!("B took over {took:?} after the box died"),
    )?;
    thread::sleep(Duration::from_millis(500));

    // A's links return. It heard B's death only because its own links
    // were gone: it must wait, hear B MASTER and join as STANDBY, not take
    // mastership back.
    let acquired = a.counter("ha.transition.acquire_auto.received");
    box_links(&lab, "up")?;
    wait("A STANDBY", || state(&a) == Some(3))?;
    wait_ha(&a, "A hot", |v| {
        v["role"] == "backup" && v["synchronization"] == "hot"
    })?;
    check(
        a.counter("ha.transition.acquire_auto.received") == acquired && state(&b) == Some(2),
        "B stays MASTER; A never took mastership back",
    )?;
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("box death: B took over after {took:?}; longest gap {gap:?}");

    // Full partition, no link down: sync0 cut by A's side, the heartbeats
    // on the inside segment dropped by the switch. Both are healthy and
    // hear nobody: A becomes MASTER too.
    let sw = &lab.sw.name;
    ipw(&format!("-n {} link set sync0 down", lab.a.name));
    let rules = "add table bridge part\n\
                 add chain bridge part hb { type filter hook forward priority 0; }\n\
                 add rule bridge part hb udp dport 7469 drop\n";
    let mut c = std::process::Command::new("ip")
        .args(["netns", "exec", sw, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    c.stdin.take().ok_or("stdin")?.write_all(rules.as_bytes())?;
    check(c.wait()?.success(), "nft: drop heartbeats on the switch")?;
    wait("dual MASTER under the partition", || {
        state(&a) == Some(2) && state(&b) == Some(2)
    })?;
    let b_released = b.counter("ha.transition.release_auto.received");
    // Healed: the newer term keeps A (it became MASTER during the
    // partition, after B, and announced itself last); B releases and
    // cold-syncs from A.
    ipw(&format!("netns exec {sw} nft delete table bridge part"));
    ipw(&format!("-n {} link set sync0 up", lab.a.name));
    wait("one MASTER after the heal", || {
        state(&a) == Some(2) && state(&b) == Some(3)
    })?;
    wait("only A holds the VIP", || {
        holds_vip(&lab.a) && !holds_vip(&lab.b)
    })?;
    check(
        b.counter("ha.transition.release_auto.received") == b_released + 1,
        "B released once",
    )?;
    wait_ha(&b, "B hot after the heal", |v| {
        v["role"] == "backup" && v["synchronization"] == "hot"
    })?;
    thread::sleep(Duration::from_millis(500));
    check(
        state(&a) == Some(2) && state(&b) == Some(3),
        "it stays that way",
    )?;
    Ok(())
}

/// `tandemstat --instance X ARGS` output; it must succeed.
fn stat(d: &Daemon, args: &[&str]) -> Result<String, Failed> {
    let o = crate::netns::tandemstat(&d.instance).args(args).output()?;
    check(
        o.status.success(),
        format!(
            "tandemstat {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    )?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn stat_json(d: &Daemon, args: &[&str]) -> Result<serde_json::Value, Failed> {
    Ok(serde_json::from_str(&stat(d, args)?)?)
}

fn probe_failure_hands_over_and_the_views_show_it() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    // Healthy pair, as the views tell it.
    wait("A's probes ok", || {
        gauge(&a, "tandem_ha_probe_state") == Some(1)
    })?;
    check(
        stat(&a, &["-g", "-P", "-o", "state,fdt,interfaces"])? == "ok:1.00s:in0 out0\n",
        "A: group ok, FDT 1 s, both interfaces active",
    )?;
    check(
        stat(&b, &["-g", "-P", "-o", "interfaces"])? == "(in0) (out0)\n",
        "B: interfaces functioning, not used",
    )?;
    let targets = stat(&a, &["-t", "-P", "-o", "interface,mode,testaddr,targets"])?;
    check(
        targets == "in0:static:198.18.1.2:198.18.1.10\nout0:static:198.18.2.2:198.18.2.10\n",
        format!("A's targets: {targets:?}"),
    )?;
    let rg = stat_json(&a, &["redundancy-group", "--json"])?;
    check(
        rg["local_state"] == "MASTER" && rg["peer_state"] == "STANDBY" && rg["health"] == "passed",
        format!("A's redundancy group: {rg}"),
    )?;
    let peer = stat_json(&b, &["peer", "--json"])?;
    check(
        peer["peer_state"] == "MASTER"
            && peer["paths"].as_array().is_some_and(|p| {
                p.len() == 2
                    && p.iter()
                        .all(|p| p["alive"] == true && p["received"].as_u64() > Some(0))
            }),
        format!("B's view of A: {peer}"),
    )?;
    let probes = stat(&a, &["-p", "-c", "4", "-P", "-o", "interface,target,rtt"])?;
    check(
        probes.lines().count() == 4
            && probes.lines().all(|l| {
                (l.starts_with("in0:198.18.1.10:") || l.starts_with("out0:198.18.2.10:"))
                    && l.ends_with("ms")
            }),
        format!("A's probe stream: {probes:?}"),
    )?;

    // The server stops answering A's probes (nothing else changes: the
    // link stays up, B still reaches it). Five lost probes fail out0 on A
    // within its 1 s FDT, a critical check: A hands over.
    let server_fw = "add table ip pf\n\
                     add chain ip pf in { type filter hook input priority 0; }\n\
                     add rule ip pf in ip saddr 198.18.2.2 icmp type echo-request drop\n";
    let mut c = lab
        .server
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .ok_or("stdin")?
        .write_all(server_fw.as_bytes())?;
    check(c.wait()?.success(), "nft: the server ignores A's probes")?;
    let took = wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY-WARNED hearing B MASTER", || {
        state(&a) == Some(4) && gauge(&a, "tandem_ha_peer_state") == Some(2)
    })?;
    eprintln!("probe failure: B MASTER {took:?} after the server went silent to A");
    check(
        a.counter("ha.monitored.probe_failure.received") == 1
            && a.counter("ha.transition.release_auto.received") == 1,
        "A counted the probe failure and its release",
    )?;
    check(
        stat(&a, &["-g", "-P", "-o", "state,interfaces"])? == "degraded:(in0) [out0]\n",
        "A: group degraded, out0 unusable",
    )?;
    let i = stat(&a, &["-i", "-P", "-o", "interface,link,probe,state"])?;
    check(
        i == "in0:up:ok:ok\nout0:up:failed:failed\n",
        format!("A's interfaces: {i:?}"),
    )?;
    let rg = stat_json(&a, &["redundancy-group", "--json"])?;
    check(
        rg["health"] == "failed"
            && rg["failed_interfaces"] == serde_json::json!(["out0"])
            && rg["failed_checks"][0]["check"] == "probe-failure"
            && rg["local_state"] == "STANDBY-WARNED"
            && rg["peer_state"] == "MASTER",
        format!("A's redundancy group: {rg}"),
    )?;
    let brief = stat(&a, &["redundancy-group", "brief"])?;
    check(
        brief.contains("Redundancy Set health status         : Failed")
            && brief.contains("out0: probe-failure"),
        format!("A's brief view: {brief}"),
    )?;
    let addrs = stat(&b, &["-a", "-P", "-o", "address,state,inbound"])?;
    check(
        addrs == "198.18.1.1:up:in0\n198.18.2.1:up:out0\n198.18.2.100:up:out0\n",
        format!("B holds every address: {addrs:?}"),
    )?;
    let ext = stat(&a, &["redundancy-group", "extensive"])?;
    check(
        ext.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Probe", "failure", "1", "0"]),
        format!("A's extensive view counts the probe failure: {ext}"),
    )?;

    // Answered again: ten in a row repair out0 and A is an eligible
    // STANDBY; no preemption.
    check(
        lab.server
            .cmd("nft")
            .args(["delete", "table", "ip", "pf"])
            .status()?
            .success(),
        "nft: the server answers again",
    )?;
    wait("A STANDBY", || state(&a) == Some(3))?;
    check(
        gauge(&a, "tandem_ha_healthy") == Some(1) && state(&b) == Some(2),
        "A healthy, B still MASTER",
    )?;
    check(
        stat(&a, &["-g", "-P", "-o", "state"])? == "ok\n",
        "A's group ok again",
    )?;
    Ok(())
}

/// The link-layer address `ns` has for neighbour `ip`, if any.
fn neighbour(ns: &Ns, ip: &str) -> Option<String> {
    let out = ns
        .cmd("ip")
        .args(["-6", "neigh", "show", ip, "dev", "eth0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

fn mac(ns: &Ns, dev: &str) -> Result<String, Failed> {
    let out = ns
        .cmd("cat")
        .arg(format!("/sys/class/net/{dev}/address"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn holds(ns: &Ns, dev: &str, cidr: &str) -> bool {
    let out = ns.cmd("ip").args(["-o", "addr", "show", dev]).output();
    out.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .any(|w| w == cidr)
    })
}

/// IPv6 VIPs are the hosts' gateways. The MASTER holds them as /128s;
/// when it dies, the new MASTER adds them and announces them with
/// unsolicited neighbour advertisements, which move the client's and the
/// server's neighbour entries to its MACs at once (NUD alone would take
/// seconds): IPv6 connections through the pair survive like IPv4 ones.
fn ipv6_vips_move_with_unsolicited_advertisements() -> Result<(), Failed> {
    let lab = Lab::new();
    lab.add_ipv6();
    let (mut a, b) = lab.start_with(Lab::config6)?;
    let vip_in = format!("{VIP6_IN}/128");
    let vip_out = format!("{VIP6_OUT}/128");
    check(
        holds(&lab.a, "in0", &vip_in) && holds(&lab.a, "out0", &vip_out),
        "A holds both IPv6 VIPs as /128s",
    )?;
    check(
        !holds(&lab.b, "in0", &vip_in) && !holds(&lab.b, "out0", &vip_out),
        "the STANDBY holds no IPv6 VIP",
    )?;
    let rows = stat(&b, &["-a", "-P", "-o", "address,state"])?;
    check(
        rows.contains("2001\\:db8\\:1\\:\\:1:down"),
        format!("B's -a lists the IPv6 VIP as down, ':' escaped: {rows}"),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server_on(&lab, SERVER6, Arc::clone(&stop));
    let conns = hold_to(&lab, SERVER6, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    wait("B to hold A's 20 IPv6 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;
    let (a_in, a_out) = (mac(&lab.a, "in0")?, mac(&lab.a, "out0")?);
    let (b_in, b_out) = (mac(&lab.b, "in0")?, mac(&lab.b, "out0")?);
    check(
        neighbour(&lab.client, VIP6_IN).as_deref() == Some(a_in.as_str())
            && neighbour(&lab.server, VIP6_OUT).as_deref() == Some(a_out.as_str()),
        "the hosts reach their IPv6 gateways at A's MACs",
    )?;

    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(a.pid(), libc::SIGKILL) };
    let took = wait("B MASTER holding the IPv6 VIPs", || {
        state(&b) == Some(2) && holds(&lab.b, "in0", &vip_in) && holds(&lab.b, "out0", &vip_out)
    })?;
    // The killed daemon left its addresses on A, whose kernel would still
    // answer solicitations for them: only the advertisements move the
    // hosts' entries, and within a second.
    let moved = wait("the hosts' neighbour entries to move to B", || {
        neighbour(&lab.client, VIP6_IN).as_deref() == Some(b_in.as_str())
            && neighbour(&lab.server, VIP6_OUT).as_deref() == Some(b_out.as_str())
    })?;
    check(
        moved < Duration::from_secs(1),
        format!("the entries moved {moved:?} after B held the VIPs"),
    )?;
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!(
        "ipv6: B took over after {took:?}, entries moved {moved:?} later; longest gap {gap:?}"
    );
    check(
        gap < Duration::from_secs(1),
        format!("longest gap {gap:?} under a second"),
    )?;
    let rows = stat(&b, &["-a", "-P", "-o", "address,state"])?;
    check(
        rows.contains("2001\\:db8\\:2\\:\\:1:up"),
        format!("B's -a lists the outside IPv6 VIP as up: {rows}"),
    )?;

    // A restarted removes the /128s the killed daemon left and joins as
    // STANDBY.
    let _ = a.signal_and_wait(libc::SIGKILL);
    let a2 = Daemon::start(&lab.a, &Lab::config6("a"));
    wait("A STANDBY", || state(&a2) == Some(3))?;
    check(
        !holds(&lab.a, "in0", &vip_in) && !holds(&lab.a, "out0", &vip_out),
        "the restarted A removed the IPv6 VIPs it had left",
    )?;
    Ok(())
}

/// A thread of another process held in ptrace-stop: only that thread
/// stops (a signal would stop the whole process). Resumed on drop.
struct Frozen(libc::pid_t);

impl Frozen {
    fn thread(pid: i32, comm: &str) -> Result<Self, Failed> {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(Result::ok)
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm)
            })
            .and_then(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .ok_or_else(|| format!("no thread {comm} in {pid}"))?;
        // SAFETY: ptrace(2) and waitpid(2) on a thread id read from /proc;
        // the null pointers are the unused addr/data arguments.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) != 0 {
                return Err(
                    format!("PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error()).into(),
                );
            }
            let frozen = Self(tid);
            if libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) != 0 {
                return Err(
                    format!("PTRACE_INTERRUPT: {}", std::io::Error::last_os_error()).into(),
                );
            }
            let mut status = 0;
            if libc::waitpid(tid, &raw mut status, libc::__WALL) != tid {
                return Err(format!("waitpid: {}", std::io::Error::last_os_error()).into());
            }
            Ok(frozen)
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: detaching the thread this value seized resumes it.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0usize, 0usize) };
    }
}

/// A worker of the MASTER stops making progress (held in ptrace-stop, as
/// a worker stuck in a loop or a page fault would be): after `stall_ms`
/// the worker-stall check fails, a critical one, and A hands over; the
/// connections it carried survive on B. Resumed, the worker counts again
/// and A recovers to STANDBY without taking mastership back.
fn worker_stall_hands_over_and_recovers() -> Result<(), Failed> {
    fn config(node: &str) -> String {
        Lab::config(node).replace("[redundancy]\n", "[redundancy]\nstall_ms = 300\n")
    }
    let lab = Lab::new();
    let (a, b) = lab.start_with(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    wait("B to hold A's 20 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;

    let frozen = Frozen::thread(a.pid(), "tandem-w0")?;
    let took = wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY-WARNED", || state(&a) == Some(4))?;
    eprintln!("worker stall: B MASTER {took:?} after A's worker 0 stopped");
    let rg = stat_json(&a, &["redundancy-group", "brief", "--json"])?;
    check(
        rg["health"] == "failed"
            && rg["failed_checks"]
                == serde_json::json!([{"check": "worker-stall", "id": 0, "name": "worker0"}]),
        format!("A's redundancy group names the stalled worker: {rg}"),
    )?;
    check(
        a.counter("ha.monitored.worker_stall.received") == 1
            && a.counter("ha.transition.release_auto.received") == 1,
        "A counted the stall and its release",
    )?;
    check(!holds_vip(&lab.a), "A released the VIPs")?;

    drop(frozen);
    wait("A STANDBY again", || state(&a) == Some(3))?;
    let rg = stat_json(&a, &["redundancy-group", "brief", "--json"])?;
    check(
        rg["health"] == "passed" && rg["failed_checks"] == serde_json::json!([]),
        format!("A healthy again: {rg}"),
    )?;
    check(
        a.log_text().contains("worker progressing again"),
        "A saw its worker recover",
    )?;
    thread::sleep(Duration::from_millis(500));
    check(state(&b) == Some(2), "B stays MASTER (no preemption)")?;
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("worker stall: longest gap {gap:?}");
    check(
        gap < Duration::from_secs(1),
        format!("longest gap {gap:?} under a second"),
    )?;
    Ok(())
}

/// Offloaded sessions follow mastership. A UDP flow is answered through A,
/// and B learns the answer (the flow's one refresh); ten connections echo
/// twice through A; all are offloaded there. Then, with them idle, B is
/// asked to take over. A takes its offloads back as it releases; B offloads
/// the synced sessions, the UDP one too, before any of their packets
/// arrive, so the next echoes take B's fast path from the first packet:
/// B's workers receive none of them, and its listing shows the sessions
/// offloaded.
fn offloaded_sessions_follow_the_master() -> Result<(), Failed> {
    const N: u64 = 10;
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    let server_addr: std::net::IpAddr = SERVER.parse()?;
    let (usrv, ucli) = (
        lab.server
            .enter(move || std::net::UdpSocket::bind((server_addr, PORT)).expect("bind")),
        lab.client
            .enter(|| std::net::UdpSocket::bind(("198.18.1.10", 0)).expect("bind")),
    );
    usrv.set_read_timeout(Some(Duration::from_secs(3)))?;
    ucli.set_read_timeout(Some(Duration::from_secs(3)))?;
    let udp_echo = |round: u8| -> Result<(), Failed> {
        ucli.send_to(&[round; 8], (server_addr, PORT))?;
        let mut buf = [0u8; 16];
        let (n, from) = usrv.recv_from(&mut buf)?;
        usrv.send_to(&buf[..n], from)?;
        let (n, _) = ucli
            .recv_from(&mut buf)
            .map_err(|e| format!("UDP round {round}: {e}"))?;
        check(
            buf[..n] == [round; 8],
            format!("UDP round {round}: echo mismatch"),
        )
    };
    udp_echo(1)?;
    wait("B to learn the UDP flow and its answer", || {
        count(&b).is_ok_and(|c| c >= 1) && b.counter("sync.refresh_received") >= 1
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let to = std::net::SocketAddr::new(SERVER.parse()?, PORT);
    let mut conns = Vec::new();
    for _ in 0..N {
        let s = lab
            .client
            .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        conns.push(s);
    }
    let echo = |conns: &mut [TcpStream], round: u8| -> Result<(), Failed> {
        for (i, s) in conns.iter_mut().enumerate() {
            s.write_all(&[round; 16])?;
            let mut got = [0u8; 16];
            s.read_exact(&mut got)
                .map_err(|e| format!("round {round}, connection {i}: {e}"))?;
            check(got == [round; 16], format!("round {round}: echo mismatch"))?;
        }
        Ok(())
    };
    echo(&mut conns, 1)?;
    echo(&mut conns, 2)?;
    udp_echo(2)?;
    wait("A to offload the sessions", || {
        a.counter("worker.offloads_installed") > N
    })?;
    wait("B to hold the sessions", || count(&b).is_ok_and(|c| c > N))?;
    check(
        b.counter("worker.offloads_installed") == 0,
        "the STANDBY offloads nothing",
    )?;

    let o = ctl(&b, &["acquire"]);
    check(o.status.success(), format!("acquire on B: {o:?}"))?;
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY", || state(&a) == Some(3))?;
    // No packet of these sessions has reached B yet.
    let took = wait("B to offload the synced sessions", || {
        b.counter("worker.offloads_installed") > N
    })?;
    wait("A to take its offloads back", || {
        a.counter("worker.offloads_removed") > N
    })?;
    // XDP counters reach the segment every 500 ms.
    thread::sleep(Duration::from_secs(1));
    let (rx, fast) = (
        b.counter("worker.rx_packets"),
        b.counter("xdp.fast_forwarded"),
    );
    echo(&mut conns, 3)?;
    echo(&mut conns, 4)?;
    udp_echo(3)?;
    thread::sleep(Duration::from_millis(1100));
    let (rx2, fast2) = (
        b.counter("worker.rx_packets"),
        b.counter("xdp.fast_forwarded"),
    );
    eprintln!(
        "offload follows the master: B had offloaded {N} synced TCP sessions and a UDP one \
         {took:?} after both roles had changed; then {} fast-path frames, {} to its workers",
        fast2 - fast,
        rx2 - rx
    );
    check(
        rx2 == rx,
        format!(
            "B's workers received {} frames of offloaded sessions",
            rx2 - rx
        ),
    )?;
    // Two rounds, each a data segment and its ACK both ways at least.
    check(
        fast2 - fast >= 4 * N,
        format!(
            "B's fast path forwarded {} frames, want >= {}",
            fast2 - fast,
            4 * N
        ),
    )?;
    let listed = crate::sessions::sessions_json(&b, &["protocol", "tcp"])?;
    let rows = listed["sessions"].as_array().ok_or("no sessions array")?;
    check(
        rows.len() as u64 == N && rows.iter().all(|r| r["offload"] == true),
        format!("B lists {N} offloaded sessions: {listed}"),
    )?;
    let listed = crate::sessions::sessions_json(&b, &["protocol", "udp"])?;
    let rows = listed["sessions"].as_array().ok_or("no sessions array")?;
    check(
        rows.len() == 1 && rows[0]["offload"] == true,
        format!("B lists the UDP session offloaded: {listed}"),
    )?;
    stop.store(true, Ordering::Relaxed);
    drop(conns);
    let _ = server.join();
    Ok(())
}

/// With the sync link cut, B is not Hot: a plain acquire on B and a plain
/// release on A are refused and say what would be lost; the views warn;
/// a forced acquire moves mastership and counts a takeover without Hot.
fn mastership_moves_by_request_only_to_a_hot_node() -> Result<(), Failed> {
    fn config(node: &str) -> String {
        Lab::config(node).replace("[redundancy]\n", "[redundancy]\nunsynced_warn_ms = 1000\n")
    }
    let lab = Lab::new();
    let (a, b) = lab.start_with(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 5, &stop);
    wait("A's 5 sessions on B", || {
        gauge(&b, "tandem_ha_peer_sessions").is_some_and(|n| n >= 5)
    })?;
    let ready = stat_json(&b, &["redundancy-group", "--json"])?;
    check(
        ready["takeover_readiness"] == "Ready (sync Hot)" && ready["sync_state"] == "hot",
        format!("B ready: {ready}"),
    )?;
    // The inside heartbeat keeps the pair together; sync goes Off.
    ipw(&format!("-n {} link set sync0 down", lab.a.name));
    wait_ha(&b, "B's sync off", |v| v["synchronization"] == "off")?;
    wait("A sees B not Hot", || {
        gauge(&a, "tandem_ha_peer_sync_state") != Some(2)
    })?;
    let out = ctl(&b, &["acquire"]);
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(1)
            && err.contains("not Hot")
            && err.contains("sessions")
            && err.contains("--force"),
        format!("plain acquire on a cold B: {out:?}"),
    )?;
    let out = ctl(&a, &["release"]);
    check(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("the peer's sync is Off"),
        format!("plain release to a cold B: {out:?}"),
    )?;
    check(
        state(&a) == Some(2) && state(&b) == Some(3),
        "nothing moved",
    )?;
    // Past unsynced_warn_ms, every view warns, on both nodes.
    wait("the warning", || {
        gauge(&b, "tandem_ha_unsynced_warning") == Some(1)
            && gauge(&a, "tandem_ha_unsynced_warning") == Some(1)
    })?;
    let v = stat_json(&b, &["redundancy-group", "--json"])?;
    check(
        v["unsynced_warning"] == true
            && v["takeover_readiness"]
                .as_str()
                .is_some_and(|r| r.starts_with("Not ready (sync Off"))
            && v["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("not been Hot")),
        format!("B's JSON: {v}"),
    )?;
    for level in ["terse", "brief", "extensive"] {
        let t = stat(&a, &["redundancy-group", level])?;
        check(
            t.contains("Warning: the standby has not been Hot"),
            format!("A's {level} view:\n{t}"),
        )?;
    }
    let prom = stat(&b, &["prometheus"])?;
    check(
        prom.lines()
            .any(|l| l.starts_with("tandem_ha_unsynced_warning") && l.ends_with(" 1")),
        "Prometheus has the warning",
    )?;
    // A live node with redundancy and sync: every family passes promtool,
    // durations in seconds.
    let complaints = crate::netns::promtool_complaints(&prom);
    check(
        complaints.is_empty(),
        format!("promtool check metrics: {complaints}"),
    )?;
    check(
        prom.lines()
            .any(|l| l.starts_with("tandem_ha_unsynced_seconds{tandem_instance=")),
        "the unsynced time, in seconds, labelled with the instance",
    )?;
    // Forced: B takes over, and says what it cost.
    let out = ctl(&b, &["acquire", "--force"]);
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("forced"),
        format!("forced acquire: {out:?}"),
    )?;
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY", || state(&a) == Some(3))?;
    check(
        gauge(&b, "tandem_ha_takeovers_without_hot_total") == Some(1)
            && b.counter("ha.takeovers_without_hot") == 1
            && gauge(&a, "tandem_ha_takeovers_without_hot_total") == Some(0),
        "B counted one takeover without Hot",
    )?;
    stop.store(true, Ordering::Relaxed);
    // The connections were not replicated: their fate is not the point.
    let _ = survivors(conns);
    let _ = server.join();
    ipw(&format!("-n {} link set sync0 up", lab.a.name));
    wait_ha(&a, "A hot under B", |v| v["synchronization"] == "hot")?;
    wait("the warning gone", || {
        gauge(&b, "tandem_ha_unsynced_warning") == Some(0)
    })?;
    Ok(())
}

/// A panic in the sync or redundancy thread ends tandemd at once (no
/// half-dead MASTER); the peer takes over within its detection time.
fn a_panicking_thread_ends_the_daemon_and_the_peer_takes_over() -> Result<(), Failed> {
    let lab = Lab::new();
    let (mut a, mut b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    let panic = |d: &Daemon, t: &str| {
        std::process::Command::new(crate::netns::tandemstat_path().with_file_name("tandemctl"))
            .args(["--instance", &d.instance, "debug", "panic", t])
            .output()
            .expect("tandemctl")
    };
    let o = panic(&a, "sync");
    check(o.status.success(), format!("debug panic sync: {o:?}"))?;
    let t0 = Instant::now();
    while a.exited().is_none() {
        check(t0.elapsed() < Duration::from_secs(10), "A did not end")?;
        thread::sleep(Duration::from_millis(5));
    }
    let gone = t0.elapsed();
    // At once, but for the panic report: with RUST_BACKTRACE set, the
    // backtrace of a debug build takes 0.2 s to resolve, over 1 s when the
    // suite loads both CPUs.
    check(
        gone < Duration::from_secs(3),
        format!("A took {gone:?} to end"),
    )?;
    let taken = wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    eprintln!("panic in A's sync thread: A gone after {gone:?}, B MASTER after {taken:?}");
    check(
        a.log_text()
            .contains("fault injected: the sync thread panics")
            && a.log_text().contains("ending the process"),
        "A's log names the panic",
    )?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("sync-thread panic: longest gap {gap:?}");
    // The redundancy thread too.
    let o = panic(&b, "ha");
    check(o.status.success(), format!("debug panic ha: {o:?}"))?;
    let t0 = Instant::now();
    while b.exited().is_none() {
        check(t0.elapsed() < Duration::from_secs(10), "B did not end")?;
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The MAC the client resolves the inside VIP to, from scratch.
fn vip_owner(lab: &Lab) -> Option<String> {
    let c = &lab.client.name;
    ipw(&format!("-n {c} neigh flush dev eth0"));
    lab.client
        .cmd("ping")
        .args(["-c", "1", "-W", "1", "198.18.1.1"])
        .output()
        .ok()?;
    let out = lab
        .client
        .cmd("ip")
        .args(["neigh", "show", "198.18.1.1", "dev", "eth0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

/// A MASTER whose whole daemon is stopped (SIGSTOP) keeps its VIPs and
/// XDP program; its lease runs out before B takes over, so it answers no
/// ARP for the VIP (only B does) and forwards nothing. Woken, it finds
/// B MASTER with a newer term and yields; the connections live on.
fn a_frozen_master_fences_itself_and_yields_when_it_wakes() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    thread::sleep(Duration::from_secs(1));
    wait("B to hold A's 20 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;
    let b_mac = mac(&lab.b, "in0")?;
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(a.pid(), libc::SIGSTOP) };
    let frozen_at = Instant::now();
    let took = wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b));
    let result = (|| -> Result<(), Failed> {
        let took = took?;
        check(
            holds_vip(&lab.a),
            "the frozen A still has the VIP on in0 (its kernel would answer for it)",
        )?;
        for round in 0..5 {
            let owner = vip_owner(&lab);
            check(
                owner.as_deref() == Some(b_mac.as_str()),
                format!("round {round}: the VIP resolves to {owner:?}, want B's {b_mac}"),
            )?;
        }
        eprintln!("freeze: B MASTER after {took:?}");
        Ok(())
    })();
    thread::sleep(Duration::from_secs(2).saturating_sub(frozen_at.elapsed()));
    // SAFETY: as above.
    unsafe { libc::kill(a.pid(), libc::SIGCONT) };
    result?;
    if let Err(e) = wait("A yields to B (STANDBY)", || state(&a) == Some(3)) {
        let log = a.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        return Err(format!(
            "{e:?}: A {:?}, B {:?}; A's log ends:\n{}",
            state(&a),
            state(&b),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into());
    }
    wait_ha(&a, "A hot under B", |v| {
        v["role"] == "backup" && v["synchronization"] == "hot"
    })?;
    check(
        state(&b) == Some(2) && holds_vip(&lab.b) && !holds_vip(&lab.a),
        "B stays MASTER and alone holds the VIP",
    )?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("freeze of 2 s: longest gap {gap:?}");
    check(
        a.counter("ha.lease_lapses") == 1
            && a.counter("xdp.lease_expired") > 0
            && a.counter("xdp.arp_fenced") > 0,
        format!(
            "A counted its lapse ({}), frames past the lease ({}) and fenced ARP ({})",
            a.counter("ha.lease_lapses"),
            a.counter("xdp.lease_expired"),
            a.counter("xdp.arp_fenced")
        ),
    )?;
    check(
        a.counter("ha.transition.release_auto.received") >= 1,
        "A released on waking",
    )?;
    Ok(())
}

/// Heartbeats rejected on every path of `d`.
fn rejected(d: &Daemon) -> u64 {
    crate::netns::tandemstat(&d.instance)
        .args(["peer", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v["paths"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p["rejected"].as_u64()).sum())
        })
        .unwrap_or(u64::MAX)
}

/// A host on the inside LAN floods both nodes' heartbeat sockets (on in0
/// and, routed through the MASTER, on the sync addresses) with datagrams
/// and the sync port with SYNs for 6 s, as fast as it can, while A's sync
/// link goes down long enough to end the sync connection. The program drops all of it before the kernel: no state
/// changes, no heartbeat is even rejected, B reconnects and goes Hot, the
/// connections live on.
fn a_control_plane_flood_from_a_lan_changes_nothing() -> Result<(), Failed> {
    let lab = Lab::new();
    let (a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 10, &stop);
    thread::sleep(Duration::from_secs(1));
    let rejected_before = (rejected(&a), rejected(&b));
    let dropped_before = (a.counter("xdp.drop_control"), b.counter("xdp.drop_control"));
    // Half a second in, A's sync link goes down for 4 s, longer than the
    // sync link's 3 s dead time: B must dial again through the flood.
    let a_ns = lab.a.name.clone();
    let flap = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        ipw(&format!("-n {a_ns} link set sync0 down"));
        thread::sleep(Duration::from_secs(4));
        ipw(&format!("-n {a_ns} link set sync0 up"));
    });
    let established = b.counter("sync.connection_establish");
    let flood = lab.client.enter(|| {
        let s = std::net::UdpSocket::bind("198.18.1.10:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        let targets = [
            "198.18.1.2:7469",
            "198.18.1.3:7469",
            "198.18.9.1:7469",
            "198.18.9.2:7469",
        ];
        let junk = [0x5au8; 128];
        let mut syns = 0u64;
        let (mut sent, mut i) = (0u64, 0usize);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            if s.send_to(&junk, targets[i % targets.len()]).is_ok() {
                sent += 1;
            }
            i += 1;
            if i % 32 == 0 {
                // A SYN, and the socket closed at once (no RST follows
                // from SYN_SENT), so that ports are not exhausted.
                let sock = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .expect("socket");
                sock.set_nonblocking(true).expect("nonblocking");
                let to: std::net::SocketAddr = "198.18.9.1:7468".parse().expect("address");
                let _ = sock.connect(&to.into());
                syns += 1;
            }
        }
        (sent, syns)
    });
    let _ = flap.join();
    let (sent, syns) = flood;
    eprintln!("control-plane flood: {sent} datagrams and {syns} SYNs in 6 s");
    wait_ha(&b, "B hot again after the flood", |v| {
        v["synchronization"] == "hot"
    })?;
    check(
        state(&a) == Some(2) && state(&b) == Some(3),
        format!(
            "states after the flood: A {:?} B {:?}",
            state(&a),
            state(&b)
        ),
    )?;
    check(
        a.counter("ha.monitored.peer_dead.received") == 0
            && b.counter("ha.monitored.peer_dead.received") == 0,
        "neither node lost its peer",
    )?;
    check(
        b.counter("sync.connection_establish") > established,
        "B's sync link was dialed again under the flood",
    )?;
    check(
        (rejected(&a), rejected(&b)) == rejected_before,
        format!(
            "heartbeats rejected before {rejected_before:?}, after {:?}: the flood reached a \
             socket\nB: {}",
            (rejected(&a), rejected(&b)),
            stat(&b, &["peer"]).unwrap_or_default()
        ),
    )?;
    let dropped = (
        a.counter("xdp.drop_control") - dropped_before.0,
        b.counter("xdp.drop_control") - dropped_before.1,
    );
    check(
        dropped.0 + dropped.1 >= sent / 2 && dropped.0 > 0 && dropped.1 > 0,
        format!("dropped by the programs: {dropped:?} of {sent}"),
    )?;
    // Datagrams for B's sync address reach A's workers as service traffic
    // (routed to the VIP): dropped there, never punted into the sync link.
    check(
        a.counter("drop.foreign_egress") > 0,
        "A's workers dropped what was routed toward the sync link",
    )?;
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("control-plane flood: longest gap {gap:?}, dropped {dropped:?}");
    Ok(())
}

/// B configured with another key than A's: neither accepts the other's
/// heartbeats, so each takes the other for dead; that is never silent:
/// both nodes raise the key alarm in every view.
fn a_key_mismatch_is_an_alarm_in_every_view() -> Result<(), Failed> {
    let lab = Lab::new();
    let a = Daemon::start(&lab.a, &Lab::config("a"));
    wait("A MASTER", || state(&a) == Some(2))?;
    let b = Daemon::start(
        &lab.b,
        &Lab::config("b").replace("failover-test-shared-key", "another-key-given-to-b"),
    );
    wait("the key alarm on both nodes", || {
        gauge(&a, "tandem_ha_key_mismatch") == Some(1)
            && gauge(&b, "tandem_ha_key_mismatch") == Some(1)
    })?;
    for d in [&a, &b] {
        let v = stat_json(d, &["redundancy-group", "--json"])?;
        check(
            v["key_mismatch"] == true
                && v["warnings"].as_array().is_some_and(|w| {
                    w.iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains("keys differ")))
                }),
            format!("{}'s JSON: {v}", d.instance),
        )?;
        for view in [&["redundancy-group", "brief"][..], &["peer"], &["ha"], &[]] {
            let t = stat(d, view)?;
            check(
                t.contains("keys differ"),
                format!("{}'s {view:?} view:\n{t}", d.instance),
            )?;
        }
        let prom = stat(d, &["prometheus"])?;
        check(
            prom.lines()
                .any(|l| l.starts_with("tandem_ha_key_mismatch") && l.ends_with(" 1")),
            "Prometheus has the alarm",
        )?;
    }
    check(
        a.counter("ha.sync0.heartbeats_auth_failed") > 0,
        "A counted the failed heartbeats on the sync path",
    )?;
    Ok(())
}

/// A key rollover done as an operator would, one node at a time with
/// restarts: both accept the next key; B, then A, sign with it; both drop
/// the old one. At every step the pair is together and Hot (a plain
/// switchover needs Hot), no key alarm is raised, and the connections held
/// through two switchovers all survive.
fn a_key_rollover_keeps_the_pair_hot() -> Result<(), Failed> {
    const OLD: &str = "failover-test-shared-key";
    const NEW: &str = "the-next-key-of-this-pair";
    fn keyed(node: &str, key: &str, accept: Option<&str>) -> String {
        let line = format!("key = \"{key}\"\n");
        let c = Lab::config(node).replace(&format!("key = \"{OLD}\"\n"), &line);
        match accept {
            Some(k) => c.replace(&line, &format!("{line}accept_keys = [\"{k}\"]\n")),
            None => c,
        }
    }
    fn restart(mut d: Daemon, ns: &Ns, config: &str, master: &Daemon) -> Result<Daemon, Failed> {
        d.stop();
        let d = Daemon::start(ns, config);
        wait("the restarted node STANDBY", || state(&d) == Some(3))?;
        wait_ha(&d, "the restarted node Hot", |v| {
            v["synchronization"] == "hot"
        })?;
        wait("the master sees it Hot", || {
            gauge(master, "tandem_ha_peer_sync_state") == Some(2)
        })?;
        check(
            count(&d)? >= 20 && gauge(master, "tandem_ha_key_mismatch") == Some(0),
            format!(
                "{} holds the sessions, no alarm on {}",
                d.instance, master.instance
            ),
        )?;
        Ok(d)
    }
    let lab = Lab::new();
    let a = Daemon::start(&lab.a, &keyed("a", OLD, Some(NEW)));
    wait("A MASTER", || state(&a) == Some(2) && holds_vip(&lab.a))?;
    let b = Daemon::start(&lab.b, &keyed("b", OLD, Some(NEW)));
    wait_ha(&b, "B hot", |v| v["synchronization"] == "hot")?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    wait("B holds A's 20 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;
    // B signs with the new key; A accepts it.
    let b = restart(b, &lab.b, &keyed("b", NEW, Some(OLD)), &a)?;
    let o = ctl(&b, &["acquire"]);
    check(o.status.success(), format!("plain acquire on B: {o:?}"))?;
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait("A STANDBY", || state(&a) == Some(3))?;
    // A signs with the new key and accepts no other.
    let a = restart(a, &lab.a, &keyed("a", NEW, None), &b)?;
    let o = ctl(&b, &["release"]);
    check(o.status.success(), format!("plain release on B: {o:?}"))?;
    wait("A MASTER", || state(&a) == Some(2) && holds_vip(&lab.a))?;
    wait("B STANDBY", || state(&b) == Some(3))?;
    // B accepts no other either: the old key is gone from the pair.
    let b = restart(b, &lab.b, &keyed("b", NEW, None), &a)?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("key rollover: longest gap {gap:?}");
    for d in [&a, &b] {
        check(
            gauge(d, "tandem_ha_key_mismatch") == Some(0)
                && d.counter("ha.sync0.heartbeats_auth_failed") == 0,
            format!("{}: no alarm, no heartbeat refused", d.instance),
        )?;
    }
    Ok(())
}

/// With preemption on, A (the higher priority) joins a MASTER B while
/// A's sync link is down: A waits as STANDBY, not Hot, well past the
/// hold-down. Once its sync link is up and it is Hot, it takes mastership
/// back, and every connection held through it survives.
fn preemption_waits_for_hot() -> Result<(), Failed> {
    fn config(node: &str) -> String {
        Lab::config(node).replace("[redundancy]\n", "[redundancy]\npreempt = true\n")
    }
    let lab = Lab::new();
    let b = Daemon::start(&lab.b, &config("b"));
    wait("B MASTER alone", || {
        state(&b) == Some(2) && holds_vip(&lab.b)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    ipw(&format!("-n {} link set sync0 down", lab.a.name));
    let a = Daemon::start(&lab.a, &config("a"));
    wait("A STANDBY", || state(&a) == Some(3))?;
    // Three hold-downs (1 s each): a preemption would have happened.
    thread::sleep(Duration::from_secs(3));
    let v = stat_json(&a, &["redundancy-group", "--json"])?;
    check(
        state(&a) == Some(3) && state(&b) == Some(2) && v["sync_state"] != "hot",
        format!("A did not preempt while not Hot: {v}"),
    )?;
    ipw(&format!("-n {} link set sync0 up", lab.a.name));
    let took = wait("A MASTER once Hot", || {
        state(&a) == Some(2) && holds_vip(&lab.a)
    })?;
    wait("B STANDBY", || state(&b) == Some(3))?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("preemption after Hot: took {took:?}, longest gap {gap:?}");
    let (auto, cold) = (
        a.counter("ha.transition.acquire_auto.received"),
        a.counter("ha.takeovers_without_hot"),
    );
    check(
        auto == 1 && cold == 0,
        format!("A preempted once, with Hot: {auto} automatic acquisitions, {cold} without Hot"),
    )?;
    Ok(())
}

/// A rolling change: B restarted with one more firewall rule than A is
/// Hot again (what may differ does not stop sync), and a switchover to B
/// and back keeps every connection. B restarted with another NAT port
/// range is refused, the refusal names the field, and B is not Hot.
fn a_rolling_rule_change_keeps_sync_and_a_pool_change_is_refused() -> Result<(), Failed> {
    const RULE: &str = "[[service_set.firewall.rules]]\nname = \"no-telnet\"\n\
                        protocol = \"tcp\"\ndestination_ports = 23\naction = \"reject\"\n";
    let lab = Lab::new();
    let (a, mut b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 20, &stop);
    wait("B holds A's 20 sessions", || {
        count(&b).is_ok_and(|c| c >= 20)
    })?;
    b.stop();
    let mut b = Daemon::start(&lab.b, &format!("{}{RULE}", Lab::config("b")));
    wait("B STANDBY", || state(&b) == Some(3))?;
    wait_ha(&b, "B Hot with its extra rule", |v| {
        v["synchronization"] == "hot"
    })?;
    let o = ctl(&b, &["acquire"]);
    check(o.status.success(), format!("plain acquire on B: {o:?}"))?;
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    wait_ha(&a, "A Hot under B", |v| v["synchronization"] == "hot")?;
    // B hears it from A's heartbeats a moment later.
    wait("B sees A Hot", || {
        gauge(&b, "tandem_ha_peer_sync_state") == Some(2)
    })?;
    let o = ctl(&b, &["release"]);
    check(o.status.success(), format!("plain release on B: {o:?}"))?;
    wait("A MASTER again", || {
        state(&a) == Some(2) && holds_vip(&lab.a)
    })?;
    wait("B STANDBY again", || state(&b) == Some(3))?;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("rolling rule change: longest gap {gap:?}");
    // A pool's port range must agree.
    b.stop();
    let b = Daemon::start(
        &lab.b,
        &Lab::config("b").replace("20000-29999", "20000-29000"),
    );
    wait("B STANDBY", || state(&b) == Some(3))?;
    wait("the refusal in B's log", || {
        b.log_text().contains("service_set[0].nat.ports")
    })?;
    let v = stat_json(&b, &["redundancy-group", "--json"])?;
    check(
        v["sync_state"] != "hot",
        format!("B is not Hot with another port range: {v}"),
    )?;
    check(
        a.counter("sync.refused_connections") + b.counter("sync.refused_connections") > 0,
        "the refusal is counted",
    )?;
    Ok(())
}

/// Worker counts may differ: A runs one worker, B two. B holds each of
/// A's NAT sessions on the worker whose port share holds its binding, with
/// a stub on the worker the flow's hash picks, and refuses none. A is
/// killed: B carries every connection. A comes back with its one worker
/// and cold-syncs from B; B is killed: A carries every connection again.
fn worker_counts_may_differ() -> Result<(), Failed> {
    fn config(node: &str) -> String {
        let workers = if node == "a" { 1 } else { 2 };
        Lab::config(node).replace(
            "[dataplane]\n",
            &format!("[dataplane]\nworkers = {workers}\n"),
        )
    }
    let lab = Lab::new();
    let (mut a, mut b) = lab.start_with(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab, Arc::clone(&stop));
    let conns = hold(&lab, 40, &stop);
    wait("B holds A's 40 sessions, digests agreeing", || {
        count(&b).is_ok_and(|c| c >= 40)
            && stat_json(&b, &["ha", "--json"]).is_ok_and(|v| v["digest_match"] == true)
    })?;
    check(
        b.counter("sync.add_nack_sent") == 0 && b.counter("sync.install_failures") == 0,
        "B refused none of A's sessions",
    )?;
    let _ = a.signal_and_wait(libc::SIGKILL);
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    thread::sleep(Duration::from_secs(1));
    let a = Daemon::start(&lab.a, &config("a"));
    wait("A STANDBY", || state(&a) == Some(3))?;
    wait_ha(&a, "A Hot under B", |v| {
        v["synchronization"] == "hot" && v["digest_match"] == true
    })?;
    check(
        count(&a)? == count(&b)? && a.counter("sync.add_nack_sent") == 0,
        format!("A holds B's sessions: {} vs {}", count(&a)?, count(&b)?),
    )?;
    let _ = b.signal_and_wait(libc::SIGKILL);
    wait("A MASTER", || state(&a) == Some(2) && holds_vip(&lab.a))?;
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    let _ = server.join();
    eprintln!("1 and 2 workers, two failovers: longest gap {gap:?}");
    Ok(())
}

/// A UDP echo server in the lab's server at `addr:9100` that answers
/// every datagram and records its source, until `stop`.
fn udp_echo(
    lab: &Lab,
    addr: &'static str,
    stop: Arc<AtomicBool>,
) -> (
    Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    thread::JoinHandle<()>,
) {
    let s = lab
        .server
        .enter(move || std::net::UdpSocket::bind((addr, 9100)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let h = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                log.lock().unwrap().push(from);
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    (seen, h)
}

/// A forwarded port across a failover: connections from the server to
/// the pool address's forwarded port reach the inside host's echo
/// server on A; A is SIGKILLed; they go on through B, which then takes
/// new ones to the forward too. The sessions are listed with their
/// translated destination on both nodes. A static translation's outside
/// address moves with the pool's: the server reaches the static host
/// through B.
fn a_forwarded_port_keeps_working() -> Result<(), Failed> {
    fn config(node: &str) -> String {
        format!(
            "{}[[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"{POOL}:8080\"\n\
             inside = \"198.18.1.10:{PORT}\"\n\
             [[service_set.nat.static]]\ninside = \"198.18.1.11\"\noutside = \"198.18.2.120\"\n",
            Lab::config(node)
        )
    }
    let lab = Lab::new();
    ipw(&format!(
        "-n {} addr add 198.18.1.11/24 dev eth0",
        lab.client.name
    ));
    let (mut a, b) = lab.start_with(config)?;
    let static_host = lab
        .client
        .enter(|| std::net::UdpSocket::bind("198.18.1.11:5000").expect("bind"));
    static_host.set_read_timeout(Some(Duration::from_millis(300)))?;
    let server = lab
        .server
        .enter(|| std::net::UdpSocket::bind((SERVER, 0)).expect("bind"));
    // The static host hears the server at its outside address (a few
    // tries: the first meets an unresolved neighbour, or a takeover).
    let reach_static = || -> Result<(), Failed> {
        for _ in 0..10 {
            server.send_to(b"hi", "198.18.2.120:5000")?;
            let mut buf = [0u8; 8];
            if let Ok((_, from)) = static_host.recv_from(&mut buf) {
                return check(
                    from.ip().to_string() == SERVER,
                    format!("the static host heard {from}"),
                );
            }
        }
        Err("the static host heard nothing at 198.18.2.120".into())
    };
    reach_static()?;
    let stop = Arc::new(AtomicBool::new(false));
    let inside = echo_server_in(&lab.client, "198.18.1.10", Arc::clone(&stop));
    let to: std::net::SocketAddr = format!("{POOL}:8080").parse().expect("forward");
    let conns = hold_from(&lab.server, to, 10, &stop);
    wait("B to hold the 10 forwarded sessions", || {
        count(&b).is_ok_and(|c| c >= 10)
    })?;
    let listed = |d: &Daemon| -> Result<usize, Failed> {
        let v = stat_json(d, &["sessions", "destination-port", "8080", "--json"])?;
        Ok(v["sessions"].as_array().map_or(0, |rows| {
            rows.iter()
                .filter(|r| {
                    r["nat_destination"] == "198.18.1.10"
                        && r["nat_destination_port"] == u64::from(PORT)
                        && r["direction"] == "O"
                })
                .count()
        }))
    };
    let (on_a, on_b) = (listed(&a)?, listed(&b)?);
    check(
        on_a == 10 && on_b == 10,
        format!("forwarded sessions listed: A {on_a}, B {on_b}"),
    )?;
    thread::sleep(Duration::from_millis(300));
    let _ = a.signal_and_wait(libc::SIGKILL);
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    reach_static()?;
    // New connections to the forward, through B.
    let fresh = hold_from(&lab.server, to, 3, &stop);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let gap = survivors(conns)?;
    survivors(fresh)?;
    let _ = inside.join();
    eprintln!("forwarded port across a failover: 10/10 kept, longest gap {gap:?}");
    Ok(())
}

/// Endpoint-independent mappings reach the standby with their sessions:
/// after A is killed, one inside socket's new session on B (toward a
/// second server) leaves from the external address and port A mapped the
/// socket to, and its first session goes on from the same pair.
fn an_endpoint_keeps_its_mapping() -> Result<(), Failed> {
    let lab = Lab::new();
    ipw(&format!(
        "-n {} addr add 198.18.2.11/24 dev eth0",
        lab.server.name
    ));
    let (mut a, b) = lab.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen1, h1) = udp_echo(&lab, SERVER, Arc::clone(&stop));
    let (seen2, h2) = udp_echo(&lab, "198.18.2.11", Arc::clone(&stop));
    let cli = lab
        .client
        .enter(|| std::net::UdpSocket::bind("198.18.1.10:40000").expect("bind"));
    cli.set_read_timeout(Some(Duration::from_millis(500)))?;
    let echo = |to: &str| -> Result<(), Failed> {
        // A few tries: the first may meet a failover in progress.
        for _ in 0..10 {
            cli.send_to(b"ping", (to, 9100))?;
            let mut buf = [0u8; 64];
            if cli.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        Err(format!("no echo from {to}").into())
    };
    echo(SERVER)?;
    // Two more sockets of the same host, and one of the second host's
    // kind is not needed: the subscriber's block and counts must match.
    let more: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| {
            lab.client
                .enter(|| std::net::UdpSocket::bind("198.18.1.10:0").expect("bind"))
        })
        .collect();
    for s in &more {
        s.send_to(b"ping", (SERVER, 9100))?;
    }
    wait("B holds the sessions", || count(&b).is_ok_and(|c| c >= 3))?;
    // The standby's pools as the master's: the subscriber, its ports and
    // sessions, its block and its pool address (replicated mappings).
    let view = |d: &Daemon| -> Result<serde_json::Value, Failed> {
        let v = stat_json(d, &["nat", "--json"])?;
        Ok(serde_json::json!([
            v["service_sets"][0]["top_subscribers"],
            v["service_sets"][0]["addresses"][0]["ports_in_use"],
            v["service_sets"][0]["addresses"][0]["blocks_in_use"],
        ]))
    };
    let (on_a, on_b) = (view(&a)?, view(&b)?);
    check(
        on_a == on_b && on_a[0][0]["ports"] == 3 && on_a[0][0]["blocks"] == 1,
        format!("tandemstat nat: A {on_a}, B {on_b}"),
    )?;
    let _ = a.signal_and_wait(libc::SIGKILL);
    wait("B MASTER", || state(&b) == Some(2) && holds_vip(&lab.b))?;
    echo("198.18.2.11")?;
    echo(SERVER)?;
    stop.store(true, Ordering::Relaxed);
    let _ = (h1.join(), h2.join());
    let (first, second) = (seen1.lock().unwrap().clone(), seen2.lock().unwrap().clone());
    // The socket's pair: what server 1 saw first (its echo came back
    // before the other sockets sent).
    let pair = first.first().copied();
    check(
        pair.is_some_and(|p| p.ip().to_string() == POOL)
            && first.iter().filter(|&&a| Some(a) == pair).count() >= 2
            && !second.is_empty()
            && second.iter().all(|&a| Some(a) == pair),
        format!("the servers saw {first:?} (before and after) and {second:?} (after)"),
    )?;
    eprintln!("mapping across a failover: {first:?} and {second:?}");
    Ok(())
}

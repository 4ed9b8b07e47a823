//! The session and NAT event log against real collectors: rsyslogd parses
//! the RFC 5424 messages (its own fields and structured data), and PyPI's
//! `netflow` decodes the IPFIX stream; every event is accounted for as
//! sent, refused by the socket or dropped at a full ring.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::{
    Test, check,
    netns::{self, BASE_CONFIG, CLIENT, Daemon, Ns, SERVER, Topo},
    sessions::{POOL, recording_echo_server},
    traffic::send_frames,
};

const SYSLOG_PORT: u16 = 5514;
const IPFIX_PORT: u16 = 4739;

/// NAPT44 with the event log to collectors on the node's loopback.
fn config(extra: &str) -> String {
    format!(
        "{BASE_CONFIG}[sessions.timeouts]\nudp = 2\n\
         [log.events]\nsyslog = \"127.0.0.1:{SYSLOG_PORT}\"\nipfix = \"127.0.0.1:{IPFIX_PORT}\"\n\
         hostname = \"node-a\"\ntemplate_every_s = 1\n{extra}\
         [[service_set]]\nname = \"lab\"\n\
         [service_set.nat]\npool = [\"{POOL}\"]\nports = \"20000-29999\"\n\
         blocks_per_subscriber = 32\nsubscriber_sessions_per_sec = 0\n"
    )
}

/// rsyslogd in `ns`, writing each message it receives on the node's
/// loopback as `MSGID|APP-NAME|PROCID|HOSTNAME|TIMESTAMP|PRI|SD|MSG`.
struct Rsyslog {
    child: Child,
    dir: PathBuf,
}

impl Rsyslog {
    fn start(ns: &Ns) -> Result<Self, Failed> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tandem-rsyslog-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let conf = dir.join("rsyslog.conf");
        fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{d}\")\n\
                 module(load=\"imudp\")\n\
                 input(type=\"imudp\" address=\"127.0.0.1\" port=\"{SYSLOG_PORT}\")\n\
                 template(name=\"fields\" type=\"string\" string=\"%msgid%|%app-name%|%procid%|\
                 %hostname%|%timereported:::date-rfc3339%|%pri%|%structured-data%|%msg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{d}/out.log\" template=\"fields\")\n",
                d = dir.display()
            ),
        )?;
        let child = ns
            .cmd("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("rsyslogd: {e} (cargo xtask setup installs it)"))?;
        // Listening once its UDP socket exists in the namespace.
        let until = Instant::now() + Duration::from_secs(5);
        while !netns::sh(
            ns.cmd("ss")
                .args(["-Hunl", "sport", "=", &SYSLOG_PORT.to_string()]),
        )
        .contains(&SYSLOG_PORT.to_string())
        {
            check(Instant::now() < until, "rsyslogd does not listen")?;
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, dir })
    }

    fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The IPFIX collector script in `ns`, for at most `seconds`.
struct Collector {
    child: Child,
    records: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Collector {
    fn start(ns: &Ns, seconds: u32) -> Result<Self, Failed> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privileged/ipfix_collector.py");
        let mut child = ns
            .cmd("python3")
            .arg(script)
            .args(["127.0.0.1", &IPFIX_PORT.to_string(), &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let (tx, records) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let first = records.recv_timeout(Duration::from_secs(10)).map_err(
            |_| "the IPFIX collector did not start (cargo xtask setup installs `netflow`)",
        )?;
        check(
            first["listening"] == IPFIX_PORT,
            format!("collector said {first}"),
        )?;
        Ok(Self { child, records })
    }

    /// Every record received so far.
    fn take(&self) -> Vec<serde_json::Value> {
        self.records.try_iter().collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event log's counters: (syslog sent, syslog errors, IPFIX records
/// sent, IPFIX errors).
fn sent(d: &Daemon) -> Result<(u64, u64, u64, u64), Failed> {
    let o = netns::tandemstat(&d.instance).arg("prometheus").output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    let get = |name: &str, sink: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("sink=\"{sink}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    Ok((
        get("tandem_events_sent_total", "syslog"),
        get("tandem_events_send_errors_total", "syslog"),
        get("tandem_events_sent_total", "ipfix"),
        get("tandem_events_send_errors_total", "ipfix"),
    ))
}

/// Waits until `f` holds, for at most `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Result<(), Failed> {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        check(
            Instant::now() < until,
            format!("timed out waiting for {what}"),
        )?;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn session_events_reach_syslog_and_ipfix() -> Result<(), Failed> {
    let topo = Topo::new();
    let rsyslog = Rsyslog::start(&topo.node)?;
    let ipfix = Collector::start(&topo.node, 60)?;
    let mut d = Daemon::start(&topo.node, &config(""));

    // A TCP connection and a UDP exchange through the NAT.
    let (peers, _server) = recording_echo_server(&topo, 7500, 1);
    let mut tcp = topo.client.enter(|| {
        TcpStream::connect_timeout(
            &format!("{SERVER}:7500").parse().unwrap(),
            Duration::from_secs(3),
        )
    })?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    tcp.write_all(b"hello")?;
    let mut back = [0u8; 5];
    tcp.read_exact(&mut back)?;
    let tcp_port = peers.lock().unwrap()[0].port();
    let srv = topo
        .server
        .enter(|| UdpSocket::bind((SERVER, 7501)).expect("bind"));
    let cli = topo
        .client
        .enter(|| UdpSocket::bind((CLIENT, 0)).expect("bind"));
    srv.set_read_timeout(Some(Duration::from_secs(2)))?;
    cli.send_to(b"hi", (SERVER, 7501))?;
    let mut buf = [0u8; 16];
    let (_, from) = srv.recv_from(&mut buf)?;
    let udp_port = from.port();
    let udp_src = cli.local_addr()?.port();

    // The UDP session ends by its 2 s timeout, the TCP one by a clear.
    let tandemctl = netns::tandemstat_path().with_file_name("tandemctl");
    wait_for(10, "the UDP session to expire", || {
        d.counter("worker.sessions_deleted") >= 1
    })?;
    let o = Command::new(&tandemctl)
        .args([
            "--instance",
            &d.instance,
            "clear",
            "sessions",
            "protocol",
            "tcp",
        ])
        .output()?;
    check(o.status.success(), format!("clear: {o:?}"))?;
    wait_for(10, "six syslog messages", || rsyslog.lines().len() >= 6)?;
    thread::sleep(Duration::from_millis(500));
    let lines = rsyslog.lines();
    let find = |msgid: &str, needle: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{msgid}|")) && l.contains(needle))
            .cloned()
            .ok_or_else(|| format!("no {msgid} with {needle:?} in:\n{}", lines.join("\n")))
    };
    let pid = d.pid().to_string();
    let created = find("SESSION_CREATE", &format!("natSport=\"{tcp_port}\""))?;
    let f: Vec<&str> = created.splitn(8, '|').collect();
    check(
        f[1] == "tandemd" && f[2] == pid && f[3] == "node-a" && f[5] == "134",
        format!("header fields as rsyslog parsed them: {created}"),
    )?;
    check(
        f[6].starts_with("[session@32473 ")
            && f[6].contains(" proto=\"6\" origin=\"inside\" src=\"198.18.1.10\"")
            && f[6].contains(&format!(
                " dst=\"{SERVER}\" dport=\"7500\" natSrc=\"{POOL}\""
            )),
        format!("structured data: {created}"),
    )?;
    let closed = find("SESSION_DELETE", &format!("natSport=\"{tcp_port}\""))?;
    check(
        closed.contains("reason=\"cleared\"") && closed.contains("pktsOut=\""),
        format!("the TCP delete: {closed}"),
    )?;
    let expired = find("SESSION_DELETE", &format!("natSport=\"{udp_port}\""))?;
    check(
        expired.contains("reason=\"idle-timeout\"")
            && expired.contains(&format!("sport=\"{udp_src}\""))
            && expired.contains("pktsOut=\"1\" bytesOut=\"30\""),
        format!("the UDP delete: {expired}"),
    )?;

    // The client's port block: allocated with its first mapping, released
    // with its last, one line each.
    let block = find("NAT_BLOCK_ALLOC", "subscriber=\"198.18.1.10\"")?;
    check(
        block.contains(&format!("natSrc=\"{POOL}\""))
            && find("NAT_BLOCK_RELEASE", "subscriber=\"198.18.1.10\"")?
                .contains(&format!("natSrc=\"{POOL}\"")),
        format!("block events: {block}"),
    )?;
    // The block's range (256 ports, or fewer for the last block of a
    // worker's share).
    let port_of = |key: &str| -> Result<u16, Failed> {
        block
            .split(&format!("{key}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no {key}: {block}").into())
    };
    let (first, last) = (port_of("portFirst")?, port_of("portLast")?);
    check(
        last >= first
            && last - first < 256
            && (first..=last).contains(&tcp_port)
            && (first..=last).contains(&udp_port),
        format!("ports {tcp_port} and {udp_port} outside the block {first}-{last}: {block}"),
    )?;

    // IPFIX: both sessions' create (natEvent 4) and delete (5), and the
    // block's allocation (16) and release (17), as RFC 8158 lays them out.
    let mut records = Vec::new();
    wait_for(10, "six IPFIX records", || {
        records.extend(ipfix.take());
        records
            .iter()
            .filter(|r| r.get("natEvent").is_some())
            .count()
            >= 6
    })?;
    for event in [16, 17] {
        check(
            records.iter().any(|r| {
                r["natEvent"] == event
                    && r["sourceIPv4Address"] == CLIENT
                    && r["postNATSourceIPv4Address"] == POOL
                    && r["portRangeStart"] == first
                    && r["portRangeEnd"] == last
                    && r["portRangeNumPorts"] == last - first + 1
            }),
            format!("no natEvent {event} for the block at {first}: {records:?}"),
        )?;
    }
    for (port, proto) in [(tcp_port, 6), (udp_port, 17)] {
        for event in [4, 5] {
            check(
                records.iter().any(|r| {
                    r["natEvent"] == event
                        && r["protocolIdentifier"] == proto
                        && r["sourceIPv4Address"] == CLIENT
                        && r["postNATSourceIPv4Address"] == POOL
                        && r["postNAPTSourceTransportPort"] == port
                        && r["destinationIPv4Address"] == SERVER
                        && r["observationTimeMilliseconds"].as_u64().is_some()
                }),
                format!("no natEvent {event} for port {port}: {records:?}"),
            )?;
        }
    }
    check(
        records
            .iter()
            .all(|r| r.get("error").is_none() && r["domain"] == 1),
        format!("undecodable or foreign messages: {records:?}"),
    )?;
    // Every event is counted where it went.
    let (syslog_sent, syslog_errors, ipfix_sent, ipfix_errors) = sent(&d)?;
    let lines = rsyslog.lines().len() as u64;
    let decoded = records
        .iter()
        .filter(|r| r.get("natEvent").is_some())
        .count() as u64;
    check(
        syslog_sent == lines && syslog_errors == 0 && ipfix_sent == decoded && ipfix_errors == 0,
        format!(
            "counted syslog {syslog_sent}+{syslog_errors} against {lines} received, IPFIX \
             {ipfix_sent}+{ipfix_errors} against {decoded} decoded"
        ),
    )?;
    let view = crate::counters::stats_json(&d.instance);
    check(
        view["events"]["syslog_sent"] == syslog_sent
            && view["events"]["ipfix_sent"] == ipfix_sent
            && view["events"]["ipfix_messages"].as_u64() >= Some(1)
            && view["events"]["dropped"] == 0,
        format!("statistics JSON: {}", view["events"]),
    )?;
    let c = d.stop();
    // A message per session create and delete, and per block change (the
    // client's one block, taken and given back).
    check(
        lines == c.get("worker.sessions_created") + c.get("worker.sessions_deleted") + 2
            && c.get("worker.events_dropped") == 0,
        format!("{lines} messages for {c:?}"),
    )?;
    Ok(())
}

/// A UDP datagram from `sport`, as the client (`macs`: its own, the
/// node's) would send it.
fn udp(macs: ([u8; 6], [u8; 6]), sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
        .udp(sport, 7502)
        .write(&mut f, b"x")
        .expect("build UDP");
    f
}

/// A burst of new sessions into a 64-event ring: the workers never wait
/// for the log; what did not fit is counted as dropped, and every event
/// is sent, refused or dropped.
fn a_full_event_ring_drops_and_counts() -> Result<(), Failed> {
    let topo = Topo::new();
    let rsyslog = Rsyslog::start(&topo.node)?;
    // No session ends meanwhile: every event is a create.
    let cfg = config("ring = 64\n").replace("udp = 2", "udp = 600");
    let mut d = Daemon::start(&topo.node, &cfg);
    let macs = (topo.client.mac("c0"), topo.node.mac("in0"));
    let burst: Vec<Vec<u8>> = (0..3000u16).map(|i| udp(macs, 40000 + i)).collect();
    send_frames(&topo.client, "c0", burst);
    thread::sleep(Duration::from_secs(1));
    // The flows' port blocks (none is released: nothing ends) are an
    // event each too.
    let nat = crate::cgnat::nat_json(&d)?;
    let blocks = nat["service_sets"][0]["addresses"][0]["blocks_in_use"]
        .as_u64()
        .unwrap_or(0);
    let c = d.stop();
    let (created, dropped) = (
        c.get("worker.sessions_created"),
        c.get("worker.events_dropped"),
    );
    let (syslog_sent, syslog_errors) = (
        c.get("events.syslog.sent"),
        c.get("events.syslog.send_errors"),
    );
    check(
        created >= 2000 && dropped > 0,
        format!("{created} sessions, {dropped} events dropped"),
    )?;
    check(
        blocks >= 1 && syslog_sent + syslog_errors + dropped == created + blocks,
        format!(
            "{syslog_sent} sent + {syslog_errors} refused + {dropped} dropped != {created} \
             created + {blocks} blocks"
        ),
    )?;
    let lines = rsyslog.lines().len() as u64;
    check(
        lines <= syslog_sent && lines > 0,
        format!("rsyslog wrote {lines}, tandem sent {syslog_sent}"),
    )?;
    Ok(())
}

/// A flow from outside through a forwarded port is logged with the inside
/// host it was sent on to (`natDst`, `natDport`), not as a source
/// translation.
fn a_forwarded_flow_is_logged_with_its_inside_host() -> Result<(), Failed> {
    let topo = Topo::new();
    let rsyslog = Rsyslog::start(&topo.node)?;
    let cfg = format!(
        "{}[[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"{POOL}:8080\"\n\
         inside = \"{CLIENT}:9300\"\n",
        config("")
    );
    let mut d = Daemon::start(&topo.node, &cfg);
    let listener = topo
        .client
        .enter(|| std::net::TcpListener::bind((CLIENT, 9300)).expect("bind"));
    let accepted = thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let conn = topo.server.enter(|| {
        TcpStream::connect_timeout(
            &format!("{POOL}:8080").parse().unwrap(),
            Duration::from_secs(3),
        )
    })?;
    let peer = accepted.join().unwrap()?;
    let sport = conn.local_addr()?.port();
    check(
        peer.port() == sport,
        format!("the inside host saw {peer}, the server's port is {sport}"),
    )?;
    let want = format!(
        "origin=\"outside\" src=\"{SERVER}\" sport=\"{sport}\" dst=\"{POOL}\" \
         dport=\"8080\" natDst=\"{CLIENT}\" natDport=\"9300\""
    );
    wait_for(10, "the forwarded session's create", || {
        rsyslog
            .lines()
            .iter()
            .any(|l| l.starts_with("SESSION_CREATE|") && l.contains(&want))
    })
    .map_err(|e| format!("{e:?}: {want} not in:\n{}", rsyslog.lines().join("\n")))?;
    drop(conn);
    d.stop();
    Ok(())
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "a_forwarded_flow_is_logged_with_its_inside_host",
        a_forwarded_flow_is_logged_with_its_inside_host,
    ),
    (
        "session_events_reach_syslog_and_ipfix",
        session_events_reach_syslog_and_ipfix,
    ),
    (
        "a_full_event_ring_drops_and_counts",
        a_full_event_ring_drops_and_counts,
    ),
];

//! The cases beyond plain forwarding: counters read while forwarding
//! (`--stat-poll`), stateful services, new sessions per second, and
//! session offload against the kernel and the XDP ceilings.

// The harness's parts share one vocabulary: its imports, arguments and
// helpers.
use super::*;

/// tandemd with and without a `tandemstat -w 0.1` reader, alternating.
pub(crate) fn stat_poll(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
    let stat = tandemd.with_file_name("tandemstat");
    if !stat.exists() {
        bail!(
            "{} not found (cargo build --release -p tandem-tools)",
            stat.display()
        );
    }
    let d = start_tandemd(tandemd, 1)?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        without.push(measure(bpf, frame, 1, 1, args.seconds)?.pps);
        let mut poller = Command::new(&stat)
            .args(["--instance", "pktrate", "--json", "-w", "0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let r = measure(bpf, frame, 1, 1, args.seconds);
        let _ = poller.kill();
        let _ = poller.wait();
        with.push(r?.pps);
    }
    d.stop()?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "stat-poll (1 worker, 1 flow, median of {}): without {:.3} Mpps, with tandemstat -w 0.1 {:.3} Mpps, ratio {:.3}",
        args.rounds,
        a / 1e6,
        b / 1e6,
        b / a.max(1.0)
    );
    Ok(())
}

/// The lab's service set for the DUT: default firewall, NAPT44 to `pool`.
/// The benches' service set: NAPT44 to `pool`, with tandemd's default
/// port reuse delay.
pub(crate) fn service_set(pool: &[String], udp_timeout: u32, per_worker: u32) -> String {
    service_set_delay(pool, udp_timeout, per_worker, None)
}

/// [`service_set`] with `port_reuse_delay_s` set, if given.
pub(crate) fn service_set_delay(
    pool: &[String],
    udp_timeout: u32,
    per_worker: u32,
    reuse_delay_s: Option<u32>,
) -> String {
    let delay = reuse_delay_s.map_or_else(String::new, |d| format!("port_reuse_delay_s = {d}\n"));
    let pool = pool
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[sessions]\nper_worker = {per_worker}\n[sessions.timeouts]\nudp = {udp_timeout}\n\
         [[service_set]]\nname = \"bench\"\n[service_set.nat]\npool = [{pool}]\n{delay}"
    )
}

/// The subscriber keys the new-sessions bench adds for this build: its 240
/// inside hosts each open ~1.7 k flows a second, and with the reuse delay
/// a run holds ~5 k pairs per host, so each may hold 32 blocks of 1024
/// ports with no session or rate limit of its own (the mechanism's cost
/// is measured, not the defaults' refusals). Mapping: endpoint-independent
/// (the default; every flow is a new endpoint, so each looks its mapping
/// up, misses and makes one).
pub(crate) const BENCH_SUBSCRIBERS: &str = "block_size = 1024\nblocks_per_subscriber = 32\n\
     sessions_per_subscriber = 0\nsubscriber_sessions_per_sec = 0\n";

/// The kernel's equivalent: forward only what the inside started (or its
/// replies), SNAT to the pool.
pub(crate) fn nft_ruleset(first: &str, last: &str) -> String {
    format!(
        "table ip tb {{\n\
           chain forward_filter {{ type filter hook forward priority 0; policy drop;\n\
             ct state established,related accept\n\
             iifname \"in0\" ct state new accept\n\
           }}\n\
           chain postrouting_nat {{ type nat hook postrouting priority 100;\n\
             oifname \"out0\" snat to {first}-{last}\n\
           }}\n\
         }}\n"
    )
}

pub(crate) fn kernel_nft_on(first: &str, last: &str) -> Result<()> {
    let path = std::env::temp_dir().join("tandem-pktrate.nft");
    fs::write(&path, nft_ruleset(first, last))?;
    ns(DUT, &["nft", "-f", path.to_str().context("path")?])?;
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns(DUT, &["ethtool", "-K", "in0", "gro", "on"])?;
    Ok(())
}

pub(crate) fn kernel_nft_off() -> Result<()> {
    ns(DUT, &["ethtool", "-K", "in0", "gro", "off"])?;
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    ns(DUT, &["nft", "flush", "ruleset"])?;
    Ok(())
}

/// Established flows: kernel conntrack + SNAT, tandemd with services,
/// tandemd without (the ceiling of the AF_XDP path).
pub(crate) fn services(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
    println!(
        "pktrate --services: 64-byte UDP on established flows, {} s per case, counted at the sink; Mpps",
        args.seconds
    );
    println!(
        "{:<7} {:<7} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "flows", "workers", "kernel+nft", "tandemd", "no-session", "vs kernel", "vs ceiling"
    );
    let pool = vec!["198.18.2.100".to_owned()];
    let mut notes = Vec::new();
    for &w in &args.workers {
        for &flows in &args.flows {
            kernel_nft_on("198.18.2.100", "198.18.2.100")?;
            let k = measure(bpf, frame, flows, w, args.seconds)?;
            kernel_nft_off()?;
            let d = start_tandemd_with(tandemd, w, &service_set(&pool, 60, 65_536))?;
            let t = measure(bpf, frame, flows, w, args.seconds)?;
            let report = d.stop()?;
            let d = start_tandemd(tandemd, w)?;
            let c = measure(bpf, frame, flows, w, args.seconds)?;
            d.stop()?;
            println!(
                "{:<7} {:<7} {:>12.3} {:>12.3} {:>12.3} {:>10.2} {:>10.2}",
                flows,
                w,
                k.pps / 1e6,
                t.pps / 1e6,
                c.pps / 1e6,
                t.pps / k.pps.max(1.0),
                t.pps / c.pps.max(1.0)
            );
            notes.push(format!(
                "flows={flows} workers={w}: {}",
                interesting(&report)
            ));
        }
    }
    println!("tandemd (services) counters per case:");
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

/// tandemd's replication lag (p50, p99) in microseconds, from its segment.
fn lag_us() -> (u64, u64) {
    let Ok(r) = tandem_control::stats::SegmentReader::open_instance("pktrate") else {
        return (0, 0);
    };
    let get = |name: &str| {
        r.entries
            .iter()
            .find(|e| e.name == name)
            .map_or(0, |e| r.value(e.slot))
    };
    (get("tandem_sync_lag_p50_us"), get("tandem_sync_lag_p99_us"))
}

/// Nanoseconds of CPU per session: `cpu_ns` over a window of the warm-up
/// second and `secs` more at `pps` new sessions a second.
#[expect(clippy::cast_precision_loss, reason = "nanoseconds and seconds")]
fn ns_per_session(cpu_ns: u64, pps: f64, secs: u64) -> f64 {
    cpu_ns as f64 / (pps * (secs as f64 + 1.0)).max(1.0)
}

/// New sessions per second: every packet a new flow, both sides
/// translating to 32 pool addresses, 1 s UDP timeouts.
/// UDP receivers in the node's namespace that count datagrams.
struct Collectors {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<Result<u64>>>,
}

impl Collectors {
    fn start(ports: &[u16]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let stop = std::sync::Arc::clone(&stop);
                thread::spawn(move || -> Result<u64> {
                    generate::enter_ns(DUT)?;
                    let s = std::net::UdpSocket::bind(("127.0.0.1", port))?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    let mut buf = [0u8; 2048];
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if s.recv(&mut buf).is_ok() {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Datagrams each received.
    fn stop(self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("collector thread"))?)
            .collect()
    }
}

/// The event log's cost: `--rounds` alternating runs of tandemd with and
/// without it (the same pool and rate), with collectors in the node's
/// namespace counting the datagrams they receive.
#[expect(clippy::cast_precision_loss, reason = "rates and means")]
fn event_log(
    args: &Args,
    bpf: &Bpf,
    frame: &[u8],
    tandemd: &PathBuf,
    w: u32,
    services: &str,
    notes: &mut Vec<String>,
) -> Result<()> {
    const SYSLOG: u16 = 5514;
    const IPFIX: u16 = 4739;
    let with = format!(
        "{services}[log.events]\nsyslog = \"127.0.0.1:{SYSLOG}\"\nipfix = \"127.0.0.1:{IPFIX}\"\n"
    );
    let (mut plain, mut logged) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let d = start_tandemd_with(tandemd, w, services)?;
        let c0 = d.cpu()?;
        plain.push(measure_with(bpf, frame, 1, w, args.seconds, true)?.pps);
        let cpu_plain = d.cpu()?.since(&c0);
        d.stop()?;
        let collectors = Collectors::start(&[SYSLOG, IPFIX]);
        thread::sleep(Duration::from_millis(200));
        let d = start_tandemd_with(tandemd, w, &with)?;
        let c0 = d.cpu()?;
        logged.push(measure_with(bpf, frame, 1, w, args.seconds, true)?.pps);
        let cpu_log = d.cpu()?.since(&c0);
        let report = d.stop()?;
        let got = collectors.stop()?;
        notes.push(format!(
            "workers={w} event log round {round}: {:.3} Mpps plain, {:.3} with the log; \
             created {} deleted {}; syslog sent {} (refused {}, received {}); IPFIX records {} \
             in {} messages (refused {}, received {} messages); dropped at the ring {}; \
             workers' CPU per session {:.0} ns plain, {:.0} ns with the log; the log thread \
             {:.0} ns per event sent",
            plain[plain.len() - 1] / 1e6,
            logged[logged.len() - 1] / 1e6,
            counter(&report, "worker.sessions_created"),
            counter(&report, "worker.sessions_deleted"),
            counter(&report, "events.syslog.sent"),
            counter(&report, "events.syslog.send_errors"),
            got[0],
            counter(&report, "events.ipfix.sent"),
            counter(&report, "events.ipfix_messages"),
            counter(&report, "events.ipfix.send_errors"),
            got[1],
            counter(&report, "worker.events_dropped"),
            ns_per_session(cpu_plain.workers, plain[plain.len() - 1], args.seconds),
            ns_per_session(cpu_log.workers, logged[logged.len() - 1], args.seconds),
            cpu_log.log as f64 / (counter(&report, "events.syslog.sent") as f64).max(1.0),
        ));
    }
    // Paced below the ceiling: where the log keeps up with every event.
    for pace in [25_000u64, 50_000, 100_000] {
        let collectors = Collectors::start(&[SYSLOG, IPFIX]);
        thread::sleep(Duration::from_millis(200));
        let d = start_tandemd_with(tandemd, w, &with)?;
        generate::PACE.store(pace / u64::from(w), Ordering::Relaxed);
        let c0 = d.cpu()?;
        let r = measure_with(bpf, frame, 1, w, args.seconds, true);
        generate::PACE.store(0, Ordering::Relaxed);
        let r = r?;
        let cpu = d.cpu()?.since(&c0);
        let report = d.stop()?;
        let got = collectors.stop()?;
        let sent = counter(&report, "events.syslog.sent");
        notes.push(format!(
            "workers={w} event log at {:.3} Mpps paced: {} events, syslog sent {sent} \
             (refused {}, received {}), IPFIX records {} (refused {}, {} messages received), \
             dropped at the ring {}; the log thread {:.0} ns per event, {:.0}% of a CPU",
            r.pps / 1e6,
            counter(&report, "worker.sessions_created")
                + counter(&report, "worker.sessions_deleted"),
            counter(&report, "events.syslog.send_errors"),
            got[0],
            counter(&report, "events.ipfix.sent"),
            counter(&report, "events.ipfix.send_errors"),
            got[1],
            counter(&report, "worker.events_dropped"),
            cpu.log as f64 / (sent as f64).max(1.0),
            cpu.log as f64 / ((args.seconds + 1) as f64 * 1e9) * 100.0,
        ));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    notes.push(format!(
        "workers={w} event log: with / without = {:.3} / {:.3} Mpps, ratio {:.2} ({} rounds)",
        mean(&logged) / 1e6,
        mean(&plain) / 1e6,
        mean(&logged) / mean(&plain).max(1.0),
        args.rounds
    ));
    Ok(())
}

/// This build (`services`: with the subscriber keys) and a baseline
/// tandemd (`plain`), alternating `--rounds` times: new sessions a second
/// of each, and the ratio of the means.
#[expect(clippy::cast_precision_loss, reason = "rates and means")]
fn baseline(
    args: &Args,
    bpf: &Bpf,
    frame: &[u8],
    (tandemd, old): (&PathBuf, &PathBuf),
    w: u32,
    (services, plain): (&str, &str),
    notes: &mut Vec<String>,
) -> Result<()> {
    let (mut base, mut this) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let d = start_tandemd_with(old, w, plain)?;
        base.push(measure_with(bpf, frame, 1, w, args.seconds, true)?.pps);
        d.stop()?;
        let d = start_tandemd_with(tandemd, w, services)?;
        this.push(measure_with(bpf, frame, 1, w, args.seconds, true)?.pps);
        let report = d.stop()?;
        notes.push(format!(
            "workers={w} baseline round: {:.3} Mpps baseline, {:.3} this build ({})",
            base[base.len() - 1] / 1e6,
            this[this.len() - 1] / 1e6,
            interesting(&report)
        ));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    notes.push(format!(
        "workers={w} this build / baseline ({}) = {:.3} / {:.3} Mpps, ratio {:.2} ({} rounds)",
        old.display(),
        mean(&this) / 1e6,
        mean(&base) / 1e6,
        mean(&this) / mean(&base).max(1.0),
        args.rounds
    ));
    Ok(())
}

pub(crate) fn new_sessions(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
    println!(
        "pktrate --new-sessions: every 64-byte UDP packet a new flow, {} s per case; new sessions/s (Mpps at the sink)",
        args.seconds
    );
    if args.sync {
        println!(
            "{:<7} {:>12} {:>12} {:>7} {:>14} {:>10} {:>12}",
            "workers", "kernel+nft", "tandemd", "ratio", "tandemd+sync", "vs plain", "peer adds/s"
        );
    } else {
        println!(
            "{:<7} {:>12} {:>12} {:>7}",
            "workers", "kernel+nft", "tandemd", "ratio"
        );
    }
    let pool: Vec<String> = (100..132).map(|i| format!("198.18.2.{i}")).collect();
    ns(
        DUT,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1"],
    )
    .ok();
    let mut notes = Vec::new();
    for &w in &args.workers {
        let plain = service_set_delay(&pool, 1, 4_000_000 / w, args.port_reuse_delay);
        let services = format!("{plain}{BENCH_SUBSCRIBERS}");
        if let Some(old) = &args.baseline {
            baseline(
                args,
                bpf,
                frame,
                (tandemd, old),
                w,
                (&services, &plain),
                &mut notes,
            )?;
        }
        kernel_nft_on("198.18.2.100", "198.18.2.131")?;
        let k = measure_with(bpf, frame, 1, w, args.seconds, true)?;
        kernel_nft_off()?;
        let d = start_tandemd_with(tandemd, w, &services)?;
        let t = measure_with(bpf, frame, 1, w, args.seconds, true)?;
        let report = d.stop()?;
        print!(
            "{:<7} {:>12.3} {:>12.3} {:>7.2}",
            w,
            k.pps / 1e6,
            t.pps / 1e6,
            t.pps / k.pps.max(1.0)
        );
        notes.push(format!("workers={w}: {}", interesting(&report)));
        if args.events {
            event_log(args, bpf, frame, tandemd, w, &services, &mut notes)?;
        }
        if args.sync {
            let base = format!("[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n{services}");
            let peer = Peer::start(&base)?;
            let d =
                start_tandemd_with(tandemd, w, &format!("{services}{}", sync_section("active")))?;
            // The peer dials, and the (empty) cold sync completes.
            thread::sleep(Duration::from_millis(500));
            let before = peer.adds.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let r = measure_with(bpf, frame, 1, w, args.seconds, true)?;
            let adds = peer.adds.load(Ordering::Relaxed) - before;
            let secs = t0.elapsed().as_secs_f64();
            let lag_full = lag_us();
            let report = d.stop()?;
            peer.stop()?;
            // Half the rate tandemd reached with replication: the lag of
            // a link that is not the bottleneck.
            let peer = Peer::start(&base)?;
            let d =
                start_tandemd_with(tandemd, w, &format!("{services}{}", sync_section("active")))?;
            thread::sleep(Duration::from_millis(500));
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a rate"
            )]
            let pace = (r.pps / 2.0 / f64::from(w)) as u64;
            generate::PACE.store(pace, Ordering::Relaxed);
            let c0 = d.cpu()?;
            let half = measure_with(bpf, frame, 1, w, args.seconds, true);
            generate::PACE.store(0, Ordering::Relaxed);
            let half = half?;
            let cpu_sync = d.cpu()?.since(&c0);
            let lag_half = lag_us();
            d.stop()?;
            peer.stop()?;
            // The same pace without replication: the active's CPU per
            // session with and without it, the cost that does not depend
            // on which of this box's two cores the peer and the generator
            // share.
            let d = start_tandemd_with(tandemd, w, &services)?;
            thread::sleep(Duration::from_millis(500));
            generate::PACE.store(pace, Ordering::Relaxed);
            let c0 = d.cpu()?;
            let plain_half = measure_with(bpf, frame, 1, w, args.seconds, true);
            generate::PACE.store(0, Ordering::Relaxed);
            let plain_half = plain_half?;
            let cpu_plain = d.cpu()?.since(&c0);
            d.stop()?;
            let window = args.seconds;
            let plain_ns = ns_per_session(cpu_plain.total(), plain_half.pps, window);
            let sync_ns = ns_per_session(cpu_sync.total(), half.pps, window);
            notes.push(format!(
                "workers={w} CPU per new session at {:.3} / {:.3} Mpps: plain {plain_ns:.0} ns \
                 (workers {:.0}), with sync {sync_ns:.0} ns (workers {:.0}, sync thread {:.0}, \
                 other {:.0}): {:+.1}%",
                plain_half.pps / 1e6,
                half.pps / 1e6,
                ns_per_session(cpu_plain.workers, plain_half.pps, window),
                ns_per_session(cpu_sync.workers, half.pps, window),
                ns_per_session(cpu_sync.sync, half.pps, window),
                ns_per_session(cpu_sync.other, half.pps, window),
                (sync_ns / plain_ns.max(1.0) - 1.0) * 100.0
            ));
            notes.push(format!(
                "workers={w} sync lag (batched to acknowledged, us): at {:.3} Mpps p50 {} p99 {}; \
                 at {:.3} Mpps p50 {} p99 {}",
                r.pps / 1e6,
                lag_full.0,
                lag_full.1,
                half.pps / 1e6,
                lag_half.0,
                lag_half.1
            ));
            print!(
                " {:>14.3} {:>10.2} {:>12.3}",
                r.pps / 1e6,
                r.pps / t.pps.max(1.0),
                per_sec(adds, secs) / 1e6
            );
            notes.push(format!("workers={w} sync: {}", interesting(&report)));
            // Every session created went to the peer (live, or by repair)
            // or ended before repair could send it; the rest were still
            // marked when tandemd stopped. (One add per session here: the
            // flows get no reply, so no refresh is ever lost.)
            let created = counter(&report, "worker.sessions_created");
            let sent = counter(&report, "sync.add_sent");
            let ended = counter(&report, "sync.repair_ended");
            notes.push(format!(
                "workers={w} sync accounting: created {created} = sent {sent} (repaired {}) \
                 + ended before repair {ended} + still marked at the stop {}",
                counter(&report, "sync.repair_sent"),
                created.saturating_sub(sent + ended)
            ));
        }
        println!();
    }
    println!("tandemd counters per case:");
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

/// The kernel's flowtable variant of `nft_ruleset`: established flows
/// skip the forward path (software flowtable on in0 and out0).
pub(crate) fn nft_flowtable_ruleset(pool: &str) -> String {
    format!(
        "table ip tb {{\n\
           flowtable ft {{ hook ingress priority 0; devices = {{ in0, out0 }}; }}\n\
           chain forward_filter {{ type filter hook forward priority 0; policy drop;\n\
             meta l4proto {{ tcp, udp }} ct state established flow add @ft\n\
             ct state established,related accept\n\
             iifname \"in0\" ct state new accept\n\
           }}\n\
           chain postrouting_nat {{ type nat hook postrouting priority 100;\n\
             oifname \"out0\" snat to {pool}\n\
           }}\n\
         }}\n"
    )
}

/// Kernel forwarding with `ruleset` (none if empty); GRO on in0 and out0 (out0 takes the
/// sink's answers, which it sends with XDP_TX).
pub(crate) fn kernel_with(ruleset: &str) -> Result<()> {
    if !ruleset.is_empty() {
        let path = std::env::temp_dir().join("tandem-pktrate.nft");
        fs::write(&path, ruleset)?;
        ns(DUT, &["nft", "-f", path.to_str().context("path")?])?;
    }
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    for dev in ["in0", "out0"] {
        ns(DUT, &["ethtool", "-K", dev, "gro", "on"])?;
    }
    Ok(())
}

pub(crate) fn kernel_off() -> Result<()> {
    for dev in ["in0", "out0"] {
        ns(DUT, &["ethtool", "-K", dev, "gro", "off"])?;
    }
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    ns(DUT, &["nft", "flush", "ruleset"])?;
    ns(DUT, &["conntrack", "-F"]).ok();
    Ok(())
}

/// Session offload on established flows (XDP generator): the plain
/// XDP_REDIRECT ceiling, that ceiling plus one line of per-flow state, the
/// kernel with conntrack + SNAT, the kernel with a flowtable, tandemd
/// without offload and with it.
pub(crate) fn offload(args: &Args, mut bpf: Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
    const POOL: &str = "198.18.2.100";
    let headers: [u8; 42] = frame.get(..42).context("frame")?.try_into()?;
    let mut m: Array<_, [u8; 42]> =
        Array::try_from(bpf.ebpf.map_mut("TND_GEN_HEADERS").context("map")?)?;
    m.set(0, headers, 0)?;
    println!(
        "pktrate --offload: 64-byte UDP on established flows, XDP generator, {} s per case, counted at the sink; Mpps",
        args.seconds
    );
    println!(
        "{:<6} {:<7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "flows",
        "threads",
        "redirect",
        "+line",
        "kernel+ct",
        "flowtable",
        "tandem",
        "+offload",
        "vs ct",
        "vs ft",
        "vs redir",
        "vs line"
    );
    ns(
        DUT,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=60"],
    )
    .ok();
    let flowtables = kernel_with(&nft_flowtable_ruleset(POOL)).is_ok();
    kernel_off()?;
    if !flowtables {
        println!(
            "(this kernel has no nftables flowtables (CONFIG_NF_FLOW_TABLE): \
             the flowtable column is plain kernel forwarding, no conntrack, no NAT)"
        );
    }
    let mut notes = Vec::new();
    for &w in &args.workers {
        for &flows in &args.flows {
            bpf.set("TND_GEN_FLOWS", flows)?;
            let mut ceiling = Vec::new();
            // (a) the ceiling: a bare XDP_REDIRECT in0 -> out0; then the
            // same with one line of per-flow state read and counted into.
            for prog in ["tandem_redirect", "tandem_redirect_line"] {
                let link = bpf.redirect_on(prog)?;
                let r = xdp_measure(&bpf, frame, w, args.seconds);
                bpf.redirect_off(prog, link)?;
                ceiling.push(r?);
            }
            let (redirect, line) = (&ceiling[0], &ceiling[1]);
            // (b) kernel + conntrack + SNAT, (c) with a flowtable (or,
            // on a kernel without flowtables, plain forwarding).
            let mut kernel = Vec::new();
            let fast = if flowtables {
                nft_flowtable_ruleset(POOL)
            } else {
                String::new()
            };
            for ruleset in [nft_ruleset(POOL, POOL), fast] {
                kernel_with(&ruleset)?;
                let r = establish(&mut bpf, frame, flows, w)
                    .and_then(|()| xdp_measure(&bpf, frame, w, args.seconds));
                kernel_off()?;
                kernel.push(r?);
            }
            // (d) tandemd without offload, (e) with.
            let mut tandem = Vec::new();
            for on in [false, true] {
                let sets = service_set(&[POOL.to_owned()], 60, args.per_worker).replace(
                    "name = \"bench\"\n",
                    &format!("name = \"bench\"\noffload = {on}\n"),
                );
                let d = start_tandemd_with(tandemd, w, &sets)?;
                let r = establish(&mut bpf, frame, flows, w)
                    .and_then(|()| xdp_measure(&bpf, frame, w, args.seconds));
                let report = d.stop()?;
                tandem.push(r?);
                notes.push(format!(
                    "flows={flows} threads={w} offload={on}: {}",
                    offload_notes(&report)
                ));
            }
            let (ct, ft, off) = (kernel[0].pps, kernel[1].pps, tandem[1].pps);
            println!(
                "{:<6} {:<7} {:>9.3} {:>9.3} {:>10.3} {:>10.3} {:>9.3} {:>9.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                flows,
                w,
                redirect.pps / 1e6,
                line.pps / 1e6,
                ct / 1e6,
                ft / 1e6,
                tandem[0].pps / 1e6,
                off / 1e6,
                off / ct.max(1.0),
                off / ft.max(1.0),
                off / redirect.pps.max(1.0),
                off / line.pps.max(1.0)
            );
        }
    }
    println!("tandemd counters per case:");
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

/// The exit counters that show where an offload run's frames went.
pub(crate) fn offload_notes(report: &str) -> String {
    const KEYS: [&str; 7] = [
        "worker.sessions_created=",
        "worker.offloads_installed=",
        "worker.rx_packets=",
        "xdp.fast_forwarded=",
        "xdp.fast_punt_flags=",
        "xdp.fast_redirect_failed=",
        "xdp.redirected=",
    ];
    KEYS.iter()
        .map(|k| {
            let n: u64 = report
                .split_whitespace()
                .filter_map(|kv| kv.strip_prefix(k).and_then(|x| x.parse::<u64>().ok()))
                .sum();
            format!("{k}{n}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

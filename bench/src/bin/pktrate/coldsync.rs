//! `--cold-sync`: how long a backup takes to hold a master's N sessions
//! from the moment its sync link comes up, tandem against conntrackd.
//!
//! tandem: tandemd in tb-dut (active) is filled with N UDP sessions by the
//! generator (paced, so none is dropped), then a second tandemd starts in
//! tb-peer as the backup. Its log stamps the link's coming up and the
//! cold sync's completion (the link is Hot); its segment then shows when
//! its workers hold all N (the digest's count, published every 100 ms).
//!
//! conntrackd: the kernel in tb-dut (nftables conntrack + SNAT, as in
//! `--new-sessions`) is filled with N entries the same way; conntrackd
//! (FTFW over sync0) runs on both sides, and the clock starts when the
//! backup asks for a resync (`conntrackd -n`) and stops when its external
//! cache holds the N entries (`conntrackd -s`, polled every 10 ms).

// The harness's parts share one vocabulary: its imports, arguments and
// helpers.
use super::*;

use tandem_control::stats::SegmentReader;

/// Where the conntrackd pair keeps its configuration and runtime files.
const CTD_DIR: &str = "/run/tandem-pktrate-ctd";
/// conntrackd's socket buffers (and the core limits raised to allow them).
const CTD_SOCKET_BUFFER: u32 = 16 << 20;
/// How long any one step may take before the case fails.
const STEP: Duration = Duration::from_mins(3);

pub(crate) fn cold_sync(args: &Args, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
    let w = args.workers.first().copied().unwrap_or(1);
    println!(
        "pktrate --cold-sync: a backup's link up to Hot (and to every session installed), \
         {w} worker(s); conntrackd: resync request (-n) to a full external cache"
    );
    println!(
        "{:>9} {:>11} {:>10} {:>12} {:>13} {:>11} {:>12} {:>12} {:>7}",
        "asked",
        "sessions",
        "to Hot ms",
        "Msessions/s",
        "installed ms",
        "ct entries",
        "conntrackd ms",
        "Mentries/s",
        "ratio"
    );
    let mut notes = Vec::new();
    for &n in &args.cold_sync {
        let t = tandem(frame, tandemd, n, w)?;
        let rate = |k: u64, ms: f64| per_sec(k, ms / 1e3) / 1e6;
        print!(
            "{:>9} {:>11} {:>10.1} {:>12.2} {:>13}",
            n,
            t.sessions,
            t.hot_ms,
            rate(t.sessions, t.hot_ms),
            t.installed_ms
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}")),
        );
        // conntrackd's failure to finish is a result, not the harness's.
        match conntrackd(frame, n, w) {
            Ok(c) => println!(
                " {:>11} {:>12.1} {:>12.2} {:>7.2}",
                c.entries,
                c.ms,
                rate(c.entries, c.ms),
                rate(t.sessions, t.hot_ms) / rate(c.entries, c.ms).max(1e-9),
            ),
            Err(e) => {
                println!(" {:>11} {:>12} {:>12} {:>7}", "-", "-", "-", "-");
                notes.push(format!("sessions={n}: conntrackd: {e}"));
            }
        }
        notes.push(format!("sessions={n}: {}", t.notes));
    }
    println!("tandemd counters per case (active, then backup):");
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

struct TandemRun {
    sessions: u64,
    hot_ms: f64,
    installed_ms: Option<f64>,
    notes: String,
}

/// Sends `n` new flows spread over `threads` generator threads at `pace`
/// frames per second each, and waits for the generator to stop by itself.
fn fill(frame: &[u8], n: u32, threads: u32, pace: u64) -> Result<u64> {
    generate::LIMIT.store(u64::from(n.div_ceil(threads)), Ordering::Relaxed);
    generate::PACE.store(pace, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    let r = generate::generate(frame, 1, threads, true, &stop);
    generate::LIMIT.store(0, Ordering::Relaxed);
    generate::PACE.store(0, Ordering::Relaxed);
    r
}

/// The sum of every segment entry called `name`.
fn sum(r: &SegmentReader, name: &str) -> u64 {
    r.entries
        .iter()
        .filter(|e| e.name == name)
        .map(|e| r.value(e.slot))
        .sum()
}

/// Polls `f` every `every` until it is true; false after [`STEP`].
fn wait_for(every: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        if f()? {
            return Ok(true);
        }
        thread::sleep(every);
    }
    Ok(false)
}

/// Seconds since midnight UTC of a tracing log line (its first field,
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`).
fn stamp(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Seconds since midnight UTC now.
fn now_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// The stamp of the first line of `log` that contains `what`.
fn logged(log: &std::path::Path, what: &str) -> Option<f64> {
    fs::read_to_string(log)
        .ok()?
        .lines()
        .find(|l| l.contains(what))
        .and_then(stamp)
}

fn tandem(frame: &[u8], tandemd: &PathBuf, n: u32, w: u32) -> Result<TandemRun> {
    let pool: Vec<String> = (100..132).map(|i| format!("198.18.2.{i}")).collect();
    // Room for every session with a quarter to spare on each worker; an
    // hour's UDP timeout, so none ends during the measurement.
    let per_worker = (n / w) + (n / w) / 4 + 1024;
    let services = cases::service_set(&pool, 3600, per_worker);
    let active = start_tandemd_with(tandemd, w, &format!("{services}{}", sync_section("active")))?;
    let seg = SegmentReader::open_instance("pktrate").context("the active's segment")?;
    fill(frame, n, w, 150_000)?;
    // The workers' table sizes are taken once a second; their creation
    // counts as they go: the table is whole once those stop moving.
    let (mut sessions, mut still) = (0, 0);
    wait_for(Duration::from_millis(100), || {
        let now = sum(&seg, "tandem_worker_sessions_created_total")
            - sum(&seg, "tandem_worker_sessions_deleted_total");
        still = if now == sessions { still + 1 } else { 0 };
        sessions = now;
        Ok(still >= 3 && now > 0)
    })?;
    // The backup's workers on the CPUs from the last one down, the
    // active's on those from 0 up: on a box of two CPUs and one worker
    // each, the two nodes do not share a CPU, as two boxes would not
    // (`dataplane.cores`; the line lands in the [dataplane] section).
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cores: Vec<String> = (0..w as usize)
        .map(|i| (cpus - 1 - i % cpus).to_string())
        .collect();
    let backup = start_tandemd_in(
        PEER,
        "pktrate-peer",
        tandemd,
        w,
        &format!(
            "cores = [{}]\n{services}{}",
            cores.join(", "),
            sync_section("backup")
        ),
    )?;
    let peer = SegmentReader::open_instance("pktrate-peer").context("the backup's segment")?;
    let hot = wait_for(Duration::from_millis(5), || {
        Ok(logged(&backup.log, "cold sync complete").is_some())
    })?;
    let mut installed = None;
    if hot {
        wait_for(Duration::from_millis(5), || {
            let have = sum(&peer, "tandem_sync_digest_sessions");
            if have >= sessions {
                installed = Some(now_of_day());
            }
            Ok(installed.is_some())
        })?;
    }
    let up = logged(&backup.log, "sync link up");
    let done = logged(&backup.log, "cold sync complete");
    let report_b = backup.stop()?;
    let report_a = active.stop()?;
    let (Some(up), Some(done)) = (up, done) else {
        bail!("the backup never went Hot with {sessions} sessions:\n{report_b}");
    };
    let keys = |r: &str| {
        [
            "worker.sessions_created=",
            "sync.add_sent=",
            "sync.add_completed=",
            "sync.install_failures=",
            "sync.send_overflow=",
            "sync.repair_sent=",
        ]
        .iter()
        .map(|k| format!("{k}{}", super::counter(r, k.trim_end_matches('='))))
        .collect::<Vec<_>>()
        .join(" ")
    };
    Ok(TandemRun {
        sessions,
        hot_ms: (done - up) * 1e3,
        installed_ms: installed.map(|t| (t - up) * 1e3),
        notes: format!("{} | {}", keys(&report_a), keys(&report_b)),
    })
}

struct CtRun {
    entries: u64,
    ms: f64,
}

/// conntrackd's configuration for one side of the pair.
fn ctd_config(side: &str, local: &str, peer: &str, limit: u32) -> String {
    // The resend queue holds what the peer has not acknowledged: as many
    // as the table, so a resync's burst is resent rather than dropped.
    format!(
        "Sync {{\n Mode FTFW {{\n  DisableExternalCache Off\n  ResendQueueSize {limit}\n  \
         StartupResync off\n }}\n UDP {{\n  IPv4_address {local}\n  IPv4_Destination_Address {peer}\n  \
         Port 3780\n  Interface sync0\n  SndSocketBuffer {CTD_SOCKET_BUFFER}\n  \
         RcvSocketBuffer {CTD_SOCKET_BUFFER}\n  \
         Checksum on\n }}\n}}\nGeneral {{\n Systemd off\n HashSize {size}\n HashLimit {limit}\n \
         LogFile {CTD_DIR}/{side}.log\n Syslog off\n LockFile {CTD_DIR}/{side}.lock\n \
         UNIX {{\n  Path {CTD_DIR}/{side}.ctl\n }}\n NetlinkBufferSize 8388608\n \
         NetlinkBufferSizeMaxGrowth 67108864\n NetlinkOverrunResync on\n \
         Filter From Userspace {{\n  Protocol Accept {{\n   UDP\n  }}\n  Address Ignore {{\n   \
         IPv4_address 127.0.0.1\n   IPv4_address 198.18.1.1\n   IPv4_address 198.18.2.1\n   \
         IPv4_address 198.18.9.0/30\n  }}\n }}\n}}\n",
        size = (limit / 2).next_power_of_two(),
    )
}

/// `conntrackd -C <side's configuration> <flag>` in `netns`: a command to
/// the running daemon of that side.
fn ctd(side: &str, netns: &str, flag: &str) -> Result<String> {
    ns(
        netns,
        &["conntrackd", "-C", &format!("{CTD_DIR}/{side}.conf"), flag],
    )
}

/// `current active connections` of the `cache internal` or `cache
/// external` block of `conntrackd -s`.
fn ctd_count(side: &str, netns: &str, cache: &str) -> u64 {
    let Ok(out) = ctd(side, netns, "-s") else {
        return 0;
    };
    out.split(&format!("cache {cache}"))
        .nth(1)
        .and_then(|b| b.lines().find(|l| l.contains("current active connections")))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

fn conntrackd(frame: &[u8], n: u32, w: u32) -> Result<CtRun> {
    for p in ["conntrackd", "conntrack"] {
        if sh(&["dpkg", "-s", p]).is_err() {
            sh(&["apt-get", "install", "-y", "-qq", p])?;
        }
    }
    // The table limit is the host's (read-only inside a namespace).
    let max_path = "/proc/sys/net/netfilter/nf_conntrack_max";
    let old_max = fs::read_to_string(max_path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let want = u64::from(n) * 2 + 65_536;
    if old_max.is_some_and(|m| m < want) {
        fs::write(max_path, want.to_string()).context("nf_conntrack_max")?;
    }
    // conntrackd asks for its socket buffers with SO_RCVBUF/SO_SNDBUF,
    // which the host's core limits cap (4 MiB here): raise them to what
    // its configuration asks, so a resync's burst is not lost to them.
    let limits: Vec<(&str, Option<String>)> = ["rmem_max", "wmem_max"]
        .into_iter()
        .map(|k| {
            let path = format!("/proc/sys/net/core/{k}");
            let old = fs::read_to_string(&path).ok();
            let _ = fs::write(&path, CTD_SOCKET_BUFFER.to_string());
            (k, old)
        })
        .collect();
    let r = conntrackd_case(frame, n, w);
    for (k, old) in limits {
        if let Some(v) = old {
            let _ = fs::write(format!("/proc/sys/net/core/{k}"), v.trim());
        }
    }
    // Leave the kernel as found, whatever happened.
    for side in ["a", "b"] {
        let _ = sh(&["pkill", "-KILL", "-f", &format!("{CTD_DIR}/{side}.conf")]);
    }
    let _ = ns(DUT, &["conntrack", "-F"]);
    let _ = cases::kernel_nft_off();
    if let Some(m) = old_max.filter(|m| *m < want) {
        let _ = fs::write(max_path, m.to_string());
    }
    r
}

fn conntrackd_case(frame: &[u8], n: u32, w: u32) -> Result<CtRun> {
    ns(
        DUT,
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_udp_timeout=3600",
        ],
    )?;
    cases::kernel_nft_on("198.18.2.100", "198.18.2.131")?;
    fill(frame, n, w, 40_000)?;
    thread::sleep(Duration::from_millis(500));
    let entries: u64 = ns(DUT, &["conntrack", "-C"])?.trim().parse()?;
    // The forwarding stops: the entries stay (an hour's timeout).
    cases::kernel_nft_off()?;
    let _ = fs::remove_dir_all(CTD_DIR);
    fs::create_dir_all(CTD_DIR)?;
    let limit = u32::try_from(entries)?.saturating_mul(2).max(131_072);
    for (side, local, peer) in [
        ("a", "198.18.9.1", "198.18.9.2"),
        ("b", "198.18.9.2", "198.18.9.1"),
    ] {
        fs::write(
            format!("{CTD_DIR}/{side}.conf"),
            ctd_config(side, local, peer, limit),
        )?;
    }
    let spawn = |netns: &str, side: &str| -> Result<Child> {
        Ok(Command::new("ip")
            .args(["netns", "exec", netns, "conntrackd", "-C"])
            .arg(format!("{CTD_DIR}/{side}.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let mut a = spawn(DUT, "a")?;
    // conntrackd dumps the kernel's table into its internal cache at
    // start: the master side is ready once that holds every entry.
    let ready = wait_for(Duration::from_millis(100), || {
        Ok(ctd_count("a", DUT, "internal") >= entries)
    })?;
    let mut b = spawn(PEER, "b")?;
    let up = wait_for(Duration::from_millis(50), || {
        Ok(ctd("b", PEER, "-s").is_ok())
    })?;
    let mut ms = None;
    if ready && up {
        let t0 = Instant::now();
        ctd("b", PEER, "-n")?;
        if wait_for(Duration::from_millis(10), || {
            Ok(ctd_count("b", PEER, "external") >= entries)
        })? {
            ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let have = ctd_count("b", PEER, "external");
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    let Some(ms) = ms else {
        bail!(
            "conntrackd: master ready {ready}, backup up {up}; the backup's external cache \
             holds {have} of {entries} entries"
        );
    };
    Ok(CtRun { entries, ms })
}

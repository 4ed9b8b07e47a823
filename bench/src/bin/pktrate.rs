//! Packet-rate harness: tandemd forwarding vs the Linux kernel forwarding the
//! same 64-byte UDP traffic in the same namespaces, in the same run.
//!
//! ```text
//! tb-gen (gen0) --veth-- (in0) tb-dut (out0) --veth-- (sink0) tb-sink
//! ```
//! The generator is an AF_XDP socket per thread on gen0 (copy mode, one
//! queue per thread, so thread t lands on the DUT's rx queue t); the sink is
//! an XDP program on sink0 that counts and drops. Rates are counted at the
//! sink. `--offload` uses an XDP generator instead (`BPF_PROG_RUN` in
//! live-frames mode, `XDP_TX` out of gen0), which offers several times
//! more. See bench/README.md and shared/reference/machine-ceilings.md.
#![expect(
    unsafe_code,
    reason = "a harness that drives AF_XDP sockets, signals and network namespaces directly"
)]

use std::{
    fs,
    io::Write as _,
    num::NonZeroU32,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMap, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use clap::Parser;
use xsk_rs::{
    FrameDesc, Socket, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

#[derive(Parser, Debug)]
#[command(about = "tandemd vs kernel forwarding, 64-byte UDP, counted at the sink")]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
struct Args {
    /// Seconds measured per case (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Flow counts to run (UDP source ports).
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    flows: Vec<u32>,
    /// Worker counts to run tandemd with; the generator uses as many threads.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<u32>,
    /// The tandemd binary (default: next to this one).
    #[arg(long)]
    tandemd: Option<PathBuf>,
    /// Also measure tandemd (1 worker, 1 flow) with `tandemstat -w 0.1`
    /// polling its segment in parallel, alternating with runs without, and
    /// print the ratio (the cost of reading counters to the data path).
    #[arg(long)]
    stat_poll: bool,
    /// Alternating runs per side for --stat-poll.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Instead of plain forwarding, measure stateful forwarding with NAPT44
    /// on established flows: the kernel with an nftables stateful ruleset
    /// and SNAT to the pool, tandemd with the lab's service set, and
    /// tandemd without services (the AF_XDP path's own ceiling).
    #[arg(long)]
    services: bool,
    /// Measure new sessions per second: every packet opens a new UDP flow
    /// (tuples never repeat within the 1 s session timeout), kernel
    /// conntrack + SNAT vs tandemd, both translating to a 32-address pool.
    #[arg(long)]
    new_sessions: bool,
    /// Measure session offload on established flows with the XDP
    /// generator: tandemd with offload vs without, the kernel with
    /// nftables conntrack + SNAT, the kernel with an nftables flowtable,
    /// a bare XDP_REDIRECT program (the ceiling of the XDP path), and
    /// that program plus one line of per-flow state (the ceiling of a
    /// fast path that keeps any).
    #[arg(long)]
    offload: bool,
    /// With --new-sessions: also run tandemd replicating every session to
    /// a backup peer (a sync driver in namespace tb-peer over a veth, HMAC
    /// on), and report its rate beside the unreplicated one.
    #[arg(long)]
    sync: bool,
    /// With --offload: the session capacity per worker tandemd is given
    /// (`sessions.per_worker`), which sizes its flow table (4 slots of 64
    /// bytes per session and worker, rounded up to a power of two, at most
    /// 2^20 slots: 64 MiB).
    #[arg(long, default_value_t = 65_536)]
    per_worker: u32,
}

const GEN: &str = "tb-gen";
const DUT: &str = "tb-dut";
const SINK: &str = "tb-sink";
const PEER: &str = "tb-peer";
const SYNC_KEY: &str = "pktrate-sync-shared-key";

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn teardown() {
    for n in [GEN, DUT, SINK, PEER] {
        if let Ok(p) = sh(&["ip", "netns", "pids", n]) {
            for pid in p.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process inside our own bench namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = sh(&["ip", "netns", "del", n]);
    }
}

fn mac(n: &str, dev: &str) -> Result<[u8; 6]> {
    let s = ns(n, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

fn ifindex(n: &str, dev: &str) -> Result<u32> {
    Ok(ns(n, &["cat", &format!("/sys/class/net/{dev}/ifindex")])?
        .trim()
        .parse()?)
}

/// Runs `ip` with its arguments as one whitespace-separated string.
fn ip(args: &str) -> Result<String> {
    let mut v = vec!["ip"];
    v.extend(args.split_whitespace());
    sh(&v)
}

fn topology() -> Result<()> {
    teardown();
    for n in [GEN, DUT, SINK] {
        ip(&format!("netns add {n}"))?;
        ip(&format!("-n {n} link set lo up"))?;
    }
    for (a, an, b, bn) in [(GEN, "gen0", DUT, "in0"), (DUT, "out0", SINK, "sink0")] {
        ip(&format!(
            "link add {an} netns {a} numrxqueues 2 numtxqueues 2 type veth \
             peer name {bn} netns {b} numrxqueues 2 numtxqueues 2"
        ))?;
    }
    for (n, cidr, dev) in [
        (GEN, "198.18.1.10/24", "gen0"),
        (DUT, "198.18.1.1/24", "in0"),
        (DUT, "198.18.2.1/24", "out0"),
        (SINK, "198.18.2.10/24", "sink0"),
    ] {
        ip(&format!("-n {n} addr add {cidr} dev {dev}"))?;
        ip(&format!("-n {n} link set {dev} up"))?;
    }
    // Static neighbours: no ARP in the measured window.
    let fmt = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for (addr, (n, d), via) in [
        ("198.18.2.10", (SINK, "sink0"), "out0"),
        ("198.18.1.10", (GEN, "gen0"), "in0"),
    ] {
        let m = fmt(mac(n, d)?);
        ip(&format!(
            "-n {DUT} neigh replace {addr} lladdr {m} dev {via} nud permanent"
        ))?;
    }
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    // The sync link to a replication peer (used by --sync only).
    ip(&format!("netns add {PEER}"))?;
    ip(&format!(
        "link add sync0 netns {DUT} type veth peer name sync0 netns {PEER}"
    ))?;
    for (n, cidr) in [(DUT, "198.18.9.1/30"), (PEER, "198.18.9.2/30")] {
        ip(&format!("-n {n} addr add {cidr} dev sync0"))?;
        ip(&format!("-n {n} link set sync0 up"))?;
    }
    Ok(())
}

/// `[sync]` for tandemd (active) or the peer (backup).
fn sync_section(role: &str) -> String {
    let (local, peer, id) = if role == "active" {
        ("198.18.9.1", "198.18.9.2", 1)
    } else {
        ("198.18.9.2", "198.18.9.1", 2)
    };
    format!(
        "[sync]\nlocal = \"{local}\"\npeer = \"{peer}\"\nrole = \"{role}\"\nnode_id = {id}\n\
         key = \"{SYNC_KEY}\"\n"
    )
}

/// A replication backup in tb-peer: a real sync driver that dials tandemd,
/// asks for a cold sync and counts the session adds it receives (it
/// installs nothing: what is measured is the active side's cost).
struct Peer {
    stop: Arc<AtomicBool>,
    adds: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<()>>,
}

impl Peer {
    fn start(dut_config: &str) -> Result<Self> {
        use tandem_control::{
            config::Config,
            sync::{
                Event, Settings,
                driver::{Driver, Notice},
            },
        };
        // The peer's configuration: tandemd's with the backup's [sync], so
        // the service sets hash the same.
        let text = format!("{}{}", dut_config, sync_section("backup"));
        let cfg = Config::parse(std::path::Path::new("peer.toml"), &text)?;
        let settings = Settings::from_config(&cfg, 2).context("[sync] configured")?;
        let stop = Arc::new(AtomicBool::new(false));
        let adds = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&adds));
        let handle = thread::spawn(move || -> Result<()> {
            enter_ns(PEER)?;
            let mut d = Driver::new(
                settings,
                "198.18.9.2:7468".parse()?,
                "198.18.9.1:7468".parse()?,
            )?;
            while !s.load(Ordering::Relaxed) {
                d.turn(Duration::from_millis(1));
                while let Some(n) = d.poll_notice() {
                    if let Notice::Conn(Event::Add { records, .. }) = n {
                        a.fetch_add(records.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        });
        Ok(Self { stop, adds, handle })
    }

    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("peer thread panicked"))??;
        Ok(self.adds.load(Ordering::Relaxed))
    }
}

/// The 60-byte (64 on the wire) UDP frame the generator replays.
fn template(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 10,
    ];
    let c = tandem_dataplane::wire::checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    // UDP 10000 -> 9, length 26, checksum 0 (none, so ports can vary).
    f.extend_from_slice(&[0x27, 0x10, 0, 9, 0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

struct Bpf {
    ebpf: Ebpf,
}

fn enter_ns(name: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `name`.
fn in_ns<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            enter_ns(name)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
    })
}

impl Bpf {
    /// Loads the harness's programs; attaches the sink to sink0 inside
    /// tb-sink, and to gen0 (where it drops the sink's answers).
    fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(tandem_dataplane::xdp::loader::BENCH_PROGRAMS)?;
        for name in ["tandem_gen", "tandem_redirect", "tandem_redirect_line"] {
            let p: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load()?;
        }
        let sink: &mut Xdp = ebpf
            .program_mut("tandem_sink")
            .context("sink")?
            .try_into()?;
        sink.load()?;
        // The link belongs to the program, whatever thread attached it.
        in_ns(SINK, || Ok(sink.attach("sink0", XdpMode::Driver)?))?;
        in_ns(GEN, || Ok(sink.attach("gen0", XdpMode::Driver)?))?;
        Ok(Self { ebpf })
    }

    /// Sets index 0 of the `u32` array `name`.
    fn set(&mut self, name: &str, v: u32) -> Result<()> {
        let mut m: Array<_, u32> = Array::try_from(self.ebpf.map_mut(name).context("map")?)?;
        m.set(0, v, 0)?;
        Ok(())
    }

    /// Attaches redirect program `prog` (`tandem_redirect` or
    /// `tandem_redirect_line`) to in0 in tb-dut, redirecting to out0 with
    /// the MACs out0 -> sink0.
    fn redirect_on(&mut self, prog: &str) -> Result<XdpLinkId> {
        let out0 = ifindex(DUT, "out0")?;
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&mac(SINK, "sink0")?);
        macs[6..].copy_from_slice(&mac(DUT, "out0")?);
        let mut m: Array<_, [u8; 12]> =
            Array::try_from(self.ebpf.map_mut("TND_REDIRECT_MACS").context("map")?)?;
        m.set(0, macs, 0)?;
        let mut d = DevMap::try_from(self.ebpf.map_mut("TND_REDIRECT_PORT").context("map")?)?;
        // The kernel resolves the ifindex in the caller's namespace.
        in_ns(DUT, || Ok(d.set(0, out0, None, 0)?))?;
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .context("redirect")?
            .try_into()?;
        in_ns(DUT, || Ok(p.attach("in0", XdpMode::Driver)?))
    }

    fn redirect_off(&mut self, prog: &str, link: XdpLinkId) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .context("redirect")?
            .try_into()?;
        p.detach(link)?;
        Ok(())
    }

    fn sink_count(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("TND_SINK_COUNT").context("sink map")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// UMEM frames per generator thread: more than any flow count we run, so
/// every flow appears in each lap of the ring.
const GEN_FRAMES: u32 = 16384;
/// Copy-mode AF_XDP transmits at most 32 frames per sendto().
const GEN_BATCH: usize = 32;

/// One generator thread: an AF_XDP socket on gen0 queue `queue`, its UMEM
/// pre-written with the template over `flows` source ports, sent round-robin
/// until `stop`. Returns frames sent.
fn gen_thread(queue: u32, frame: &[u8], flows: u32, churn: bool, stop: &AtomicBool) -> Result<u64> {
    enter_ns(GEN)?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(2048).map_err(|e| anyhow::anyhow!("{e}"))?)
        .comp_queue_size(QueueSize::new(4096).map_err(|e| anyhow::anyhow!("{e}"))?)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (umem, mut descs) = Umem::new(
        umem_cfg,
        NonZeroU32::new(GEN_FRAMES).context("frames")?,
        false,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sock_cfg = SocketConfig::builder()
        .tx_queue_size(QueueSize::new(4096).map_err(|e| anyhow::anyhow!("{e}"))?)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let iface: Interface = "gen0".parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The previous run's socket on this queue may still be tearing down.
    let mut tries = 0;
    let (mut tx, _rx, rings) = loop {
        // SAFETY: one socket per (gen0, queue), UMEM not shared.
        match unsafe { Socket::new(sock_cfg, &umem, &iface, queue) } {
            Ok(s) => break s,
            Err(e) if tries < 20 => {
                tries += 1;
                if tries == 20 {
                    bail!("generator socket on gen0 queue {queue}: {e:?}");
                }
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!("generator socket on gen0 queue {queue}: {e:?}"),
        }
    };
    let (_fq, mut cq) = rings.context("no completion ring")?;
    for (i, d) in descs.iter_mut().enumerate() {
        // Each thread its own flows, as RSS would put a flow on one queue.
        let port = (10000 + queue * flows.max(1) + i as u32 % flows.max(1)) as u16;
        // SAFETY: the frame is on no ring yet.
        let mut data = unsafe { umem.data_mut(d) };
        data.cursor().write_all(frame)?;
        data.contents_mut()[34..36].copy_from_slice(&port.to_be_bytes());
    }
    let n = descs.len();
    let mut comp = vec![FrameDesc::default(); 1024];
    let (mut pos, mut outstanding, mut sent) = (0usize, 0usize, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // Copy mode completes in order: only the count matters.
        // SAFETY: completions return frames of this UMEM.
        outstanding -= unsafe { cq.consume(&mut comp) };
        let k = GEN_BATCH.min(n - outstanding).min(n - pos);
        let k = k.min(tx.nb_free(k as u32) as usize);
        if churn {
            // A fresh flow per packet: the source port and the source
            // host (198.18.1.10-249) from a counter, 15 million tuples
            // before one repeats; the sink still sees port 9.
            for (j, d) in descs[pos..pos + k].iter_mut().enumerate() {
                let c = sent + j as u64 + u64::from(queue) * 7_680_000;
                let sport = 1024 + (c % 64_000) as u16;
                let host = 10 + ((c / 64_000) % 240) as u8;
                // SAFETY: the frame is complete (not on any ring).
                let mut data = unsafe { umem.data_mut(d) };
                let b = data.contents_mut();
                b[29] = host;
                b[24..26].copy_from_slice(&[0, 0]);
                let csum = tandem_dataplane::wire::checksum(&b[14..34], 0);
                b[24..26].copy_from_slice(&csum.to_be_bytes());
                b[34..36].copy_from_slice(&sport.to_be_bytes());
            }
        }
        if k > 0 {
            // SAFETY: these frames are not on any ring (outstanding < n).
            let done = unsafe { tx.produce(&descs[pos..pos + k]) };
            pos = (pos + done) % n;
            outstanding += done;
            sent += done as u64;
        }
        tx.wakeup()?;
    }
    Ok(sent)
}

/// Runs `threads` generator threads, pinned from the last core down (the
/// DUT's workers are pinned from core 0 up), until `stop`; returns frames sent.
fn generate(frame: &[u8], flows: u32, threads: u32, churn: bool, stop: &AtomicBool) -> Result<u64> {
    pinned(threads, |t| gen_thread(t, frame, flows, churn, stop))
}

/// Runs `body(t)` for `t` in `0..threads`, thread t pinned to the t-th core
/// from the last; returns the sum of what they return.
fn pinned(threads: u32, body: impl Fn(u32) -> Result<u64> + Sync) -> Result<u64> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let body = &body;
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let core = cores
                    .len()
                    .checked_sub(1 + t as usize % cores.len().max(1))
                    .and_then(|i| cores.get(i).copied());
                s.spawn(move || -> Result<u64> {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    body(t)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(total)
    })
}

#[expect(clippy::cast_precision_loss, reason = "packet counts far below 2^52")]
fn per_sec(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}

struct Sample {
    pps: f64,
    offered: f64,
}

fn measure(bpf: &Bpf, frame: &[u8], flows: u32, threads: u32, secs: u64) -> Result<Sample> {
    measure_with(bpf, frame, flows, threads, secs, false)
}

fn measure_with(
    bpf: &Bpf,
    frame: &[u8],
    flows: u32,
    threads: u32,
    secs: u64,
    churn: bool,
) -> Result<Sample> {
    window(bpf, secs, |stop| {
        generate(frame, flows, threads, churn, stop)
    })
}

/// The rate at the sink over `secs`, after a 1 s warm-up, while `generator`
/// runs until the `stop` it is given is set (it returns frames sent).
fn window(
    bpf: &Bpf,
    secs: u64,
    generator: impl FnOnce(&AtomicBool) -> Result<u64> + Send,
) -> Result<Sample> {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let g = s.spawn(|| generator(&stop));
        thread::sleep(Duration::from_secs(1));
        let c0 = bpf.sink_count()?;
        let t0 = Instant::now();
        thread::sleep(Duration::from_secs(secs));
        let c1 = bpf.sink_count()?;
        let dt = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let sent = g
            .join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))??;
        Ok(Sample {
            pps: per_sec(c1 - c0, dt),
            offered: per_sec(sent, dt + 1.0),
        })
    })
}

struct Tandemd {
    child: Child,
    log: PathBuf,
}

fn start_tandemd(bin: &PathBuf, workers: u32) -> Result<Tandemd> {
    start_tandemd_with(bin, workers, "")
}

/// tandemd with `extra` appended to the base configuration.
fn start_tandemd_with(bin: &PathBuf, workers: u32, extra: &str) -> Result<Tandemd> {
    let dir = std::env::temp_dir();
    let cfg = dir.join("tandem-pktrate.toml");
    let log = dir.join("tandem-pktrate.log");
    fs::write(
        &cfg,
        format!(
            "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n[dataplane]\nworkers = {workers}\nbind = \"copy\"\n{extra}"
        ),
    )?;
    let f = fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", DUT])
        .arg(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--instance", "pktrate"])
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" running") {
            return Ok(Tandemd { child, log });
        }
        if Instant::now() > deadline {
            bail!("tandemd did not start:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Tandemd {
    /// Stops it and returns the exit report (final counters, XSK statistics).
    fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        self.child.wait()?;
        let text = fs::read_to_string(&self.log)?;
        Ok(text
            .lines()
            .filter(|l| l.contains("final counters"))
            .map(|l| l.split_once("daemon: ").map_or(l, |(_, r)| r).to_owned())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

fn interesting(report: &str) -> String {
    const KEYS: [&str; 15] = [
        "worker.sessions_created=",
        "worker.sessions_refused=",
        "worker.handoffs_received=",
        "drop.handoff_full=",
        "worker.rx_packets=",
        "worker.tx_packets=",
        "worker.idle_polls=",
        "worker.fill_short=",
        "drop.tx_ring_full=",
        "xdp.drop_no_socket=",
        "rx_ring_full=",
        "rx_fill_ring_empty_descs=",
        "sync.add_sent=",
        "sync.send_overflow=",
        "sync.batch_begin_failures=",
    ];
    let mut sums: Vec<(String, u64)> = KEYS.iter().map(|k| ((*k).to_owned(), 0)).collect();
    for kv in report.split_whitespace() {
        for (k, v) in &mut sums {
            if let Some(n) = kv
                .strip_prefix(k.as_str())
                .and_then(|x| x.parse::<u64>().ok())
            {
                *v += n;
            }
        }
    }
    sums.iter()
        .filter(|(k, v)| *v > 0 || !k.starts_with("sync."))
        .map(|(k, v)| format!("{k}{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("pktrate needs root (namespaces, XDP, BPF_PROG_RUN)");
    }
    let tandemd = match args.tandemd.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("tandemd"),
    };
    if !tandemd.exists() {
        bail!(
            "{} not found (cargo build --release -p tandem-dataplane)",
            tandemd.display()
        );
    }
    topology()?;
    let r = run(&args, &tandemd);
    teardown();
    r
}

fn run(args: &Args, tandemd: &PathBuf) -> Result<()> {
    let bpf = Bpf::load()?;
    let frame = template(mac(DUT, "in0")?, mac(GEN, "gen0")?);
    if args.services {
        return services(args, &bpf, &frame, tandemd);
    }
    if args.new_sessions {
        return new_sessions(args, &bpf, &frame, tandemd);
    }
    if args.offload {
        return offload(args, bpf, &frame, tandemd);
    }
    println!(
        "pktrate: 64-byte UDP, {} s per case, counted at the sink; Mpps (offered Mpps)",
        args.seconds
    );
    println!(
        "{:<8} {:<8} {:>18} {:>18} {:>7}",
        "flows", "workers", "kernel", "tandemd", "ratio"
    );
    let mut notes = Vec::new();
    for &w in &args.workers {
        for &flows in &args.flows {
            // (a) the kernel, forwarding on, GRO on as the ceilings assume.
            ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            ns(DUT, &["ethtool", "-K", "in0", "gro", "on"])?;
            let k = measure(&bpf, &frame, flows, w, args.seconds)?;
            ns(DUT, &["ethtool", "-K", "in0", "gro", "off"])?;
            ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
            // (b) tandemd with `w` workers, the kernel's forwarding off.
            let d = start_tandemd(tandemd, w)?;
            let t = measure(&bpf, &frame, flows, w, args.seconds)?;
            let report = d.stop()?;
            println!(
                "{:<8} {:<8} {:>8.3} ({:>6.2}) {:>8.3} ({:>6.2}) {:>7.2}",
                flows,
                w,
                k.pps / 1e6,
                k.offered / 1e6,
                t.pps / 1e6,
                t.offered / 1e6,
                t.pps / k.pps.max(1.0)
            );
            notes.push(format!(
                "flows={flows} workers={w}: {}",
                interesting(&report)
            ));
        }
    }
    println!("tandemd counters per case (summed over workers/sockets):");
    for n in notes {
        println!("  {n}");
    }
    if args.stat_poll {
        stat_poll(args, &bpf, &frame, tandemd)?;
    }
    Ok(())
}

/// tandemd with and without a `tandemstat -w 0.1` reader, alternating.
fn stat_poll(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
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
fn service_set(pool: &[String], udp_timeout: u32, per_worker: u32) -> String {
    let pool = pool
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[sessions]\nper_worker = {per_worker}\n[sessions.timeouts]\nudp = {udp_timeout}\n\
         [[service_set]]\nname = \"bench\"\n[service_set.nat]\npool = [{pool}]\n"
    )
}

/// The kernel's equivalent: forward only what the inside started (or its
/// replies), SNAT to the pool.
fn nft_ruleset(first: &str, last: &str) -> String {
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

fn kernel_nft_on(first: &str, last: &str) -> Result<()> {
    let path = std::env::temp_dir().join("tandem-pktrate.nft");
    fs::write(&path, nft_ruleset(first, last))?;
    ns(DUT, &["nft", "-f", path.to_str().context("path")?])?;
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns(DUT, &["ethtool", "-K", "in0", "gro", "on"])?;
    Ok(())
}

fn kernel_nft_off() -> Result<()> {
    ns(DUT, &["ethtool", "-K", "in0", "gro", "off"])?;
    ns(DUT, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    ns(DUT, &["nft", "flush", "ruleset"])?;
    Ok(())
}

/// Established flows: kernel conntrack + SNAT, tandemd with services,
/// tandemd without (the ceiling of the AF_XDP path).
fn services(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
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

/// New sessions per second: every packet a new flow, both sides
/// translating to 32 pool addresses, 1 s UDP timeouts.
fn new_sessions(args: &Args, bpf: &Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
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
        kernel_nft_on("198.18.2.100", "198.18.2.131")?;
        let k = measure_with(bpf, frame, 1, w, args.seconds, true)?;
        kernel_nft_off()?;
        let services = service_set(&pool, 1, 4_000_000 / w);
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
            let report = d.stop()?;
            peer.stop()?;
            print!(
                " {:>14.3} {:>10.2} {:>12.3}",
                r.pps / 1e6,
                r.pps / t.pps.max(1.0),
                per_sec(adds, secs) / 1e6
            );
            notes.push(format!("workers={w} sync: {}", interesting(&report)));
        }
        println!();
    }
    println!("tandemd counters per case:");
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}

/// Frames per `BPF_PROG_RUN` call of the XDP generator (~25-100 ms each).
const XDP_GEN_REPEAT: u32 = 1 << 18;
/// Frames the kernel sends per batch in live-frames mode.
const XDP_GEN_BATCH: u32 = 64;

/// One XDP generator thread: `BPF_PROG_RUN` of `tandem_gen` in live-frames
/// mode, `XDP_TX` out of gen0, `repeat` frames per call, until `stop` (or,
/// with `total`, until that many are sent, 256 every 2 ms: a gentle pass
/// over every flow). Returns frames sent.
fn xdp_gen_thread(
    bpf: &Bpf,
    frame: &[u8],
    gen0: u32,
    total: Option<u64>,
    stop: &AtomicBool,
) -> Result<u64> {
    enter_ns(GEN)?;
    let prog: &Xdp = bpf.ebpf.program("tandem_gen").context("gen")?.try_into()?;
    // struct xdp_md: data 0, data_end = len, ingress_ifindex = gen0, queue 0.
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
    md[12..16].copy_from_slice(&gen0.to_ne_bytes());
    let repeat = if total.is_some() { 256 } else { XDP_GEN_REPEAT };
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && total.is_none_or(|t| sent < t) {
        let mut opts = TestRunOptions::new();
        opts.ctx_in = Some(&md);
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(XDP_GEN_BATCH);
        prog.test_run(opts)
            .map_err(|e| anyhow::anyhow!("BPF_PROG_RUN (live frames): {e}"))?;
        sent += u64::from(repeat);
        if total.is_some() {
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(sent)
}

/// Runs `threads` XDP generator threads pinned from the last core down
/// (each CPU sends its own `flows` flows).
fn xdp_generate(
    bpf: &Bpf,
    frame: &[u8],
    threads: u32,
    total: Option<u64>,
    stop: &AtomicBool,
) -> Result<u64> {
    let gen0 = ifindex(GEN, "gen0")?;
    pinned(threads, |_| xdp_gen_thread(bpf, frame, gen0, total, stop))
}

/// Establishes the flows: the sink answers while every generator thread
/// sends each of its flows three times, gently; then it counts again.
fn establish(bpf: &mut Bpf, frame: &[u8], flows: u32, threads: u32) -> Result<()> {
    bpf.set("TND_SINK_REFLECT", 1)?;
    let stop = AtomicBool::new(false);
    let r = xdp_generate(bpf, frame, threads, Some(3 * u64::from(flows)), &stop);
    thread::sleep(Duration::from_millis(300));
    bpf.set("TND_SINK_REFLECT", 0)?;
    r.map(|_| ())
}

/// The rate at the sink over `secs` (after a 1 s warm-up) with the XDP
/// generator at full speed.
fn xdp_measure(bpf: &Bpf, frame: &[u8], threads: u32, secs: u64) -> Result<Sample> {
    window(bpf, secs, |stop| {
        xdp_generate(bpf, frame, threads, None, stop)
    })
}

/// The kernel's flowtable variant of `nft_ruleset`: established flows
/// skip the forward path (software flowtable on in0 and out0).
fn nft_flowtable_ruleset(pool: &str) -> String {
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
fn kernel_with(ruleset: &str) -> Result<()> {
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

fn kernel_off() -> Result<()> {
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
fn offload(args: &Args, mut bpf: Bpf, frame: &[u8], tandemd: &PathBuf) -> Result<()> {
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
fn offload_notes(report: &str) -> String {
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

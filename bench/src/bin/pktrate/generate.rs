//! Traffic: the frame template, the AF_XDP generator, the XDP program
//! generator (`BPF_PROG_RUN` in live-frames mode) and the measurement
//! windows counted at the sink.

// The harness's parts share one vocabulary: its imports, arguments and
// helpers.
use super::*;

/// The 60-byte (64 on the wire) UDP frame the generator replays.
pub(crate) fn template(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
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

pub(crate) struct Bpf {
    pub(crate) ebpf: Ebpf,
}

pub(crate) fn enter_ns(name: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `name`.
pub(crate) fn in_ns<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
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
    pub(crate) fn load() -> Result<Self> {
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
    pub(crate) fn set(&mut self, name: &str, v: u32) -> Result<()> {
        let mut m: Array<_, u32> = Array::try_from(self.ebpf.map_mut(name).context("map")?)?;
        m.set(0, v, 0)?;
        Ok(())
    }

    /// Attaches redirect program `prog` (`tandem_redirect` or
    /// `tandem_redirect_line`) to in0 in tb-dut, redirecting to out0 with
    /// the MACs out0 -> sink0.
    pub(crate) fn redirect_on(&mut self, prog: &str) -> Result<XdpLinkId> {
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

    pub(crate) fn redirect_off(&mut self, prog: &str, link: XdpLinkId) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .context("redirect")?
            .try_into()?;
        p.detach(link)?;
        Ok(())
    }

    pub(crate) fn sink_count(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("TND_SINK_COUNT").context("sink map")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// UMEM frames per generator thread: more than any flow count we run, so
/// every flow appears in each lap of the ring.
pub(crate) const GEN_FRAMES: u32 = 16384;
/// Copy-mode AF_XDP transmits at most 32 frames per sendto().
pub(crate) const GEN_BATCH: usize = 32;

/// One generator thread: an AF_XDP socket on gen0 queue `queue`, its UMEM
/// pre-written with the template over `flows` source ports, sent round-robin
/// until `stop`. Returns frames sent.
/// Frames per second each generator thread sends at most (0: as fast as
/// it can): the `--sync` case's half-rate run.
pub(crate) static PACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Frames each generator thread sends before it stops by itself (0: no
/// limit): `--cold-sync` fills a table with a known number of flows.
pub(crate) static LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn gen_thread(
    queue: u32,
    frame: &[u8],
    flows: u32,
    churn: bool,
    stop: &AtomicBool,
) -> Result<u64> {
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
    let (pace, began) = (PACE.load(Ordering::Relaxed), Instant::now());
    let limit = match LIMIT.load(Ordering::Relaxed) {
        0 => u64::MAX,
        l => l,
    };
    while !stop.load(Ordering::Relaxed) && sent < limit {
        // Ahead of the pace: wait until the frames sent are due.
        if let Some(us) = sent.saturating_mul(1_000_000).checked_div(pace)
            && let Some(wait) = Duration::from_micros(us).checked_sub(began.elapsed())
        {
            thread::sleep(wait);
        }
        // Copy mode completes in order: only the count matters.
        // SAFETY: completions return frames of this UMEM.
        outstanding -= unsafe { cq.consume(&mut comp) };
        let k = GEN_BATCH.min(n - outstanding).min(n - pos);
        let k = k.min(tx.nb_free(k as u32) as usize);
        let k = k.min(usize::try_from(limit - sent).unwrap_or(usize::MAX));
        if churn {
            // A fresh flow per packet: the source host (198.18.1.10-249)
            // and port from a counter, 15 million tuples before one
            // repeats; the sink still sees port 9. The hosts take turns:
            // the kernel's SNAT keeps a source host on one pool address,
            // whose 64k ports one host alone would exhaust.
            for (j, d) in descs[pos..pos + k].iter_mut().enumerate() {
                let c = sent + j as u64 + u64::from(queue) * 7_680_000;
                let host = 10 + (c % 240) as u8;
                let sport = 1024 + ((c / 240) % 64_000) as u16;
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
pub(crate) fn generate(
    frame: &[u8],
    flows: u32,
    threads: u32,
    churn: bool,
    stop: &AtomicBool,
) -> Result<u64> {
    pinned(threads, |t| gen_thread(t, frame, flows, churn, stop))
}

/// Runs `body(t)` for `t` in `0..threads`, thread t pinned to the t-th core
/// from the last; returns the sum of what they return.
pub(crate) fn pinned(threads: u32, body: impl Fn(u32) -> Result<u64> + Sync) -> Result<u64> {
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
pub(crate) fn per_sec(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}

pub(crate) struct Sample {
    pub(crate) pps: f64,
    pub(crate) offered: f64,
}

pub(crate) fn measure(
    bpf: &Bpf,
    frame: &[u8],
    flows: u32,
    threads: u32,
    secs: u64,
) -> Result<Sample> {
    measure_with(bpf, frame, flows, threads, secs, false)
}

pub(crate) fn measure_with(
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
pub(crate) fn window(
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

/// Frames per `BPF_PROG_RUN` call of the XDP generator (~25-100 ms each).
pub(crate) const XDP_GEN_REPEAT: u32 = 1 << 18;
/// Frames the kernel sends per batch in live-frames mode.
pub(crate) const XDP_GEN_BATCH: u32 = 64;

/// One XDP generator thread: `BPF_PROG_RUN` of `tandem_gen` in live-frames
/// mode, `XDP_TX` out of gen0, `repeat` frames per call, until `stop` (or,
/// with `total`, until that many are sent, 256 every 2 ms: a gentle pass
/// over every flow). Returns frames sent.
pub(crate) fn xdp_gen_thread(
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
pub(crate) fn xdp_generate(
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
pub(crate) fn establish(bpf: &mut Bpf, frame: &[u8], flows: u32, threads: u32) -> Result<()> {
    bpf.set("TND_SINK_REFLECT", 1)?;
    let stop = AtomicBool::new(false);
    let r = xdp_generate(bpf, frame, threads, Some(3 * u64::from(flows)), &stop);
    thread::sleep(Duration::from_millis(300));
    bpf.set("TND_SINK_REFLECT", 0)?;
    r.map(|_| ())
}

/// The rate at the sink over `secs` (after a 1 s warm-up) with the XDP
/// generator at full speed.
pub(crate) fn xdp_measure(bpf: &Bpf, frame: &[u8], threads: u32, secs: u64) -> Result<Sample> {
    window(bpf, secs, |stop| {
        xdp_generate(bpf, frame, threads, None, stop)
    })
}

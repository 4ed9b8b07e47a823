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
    /// With --new-sessions: also run tandemd with the event log on (RFC
    /// 5424 syslog and IPFIX NAT events for every session to collectors
    /// on the node's loopback that count what they receive), alternating
    /// --rounds times with runs without, and report the ratio and where
    /// every event went.
    #[arg(long)]
    events: bool,
    /// With --new-sessions: the NAT pool's `port_reuse_delay_s` (unset:
    /// tandemd's own default, 120 s; at 0 ports are reused at once, as the
    /// kernel's conntrack reuses them). The 32-address pool holds about
    /// 2 M pairs: with the delay, runs past ~4 s at full rate run out of
    /// ports.
    #[arg(long)]
    port_reuse_delay: Option<u32>,
    /// With --new-sessions: also run this (older) tandemd, given the
    /// service set without the subscriber keys it may not know
    /// (`mapping`, `block_size`, ...), alternating --rounds times with
    /// this build's, and report this build's rate as a ratio of it.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// With --offload: the session capacity per worker tandemd is given
    /// (`sessions.per_worker`), which sizes its flow table (4 slots of 64
    /// bytes per session and worker, rounded up to a power of two, at most
    /// 2^20 slots: 64 MiB).
    #[arg(long, default_value_t = 65_536)]
    per_worker: u32,
    /// Measure cold sync for each of these session counts: a backup
    /// tandemd's link up to Hot (and to every session installed) against
    /// an active holding that many, beside conntrackd's resync (`-n`) of
    /// as many kernel conntrack entries. Uses the first --workers value.
    #[arg(long, value_delimiter = ',')]
    cold_sync: Vec<u32>,
}

mod cases;
mod coldsync;
mod generate;
mod netns;

use self::{
    cases::{new_sessions, offload, services, stat_poll},
    generate::{Bpf, enter_ns, establish, measure, measure_with, per_sec, template, xdp_measure},
    netns::{
        DUT, GEN, PEER, Peer, SINK, ifindex, mac, ns, sh, start_tandemd, start_tandemd_in,
        start_tandemd_with, sync_section, teardown, topology,
    },
};

/// The sum of every `key=N` in a tandemd exit report.
fn counter(report: &str, key: &str) -> u64 {
    report
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        .sum()
}

fn interesting(report: &str) -> String {
    const KEYS: [&str; 18] = [
        "worker.sessions_created=",
        "worker.nat_alloc_failures=",
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
        "sync.repair_sent=",
        "sync.repair_ended=",
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
    if !args.cold_sync.is_empty() {
        return coldsync::cold_sync(args, &frame, tandemd);
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

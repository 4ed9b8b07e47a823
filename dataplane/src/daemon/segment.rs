//! The instance's stats segment: every entry named before the segment is
//! created, and the kernel-side counters the control loop copies in.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, RawFd},
    sync::{Arc, Mutex, atomic::Ordering},
};

use tandem_common::XdpCounter;
use tandem_control::{
    config::Config,
    stats::{self, Kind, Schema, SegmentWriter},
};

use super::{DaemonError, iface::Interfaces, socket::Bound};
use crate::{
    counters::{self, IfaceCounter},
    events,
    fib::Fib,
    ha,
    sync::thread as sync_thread,
    sys,
    sys::XskStats,
    xdp::loader::Loader,
};

/// Slots of the counters the control loop copies from the kernel.
pub(super) struct KernelSlots {
    /// First slot of `XdpCounter::COUNT` x cpus, counter-major.
    xdp_first: u32,
    cpus: usize,
    /// First slot of the fast path's interface counters (the four of
    /// `IfaceCounter` per interface, interface-major), and how many
    /// interfaces.
    fast_first: u32,
    ifaces: u32,
    /// (socket fd, first of 6 slots) per AF_XDP socket.
    xsk: Vec<(RawFd, u32)>,
}

/// The created segment and where each thread's entries sit in it.
pub(super) struct Layout {
    pub segment: Arc<SegmentWriter>,
    /// First slot of each worker's block.
    pub workers: Vec<u32>,
    pub kernel: KernelSlots,
    pub sync: Option<sync_thread::Slots>,
    pub ha: Option<ha::Slots>,
    pub events: events::Slots,
}

/// Names every entry (worker blocks, XDP verdicts per CPU, socket
/// statistics, sync and redundancy entries) and creates the segment.
pub(super) fn create(
    cfg: &Config,
    instance: &str,
    ifaces: &Interfaces,
    bound: &[Bound],
    fib: &Fib,
) -> Result<Layout, DaemonError> {
    let workers = ifaces.worker_count();
    let mut schema = Schema::new();
    let mut firsts = Vec::new();
    for w in 0..workers {
        firsts.push(counters::register(&mut schema, w, workers, &ifaces.names)?);
    }
    let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
    schema.align_block();
    let mut xdp_first = None;
    for c in XdpCounter::ALL {
        for cpu in 0..cpus {
            let s = schema.push(
                "tandem_xdp_verdicts_total",
                &format!("cpu={cpu},verdict={}", c.name()),
                Kind::Counter,
            )?;
            xdp_first.get_or_insert(s);
        }
    }
    // What the fast path forwarded, in the interface families beside the
    // workers' entries (labelled path=fast), so that every sum by
    // interface counts it.
    let mut fast_first = None;
    for name in &ifaces.names {
        for c in IfaceCounter::ALL {
            let s = schema.push(
                &format!("tandem_iface_{}_total", c.name()),
                &format!("iface={name},path=fast"),
                Kind::Counter,
            )?;
            fast_first.get_or_insert(s);
        }
    }
    let mut xsk = Vec::new();
    for p in bound.iter().flat_map(|b| &b.ports) {
        let mut first = None;
        for stat in XskStats::NAMES {
            let s = schema.push(
                &format!("tandem_xsk_{stat}_total"),
                &format!("iface={},queue={}", ifaces.names[p.slot], p.queue),
                Kind::Counter,
            )?;
            first.get_or_insert(s);
        }
        xsk.push((p.rx.fd().as_raw_fd(), first.expect("six stats")));
    }
    let sync = match sync_thread::addresses(cfg) {
        Some((local, peer)) => {
            let iface = fib
                .links()
                .find(|(_, l)| match local.ip() {
                    IpAddr::V4(a) => l.v4.contains(&a),
                    IpAddr::V6(a) => l.v6.contains(&a),
                })
                .map_or("-", |(_, l)| l.name.as_str());
            Some(sync_thread::register(&mut schema, local, peer, iface)?)
        }
        None => None,
    };
    let ha = ha::register(&mut schema, cfg, fib, &ifaces.names, workers)?;
    let events = events::register(&mut schema)?;
    let segment = Arc::new(SegmentWriter::create(
        &stats::segment_path(instance),
        &schema,
        std::process::id(),
        ifaces.workers,
        stats::unix_ns(),
    )?);
    tracing::info!(path = %segment.path().display(), "stats segment created");
    Ok(Layout {
        segment,
        workers: firsts,
        kernel: KernelSlots {
            xdp_first: xdp_first.expect("xdp counters"),
            fast_first: fast_first.expect("two interfaces"),
            ifaces: ifaces.names.len() as u32,
            cpus,
            xsk,
        },
        sync,
        ha,
        events,
    })
}

impl KernelSlots {
    /// Copies the XDP per-CPU verdicts and the sockets' kernel statistics
    /// into the segment.
    pub fn copy(&self, loader: &Mutex<Loader>, segment: &SegmentWriter) {
        let per_cpu = loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters_per_cpu();
        match per_cpu {
            Ok(rows) => {
                for (c, vals) in rows {
                    let base = self.xdp_first + (c as u32) * self.cpus as u32;
                    for (cpu, v) in vals.iter().take(self.cpus).enumerate() {
                        segment
                            .value(base + cpu as u32)
                            .store(*v, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading XDP counters"),
        }
        match loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fast_iface_totals(self.ifaces)
        {
            Ok(rows) => {
                for (i, row) in rows.iter().enumerate() {
                    let base = self.fast_first + (i * row.len()) as u32;
                    for (k, v) in row.iter().enumerate() {
                        segment.value(base + k as u32).store(*v, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the fast path's interface counters"),
        }
        for (fd, first) in &self.xsk {
            if let Ok(st) = sys::xsk_stats(*fd) {
                for (i, v) in st.values().iter().enumerate() {
                    segment.value(first + i as u32).store(*v, Ordering::Relaxed);
                }
            }
        }
    }
}

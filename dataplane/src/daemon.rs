//! tandemd's lifecycle: load, bind, attach, run workers, shut down clean.
//!
//! Design: everything that can fail is done before the XDP program is
//! attached (sockets bound, fill rings primed, FIB dumped), so a half-started
//! daemon never steers traffic into nothing. Teardown is drop order: workers
//! stop and release their sockets, then the loader's link detaches XDP.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use tandem_common::XdpCounter;
use tandem_control::config::{BindMode, Config};
use xsk_rs::{
    Socket, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::{
    counters::{IfaceCounter, WorkerBlock, WorkerCounter},
    fib::{Fib, FibHandle},
    forward::{DropReason, Limits, RateLimit},
    loader::{Loader, LoaderError},
    netlink::{self, NetlinkError},
    sys::{self, PuntSocket, SyscallError},
    worker::{Port, Worker},
};

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        #[source]
        source: SyscallError,
    },
    #[error(
        "dataplane.workers = {workers}, but {iface} has only {queues} rx queue(s); every worker \
         needs a queue on each interface (raise the queue count, e.g. `ethtool -L {iface} combined N`)"
    )]
    TooFewQueues {
        workers: u32,
        iface: String,
        queues: u32,
    },
    #[error("UMEM for worker {worker}: {message}")]
    Umem { worker: usize, message: String },
    #[error("AF_XDP socket on {iface} queue {queue}: {message}")]
    Socket {
        iface: String,
        queue: u32,
        message: String,
    },
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Syscall(#[from] SyscallError),
}

/// A running daemon.
pub struct Daemon {
    loader: Arc<Mutex<Loader>>,
    workers: Vec<thread::JoinHandle<Worker>>,
    blocks: Vec<Arc<WorkerBlock>>,
    monitor: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    ifnames: Vec<String>,
}

fn queue_size(n: u32) -> QueueSize {
    // Validated as a power of two by the config loader.
    QueueSize::new(n).expect("config validated ring size")
}

impl Daemon {
    /// Starts the data path described by `cfg`.
    pub fn start(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Self, DaemonError> {
        sys::raise_memlock();
        let d = &cfg.dataplane;
        let ifnames = vec![
            cfg.interfaces.inside.clone(),
            cfg.interfaces.outside.clone(),
        ];
        let mut ifindexes = Vec::new();
        let mut queues = Vec::new();
        for name in &ifnames {
            let idx = sys::if_index(name).map_err(|source| DaemonError::Interface {
                name: name.clone(),
                source,
            })?;
            ifindexes.push(idx);
            queues.push(sys::rx_queue_count(name));
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let min_queues = queues.iter().copied().min().unwrap_or(1);
        let workers = if d.workers == 0 {
            min_queues.min(cores.len().max(1) as u32)
        } else {
            d.workers
        };
        for (name, q) in ifnames.iter().zip(&queues) {
            if workers > *q {
                return Err(DaemonError::TooFewQueues {
                    workers,
                    iface: name.clone(),
                    queues: *q,
                });
            }
        }

        let mut loader = Loader::load()?;
        for (slot, (idx, q)) in ifindexes.iter().zip(&queues).enumerate() {
            loader.add_iface(*idx, slot as u32, *q)?;
        }

        let fib = netlink::dump()?;
        let fib_handle = FibHandle::new(fib.clone());
        loader.sync_local_addresses(&local_addresses(&fib, cfg))?;

        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(d.frame_size).expect("validated frame size"))
            .fill_queue_size(queue_size(d.fill_ring))
            .comp_queue_size(queue_size(d.comp_ring))
            .build()
            .map_err(|e| DaemonError::Umem {
                worker: 0,
                message: e.to_string(),
            })?;
        let bind = match d.bind {
            BindMode::Auto => BindFlags::XDP_USE_NEED_WAKEUP,
            BindMode::Copy => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY,
            BindMode::Zerocopy => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_ZEROCOPY,
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(queue_size(d.rx_ring))
            .tx_queue_size(queue_size(d.tx_ring))
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();

        let mut built = Vec::new();
        for w in 0..workers as usize {
            let (umem, free) = Umem::new(
                umem_cfg,
                NonZeroU32::new(d.frames_per_worker).expect("validated frame count"),
                false,
            )
            .map_err(|e| DaemonError::Umem {
                worker: w,
                message: e.to_string(),
            })?;
            let mut ports = Vec::new();
            for (slot, (name, q)) in ifnames.iter().zip(&queues).enumerate() {
                // Queue q belongs to worker q % workers.
                for queue in (w as u32..*q).step_by(workers as usize) {
                    let port = bind_port(&umem, sock_cfg, name, slot, ifindexes[slot], queue)?;
                    loader.set_xsk(slot as u32, queue, port.rx.fd())?;
                    ports.push(port);
                }
            }
            let block = Arc::new(WorkerBlock::default());
            let mut worker = Worker {
                id: w,
                umem,
                ports,
                free,
                batch: d.batch as usize,
                fib: fib_handle.reader(),
                limits: Limits {
                    icmp: RateLimit::new(d.icmp_errors_per_sec),
                    punt: RateLimit::new(d.punts_per_sec),
                },
                punt: PuntSocket::new()?,
                block,
                stop: Arc::clone(&stop),
                slot_ifindex: ifindexes.clone(),
            };
            worker.prime(d.fill_ring as usize);
            built.push(worker);
        }

        for name in &ifnames {
            let mode = loader.attach(name, d.xdp_mode)?;
            tracing::info!(iface = %name, %mode, "XDP attached");
        }
        loader.set_forward(cfg.node.forward)?;
        let loader = Arc::new(Mutex::new(loader));

        let monitor = {
            let loader = Arc::clone(&loader);
            let stop = Arc::clone(&stop);
            let cfg = cfg.clone();
            let mut mon = netlink::Monitor::subscribe()?;
            // Events between the first dump and the subscription would be
            // lost: dump again now that the subscription is live.
            let fib = netlink::dump()?;
            fib_handle.publish(fib.clone());
            thread::Builder::new()
                .name("tandem-netlink".into())
                .spawn(move || {
                    let publish = |fib: &Fib| {
                        fib_handle.publish(fib.clone());
                        let want = local_addresses(fib, &cfg);
                        if let Err(e) = loader
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .sync_local_addresses(&want)
                        {
                            tracing::error!(error = %e, "updating local addresses");
                        }
                    };
                    if let Err(e) = mon.run(fib, &stop, publish) {
                        tracing::error!(error = %e, "netlink monitor stopped");
                    }
                })
                .expect("spawn netlink thread")
        };

        let blocks = built.iter().map(|w| Arc::clone(&w.block)).collect();
        let mut handles = Vec::new();
        for w in built {
            let core = (!cores.is_empty()).then(|| cores[w.id % cores.len()]);
            let queues: Vec<String> = w
                .ports
                .iter()
                .map(|p| format!("{}:{}", ifnames[p.slot], p.queue))
                .collect();
            tracing::info!(worker = w.id, ?core, queues = ?queues, "starting worker");
            handles.push(
                thread::Builder::new()
                    .name(format!("tandem-w{}", w.id))
                    .spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        w.run()
                    })
                    .expect("spawn worker"),
            );
        }
        Ok(Self {
            loader,
            workers: handles,
            blocks,
            monitor: Some(monitor),
            stop,
            ifnames,
        })
    }

    /// Waits for `stop`, then shuts down and logs the final counters.
    pub fn run_until_stopped(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(100));
        }
        tracing::info!("stopping");
        let mut socket_lines = Vec::new();
        for h in self.workers.drain(..) {
            if let Ok(w) = h.join() {
                {
                    for (slot, queue, st) in w.socket_stats() {
                        if let Some(st) = st {
                            socket_lines.push(format!(
                                "xsk.{}.{queue}: rx_dropped={} rx_invalid_descs={} tx_invalid_descs={} \
                                 rx_ring_full={} rx_fill_ring_empty_descs={} tx_ring_empty_descs={}",
                                self.ifnames[slot],
                                st.rx_dropped(),
                                st.rx_invalid_descs(),
                                st.tx_invalid_descs(),
                                st.rx_ring_full(),
                                st.rx_fill_ring_empty_descs(),
                                st.tx_ring_empty_descs()
                            ));
                        }
                    }
                }
            } else {
                tracing::error!("a worker panicked");
            }
        }
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        for l in socket_lines {
            tracing::info!("{l}");
        }
        tracing::info!("final counters: {}", self.counter_line());
        // Dropping the loader closes the BPF link: XDP detaches.
    }

    /// `name=value` pairs of every counter, for logs and tests.
    pub fn counter_line(&self) -> String {
        let mut out = Vec::new();
        match self
            .loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters()
        {
            Ok(xdp) => {
                for c in XdpCounter::ALL {
                    out.push(format!("xdp.{}={}", c.name(), xdp[c as usize]));
                }
            }
            Err(e) => out.push(format!("xdp.error={e:?}")),
        }
        let mut sum = crate::counters::Tally::default();
        for b in &self.blocks {
            let t = b.snapshot();
            for (s, v) in sum.counters.iter_mut().zip(t.counters) {
                *s += v;
            }
            for (s, v) in sum.drops.iter_mut().zip(t.drops) {
                *s += v;
            }
            for (srow, row) in sum.iface.iter_mut().zip(t.iface) {
                for (s, v) in srow.iter_mut().zip(row) {
                    *s += v;
                }
            }
        }
        for c in WorkerCounter::ALL {
            out.push(format!("worker.{}={}", c.name(), sum.counters[c as usize]));
        }
        for r in DropReason::ALL {
            out.push(format!("drop.{}={}", r.name(), sum.drops[r as usize]));
        }
        for (slot, name) in self.ifnames.iter().enumerate() {
            for c in IfaceCounter::ALL {
                out.push(format!(
                    "{name}.{}={}",
                    c.name(),
                    sum.iface[slot][c as usize]
                ));
            }
        }
        out.join(" ")
    }
}

/// The node's own addresses: every address on any interface of the
/// namespace, plus the configured extras.
fn local_addresses(fib: &Fib, cfg: &Config) -> BTreeSet<IpAddr> {
    let mut s: BTreeSet<IpAddr> = cfg.node.local_addresses.iter().copied().collect();
    for (_, l) in fib.links() {
        s.extend(l.v4.iter().map(|a| IpAddr::V4(*a)));
        s.extend(l.v6.iter().map(|a| IpAddr::V6(*a)));
    }
    s
}

fn bind_port(
    umem: &Umem,
    cfg: SocketConfig,
    name: &str,
    slot: usize,
    ifindex: u32,
    queue: u32,
) -> Result<Port, DaemonError> {
    let sock_err = |message: String| DaemonError::Socket {
        iface: name.to_owned(),
        queue,
        message,
    };
    let iface: Interface = name.parse().map_err(|e| sock_err(format!("{e:?}")))?;
    // SAFETY: each (interface, queue) pair is bound once, by this call, and
    // INHIBIT_PROG_LOAD is set, as sharing a UMEM requires.
    let (tx, rx, rings) =
        unsafe { Socket::new(cfg, umem, &iface, queue) }.map_err(|e| sock_err(e.to_string()))?;
    let (fq, cq) = rings.ok_or_else(|| sock_err("no fill/completion rings returned".into()))?;
    Ok(Port {
        slot,
        ifindex,
        queue,
        tx,
        rx,
        fq,
        cq,
    })
}

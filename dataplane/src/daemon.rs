//! tandemd's lifecycle: load, bind, attach, run workers, shut down clean.
//!
//! Design: everything that can fail is done before the XDP program is
//! attached (sockets bound, fill rings primed, FIB dumped, stats segment
//! created), so a half-started daemon never steers traffic into nothing.
//! The main thread then becomes the control loop: heartbeat, XDP and XSK
//! counters into the segment. Teardown is drop order: workers stop and
//! release their sockets, then the loader's link detaches XDP.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    num::NonZeroU32,
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tandem_common::{MAX_QUEUES, XdpCounter};
use tandem_control::{
    config::{self, BindMode, Config},
    stats::{
        self, IfaceRole, IfaceState, Kind, LinkState, NodeState, Schema, SegmentReader,
        SegmentWriter, StatsError, XdpAttach,
    },
};
use xsk_rs::{
    Socket, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::{
    counters::{self, WorkerStats},
    ctl::{self, CtlError},
    fib::{Fib, FibHandle},
    forward::{Limits, RateLimit},
    ha::{self, HaThread},
    handoff::Handoff,
    loader::{Loader, LoaderError},
    netlink::{self, NetlinkError},
    replica::{
        Hub,
        thread::{self as sync_thread, SyncThread},
    },
    service::{ServiceError, Services},
    sys::{self, PuntSocket, SyscallError, XskStats},
    worker::{Port, Worker},
};

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the XDP flow map (session offload): {0}")]
    FlowMap(#[source] std::io::Error),
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
    Services(#[from] ServiceError),
    #[error("stats segment: {0}")]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    #[error("heartbeat path on {local}: {source}")]
    Heartbeat {
        local: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("sync link on {local}: {source}")]
    Sync {
        local: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How often the control loop refreshes the heartbeat (readers call a
/// daemon stale after 3 s) and the kernel-side counters.
const TICK: Duration = Duration::from_millis(200);
const KERNEL_COUNTERS_EVERY: Duration = Duration::from_millis(500);
/// Handoff batches per worker: with batches of `dataplane.batch` frames
/// (64 by default) a worker holds 4096 handed frames, a few milliseconds
/// of traffic, enough to ride out a scheduler slice on a shared core.
const HANDOFF_BATCHES: usize = 64;

/// Slots of the counters the control loop copies from the kernel.
struct KernelSlots {
    /// First slot of `XdpCounter::COUNT` x cpus, counter-major.
    xdp_first: u32,
    cpus: usize,
    /// (socket fd, first of 6 slots) per AF_XDP socket.
    xsk: Vec<(RawFd, u32)>,
}

/// What the node-state publisher needs to describe the interfaces.
#[derive(Clone)]
struct StateInfo {
    ifnames: Vec<String>,
    ifindexes: Vec<u32>,
    queues: Vec<u32>,
    modes: Vec<XdpAttach>,
    shared: Arc<ha::Shared>,
}

impl StateInfo {
    fn node_state(&self, fib: &Fib) -> NodeState {
        let interfaces = (0..self.ifnames.len())
            .map(|i| IfaceState {
                name: self.ifnames[i].clone(),
                ifindex: self.ifindexes[i],
                role: if i == 0 {
                    IfaceRole::Inside
                } else {
                    IfaceRole::Outside
                },
                link: match fib.link(self.ifindexes[i]).and_then(|l| l.oper_up) {
                    Some(true) => LinkState::Up,
                    Some(false) => LinkState::Down,
                    None => LinkState::Unknown,
                },
                xdp: self.modes[i],
                queues: self.queues[i],
            })
            .collect();
        NodeState {
            forward: self.shared.forward.load(Ordering::Relaxed),
            interfaces,
        }
    }
}

/// A running daemon.
pub struct Daemon {
    loader: Arc<Mutex<Loader>>,
    workers: Vec<thread::JoinHandle<Worker>>,
    monitor: Option<thread::JoinHandle<()>>,
    control: Option<thread::JoinHandle<()>>,
    sync: Option<thread::JoinHandle<()>>,
    ha: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    segment: Arc<SegmentWriter>,
    kernel: KernelSlots,
    instance: String,
}

fn queue_size(n: u32) -> QueueSize {
    // Validated as a power of two by the config loader.
    QueueSize::new(n).expect("config validated ring size")
}

impl Daemon {
    /// Starts the data path described by `cfg` as instance `instance`.
    pub fn start(cfg: &Config, instance: &str, stop: Arc<AtomicBool>) -> Result<Self, DaemonError> {
        sys::raise_memlock();
        // First: a second daemon of the same instance must not clobber the
        // running one's segment or socket.
        let ctl = ctl::bind_control_socket(instance)?;
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
            let q = sys::rx_queue_count(name);
            if q > MAX_QUEUES {
                tracing::warn!(
                    iface = %name,
                    queues = q,
                    served = MAX_QUEUES,
                    "more rx queues than the XDP program steers for; frames on the others are \
                     dropped and counted as xdp drop_no_socket (reduce with `ethtool -L`)"
                );
            }
            queues.push(q.min(MAX_QUEUES));
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

        let mut loader = Loader::load(crate::offload::capacity(cfg, workers))?;
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

        // Sockets first: the stats schema names each of them.
        let mut bound = Vec::new();
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
            bound.push((umem, free, ports));
        }

        let mut schema = Schema::new();
        let mut firsts = Vec::new();
        for w in 0..workers as usize {
            firsts.push(counters::register(
                &mut schema,
                w,
                workers as usize,
                &ifnames,
            )?);
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
        let mut xsk = Vec::new();
        for (_, _, ports) in &bound {
            for p in ports {
                let mut first = None;
                for stat in XskStats::NAMES {
                    let s = schema.push(
                        &format!("tandem_xsk_{stat}_total"),
                        &format!("iface={},queue={}", ifnames[p.slot], p.queue),
                        Kind::Counter,
                    )?;
                    first.get_or_insert(s);
                }
                xsk.push((p.rx.fd().as_raw_fd(), first.expect("six stats")));
            }
        }
        let sync_slots = match sync_thread::addresses(cfg) {
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
        let ha_slots = ha::register(&mut schema, cfg, &fib, &ifnames, workers as usize)?;
        let segment = Arc::new(SegmentWriter::create(
            &stats::segment_path(instance),
            &schema,
            std::process::id(),
            workers,
            stats::unix_ns(),
        )?);
        tracing::info!(path = %segment.path().display(), "stats segment created");

        let handoff = Arc::new(Handoff::new(
            workers as usize,
            HANDOFF_BATCHES,
            d.batch as usize,
            d.frame_size as usize,
        )?);
        let hub = Arc::new(Hub::new(workers as usize));
        let shared = Arc::new(ha::Shared::default());
        shared.set_forward(cfg.forward_at_start());
        let epoch = Instant::now();
        let mut built = Vec::new();
        for (w, (umem, free, ports)) in bound.into_iter().enumerate() {
            let mut services = Services::new(cfg, w, workers as usize, ifindexes[0], 0)?;
            if let Some(svc) = services.as_mut()
                && Services::offloads(cfg)
            {
                let flows = loader.flow_map();
                svc.set_flow_map(flows.map_err(DaemonError::FlowMap)?);
            }
            if let (Some(svc), Some(s)) = (services.as_mut(), cfg.sync.as_ref()) {
                svc.attach(Arc::clone(&hub), s.grace);
            }
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
                    reject: RateLimit::new(cfg.sessions.rejects_per_sec),
                },
                punt: PuntSocket::new()?,
                stats: WorkerStats::new(Arc::clone(&segment), firsts[w], workers as usize),
                stop: Arc::clone(&stop),
                slot_ifindex: ifindexes.clone(),
                services,
                outbox: handoff.outbox(),
                handoff: Arc::clone(&handoff),
                workers: workers as usize,
                epoch,
                walk: None,
                shared: Arc::clone(&shared),
                role: shared.role.load(Ordering::Acquire),
                rewalk: None,
            };
            worker.prime(d.fill_ring as usize);
            built.push(worker);
        }

        let mut modes = Vec::new();
        for name in &ifnames {
            let mode = loader.attach(name, d.xdp_mode)?;
            tracing::info!(iface = %name, %mode, "XDP attached");
            modes.push(match mode {
                config::XdpMode::Native => XdpAttach::Native,
                config::XdpMode::Generic => XdpAttach::Generic,
            });
        }
        loader.set_forward(cfg.forward_at_start())?;
        // The XDP program answers ARP for the NAT pool addresses while the
        // node forwards; the kernel must not hold them, or it would reset
        // the flows' in-flight segments if tandemd died. Earlier versions
        // put them on the interface: remove what they left.
        // The MAC is read once: a MAC changed under a running tandemd is
        // not followed (nor is the AF_XDP binding).
        let pool = pool_addresses(cfg);
        if !pool.is_empty() {
            let mac =
                fib.link(ifindexes[1])
                    .map(|l| l.mac)
                    .ok_or_else(|| DaemonError::Interface {
                        name: ifnames[1].clone(),
                        source: SyscallError {
                            call: "RTM_GETLINK (its MAC, to answer ARP for the NAT pool)",
                            io_error: std::io::Error::from(std::io::ErrorKind::NotFound),
                        },
                    })?;
            for a in pool {
                if let Err(e) = netlink::set_address(ifindexes[1], IpAddr::V4(a), false) {
                    tracing::warn!(error = %e, "removing a NAT pool address from the kernel");
                }
                loader.answer_arp(a, ifindexes[1], mac)?;
            }
        }
        let loader = Arc::new(Mutex::new(loader));
        let info = StateInfo {
            ifnames: ifnames.clone(),
            ifindexes: ifindexes.clone(),
            queues: queues.clone(),
            modes,
            shared: Arc::clone(&shared),
        };

        let ha_fib = fib_handle.reader();
        let monitor = {
            let loader = Arc::clone(&loader);
            let stop = Arc::clone(&stop);
            let cfg = cfg.clone();
            let segment = Arc::clone(&segment);
            let mut mon = netlink::Monitor::subscribe()?;
            // Events between the first dump and the subscription would be
            // lost: dump again now that the subscription is live.
            let fib = netlink::dump()?;
            fib_handle.publish(fib.clone());
            segment.write_state(&info.node_state(&fib).encode());
            thread::Builder::new()
                .name("tandem-netlink".into())
                .spawn(move || {
                    let publish = |fib: &Fib| {
                        fib_handle.publish(fib.clone());
                        segment.write_state(&info.node_state(fib).encode());
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

        let (requests_tx, requests) = std::sync::mpsc::channel();
        let ha = match ha_slots {
            Some(slots) => {
                let worker_loops = firsts
                    .iter()
                    .map(|f| f + counters::WorkerCounter::Loops as u32)
                    .collect();
                let t = HaThread::new(
                    cfg,
                    ha::Parts {
                        fib: ha_fib,
                        loader: Arc::clone(&loader),
                        shared: Arc::clone(&shared),
                        segment: Arc::clone(&segment),
                        slots,
                        requests,
                        ifnames: ifnames.clone(),
                        ifindexes: ifindexes.clone(),
                        worker_loops,
                    },
                )?;
                Some(t)
            }
            None => None,
        };

        let control = {
            let ctx = ctl::Ctx {
                ha: ha.is_some().then_some(requests_tx),
                shared: Arc::clone(&shared),
                segment: Arc::clone(&segment),
                stop: Arc::clone(&stop),
                handoff: Arc::clone(&handoff),
                workers: workers as usize,
                cfg: cfg.clone(),
                epoch,
            };
            thread::Builder::new()
                .name("tandem-ctl".into())
                .spawn(move || ctl::serve_control(&ctl, &ctx))
                .expect("spawn control thread")
        };

        let sync = match sync_slots {
            Some(slots) => SyncThread::new(
                cfg,
                workers as usize,
                cfg.redundancy.is_some().then(|| Arc::clone(&shared)),
                hub,
                Arc::clone(&handoff),
                Arc::clone(&segment),
                slots,
            )
            .map_err(|source| DaemonError::Sync {
                local: sync_thread::addresses(cfg).expect("configured").0,
                source,
            })?
            .map(|t| {
                tracing::info!("sync link listening");
                t.spawn(Arc::clone(&stop))
            }),
            None => None,
        };

        // Workers first would forward before the FSM decides: it starts
        // not forwarding, so the order does not matter; the thread starts
        // last so its first heartbeat goes out with everything running.
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
        let ha = ha.map(|t| {
            tracing::info!("redundancy state machine starting");
            t.spawn(Arc::clone(&stop))
        });
        Ok(Self {
            loader,
            workers: handles,
            monitor: Some(monitor),
            control: Some(control),
            sync,
            ha,
            stop,
            segment,
            kernel: KernelSlots {
                xdp_first: xdp_first.expect("xdp counters"),
                cpus,
                xsk,
            },
            instance: instance.to_owned(),
        })
    }

    /// Copies the XDP per-CPU verdicts and the sockets' kernel statistics
    /// into the segment.
    fn copy_kernel_counters(&self) {
        let per_cpu = self
            .loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters_per_cpu();
        match per_cpu {
            Ok(rows) => {
                for (c, vals) in rows {
                    let base = self.kernel.xdp_first + (c as u32) * self.kernel.cpus as u32;
                    for (cpu, v) in vals.iter().take(self.kernel.cpus).enumerate() {
                        self.segment
                            .value(base + cpu as u32)
                            .store(*v, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading XDP counters"),
        }
        for (fd, first) in &self.kernel.xsk {
            if let Ok(st) = sys::xsk_stats(*fd) {
                for (i, v) in st.values().iter().enumerate() {
                    self.segment
                        .value(first + i as u32)
                        .store(*v, Ordering::Relaxed);
                }
            }
        }
    }

    /// The control loop: runs until `stop`, then shuts down and logs the
    /// final counters.
    pub fn run_until_stopped(mut self) {
        let mut last_kernel = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.segment.heartbeat(stats::unix_ns());
            if last_kernel.elapsed() >= KERNEL_COUNTERS_EVERY {
                self.copy_kernel_counters();
                last_kernel = Instant::now();
            }
            thread::sleep(TICK);
        }
        tracing::info!("stopping");
        // First: a master hands over before its workers stop.
        if let Some(h) = self.ha.take() {
            let _ = h.join();
        }
        // Last copy while the sockets are still open.
        self.copy_kernel_counters();
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("a worker panicked");
            }
        }
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        if let Some(s) = self.sync.take() {
            let _ = s.join();
        }
        let _ = std::fs::remove_file(tandem_control::ctl::socket_path(&self.instance));
        self.segment.heartbeat(stats::unix_ns());
        tracing::info!("final counters: {}", self.counter_line());
        // Dropping the loader closes the BPF link: XDP detaches.
    }

    /// `name=value` pairs of every counter, for the exit report and tests.
    pub fn counter_line(&self) -> String {
        match SegmentReader::open(self.segment.path()) {
            Ok(r) => stats::flat_totals(&r)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("error={e}"),
        }
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
    // An operator may have put a pool address on an interface, but its
    // traffic is service traffic: never the kernel's.
    for a in pool_addresses(cfg) {
        s.remove(&IpAddr::V4(a));
    }
    s
}

/// Every NAT pool address of every service set.
pub(crate) fn pool_addresses(cfg: &Config) -> Vec<std::net::Ipv4Addr> {
    cfg.service_sets
        .iter()
        .filter_map(|s| s.nat.as_ref())
        .flat_map(|n| n.pool.iter().copied())
        .collect()
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

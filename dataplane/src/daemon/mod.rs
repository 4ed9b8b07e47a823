//! tandemd's lifecycle: load, bind, attach, run workers, shut down clean.
//!
//! Design: everything that can fail is done before the XDP program is
//! attached (sockets bound, fill rings primed, FIB dumped, stats segment
//! created), so a half-started daemon never steers traffic into nothing.
//! [`Daemon::start`] reads as its steps: claim the instance, find the
//! interfaces ([`iface`]), load the program, bind the sockets
//! ([`socket`]), lay out the segment ([`segment`]), build and prime the
//! workers, attach, then start the netlink ([`state`]), redundancy,
//! control, sync and worker threads. The main thread then becomes the
//! control loop: heartbeat, XDP and XSK counters into the segment.
//! Teardown is drop order: workers stop and release their sockets, then
//! the loader's link detaches XDP.

mod error;
mod iface;
mod segment;
mod socket;
mod state;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tandem_control::{
    config::{self, Config},
    stats::{self, SegmentReader, SegmentWriter, XdpAttach},
};

pub use self::error::DaemonError;
use self::{
    iface::Interfaces,
    segment::{KernelSlots, Layout},
    socket::Bound,
    state::{StateInfo, local_addresses},
};
use crate::{
    counters::{self, WorkerStats},
    ctl,
    events::{self, EventLog, EventSink, EventsRx},
    fib::{Fib, FibHandle, netlink},
    forward::{Limits, RateLimit},
    ha::{self, HaThread},
    handoff::Handoff,
    node::{MastershipRequest, Node},
    offload,
    reload::{Live, Reloader, SetLog},
    service::Services,
    sync::{Hub, thread::SyncThread},
    sys::{self, PuntSocket, SyscallError},
    worker::{Worker, WorkerParts},
    xdp::loader::Loader,
};

/// How often the control loop refreshes the heartbeat (readers call a
/// daemon stale after 3 s) and the kernel-side counters.
const TICK: Duration = Duration::from_millis(200);
const KERNEL_COUNTERS_EVERY: Duration = Duration::from_millis(500);
/// Handoff batches per worker: with batches of `dataplane.batch` frames
/// (64 by default) a worker holds 4096 handed frames, a few milliseconds
/// of traffic, enough to ride out a scheduler slice on a shared core.
const HANDOFF_BATCHES: usize = 64;

/// A running daemon.
pub struct Daemon {
    loader: Arc<Mutex<Loader>>,
    workers: Vec<thread::JoinHandle<Worker>>,
    monitor: Option<thread::JoinHandle<()>>,
    control: Option<thread::JoinHandle<()>>,
    sync: Option<thread::JoinHandle<()>>,
    ha: Option<thread::JoinHandle<()>>,
    events: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    segment: Arc<SegmentWriter>,
    kernel: KernelSlots,
    instance: String,
    /// Each worker's `loops` counter slot: the watchdog's proof of
    /// progress.
    loops: Vec<u32>,
    reloader: Arc<Reloader>,
    /// Set by SIGHUP: the control loop reloads.
    reload: Arc<AtomicBool>,
}

/// What the workers share: the rings between them and with the sync
/// thread, the node's state and the session clock's time zero.
struct Shared {
    handoff: Arc<Handoff>,
    hub: Arc<Hub>,
    node: Arc<Node>,
    epoch: Instant,
    live: Arc<Live>,
}

impl Daemon {
    /// Starts the data path described by `cfg` as instance `instance`.
    pub fn start(cfg: &Config, instance: &str, stop: Arc<AtomicBool>) -> Result<Self, DaemonError> {
        sys::raise_memlock();
        // First: a second daemon of the same instance must not clobber the
        // running one's segment or socket.
        let ctl = ctl::bind_control_socket(instance)?;
        let ifaces = Interfaces::resolve(cfg)?;
        check_kernel_forwarding(cfg, &ifaces.names)?;
        let mut loader = load(cfg, &ifaces)?;
        let fib = netlink::dump()?;
        let fib_handle = FibHandle::new(fib.clone());
        loader.sync_local_addresses(&local_addresses(&fib, cfg))?;
        // Sockets before the segment: the stats schema names each of them.
        let bound = socket::bind_all(cfg, &ifaces, &mut loader)?;
        let layout = segment::create(cfg, instance, &ifaces, &bound, &fib)?;
        let shared = Shared {
            handoff: Arc::new(Handoff::new(
                ifaces.worker_count(),
                HANDOFF_BATCHES,
                cfg.dataplane.batch as usize,
                cfg.dataplane.frame_size as usize,
            )?),
            hub: Arc::new(Hub::new(ifaces.worker_count())),
            node: Arc::new(Node::default()),
            epoch: Instant::now(),
            live: Arc::new(Live::new(
                cfg,
                ifaces.worker_count(),
                cfg.redundancy.is_some(),
            )),
        };
        let reloader = Arc::new(Reloader::new(Arc::clone(&shared.live)));
        shared.node.set_forward(cfg.forward_at_start());
        let (built, rings) = build_workers(
            cfg,
            &ifaces,
            bound,
            &layout,
            &shared,
            &loader,
            &fib_handle,
            &stop,
        )?;
        let events = EventLog::new(
            cfg,
            rings,
            Arc::clone(&shared.live),
            shared.epoch,
            Arc::clone(&layout.segment),
            layout.events,
        );
        let modes = attach(cfg, &ifaces, &mut loader)?;
        answer_arp_for_pools(cfg, &ifaces, &fib, &mut loader)?;
        for v in cfg.redundancy.iter().flat_map(|r| &r.vip) {
            loader.fence_vip(v.address)?;
        }
        admit_control(cfg, &fib, &mut loader)?;
        let loader = Arc::new(Mutex::new(loader));

        let ha_fib = fib_handle.reader();
        let monitor = state::spawn_netlink(
            cfg,
            StateInfo {
                ifaces: ifaces.clone(),
                modes,
                node: Arc::clone(&shared.node),
            },
            fib_handle,
            Arc::clone(&loader),
            Arc::clone(&layout.segment),
            Arc::clone(&stop),
        )?;
        let (requests_tx, requests) = mpsc::channel();
        let ha = match layout.ha.clone() {
            Some(slots) => Some(HaThread::new(
                cfg,
                ha::Parts {
                    fib: ha_fib,
                    loader: Arc::clone(&loader),
                    node: Arc::clone(&shared.node),
                    live: Arc::clone(&shared.live),
                    segment: Arc::clone(&layout.segment),
                    slots,
                    requests,
                    ifnames: ifaces.names.clone(),
                    ifindexes: ifaces.indexes.clone(),
                    worker_loops: layout
                        .workers
                        .iter()
                        .map(|f| f + counters::WorkerCounter::Loops as u32)
                        .collect(),
                    worker_sessions: layout
                        .workers
                        .iter()
                        .map(|f| {
                            f + counters::Tally::gauge_offset(counters::WorkerGauge::SessionsActive)
                                as u32
                        })
                        .collect(),
                },
            )?),
            None => None,
        };
        let (resync_tx, resync_rx) = mpsc::channel();
        let sync = spawn_sync(cfg, &ifaces, &fib, &layout, &shared, &stop, resync_rx)?;
        let control = spawn_control(
            cfg,
            ctl,
            Requests {
                ha: ha.is_some().then_some(requests_tx),
                sync: sync.is_some().then_some(resync_tx),
                reload: Arc::clone(&reloader),
            },
            &ifaces,
            &layout,
            &shared,
            &stop,
        );
        // Workers first would forward before the FSM decides: it starts
        // not forwarding, so the order does not matter; the redundancy
        // thread starts last so its first heartbeat goes out with
        // everything running.
        let events = events.spawn(Arc::clone(&stop));
        let workers = spawn_workers(built, &ifaces);
        let ha = ha.map(|t| {
            tracing::info!("redundancy state machine starting");
            t.spawn(Arc::clone(&stop))
        });
        Ok(Self {
            loader,
            workers,
            monitor: Some(monitor),
            control: Some(control),
            sync,
            ha,
            events: Some(events),
            stop,
            loops: layout
                .workers
                .iter()
                .map(|first| first + counters::WorkerCounter::Loops as u32)
                .collect(),
            segment: layout.segment,
            kernel: layout.kernel,
            instance: instance.to_owned(),
            reloader,
            reload: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Reload from `path` when `flag` is set (tandemd sets it on SIGHUP)
    /// or on `tandemctl reload`; `set_log` applies `log.level`.
    pub fn reload_from(&mut self, path: PathBuf, flag: Arc<AtomicBool>, set_log: Option<SetLog>) {
        self.reloader.configure(path, set_log);
        self.reload = flag;
    }

    /// Reads the configuration again (SIGHUP), telling the service
    /// manager (RELOADING=1, then READY=1) and the log how it went.
    fn reload(&self) {
        let mut state = vec![sd_notify::NotifyState::Reloading];
        state.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
        let _ = sd_notify::notify(&state);
        match self.reloader.reload() {
            Ok(what) => tracing::info!("reload: {what}"),
            Err(why) => tracing::error!("reload: {why}"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// The control loop: runs until `stop`, then shuts down and logs the
    /// final counters.
    ///
    /// Under systemd (`Type=notify`: `$NOTIFY_SOCKET`) it says READY=1
    /// first: XDP is attached and every thread runs. With `WatchdogSec=`
    /// (`$WATCHDOG_USEC`) it sends WATCHDOG=1 at half that interval, but
    /// only while every worker has looped since the last one: a wedged
    /// data path stops the pings, and systemd restarts the daemon.
    pub fn run_until_stopped(mut self) {
        let mut last_kernel = Instant::now();
        if let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("forwarding path up"),
        ]) {
            tracing::warn!(error = %e, "telling the service manager READY=1");
        }
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut fed = Instant::now();
        let mut loops = self.worker_loops();
        while !self.stop.load(Ordering::Relaxed) {
            self.segment.heartbeat(stats::unix_ns());
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            if last_kernel.elapsed() >= KERNEL_COUNTERS_EVERY {
                self.kernel.copy(&self.loader, &self.segment);
                last_kernel = Instant::now();
            }
            if let Some(every) = watchdog
                && fed.elapsed() >= every
            {
                let now = self.worker_loops();
                let stuck: Vec<usize> = (0..now.len()).filter(|&w| now[w] == loops[w]).collect();
                if stuck.is_empty() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        workers = ?stuck,
                        "workers made no progress: the service manager's watchdog is not fed"
                    );
                }
                loops = now;
                fed = Instant::now();
            }
            thread::sleep(watchdog.map_or(TICK, |w| w.min(TICK)));
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopping");
        // First: a master hands over before its workers stop.
        if let Some(h) = self.ha.take() {
            let _ = h.join();
        }
        // Last copy while the sockets are still open.
        self.kernel.copy(&self.loader, &self.segment);
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
        if let Some(e) = self.events.take() {
            let _ = e.join();
        }
        let _ = std::fs::remove_file(tandem_control::ctl::socket_path(&self.instance));
        self.segment.heartbeat(stats::unix_ns());
        tracing::info!("final counters: {}", self.counter_line());
        // Dropping the loader closes the BPF link: XDP detaches.
    }

    /// Every worker's loop count as last published.
    fn worker_loops(&self) -> Vec<u64> {
        self.loops
            .iter()
            .map(|&slot| self.segment.value(slot).load(Ordering::Relaxed))
            .collect()
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

/// Loads the program with a flow table sized for the sessions the
/// workers can hold, and registers the interfaces.
fn load(cfg: &Config, ifaces: &Interfaces) -> Result<Loader, DaemonError> {
    let mut loader = Loader::load(offload::capacity(cfg, ifaces.workers))?;
    for (slot, (idx, q)) in ifaces.indexes.iter().zip(&ifaces.queues).enumerate() {
        loader.add_iface(*idx, slot as u32, *q)?;
    }
    Ok(loader)
}

/// A worker per bound UMEM, with its services (flow map, replication and
/// the event log's ring attached), its counters' block, and its fill
/// rings primed; and the event rings' consumer ends.
#[expect(
    clippy::too_many_arguments,
    reason = "one start-up step: what every worker is built from"
)]
fn build_workers(
    cfg: &Config,
    ifaces: &Interfaces,
    bound: Vec<Bound>,
    layout: &Layout,
    shared: &Shared,
    loader: &Loader,
    fib: &Arc<FibHandle>,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<Worker>, Vec<EventsRx>), DaemonError> {
    let d = &cfg.dataplane;
    let workers = ifaces.worker_count();
    let mut built = Vec::new();
    let mut rings = Vec::new();
    for (w, b) in bound.into_iter().enumerate() {
        let mut services = Services::new(cfg, w, workers, ifaces.indexes[0], 0)?;
        if let Some(svc) = services.as_mut() {
            let (tx, rx) = events::ring(cfg.log.events.ring as usize);
            let mut sink = EventSink::new(tx);
            sink.wanted = cfg.log.events.wanted();
            sink.active = cfg.forward_at_start();
            svc.attach_events(sink);
            rings.push(rx);
        }
        if let Some(svc) = services.as_mut()
            && Services::offloads(cfg)
        {
            svc.set_flow_map(Box::new(loader.flow_map().map_err(DaemonError::FlowMap)?));
        }
        if let (Some(svc), Some(s)) = (services.as_mut(), cfg.sync.as_ref()) {
            svc.attach(Arc::clone(&shared.hub), s.grace);
        }
        let mut worker = Worker::new(WorkerParts {
            id: w,
            umem: b.umem,
            ports: b.ports,
            free: b.free,
            batch: d.batch as usize,
            fib: fib.reader(),
            limits: Limits {
                icmp: RateLimit::new(d.icmp_errors_per_sec),
                punt: RateLimit::new(d.punts_per_sec),
                reject: RateLimit::new(cfg.sessions.rejects_per_sec),
            },
            punt: PuntSocket::new()?,
            stats: WorkerStats::new(Arc::clone(&layout.segment), layout.workers[w], workers),
            stop: Arc::clone(stop),
            slot_ifindex: ifaces.indexes.clone(),
            services,
            handoff: Arc::clone(&shared.handoff),
            workers,
            epoch: shared.epoch,
            node: Arc::clone(&shared.node),
            live: Arc::clone(&shared.live),
        });
        worker.prime(d.fill_ring as usize);
        built.push(worker);
    }
    Ok((built, rings))
}

/// Attaches the program to both interfaces and sets its first role; the
/// mode each attached in.
fn attach(
    cfg: &Config,
    ifaces: &Interfaces,
    loader: &mut Loader,
) -> Result<Vec<XdpAttach>, DaemonError> {
    let mut modes = Vec::new();
    for name in &ifaces.names {
        let mode = loader.attach(name, cfg.dataplane.xdp_mode)?;
        tracing::info!(iface = %name, %mode, "XDP attached");
        modes.push(match mode {
            config::XdpMode::Native => XdpAttach::Native,
            config::XdpMode::Generic => XdpAttach::Generic,
        });
    }
    loader.set_forward(cfg.forward_at_start())?;
    Ok(modes)
}

/// The XDP program answers ARP for the NAT pool addresses while the node
/// forwards; the kernel must not hold them, or it would reset the flows'
/// in-flight segments if tandemd died. Earlier versions put them on the
/// interface: what they left is removed. The MAC is read once: a MAC
/// changed under a running tandemd is not followed (nor is the AF_XDP
/// binding).
fn answer_arp_for_pools(
    cfg: &Config,
    ifaces: &Interfaces,
    fib: &Fib,
    loader: &mut Loader,
) -> Result<(), DaemonError> {
    let pool = cfg.pool_addresses();
    if pool.is_empty() {
        return Ok(());
    }
    let outside = ifaces.indexes[1];
    let mac = fib
        .link(outside)
        .map(|l| l.mac)
        .ok_or_else(|| DaemonError::Interface {
            name: ifaces.names[1].clone(),
            source: SyscallError {
                call: "RTM_GETLINK (its MAC, to answer ARP for the NAT pool)",
                io_error: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        })?;
    for a in pool {
        if let Err(e) = netlink::set_address(outside, IpAddr::V4(a), false) {
            tracing::warn!(error = %e, "removing a NAT pool address from the kernel");
        }
        loader.answer_arp(a, outside, mac)?;
    }
    Ok(())
}

/// The pair's control sockets in the program's control map: the sync
/// listener (TCP) and each heartbeat path's socket (UDP) take traffic
/// only from the peer's address on the interface that holds the local
/// one. A socket on an interface without the program (the lab's sync0)
/// is policed where frames for it arrive on one that has it.
fn admit_control(cfg: &Config, fib: &Fib, loader: &mut Loader) -> Result<(), DaemonError> {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let Some(s) = &cfg.sync else {
        return Ok(());
    };
    let mut entries = vec![(SocketAddr::new(s.local, s.port), TCP, s.peer)];
    if let Some(r) = &cfg.redundancy {
        for (local, peer) in
            std::iter::once((s.local, s.peer)).chain(r.heartbeat.iter().map(|h| (h.local, h.peer)))
        {
            entries.push((SocketAddr::new(local, r.port), UDP, peer));
        }
    }
    for (local, proto, peer) in entries {
        let Some((ifindex, link)) = fib.link_with(local.ip()) else {
            tracing::warn!(%local, "no interface holds this control address: not policed");
            continue;
        };
        tracing::debug!(%local, proto, %peer, iface = %link.name, "control socket policed");
        loader.admit_control(local, proto, peer, ifindex)?;
    }
    Ok(())
}

/// Where the control thread sends the requests other threads answer.
struct Requests {
    ha: Option<mpsc::Sender<MastershipRequest>>,
    sync: Option<mpsc::Sender<crate::sync::thread::ResyncRequest>>,
    reload: Arc<Reloader>,
}

fn spawn_control(
    cfg: &Config,
    listener: std::os::unix::net::UnixListener,
    requests: Requests,
    ifaces: &Interfaces,
    layout: &Layout,
    shared: &Shared,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let ctx = ctl::Ctx {
        ha: requests.ha,
        sync: requests.sync,
        node: Arc::clone(&shared.node),
        segment: Arc::clone(&layout.segment),
        stop: Arc::clone(stop),
        handoff: Arc::clone(&shared.handoff),
        workers: ifaces.worker_count(),
        cfg: cfg.clone(),
        epoch: shared.epoch,
        reload: requests.reload,
    };
    thread::Builder::new()
        .name("tandem-ctl".into())
        .spawn(move || ctl::serve_control(&listener, &ctx))
        .expect("spawn control thread")
}

/// The sync thread, when `[sync]` is configured; with `[redundancy]` its
/// role follows the state machine.
fn spawn_sync(
    cfg: &Config,
    ifaces: &Interfaces,
    fib: &Fib,
    layout: &Layout,
    shared: &Shared,
    stop: &Arc<AtomicBool>,
    requests: mpsc::Receiver<crate::sync::thread::ResyncRequest>,
) -> Result<Option<thread::JoinHandle<()>>, DaemonError> {
    let Some(slots) = layout.sync else {
        return Ok(None);
    };
    let t = SyncThread::new(
        cfg,
        ifaces.worker_count(),
        cfg.redundancy.is_some().then(|| Arc::clone(&shared.node)),
        Arc::clone(&shared.hub),
        Arc::clone(&shared.handoff),
        Arc::clone(&layout.segment),
        slots,
    )
    .and_then(|t| {
        let device = cfg.sync.as_ref().and_then(|s| fib.link_with(s.local));
        match (t, device) {
            (Some(mut t), Some((_, link))) => t.bind_device(&link.name).map(|()| Some(t)),
            (t, _) => Ok(t),
        }
    })
    .map_err(|source| DaemonError::Sync {
        local: crate::sync::thread::addresses(cfg).expect("configured").0,
        source,
    })?;
    Ok(t.map(|mut t| {
        tracing::info!("sync link listening");
        t.take_requests(requests);
        t.spawn(Arc::clone(stop))
    }))
}

/// Refuses to start while the kernel forwards between the node's
/// interfaces (IPv4 or IPv6), unless the configuration accepts it.
fn check_kernel_forwarding(cfg: &Config, names: &[String]) -> Result<(), DaemonError> {
    for name in names {
        for family in ["ipv4", "ipv6"] {
            if !sys::forwarding(family, name) {
                continue;
            }
            let sysctl = format!("net.{family}.conf.{name}.forwarding");
            if cfg.node.allow_kernel_forwarding {
                tracing::warn!(
                    %sysctl,
                    "the kernel forwards between tandem's interfaces (node.allow_kernel_forwarding): \
                     if tandemd dies it routes with no firewall and no NAT"
                );
            } else {
                return Err(DaemonError::KernelForwards { sysctl });
            }
        }
    }
    Ok(())
}

/// One thread per worker, pinned to its core in turn.
fn spawn_workers(built: Vec<Worker>, ifaces: &Interfaces) -> Vec<thread::JoinHandle<Worker>> {
    let cores = &ifaces.cores;
    built
        .into_iter()
        .map(|w| {
            let core = (!cores.is_empty()).then(|| cores[w.id() % cores.len()]);
            let queues: Vec<String> = w
                .ports()
                .iter()
                .map(|p| format!("{}:{}", ifaces.names[p.slot], p.queue))
                .collect();
            tracing::info!(worker = w.id(), ?core, queues = ?queues, "starting worker");
            thread::Builder::new()
                .name(format!("tandem-w{}", w.id()))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    w.run()
                })
                .expect("spawn worker")
        })
        .collect()
}

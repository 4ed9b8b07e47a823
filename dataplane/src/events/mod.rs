//! The event log's thread: it drains every worker's event ring, stamps
//! each event, and sends it as syslog ([`syslog`]) and, for NAT44, as
//! IPFIX ([`ipfix`]) to the configured collectors over UDP.
//!
//! Design: the workers never wait for it (a full ring drops the event,
//! counted as `tandem_worker_events_dropped_total`), and it never waits
//! for a collector: its sockets are non-blocking, syslog messages go 64
//! to a `sendmmsg(2)`, IPFIX records ~36 to a message, and whatever the
//! kernel refuses is counted as a send error. It follows reloads: a new
//! collector, facility or domain takes effect at its next turn.

pub mod ipfix;
pub mod syslog;

use std::{
    fmt::Write as _,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tandem_control::{
    config::{Config, Events},
    stats::{Kind, Schema, SegmentWriter, StatsError},
};
pub use tandem_packet::events::{Event, EventKind, EventSink, EventsRx, EventsTx, ring};

use crate::reload::Live;

/// How long the thread sleeps when every ring is empty.
const IDLE: Duration = Duration::from_millis(10);
/// Syslog messages per `sendmmsg`.
const BATCH: usize = 64;
/// The longest an IPFIX record waits for its message to fill.
const IPFIX_FLUSH: Duration = Duration::from_millis(200);
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// The logging thread's nice value.
const NICE: i32 = 10;

/// The thread's counters, in segment order.
const COUNTERS: [(&str, &str); 5] = [
    ("tandem_events_sent_total", "sink=syslog"),
    ("tandem_events_send_errors_total", "sink=syslog"),
    ("tandem_events_sent_total", "sink=ipfix"),
    ("tandem_events_send_errors_total", "sink=ipfix"),
    ("tandem_events_ipfix_messages_total", ""),
];

/// Where the event log's counters sit in the segment.
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    first: u32,
}

/// Registers the event log's counters.
pub fn register(schema: &mut Schema) -> Result<Slots, StatsError> {
    schema.align_block();
    let mut first = None;
    for (name, labels) in COUNTERS {
        let s = schema.push(name, labels, Kind::Counter)?;
        first.get_or_insert(s);
    }
    Ok(Slots {
        first: first.expect("counters"),
    })
}

/// The collectors of one configuration.
struct Sinks {
    syslog: Option<(UdpSocket, syslog::Header)>,
    ipfix: Option<(UdpSocket, ipfix::Exporter, Duration)>,
    config: Events,
}

/// A non-blocking UDP socket connected to `to`.
fn connect(to: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(to)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Sinks {
    fn new(e: &Events) -> Self {
        let open = |what: &str, to: SocketAddr| {
            connect(to)
                .inspect_err(
                    |err| tracing::error!(%to, error = %err, "{what} collector: no socket"),
                )
                .ok()
        };
        let hostname = e.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "-".to_owned())
        });
        let syslog = e.syslog.and_then(|to| open("syslog", to)).map(|s| {
            (
                s,
                syslog::Header {
                    facility: e.facility_code().unwrap_or(16),
                    hostname,
                    pid: std::process::id(),
                },
            )
        });
        let ipfix = e.ipfix.and_then(|to| open("IPFIX", to)).map(|s| {
            (
                s,
                ipfix::Exporter::new(e.observation_domain),
                Duration::from_secs(e.template_every_s.into()),
            )
        });
        if let Some(to) = e.syslog {
            tracing::info!(%to, "session events to syslog");
        }
        if let Some(to) = e.ipfix {
            tracing::info!(%to, "NAT events to IPFIX");
        }
        Self {
            syslog,
            ipfix,
            config: e.clone(),
        }
    }
}

/// The thread.
pub struct EventLog {
    rings: Vec<EventsRx>,
    live: Arc<Live>,
    generation: u64,
    sinks: Sinks,
    /// Service set names, by index.
    sets: Vec<String>,
    /// Unix milliseconds at the session clock's time zero.
    epoch_unix_ms: u64,
    segment: Arc<SegmentWriter>,
    slots: Slots,
    counts: [u64; COUNTERS.len()],
    /// Formatted syslog messages waiting for their `sendmmsg`.
    lines: Vec<String>,
    queued: usize,
    /// This turn's timestamp.
    stamp: String,
    ipfix_since: Option<Instant>,
    templates_at: Instant,
}

impl EventLog {
    pub fn new(
        cfg: &Config,
        rings: Vec<EventsRx>,
        live: Arc<Live>,
        epoch: Instant,
        segment: Arc<SegmentWriter>,
        slots: Slots,
    ) -> Self {
        let now_ms = unix_ms();
        Self {
            rings,
            generation: live.generation(),
            live,
            sinks: Sinks::new(&cfg.log.events),
            sets: cfg.service_sets.iter().map(|s| s.name.clone()).collect(),
            epoch_unix_ms: now_ms.saturating_sub(epoch.elapsed().as_millis() as u64),
            segment,
            slots,
            counts: [0; COUNTERS.len()],
            lines: (0..BATCH).map(|_| String::with_capacity(512)).collect(),
            queued: 0,
            stamp: String::with_capacity(32),
            ipfix_since: None,
            templates_at: Instant::now(),
        }
    }

    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
        thread::Builder::new()
            .name("tandem-log".into())
            .spawn(move || {
                // Below the workers: on saturated CPUs forwarding wins,
                // events wait in the rings and then drop (counted).
                if let Err(e) = crate::sys::nice_this_thread(NICE) {
                    tracing::warn!(error = %e, "event log thread: nice");
                }
                let mut published = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    self.follow_config();
                    if self.turn() == 0 {
                        thread::sleep(IDLE);
                    }
                    if published.elapsed() >= PUBLISH_EVERY {
                        self.publish();
                        published = Instant::now();
                    }
                }
                // What the workers queued before they stopped.
                self.turn();
                self.flush_ipfix();
                self.publish();
            })
            .expect("spawn the event log thread")
    }

    /// A reload with new collectors: the old sockets close (an IPFIX
    /// message being built goes first).
    fn follow_config(&mut self) {
        let generation = self.live.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let cfg = self.live.config();
        if cfg.log.events != self.sinks.config {
            self.flush_ipfix();
            self.sinks = Sinks::new(&cfg.log.events);
        }
    }

    /// Drains every ring once; how many events it took.
    fn turn(&mut self) -> usize {
        let now_ms = unix_ms();
        // One timestamp for every event of a turn (a few milliseconds).
        self.stamp.clear();
        let _ = write!(self.stamp, "{}", syslog::stamp(now_ms));
        let mut n = 0;
        for w in 0..self.rings.len() {
            while let Ok(ev) = self.rings[w].pop() {
                n += 1;
                self.log(&ev, now_ms);
            }
        }
        self.send_syslog();
        if self.ipfix_since.is_some_and(|t| t.elapsed() >= IPFIX_FLUSH) {
            self.flush_ipfix();
        }
        if let Some((_, exp, every)) = self.sinks.ipfix.as_mut()
            && self.templates_at.elapsed() >= *every
        {
            exp.resend_templates();
            self.templates_at = Instant::now();
            if self.ipfix_since.is_none() {
                self.flush_ipfix();
            }
        }
        n
    }

    fn log(&mut self, ev: &Event, now_ms: u64) {
        let s = &ev.session;
        let start_ms = self.epoch_unix_ms + u64::from(s.created) * 1000;
        if let Some((_, header)) = &self.sinks.syslog {
            let set = self
                .sets
                .get(usize::from(s.service_set))
                .map_or("-", String::as_str);
            syslog::format(
                &mut self.lines[self.queued],
                header,
                ev.kind,
                s,
                &self.stamp,
                start_ms,
                set,
            );
            self.queued += 1;
            if self.queued == BATCH {
                self.send_syslog();
            }
        }
        if self.sinks.ipfix.is_some() {
            let block = matches!(
                ev.kind,
                EventKind::BlockAllocated | EventKind::BlockReleased
            );
            let (template, record) = match (ev.kind, s.nat(), s.key.src_v4(), s.key.dst_v4()) {
                (EventKind::PortsExhausted, ..) => (ipfix::NAT_EXHAUSTED, None),
                _ if block => (ipfix::PORT_BLOCK, None),
                // RFC 8158's NAT44 session record names the source's
                // translation: a translated destination is in the syslog.
                (kind, Some((nat_src, nat_sport)), Some(src), Some(dst)) if !s.is_dnat() => (
                    ipfix::NAT44_SESSION,
                    Some(ipfix::Nat44 {
                        unix_ms: now_ms,
                        event: if kind == EventKind::Create {
                            ipfix::NAT44_CREATE
                        } else {
                            ipfix::NAT44_DELETE
                        },
                        proto: s.key.proto,
                        src,
                        nat_src,
                        dst,
                        sport: s.key.sport,
                        nat_sport,
                        dport: s.key.dport,
                    }),
                ),
                // Not translated: the syslog has it.
                _ => return,
            };
            if !self
                .sinks
                .ipfix
                .as_ref()
                .is_some_and(|(_, e, _)| e.fits(template))
            {
                self.flush_ipfix();
            }
            let (_, exp, _) = self.sinks.ipfix.as_mut().expect("checked");
            match record {
                Some(r) => exp.nat44(&r),
                None if block => {
                    let (pool, first) = s.nat().unwrap_or_default();
                    exp.block(&ipfix::Block {
                        unix_ms: now_ms,
                        event: if ev.kind == EventKind::BlockAllocated {
                            ipfix::BLOCK_ALLOCATED
                        } else {
                            ipfix::BLOCK_RELEASED
                        },
                        inside: s.key.src_v4().unwrap_or_default(),
                        pool,
                        first,
                        last: s.key.dport,
                    });
                }
                None => exp.exhausted(now_ms, u32::from(s.service_set)),
            }
            self.ipfix_since.get_or_insert_with(Instant::now);
        }
    }

    fn send_syslog(&mut self) {
        if self.queued == 0 {
            return;
        }
        let n = std::mem::take(&mut self.queued);
        let Some((sock, _)) = &self.sinks.syslog else {
            return;
        };
        let msgs: [&[u8]; BATCH] =
            std::array::from_fn(|i| self.lines.get(i).map_or(&[][..], |l| l.as_bytes()));
        let sent = crate::sys::send_many(sock.as_raw_fd(), &msgs[..n]);
        self.counts[0] += sent as u64;
        self.counts[1] += (n - sent) as u64;
    }

    fn flush_ipfix(&mut self) {
        self.ipfix_since = None;
        let Some((sock, exp, _)) = self.sinks.ipfix.as_mut() else {
            return;
        };
        if !exp.pending() {
            return;
        }
        let records = u64::from(exp.records());
        let secs = u32::try_from(unix_ms() / 1000).unwrap_or(u32::MAX);
        match sock.send(exp.finish(secs)) {
            Ok(_) => {
                self.counts[2] += records;
                self.counts[4] += 1;
            }
            Err(_) => self.counts[3] += records,
        }
        exp.clear();
    }

    fn publish(&self) {
        for (slot, v) in self
            .segment
            .values(self.slots.first, COUNTERS.len())
            .iter()
            .zip(self.counts)
        {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

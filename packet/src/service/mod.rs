//! The services stage: ownership, session lookup and creation, the stateful
//! firewall and NAPT44, between parsing and routing.
//!
//! Design: [`Services::process`] runs on a prepared datagram (untagged, at
//! `ETH_HLEN`). It decides whether this worker owns the flow (else the
//! caller hands the frame to the owner), finds or creates its session
//! (policy is decided once, on the first packet), rewrites for NAT what
//! must precede routing (the responder's packets go back to the inside
//! host) and returns what must follow it (the initiator's source
//! translation, applied once the route is known, so ICMP errors the router
//! itself raises quote the untranslated packet). No allocation: the table
//! and the port pools are sized at start.

mod clear;
mod fastpath;
pub mod nat;
pub mod policy;
pub mod sync;

use hashbrown::HashMap;
use tandem_control::{
    config::{self, Prefix, RuleAction},
    sync::wire::ANSWERED,
};

use crate::{
    counters::{Tally, WorkerCounter},
    events::{EventKind, EventSink},
    forward::DropReason,
    offload::{self, FlowTable},
    session::{
        FlowKey, Origin, Placement, Session, SessionAction, Side, Table, TcpState, table::Aged,
    },
    sync::{ToSync, record, refresh_record},
    wire::{self, Headers, Ip, Kind, L4, Rewrite, TCP_ACK, TCP_SYN},
};

use self::{
    fastpath::established,
    nat::{PortPool, Refusal},
    policy::Policy,
};

/// What the worker does next with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Route it; then, if `snat` is set, translate its source.
    Pass {
        snat: Option<Snat>,
    },
    /// Inside to inside through an outside address (hairpinning): apply
    /// `snat` (the sender's mapping; `None`: an ICMP error, rewritten
    /// already), then put the datagram through the services again as if
    /// it came in on the outside interface.
    Hairpin {
        snat: Option<Snat>,
    },
    /// Another worker owns the flow: hand the frame over.
    Handoff(usize),
    /// Answer with a reset (TCP) or an administratively-prohibited
    /// unreachable (anything else); the datagram itself is dropped.
    Reject(L4),
    /// Answer with an administratively-prohibited unreachable whatever
    /// the protocol (RFC 5508 REQ-8: the NAT could not map the flow) and
    /// drop the datagram, counted as this.
    Unreachable(DropReason),
    Drop(DropReason),
}

/// One datagram on its way through the services: its frame, its headers
/// and the second it arrived.
struct Packet<'f> {
    frame: &'f mut [u8],
    ip: Ip,
    l4: L4,
    now: u32,
}

/// A source translation to apply after routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snat {
    pub l4: L4,
    pub addr: [u8; 4],
    pub port: u16,
}

impl Snat {
    pub fn apply(&self, frame: &mut [u8], l3: usize) {
        wire::rewrite_v4(frame, l3, &self.l4, Rewrite::Source, self.addr, self.port);
    }
}

struct Set {
    prefixes: Vec<Prefix>,
    policy: Policy,
    nat: Option<PortPool>,
    offload: bool,
}

/// A static rule's side of a flow: (address, port, protocol) outside, or
/// (address, port, service set) inside.
type Endpoint3 = ([u8; 4], u16, u8);

/// The static translations and forwarded ports of every service set, by
/// outside address (and protocol and port) and by inside address.
#[derive(Default)]
struct Statics {
    /// 1:1: outside address to (inside address, set), and back.
    outside: HashMap<[u8; 4], ([u8; 4], u8), foldhash::fast::RandomState>,
    inside: HashMap<[u8; 4], ([u8; 4], u8), foldhash::fast::RandomState>,
    /// (protocol, outside address, port) to (inside address, port, set).
    forwards: HashMap<Endpoint3, Endpoint3, foldhash::fast::RandomState>,
    /// Every address the node answers for from outside: pool addresses,
    /// static ones, forwarded ones.
    external: Vec<[u8; 4]>,
    any: bool,
}

impl Statics {
    fn new(cfg: &config::Config) -> Self {
        let mut st = Self::default();
        for (i, set) in cfg.service_sets.iter().enumerate() {
            let Some(n) = &set.nat else {
                continue;
            };
            for x in &n.statics {
                let (o, a) = (x.outside.octets(), x.inside.octets());
                st.outside.insert(o, (a, i as u8));
                st.inside.insert(a, (o, i as u8));
            }
            for f in &n.forwards {
                st.forwards.insert(
                    (f.outside.ip().octets(), f.outside.port(), f.protocol.0),
                    (f.inside.ip().octets(), f.inside.port(), i as u8),
                );
            }
        }
        st.external = cfg
            .pool_addresses()
            .iter()
            .map(std::net::Ipv4Addr::octets)
            .collect();
        st.any = !st.outside.is_empty() || !st.forwards.is_empty();
        st
    }

    /// Where a packet from outside to (`dst`, `port`) of `proto` goes by
    /// a static rule: (inside address, port, set).
    #[inline]
    fn target(&self, dst: [u8; 4], port: u16, proto: u8) -> Option<([u8; 4], u16, u8)> {
        if !self.any {
            return None;
        }
        if let Some(&t) = self.forwards.get(&(dst, port, proto)) {
            return Some(t);
        }
        self.outside.get(&dst).map(|&(a, set)| (a, port, set))
    }

    fn is_external(&self, a: [u8; 4]) -> bool {
        self.external.contains(&a)
    }
}

/// One worker's services: its session shard and its share of every pool.
pub struct Services {
    worker: usize,
    workers: usize,
    placement: Placement,
    inside_ifindex: u32,
    sets: Vec<Set>,
    statics: Statics,
    names: Vec<String>,
    pub table: Table,
    next_id: u64,
    /// Replication, when `[sync]` is configured.
    sync: Option<sync::WorkerSync>,
    /// The XDP flow map, when sessions may be offloaded.
    flows: Option<Box<dyn FlowTable>>,
    /// A session the last packet found ready for offload: (slot, the
    /// side that packet came from). The worker installs it once it has
    /// routed the packet.
    offer: Option<(u32, Side)>,
    /// The event log's ring, when attached.
    events: Option<EventSink>,
    /// Where the next early-drop search starts.
    early_cursor: u32,
    /// Bindings of sessions that expired in this aging step, released
    /// together at its end (their mappings prefetched when they went in).
    releases: Releases,
}

/// One worker's view of one NAT service set's pool.
#[derive(Clone, Debug)]
pub struct NatView {
    pub set: u8,
    pub addresses: Vec<nat::AddressUse>,
    pub subscribers: usize,
    pub top: Vec<nat::SubscriberView>,
}

/// NAT bindings to release, at most [`Releases::MAX`]: (service set,
/// the binding).
struct Releases {
    pending: [(u8, Binding); Self::MAX],
    len: usize,
}

/// A session's hold on a pool pair: the pair, its mapping's inside
/// endpoint, and the outside host the session is with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Binding {
    addr: [u8; 4],
    port: u16,
    ep: u64,
    remote: u32,
}

/// The pool pair session `s` holds, if any: a source-translated
/// session's own, or the mapping an outside flow came in through (a
/// static rule's binding holds none).
fn binding(s: &Session) -> Option<Binding> {
    let (addr, port) = s.nat().filter(|_| !s.is_static())?;
    let proto = s.key.proto;
    let v4 = |a: Option<[u8; 4]>| u32::from_be_bytes(a.unwrap_or_default());
    Some(if s.is_dnat() {
        Binding {
            addr: s.key.dst_v4()?,
            port: s.key.dport,
            ep: nat::endpoint(addr, port, proto),
            remote: v4(s.key.src_v4()),
        }
    } else {
        Binding {
            addr,
            port,
            ep: nat::endpoint(s.key.src_v4()?, s.key.sport, proto),
            remote: v4(s.key.dst_v4()),
        }
    })
}

/// `s` ended or was refused: its pool pair's mapping loses a user, and
/// under address-dependent filtering its outside host one session.
fn unbind(pool: &mut PortPool, b: &Binding, refused: bool) {
    if pool.remembers_remotes() && !refused {
        pool.remote(b.addr, b.port, b.remote, false);
    }
    pool.unbind(b.addr, b.port, b.ep, refused);
}

impl Releases {
    const MAX: usize = 32;

    /// Queues the binding of `s`, which ended, after prefetching its
    /// mapping; when the queue is full, releases what it holds first.
    fn push(&mut self, sets: &mut [Set], s: &Session) {
        let Some(b) = binding(s).filter(|_| s.remote == 0) else {
            return;
        };
        match sets
            .get(usize::from(s.service_set))
            .and_then(|x| x.nat.as_ref())
        {
            Some(pool) => pool.prefetch(b.ep),
            None => return,
        }
        if self.len == Self::MAX {
            self.flush(sets);
        }
        self.pending[self.len] = (s.service_set, b);
        self.len += 1;
    }

    fn flush(&mut self, sets: &mut [Set]) {
        for (set, b) in &self.pending[..self.len] {
            if let Some(pool) = sets.get_mut(usize::from(*set)).and_then(|x| x.nat.as_mut()) {
                unbind(pool, b, false);
            }
        }
        self.len = 0;
    }
}

/// Why a worker's services could not be built.
#[derive(Debug, thiserror::Error)]
#[error("service set {set}: {source}")]
pub struct ServiceError {
    set: String,
    #[source]
    source: nat::PoolError,
}

impl Services {
    /// (bound, all) (address, port) pairs of this worker's NAT pool
    /// shares, over every service set (cooling pairs are neither bound
    /// nor free: [`Self::nat_cooling`]).
    pub fn nat_ports(&self) -> (usize, usize) {
        self.sets
            .iter()
            .filter_map(|s| s.nat.as_ref())
            .fold((0, 0), |(u, t), p| {
                (u + p.size() - p.available() - p.cooling(), t + p.size())
            })
    }

    /// Every pool hands out its lowest free pair (unit tests name ports).
    #[cfg(test)]
    pub(crate) fn lowest_ports_first(&mut self) {
        for p in self.sets.iter_mut().filter_map(|s| s.nat.as_mut()) {
            p.lowest_first();
        }
    }

    /// (held, all) port blocks and the subscribers of this worker's NAT
    /// pool shares, over every service set.
    pub fn nat_blocks(&self) -> (usize, usize, usize) {
        self.sets
            .iter()
            .filter_map(|s| s.nat.as_ref())
            .fold((0, 0, 0), |(h, t, n), p| {
                let (held, all) = p.blocks();
                (h + held, t + all, n + p.subscribers())
            })
    }

    /// Per NAT service set (by index): its pool addresses' use, its
    /// subscribers and the `top` with the most ports, for views.
    pub fn nat_view(&self, top: usize) -> Vec<NatView> {
        self.sets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let p = s.nat.as_ref()?;
                Some(NatView {
                    set: i as u8,
                    addresses: p.address_use(),
                    subscribers: p.subscribers(),
                    top: p.top_subscribers(top),
                })
            })
            .collect()
    }

    /// Pairs of this worker's NAT pool shares waiting out the reuse delay.
    pub fn nat_cooling(&self) -> usize {
        self.sets
            .iter()
            .filter_map(|s| s.nat.as_ref())
            .map(nat::PortPool::cooling)
            .sum()
    }

    /// Worker `worker`'s services, or `None` when no service set is
    /// configured (the node then routes without sessions).
    pub fn new(
        cfg: &config::Config,
        worker: usize,
        workers: usize,
        inside_ifindex: u32,
        now: u32,
    ) -> Result<Option<Self>, ServiceError> {
        if cfg.service_sets.is_empty() {
            return Ok(None);
        }
        let mut sets = Vec::new();
        for s in &cfg.service_sets {
            let nat = match &s.nat {
                Some(n) => Some(
                    PortPool::new(n, worker, workers, cfg.sessions.per_worker as usize).map_err(
                        |source| ServiceError {
                            set: s.name.clone(),
                            source,
                        },
                    )?,
                ),
                None => None,
            };
            sets.push(Set {
                prefixes: s.inside_prefixes.clone(),
                policy: Policy::new(&s.firewall),
                nat,
                offload: s.offload,
            });
        }
        Ok(Some(Self {
            worker,
            workers,
            placement: Placement::new(cfg, workers),
            inside_ifindex,
            sets,
            statics: Statics::new(cfg),
            names: cfg.service_sets.iter().map(|s| s.name.clone()).collect(),
            table: Table::new(cfg.sessions.per_worker as usize, cfg.sessions.timeouts, now),
            next_id: 0,
            sync: None,
            flows: None,
            offer: None,
            events: None,
            early_cursor: 0,
            releases: Releases {
                pending: [(0, Binding::default()); Releases::MAX],
                len: 0,
            },
        }))
    }

    /// Applies a reloaded configuration (whose service sets are those this
    /// was built with: names, pools and offload cannot change live): the
    /// firewall rules decide new flows from now on, and the timeouts
    /// apply from each session's next packet or current deadline.
    /// Sessions keep the decision their first packet got.
    pub fn reconfigure(&mut self, cfg: &config::Config) {
        for (set, s) in self.sets.iter_mut().zip(&cfg.service_sets) {
            if set.policy.firewall() != &s.firewall {
                set.policy = Policy::new(&s.firewall);
            }
        }
        self.table.set_timeouts(cfg.sessions.timeouts);
    }

    /// Sends session and NAT events to the event log's ring.
    pub fn attach_events(&mut self, sink: EventSink) {
        self.events = Some(sink);
    }

    /// Hands the pools' port block changes to the event log (or drops
    /// them, without one).
    fn drain_blocks(&mut self) {
        for (i, set) in self.sets.iter_mut().enumerate() {
            let Some(pool) = set.nat.as_mut().filter(|p| p.has_block_log()) else {
                continue;
            };
            let mut events = self.events.as_mut();
            let lost = pool.take_block_log(|b| {
                if let Some(e) = events.as_deref_mut() {
                    e.block(b.allocated, i as u8, b.inside, b.pool, (b.first, b.last));
                }
            });
            if let Some(e) = events {
                e.lost(lost);
            }
        }
    }

    /// The event log's ring, when attached.
    pub fn events(&mut self) -> Option<&mut EventSink> {
        self.events.as_mut()
    }

    /// The session in `slot`.
    pub fn session(&self, slot: u32) -> &Session {
        self.table.get(slot)
    }

    /// Service set names, by index.
    pub fn set_names(&self) -> &[String] {
        &self.names
    }

    /// Whether `a` is a NAT pool address of any service set.
    fn pool_of(&self, a: [u8; 4]) -> Option<&PortPool> {
        self.sets
            .iter()
            .filter_map(|s| s.nat.as_ref())
            .find(|p| p.is_pool_address(a))
    }

    /// The worker that owns the flow of a packet with key `k` arriving on
    /// `origin`'s side: from outside, by the translated port for traffic
    /// to a pool address and by the inside host for a static rule's;
    /// else by [`Placement`] (the subscriber, on a node that translates).
    fn owner(&self, k: &FlowKey, origin: Origin) -> usize {
        // From inside, even to an outside address of the node (a
        // hairpin), a packet is its sender's: its mapping is there.
        if origin == Origin::Outside
            && let Some(dst) = k.dst_v4()
        {
            // A static rule's flows live with the inside host's.
            if let Some((inside, _, _)) = self.statics.target(dst, k.dport, k.proto) {
                return self.placement.of_subscriber(inside);
            }
            if let Some(pool) = self.pool_of(dst) {
                return pool
                    .owner_of_port(k.dport, self.workers)
                    .unwrap_or(self.worker);
            }
        }
        self.placement.of(k, origin)
    }

    /// The inside interface's ifindex.
    pub fn inside_ifindex(&self) -> u32 {
        self.inside_ifindex
    }

    fn origin(&self, ingress: u32) -> Origin {
        if ingress == self.inside_ifindex {
            Origin::Inside
        } else {
            Origin::Outside
        }
    }

    /// Starts loading the index entries [`Services::process`] will read for
    /// the frame `frame` (as received: tagged or not) that arrived on
    /// `ingress` (`None`: another worker handed it over), if this worker
    /// owns its flow. Reads the frame, changes nothing: a batch calls it
    /// for every frame first, so that the lookups' cache misses overlap.
    #[inline]
    pub fn prefetch(&self, frame: &[u8], headers: &Headers, ingress: Option<u32>) {
        let Ok(l4) = headers.l4 else {
            return;
        };
        if matches!(l4.kind, Kind::Fragment | Kind::Error { .. }) {
            return;
        }
        let key = flow_key(frame, &headers.ip, &l4);
        let origin = ingress.map(|i| self.origin(i));
        if origin.is_none_or(|o| self.owner(&key, o) == self.worker) {
            self.table.prefetch(key.table_hash());
            // A new inside flow (one that may translate) looks its
            // mapping up too.
            if opens(l4.kind)
                && matches!(l4.kind, Kind::Tcp { .. } | Kind::Udp | Kind::Echo { .. })
                && origin != Some(Origin::Outside)
                && let Some(src) = key.src_v4()
            {
                let ep = nat::endpoint(src, key.sport, key.proto);
                for pool in self.sets.iter().filter_map(|s| s.nat.as_ref()) {
                    pool.prefetch(ep);
                }
            }
        }
    }

    /// Runs the services stage on the prepared datagram `ip` in `frame`,
    /// received on `ingress` at `now` (seconds).
    pub fn process(
        &mut self,
        frame: &mut [u8],
        ip: &Ip,
        ingress: u32,
        now: u32,
        tally: &mut Tally,
    ) -> Verdict {
        let headers = Headers {
            ip: *ip,
            l4: wire::parse_l4(frame, ip),
        };
        self.process_headers(frame, &headers, ingress, now, tally)
    }

    /// [`Self::process`] on headers parsed already (the worker's prefetch
    /// pass parsed them): nothing of the frame is parsed twice.
    pub fn process_headers(
        &mut self,
        frame: &mut [u8],
        headers: &Headers,
        ingress: u32,
        now: u32,
        tally: &mut Tally,
    ) -> Verdict {
        self.process_as(frame, headers, (ingress, false), now, tally, &|_| true)
    }

    /// [`Self::process_headers`] (or, if `handed`, [`Self::process_handed`])
    /// that creates a session only for a flow `routable` says leaves
    /// through an interface this node forwards on: a packet the router
    /// will drop (no route, the sync link, a management port) makes no
    /// session and takes no NAT binding.
    pub fn process_routed(
        &mut self,
        frame: &mut [u8],
        headers: &Headers,
        (ingress, handed): (u32, bool),
        now: u32,
        tally: &mut Tally,
        routable: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Verdict {
        self.process_as(frame, headers, (ingress, handed), now, tally, routable)
    }

    /// [`Self::process_headers`] for a frame another worker handed over:
    /// it came because this worker owns its flow (or holds the session a
    /// stub there stands for), so it is not handed on again.
    pub fn process_handed(
        &mut self,
        frame: &mut [u8],
        headers: &Headers,
        ingress: u32,
        now: u32,
        tally: &mut Tally,
    ) -> Verdict {
        self.process_as(frame, headers, (ingress, true), now, tally, &|_| true)
    }

    fn process_as(
        &mut self,
        frame: &mut [u8],
        headers: &Headers,
        (ingress, handed): (u32, bool),
        now: u32,
        tally: &mut Tally,
        routable: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Verdict {
        self.offer = None;
        let ip = &headers.ip;
        let l4 = match headers.l4 {
            Ok(l4) => l4,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if l4.kind == Kind::Fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        let origin = self.origin(ingress);
        if let Kind::Error { inner } = l4.kind {
            return self.icmp_error(frame, ip, &l4, inner, (origin, handed));
        }
        let key = flow_key(frame, ip, &l4);
        let owner = self.owner(&key, origin);
        if owner != self.worker && !handed {
            return Verdict::Handoff(owner);
        }
        let mut p = Packet {
            frame,
            ip: *ip,
            l4,
            now,
        };
        if let Some(found) = self.table.lookup(&key) {
            if let Some(w) = self.table.get(found.0).stub_for() {
                return Verdict::Handoff(w);
            }
            return self.existing(&mut p, found, tally);
        }
        let v = self.first_packet(&mut p, key, origin, tally, routable);
        self.drain_blocks();
        v
    }

    /// A packet of the session in `slot`, from its `side`.
    fn existing(
        &mut self,
        p: &mut Packet<'_>,
        (slot, side): (u32, Side),
        tally: &mut Tally,
    ) -> Verdict {
        let (l4, now) = (&p.l4, p.now);
        let s = self.table.get_mut(slot);
        match s.action() {
            SessionAction::Forward => {}
            SessionAction::Drop => return Verdict::Drop(DropReason::Policy),
            SessionAction::Reject => return Verdict::Reject(*l4),
        }
        s.count(side, p.ip.datagram_len(), now);
        let next = match l4.kind {
            Kind::Tcp { flags } => TcpState::from_u8(s.state).next(side, flags) as u8,
            // Other protocols: the first answer, which the peer needs to
            // know to offload the session after a takeover.
            _ if side == Side::Responder => ANSWERED,
            _ => s.state,
        };
        if next != s.state {
            s.state = next;
            self.table.reschedule(slot);
            let s = self.table.get(slot);
            let lost = sync::emit(self.sync.as_mut(), self.worker, s.key.proto, || {
                ToSync::Refresh(refresh_record(s, now))
            });
            if lost && let Some(r) = self.sync.as_mut() {
                r.mark(self.table.get_mut(slot));
            }
        }
        if self.flows.is_some() {
            let s = self.table.get(slot);
            if s.is_offloaded() {
                // A FIN or RST the program left to us: the fast path ends.
                if !established(s) {
                    self.unoffload(slot, tally);
                }
            } else if self.may_offload(s) {
                self.offer = Some((slot, side));
            }
        }
        let s = self.table.get(slot);
        if s.nat().is_none() {
            return Verdict::Pass { snat: None };
        }
        if let Some((addr, port)) = s.source_nat(side) {
            let snat = Some(Snat {
                l4: *l4,
                addr,
                port,
            });
            return if s.is_hairpin() {
                Verdict::Hairpin { snat }
            } else {
                Verdict::Pass { snat }
            };
        }
        // The other way: to the inside endpoint.
        let (to, port) = s.inside_endpoint().expect("NAT sessions are IPv4");
        wire::rewrite_v4(p.frame, p.ip.l3(), l4, Rewrite::Destination, to, port);
        Verdict::Pass { snat: None }
    }

    /// A packet with no session yet, keyed `key`, from `origin`'s side.
    fn first_packet(
        &mut self,
        p: &mut Packet<'_>,
        key: FlowKey,
        origin: Origin,
        tally: &mut Tally,
        routable: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Verdict {
        let (l4, now) = (&p.l4, p.now);
        if !opens(l4.kind) {
            return Verdict::Drop(DropReason::NoSession);
        }
        let external = key.dst_v4().filter(|&d| self.statics.is_external(d));
        if origin == Origin::Outside && external.is_some() {
            return self.inbound(p, key, tally, routable);
        }
        // From inside to an outside address of this node: translated,
        // then in again from outside.
        let hairpin = external.is_some();
        let inside_end = if origin == Origin::Inside {
            key.src_ip()
        } else {
            key.dst_ip()
        };
        // A host with a static translation is its rule's set's.
        let fixed = (origin == Origin::Inside)
            .then(|| key.src_v4())
            .flatten()
            .filter(|_| self.statics.any)
            .and_then(|a| self.statics.inside.get(&a).copied());
        let Some(set_idx) = fixed.map(|(_, set)| usize::from(set)).or_else(|| {
            self.sets.iter().position(|s| {
                s.prefixes.is_empty() || s.prefixes.iter().any(|p| p.contains(inside_end))
            })
        }) else {
            // No service set covers this flow: routed without services.
            return Verdict::Pass { snat: None };
        };
        match self.sets[set_idx].policy.decide(&key, origin).0 {
            RuleAction::Forward => {}
            RuleAction::Drop => return Verdict::Drop(DropReason::Policy),
            RuleAction::Reject => return Verdict::Reject(*l4),
        }
        if !hairpin && !routable(key.dst_ip()) {
            // The router drops it (no route: an unreachable; an egress
            // this node does not forward on: `foreign_egress`), from the
            // same FIB snapshot: no session, no binding, and nothing
            // leaves untranslated.
            return Verdict::Pass { snat: None };
        }
        // Unique per node and small: the sequence interleaved across workers.
        let id = self.next_id * self.workers as u64 + self.worker as u64 + 1;
        let mut s = Session::new(key, id, origin, set_idx as u8, now);
        if let Kind::Tcp { flags } = l4.kind {
            s.state = TcpState::Closed.next(Side::Initiator, flags) as u8;
        }
        let translate = origin == Origin::Inside
            && key.is_v4()
            && matches!(l4.kind, Kind::Tcp { .. } | Kind::Udp | Kind::Echo { .. });
        let mut snat = None;
        if let Some((outside, _)) = fixed.filter(|_| translate) {
            // A 1:1 translation keeps the port.
            s.set_nat(outside, key.sport);
            s.set_static();
            snat = Some(Snat {
                l4: *l4,
                addr: outside,
                port: key.sport,
            });
        } else if let Some(pool) = self.sets[set_idx].nat.as_mut() {
            if translate {
                let ep = mapping_endpoint(&s);
                let (addr, port) = match pool.bind(ep, now) {
                    Ok(pair) => pair,
                    Err(why) => {
                        count_refusal(tally, why);
                        if why == Refusal::PoolExhausted
                            && let Some(e) = self.events.as_mut()
                        {
                            e.exhausted(&s, now);
                        }
                        return Verdict::Unreachable(DropReason::NatFailed);
                    }
                };
                s.set_nat(addr, port);
                snat = Some(Snat {
                    l4: *l4,
                    addr,
                    port,
                });
            } else if origin == Origin::Inside {
                // Leaving untranslated would leak the inside address.
                return Verdict::Drop(DropReason::NatFailed);
            }
        }
        if hairpin {
            if snat.is_none() {
                return Verdict::Drop(DropReason::NoSession);
            }
            // The fast path would send it out untranslated the second time.
            s.set_hairpin();
            s.refuse_offload();
        }
        if let Err(v) = self.insert_new(s, p.ip.datagram_len(), now, tally) {
            return v;
        }
        if hairpin {
            Verdict::Hairpin { snat }
        } else {
            Verdict::Pass { snat }
        }
    }

    /// Enters the new session `s`, whose first packet is `len` bytes,
    /// into the table (ending an unanswered one if it is full), and
    /// tells the peer, the event log and the counters ([`Self::created`]).
    /// Refused (its binding returned) when one of its keys is taken, as
    /// when an outside host reuses a translated port as its source, or
    /// when the table has no room.
    fn insert_new(
        &mut self,
        mut s: Session,
        len: usize,
        now: u32,
        tally: &mut Tally,
    ) -> Result<u32, Verdict> {
        if !self.table.keys_free(&s) {
            unalloc(&mut self.sets, &s);
            return Err(Verdict::Drop(DropReason::NoSession));
        }
        s.count(Side::Initiator, len, now);
        let inserted = self.table.insert(s).or_else(|full| {
            if self.early_drop(tally) {
                self.table.insert(s)
            } else {
                Err(full)
            }
        });
        let Ok(slot) = inserted else {
            unalloc(&mut self.sets, &s);
            tally.add(WorkerCounter::SessionsRefused, 1);
            return Err(Verdict::Drop(DropReason::TableFull));
        };
        self.created(&s, slot, now, tally);
        Ok(slot)
    }

    /// The new session `s`, now in `slot`, goes to the peer, the event
    /// log and the counters; under address-dependent filtering its pool
    /// pair's mapping remembers its outside host.
    fn created(&mut self, s: &Session, slot: u32, now: u32, tally: &mut Tally) {
        let lost = sync::emit(self.sync.as_mut(), self.worker, s.key.proto, || {
            ToSync::Add(record(s, now))
        });
        if lost && let Some(r) = self.sync.as_mut() {
            r.mark(self.table.get_mut(slot));
        }
        if let Some(b) = binding(s)
            && let Some(pool) = self.sets[usize::from(s.service_set)].nat.as_mut()
            && pool.remembers_remotes()
        {
            pool.remote(b.addr, b.port, b.remote, true);
        }
        if let Some(e) = self.events.as_mut() {
            e.push(EventKind::Create, s);
        }
        self.next_id += 1;
        tally.add(WorkerCounter::SessionsCreated, 1);
    }

    /// The first packet of a flow from outside to an address of this
    /// node: a forwarded port, a static translation's outside address,
    /// or a pool pair whose mapping's filtering lets its source in. Its
    /// session translates the destination to the inside host; the
    /// firewall decides it on the translated key (a rule that matches
    /// decides; with none, the rule or mapping that let it in does).
    fn inbound(
        &mut self,
        p: &mut Packet<'_>,
        key: FlowKey,
        tally: &mut Tally,
        routable: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Verdict {
        let (l4, now) = (&p.l4, p.now);
        if !matches!(l4.kind, Kind::Tcp { .. } | Kind::Udp | Kind::Echo { .. }) {
            return Verdict::Drop(DropReason::NoSession);
        }
        let (Some(dst), Some(src)) = (key.dst_v4(), key.src_v4()) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let remote = u32::from_be_bytes(src);
        let (inside, port, set, fixed) =
            if let Some((a, port, set)) = self.statics.target(dst, key.dport, key.proto) {
                (a, port, usize::from(set), true)
            } else {
                let Some(set) = self
                    .sets
                    .iter()
                    .position(|s| s.nat.as_ref().is_some_and(|n| n.is_pool_address(dst)))
                else {
                    return Verdict::Drop(DropReason::NoSession);
                };
                let pool = self.sets[set].nat.as_mut().expect("found above");
                if matches!(l4.kind, Kind::Echo { .. }) {
                    return Verdict::Drop(DropReason::NoSession);
                }
                let ep = match pool.admit(dst, key.dport, key.proto, remote) {
                    Ok(Some(ep)) => ep,
                    Ok(None) => return Verdict::Drop(DropReason::NoSession),
                    Err(why) => {
                        count_refusal(tally, why);
                        return Verdict::Drop(DropReason::NatFailed);
                    }
                };
                let port = (ep >> 32) as u16;
                ((ep as u32).to_be_bytes(), port, set, false)
            };
        let id = self.next_id * self.workers as u64 + self.worker as u64 + 1;
        let mut s = Session::new(key, id, Origin::Outside, set as u8, now);
        s.set_dnat(inside, port);
        if fixed {
            s.set_static();
        }
        if let Kind::Tcp { flags } = l4.kind {
            s.state = TcpState::Closed.next(Side::Initiator, flags) as u8;
        }
        let mut translated = key;
        translated.dst = crate::session::key::mapped(inside);
        translated.dport = port;
        let refuse = match self.sets[set].policy.decide(&translated, Origin::Outside) {
            (_, None) | (RuleAction::Forward, _) => None,
            (RuleAction::Drop, Some(_)) => Some(Verdict::Drop(DropReason::Policy)),
            (RuleAction::Reject, Some(_)) => Some(Verdict::Reject(*l4)),
        };
        let refuse = refuse.or_else(|| {
            (!routable(std::net::IpAddr::from(inside)))
                .then_some(Verdict::Drop(DropReason::NoSession))
        });
        if let Some(v) = refuse {
            unalloc(&mut self.sets, &s);
            return v;
        }
        if self.statics.is_external(src) {
            // The second half of a hairpin: its answers go in again too.
            s.set_hairpin();
            s.refuse_offload();
        }
        if let Err(v) = self.insert_new(s, p.ip.datagram_len(), now, tally) {
            return v;
        }
        let l4 = p.l4;
        wire::rewrite_v4(p.frame, p.ip.l3(), &l4, Rewrite::Destination, inside, port);
        Verdict::Pass { snat: None }
    }

    /// The table is full: ends one session that never saw an answer (or a
    /// TCP session a reset closed), found within [`EARLY_DROP_SLOTS`]
    /// slots from where the last search stopped, as conntrack's early drop
    /// does, so that a flood of unanswered flows cannot lock out new
    /// users; established sessions are never taken. Whether one went.
    fn early_drop(&mut self, tally: &mut Tally) -> bool {
        let found = std::cell::Cell::new(false);
        let sets = &mut self.sets;
        let (mut rep, ids) = (self.sync.as_mut(), (self.worker, self.placement));
        let mut flows = self.flows.as_deref_mut();
        let mut events = self.events.as_mut();
        let from = self.early_cursor;
        let next = self.table.sweep(
            from,
            EARLY_DROP_SLOTS,
            |s| {
                let unanswered = s.packets[1] == 0 && !s.is_offloaded();
                let reset = s.tcp_state() == Some(TcpState::Closed);
                let take = !found.get() && s.remote == 0 && (unanswered || reset);
                if take {
                    found.set(true);
                }
                take
            },
            |s| {
                let log = events.as_deref_mut().map(|e| (e, EventKind::EarlyDropped));
                let sets = (&mut sets[..], None);
                clear::ended(s, sets, flows.as_deref_mut(), rep.as_deref_mut(), log, ids);
            },
        );
        self.early_cursor = next.unwrap_or(0);
        if found.get() {
            tally.add(WorkerCounter::SessionsDeleted, 1);
            tally.add(WorkerCounter::SessionsEarlyDropped, 1);
        }
        found.get()
    }

    /// An ICMP error belongs to the session of the datagram it quotes; the
    /// quote travelled the other way, so its reverse is a key of that
    /// session. NAT rewrites both the outer header and the quote.
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        ip: &Ip,
        l4: &L4,
        inner: usize,
        (origin, handed): (Origin, bool),
    ) -> Verdict {
        let end = ip.l3() + ip.datagram_len();
        let quoted = match ip {
            Ip::V4 { .. } => match wire::quoted_v4(frame, inner, end) {
                Ok(q) => FlowKey::v4(q.src, q.dst, q.sport, q.dport, q.proto),
                Err(e) => return Verdict::Drop(e.into()),
            },
            Ip::V6 { .. } => match wire::quoted_v6(frame, inner, end) {
                Ok(q) => FlowKey {
                    src: q.src,
                    dst: q.dst,
                    sport: q.sport,
                    dport: q.dport,
                    proto: q.proto,
                },
                Err(e) => return Verdict::Drop(e.into()),
            },
        };
        let key = quoted.reversed();
        let owner = self.owner(&key, origin);
        if owner != self.worker && !handed {
            return Verdict::Handoff(owner);
        }
        let Some((slot, side)) = self.table.lookup(&key) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let s = *self.table.get(slot);
        if let Some(w) = s.stub_for() {
            return Verdict::Handoff(w);
        }
        if s.action() != SessionAction::Forward {
            return Verdict::Drop(DropReason::Policy);
        }
        if s.nat().is_none() {
            return Verdict::Pass { snat: None };
        }
        let (which, (a, p)) = match s.source_nat(side) {
            // From the inside host, about a packet it got: as if from
            // where that packet was sent to.
            Some(to) => (Rewrite::Source, to),
            // From the outside, about a translated packet: back to the host.
            None => (
                Rewrite::Destination,
                s.inside_endpoint().expect("NAT sessions are IPv4"),
            ),
        };
        if !wire::rewrite_icmp_error_v4(frame, ip.l3(), ip.datagram_len(), l4, which, a, p) {
            return Verdict::Drop(DropReason::BadHeader);
        }
        if s.is_hairpin() && which == Rewrite::Source {
            // From one inside host about the other's packet: now from the
            // outside address, it goes in again to the other.
            return Verdict::Hairpin { snat: None };
        }
        Verdict::Pass { snat: None }
    }

    /// Ages the table to `now`; returns how many sessions expired. The
    /// peer hears of each expiry, and of each busy session whose deadline
    /// moved on (a refresh keeps its copy alive).
    pub fn expire(&mut self, now: u32, tally: &mut Tally) -> usize {
        self.expire_some(now, usize::MAX, tally).0
    }

    /// [`Self::expire`] in a step of at most `budget` sessions: how many
    /// expired, and whether the table has reached `now` (if not, the
    /// worker calls again before it sleeps).
    pub fn expire_some(&mut self, now: u32, budget: usize, tally: &mut Tally) -> (usize, bool) {
        for pool in self.sets.iter_mut().filter_map(|s| s.nat.as_mut()) {
            pool.tick(now);
        }
        let mut n = 0;
        let (sets, releases) = (&mut self.sets, &mut self.releases);
        let (mut rep, worker, place) = (self.sync.as_mut(), self.worker, self.placement);
        let mut events = self.events.as_mut();
        // Read by both closures below, one at a time.
        let now_ns = self.flows.as_ref().map_or(0, |f| f.now_ns());
        let flows = std::cell::RefCell::new(self.flows.as_deref_mut());
        let taken = std::cell::Cell::new(0u64);
        let refresh = |s: &mut Session| {
            if let Some(f) = flows.borrow_mut().as_deref_mut()
                && let Some(fwd) = offload::forwarded(f, s)
            {
                s.last_seen = s.last_seen.max(offload::last_seen(&fwd, now, now_ns));
            }
        };
        let done = self
            .table
            .advance_with(now, budget, refresh, |aged, s| match aged {
                Aged::Expired => {
                    n += 1;
                    let flows = &mut *flows.borrow_mut();
                    let ids = (worker, place);
                    let log = events.as_deref_mut().map(|e| (e, EventKind::Expired));
                    let sets = (&mut sets[..], Some(&mut *releases));
                    if clear::ended(s, sets, flows.as_deref_mut(), rep.as_deref_mut(), log, ids) {
                        taken.set(taken.get() + 1);
                    }
                }
                Aged::Extended if s.remote != 0 => {}
                Aged::Extended => {
                    if sync::emit(rep.as_deref_mut(), worker, s.key.proto, || {
                        ToSync::Refresh(refresh_record(s, now))
                    }) && let Some(r) = rep.as_deref_mut()
                    {
                        r.mark(s);
                    }
                }
            });
        self.releases.flush(&mut self.sets);
        self.drain_blocks();
        tally.add(WorkerCounter::SessionsDeleted, n as u64);
        tally.add(WorkerCounter::OffloadsRemoved, taken.get());
        (n, done)
    }
}

/// Counts a flow the NAT could not map, by why.
fn count_refusal(tally: &mut Tally, why: Refusal) {
    tally.add(WorkerCounter::NatAllocFailures, 1);
    tally.add(
        match why {
            Refusal::PoolExhausted => WorkerCounter::NatPoolExhausted,
            Refusal::SubscriberPorts => WorkerCounter::NatSubscriberPorts,
            Refusal::SubscriberSessions => WorkerCounter::NatSubscriberSessions,
            Refusal::SubscriberRate => WorkerCounter::NatSubscriberRate,
        },
        1,
    );
}

/// Slots an early drop searches for a session to end.
const EARLY_DROP_SLOTS: usize = 64;

/// Whether a packet of `kind` may open a session: a TCP SYN without ACK,
/// an echo request, anything else but TCP and echo replies.
fn opens(kind: Kind) -> bool {
    match kind {
        Kind::Tcp { flags } => flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        Kind::Echo { request } => request,
        _ => true,
    }
}

/// The inside endpoint of a translated session's mapping (an echo's
/// identifier is its port).
fn mapping_endpoint(s: &Session) -> u64 {
    let (a, port) = s.inside_endpoint().unwrap_or_default();
    nat::endpoint(a, port, s.key.proto)
}

/// A session that held a NAT binding ended: its mapping loses a user
/// (see [`PortPool::unbind`]).
fn release(sets: &mut [Set], s: &Session) {
    if s.remote == 0
        && let Some(b) = binding(s)
        && let Some(pool) = sets
            .get_mut(usize::from(s.service_set))
            .and_then(|x| x.nat.as_mut())
    {
        unbind(pool, &b, false);
    }
}

/// Returns the NAT binding just made for `s`, which was then refused.
fn unalloc(sets: &mut [Set], s: &Session) {
    if let Some(b) = binding(s)
        && let Some(pool) = sets
            .get_mut(usize::from(s.service_set))
            .and_then(|x| x.nat.as_mut())
    {
        unbind(pool, &b, true);
    }
}

/// The key of a datagram as it arrived.
pub fn flow_key(frame: &[u8], ip: &Ip, l4: &L4) -> FlowKey {
    let (src, dst) = ip.addresses(frame);
    FlowKey {
        src,
        dst,
        sport: l4.sport,
        dport: l4.dport,
        proto: l4.proto,
    }
}

#[cfg(test)]
mod tests;

//! A forwarding worker: one pinned thread, its UMEM, its AF_XDP sockets.
//!
//! Design: the worker's sockets share one UMEM, so a frame received on one
//! interface is transmitted on another without a copy. Frames circulate
//! rx -> tx -> completion -> free pool -> fill ring; the pool is a plain
//! stack owned by the thread. Per iteration: reap completions, refill fill
//! rings, receive a batch per socket, take frames other workers handed over,
//! decide each frame (parse, services, route), transmit per egress socket
//! with one wakeup, publish counters. When every rx ring and its handoff
//! queue are empty the worker sleeps in poll(); it never spins on a shared
//! core.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::{
    counters::{IfaceCounter, Tally, WorkerCounter, WorkerGauge, WorkerStats},
    fib::{Fib, FibReader},
    forward::{self, Action, DropReason, Limits},
    handoff::{Handoff, Outbox},
    listing::Walk,
    offload::Egress,
    service::{Services, Verdict},
    session::Side,
    sys::{Poller, PuntSocket},
    wire::{self, ETH_HLEN, PROTO_TCP},
};

/// One AF_XDP socket of a worker: an (interface, queue) pair.
pub struct Port {
    /// Interface slot (index into the daemon's interface list).
    pub slot: usize,
    pub ifindex: u32,
    pub queue: u32,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fq: FillQueue,
    pub cq: CompQueue,
}

impl Port {
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// Everything a worker thread owns.
pub struct Worker {
    pub id: usize,
    pub umem: Umem,
    pub ports: Vec<Port>,
    /// Free frames not on any ring.
    pub free: Vec<FrameDesc>,
    pub batch: usize,
    pub fib: FibReader,
    pub limits: Limits,
    pub punt: PuntSocket,
    pub stats: WorkerStats,
    pub stop: Arc<AtomicBool>,
    /// ifindex of each interface slot.
    pub slot_ifindex: Vec<u32>,
    /// Sessions and services; `None` when no service set is configured.
    pub services: Option<Services>,
    pub handoff: Arc<Handoff>,
    /// The batches this worker is filling for other workers.
    pub outbox: Outbox,
    pub workers: usize,
    /// Time zero of the session clock (seconds), shared by all workers.
    pub epoch: Instant,
    /// A session listing in progress.
    pub walk: Option<Walk>,
    /// The node's role, shared with the ha thread.
    pub shared: Arc<crate::ha::Shared>,
    /// The `shared.role` this worker last acted on.
    pub role: u64,
    /// The next slot of a pass over the table after a role change.
    pub rewalk: Option<u32>,
}

/// Where a decided frame goes: transmit on an interface slot, or back to
/// the free pool.
enum Out {
    Tx(usize),
    Free,
}

/// Frames the kernel transmits per sendto() in copy mode.
const COPY_TX_BATCH: usize = 32;

/// How long an idle worker sleeps in poll() before re-checking `stop`.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Sessions aged per loop at most, so that a second in which many expire
/// is spread over loops instead of stopping the rings (a few
/// microseconds per loop).
const AGING_STEP: usize = 256;
/// How long an otherwise idle worker waits between listing steps.
const WALK_POLL: Duration = Duration::from_millis(1);

impl Worker {
    /// Puts `per_port` frames on every fill ring. Call before the XDP program
    /// is attached so no frame arrives to an empty ring.
    pub fn prime(&mut self, per_port: usize) {
        for p in &mut self.ports {
            let n = per_port.min(self.free.len());
            let at = self.free.len() - n;
            // SAFETY: the frames come from this worker's UMEM and are on no
            // other ring.
            let done = unsafe { p.fq.produce(&self.free[at..]) };
            self.free.truncate(self.free.len() - done);
        }
    }

    /// Runs until `stop` is set; returns the worker for its exit report.
    #[must_use]
    pub fn run(mut self) -> Self {
        let mut tally = Tally::new(self.workers);
        let mut rx = vec![FrameDesc::default(); self.batch];
        let mut comp = vec![FrameDesc::default(); self.batch * 2];
        let slots = self.slot_ifindex.len();
        // Frames waiting for tx, per egress interface slot.
        let mut pending: Vec<Vec<FrameDesc>> = (0..slots)
            .map(|_| Vec::with_capacity(self.batch * (self.ports.len() + 2)))
            .collect();
        // The port each slot transmits on: the first this worker has there.
        let egress: Vec<usize> = (0..slots)
            .map(|s| self.ports.iter().position(|p| p.slot == s).unwrap_or(0))
            .collect();
        let mut fds: Vec<RawFd> = self.ports.iter().map(Port::fd).collect();
        fds.push(self.handoff.wake_fd(self.id));
        let mut poller = Poller::new(&fds);
        let mut second = self.now();
        let (mut created_before, mut deleted_before) = (0, 0);
        // The table's aging has not reached `now` yet: a step per loop.
        let mut aging = false;

        while !self.stop.load(Ordering::Relaxed) {
            tally.add(WorkerCounter::Loops, 1);
            let now = self.now();
            if let Some(svc) = self.services.as_ref() {
                svc.advance_clock();
            }
            if (now != second || aging)
                && let Some(svc) = self.services.as_mut()
            {
                aging = !svc.expire_some(now, AGING_STEP, &mut tally).1;
            }
            if now != second {
                second = now;
                if let Some(svc) = self.services.as_mut() {
                    let created = tally.get(WorkerCounter::SessionsCreated);
                    let deleted = tally.get(WorkerCounter::SessionsDeleted);
                    tally.set(WorkerGauge::SessionsActive, svc.table.len() as u64);
                    tally.set(WorkerGauge::CreatedPerSecond, created - created_before);
                    tally.set(WorkerGauge::DeletedPerSecond, deleted - deleted_before);
                    (created_before, deleted_before) = (created, deleted);
                }
            }
            self.fib.refresh();
            self.reap_completions(&mut comp);
            self.refill(&mut tally);

            let mut received = 0;
            for pi in 0..self.ports.len() {
                // SAFETY: rx only hands out frames of this worker's UMEM.
                let n = unsafe { self.ports[pi].rx.consume(&mut rx) };
                if n == 0 {
                    continue;
                }
                received += n;
                let slot = self.ports[pi].slot;
                let ingress = self.ports[pi].ifindex;
                if let Some(svc) = self.services.as_ref() {
                    // Two passes of hints before the work: the frames'
                    // headers, then the index entries their lookups read.
                    for desc in &rx[..n] {
                        // SAFETY: the frame was just consumed from rx: it is
                        // this worker's alone.
                        let data = unsafe { self.umem.data(desc) };
                        crate::hint::prefetch(data.contents().as_ptr());
                    }
                    for desc in &rx[..n] {
                        // SAFETY: as above.
                        svc.prefetch(unsafe { self.umem.data(desc) }.contents());
                    }
                }
                for desc in &mut rx[..n] {
                    let rx_len = desc.lengths().data();
                    tally.iface(slot, IfaceCounter::RxPackets, 1);
                    tally.iface(slot, IfaceCounter::RxBytes, rx_len as u64);
                    tally.add(WorkerCounter::RxBytes, rx_len as u64);
                    match self.decide(desc, rx_len, slot, ingress, now, &mut tally) {
                        Out::Tx(s) => pending[s].push(*desc),
                        Out::Free => self.free.push(*desc),
                    }
                }
            }
            if received > 0 {
                tally.add(WorkerCounter::RxPackets, received as u64);
                tally.add(WorkerCounter::RxBatches, 1);
            }

            let mut handed = 0;
            while handed < self.batch {
                let Some(batch) = self.handoff.recv(self.id) else {
                    break;
                };
                handed += batch.len();
                tally.add(WorkerCounter::HandoffsReceived, batch.len() as u64);
                if let Some(svc) = self.services.as_ref() {
                    for (_, frame) in batch.frames() {
                        crate::hint::prefetch(frame.as_ptr());
                    }
                    for (_, frame) in batch.frames() {
                        svc.prefetch(frame);
                    }
                }
                for (parcel, frame) in batch.frames() {
                    let Some(mut desc) = self.free.pop() else {
                        tally.drop(parcel.slot, DropReason::HandoffFull);
                        continue;
                    };
                    {
                        // SAFETY: the frame came from the free pool: no ring
                        // and no other reference holds it.
                        let mut data = unsafe { self.umem.data_mut(&mut desc) };
                        data.cursor().set_pos(usize::MAX);
                        data.contents_mut()[..frame.len()].copy_from_slice(frame);
                    }
                    match self.decide(
                        &mut desc,
                        frame.len(),
                        parcel.slot,
                        parcel.ingress,
                        now,
                        &mut tally,
                    ) {
                        Out::Tx(s) => pending[s].push(desc),
                        Out::Free => self.free.push(desc),
                    }
                }
                self.handoff.recycle(self.id, batch);
            }
            self.handoff.flush(&mut self.outbox);

            if self.walk.is_none() {
                self.walk = self
                    .handoff
                    .take_job(self.id)
                    .map(|j| Walk::new(j, self.id));
            }
            if let Some(w) = self.walk.as_mut() {
                let finished = match self.services.as_mut() {
                    Some(svc) => {
                        let (table, mut flows) = svc.listing_view();
                        let now_ns = crate::offload::monotonic_ns();
                        w.step(Some(table), |s| {
                            if let Some(f) = flows.as_deref_mut() {
                                crate::offload::add_forwarded(f, s, now, now_ns);
                            }
                        })
                    }
                    None => w.step(None, |_| {}),
                };
                if finished {
                    self.walk = None;
                }
            }
            self.follow_role(&mut tally);
            let (sync_ready, syncing) = match self.services.as_mut() {
                Some(svc) => {
                    svc.sync_step(now);
                    (svc.sync_ready(), svc.sync_walking())
                }
                None => (false, false),
            };

            if received > 0 || handed > 0 {
                for (s, frames) in pending.iter_mut().enumerate() {
                    if !frames.is_empty() {
                        self.transmit(egress[s], frames, &mut tally);
                    }
                }
                self.stats.publish(&tally);
            } else if sync_ready {
                // The peer's records wait: apply the next batch at once.
                self.stats.publish(&tally);
            } else {
                tally.add(WorkerCounter::IdlePolls, 1);
                self.stats.publish(&tally);
                // Frames held for an owner that was behind go now.
                self.handoff.flush_all(&mut self.outbox);
                if self.rewalk.is_some() || aging {
                    // A pass after a role change, or aging behind: go on
                    // at once.
                } else if self.walk.is_some() || syncing {
                    // A listing waits on its reader, a cold-sync walk on
                    // room in its ring: nap, don't spin.
                    poller.wait(WALK_POLL);
                } else if self.handoff.prepare_sleep(self.id) {
                    poller.wait(IDLE_POLL);
                    self.handoff.awake(self.id);
                }
            }
        }
        // Return frames still in completion rings so accounting stays whole.
        self.reap_completions(&mut comp);
        self.stats.publish(&tally);
        self
    }

    /// After the node's role changed, one bounded step of a pass over the
    /// table: offloads are taken back, and on a node that now forwards
    /// every established session is offloaded, so that the fast path
    /// carries a new MASTER's synced sessions from their first packet.
    fn follow_role(&mut self, tally: &mut Tally) {
        let role = self.shared.role.load(Ordering::Acquire);
        if role != self.role {
            self.role = role;
            self.rewalk = Some(0);
        }
        let (Some(from), Some(svc)) = (self.rewalk, self.services.as_mut()) else {
            self.rewalk = None;
            return;
        };
        let fib = self.fib.fib();
        let slots = &self.slot_ifindex;
        self.rewalk = svc.reoffload_step(
            from,
            role & 1 == 1,
            |dst| {
                let hop = lookup(fib, dst)?;
                egress(fib, slots, hop.oif, hop.dst_mac, hop.src_mac)
            },
            tally,
        );
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Decides one frame of `rx_len` bytes that arrived on interface
    /// `slot` (`ingress`): parse, services, route, rewrite. The frame is
    /// ready to transmit when this returns `Out::Tx`.
    fn decide(
        &mut self,
        desc: &mut FrameDesc,
        rx_len: usize,
        slot: usize,
        ingress: u32,
        now: u32,
        tally: &mut Tally,
    ) -> Out {
        let action = {
            // SAFETY: the frame is this worker's alone: just consumed from
            // rx, or taken from the free pool.
            let mut data = unsafe { self.umem.data_mut(desc) };
            data.cursor().set_pos(usize::MAX);
            let buf = data.contents_mut();
            let fib = self.fib.fib();
            let action = match forward::prepare(buf, rx_len) {
                Err(r) => Action::Drop(r),
                Ok(ip) => {
                    let verdict = match self.services.as_mut() {
                        Some(svc) => svc.process(buf, &ip, ingress, now, tally),
                        None => Verdict::Pass { snat: None },
                    };
                    match verdict {
                        Verdict::Pass { snat } => {
                            let ip = ip.redirected(buf);
                            let a = forward::route(buf, ip, ingress, fib, &mut self.limits);
                            if let (Some(snat), Action::Forward { .. } | Action::Punt { .. }) =
                                (snat, a)
                            {
                                snat.apply(buf, ETH_HLEN);
                            }
                            if let Action::Forward { oif, .. } = a
                                && let Some(svc) = self.services.as_mut()
                                && let Some((s, side)) = svc.take_offer()
                            {
                                offer(svc, s, side, oif, buf, fib, &self.slot_ifindex, tally);
                            }
                            a
                        }
                        Verdict::Handoff(to) => {
                            let n = ETH_HLEN + ip.datagram_len();
                            if self
                                .handoff
                                .send(&mut self.outbox, to, slot, ingress, &buf[..n])
                            {
                                tally.handoff(to);
                            } else {
                                tally.drop(slot, DropReason::HandoffFull);
                            }
                            return Out::Free;
                        }
                        Verdict::Reject(l4) => {
                            if !self.limits.reject.allow() {
                                Action::Drop(DropReason::Policy)
                            } else if l4.proto == PROTO_TCP {
                                match wire::tcp_reset(buf, &ip, &l4) {
                                    Some(rst) => as_reply(forward::route(
                                        buf,
                                        rst,
                                        ingress,
                                        fib,
                                        &mut self.limits,
                                    )),
                                    None => Action::Drop(DropReason::Policy),
                                }
                            } else {
                                as_reply(forward::reject_icmp(
                                    buf,
                                    ip,
                                    ingress,
                                    fib,
                                    &mut self.limits,
                                ))
                            }
                        }
                        Verdict::Drop(r) => Action::Drop(r),
                    }
                }
            };
            match action {
                Action::Punt { l3, len, v6 } => {
                    punt(&self.punt, &buf[l3..l3 + len], v6, tally);
                }
                Action::PuntIcmpError { len, v6, .. } | Action::PuntReply { len, v6, .. } => {
                    punt(&self.punt, &buf[ETH_HLEN..len], v6, tally);
                }
                _ => {}
            }
            action
        };
        let out = match action {
            Action::Forward { oif, len } => Some((oif, len)),
            Action::IcmpError { oif, len, reason } => {
                tally.drop(slot, reason);
                tally.add(WorkerCounter::IcmpErrorsSent, 1);
                Some((oif, len))
            }
            Action::Reply { oif, len, reason } => {
                tally.drop(slot, reason);
                tally.add(WorkerCounter::RejectsSent, 1);
                Some((oif, len))
            }
            Action::PuntIcmpError { reason, .. } => {
                tally.drop(slot, reason);
                tally.add(WorkerCounter::IcmpErrorsSent, 1);
                None
            }
            Action::PuntReply { reason, .. } => {
                tally.drop(slot, reason);
                tally.add(WorkerCounter::RejectsSent, 1);
                None
            }
            Action::IcmpSuppressed { reason } => {
                tally.drop(slot, reason);
                tally.add(WorkerCounter::IcmpErrorsSuppressed, 1);
                None
            }
            Action::Punt { .. } => None,
            Action::Drop(r) => {
                tally.drop(slot, r);
                None
            }
        };
        let Some((oif, len)) = out else {
            return Out::Free;
        };
        let Some(s) = self.slot_ifindex.iter().position(|i| *i == oif) else {
            tally.drop(slot, DropReason::ForeignEgress);
            return Out::Free;
        };
        if matches!(action, Action::Forward { .. }) {
            tally.add(WorkerCounter::Forwarded, 1);
        }
        // SAFETY: as above; sets the length to transmit.
        unsafe { self.umem.data_mut(desc) }.cursor().set_pos(len);
        Out::Tx(s)
    }

    fn reap_completions(&mut self, comp: &mut [FrameDesc]) {
        for p in &mut self.ports {
            loop {
                // SAFETY: completions return frames this worker transmitted.
                let n = unsafe { p.cq.consume(comp) };
                self.free.extend_from_slice(&comp[..n]);
                if n < comp.len() {
                    break;
                }
            }
        }
    }

    fn refill(&mut self, tally: &mut Tally) {
        for p in &mut self.ports {
            // nb_free may report the whole ring; top up one batch at a time.
            let want = (p.fq.nb_free(self.batch as u32) as usize).min(self.batch);
            if want == 0 {
                continue;
            }
            let n = want.min(self.free.len());
            if n < want {
                tally.add(WorkerCounter::FillShort, 1);
            }
            if n == 0 {
                continue;
            }
            let at = self.free.len() - n;
            // SAFETY: frames from the free pool are on no ring.
            let done = unsafe { p.fq.produce(&self.free[at..]) };
            self.free.truncate(self.free.len() - done);
        }
    }

    fn transmit(&mut self, port: usize, frames: &mut Vec<FrameDesc>, tally: &mut Tally) {
        let p = &mut self.ports[port];
        let room = p.tx.nb_free(frames.len() as u32) as usize;
        let n = room.min(frames.len());
        let sent = if n > 0 {
            // SAFETY: the frames belong to this UMEM and are on no ring.
            unsafe { p.tx.produce(&frames[..n]) }
        } else {
            0
        };
        let mut bytes = 0u64;
        for d in &frames[..sent] {
            bytes += d.lengths().data() as u64;
        }
        tally.add(WorkerCounter::TxPackets, sent as u64);
        tally.add(WorkerCounter::TxBytes, bytes);
        tally.iface(p.slot, IfaceCounter::TxPackets, sent as u64);
        tally.iface(p.slot, IfaceCounter::TxBytes, bytes);
        for d in &frames[sent..] {
            tally.drop(p.slot, DropReason::TxRingFull);
            self.free.push(*d);
        }
        frames.clear();
        if sent > 0 && p.tx.needs_wakeup() {
            // Copy mode sends at most 32 frames per wakeup (the kernel's
            // TX_BATCH_SIZE): kick once per 32 so nothing waits a lap.
            for _ in 0..sent.div_ceil(COPY_TX_BATCH) {
                tally.add(WorkerCounter::TxWakeups, 1);
                if let Err(e) = p.tx.wakeup() {
                    tracing::debug!(worker = self.id, error = %e, "tx wakeup failed");
                    break;
                }
            }
        }
    }
}

/// Offloads the session in `slot` that the packet from `side`, just routed
/// out of `oif` in `frame`, found established: its direction leaves as
/// this packet does, the other by the route back to this packet's sender.
/// An unresolved route back waits for a later packet.
#[expect(clippy::too_many_arguments, reason = "the worker's state, passed flat")]
fn offer(
    svc: &mut Services,
    slot: u32,
    side: Side,
    oif: u32,
    frame: &[u8],
    fib: &Fib,
    slots: &[u32],
    tally: &mut Tally,
) {
    let mac = |at: usize| -> [u8; 6] { frame[at..at + 6].try_into().expect("6 bytes") };
    let Some(this) = egress(fib, slots, oif, mac(0), mac(6)) else {
        return;
    };
    let s = svc.session(slot);
    let back = match side {
        Side::Initiator => s.key.src_ip(),
        Side::Responder => s.key.dst_ip(),
    };
    let Some(hop) = lookup(fib, back) else {
        return;
    };
    if let Some(other) = egress(fib, slots, hop.oif, hop.dst_mac, hop.src_mac) {
        svc.offload(slot, side, this, other, tally);
    }
}

/// The resolved next hop toward `dst`, either family.
fn lookup(fib: &Fib, dst: IpAddr) -> Option<crate::fib::NextHop> {
    match dst {
        IpAddr::V4(a) => fib.lookup4(a),
        IpAddr::V6(a) => fib.lookup6(a),
    }
    .ok()
}

/// How the fast path sends out of `oif` (an interface this node owns).
fn egress(
    fib: &Fib,
    slots: &[u32],
    oif: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Option<Egress> {
    Some(Egress {
        slot: u32::try_from(slots.iter().position(|i| *i == oif)?).ok()?,
        dst_mac,
        src_mac,
        mtu: u16::try_from(fib.link(oif)?.mtu).unwrap_or(u16::MAX),
    })
}

/// A routed reject (reset or unreachable) becomes a reply, transmitted or
/// punted to the kernel to resolve its next hop; one that could not be
/// routed leaves the original dropped for policy.
fn as_reply(a: Action) -> Action {
    let reason = DropReason::Policy;
    match a {
        Action::Forward { oif, len } | Action::IcmpError { oif, len, .. } => {
            Action::Reply { oif, len, reason }
        }
        // The reply was built at ETH_HLEN, so l3 + len is where it ends.
        Action::Punt { l3, len, v6 } => Action::PuntReply {
            len: l3 + len,
            v6,
            reason,
        },
        Action::PuntIcmpError { len, v6, .. } => Action::PuntReply { len, v6, reason },
        _ => Action::Drop(reason),
    }
}

fn punt(sock: &PuntSocket, datagram: &[u8], v6: bool, tally: &mut Tally) {
    let r = if v6 {
        let mut d = [0u8; 16];
        d.copy_from_slice(&datagram[24..40]);
        sock.send_v6(datagram, Ipv6Addr::from(d))
    } else {
        sock.send_v4(
            datagram,
            Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]),
        )
    };
    match r {
        Ok(()) => tally.add(WorkerCounter::Punted, 1),
        Err(_) => tally.add(WorkerCounter::PuntErrors, 1),
    }
}

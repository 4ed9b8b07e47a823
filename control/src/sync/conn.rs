//! One sync connection, as a pure state machine.
//!
//! The driver hands in what the socket read (`recv`), the session events
//! of the data path (`add`, `delete`, `refresh`, `cold_sync_complete`) and
//! the time (`on_timeout` when `timeout` passes); it takes out the bytes
//! to write (`output`, `consumed`) and the events to act on (`poll_event`).
//! Any protocol violation ends the connection with a `Fatal`, counted;
//! the driver closes the socket and dials again, and the cold sync of the
//! next connection repairs whatever was lost.
//!
//! Both sides send a hello first. The backup then asks for a cold sync
//! (sync-start); the active streams every session and marks the end
//! (cold-sync-complete). Live adds, deletes and refreshes flow from the
//! active from the moment the hellos are exchanged, in the order the data
//! path produced them, batched up to `flush_bytes` or `flush_delay`. The
//! backup acknowledges cumulatively and nacks single records it refuses.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{
    Event, Fatal, Role, Settings, Stats, SyncState,
    auth::Keys,
    lag::Lag,
    wire::{
        self, CAP_AUTH, CAP_CONTRACT, CAP_DIGEST, CAP_STATIC_NAT, DecodeError, DeleteRecord,
        Digest, Header, Hello, Kind, Message, NackReason, Op, REC_DNAT, REC_STATIC, RefreshRecord,
        SessionRecord, WireKey,
    },
};

struct Open {
    kind: Kind,
    body: Vec<u8>,
    count: u32,
    deadline: Instant,
    /// When its first record came.
    opened: Instant,
}

/// A batch waiting for its acknowledgement.
struct Pending {
    seq: u64,
    kind: Kind,
    count: u32,
    /// Records of it the peer nacked.
    refused: u32,
    opened: Instant,
}

pub struct Conn {
    s: Settings,
    dialed: bool,
    nonce: [u8; 16],
    keys: Option<Keys>,
    peer: Option<Hello>,
    sync: SyncState,
    /// (Active) the backup asked for its cold sync on this connection.
    cold_requested: bool,
    /// A resync on this Hot connection is under way: (active) walking
    /// again, (backup) asked for and not yet complete.
    resync: bool,
    tx_seq: u64,
    rx_seq: u64,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Bytes at the front of `out` the socket has taken: they go when
    /// they are half of it (a write that takes part of a large backlog
    /// does not move the rest).
    out_taken: usize,
    open: Option<Open>,
    pending: VecDeque<Pending>,
    ack_due: u64,
    ack_sent: u64,
    events: VecDeque<Event>,
    last_rx: Instant,
    last_tx: Instant,
    /// (Active) batched-to-acknowledged times of the records.
    lag: Lag,
}

impl Conn {
    /// A connection just established: `dialed` when this node connected
    /// to the peer; `nonce` fresh randomness. Queues the hello.
    pub fn new(
        settings: Settings,
        dialed: bool,
        nonce: [u8; 16],
        now: Instant,
        stats: &mut Stats,
    ) -> Self {
        stats.connection_establish += 1;
        let keys = settings
            .key
            .as_deref()
            .map(|k| Keys::accepting(k, &settings.accept_keys));
        let mut c = Self {
            s: settings,
            dialed,
            nonce,
            keys,
            peer: None,
            sync: SyncState::Off,
            cold_requested: false,
            resync: false,
            tx_seq: 0,
            rx_seq: 0,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_taken: 0,
            open: None,
            pending: VecDeque::new(),
            ack_due: 0,
            ack_sent: 0,
            events: VecDeque::new(),
            last_rx: now,
            last_tx: now,
            lag: Lag::default(),
        };
        let hello = Hello {
            node_id: c.s.node_id,
            group_id: c.s.group_id,
            workers: c.s.workers,
            role: c.s.role.wire(),
            capabilities: c.s.capabilities | if c.keys.is_some() { CAP_AUTH } else { 0 },
            services_hash: c.s.services_hash,
            nonce,
        };
        c.send(&Message::Hello(hello), now, stats);
        c
    }

    pub fn sync_state(&self) -> SyncState {
        self.sync
    }

    /// The peer's hello, once accepted.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// Whether hellos were exchanged: sessions can flow.
    /// Up, and the peer has sent a frame after its hello: with a key, one
    /// tagged with this connection's derived key, which a replayed hello
    /// cannot produce.
    pub fn is_proven(&self) -> bool {
        self.is_up() && self.rx_seq >= 2
    }

    pub fn is_up(&self) -> bool {
        self.peer.is_some()
    }

    /// Whether the peer sends digests and answers resyncs (and this
    /// node offers it too).
    pub fn peer_has_digest(&self) -> bool {
        self.both(CAP_DIGEST)
    }

    fn both(&self, cap: u32) -> bool {
        self.s.capabilities & cap != 0 && self.peer.is_some_and(|h| h.capabilities & cap != 0)
    }

    /// A resync is under way on this connection.
    pub fn resyncing(&self) -> bool {
        self.resync
    }

    /// Session adds sent but not yet acknowledged, or not yet sent.
    pub fn add_pending(&self) -> u64 {
        let queued = self
            .pending
            .iter()
            .filter(|p| p.kind == Kind::Add)
            .map(|p| u64::from(p.count))
            .sum::<u64>();
        queued
            + self
                .open
                .as_ref()
                .filter(|o| o.kind == Kind::Add)
                .map_or(0, |o| u64::from(o.count))
    }

    /// (Active) replication lag: records' batched-to-acknowledged times.
    pub fn lag(&self) -> &Lag {
        &self.lag
    }

    /// (Active) how long the oldest batch not yet acknowledged (or the
    /// open one) has waited; zero when nothing waits.
    pub fn oldest_unacked(&self, now: Instant) -> Duration {
        self.pending
            .front()
            .map(|p| p.opened)
            .or(self.open.as_ref().map(|o| o.opened))
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Bytes received that do not yet make a whole frame.
    pub fn partial_input(&self) -> usize {
        self.inbuf.len()
    }

    /// Bytes for the socket.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_taken..]
    }

    /// The socket took `n` bytes of `output`.
    pub fn consumed(&mut self, n: usize) {
        self.out_taken = (self.out_taken + n).min(self.out.len());
        if self.out_taken == self.out.len() {
            self.out.clear();
            self.out_taken = 0;
        } else if self.out_taken >= self.out.len() / 2 {
            // Moves no more bytes than it frees: the cost is linear in
            // what is written, however large the backlog.
            self.out.drain(..self.out_taken);
            self.out_taken = 0;
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The connection ends (socket closed or `Fatal`): counts the teardown
    /// and the batches that never got their acknowledgement.
    pub fn close(self, stats: &mut Stats) {
        stats.connection_teardown += 1;
        let unsent = self.open.as_ref().is_some_and(|o| o.count > 0);
        stats.batch_commit_failures += self.pending.len() as u64 + u64::from(unsent);
    }

    /// When `on_timeout` is next due.
    pub fn timeout(&self) -> Instant {
        let mut t = self.last_rx + self.dead_after();
        if self.is_up() {
            // Keepalives only flow once the hellos are exchanged.
            t = t.min(self.last_tx + self.s.keepalive);
        }
        if let Some(o) = &self.open {
            t = t.min(o.deadline);
        }
        t
    }

    fn dead_after(&self) -> Duration {
        self.s.keepalive * self.s.dead_after
    }

    /// Sends a due batch and keepalive; ends a silent connection.
    pub fn on_timeout(&mut self, now: Instant, stats: &mut Stats) -> Result<(), Fatal> {
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.dead_after() {
            return Err(Fatal::PeerDead(silent));
        }
        if self.open.as_ref().is_some_and(|o| now >= o.deadline) {
            self.seal(now, stats);
        }
        // Not before the hellos: a frame sent then would carry the hello
        // key, which the peer stops accepting once it has both nonces.
        if self.is_up() && now.saturating_duration_since(self.last_tx) >= self.s.keepalive {
            self.send(&Message::Keepalive, now, stats);
        }
        Ok(())
    }

    /// Takes bytes the socket read.
    pub fn recv(&mut self, data: &[u8], now: Instant, stats: &mut Stats) -> Result<(), Fatal> {
        stats.bytes_received += data.len() as u64;
        self.inbuf.extend_from_slice(data);
        // Frames are read in place; the buffer is lent out meanwhile.
        let mut buf = std::mem::take(&mut self.inbuf);
        let mut at = 0;
        let result = loop {
            let f = match wire::frame(&buf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => {
                    count_decode(e, stats);
                    break Err(Fatal::Decode(e));
                }
            };
            let r = self.frame(&buf[at..at + f.total], &f, now, stats);
            at += f.total;
            if let Err(e) = r {
                break Err(e);
            }
        };
        buf.drain(..at);
        self.inbuf = buf;
        if result.is_ok() && self.ack_due > self.ack_sent {
            self.ack_sent = self.ack_due;
            self.send(&Message::Ack { seq: self.ack_due }, now, stats);
        }
        result
    }

    fn frame(
        &mut self,
        bytes: &[u8],
        f: &wire::Frame,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(), Fatal> {
        let h = f.header;
        let authentic = match (&mut self.keys, &f.tag) {
            (Some(k), Some(tag)) => k.verify(&bytes[f.signed.clone()], &bytes[tag.clone()]),
            (None, None) => true,
            _ => false,
        };
        if !authentic {
            stats.auth_failures += 1;
            return Err(Fatal::Auth);
        }
        // After the tag: a forged frame counts as an authentication failure.
        if h.seq != self.rx_seq + 1 {
            stats.replays += 1;
            return Err(Fatal::Sequence {
                expected: self.rx_seq + 1,
                got: h.seq,
            });
        }
        if self.peer.is_none() != (h.kind == Kind::Hello) {
            stats.invalid_kind += 1;
            return Err(Fatal::Unexpected(h.kind));
        }
        let msg = Message::decode(h.kind, &bytes[f.body.clone()]).map_err(|e| {
            count_decode(e, stats);
            Fatal::Decode(e)
        })?;
        self.rx_seq = h.seq;
        self.last_rx = now;
        stats.messages_received += 1;
        let backup = self.s.role == Role::Backup;
        match msg {
            Message::Hello(hello) => self.hello(hello, now, stats)?,
            Message::SyncStart
                if !backup && self.sync == SyncState::Cold && !self.cold_requested =>
            {
                self.cold_requested = true;
                stats.sync_start_received += 1;
                self.sync = SyncState::Cold;
                self.events.push_back(Event::ColdSyncRequested);
            }
            // A resync: the backup holds the sessions (the link stays Hot)
            // and wants them all again; a new walk replaces one under way.
            Message::SyncStart if !backup && self.sync == SyncState::Hot => {
                stats.sync_start_received += 1;
                stats.resync_received += 1;
                self.resync = true;
                self.events.push_back(Event::ColdSyncRequested);
            }
            Message::Add(recs) if backup => {
                stats.add_received += recs.len() as u64;
                let mut ok = Vec::with_capacity(recs.len());
                for r in recs {
                    match r.validate(self.s.services) {
                        Ok(()) => ok.push(r),
                        Err(reason) => {
                            match reason {
                                NackReason::IllegalServiceSet => stats.illegal_service_set += 1,
                                _ => stats.illegal_flow_type += 1,
                            }
                            self.nack(h.seq, Op::Add, reason, r.key, now, stats);
                        }
                    }
                }
                self.ack_due = h.seq;
                self.events.push_back(Event::Add {
                    seq: h.seq,
                    records: ok,
                });
            }
            Message::Delete(records) if backup => {
                stats.delete_received += records.len() as u64;
                self.ack_due = h.seq;
                self.events.push_back(Event::Delete {
                    seq: h.seq,
                    records,
                });
            }
            Message::Refresh(recs) if backup => {
                stats.refresh_received += recs.len() as u64;
                let mut ok = Vec::with_capacity(recs.len());
                for r in recs {
                    if r.validate() {
                        ok.push(r);
                    } else {
                        stats.illegal_flow_type += 1;
                        self.nack(
                            h.seq,
                            Op::Refresh,
                            NackReason::IllegalFlow,
                            r.key,
                            now,
                            stats,
                        );
                    }
                }
                self.ack_due = h.seq;
                self.events.push_back(Event::Refresh {
                    seq: h.seq,
                    records: ok,
                });
            }
            Message::ColdSyncComplete { sessions } if backup => {
                stats.cold_sync_completed_count += 1;
                self.sync = SyncState::Hot;
                self.resync = false;
                self.ack_due = h.seq;
                self.events.push_back(Event::ColdSyncComplete { sessions });
            }
            Message::Ack { seq } if !backup => {
                if seq > self.tx_seq {
                    stats.decode_failures += 1;
                    return Err(Fatal::BogusAck(seq));
                }
                while let Some(p) = self.pending.front().filter(|p| p.seq <= seq) {
                    let taken = u64::from(p.count.saturating_sub(p.refused));
                    let us = now.saturating_duration_since(p.opened).as_micros();
                    self.lag
                        .record(now, u64::try_from(us).unwrap_or(u64::MAX), taken);
                    match p.kind {
                        Kind::Add => stats.add_completed += taken,
                        Kind::Delete => stats.delete_completed += taken,
                        _ => {}
                    }
                    self.pending.pop_front();
                }
            }
            Message::Nack {
                seq,
                op,
                reason,
                key,
            } if !backup => {
                match op {
                    Op::Add => stats.add_nack_received += 1,
                    Op::Delete => stats.delete_nack_received += 1,
                    Op::Refresh => stats.refresh_nack_received += 1,
                }
                // The backup acknowledges a batch on receipt and installs it
                // after, so a nack may come before or after its ack.
                if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
                    p.refused += 1;
                } else if op == Op::Add {
                    stats.add_completed = stats.add_completed.saturating_sub(1);
                } else if op == Op::Delete {
                    stats.delete_completed = stats.delete_completed.saturating_sub(1);
                }
                self.events.push_back(Event::Nacked { op, reason, key });
            }
            Message::Keepalive => {}
            Message::Digest(d) => self.events.push_back(Event::PeerDigest(d)),
            Message::Contract(theirs) if self.both(CAP_CONTRACT) => {
                if let Some(field) = disagreement(&self.s.contract, &theirs) {
                    stats.refused_connections += 1;
                    return Err(Fatal::Contract(field));
                }
            }
            other => {
                stats.invalid_kind += 1;
                return Err(Fatal::Unexpected(other.kind()));
            }
        }
        Ok(())
    }

    fn hello(&mut self, h: Hello, now: Instant, stats: &mut Stats) -> Result<(), Fatal> {
        let refuse = |why: &'static str, stats: &mut Stats| {
            stats.refused_connections += 1;
            Err(Fatal::Refused(why))
        };
        if h.group_id != self.s.group_id {
            return refuse("another redundancy group", stats);
        }
        if h.node_id == self.s.node_id {
            return refuse("the same node id as this node", stats);
        }
        if h.role == self.s.role.wire() {
            return refuse("the same role as this node", stats);
        }
        let contract = self.s.capabilities & h.capabilities & CAP_CONTRACT != 0;
        if !contract && h.services_hash != self.s.services_hash {
            return refuse("different service sets", stats);
        }
        if (h.capabilities & CAP_AUTH != 0) != self.keys.is_some() {
            stats.auth_failures += 1;
            return Err(Fatal::Auth);
        }
        if let Some(k) = &mut self.keys {
            let (dialer, acceptor) = if self.dialed {
                (&self.nonce, &h.nonce)
            } else {
                (&h.nonce, &self.nonce)
            };
            k.derive(dialer, acceptor, self.dialed);
        }
        self.peer = Some(h);
        self.sync = SyncState::Cold;
        self.events.push_back(Event::Up(h));
        if contract {
            // Ahead of the sync-start, so the active checks it before it
            // walks; the active's comes ahead of its records.
            let c = Message::Contract(self.s.contract.clone());
            self.send(&c, now, stats);
        }
        if self.s.role == Role::Backup {
            stats.sync_start_sent += 1;
            self.send(&Message::SyncStart, now, stats);
        }
        Ok(())
    }

    /// (Backup) refuses one record of message `seq`.
    pub fn nack(
        &mut self,
        seq: u64,
        op: Op,
        reason: NackReason,
        key: WireKey,
        now: Instant,
        stats: &mut Stats,
    ) {
        match op {
            Op::Add => stats.add_nack_sent += 1,
            Op::Delete => stats.delete_nack_sent += 1,
            Op::Refresh => stats.refresh_nack_sent += 1,
        }
        self.send(
            &Message::Nack {
                seq,
                op,
                reason,
                key,
            },
            now,
            stats,
        );
    }

    /// (Active) queues a session add; false when it could not be (no
    /// peer, or the backlog over its limit: counted).
    pub fn add(&mut self, r: &SessionRecord, now: Instant, stats: &mut Stats) -> bool {
        if r.validate(self.s.services).is_err()
            || (r.flags & (REC_DNAT | REC_STATIC) != 0
                && self.peer.is_some()
                && !self.both(CAP_STATIC_NAT))
        {
            // Not a record this peer can take (an older version's peer
            // does not read static and outside-through-a-mapping
            // translations): counted, and sending it again would fail the
            // same way. With no peer yet it is refused below, so repair
            // sends it to the next one.
            stats.encode_failures += 1;
            return true;
        }
        if self.begin(Kind::Add, now, stats) {
            stats.add_sent += 1;
            self.append(|b| r.put(b), now, stats);
            return true;
        }
        false
    }

    /// (Active) queues a session delete; false when it could not be.
    pub fn delete(&mut self, r: &DeleteRecord, now: Instant, stats: &mut Stats) -> bool {
        if self.begin(Kind::Delete, now, stats) {
            stats.delete_sent += 1;
            self.append(|b| r.put(b), now, stats);
            return true;
        }
        false
    }

    /// (Active) queues a refresh of a long-lived session; false when it
    /// could not be.
    pub fn refresh(&mut self, r: &RefreshRecord, now: Instant, stats: &mut Stats) -> bool {
        if self.begin(Kind::Refresh, now, stats) {
            stats.refresh_sent += 1;
            self.append(|b| r.put(b), now, stats);
            return true;
        }
        false
    }

    /// (Active) the walk of every session ended: `sessions` were sent.
    pub fn cold_sync_complete(&mut self, sessions: u64, now: Instant, stats: &mut Stats) {
        if !self.cold_requested || (self.sync == SyncState::Hot && !self.resync) {
            // Not asked for on this connection (a walk for an older one).
            return;
        }
        self.seal(now, stats);
        self.send(&Message::ColdSyncComplete { sessions }, now, stats);
        self.sync = SyncState::Hot;
        self.resync = false;
        stats.cold_sync_completed_count += 1;
    }

    /// (Backup) asks the active for every session again while this node
    /// keeps those it holds (the link stays Hot; the completion sweeps
    /// what the resync did not carry). Refused, with the reason, when the
    /// link is not Hot (a cold sync is under way or due) or the peer's
    /// version cannot resync.
    pub fn request_resync(&mut self, now: Instant, stats: &mut Stats) -> Result<(), &'static str> {
        if self.s.role != Role::Backup {
            return Err("only the backup asks for a resync");
        }
        if self.sync != SyncState::Hot {
            return Err("the link is not Hot: a cold sync is under way or due");
        }
        if !self.peer_has_digest() {
            return Err("the peer's version cannot resync (no digest capability)");
        }
        stats.sync_start_sent += 1;
        stats.resync_requested += 1;
        self.resync = true;
        self.send(&Message::SyncStart, now, stats);
        Ok(())
    }

    /// Sends this node's digest, if the peer reads digests.
    pub fn send_digest(&mut self, d: Digest, now: Instant, stats: &mut Stats) {
        if self.is_up() && self.peer_has_digest() {
            self.send(&Message::Digest(d), now, stats);
        }
    }

    /// Makes sure a batch of `kind` is open; false (counted) when records
    /// cannot be sent now.
    fn begin(&mut self, kind: Kind, now: Instant, stats: &mut Stats) -> bool {
        if !self.is_up() || self.s.role != Role::Active {
            stats.send_discard += 1;
            return false;
        }
        if self.open.as_ref().is_some_and(|o| o.kind != kind) {
            self.seal(now, stats);
        }
        if self.open.is_none() {
            if self.output().len() >= self.s.max_backlog {
                stats.batch_begin_failures += 1;
                return false;
            }
            let mut body = Vec::with_capacity(self.s.flush_bytes + wire::ADD_LEN);
            body.extend_from_slice(&[0; 4]);
            self.open = Some(Open {
                kind,
                body,
                count: 0,
                deadline: now + self.s.flush_delay,
                opened: now,
            });
        }
        true
    }

    fn append(&mut self, put: impl FnOnce(&mut Vec<u8>), now: Instant, stats: &mut Stats) {
        let o = self.open.as_mut().expect("begin opened it");
        put(&mut o.body);
        o.count += 1;
        if o.body.len() >= self.s.flush_bytes {
            self.seal(now, stats);
        }
    }

    /// Sends the open batch.
    fn seal(&mut self, now: Instant, stats: &mut Stats) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        if o.count == 0 {
            return;
        }
        o.body[..4].copy_from_slice(&o.count.to_be_bytes());
        let seq = self.frame_out(o.kind, &o.body, now, stats);
        self.pending.push_back(Pending {
            seq,
            kind: o.kind,
            count: o.count,
            refused: 0,
            opened: o.opened,
        });
    }

    fn send(&mut self, m: &Message, now: Instant, stats: &mut Stats) {
        let mut body = Vec::new();
        m.put_body(&mut body);
        self.frame_out(m.kind(), &body, now, stats);
    }

    /// Appends a frame to the output; returns its sequence number.
    fn frame_out(&mut self, kind: Kind, body: &[u8], now: Instant, stats: &mut Stats) -> u64 {
        self.tx_seq += 1;
        let start = self.out.len();
        let header = Header {
            kind,
            tagged: self.keys.is_some(),
            len: u32::try_from(body.len()).expect("bodies are bounded"),
            seq: self.tx_seq,
        };
        self.out.extend_from_slice(&header.encode());
        self.out.extend_from_slice(body);
        if let Some(k) = &self.keys {
            let tag = k.sign(&self.out[start..]);
            self.out.extend_from_slice(&tag);
        }
        stats.messages_sent += 1;
        stats.bytes_sent += (self.out.len() - start) as u64;
        self.last_tx = now;
        self.tx_seq
    }
}

/// The first field on which two contracts differ, with both values, or
/// `None` when they agree.
fn disagreement(ours: &[(String, String)], theirs: &[(String, String)]) -> Option<String> {
    let find = |list: &[(String, String)], k: &str| {
        list.iter()
            .find(|(x, _)| x == k)
            .map_or("(absent)".to_owned(), |(_, v)| v.clone())
    };
    ours.iter().chain(theirs).map(|(k, _)| k).find_map(|k| {
        let (a, b) = (find(ours, k), find(theirs, k));
        (a != b).then(|| format!("{k}: here {a:?}, peer {b:?}"))
    })
}

fn count_decode(e: DecodeError, stats: &mut Stats) {
    match e {
        DecodeError::BadHeader | DecodeError::Version(_) => stats.invalid_header += 1,
        DecodeError::BadKind(_) => stats.invalid_kind += 1,
        DecodeError::BadLength => stats.invalid_length += 1,
        DecodeError::BadRecord => stats.decode_failures += 1,
    }
}

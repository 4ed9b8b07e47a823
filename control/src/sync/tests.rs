//! Two connections driven through an in-memory link: the active node's
//! session table on one side, the backup's on the other, and whatever the
//! link does to the bytes in between.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::{
    wire::{CAP_CONTRACT, CAP_DIGEST, REC_DNAT, REC_NAT, REC_OUTSIDE, REC_STATIC},
    *,
};

const SERVICES: usize = 2;

fn settings(node: u32, role: Role, key: Option<&[u8]>) -> Settings {
    let mut s = Settings::new(node, 7, 2, role);
    s.services = SERVICES;
    s.services_hash = 0xfeed;
    s.contract = vec![
        ("service_set".into(), "2 sets".into()),
        ("service_set[0].nat.ports".into(), "1024-65535".into()),
    ];
    s.key = key.map(<[u8]>::to_vec);
    s
}

fn key(n: u32) -> WireKey {
    let mut src = [0u8; 16];
    src[10..12].copy_from_slice(&[0xff, 0xff]);
    src[12..].copy_from_slice(&[198, 18, 1, 10]);
    let mut dst = src;
    dst[12..].copy_from_slice(&[198, 18, 2, 10]);
    WireKey {
        src,
        dst,
        sport: (n % 60000) as u16 + 1024,
        dport: (n / 60000) as u16 + 1,
        proto: 6,
    }
}

fn record(n: u32) -> SessionRecord {
    SessionRecord {
        id: u64::from(n),
        key: key(n),
        state: 3,
        service_set: (n % 2) as u8,
        flags: REC_NAT,
        nat_addr: [198, 18, 2, 100],
        nat_port: (n % 60000) as u16 + 1024,
        age: n,
        ..SessionRecord::default()
    }
}

/// One end of the pair: its connection, counters and table.
struct End {
    conn: Option<Conn>,
    stats: Stats,
    settings: Settings,
    /// Sessions, with the cold-sync generation that last wrote them.
    table: BTreeMap<WireKey, (SessionRecord, u64)>,
    /// The backup's table capacity.
    capacity: usize,
    /// Backup: the generation of the current cold sync.
    generation: u64,
    /// Active: the cold-sync walk's position, and how many it sent.
    walk: Option<(Option<WireKey>, u64)>,
    events: Vec<Event>,
}

impl End {
    fn new(s: Settings) -> Self {
        Self {
            conn: None,
            stats: Stats::default(),
            settings: s,
            table: BTreeMap::new(),
            capacity: usize::MAX,
            generation: 0,
            walk: None,
            events: Vec::new(),
        }
    }

    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close(&mut self.stats);
        }
        self.walk = None;
    }

    fn sessions(&self) -> BTreeMap<WireKey, SessionRecord> {
        self.table.iter().map(|(k, (r, _))| (*k, *r)).collect()
    }
}

/// What the link does to the bytes of one delivery.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Lose `n` bytes from the middle.
    Lose(usize),
    /// Deliver part of it twice.
    Duplicate(usize),
    /// Swap the two halves.
    Reorder,
    /// Flip one bit.
    Flip(usize),
    /// Cut the connection.
    Cut,
}

struct Pair {
    now: Instant,
    a: End,
    b: End,
    nonces: u8,
    /// Bytes the active's socket takes per step (a slow link).
    window: usize,
}

impl Pair {
    fn new(key_a: Option<&[u8]>, key_b: Option<&[u8]>) -> Self {
        Self {
            now: Instant::now(),
            a: End::new(settings(1, Role::Active, key_a)),
            b: End::new(settings(2, Role::Backup, key_b)),
            nonces: 0,
            window: usize::MAX,
        }
    }

    /// The backup dials the active.
    fn connect(&mut self) {
        self.nonces = self.nonces.wrapping_add(2);
        let (na, nb) = ([self.nonces; 16], [self.nonces + 1; 16]);
        self.a.conn = Some(Conn::new(
            self.a.settings.clone(),
            false,
            na,
            self.now,
            &mut self.a.stats,
        ));
        self.b.conn = Some(Conn::new(
            self.b.settings.clone(),
            true,
            nb,
            self.now,
            &mut self.b.stats,
        ));
    }

    fn up(&self) -> bool {
        self.a.conn.is_some() && self.b.conn.is_some()
    }

    fn close(&mut self) {
        self.a.close();
        self.b.close();
    }

    /// The active's data path: a session appears, changes or goes.
    fn add(&mut self, r: SessionRecord) {
        self.a.table.insert(r.key, (r, 0));
        if let Some(c) = &mut self.a.conn {
            c.add(&r, self.now, &mut self.a.stats);
        }
    }

    fn delete(&mut self, k: WireKey) {
        if let Some((r, _)) = self.a.table.remove(&k)
            && let Some(c) = &mut self.a.conn
        {
            c.delete(
                &DeleteRecord { id: r.id, key: k },
                self.now,
                &mut self.a.stats,
            );
        }
    }

    fn refresh(&mut self, k: WireKey, state: u8) {
        if let Some((r, _)) = self.a.table.get_mut(&k) {
            r.state = state;
            let rr = RefreshRecord {
                id: r.id,
                key: k,
                state,
                idle: 0,
            };
            if let Some(c) = &mut self.a.conn {
                c.refresh(&rr, self.now, &mut self.a.stats);
            }
        }
    }

    /// One millisecond: timers, the walk, both directions of the link (the
    /// a->b direction through `fault`), events. A fatal error closes both.
    fn step(&mut self, fault: Fault) {
        self.now += Duration::from_millis(1);
        if !self.up() {
            return;
        }
        let mut fatal = false;
        for end in [&mut self.a, &mut self.b] {
            let c = end.conn.as_mut().expect("up");
            if self.now >= c.timeout() && c.on_timeout(self.now, &mut end.stats).is_err() {
                fatal = true;
            }
        }
        self.walk_some(64);
        if let Fault::Cut = fault {
            fatal = true;
        }
        if !fatal {
            let bytes = take(&mut self.a, self.window);
            let bytes = damage(bytes, fault);
            fatal |= deliver(&mut self.b, &bytes, self.now);
            let bytes = take(&mut self.b, usize::MAX);
            fatal |= deliver(&mut self.a, &bytes, self.now);
        }
        if fatal {
            self.close();
            return;
        }
        self.events();
    }

    /// The active walks up to `n` sessions of its table (the data path
    /// does this in bounded chunks, in key order here).
    fn walk_some(&mut self, n: usize) {
        let Some((from, sent)) = self.a.walk else {
            return;
        };
        let c = self.a.conn.as_mut().expect("walk only while up");
        let range = match from {
            Some(k) => self
                .a
                .table
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => self.a.table.range(..),
        };
        let chunk: Vec<SessionRecord> = range.take(n).map(|(_, (r, _))| *r).collect();
        for r in &chunk {
            c.add(r, self.now, &mut self.a.stats);
        }
        let sent = sent + chunk.len() as u64;
        if chunk.len() < n {
            c.cold_sync_complete(sent, self.now, &mut self.a.stats);
            self.a.walk = None;
        } else {
            self.a.walk = Some((chunk.last().map(|r| r.key), sent));
        }
    }

    fn events(&mut self) {
        while let Some(e) = self.a.conn.as_mut().and_then(Conn::poll_event) {
            if e == Event::ColdSyncRequested {
                self.a.walk = Some((None, 0));
            }
            self.a.events.push(e);
        }
        while let Some(e) = self.b.conn.as_mut().and_then(Conn::poll_event) {
            let b = &mut self.b;
            let c = b.conn.as_mut().expect("event from a connection");
            match &e {
                Event::Up(_) => b.generation += 1,
                Event::Add { seq, records } => {
                    for r in records {
                        if b.table.len() >= b.capacity && !b.table.contains_key(&r.key) {
                            b.stats.install_failures += 1;
                            c.nack(
                                *seq,
                                Op::Add,
                                NackReason::TableFull,
                                r.key,
                                self.now,
                                &mut b.stats,
                            );
                        } else {
                            b.table.insert(r.key, (*r, b.generation));
                            b.stats.add_completed += 1;
                        }
                    }
                }
                Event::Delete { records, .. } => {
                    for r in records {
                        if b.table.remove(&r.key).is_some() {
                            b.stats.delete_completed += 1;
                        } else {
                            b.stats.delete_not_found += 1;
                        }
                    }
                }
                Event::Refresh { records, .. } => {
                    for r in records {
                        if let Some((s, _)) = b.table.get_mut(&r.key) {
                            s.state = r.state;
                        }
                    }
                }
                Event::ColdSyncComplete { .. } => {
                    // Sessions the active no longer has were not re-sent.
                    let g = b.generation;
                    b.table.retain(|_, (_, stamp)| *stamp == g);
                }
                Event::ColdSyncRequested | Event::Nacked { .. } | Event::PeerDigest(_) => {}
            }
            b.events.push(e);
        }
    }

    /// Steps without faults until both are Hot and nothing is in flight.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.up() {
                self.connect();
            }
            self.step(Fault::None);
            let quiet = |e: &End| {
                e.conn.as_ref().is_some_and(|c| {
                    c.sync_state() == SyncState::Hot
                        && c.output().is_empty()
                        && c.partial_input() == 0
                })
            };
            if quiet(&self.a) && quiet(&self.b) && self.a.walk.is_none() {
                // One more step flushes acks and time-bound batches.
                self.now += Duration::from_millis(2);
                self.step(Fault::None);
                if self.a.conn.as_ref().is_some_and(|c| c.add_pending() == 0) {
                    return;
                }
            }
        }
        panic!("the pair never settled");
    }
}

/// What the socket takes of `e`'s output: at most `limit` bytes.
fn take(e: &mut End, limit: usize) -> Vec<u8> {
    let c = e.conn.as_mut().expect("up");
    let out = c.output();
    let bytes = out[..out.len().min(limit)].to_vec();
    c.consumed(bytes.len());
    bytes
}

fn deliver(e: &mut End, bytes: &[u8], now: Instant) -> bool {
    let c = e.conn.as_mut().expect("up");
    c.recv(bytes, now, &mut e.stats).is_err()
}

fn damage(mut b: Vec<u8>, f: Fault) -> Vec<u8> {
    if b.len() < 4 {
        return b;
    }
    let mid = b.len() / 2;
    match f {
        Fault::None | Fault::Cut => {}
        Fault::Lose(n) => {
            let n = n.clamp(1, b.len() - mid);
            b.drain(mid..mid + n);
        }
        Fault::Duplicate(n) => {
            let n = n.clamp(1, mid);
            let part = b[mid - n..mid].to_vec();
            b.splice(mid..mid, part);
        }
        Fault::Reorder => b.rotate_left(mid),
        Fault::Flip(i) => {
            let i = i % b.len();
            b[i] ^= 0x10;
        }
    }
    b
}

#[test]
fn cold_sync_then_live_changes_converge() {
    let mut p = Pair::new(None, None);
    for n in 0..3000 {
        p.add(record(n));
    }
    p.connect();
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.b.stats.sync_start_sent, 1);
    assert_eq!(p.a.stats.sync_start_received, 1);
    assert_eq!(p.a.stats.cold_sync_completed_count, 1);
    assert_eq!(p.b.stats.cold_sync_completed_count, 1);
    assert!(
        p.b.events
            .contains(&Event::ColdSyncComplete { sessions: 3000 })
    );
    assert_eq!(p.a.stats.add_sent, 3000);
    assert_eq!(p.b.stats.add_received, 3000);
    assert_eq!(p.a.stats.add_completed, 3000, "every add acknowledged");
    // 64 KiB batches: 3000 records of 64 bytes fit in 3 full batches and
    // the time-bound rest of each walk chunk; far fewer frames than records.
    assert!(p.a.stats.messages_sent < 200, "{}", p.a.stats.messages_sent);

    // Live changes while Hot.
    for n in 0..100 {
        p.delete(key(n));
    }
    for n in 3000..3100 {
        p.add(record(n));
    }
    p.refresh(key(200), 4);
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.b.table[&key(200)].0.state, 4);
    assert_eq!(
        (p.a.stats.delete_sent, p.b.stats.delete_received),
        (100, 100)
    );
    assert_eq!(
        (p.a.stats.delete_completed, p.b.stats.delete_completed),
        (100, 100)
    );
    assert_eq!((p.a.stats.refresh_sent, p.b.stats.refresh_received), (1, 1));
    assert_eq!(p.a.stats.connection_establish, 1);
    assert_eq!(p.a.stats.connection_teardown, 0);
}

#[test]
fn a_socket_that_takes_the_output_piecemeal_loses_nothing() {
    // 3,001 bytes a step, never a frame boundary: the output is taken
    // from the front while frames are appended behind, and compacted on
    // the way; authenticated, so one byte out of place would end the link.
    let mut p = Pair::new(Some(b"k"), Some(b"k"));
    p.window = 3001;
    for n in 0..20_000 {
        p.add(record(n));
    }
    p.connect();
    for n in 20_000..20_500 {
        p.step(Fault::None);
        p.add(record(n));
        p.delete(key(n - 20_000));
    }
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.a.sessions().len(), 20_000);
    assert_eq!(p.a.stats.connection_teardown, 0);
    assert_eq!(p.b.stats.invalid_header + p.b.stats.auth_failures, 0);
}

#[test]
fn changes_racing_the_walk_are_not_lost() {
    let mut p = Pair::new(None, None);
    for n in 0..2000 {
        p.add(record(n));
    }
    p.connect();
    // Change the table while the walk is under way, ahead of and behind it.
    for round in 0..20u32 {
        p.step(Fault::None);
        p.delete(key(round * 97));
        p.delete(key(1999 - round * 13));
        p.add(record(5000 + round));
        p.refresh(key(1000 + round), 5);
    }
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
}

#[test]
fn a_reconnect_drops_sessions_deleted_while_apart() {
    let mut p = Pair::new(None, None);
    for n in 0..500 {
        p.add(record(n));
    }
    p.connect();
    p.settle();
    p.close();
    for n in 0..250 {
        p.delete(key(n));
    }
    p.add(record(9999));
    assert_eq!(p.b.table.len(), 500, "the backup still holds the old set");
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.a.stats.cold_sync_completed_count, 2);
    assert_eq!(p.b.stats.connection_teardown, 1);
}

#[test]
fn a_resync_on_a_hot_link_repairs_what_was_lost() {
    let mut p = Pair::new(Some(b"pair secret"), Some(b"pair secret"));
    for n in 0..400 {
        p.add(record(n));
    }
    p.connect();
    p.settle();
    // Lost on the way: sessions the backup never heard of, and deletes it
    // never heard of.
    for n in 400..450 {
        p.a.table.insert(key(n), (record(n), 0));
    }
    for n in 0..30 {
        p.a.table.remove(&key(n));
    }
    assert_ne!(p.b.sessions(), p.a.sessions());
    // The backup asks; its new records stamp a new generation, and the
    // completion sweeps what the resync did not carry.
    let c = p.b.conn.as_mut().expect("up");
    c.request_resync(p.now, &mut p.b.stats)
        .expect("Hot, and the peer can");
    assert!(c.resyncing());
    assert_eq!(c.sync_state(), SyncState::Hot, "the backup stays Hot");
    p.b.generation += 1;
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.b.stats.resync_requested, 1);
    assert_eq!(p.a.stats.resync_received, 1);
    assert_eq!(p.a.stats.cold_sync_completed_count, 2);
    assert!(!p.b.conn.as_ref().expect("up").resyncing());
    // Digests cross in both directions.
    let d = Digest {
        sessions: 420,
        hash: 0xdead_beef,
    };
    let c = p.a.conn.as_mut().expect("up");
    c.send_digest(d, p.now, &mut p.a.stats);
    p.settle();
    assert!(p.b.events.contains(&Event::PeerDigest(d)));
    // The active does not ask, and a backup whose link is not Hot cannot.
    let c = p.a.conn.as_mut().expect("up");
    assert!(c.request_resync(p.now, &mut p.a.stats).is_err());
    p.close();
    p.connect();
    let c = p.b.conn.as_mut().expect("up");
    assert!(c.request_resync(p.now, &mut p.b.stats).is_err());
}

#[test]
fn authenticated_pair_converges() {
    let mut p = Pair::new(Some(b"pair secret"), Some(b"pair secret"));
    for n in 0..300 {
        p.add(record(n));
    }
    p.connect();
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    assert_eq!(p.a.stats.auth_failures + p.b.stats.auth_failures, 0);
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_nothing_installs() {
    for (ka, kb) in [
        (Some(&b"secret"[..]), Some(&b"Secret"[..])),
        (Some(&b"secret"[..]), None),
        (None, Some(&b"secret"[..])),
    ] {
        let mut p = Pair::new(ka, kb);
        p.add(record(1));
        p.connect();
        for _ in 0..5 {
            p.step(Fault::None);
        }
        assert!(!p.up(), "{ka:?} {kb:?}");
        assert!(
            p.a.stats.auth_failures + p.b.stats.auth_failures >= 1,
            "{ka:?} {kb:?}"
        );
        assert!(p.b.table.is_empty());
        assert_eq!(p.a.stats.connection_teardown, 1);
    }
}

#[test]
fn every_flipped_bit_of_an_authenticated_stream_is_caught() {
    let now = Instant::now();
    let sa = settings(1, Role::Active, Some(b"k"));
    let sb = settings(2, Role::Backup, Some(b"k"));
    let mut st = Stats::default();
    let mut a = Conn::new(sa, false, [1; 16], now, &mut st);
    let mut b = Conn::new(sb.clone(), true, [2; 16], now, &mut st);
    // The backup takes the active's hello (left in the active's output)
    // and asks for a cold sync.
    b.recv(a.output(), now, &mut st).unwrap();
    a.recv(b.output(), now, &mut st).unwrap();
    b.consumed(b.output().len());
    for n in 0..3 {
        a.add(&record(n), now, &mut st);
    }
    a.delete(&DeleteRecord { id: 0, key: key(0) }, now, &mut st);
    a.cold_sync_complete(3, now, &mut st);
    let stream = a.output().to_vec();
    // The same backup (same nonce, so the same keys) on a clean stream.
    let run = |s: &[u8]| {
        let mut st = Stats::default();
        let mut c = Conn::new(sb.clone(), true, [2; 16], now, &mut st);
        let r = c.recv(s, now, &mut st);
        (r, std::iter::from_fn(|| c.poll_event()).collect::<Vec<_>>())
    };
    let (r, clean) = run(&stream);
    assert_eq!(r, Ok(()));
    assert_eq!(clean.len(), 4, "up, add, delete, complete: {clean:?}");
    for i in 0..stream.len() {
        let mut s = stream.clone();
        s[i] ^= 1 << (i % 8);
        let (r, events) = run(&s);
        // Whatever was taken before the damaged frame is the real thing;
        // the damaged frame itself is refused, or waits for bytes that never
        // come (a flipped length), and yields nothing.
        assert!(events.len() < clean.len(), "byte {i} went unnoticed: {r:?}");
        assert_eq!(events[..], clean[..events.len()], "byte {i}");
    }
}

#[test]
fn replayed_dropped_and_reordered_frames_end_the_connection() {
    for fault in [Fault::Duplicate(200), Fault::Lose(200), Fault::Reorder] {
        let mut p = Pair::new(None, None);
        p.connect();
        p.settle();
        for n in 0..1500 {
            p.add(record(n));
        }
        // 1500 adds make two full batches and a rest: the link damages them.
        p.now += Duration::from_millis(2);
        p.step(fault);
        assert!(!p.up(), "{fault:?} went unnoticed");
        let s = &p.b.stats;
        assert!(
            s.replays + s.invalid_header + s.invalid_kind + s.invalid_length + s.decode_failures
                >= 1,
            "{fault:?}: {s:?}"
        );
        p.settle();
        assert_eq!(p.b.sessions(), p.a.sessions(), "{fault:?}");
        assert!(p.a.stats.batch_commit_failures >= 1, "{fault:?}");
    }
}

#[test]
fn silence_ends_the_connection_and_keepalives_prevent_it() {
    let mut p = Pair::new(None, None);
    p.connect();
    p.settle();
    // Idle but connected for 10 s: keepalives flow, nothing ends.
    let before = p.a.stats.messages_sent;
    for _ in 0..100 {
        p.now += Duration::from_millis(99);
        p.step(Fault::None);
    }
    assert!(p.up());
    assert!(
        p.a.stats.messages_sent - before >= 9,
        "keepalives every second"
    );
    // Now nothing is delivered: both give up after 3 keepalive intervals.
    let a = p.a.conn.as_mut().unwrap();
    let t0 = p.now;
    let mut t = t0;
    let end = loop {
        t += Duration::from_millis(100);
        if let Err(e) = a.on_timeout(t, &mut p.a.stats) {
            break (t - t0, e);
        }
    };
    assert!(matches!(end.1, Fatal::PeerDead(_)));
    assert!(end.0 <= Duration::from_secs(3), "{:?}", end.0);
}

#[test]
fn a_slow_hello_does_not_break_authentication() {
    let t0 = Instant::now();
    let mut st = Stats::default();
    let mut a = Conn::new(
        settings(1, Role::Active, Some(b"k")),
        false,
        [1; 16],
        t0,
        &mut st,
    );
    let mut b = Conn::new(
        settings(2, Role::Backup, Some(b"k")),
        true,
        [2; 16],
        t0,
        &mut st,
    );
    // The backup's hello takes 1.5 s to arrive; the active's timers run.
    let t = t0 + Duration::from_millis(1500);
    a.on_timeout(t, &mut st).unwrap();
    b.recv(a.output(), t, &mut st).unwrap();
    a.consumed(a.output().len());
    a.recv(b.output(), t, &mut st).unwrap();
    b.consumed(b.output().len());
    b.recv(a.output(), t, &mut st).unwrap();
    assert!(a.is_up() && b.is_up());
    assert_eq!(st.auth_failures, 0);
}

#[test]
fn refused_records_are_nacked_and_counted() {
    let mut p = Pair::new(None, None);
    p.b.capacity = 10;
    p.connect();
    p.settle();
    for n in 0..12 {
        p.add(record(n));
    }
    // A service set the backup does not have: the active's own check
    // passes it (it has 3), the backup refuses it.
    p.a.settings.services = 3;
    p.close();
    p.connect();
    p.settle();
    p.a.conn.as_mut().unwrap().add(
        &SessionRecord {
            service_set: 2,
            ..record(50)
        },
        p.now,
        &mut p.a.stats,
    );
    p.settle();
    assert_eq!(p.b.table.len(), 10);
    assert!(p.b.stats.install_failures >= 2);
    assert_eq!(p.b.stats.illegal_service_set, 1);
    assert_eq!(p.a.stats.add_nack_received, p.b.stats.add_nack_sent);
    // The 12 live adds were still in an open batch when the link was cut;
    // the cold sync sent 12, of which 2 were refused, and the service set
    // add was refused: 10 completed.
    assert_eq!(p.a.stats.add_completed, 10, "{:?}", p.a.stats);
    assert_eq!(p.a.stats.batch_commit_failures, 1);
    // A refresh with a state no TCP session has.
    p.a.conn.as_mut().unwrap().refresh(
        &RefreshRecord {
            id: 1,
            key: key(1),
            state: 200,
            idle: 0,
        },
        p.now,
        &mut p.a.stats,
    );
    let illegal = p.b.stats.illegal_flow_type;
    p.settle();
    assert_eq!(p.b.stats.illegal_flow_type, illegal + 1);
    assert_eq!(
        (p.b.stats.refresh_nack_sent, p.a.stats.refresh_nack_received),
        (1, 1)
    );
    // A completion nobody asked for on this connection is not sent.
    let sent = p.a.stats.cold_sync_completed_count;
    p.a.conn
        .as_mut()
        .unwrap()
        .cold_sync_complete(0, p.now, &mut p.a.stats);
    assert_eq!(p.a.stats.cold_sync_completed_count, sent);
    assert!(p.a.events.iter().any(|e| matches!(
        e,
        Event::Nacked {
            reason: NackReason::IllegalServiceSet,
            ..
        }
    )));
    assert!(p.a.events.iter().any(|e| matches!(
        e,
        Event::Nacked {
            reason: NackReason::TableFull,
            op: Op::Add,
            ..
        }
    )));
}

#[test]
fn hellos_that_do_not_match_are_refused() {
    type Change = fn(&mut Settings);
    let variants: [(&str, Change); 5] = [
        ("group", |s| s.group_id = 8),
        ("node id", |s| s.node_id = 1),
        ("role", |s| s.role = Role::Active),
        ("contract", |s| {
            s.contract[1].1 = "other".into();
        }),
        // A peer of the version before contracts: the hash decides.
        ("service sets, old peer", |s| {
            s.services_hash = 1;
            s.capabilities = 0;
        }),
    ];
    for (what, change) in variants {
        let mut p = Pair::new(None, None);
        change(&mut p.b.settings);
        p.connect();
        p.step(Fault::None);
        assert!(!p.up(), "{what}");
        assert_eq!(p.a.stats.refused_connections, 1, "{what}");
    }
}

#[test]
fn what_may_differ_does_not_stop_sync_and_a_mismatch_names_its_field() {
    // Firewall rules differ (so do the hashes): the contracts agree.
    let mut p = Pair::new(None, None);
    p.b.settings.services_hash = 1;
    for n in 0..50 {
        p.add(record(n));
    }
    p.connect();
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
    // A port range differs: refused before the walk, naming the field.
    let mut p = Pair::new(None, None);
    p.b.settings.contract[1].1 = "1024-2047".into();
    p.add(record(1));
    p.connect();
    let mut b = p.b.conn.take().unwrap();
    let mut a = p.a.conn.take().unwrap();
    let now = p.now;
    let hello_b = b.output().to_vec();
    b.consumed(hello_b.len());
    a.recv(&hello_b, now, &mut p.a.stats).unwrap();
    let to_b = a.output().to_vec();
    a.consumed(to_b.len());
    let err = b.recv(&to_b, now, &mut p.b.stats).unwrap_err();
    assert!(
        err.to_string().contains("service_set[0].nat.ports")
            && err.to_string().contains("1024-2047"),
        "{err}"
    );
    assert_eq!(p.b.stats.refused_connections, 1);
    assert!(p.b.table.is_empty(), "nothing installed");
    // A peer without contracts and an equal hash still talks.
    let mut p = Pair::new(None, None);
    p.b.settings.capabilities = 0;
    p.b.settings.contract.clear();
    p.add(record(1));
    p.connect();
    p.settle();
    assert_eq!(p.b.sessions(), p.a.sessions());
}

#[test]
fn records_that_cannot_go_are_counted() {
    let mut p = Pair::new(None, None);
    p.a.settings.max_backlog = 100;
    p.connect();
    // Not up yet: discarded.
    p.add(record(1));
    assert_eq!(p.a.stats.send_discard, 1);
    // Invalid: refused at encoding.
    let c = p.a.conn.as_mut().unwrap();
    c.add(
        &SessionRecord {
            action: 9,
            ..record(2)
        },
        p.now,
        &mut p.a.stats,
    );
    assert_eq!(p.a.stats.encode_failures, 1);
    p.step(Fault::None);
    assert!(p.a.conn.as_ref().unwrap().is_up());
    // The backlog is over 100 bytes once the first batch is out: the next
    // batch cannot begin until the socket takes the bytes.
    for n in 0..2000 {
        let c = p.a.conn.as_mut().unwrap();
        c.add(&record(n), p.now, &mut p.a.stats);
    }
    assert!(p.a.stats.batch_begin_failures >= 1);
    // A backup never sends sessions.
    let c = p.b.conn.as_mut().unwrap();
    c.add(&record(1), p.now, &mut p.b.stats);
    assert_eq!(p.b.stats.send_discard, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random session churn over a link that loses, duplicates, reorders
    /// and corrupts bytes and cuts the connection: once the link heals the
    /// backup holds exactly the active's sessions.
    #[test]
    fn chaos_heals_to_equal_tables(
        ops in prop::collection::vec((0u8..10, 0u32..400, 0u8..40, any::<usize>()), 1..300),
        keyed in any::<bool>(),
    ) {
        let psk = keyed.then_some(&b"chaos"[..]);
        let mut p = Pair::new(psk, psk);
        for (op, n, f, x) in ops {
            match op {
                0..=4 => p.add(record(n)),
                5..=7 => p.delete(key(n)),
                _ => p.refresh(key(n), (x % 10) as u8),
            }
            if !p.up() && f % 4 == 0 {
                p.connect();
            }
            let fault = match f {
                0 => Fault::Lose(x % 100),
                1 => Fault::Duplicate(x % 100),
                2 => Fault::Reorder,
                3 if keyed => Fault::Flip(x),
                4 => Fault::Cut,
                _ => Fault::None,
            };
            p.step(fault);
        }
        p.settle();
        prop_assert_eq!(p.b.sessions(), p.a.sessions());
    }
}

/// The driver over real TCP on loopback: 127.0.0.1 is the active, .2 the
/// backup, .3 a stranger.
mod over_tcp {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::sync::driver::{Driver, Notice};

    fn at(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }

    /// A driver and the table it keeps (the backup's install side).
    struct Node {
        d: Driver,
        table: BTreeMap<WireKey, (SessionRecord, u64)>,
        generation: u64,
    }

    impl Node {
        fn new(
            role: Role,
            node: u32,
            key: Option<&[u8]>,
            local: SocketAddr,
            peer: SocketAddr,
        ) -> Self {
            Self {
                d: Driver::new(settings(node, role, key), local, peer).unwrap(),
                table: BTreeMap::new(),
                generation: 0,
            }
        }

        fn turn(&mut self) {
            self.d.turn(Duration::from_millis(1));
            while let Some(n) = self.d.poll_notice() {
                match n {
                    Notice::Conn(Event::Up(_)) => self.generation += 1,
                    Notice::Conn(Event::ColdSyncRequested) => {
                        let all: Vec<SessionRecord> =
                            self.table.values().map(|(r, _)| *r).collect();
                        for r in &all {
                            self.d.add(r);
                        }
                        self.d.cold_sync_complete(all.len() as u64);
                    }
                    Notice::Conn(Event::Add { records, .. }) => {
                        for r in records {
                            self.table.insert(r.key, (r, self.generation));
                        }
                    }
                    Notice::Conn(Event::Delete { records, .. }) => {
                        for r in records {
                            self.table.remove(&r.key);
                        }
                    }
                    Notice::Conn(Event::ColdSyncComplete { .. }) => {
                        let g = self.generation;
                        self.table.retain(|_, (_, stamp)| *stamp == g);
                    }
                    _ => {}
                }
            }
        }

        fn sessions(&self) -> BTreeMap<WireKey, SessionRecord> {
            self.table.iter().map(|(k, (r, _))| (*k, *r)).collect()
        }
    }

    fn until(a: &mut Node, b: &mut Node, what: &str, done: impl Fn(&Node, &Node) -> bool) {
        let t0 = Instant::now();
        while !done(a, b) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            a.turn();
            b.turn();
        }
    }

    fn hot(n: &Node) -> bool {
        n.d.sync_state() == SyncState::Hot && n.d.add_pending() == 0
    }

    fn pair(key: Option<&[u8]>) -> (Node, Node) {
        let a = Node::new(Role::Active, 1, key, at(1, 0), at(2, 0));
        let port = a.d.local_addr().port();
        let b = Node::new(Role::Backup, 2, key, at(2, 0), at(1, port));
        (a, b)
    }

    #[test]
    fn sessions_replicate_over_tcp_and_a_restarted_backup_cold_syncs() {
        let (mut a, mut b) = pair(Some(b"a pair secret of 24 bytes"));
        for n in 0..5000 {
            a.table.insert(key(n), (record(n), 0));
        }
        until(&mut a, &mut b, "the first cold sync", |a, b| {
            hot(a) && hot(b)
        });
        until(&mut a, &mut b, "equal tables", |a, b| {
            a.sessions() == b.sessions()
        });
        assert_eq!(b.d.stats.cold_sync_completed_count, 1);
        assert_eq!(
            a.d.peer_addr().unwrap().ip(),
            at(2, 0).ip(),
            "dialed from its sync address"
        );

        // Live changes.
        for n in 0..1000 {
            a.table.remove(&key(n));
            a.d.delete(&DeleteRecord {
                id: u64::from(n),
                key: key(n),
            });
        }
        for n in 9000..9500 {
            a.table.insert(key(n), (record(n), 0));
            a.d.add(&record(n));
        }
        until(&mut a, &mut b, "live changes", |a, b| {
            a.sessions() == b.sessions()
        });
        assert_eq!(a.d.stats.delete_sent, 1000);

        // The backup restarts: a new process, an empty table, the same port.
        let port = a.d.local_addr().port();
        drop(b);
        let mut b = Node::new(
            Role::Backup,
            2,
            Some(b"a pair secret of 24 bytes"),
            at(2, 0),
            at(1, port),
        );
        until(&mut a, &mut b, "the second cold sync", |a, b| {
            hot(a) && hot(b) && a.sessions() == b.sessions()
        });
        assert_eq!(b.table.len(), 4500);
        assert_eq!(a.d.stats.sync_start_received, 2);
        assert!(a.d.stats.connection_teardown >= 1);
        assert_eq!(a.d.stats.auth_failures, 0);
    }

    /// A backup whose consumers are behind leaves the socket unread: the
    /// active's backlog grows (TCP's window is closed), the link stays up
    /// through keepalives that wait unread, and once reading resumes
    /// every record arrives: back-pressure instead of loss.
    #[test]
    fn a_backup_that_holds_its_reads_slows_the_active_and_loses_nothing() {
        const N: u32 = 200_000;
        let (mut a, mut b) = pair(None);
        until(&mut a, &mut b, "the first cold sync", |a, b| {
            hot(a) && hot(b)
        });
        let mut sent = 0;
        let feed = |a: &mut Node, sent: &mut u32| {
            while *sent < N && a.d.add(&record(*sent)) {
                a.table.insert(key(*sent), (record(*sent), 0));
                *sent += 1;
            }
        };
        b.d.hold_reads(true);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            feed(&mut a, &mut sent);
            a.turn();
            b.turn();
        }
        let held = b.table.len();
        for _ in 0..100 {
            feed(&mut a, &mut sent);
            a.turn();
            b.turn();
        }
        assert_eq!(b.table.len(), held, "nothing read while held");
        assert!(held < a.table.len(), "held {held} of {}", a.table.len());
        assert!(a.d.backlog() > 0, "the active's backlog waits");
        assert!(a.d.is_up() && b.d.is_up(), "the link stays up");
        b.d.hold_reads(false);
        let t0 = Instant::now();
        while sent < N {
            assert!(t0.elapsed() < Duration::from_secs(10), "fed {sent} of {N}");
            feed(&mut a, &mut sent);
            a.turn();
            b.turn();
        }
        until(&mut a, &mut b, "every record after the hold", |a, b| {
            a.table.len() == N as usize && a.sessions() == b.sessions()
        });
        assert_eq!(b.d.stats.connection_teardown, 0);
        assert_eq!(a.d.stats.add_nack_received, 0);
    }

    #[test]
    fn strangers_and_wrong_keys_are_refused() {
        let (mut a, _) = pair(Some(b"the right key, 16+"));
        let port = a.d.local_addr().port();
        // From an address that is not the peer.
        let stranger = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        stranger.bind(&SockAddr::from(at(3, 0))).unwrap();
        stranger.connect(&SockAddr::from(at(1, port))).unwrap();
        let t0 = Instant::now();
        while a.d.stats.refused_connections == 0 && t0.elapsed() < Duration::from_secs(5) {
            a.turn();
        }
        assert_eq!(a.d.stats.refused_connections, 1);
        assert!(a.d.peer_addr().is_none());
        drop(stranger);

        // The peer's address with the wrong key.
        let mut b = Node::new(
            Role::Backup,
            2,
            Some(b"the wrong key, 16+"),
            at(2, 0),
            at(1, port),
        );
        until(&mut a, &mut b, "an authentication failure", |a, _| {
            a.d.stats.auth_failures >= 1
        });
        assert!(!a.d.is_up());
        assert!(a.table.is_empty() && b.table.is_empty());
    }

    #[test]
    fn a_replayed_hello_does_not_replace_the_live_link() {
        let secret: &[u8] = b"a pair secret of 24 bytes";
        let (mut a, mut b) = pair(Some(secret));
        until(&mut a, &mut b, "the first cold sync", |a, b| {
            hot(a) && hot(b)
        });
        let live = a.d.peer_addr().expect("linked");
        // A valid hello of the backup, as an eavesdropper would have
        // captured it, replayed from the backup's address.
        let mut scratch = Stats::default();
        let c = Conn::new(
            settings(2, Role::Backup, Some(secret)),
            true,
            [9; 16],
            Instant::now(),
            &mut scratch,
        );
        let port = a.d.local_addr().port();
        let replay = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        replay.bind(&SockAddr::from(at(2, 0))).unwrap();
        replay.connect(&SockAddr::from(at(1, port))).unwrap();
        let mut replay = std::net::TcpStream::from(replay);
        std::io::Write::write_all(&mut replay, c.output()).unwrap();
        // Long enough for the active to accept and answer it.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            a.turn();
            b.turn();
        }
        assert_eq!(a.d.peer_addr(), Some(live), "the live link stays");
        assert!(a.d.is_up());
        // Records still flow on it, with no new cold sync.
        a.table.insert(key(7), (record(7), 0));
        a.d.add(&record(7));
        until(&mut a, &mut b, "a live add after the replay", |a, b| {
            a.sessions() == b.sessions() && !b.table.is_empty()
        });
        assert_eq!(a.d.stats.sync_start_received, 1);
        assert_eq!(b.d.stats.connection_teardown, 0);
        drop(replay);
    }

    use socket2::{Domain, SockAddr, Socket, Type};
}

#[test]
fn static_and_inbound_translations_go_only_to_a_peer_that_reads_them() {
    let inbound = |n: u32| SessionRecord {
        flags: REC_NAT | REC_OUTSIDE | REC_DNAT | REC_STATIC,
        nat_addr: [198, 18, 1, 10],
        nat_port: 80,
        ..record(n)
    };
    for (caps, want) in [(None, 2), (Some(CAP_DIGEST | CAP_CONTRACT), 1)] {
        let mut p = Pair::new(None, None);
        if let Some(c) = caps {
            // A peer of the version before static translations.
            p.b.settings.capabilities = c;
        }
        p.add(record(1));
        p.add(inbound(2));
        p.connect();
        p.settle();
        assert_eq!(p.b.sessions().len(), want, "{caps:?}");
        assert_eq!(p.a.stats.encode_failures, 2 - want as u64, "{caps:?}");
    }
    // Before the hellos nothing is known of the peer: such a record is
    // refused as any other (repair sends it later), not counted as one
    // the peer cannot take.
    let mut p = Pair::new(None, None);
    p.connect();
    let c = p.a.conn.as_mut().unwrap();
    assert!(!c.add(&inbound(4), p.now, &mut p.a.stats));
    assert_eq!((p.a.stats.encode_failures, p.a.stats.send_discard), (0, 1));
    // Static without a translation is no record.
    let bad = SessionRecord {
        flags: REC_STATIC,
        nat_addr: [0; 4],
        nat_port: 0,
        ..record(3)
    };
    assert_eq!(bad.validate(2), Err(NackReason::IllegalFlow));
}

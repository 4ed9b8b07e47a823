//! Session offload: the owner worker hands an established session's two
//! directions to the XDP program's flow map, and the program forwards
//! their packets itself (rewrite, `XDP_REDIRECT` through a devmap) without
//! a trip through AF_XDP.
//!
//! Design: the worker stays the owner. It decides once (TCP after the
//! handshake, UDP after the first reply), writes one [`FlowEntry`] per
//! direction with everything the program needs precomputed (MACs, egress
//! slot and MTU, the translation and its RFC 1624 checksum deltas), and
//! takes them back when the session closes or ages out, reading what the
//! program forwarded. Packets that change the session's state (TCP SYN,
//! FIN, RST) or need an ICMP error still reach the worker.
//!
//! The flow table is an mmapable BPF array of 64-byte slots, one cache
//! line per direction, indexed by a seeded hash with up to
//! [`FLOW_WAYS`] linear-probe ways ([`FlowSlot`] has the layout and the
//! sequence lock). A per-CPU kernel hash map cost the program three
//! dependent cache misses per lookup (bucket, element, per-CPU value) and
//! a jhash; a slot costs one line and a few multiplies. Workers map the
//! table and write, read and remove slots in place: no syscall and no
//! allocation per install. The sequence lock assumes x86's store and
//! load ordering, which the program (JIT-compiled, volatile reads) and
//! the atomics here both keep.
//!
//! IPv6 directions (never translated) do not fit a slot with their key:
//! they go to a kernel hash map ([`FlowMap6`]), one `bpf(2)` call per
//! install, read or removal.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence},
};

use tandem_common::{
    FLOW_BYTES_WORD, FLOW_KEY2_MASK, FLOW_LAST_SEEN_OFF, FLOW_NAT_DESTINATION, FLOW_NAT_NONE,
    FLOW_NAT_SOURCE, FLOW_PACKETS_WORD, FLOW_PROBE_OFF, FLOW_SEQ_OFF, FLOW_TICK_SHIFT, FLOW_WAYS,
    FlowEntry, FlowEntry6, FlowSlot, FlowV4Key, FlowV6Key, flow_hash, flow_key_words, flow_words,
};
use tandem_control::config::Config;

use crate::{
    session::{FlowKey, Session},
    wire::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

/// The IPv6 flow map, as a worker holds it.
pub type FlowMap6 = aya::maps::HashMap<aya::maps::MapData, FlowV6Key, FlowEntry6>;

/// One direction's key in the flow map of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKey {
    V4(FlowV4Key),
    V6(FlowV6Key),
}

/// Largest flow table the daemon creates, in slots (64 MiB).
pub const MAX_FLOWS: u32 = 1 << 20;

/// The flow table's size for `cfg` with `workers` workers, in slots: a
/// power of two at least twice the directions of every session the
/// workers can hold (so that probes stay short), up to [`MAX_FLOWS`].
pub fn capacity(cfg: &Config, workers: u32) -> u32 {
    cfg.sessions
        .per_worker
        .saturating_mul(workers)
        .saturating_mul(4)
        .clamp(FLOW_WAYS, MAX_FLOWS)
        .next_power_of_two()
}

/// The translation one direction gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    None,
    /// Source address and port become these.
    Source([u8; 4], u16),
    /// Destination address and port become these.
    Destination([u8; 4], u16),
}

/// Where one direction leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    pub slot: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub mtu: u16,
}

/// One's-complement sum of `~old + new` over the 16-bit words of two
/// equally long byte strings, not folded.
fn word_delta(old: &[u8], new: &[u8]) -> u32 {
    old.chunks_exact(2)
        .zip(new.chunks_exact(2))
        .map(|(o, n)| {
            u32::from(!u16::from_be_bytes([o[0], o[1]]))
                + u32::from(u16::from_be_bytes([n[0], n[1]]))
        })
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// `~old + new` of the TTL/protocol word when the TTL drops by one:
/// `~w + (w - 0x100)` is `0xffff - 0x100` whatever `w` is.
const TTL_DELTA: u32 = 0xfeff;

/// The flow map key of a packet with session key `k`: IPv4 TCP, UDP and
/// ICMP (echo: sessions of no other ICMP type exist) only, what the
/// program's fast path parses.
pub fn key_of(k: &FlowKey) -> Option<FlowV4Key> {
    if ![PROTO_TCP, PROTO_UDP, PROTO_ICMP].contains(&k.proto) {
        return None;
    }
    Some(FlowV4Key {
        src: k.src_v4()?,
        dst: k.dst_v4()?,
        sport: k.sport.to_be_bytes(),
        dport: k.dport.to_be_bytes(),
        proto: k.proto,
        pad: [0; 3],
    })
}

/// The entry for packets with key `key` leaving by `out`, translated by
/// `nat`.
pub fn entry(key: &FlowV4Key, out: Egress, nat: Nat) -> FlowEntry {
    let (kind, old_addr, old_port, addr, port) = match nat {
        Nat::None => (FLOW_NAT_NONE, key.src, key.sport, key.src, key.sport),
        Nat::Source(a, p) => (FLOW_NAT_SOURCE, key.src, key.sport, a, p.to_be_bytes()),
        Nat::Destination(a, p) => (FLOW_NAT_DESTINATION, key.dst, key.dport, a, p.to_be_bytes()),
    };
    let addr_delta = word_delta(&old_addr, &addr);
    // ICMP's checksum has no pseudo-header: only the echo identifier.
    let l4_addr_delta = if key.proto == PROTO_ICMP {
        0
    } else {
        addr_delta
    };
    FlowEntry {
        dst_mac: out.dst_mac,
        src_mac: out.src_mac,
        tx_slot: u16::try_from(out.slot).unwrap_or(u16::MAX),
        mtu: out.mtu,
        nat: kind,
        nat_addr: addr,
        nat_port: port,
        ip_delta: fold(addr_delta + TTL_DELTA),
        l4_delta: fold(l4_addr_delta + word_delta(&old_port, &port)),
    }
}

/// Adds what the program has forwarded so far for an offloaded `s` to its
/// counters and moves its `last_seen` (second `now`, CLOCK_MONOTONIC_COARSE
/// `now_ns`) to the latest fast-path packet: a listing's copy, the
/// entries stay.
pub fn add_forwarded(flows: &mut FlowMap, s: &mut Session, now: u32, now_ns: u64) {
    let Some(f) = forwarded(flows, s) else {
        return;
    };
    for (i, d) in f.iter().enumerate() {
        s.packets[i] += d.packets;
        s.bytes[i] += d.bytes;
    }
    s.last_seen = s.last_seen.max(last_seen(&f, now, now_ns));
}

/// What the program has forwarded for an offloaded `s`, per direction
/// (initiator's, responder's); `None` if `s` is not offloaded.
pub fn forwarded(flows: &mut FlowMap, s: &Session) -> Option<[Forwarded; 2]> {
    if !s.is_offloaded() {
        return None;
    }
    let dirs = directions(s)?;
    Some(dirs.map(|(k, _)| flows.read_dir(&k).unwrap_or_default()))
}

/// The worker second (of `now`, at CLOCK_MONOTONIC_COARSE `now_ns`) of the
/// latest packet in `f`; 0 if there was none.
pub fn last_seen(f: &[Forwarded; 2], now: u32, now_ns: u64) -> u32 {
    let last = f[0].last_seen_ns.max(f[1].last_seen_ns);
    if last == 0 {
        return 0;
    }
    let idle = u32::try_from(now_ns.saturating_sub(last) / 1_000_000_000).unwrap_or(u32::MAX);
    now.saturating_sub(idle)
}

/// What an IPv6 entry says the program forwarded.
fn forwarded6(e: &FlowEntry6) -> Forwarded {
    Forwarded {
        packets: e.packets,
        bytes: e.bytes,
        last_seen_ns: seen_ns(e.last_seen, monotonic_ns()),
    }
}

/// The IPv6 flow map key of a packet with session key `k`: TCP, UDP and
/// ICMPv6 (echo) between IPv6 addresses.
pub fn key6_of(k: &FlowKey) -> Option<FlowV6Key> {
    if k.src_v4().is_some()
        || k.dst_v4().is_some()
        || ![PROTO_TCP, PROTO_UDP, PROTO_ICMPV6].contains(&k.proto)
    {
        return None;
    }
    Some(FlowV6Key {
        src: k.src,
        dst: k.dst,
        sport: k.sport.to_be_bytes(),
        dport: k.dport.to_be_bytes(),
        proto: k.proto,
        pad: [0; 3],
    })
}

/// The two directions of session `s`: (initiator's key and translation,
/// responder's key and translation). `None` for what the fast path does
/// not carry (protocols without ports, translated IPv6).
pub fn directions(s: &Session) -> Option<[(DirKey, Nat); 2]> {
    if let (Some(init), Some(reply)) = (key6_of(&s.key), key6_of(&s.reply_key())) {
        return s.nat().is_none().then_some([
            (DirKey::V6(init), Nat::None),
            (DirKey::V6(reply), Nat::None),
        ]);
    }
    let init = key_of(&s.key)?;
    let reply = key_of(&s.reply_key())?;
    Some(match s.nat() {
        Some((addr, port)) => [
            (DirKey::V4(init), Nat::Source(addr, port)),
            (DirKey::V4(reply), Nat::Destination(init.src, s.key.sport)),
        ],
        None => [
            (DirKey::V4(init), Nat::None),
            (DirKey::V4(reply), Nat::None),
        ],
    })
}

/// What the program forwarded for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds of the latest packet, to about a
    /// millisecond; 0: none.
    pub last_seen_ns: u64,
}

/// Why a write to the flow table failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Every way of the key's home slot is taken.
    Full,
    /// The slot stayed locked by another writer.
    Busy,
}

/// How often a writer retries a slot another writer holds before giving
/// up (writers hold a slot for a few stores).
const SPINS: u32 = 10_000;

/// A shared read-write mapping of the first `len` bytes of the values of
/// the mmapable array behind `fd` (the kernel refuses a length beyond it).
fn map_shared<T>(fd: &OwnedFd, len: usize) -> io::Result<NonNull<T>> {
    // SAFETY: a fresh mapping, checked before use; it aliases nothing in
    // this process.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)
}

/// The length of [`Clock`]'s mapping: the kernel maps array values in
/// whole pages.
const CLOCK_LEN: usize = 4096;

/// The clock the program stamps `last_seen` with (the `TND_CLOCK` map),
/// mapped into this process. The program reads it instead of a kernel
/// clock; every worker moves it forward once per loop
/// ([`FLOW_TICK_SHIFT`]).
#[derive(Debug)]
pub struct Clock {
    page: NonNull<AtomicU32>,
}

// SAFETY: the mapping is shared memory reached only through an atomic.
unsafe impl Send for Clock {}

impl Drop for Clock {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), CLOCK_LEN) };
    }
}

impl Clock {
    /// Maps the clock behind `fd` (an mmapable array of one `u32`).
    pub fn new(fd: &OwnedFd) -> io::Result<Self> {
        Ok(Self {
            page: map_shared(fd, CLOCK_LEN)?,
        })
    }

    fn cell(&self) -> &AtomicU32 {
        // SAFETY: the first (aligned) word of the mapping, only accessed
        // atomically here; the program reads it whole.
        unsafe { self.page.as_ref() }
    }

    /// The tick the program stamps now.
    pub fn tick(&self) -> u32 {
        self.cell().load(Ordering::Relaxed)
    }

    /// Sets the clock to `tick` as it is, back or forth (tests: the
    /// workers only [`Self::advance`] it).
    pub fn set(&self, tick: u32) {
        self.cell().store(tick, Ordering::Relaxed);
    }

    /// Moves the clock to CLOCK_MONOTONIC_COARSE `now_ns`, never back:
    /// workers advance it each from its own reading, and a worker that
    /// read the time before another stored a later one leaves it. Tick 0
    /// means "never seen", so it is skipped.
    pub fn advance(&self, now_ns: u64) {
        #[expect(clippy::cast_possible_truncation, reason = "ticks wrap")]
        let tick = ((now_ns >> FLOW_TICK_SHIFT) as u32).max(1);
        let cell = self.cell();
        let mut cur = cell.load(Ordering::Relaxed);
        // Ahead means less than half the ring ahead; 0 is the unset clock.
        while cur == 0 || tick.wrapping_sub(cur).wrapping_sub(1) < u32::MAX / 2 {
            match cell.compare_exchange_weak(cur, tick, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// A handle on the flow table, mapped into this process. Each worker has
/// its own; they coordinate through each slot's sequence lock.
#[derive(Debug)]
pub struct FlowMap {
    base: NonNull<FlowSlot>,
    slots: u32,
    seed: u32,
    /// IPv6 directions: a kernel hash map, written with bpf(2) (IPv6 keys
    /// do not fit a slot with their entry).
    v6: Option<FlowMap6>,
    /// The program's clock, which this handle's worker moves.
    clock: Option<Clock>,
}

// SAFETY: the mapping is shared memory that every access reaches through
// atomics; nothing in it is tied to the creating thread.
unsafe impl Send for FlowMap {}

impl Drop for FlowMap {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.slots as usize * size_of::<FlowSlot>(),
            );
        }
    }
}

impl FlowMap {
    /// Maps the table behind `fd` (an mmapable array of `slots` slots, a
    /// power of two, hashed with `seed`).
    pub fn new(fd: &OwnedFd, slots: u32, seed: u32) -> io::Result<Self> {
        if !slots.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let base = map_shared(fd, slots as usize * size_of::<FlowSlot>())?;
        Ok(Self {
            base,
            slots,
            seed,
            v6: None,
            clock: None,
        })
    }

    /// This handle with the IPv6 flow map too.
    #[must_use]
    pub fn with_v6(mut self, map: FlowMap6) -> Self {
        self.v6 = Some(map);
        self
    }

    /// This handle with the program's clock, which [`Self::advance_clock`]
    /// moves.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Moves the program's clock to now (a worker calls this once per
    /// loop); CLOCK_MONOTONIC_COARSE, read through the vDSO.
    pub fn advance_clock(&self) {
        if let Some(c) = &self.clock {
            c.advance(monotonic_ns());
        }
    }

    /// Installs (or replaces) direction `key`, leaving by `out` translated
    /// by `nat` (always `Nat::None` for IPv6), with zeroed counters.
    pub fn install(&mut self, key: &DirKey, out: Egress, nat: Nat) -> Result<(), WriteError> {
        match key {
            DirKey::V4(k) => self.insert(k, &entry(k, out, nat)),
            DirKey::V6(k) => {
                let map = self.v6.as_mut().ok_or(WriteError::Busy)?;
                let e = FlowEntry6 {
                    key: *k,
                    dst_mac: out.dst_mac,
                    src_mac: out.src_mac,
                    tx_slot: u16::try_from(out.slot).unwrap_or(u16::MAX),
                    mtu: out.mtu,
                    ..FlowEntry6::default()
                };
                map.insert(k, e, 0).map_err(|err| match err {
                    aya::maps::MapError::SyscallError(e)
                        if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                    {
                        WriteError::Full
                    }
                    _ => WriteError::Busy,
                })
            }
        }
    }

    /// What the program forwarded for direction `key`, if installed.
    pub fn read_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        match key {
            DirKey::V4(k) => self.read(k),
            DirKey::V6(k) => {
                let e = self.v6.as_ref()?.get(k, 0).ok()?;
                Some(forwarded6(&e))
            }
        }
    }

    /// Removes direction `key`, returning what it forwarded.
    pub fn remove_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        match key {
            DirKey::V4(k) => self.remove(k),
            DirKey::V6(k) => {
                // One call, so that a packet the program counts into the
                // entry is lost only inside the kernel's few instructions
                // between copy and unlink, not across two system calls;
                // two calls on kernels before 5.14, which refuse it for
                // hash maps.
                let map = self.v6.as_mut()?;
                match crate::sys::bpf_lookup_and_delete(map, k) {
                    Ok(got) => got.map(|e| forwarded6(&e)),
                    Err(e)
                        if matches!(
                            e.io_error.raw_os_error(),
                            Some(libc::EINVAL | crate::sys::ENOTSUPP)
                        ) =>
                    {
                        let got = forwarded6(&map.get(k, 0).ok()?);
                        map.remove(k).ok().map(|()| got)
                    }
                    Err(_) => None,
                }
            }
        }
    }

    fn ptr(&self, i: u32) -> *mut FlowSlot {
        // SAFETY: `i` is masked below `slots`, inside the mapping.
        unsafe { self.base.as_ptr().add((i & (self.slots - 1)) as usize) }
    }

    fn seq(&self, i: u32) -> &AtomicU16 {
        // SAFETY: an aligned u16 inside the mapping, only accessed
        // atomically here (the program reads it volatile).
        unsafe { AtomicU16::from_ptr(self.ptr(i).cast::<u16>().add(FLOW_SEQ_OFF / 2)) }
    }

    fn probe(&self, i: u32) -> &AtomicU8 {
        // SAFETY: as for `seq`.
        unsafe { AtomicU8::from_ptr(self.ptr(i).cast::<u8>().add(FLOW_PROBE_OFF)) }
    }

    fn last_seen(&self, i: u32) -> &AtomicU32 {
        // SAFETY: as for `seq` (the program stores it whole).
        unsafe { AtomicU32::from_ptr(self.ptr(i).cast::<u32>().add(FLOW_LAST_SEEN_OFF / 4)) }
    }

    fn word(&self, i: u32, w: usize) -> &AtomicU64 {
        // SAFETY: as for `seq` (the program adds to words 6 and 7
        // atomically).
        unsafe { AtomicU64::from_ptr(self.ptr(i).cast::<u64>().add(w)) }
    }

    fn home(&self, key: &FlowV4Key) -> (u32, u64, u64) {
        let (w1, w2) = flow_key_words(key);
        (flow_hash(w1, w2, self.seed) & (self.slots - 1), w1, w2)
    }

    fn holds(&self, i: u32, w1: u64, w2: u64) -> bool {
        self.word(i, 1).load(Ordering::Relaxed) == w1
            && self.word(i, 2).load(Ordering::Relaxed) & FLOW_KEY2_MASK == w2
    }

    fn is_empty(&self, i: u32) -> bool {
        self.word(i, 2).load(Ordering::Relaxed) & FLOW_KEY2_MASK == 0
    }

    /// The slot holding `key`, if any (unlocked: callers lock and check).
    fn find(&self, key: &FlowV4Key) -> Option<u32> {
        let (home, w1, w2) = self.home(key);
        (0..FLOW_WAYS)
            .map(|way| (home + way) & (self.slots - 1))
            .find(|&i| self.holds(i, w1, w2))
    }

    /// Locks slot `i` (its sequence number goes odd); the even value it
    /// had. Spins while another writer holds it.
    fn lock(&self, i: u32) -> Option<u16> {
        let seq = self.seq(i);
        for _ in 0..SPINS {
            let cur = seq.load(Ordering::Relaxed);
            if cur & 1 == 0
                && seq
                    .compare_exchange(
                        cur,
                        cur.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return Some(cur);
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Unlocks slot `i` locked at `was`: readers see a new number if it
    /// was written, the old one if not.
    fn unlock(&self, i: u32, was: u16, written: bool) {
        let next = if written { was.wrapping_add(2) } else { was };
        self.seq(i).store(next, Ordering::Release);
    }

    /// Writes words 1-7 and `last_seen` of locked slot `i`.
    fn fill(&self, i: u32, words: [u64; 5]) {
        for (w, v) in words.iter().enumerate() {
            self.word(i, w + 1).store(*v, Ordering::Relaxed);
        }
        self.word(i, FLOW_PACKETS_WORD).store(0, Ordering::Relaxed);
        self.word(i, FLOW_BYTES_WORD).store(0, Ordering::Relaxed);
        self.last_seen(i).store(0, Ordering::Relaxed);
    }

    /// The counters of slot `i`, at CLOCK_MONOTONIC_COARSE `now_ns`.
    fn counts(&self, i: u32, now_ns: u64) -> Forwarded {
        Forwarded {
            packets: self.word(i, FLOW_PACKETS_WORD).load(Ordering::Relaxed),
            bytes: self.word(i, FLOW_BYTES_WORD).load(Ordering::Relaxed),
            last_seen_ns: seen_ns(self.last_seen(i).load(Ordering::Relaxed), now_ns),
        }
    }

    /// Installs (or replaces) `key`'s entry, with zeroed counters.
    pub fn insert(&mut self, key: &FlowV4Key, e: &FlowEntry) -> Result<(), WriteError> {
        let words = flow_words(key, e);
        let (home, w1, w2) = self.home(key);
        // In place if installed; else the first free way. Another worker
        // may take a free way between the look and the lock: check again
        // under the lock and go on.
        let installed = self.find(key);
        for way in 0..FLOW_WAYS {
            let i = (home + way) & (self.slots - 1);
            let wanted = match installed {
                Some(at) => at == i,
                None => self.is_empty(i),
            };
            if !wanted {
                continue;
            }
            let was = self.lock(i).ok_or(WriteError::Busy)?;
            if !(self.is_empty(i) || self.holds(i, w1, w2)) {
                self.unlock(i, was, false);
                continue;
            }
            self.fill(i, words);
            #[expect(clippy::cast_possible_truncation, reason = "way < FLOW_WAYS = 8")]
            self.probe(home).fetch_max(way as u8, Ordering::Relaxed);
            self.unlock(i, was, true);
            return Ok(());
        }
        Err(WriteError::Full)
    }

    /// What the program forwarded for `key`, if it is installed.
    pub fn read(&mut self, key: &FlowV4Key) -> Option<Forwarded> {
        let (_, w1, w2) = self.home(key);
        let now_ns = monotonic_ns();
        for _ in 0..SPINS {
            let i = self.find(key)?;
            let seq = self.seq(i).load(Ordering::Acquire);
            if seq & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let (ok, got) = (self.holds(i, w1, w2), self.counts(i, now_ns));
            fence(Ordering::Acquire);
            if self.seq(i).load(Ordering::Relaxed) == seq {
                return ok.then_some(got);
            }
        }
        None
    }

    /// Empties locked slot `i`, returning its counters if it held
    /// anything.
    fn take(&self, i: u32, now_ns: u64) -> Option<Forwarded> {
        if self.is_empty(i) {
            return None;
        }
        let got = self.counts(i, now_ns);
        self.fill(i, [0; 5]);
        Some(got)
    }

    /// Removes every entry; how many. A node that stops forwarding clears
    /// the table so that nothing it offloaded outlives its sessions. The
    /// probe bytes stay (they only bound lookups).
    pub fn clear(&mut self) -> usize {
        let now_ns = monotonic_ns();
        let mut n = 0;
        if let Some(m) = self.v6.as_mut() {
            let keys: Vec<FlowV6Key> = m.keys().filter_map(Result::ok).collect();
            n += keys.iter().filter(|k| m.remove(k).is_ok()).count();
        }
        for i in 0..self.slots {
            if self.is_empty(i) {
                continue;
            }
            let Some(was) = self.lock(i) else {
                continue;
            };
            let took = self.take(i, now_ns).is_some();
            self.unlock(i, was, took);
            n += usize::from(took);
        }
        n
    }

    /// Removes `key`'s entry, returning what it forwarded.
    pub fn remove(&mut self, key: &FlowV4Key) -> Option<Forwarded> {
        let (_, w1, w2) = self.home(key);
        let i = self.find(key)?;
        let was = self.lock(i)?;
        let got = if self.holds(i, w1, w2) {
            self.take(i, monotonic_ns())
        } else {
            None
        };
        self.unlock(i, was, got.is_some());
        got
    }
}

/// The CLOCK_MONOTONIC_COARSE time of a last-seen `tick` the program
/// stamped (`ns >> FLOW_TICK_SHIFT`, 0: none), read at `now_ns`.
fn seen_ns(tick: u32, now_ns: u64) -> u64 {
    if tick == 0 {
        return 0;
    }
    // The program may have stamped a tick after `now_ns` was read.
    let age = ((now_ns >> FLOW_TICK_SHIFT) as u32).wrapping_sub(tick);
    let age = if age > u32::MAX / 2 { 0 } else { age };
    now_ns
        .saturating_sub(u64::from(age) << FLOW_TICK_SHIFT)
        .max(1)
}

/// CLOCK_MONOTONIC_COARSE now, in nanoseconds (the clock the workers
/// publish to the program, which stamps the flow entries with it).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;
    use crate::wire::{self, Rewrite};

    /// The program's rewrite, step for step, in Rust: the privileged
    /// BPF_PROG_RUN test checks the program itself against the worker.
    fn fast(frame: &mut [u8], e: &FlowEntry) {
        let apply = |c: u16, d: u16| !fold(u32::from(!c) + u32::from(d));
        frame[..6].copy_from_slice(&e.dst_mac);
        frame[6..12].copy_from_slice(&e.src_mac);
        frame[22] -= 1;
        let (udp, icmp) = (frame[23] == 17, frame[23] == 1);
        let csum_at = match frame[23] {
            17 => 34 + 6,
            1 => 34 + 2,
            _ => 34 + 16,
        };
        let (addr_at, port_at) = match (e.nat, icmp) {
            (FLOW_NAT_SOURCE, false) => (26, 34),
            (FLOW_NAT_DESTINATION, false) => (30, 36),
            (FLOW_NAT_SOURCE, true) => (26, 38),
            (FLOW_NAT_DESTINATION, true) => (30, 38),
            _ => (0, 0),
        };
        if addr_at != 0 {
            frame[addr_at..addr_at + 4].copy_from_slice(&e.nat_addr);
            frame[port_at..port_at + 2].copy_from_slice(&e.nat_port);
            let old = u16::from_be_bytes([frame[csum_at], frame[csum_at + 1]]);
            if !(udp && old == 0) {
                let mut new = apply(old, e.l4_delta);
                if udp && new == 0 {
                    new = 0xffff;
                }
                frame[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
        let old = u16::from_be_bytes([frame[24], frame[25]]);
        frame[24..26].copy_from_slice(&apply(old, e.ip_delta).to_be_bytes());
    }

    /// A frame of protocol `proto` (6, 17, or 1: an echo request with
    /// identifier `sport`).
    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64);
        let mut out = Vec::new();
        match proto {
            6 => b
                .tcp(sport, dport, 7, 1000)
                .ack(9)
                .write(&mut out, b"payload")
                .unwrap(),
            17 => b.udp(sport, dport).write(&mut out, b"payload").unwrap(),
            _ => b
                .icmpv4_echo_request(sport, 3)
                .write(&mut out, b"payload")
                .unwrap(),
        }
        out
    }

    const OUT: Egress = Egress {
        slot: 1,
        dst_mac: [0xa; 6],
        src_mac: [0xb; 6],
        mtu: 1500,
    };

    /// The worker's path for the same packet: TTL, MACs, then NAT.
    fn worker(frame: &mut [u8], nat: Nat) {
        wire::decrement_ttl_v4(frame, 14);
        frame[..6].copy_from_slice(&OUT.dst_mac);
        frame[6..12].copy_from_slice(&OUT.src_mac);
        let ip = wire::parse(frame).unwrap();
        let l4 = wire::parse_l4(frame, &ip).unwrap();
        match nat {
            Nat::None => {}
            Nat::Source(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Source, a, p),
            Nat::Destination(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Destination, a, p),
        }
    }

    #[test]
    fn precomputed_deltas_rewrite_like_the_worker() {
        for proto in [6, 17, 1] {
            for nat in [
                Nat::None,
                Nat::Source([198, 18, 2, 100], 20001),
                Nat::Destination([198, 18, 1, 10], 40000),
                Nat::Source([255, 255, 0, 1], 65535),
            ] {
                let frame = packet(proto, [198, 18, 1, 10], [198, 18, 2, 10], 40000, 7);
                let ip = wire::parse(&frame).unwrap();
                let l4 = wire::parse_l4(&frame, &ip).unwrap();
                let key = FlowV4Key {
                    src: [198, 18, 1, 10],
                    dst: [198, 18, 2, 10],
                    sport: l4.sport.to_be_bytes(),
                    dport: l4.dport.to_be_bytes(),
                    proto: l4.proto,
                    pad: [0; 3],
                };
                let flow = entry(&key, OUT, nat);
                let (mut by_xdp, mut by_worker) = (frame.clone(), frame.clone());
                fast(&mut by_xdp, &flow);
                worker(&mut by_worker, nat);
                assert_eq!(by_xdp, by_worker, "protocol {proto} {nat:?}");
                // And both verify.
                let p = SlicedPacket::from_ethernet(&by_xdp).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                    panic!()
                };
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                match &p.transport {
                    Some(TransportSlice::Tcp(t)) => assert_eq!(
                        t.checksum(),
                        t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
                    ),
                    Some(TransportSlice::Udp(u)) => assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap()
                    ),
                    Some(TransportSlice::Icmpv4(i)) => assert_eq!(
                        i.checksum(),
                        etherparse::Icmpv4Header::with_checksum(i.icmp_type(), i.payload())
                            .checksum
                    ),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// What the fast path cannot parse is never offloaded: the listing
    /// would call the session offloaded while the worker forwards it.
    #[test]
    fn only_what_the_fast_path_parses_has_directions() {
        for (proto, carried) in [(6, true), (17, true), (1, true), (47, false), (132, false)] {
            let s = Session::new(
                FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 0, 0, proto),
                1,
                crate::session::Origin::Inside,
                0,
                0,
            );
            assert_eq!(directions(&s).is_some(), carried, "protocol {proto}");
        }
        let v6 = Session::new(
            FlowKey {
                src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                ..FlowKey::v4([0; 4], [198, 18, 2, 10], 1, 2, 17)
            },
            1,
            crate::session::Origin::Inside,
            0,
            0,
        );
        assert!(directions(&v6).is_none(), "mixed families");
    }

    /// A memfd of `len` bytes: the same shared mapping as a BPF array's,
    /// without privileges.
    fn memfd(len: i64) -> OwnedFd {
        // SAFETY: a fresh memfd, sized before it is mapped.
        unsafe {
            let raw = libc::memfd_create(c"tandem-test".as_ptr(), 0);
            assert!(raw >= 0);
            assert_eq!(libc::ftruncate(raw, len), 0);
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw)
        }
    }

    /// A table of `slots` slots in a memfd.
    fn table(slots: u32) -> FlowMap {
        FlowMap::new(&memfd(i64::from(slots) * 64), slots, 0x5eed).unwrap()
    }

    /// A memfd page mapped as the clock.
    fn clock() -> Clock {
        Clock::new(&memfd(4096)).unwrap()
    }

    #[test]
    fn the_clock_only_moves_forward_and_never_to_zero() {
        let c = clock();
        let ns = |tick: u32| u64::from(tick) << FLOW_TICK_SHIFT;
        assert_eq!(c.tick(), 0);
        // Unset, it takes any time, even one more than half the ring on.
        c.advance(ns(0x9000_0000));
        assert_eq!(c.tick(), 0x9000_0000);
        c.advance(ns(0x9000_0005));
        assert_eq!(c.tick(), 0x9000_0005);
        // A worker that read the time earlier leaves it.
        c.advance(ns(0x9000_0001));
        assert_eq!(c.tick(), 0x9000_0005);
        // Across the wrap; tick 0 ("never seen") is skipped.
        c.set(u32::MAX - 1);
        c.advance(1 << 32 << FLOW_TICK_SHIFT);
        assert_eq!(c.tick(), 1);
        c.advance(ns(3));
        assert_eq!(c.tick(), 3);
        // Half the ring or more ahead reads as behind.
        c.advance(ns(3 + u32::MAX / 2 + 1));
        assert_eq!(c.tick(), 3);
    }

    fn flow(port: u16) -> FlowV4Key {
        FlowV4Key {
            src: [198, 18, 1, 10],
            dst: [198, 18, 2, 10],
            sport: port.to_be_bytes(),
            dport: 7u16.to_be_bytes(),
            proto: 17,
            pad: [0; 3],
        }
    }

    fn stored(m: &FlowMap, key: &FlowV4Key) -> Option<FlowEntry> {
        let i = m.find(key)?;
        let w: [u64; 5] = std::array::from_fn(|n| m.word(i, n + 1).load(Ordering::Relaxed));
        Some(tandem_common::flow_entry(&w))
    }

    #[test]
    fn table_installs_replaces_and_removes_in_place() {
        let mut t = table(1024);
        let (one, two) = (flow(1000), flow(1001));
        let first = entry(&one, OUT, Nat::Source([198, 18, 2, 100], 20001));
        t.insert(&one, &first).unwrap();
        t.insert(&two, &entry(&two, OUT, Nat::None)).unwrap();
        assert_eq!(stored(&t, &one), Some(first));
        assert_eq!(t.read(&one), Some(Forwarded::default()));
        // The program's side: counters and a tick.
        let at = t.find(&one).unwrap();
        t.word(at, FLOW_PACKETS_WORD)
            .fetch_add(3, Ordering::Relaxed);
        t.word(at, FLOW_BYTES_WORD)
            .fetch_add(180, Ordering::Relaxed);
        let now = monotonic_ns();
        t.last_seen(at)
            .store((now >> FLOW_TICK_SHIFT) as u32, Ordering::Relaxed);
        let got = t.read(&one).unwrap();
        assert_eq!((got.packets, got.bytes), (3, 180));
        assert!(got.last_seen_ns > 0 && now.abs_diff(got.last_seen_ns) < 10_000_000);
        // Replacing keeps the slot and zeroes the counters; each write
        // moves the sequence number by two.
        let seq = t.seq(at).load(Ordering::Relaxed);
        let moved = Egress { mtu: 1400, ..OUT };
        t.insert(&one, &entry(&one, moved, Nat::None)).unwrap();
        assert_eq!(t.find(&one), Some(at));
        assert_eq!(t.seq(at).load(Ordering::Relaxed), seq.wrapping_add(2));
        assert_eq!(stored(&t, &one).map(|e| e.mtu), Some(1400));
        assert_eq!(t.read(&one).map(|f| f.packets), Some(0));
        assert_eq!(t.remove(&one).map(|f| f.packets), Some(0));
        assert_eq!((t.read(&one), t.remove(&one)), (None, None));
        assert!(t.read(&two).is_some());
        assert_eq!(t.clear(), 1);
        assert!(t.read(&two).is_none());
        assert_eq!(t.clear(), 0);
    }

    #[test]
    fn a_full_home_refuses_and_probes_say_how_far_to_look() {
        // Eight slots: every key's ways cover the whole table.
        let mut m = table(FLOW_WAYS);
        let keys: Vec<FlowV4Key> = (0..=FLOW_WAYS as u16).map(|p| flow(2000 + p)).collect();
        for k in &keys[..FLOW_WAYS as usize] {
            m.insert(k, &entry(k, OUT, Nat::None)).unwrap();
        }
        let last = &keys[FLOW_WAYS as usize];
        assert_eq!(
            m.insert(last, &entry(last, OUT, Nat::None)),
            Err(WriteError::Full)
        );
        // Every key is found within its home slot's probe distance, as
        // the program looks.
        for k in &keys[..FLOW_WAYS as usize] {
            let (home, ..) = m.home(k);
            let at = m.find(k).unwrap();
            let way = (at + FLOW_WAYS - home) % FLOW_WAYS;
            assert!(u32::from(m.probe(home).load(Ordering::Relaxed)) >= way);
        }
        // A removal frees a way for the refused key.
        m.remove(&keys[3]).unwrap();
        m.insert(last, &entry(last, OUT, Nat::None)).unwrap();
        assert!(m.read(last).is_some() && m.read(&keys[3]).is_none());
        // A slot another writer holds is busy, not full.
        let i = m.find(last).unwrap();
        let was = m.lock(i).unwrap();
        assert_eq!(
            m.insert(last, &entry(last, OUT, Nat::None)),
            Err(WriteError::Busy)
        );
        m.unlock(i, was, false);
        assert_eq!(m.seq(i).load(Ordering::Relaxed), was);
    }

    #[test]
    fn directions_translate_both_ways() {
        use crate::session::{Origin, Session};
        let k = FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 40000, 7, 17);
        let mut s = Session::new(k, 1, Origin::Inside, 0, 0);
        assert_eq!(
            directions(&s).unwrap(),
            [
                (DirKey::V4(key_of(&k).unwrap()), Nat::None),
                (DirKey::V4(key_of(&k.reversed()).unwrap()), Nat::None)
            ]
        );
        s.set_nat([198, 18, 2, 100], 20001);
        let [(DirKey::V4(i), ni), (DirKey::V4(r), nr)] = directions(&s).unwrap() else {
            panic!("IPv4 directions");
        };
        assert_eq!(ni, Nat::Source([198, 18, 2, 100], 20001));
        assert_eq!(
            (r.dst, r.dport),
            ([198, 18, 2, 100], 20001u16.to_be_bytes())
        );
        assert_eq!(nr, Nat::Destination([198, 18, 1, 10], 40000));
        assert_eq!(i.src, [198, 18, 1, 10]);
        let mixed = FlowKey { src: [1; 16], ..k };
        assert!(directions(&Session::new(mixed, 2, Origin::Inside, 0, 0)).is_none());
        // IPv6: both directions, never translated.
        let v6 = FlowKey {
            src: [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            dst: [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            ..k
        };
        let mut s6 = Session::new(v6, 3, Origin::Inside, 0, 0);
        let [(DirKey::V6(i), Nat::None), (DirKey::V6(r), Nat::None)] = directions(&s6).unwrap()
        else {
            panic!("IPv6 directions");
        };
        assert_eq!(
            (i.src, i.sport, r.src, r.dport),
            (
                v6.src,
                40000u16.to_be_bytes(),
                v6.dst,
                40000u16.to_be_bytes()
            )
        );
        s6.set_nat([198, 18, 2, 100], 20001);
        assert!(directions(&s6).is_none(), "no NAT66 on the fast path");
    }
}

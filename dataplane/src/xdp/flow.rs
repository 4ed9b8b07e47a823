//! The flow table the XDP program forwards offloaded sessions from,
//! mapped into this process.
//!
//! Design: an mmapable BPF array of 64-byte slots, one cache line per
//! direction, indexed by a seeded hash with up to [`FLOW_WAYS`]
//! linear-probe ways ([`FlowSlot`] has the layout and the sequence lock).
//! A per-CPU kernel hash map cost the program three dependent cache misses
//! per lookup (bucket, element, per-CPU value) and a jhash; a slot costs
//! one line and a few multiplies. Workers map the table and write, read
//! and remove slots in place: no syscall and no allocation per install.
//!
//! The sequence lock: a writer makes the slot's number odd (an acquiring
//! compare-and-swap, then a release fence so that no store of the entry
//! is seen before the odd number), stores the entry, and makes the number
//! even again with a release store. The program reads the number, the
//! entry, and the number again. The program's side relies on x86-64's
//! ordering (its JIT keeps loads in program order and BPF has no
//! acquire load on the kernels we support), so this module refuses to
//! build for another architecture rather than race there.
//!
//! IPv6 directions (never translated) do not fit a slot with their key:
//! they go to a kernel hash map ([`FlowMap6`]), one `bpf(2)` call per
//! install, read or removal.
#![expect(
    unsafe_code,
    reason = "the flow table is a BPF array mapped into this process and shared with the program"
)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "the XDP flow table's sequence lock relies on x86-64 memory ordering on the BPF side; \
     port ebpf/xdp's slot reads to load-acquire before building tandem for another architecture"
);

use std::{
    io,
    os::fd::OwnedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence},
};

use tandem_common::{
    FLOW_BYTES_WORD, FLOW_KEY2_MASK, FLOW_LAST_SEEN_OFF, FLOW_PACKETS_WORD, FLOW_PROBE_OFF,
    FLOW_SEQ_OFF, FLOW_TICK_SHIFT, FLOW_WAYS, FlowEntry, FlowEntry6, FlowSlot, FlowV4Key,
    FlowV6Key, flow_hash, flow_key_words, flow_words,
};

use tandem_packet::offload::{DirKey, Egress, FlowTable, Forwarded, Nat, WriteError, entry};

use super::clock::Clock;
use crate::sys::{self, monotonic_ns};

/// The IPv6 flow map, as a worker holds it.
pub type FlowMap6 = aya::maps::HashMap<aya::maps::MapData, FlowV6Key, FlowEntry6>;

/// How often a writer retries a slot another writer holds before giving
/// up (writers hold a slot for a few stores).
const SPINS: u32 = 10_000;

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
        // SAFETY: the mapping `new` made, unmapped once; nothing refers
        // into it after the drop.
        unsafe { sys::unmap(self.base, self.slots as usize * size_of::<FlowSlot>()) };
    }
}

impl FlowMap {
    /// Maps the table behind `fd` (an mmapable array of `slots` slots, a
    /// power of two, hashed with `seed`).
    pub fn new(fd: &OwnedFd, slots: u32, seed: u32) -> io::Result<Self> {
        if !slots.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let base = sys::map_shared(fd, slots as usize * size_of::<FlowSlot>())?;
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
                // No store of the entry may be seen before the odd number
                // (free on x86-64; a barrier where stores can pass stores).
                fence(Ordering::Release);
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

impl FlowTable for FlowMap {
    fn advance_clock(&self) {
        if let Some(c) = &self.clock {
            c.advance(monotonic_ns());
        }
    }

    fn install(&mut self, key: &DirKey, out: Egress, nat: Nat) -> Result<(), WriteError> {
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

    fn read_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        match key {
            DirKey::V4(k) => self.read(k),
            DirKey::V6(k) => {
                let e = self.v6.as_ref()?.get(k, 0).ok()?;
                Some(forwarded6(&e))
            }
        }
    }

    fn remove_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        match key {
            DirKey::V4(k) => self.remove(k),
            DirKey::V6(k) => {
                // One call, so that a packet the program counts into the
                // entry is lost only inside the kernel's few instructions
                // between copy and unlink, not across two system calls;
                // two calls on kernels before 5.14, which refuse it for
                // hash maps.
                let map = self.v6.as_mut()?;
                match sys::bpf_lookup_and_delete(map, k) {
                    Ok(got) => got.map(|e| forwarded6(&e)),
                    Err(e)
                        if matches!(
                            e.io_error.raw_os_error(),
                            Some(libc::EINVAL | sys::ENOTSUPP)
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

    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// What an IPv6 entry says the program forwarded.
fn forwarded6(e: &FlowEntry6) -> Forwarded {
    Forwarded {
        packets: e.packets,
        bytes: e.bytes,
        last_seen_ns: seen_ns(e.last_seen, monotonic_ns()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::testutil::{OUT, memfd};

    /// A table of `slots` slots in a memfd.
    fn table(slots: u32) -> FlowMap {
        FlowMap::new(&memfd(i64::from(slots) * 64), slots, 0x5eed).unwrap()
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
}

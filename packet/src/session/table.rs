//! One worker's session table: a preallocated slab, an index holding both
//! directions of every session, and a timer wheel for aging.
//!
//! Design: the index is a `hashbrown::HashTable<u32>` whose entries are
//! `slot << 1 | side`; the key is never stored twice but recomputed from the
//! slab (the reply key follows from the session and its NAT binding). The
//! index is sized at four entries per session, twice what two directions
//! need, so hashbrown's insert always finds room or rehashes in place over
//! tombstones: it never reallocates under traffic. Aging is a lazy wheel of
//! one-second ticks: a packet only stamps `last_seen`; when a session's tick
//! comes round, it expires or moves to the tick of its new deadline.
//!
//! A lookup costs two dependent cache misses in the index (its control
//! group, then its entry) before the slab: [`Table::prefetch`] starts both
//! for a batch of packets before any of them is looked up.
#![expect(
    unsafe_code,
    reason = "the index's allocator records the one block hashbrown allocates, so that lookups can be prefetched"
)]

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};
use hashbrown::HashTable;
use tandem_control::sync::{Digest, wire::PROTOCOLS};

use super::{FlowKey, Session, Side, Timeouts, timeout};

const NIL: u32 = u32::MAX;
/// Wheel size in one-second ticks (a power of two); longer timeouts wrap.
const WHEEL: usize = 4096;

/// The table is at capacity: a new session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

pub struct Table {
    slots: Vec<Session>,
    /// Links of the wheel lists, parallel to `slots`: (prev, next).
    links: Vec<(u32, u32)>,
    free: Vec<u32>,
    index: HashTable<u32, Remembered>,
    wheel: Vec<u32>,
    /// Last tick processed.
    tick: u32,
    /// While tick `tick + 1` is being walked: the rest of its list, taken
    /// off the wheel (`NIL` once walked). Aging goes in bounded steps, so
    /// packets are handled between them.
    walking: Option<u32>,
    len: usize,
    /// Stubs among them (see [`Session::remote`]).
    stubs: usize,
    timeouts: Timeouts,
    /// Seconds a synced session outlives its timeout: the peer that owns
    /// it refreshes long-lived flows, and its deletes arrive in time.
    grace: u32,
    /// The replication digest of the sessions of replicated protocols
    /// (stubs aside: they stand for sessions another worker holds), kept
    /// as they come and go.
    digest: Digest,
}

/// Whether sessions of `proto` replicate (and so count in the digest).
fn replicates(proto: u8) -> bool {
    PROTOCOLS.contains(&proto)
}

/// What [`Table::advance`] did with a session whose tick came round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aged {
    /// Its deadline passed: it was removed.
    Expired,
    /// It saw traffic since it was scheduled: it moved to its new deadline.
    Extended,
}

fn side_bit(side: Side) -> u32 {
    match side {
        Side::Initiator => 0,
        Side::Responder => 1,
    }
}

/// The global allocator, remembering the block the index lives in, so
/// that [`Table::prefetch`] can find a key's probe group without reading
/// the table. The index allocates once (see the module's notes).
#[derive(Default)]
pub(crate) struct Remembered {
    /// Address and size of the newest block; (0, 0) before the first.
    block: Cell<(usize, usize)>,
    /// Ask for transparent huge pages for a block of 2 MiB or more
    /// (`MADV_HUGEPAGE`, before hashbrown first writes it): a table probed
    /// at random then costs no page walk per probe.
    huge: bool,
}

impl Remembered {
    /// An allocator that asks for huge pages (see `huge`).
    pub(crate) fn huge() -> Self {
        Self {
            block: Cell::new((0, 0)),
            huge: true,
        }
    }
}

// SAFETY: every call is passed on to the global allocator unchanged.
unsafe impl Allocator for Remembered {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = Global.allocate(layout)?;
        let (at, len) = (p.cast::<u8>().as_ptr() as usize, layout.size());
        if self.huge && len >= 2 << 20 {
            // The whole 2 MiB pages inside the block; a hint only (a
            // kernel without THP, or with it off, says no: nothing lost).
            let start = at.next_multiple_of(2 << 20);
            let end = (at + len) & !((2 << 20) - 1);
            if end > start {
                // SAFETY: [start, end) lies within the block just
                // allocated; MADV_HUGEPAGE changes no content.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
        self.block.set((at, len));
        Ok(p)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if ptr.as_ptr() as usize == self.block.get().0 {
            self.block.set((0, 0));
        }
        // SAFETY: the caller's promise, passed on: `ptr` came from
        // `allocate` with this layout, which took it from `Global`.
        unsafe { Global.deallocate(ptr, layout) }
    }
}

/// Control bytes hashbrown compares at once (its SSE2 group on x86_64).
pub(crate) const GROUP: usize = 16;

impl Remembered {
    /// Address and size of the block the table lives in.
    #[cfg(test)]
    pub(crate) fn block(&self) -> (usize, usize) {
        self.block.get()
    }

    /// Starts loading the control byte and the entry where a probe for
    /// `hash` starts in the table this allocator holds, whose entries are
    /// `T`s (see [`probe_start`]). A hint only: a table of another shape
    /// gets none.
    #[inline]
    pub(crate) fn prefetch<T>(&self, hash: u64) {
        let (base, size) = self.block.get();
        if let Some((ctrl, entry)) = probe_start(base, size, hash, size_of::<T>()) {
            crate::hint::prefetch(ctrl as *const u8);
            crate::hint::prefetch(entry as *const u8);
        }
    }
}

/// Where hashbrown 0.15 keeps the probe group a hash starts at, in a
/// block of `size` bytes at `base` holding entries of `entry` bytes (a
/// multiple of 4, at most 16): the entries (`buckets` of them, the last
/// at the lowest address) sit right below the control bytes (`buckets` +
/// [`GROUP`]); a hash starts at bucket `hash & (buckets - 1)`. Returns the
/// address of that bucket's control byte and of its entry, or `None` if
/// the block does not have that shape.
pub(crate) fn probe_start(
    base: usize,
    size: usize,
    hash: u64,
    entry: usize,
) -> Option<(usize, usize)> {
    let buckets = size.checked_sub(GROUP)? / (entry + 1);
    if base == 0 || !buckets.is_power_of_two() || buckets < GROUP {
        return None;
    }
    let ctrl = base + buckets * entry;
    let pos = hash as usize & (buckets - 1);
    Some((ctrl + pos, ctrl - (pos + 1) * entry))
}

fn key_of(slots: &[Session], e: u32) -> FlowKey {
    let s = &slots[(e >> 1) as usize];
    if e & 1 == 0 { s.key } else { s.reply_key() }
}

impl Table {
    /// A table for `capacity` sessions, allocated once, now.
    pub fn new(capacity: usize, timeouts: Timeouts, now: u32) -> Self {
        Self {
            slots: vec![Session::default(); capacity],
            links: vec![(NIL, NIL); capacity],
            free: (0..capacity as u32).rev().collect(),
            index: HashTable::with_capacity_in(capacity * 4, Remembered::default()),
            wheel: vec![NIL; WHEEL],
            tick: now,
            walking: None,
            len: 0,
            stubs: 0,
            timeouts,
            grace: 0,
            digest: Digest::default(),
        }
    }

    /// Sessions held (stubs aside).
    pub fn len(&self) -> usize {
        self.len - self.stubs
    }

    /// Stubs held: entries that hand a flow on to the worker holding its
    /// session.
    pub fn stubs(&self) -> usize {
        self.stubs
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the table holds, all allocated at start: the slab, the wheel
    /// links, the free list, the index and the wheel.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Session>()
            + self.links.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.index.allocation_size()
            + self.wheel.capacity() * std::mem::size_of::<u32>()
    }

    /// Capacity of the index (tests check it never grows).
    pub fn index_capacity(&self) -> usize {
        self.index.capacity()
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Idle timeouts from now on: a session's deadline moves to them at
    /// its next packet, or when its current deadline comes round (a
    /// shorter timeout ends an idle session no later than the old one
    /// would have).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// Sets how long synced sessions outlive their timeouts.
    pub fn set_grace(&mut self, seconds: u32) {
        self.grace = seconds;
    }

    /// The session a packet with key `k` belongs to, and which side sent it.
    #[inline]
    pub fn lookup(&self, k: &FlowKey) -> Option<(u32, Side)> {
        let slots = &self.slots;
        self.index
            .find(k.table_hash(), |&e| key_of(slots, e) == *k)
            .map(|&e| {
                let side = if e & 1 == 0 {
                    Side::Initiator
                } else {
                    Side::Responder
                };
                (e >> 1, side)
            })
    }

    /// Starts loading what a lookup of a key with table hash `hash` will
    /// read from the index: the control group its probe starts at and the
    /// entries of that group (which sit below one another, so the group's
    /// are the 64 bytes below its first). A hint only: a table of another
    /// shape gets none.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let (base, size) = self.index.allocator().block.get();
        if let Some((ctrl, entry)) = probe_start(base, size, hash, size_of::<u32>()) {
            crate::hint::prefetch(ctrl as *const u8);
            crate::hint::prefetch(entry as *const u8);
            // The group's last entry, 15 below its first.
            crate::hint::prefetch((entry - (GROUP - 1) * size_of::<u32>()) as *const u8);
        }
    }

    #[inline]
    pub fn get(&self, slot: u32) -> &Session {
        &self.slots[slot as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Session {
        &mut self.slots[slot as usize]
    }

    /// Whether both keys of `s` are free (no other session uses them).
    pub fn keys_free(&self, s: &Session) -> bool {
        self.lookup(&s.key).is_none() && self.lookup(&s.reply_key()).is_none()
    }

    /// Adds `s` (whose keys must be free) and schedules its expiry.
    pub fn insert(&mut self, s: Session) -> Result<u32, TableFull> {
        let slot = self.free.pop().ok_or(TableFull)?;
        let keys = [s.key.table_hash(), s.reply_key().table_hash()];
        self.slots[slot as usize] = s;
        for (bit, h) in keys.into_iter().enumerate() {
            let slots = &self.slots;
            self.index.insert_unique(h, slot << 1 | bit as u32, |&e| {
                key_of(slots, e).table_hash()
            });
        }
        self.len += 1;
        self.stubs += usize::from(s.remote != 0);
        if replicates(s.key.proto) && s.remote == 0 {
            self.digest.add(s.key.digest_hash());
        }
        self.schedule(slot);
        Ok(slot)
    }

    /// Removes the session in `slot` and returns it.
    pub fn remove(&mut self, slot: u32) -> Session {
        let s = self.slots[slot as usize];
        for side in [Side::Initiator, Side::Responder] {
            let k = if side == Side::Initiator {
                s.key
            } else {
                s.reply_key()
            };
            let want = slot << 1 | side_bit(side);
            if let Ok(e) = self.index.find_entry(k.table_hash(), |&e| e == want) {
                e.remove();
            }
        }
        self.unlink(slot);
        self.slots[slot as usize] = Session::default();
        self.free.push(slot);
        self.len -= 1;
        self.stubs -= usize::from(s.remote != 0);
        if replicates(s.key.proto) && s.remote == 0 {
            self.digest.remove(s.key.digest_hash());
        }
        s
    }

    /// The digest of the sessions here that replicate.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Moves a session to the tick of its current deadline. Needed when
    /// the deadline came earlier (a state with a shorter timeout); a later
    /// one is found lazily when the old tick comes round.
    pub fn reschedule(&mut self, slot: u32) {
        self.unlink(slot);
        self.schedule(slot);
    }

    fn deadline(&self, slot: u32) -> u32 {
        let s = &self.slots[slot as usize];
        let grace = if s.is_synced() { self.grace } else { 0 };
        s.last_seen
            .saturating_add(timeout(&self.timeouts, s))
            .saturating_add(grace)
    }

    fn schedule(&mut self, slot: u32) {
        // A deadline already past (a synced session idle longer than its
        // timeout here) goes to the next tick not yet begun: not to one
        // processed, nor to the one being walked (its list is off the wheel).
        let first = self.tick + if self.walking.is_some() { 2 } else { 1 };
        let at = (self.deadline(slot).max(first) as usize) % WHEEL;
        let head = self.wheel[at];
        self.links[slot as usize] = (NIL, head);
        if head != NIL {
            self.links[head as usize].0 = slot;
        }
        self.wheel[at] = slot;
        self.slots[slot as usize].tick = at as u16;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = self.links[slot as usize];
        if prev == NIL {
            let at = self.slots[slot as usize].tick as usize;
            if self.walking == Some(slot) {
                self.walking = Some(next);
            } else if self.wheel[at] == slot {
                self.wheel[at] = next;
            }
        } else {
            self.links[prev as usize].1 = next;
        }
        if next != NIL {
            self.links[next as usize].0 = prev;
        }
        self.links[slot as usize] = (NIL, NIL);
    }

    /// Advances the clock to `now` (seconds), removing every session whose
    /// deadline passed and handing each to `aged` as [`Aged::Expired`].
    /// Sessions whose deadline moved since they were scheduled are
    /// rescheduled and handed over as [`Aged::Extended`].
    pub fn advance(&mut self, now: u32, mut aged: impl FnMut(Aged, &Session)) {
        let _ = self.advance_with(now, usize::MAX, |_| {}, |a, s| aged(a, s));
    }

    /// [`Self::advance`] in a step of at most `budget` sessions, first
    /// handing each session whose deadline passed to `refresh`, which may
    /// move its `last_seen` (an offloaded session's packets do not pass the
    /// worker); `aged` may change an extended session's flags. True when the clock has reached `now`; false when the
    /// budget ran out first: the next call goes on where this one stopped.
    /// A million sessions expiring in one second would otherwise hold the
    /// worker off its rings for as long as they take.
    pub fn advance_with(
        &mut self,
        now: u32,
        mut budget: usize,
        mut refresh: impl FnMut(&mut Session),
        mut aged: impl FnMut(Aged, &mut Session),
    ) -> bool {
        loop {
            let cur = match self.walking {
                Some(NIL) => {
                    self.tick += 1;
                    self.walking = None;
                    continue;
                }
                Some(cur) => cur,
                None => {
                    if now <= self.tick {
                        return true;
                    }
                    // After a gap longer than the wheel, each list once.
                    self.tick = self.tick.max(now.saturating_sub(WHEEL as u32));
                    let at = (self.tick as usize + 1) % WHEEL;
                    self.walking = Some(std::mem::replace(&mut self.wheel[at], NIL));
                    continue;
                }
            };
            if budget == 0 {
                return false;
            }
            budget -= 1;
            // Take `cur` off the list being walked; its successor heads it.
            let next = self.links[cur as usize].1;
            if next != NIL {
                self.links[next as usize].0 = NIL;
            }
            self.walking = Some(next);
            self.links[cur as usize] = (NIL, NIL);
            if self.deadline(cur) <= now {
                refresh(&mut self.slots[cur as usize]);
            }
            if self.deadline(cur) <= now {
                // Linked nowhere now, so remove() unlinks nothing.
                let mut s = self.remove(cur);
                aged(Aged::Expired, &mut s);
            } else {
                self.schedule(cur);
                aged(Aged::Extended, &mut self.slots[cur as usize]);
            }
        }
    }

    /// Removes the live sessions `pick` chooses among at most `max_slots`
    /// slots from `from`, handing each to `removed`; returns the slot to
    /// continue from (`None`: done).
    pub fn sweep(
        &mut self,
        from: u32,
        max_slots: usize,
        pick: impl Fn(&Session) -> bool,
        mut removed: impl FnMut(&Session),
    ) -> Option<u32> {
        let start = (from as usize).min(self.slots.len());
        let end = start.saturating_add(max_slots).min(self.slots.len());
        for slot in start..end {
            let s = &self.slots[slot];
            if s.is_live() && pick(s) {
                let s = self.remove(slot as u32);
                removed(&s);
            }
        }
        (end < self.slots.len()).then_some(end as u32)
    }

    /// [`Self::scan`] with each session open to change (not its keys: the
    /// index holds them).
    pub fn scan_mut(
        &mut self,
        from: u32,
        max_slots: usize,
        mut f: impl FnMut(&mut Session),
    ) -> Option<u32> {
        let start = from as usize;
        let end = start.saturating_add(max_slots).min(self.slots.len());
        for s in self.slots.get_mut(start..end).unwrap_or(&mut []) {
            if s.is_live() && s.remote == 0 {
                f(s);
            }
        }
        (end < self.slots.len()).then_some(end as u32)
    }

    /// Visits the live sessions (not stubs) among at most `max_slots`
    /// slots from `from`; returns the slot to continue from (`None`: the
    /// walk is done).
    /// Listings walk the table this way, a bounded chunk per iteration.
    pub fn scan(&self, from: u32, max_slots: usize, mut f: impl FnMut(&Session)) -> Option<u32> {
        let start = from as usize;
        let end = start.saturating_add(max_slots).min(self.slots.len());
        for s in self.slots.get(start..end).unwrap_or(&[]) {
            if s.is_live() && s.remote == 0 {
                f(s);
            }
        }
        (end < self.slots.len()).then_some(end as u32)
    }
}

#[cfg(test)]
mod tests;

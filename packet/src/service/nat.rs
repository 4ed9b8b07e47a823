//! NAPT44 port pools, partitioned across workers, handed out to
//! subscribers in blocks.
//!
//! Design: a pool's port range is cut into one contiguous slice per worker,
//! the same slice on every pool address, so the owner of a translated flow
//! follows from its port alone: return traffic is handed to that worker.
//! A subscriber (inside address) lives on one worker
//! ([`crate::session::Placement`]) and takes that worker's slice a block
//! of `block_size` ports at a time, up to `blocks_per_subscriber` blocks,
//! all on one pool address (paired pooling: the first block picks it).
//! Its mappings take ports of its blocks only, so a subscriber flooding
//! new flows exhausts its own blocks, never another's (RFC 6888 REQ-4),
//! and a block's allocation and release is one log line for all its
//! ports. Under endpoint-independent mapping (RFC 4787 REQ-1) an inside
//! (address, port, protocol) keeps one external pair for all its
//! sessions: a mapping, counted by the sessions that use it.
//!
//! Each worker keeps a bitmap of its (address, port) pairs, allocated once
//! at start, and per pair the mapping's inside endpoint and use count.
//! A port is searched for from a random place in a block (RFC 6056's
//! simple randomization: an off-path attacker cannot guess the next
//! port), and a released pair waits out the reuse delay (RFC 6888 REQ-8,
//! 120 s by default) in a queue before it is free again, so a new
//! mapping never gets a port whose last flow's stragglers may still
//! arrive. A block goes back to the pool when its last mapping ends; it
//! is handed out again only once none of its ports is bound or cooling.
//! A standby marks the bindings its peer replicates with
//! [`PortPool::reserve`] (rebuilding the mappings, blocks and counts from
//! them), so it never hands them out again after a failover. Nothing here
//! allocates after start.

use std::{collections::VecDeque, net::Ipv4Addr};

use hashbrown::{HashMap, HashTable};
use tandem_control::config::{Filtering, MAX_BLOCKS_PER_SUBSCRIBER, Mapping, Nat};

use crate::session::table::Remembered;

/// An inside endpoint, packed: protocol (bits 48-55), port (32-47),
/// address (0-31). Never 0 for a translated flow (its protocol is not).
pub fn endpoint(addr: [u8; 4], port: u16, proto: u8) -> u64 {
    u64::from(proto) << 48 | u64::from(port) << 32 | u64::from(u32::from_be_bytes(addr))
}

/// The subscriber (inside address) of an endpoint.
fn subscriber_of(ep: u64) -> u32 {
    ep as u32
}

/// Why a new flow got no mapping: each has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No block left for the subscriber (on its pool address, once it
    /// has one), or no room for another subscriber.
    PoolExhausted,
    /// The subscriber holds all its blocks and every port of them is
    /// bound or cooling.
    SubscriberPorts,
    /// The subscriber has `sessions_per_subscriber` sessions.
    SubscriberSessions,
    /// The subscriber opened `subscriber_sessions_per_sec` this second.
    SubscriberRate,
}

/// One subscriber's share: its blocks and counts.
#[derive(Clone, Copy, Debug)]
struct Subscriber {
    /// Its inside address.
    who: u32,
    blocks: [u32; MAX_BLOCKS_PER_SUBSCRIBER as usize],
    n: u8,
    /// Its pool address (index), while it holds a block.
    addr: u8,
    /// Mappings (bound pairs) and sessions it has.
    ports: u32,
    sessions: u32,
    /// New sessions left this second, and the second.
    tokens: u32,
    second: u32,
}

impl Subscriber {
    const fn new(who: u32, now: u32, rate: u32) -> Self {
        Self {
            who,
            blocks: [0; MAX_BLOCKS_PER_SUBSCRIBER as usize],
            n: 0,
            addr: 0,
            ports: 0,
            sessions: 0,
            tokens: rate,
            second: now,
        }
    }

    fn remove_block(&mut self, b: u32) {
        let n = usize::from(self.n);
        if let Some(i) = self.blocks[..n].iter().position(|&x| x == b) {
            self.blocks[i] = self.blocks[n - 1];
            self.n -= 1;
        }
    }

    fn idle(&self) -> bool {
        self.n == 0 && self.sessions == 0 && self.ports == 0
    }
}

/// One pool address's use in a worker's share, as views show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressUse {
    pub addr: [u8; 4],
    pub ports: u32,
    pub ports_in_use: u32,
    pub ports_cooling: u32,
    pub blocks: u32,
    pub blocks_in_use: u32,
}

/// One subscriber as views show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberView {
    pub inside: [u8; 4],
    pub pool_addr: [u8; 4],
    pub blocks: u32,
    pub ports: u32,
    pub sessions: u32,
}

/// An endpoint-independent mapping: its inside endpoint, its pair's bit
/// and the sessions using it (the count lives here, beside the key a
/// session's end looks up, so releasing one reads one cache line).
#[derive(Clone, Copy, Debug)]
struct Mapped {
    ep: u64,
    bit: u32,
    refs: u32,
}

/// One worker's share of a NAT pool.
pub struct PortPool {
    addrs: Vec<[u8; 4]>,
    lo: u16,
    /// Ports per worker.
    span: u32,
    /// This worker's first port.
    first: u16,
    /// Bit `a * span + (port - first)` is set while that pair is bound
    /// or cooling; the bits past the last pair are set for good.
    used: Vec<u64>,
    /// Per pair, under address-and-port-dependent mapping: the inside
    /// endpoint of its one session (0: none).
    eps: Vec<u64>,
    /// Per pair, under endpoint-independent mapping whose filtering lets
    /// anything in (`track`): the inside port of its mapping, which a
    /// packet from outside finds its way in by (the inside host is the
    /// pair's block's holder; the map confirms the whole endpoint). Two
    /// bytes a pair, so a new mapping's one write there lands on a line
    /// 32 pairs share. Under address-and-port-dependent filtering
    /// nothing comes in that way: binding and releasing then touch no
    /// per-pair line beyond the bitmaps.
    inside_ports: Vec<u16>,
    /// Writes to `inside_ports` not yet made, their lines prefetched when
    /// queued: a new mapping's write would otherwise miss the cache on the
    /// packet's path (and stall the next locked instruction). Made when
    /// the queue is full, at every [`Self::tick`] and before a packet
    /// from outside looks a port up.
    port_writes: [(u32, u16); PORT_WRITES],
    port_writes_len: usize,
    track: bool,
    filtering: Filtering,
    /// Under address-dependent filtering: per (pair, outside host), the
    /// sessions of the pair's mapping with that host.
    remotes: HashMap<(u32, u32), u32, foldhash::fast::RandomState>,
    /// Per pair: the table slot of a synced session holding it, so a
    /// newer binding from the peer can evict a stale one (written by a
    /// standby's installs only; `u32::MAX`: none recorded).
    holders: Vec<u32>,
    free: usize,
    /// Set while a released pair waits out the reuse delay (its `used`
    /// bit stays set meanwhile).
    cooling: Vec<u64>,
    /// The waiting pairs, oldest first: (bit, second of the release).
    /// Room for every pair, allocated once (a pair is in it at most once).
    queue: VecDeque<(u32, u32)>,
    delay: u32,
    /// The session clock's second, as [`Self::tick`] last set it.
    now: u32,
    /// xorshift64 state for the searches' random starts.
    rng: u64,
    /// Endpoint-independent mapping: the mappings by inside endpoint,
    /// hashed once per lookup with a per-process seed.
    eim: bool,
    mappings: HashTable<Mapped, Remembered>,
    hasher: foldhash::fast::RandomState,
    /// Ports per block, and blocks per pool address (the last one of an
    /// address may be shorter).
    block: u32,
    per_addr: u32,
    /// Per block (`a * per_addr + b`): the subscriber slot holding it
    /// plus one (0: none), and the mappings bound in it.
    block_owner: Vec<u32>,
    block_maps: Vec<u32>,
    /// Per block: its pairs neither bound nor cooling, and its pairs no
    /// forwarded port holds for good.
    block_free: Vec<u32>,
    block_cap: Vec<u32>,
    /// Per pool address: its blocks held by nobody with every pair free.
    ready: Vec<u32>,
    blocks_held: usize,
    /// Inside address to subscriber slot; the slots, allocated once, and
    /// the free ones.
    subs: HashMap<u32, u32, foldhash::fast::RandomState>,
    slab: Vec<Subscriber>,
    spare: Vec<u32>,
    max_blocks: u8,
    max_sessions: u32,
    rate: u32,
    /// Blocks handed out or returned since [`Self::take_block_log`] last
    /// ran, for the event log: (allocated, subscriber, block). Bounded
    /// (allocated once); past it a change goes unlogged, counted.
    block_log: Vec<(bool, u32, u32)>,
    block_log_lost: u64,
}

/// `inside_ports` writes a pool holds back (see `port_writes`).
const PORT_WRITES: usize = 32;

/// Block changes a pool keeps for the event log between two drains.
const BLOCK_LOG: usize = 256;

/// A port block change for the event log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEvent {
    pub allocated: bool,
    pub inside: [u8; 4],
    pub pool: [u8; 4],
    pub first: u16,
    pub last: u16,
}

/// Why a worker's share of a NAT pool could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("NAT port range {lo}-{hi} has fewer ports than the {workers} workers")]
    TooFewPorts { lo: u16, hi: u16, workers: usize },
}

/// The first clear bit of `used` in `from..to`.
fn first_clear(used: &[u64], from: usize, to: usize) -> Option<usize> {
    let mut i = from;
    while i < to {
        let w = i / 64;
        let end = (w + 1) * 64;
        let mut word = used[w] | ((1u64 << (i % 64)) - 1);
        if to < end {
            word |= !0u64 << (to % 64);
        }
        if word != !0 {
            return Some(w * 64 + word.trailing_ones() as usize);
        }
        i = end;
    }
    None
}

impl PortPool {
    /// Worker `worker` of `workers`'s share of `nat`, for a table of
    /// `sessions` sessions (a mapping has at least one). Errs when the
    /// range has fewer ports than workers.
    pub fn new(
        nat: &Nat,
        worker: usize,
        workers: usize,
        sessions: usize,
    ) -> Result<Self, PoolError> {
        use std::hash::BuildHasher as _;
        let span = nat.ports.len() / workers as u32;
        if span == 0 {
            return Err(PoolError::TooFewPorts {
                lo: nat.ports.lo,
                hi: nat.ports.hi,
                workers,
            });
        }
        let first = u32::from(nat.ports.lo) + span * worker as u32;
        let addrs: Vec<[u8; 4]> = nat.pool.iter().map(Ipv4Addr::octets).collect();
        let pairs = addrs.len() * span as usize;
        let mut used = vec![0u64; pairs.div_ceil(64)];
        if !pairs.is_multiple_of(64) {
            *used.last_mut().expect("at least one word") = !0u64 << (pairs % 64);
        }
        let block = u32::from(nat.block_size.max(1)).min(span);
        let n_addrs = addrs.len();
        let per_addr = span.div_ceil(block);
        let blocks = addrs.len() * per_addr as usize;
        let eim = nat.mapping == Mapping::EndpointIndependent;
        // Under address-and-port-dependent mapping a pair serves one
        // session, whose own replies are all that may come in.
        let filtering = if eim {
            nat.filtering
        } else {
            Filtering::AddressAndPortDependent
        };
        let track = eim && filtering != Filtering::AddressAndPortDependent;
        let block_sizes: Vec<u32> = (0..blocks)
            .map(|b| {
                let i = b as u32 % per_addr;
                (span - i * block).min(block)
            })
            .collect();
        // Each subscriber holds a block while it has a mapping; a few more
        // for a standby's records that name a block another holds.
        let subs = blocks + 64;
        Ok(Self {
            addrs,
            lo: nat.ports.lo,
            span,
            first: first as u16,
            used,
            eps: if eim { Vec::new() } else { vec![0; pairs] },
            inside_ports: if track { vec![0; pairs] } else { Vec::new() },
            port_writes: [(0, 0); PORT_WRITES],
            port_writes_len: 0,
            track,
            filtering,
            remotes: HashMap::with_capacity_and_hasher(
                if filtering == Filtering::AddressDependent {
                    sessions
                } else {
                    0
                },
                foldhash::fast::RandomState::default(),
            ),
            holders: vec![u32::MAX; pairs],
            free: pairs,
            cooling: vec![0u64; pairs.div_ceil(64)],
            queue: VecDeque::with_capacity(pairs),
            delay: nat.port_reuse_delay_s,
            now: 0,
            // Per process and worker: a random seed (never 0).
            rng: std::collections::hash_map::RandomState::new().hash_one(worker) | 1,
            eim,
            mappings: HashTable::with_capacity_in(
                if eim { pairs.min(sessions) } else { 0 },
                Remembered::huge(),
            ),
            hasher: foldhash::fast::RandomState::default(),
            block,
            per_addr,
            block_owner: vec![0; blocks],
            block_maps: vec![0; blocks],
            block_free: block_sizes.clone(),
            block_cap: block_sizes,
            ready: vec![per_addr; n_addrs],
            blocks_held: 0,
            subs: HashMap::with_capacity_and_hasher(subs, foldhash::fast::RandomState::default()),
            slab: vec![Subscriber::new(0, 0, 0); subs],
            spare: (0..subs as u32).rev().collect(),
            max_blocks: nat.blocks_per_subscriber.min(MAX_BLOCKS_PER_SUBSCRIBER) as u8,
            max_sessions: nat.sessions_per_subscriber,
            rate: nat.subscriber_sessions_per_sec,
            block_log: Vec::with_capacity(BLOCK_LOG),
            block_log_lost: 0,
        }
        .with_forwards(nat))
    }

    /// Takes the pairs of `nat`'s forwarded ports that fall in this
    /// share out of use for good: no mapping is ever given one.
    fn with_forwards(mut self, nat: &Nat) -> Self {
        for f in &nat.forwards {
            let Some(bit) = self.bit(f.outside.ip().octets(), f.outside.port()) else {
                continue;
            };
            if self.used[bit / 64] & 1 << (bit % 64) != 0 {
                continue;
            }
            self.used[bit / 64] |= 1 << (bit % 64);
            self.free -= 1;
            let b = self.block_of(bit);
            self.block_free[b] -= 1;
            self.block_cap[b] -= 1;
            if self.block_cap[b] == 0 {
                // Every pair of it forwarded: never handed out.
                self.ready[b / self.per_addr as usize] -= 1;
            }
        }
        self
    }

    /// Moves the pool's clock to `now` (seconds): pairs whose reuse delay
    /// has passed are free again.
    pub fn tick(&mut self, now: u32) {
        self.write_ports();
        self.now = now;
        while let Some(&(bit, at)) = self.queue.front() {
            if now.saturating_sub(at) < self.delay {
                break;
            }
            self.queue.pop_front();
            let (w, m) = (bit as usize / 64, 1u64 << (bit % 64));
            // A pair the peer bound meanwhile is no longer cooling.
            if self.cooling[w] & m != 0 {
                self.cooling[w] &= !m;
                self.set_free(bit as usize);
            }
        }
    }

    /// The bound or cooling pair `bit` is free again.
    fn set_free(&mut self, bit: usize) {
        self.used[bit / 64] &= !(1u64 << (bit % 64));
        self.free += 1;
        let b = self.block_of(bit);
        self.block_free[b] += 1;
        if self.block_owner[b] == 0 && self.whole(b) {
            self.ready[b / self.per_addr as usize] += 1;
        }
    }

    /// Whether none of block `b`'s pairs is bound or cooling.
    fn whole(&self, b: usize) -> bool {
        self.block_cap[b] != 0 && self.block_free[b] == self.block_cap[b]
    }

    /// Subscriber slot `i` takes block `b`.
    fn hand_block(&mut self, b: usize, i: usize) {
        if self.whole(b) {
            self.ready[b / self.per_addr as usize] -= 1;
        }
        self.block_owner[b] = i as u32 + 1;
        self.blocks_held += 1;
        self.log_block(true, self.slab[i].who, b);
    }

    fn log_block(&mut self, allocated: bool, who: u32, b: usize) {
        if self.block_log.len() < BLOCK_LOG {
            self.block_log.push((allocated, who, b as u32));
        } else {
            self.block_log_lost += 1;
        }
    }

    /// Whether block changes wait for [`Self::take_block_log`].
    #[inline]
    pub fn has_block_log(&self) -> bool {
        !self.block_log.is_empty() || self.block_log_lost > 0
    }

    /// The block changes since the last call (and how many went
    /// unlogged), handed to `f` one by one.
    pub fn take_block_log(&mut self, mut f: impl FnMut(BlockEvent)) -> u64 {
        for i in 0..self.block_log.len() {
            let (allocated, who, b) = self.block_log[i];
            let (lo, hi) = self.block_bits(b as usize);
            let span = self.span as usize;
            let port = |bit: usize| (u32::from(self.first) + (bit % span) as u32) as u16;
            f(BlockEvent {
                allocated,
                inside: who.to_be_bytes(),
                pool: self.addrs[lo / span],
                first: port(lo),
                last: port(hi - 1),
            });
        }
        self.block_log.clear();
        std::mem::take(&mut self.block_log_lost)
    }

    /// Block `b` goes back to the pool.
    fn return_block(&mut self, b: usize) {
        let owner = self.slab[self.block_owner[b] as usize - 1].who;
        self.log_block(false, owner, b);
        self.block_owner[b] = 0;
        self.blocks_held -= 1;
        if self.whole(b) {
            self.ready[b / self.per_addr as usize] += 1;
        }
    }

    /// Pairs waiting out the reuse delay.
    pub fn cooling(&self) -> usize {
        self.cooling.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Searches start at the first pair of a block and blocks are taken
    /// lowest first (a zero xorshift state stays zero).
    #[cfg(test)]
    pub(crate) fn lowest_first(&mut self) {
        self.rng = 0;
    }

    /// A random number below `n` (xorshift64, scaled without a division).
    fn draw(&mut self, n: usize) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (((x >> 32) * n as u64) >> 32) as usize
    }

    pub fn is_pool_address(&self, a: [u8; 4]) -> bool {
        self.addrs.contains(&a)
    }

    /// The worker whose share holds `port` (`None`: outside every share).
    pub fn owner_of_port(&self, port: u16, workers: usize) -> Option<usize> {
        let off = u32::from(port.checked_sub(self.lo)?);
        let w = (off / self.span) as usize;
        (w < workers).then_some(w)
    }

    /// The bit of (`addr`, `port`), if the pair is in this share.
    fn bit(&self, addr: [u8; 4], port: u16) -> Option<usize> {
        let off = u32::from(port.checked_sub(self.first)?);
        if off >= self.span {
            return None;
        }
        let a = self.addrs.iter().position(|x| *x == addr)?;
        Some(a * self.span as usize + off as usize)
    }

    fn pair(&self, bit: usize) -> ([u8; 4], u16) {
        let span = self.span as usize;
        let port = u32::from(self.first) + (bit % span) as u32;
        (self.addrs[bit / span], port as u16)
    }

    /// The block of a pair's bit.
    fn block_of(&self, bit: usize) -> usize {
        let span = self.span as usize;
        (bit / span) * self.per_addr as usize + (bit % span) / self.block as usize
    }

    /// The bits of block `b`.
    fn block_bits(&self, b: usize) -> (usize, usize) {
        let per = self.per_addr as usize;
        let (a, i) = (b / per, b % per);
        let base = a * self.span as usize;
        let lo = base + i * self.block as usize;
        (
            lo,
            (lo + self.block as usize).min(base + self.span as usize),
        )
    }

    /// A free block (held by nobody, none of its ports bound or cooling)
    /// on pool address `addr`, or, for a subscriber's first, on the
    /// address with the most of them (paired pooling spreads subscribers
    /// over the addresses), from a random one on.
    fn free_block(&mut self, addr: Option<usize>) -> Option<usize> {
        let a = if let Some(a) = addr {
            a
        } else {
            let n = self.addrs.len();
            let start = self.draw(n);
            (0..n)
                .map(|k| (start + k) % n)
                .max_by_key(|&a| self.ready[a])?
        };
        if self.ready[a] == 0 {
            return None;
        }
        let per = self.per_addr as usize;
        let start = self.draw(per);
        (0..per)
            .map(|k| a * per + (start + k) % per)
            .find(|&b| self.block_owner[b] == 0 && self.whole(b))
    }

    fn hash(&self, ep: u64) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(ep)
    }

    /// Starts loading where the mapping of `ep` is looked up (its probe
    /// group's control byte and first entry), for a bind or an unbind a
    /// little later: a batch's lookups then overlap their cache misses.
    #[inline]
    pub fn prefetch(&self, ep: u64) {
        if self.eim {
            self.mappings.allocator().prefetch::<Mapped>(self.hash(ep));
        }
    }

    /// The slot of subscriber `who`, made if it has none and there is
    /// room.
    fn slot_of(&mut self, who: u32, now: u32) -> Option<usize> {
        if let Some(&i) = self.subs.get(&who) {
            return Some(i as usize);
        }
        let i = self.spare.pop()?;
        self.slab[i as usize] = Subscriber::new(who, now, self.rate);
        self.subs.insert(who, i);
        Some(i as usize)
    }

    /// Lets slot `i` go if its subscriber has nothing left.
    fn forget_if_idle(&mut self, i: usize) {
        let s = &self.slab[i];
        if s.idle() && self.subs.get(&s.who) == Some(&(i as u32)) {
            self.subs.remove(&s.who);
            self.spare.push(i as u32);
        }
    }

    /// A mapping for the inside endpoint `ep` (see [`endpoint`]) of a new
    /// session at `now`: its existing one under endpoint-independent
    /// mapping, else a free pair of the subscriber's blocks (a new block
    /// when they are full and it may hold another). Counts the session
    /// against the subscriber's limits.
    pub fn bind(&mut self, ep: u64, now: u32) -> Result<([u8; 4], u16), Refusal> {
        let Some(i) = self.slot_of(subscriber_of(ep), now) else {
            return Err(Refusal::PoolExhausted);
        };
        let (max_sessions, rate) = (self.max_sessions, self.rate);
        let sub = &mut self.slab[i];
        if max_sessions != 0 && sub.sessions >= max_sessions {
            return Err(Refusal::SubscriberSessions);
        }
        if rate != 0 {
            if sub.second != now {
                sub.second = now;
                sub.tokens = rate;
            }
            if sub.tokens == 0 {
                return Err(Refusal::SubscriberRate);
            }
        }
        let hash = self.hash(ep);
        if self.eim
            && let Some(m) = self.mappings.find_mut(hash, |m| m.ep == ep)
        {
            m.refs += 1;
            let bit = m.bit as usize;
            let sub = &mut self.slab[i];
            sub.sessions += 1;
            sub.tokens = sub.tokens.saturating_sub(1);
            return Ok(self.pair(bit));
        }
        let bit = match self.search(i) {
            Some(bit) => bit,
            None if self.slab[i].n >= self.max_blocks => {
                return Err(Refusal::SubscriberPorts);
            }
            None => {
                let sub = self.slab[i];
                let on = (sub.n > 0).then_some(usize::from(sub.addr));
                let Some(b) = self.free_block(on) else {
                    self.forget_if_idle(i);
                    return Err(Refusal::PoolExhausted);
                };
                self.hand_block(b, i);
                let a = (b / self.per_addr as usize) as u8;
                let sub = &mut self.slab[i];
                sub.blocks[usize::from(sub.n)] = b as u32;
                sub.n += 1;
                sub.addr = a;
                let (lo, hi) = self.block_bits(b);
                let off = self.draw(hi - lo);
                first_clear(&self.used, lo + off, hi)
                    .or_else(|| first_clear(&self.used, lo, lo + off))
                    .expect("a free block has free ports")
            }
        };
        self.take(bit, ep, hash);
        let sub = &mut self.slab[i];
        sub.ports += 1;
        sub.sessions += 1;
        sub.tokens = sub.tokens.saturating_sub(1);
        Ok(self.pair(bit))
    }

    /// A free pair in subscriber slot `i`'s blocks, from a random block
    /// and port on.
    fn search(&mut self, i: usize) -> Option<usize> {
        let n = usize::from(self.slab[i].n);
        if n == 0 {
            return None;
        }
        let start = self.draw(n);
        for k in 0..n {
            let b = self.slab[i].blocks[(start + k) % n] as usize;
            if self.block_free[b] == 0 {
                continue;
            }
            let (lo, hi) = self.block_bits(b);
            let off = self.draw(hi - lo);
            let found = first_clear(&self.used, lo + off, hi)
                .or_else(|| first_clear(&self.used, lo, lo + off));
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Binds the free pair `bit` to the mapping of `ep` (whose hash is
    /// `hash`).
    fn take(&mut self, bit: usize, ep: u64, hash: u64) {
        self.used[bit / 64] |= 1 << (bit % 64);
        self.free -= 1;
        let b = self.block_of(bit);
        if self.block_owner[b] == 0 && self.whole(b) {
            // A standby binding the peer's pair in a block nobody holds.
            self.ready[b / self.per_addr as usize] -= 1;
        }
        self.block_free[b] -= 1;
        self.block_maps[b] += 1;
        self.map(ep, bit, hash);
    }

    /// Whether pair `bit` is bound to a mapping (not free, not cooling).
    fn bound(&self, bit: usize) -> bool {
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        self.used[w] & m != 0 && self.cooling[w] & m == 0
    }

    /// Enters `ep`'s new mapping on `bit` (hash `hash`) in the map (or,
    /// under address-and-port-dependent mapping, beside the pair).
    fn map(&mut self, ep: u64, bit: usize, hash: u64) {
        if self.eim {
            let hasher = &self.hasher;
            let m = Mapped {
                ep,
                bit: bit as u32,
                refs: 1,
            };
            self.mappings.insert_unique(hash, m, |m| {
                use std::hash::BuildHasher as _;
                hasher.hash_one(m.ep)
            });
        }
        if self.track {
            if self.port_writes_len == PORT_WRITES {
                self.write_ports();
            }
            crate::hint::prefetch(self.inside_ports.as_ptr().wrapping_add(bit).cast());
            self.port_writes[self.port_writes_len] = (bit as u32, (ep >> 32) as u16);
            self.port_writes_len += 1;
        } else if !self.eim {
            self.eps[bit] = ep;
        }
    }

    /// One more session on `ep`'s mapping, bound to `bit`; false when
    /// the pair is not `ep`'s (or, under address-and-port-dependent
    /// mapping, serves its one session already).
    fn add_user(&mut self, ep: u64, bit: usize) -> bool {
        if !self.eim {
            return false;
        }
        let hash = self.hash(ep);
        self.mappings
            .find_mut(hash, |m| m.ep == ep && m.bit == bit as u32)
            .map(|m| m.refs += 1)
            .is_some()
    }

    /// Drops `ep`'s entry in the mapping map if it names `bit`.
    fn unmap(&mut self, ep: u64, bit: usize) {
        if !self.eim {
            if self.eps[bit] == ep {
                self.eps[bit] = 0;
            }
            return;
        }
        let hash = self.hash(ep);
        if let Ok(e) = self
            .mappings
            .find_entry(hash, |m| m.ep == ep && m.bit == bit as u32)
        {
            e.remove();
        }
    }

    /// A session of `ep` on (`addr`, `port`) ended (or, if `refused`, was
    /// refused before it carried a packet): the mapping loses a user; the
    /// last one's end releases the pair (at once if `refused`, else after
    /// the reuse delay), and a block whose last mapping went goes back to
    /// the pool.
    pub fn unbind(&mut self, addr: [u8; 4], port: u16, ep: u64, refused: bool) {
        let bit = self.bit(addr, port);
        // The subscriber: the holder of the pair's block, as a rule (no
        // lookup), else found by its address.
        let who = subscriber_of(ep);
        let sub = bit
            .map(|b| self.block_owner[self.block_of(b)])
            .filter(|&o| o != 0 && self.slab[o as usize - 1].who == who)
            .map(|o| o as usize - 1)
            .or_else(|| self.subs.get(&who).map(|&i| i as usize));
        if let Some(i) = sub {
            let s = &mut self.slab[i];
            s.sessions = s.sessions.saturating_sub(1);
        }
        // The mapping's users, from the map (one probe: the entry, its
        // count and its removal share a cache line) or the pair.
        let last = match bit {
            Some(bit) if self.eim => {
                let hash = self.hash(ep);
                match self
                    .mappings
                    .find_entry(hash, |m| m.ep == ep && m.bit == bit as u32)
                {
                    Ok(mut e) => {
                        e.get_mut().refs -= 1;
                        if e.get().refs == 0 {
                            // The pair's endpoint stays as it is (no
                            // second write per release): a way in checks
                            // the map, which no longer has it.
                            e.remove();
                            Some(true)
                        } else {
                            Some(false)
                        }
                    }
                    Err(_) => None,
                }
            }
            Some(bit) if self.eps[bit] == ep && self.bound(bit) => {
                self.eps[bit] = 0;
                Some(true)
            }
            _ => None,
        };
        let (Some(bit), Some(last)) = (bit, last) else {
            // Not this share's, or the pair went to a newer binding from
            // the peer meanwhile.
            if let Some(i) = sub {
                self.forget_if_idle(i);
            }
            return;
        };
        if !last {
            return;
        }
        if let Some(i) = sub {
            let s = &mut self.slab[i];
            s.ports = s.ports.saturating_sub(1);
        }
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        if refused || self.delay == 0 {
            self.set_free(bit);
        } else {
            self.cooling[w] |= m;
            self.queue.push_back((bit as u32, self.now));
        }
        let b = self.block_of(bit);
        self.block_maps[b] -= 1;
        if self.block_maps[b] == 0 && self.block_owner[b] != 0 {
            let owner = self.block_owner[b] as usize - 1;
            self.return_block(b);
            self.slab[owner].remove_block(b as u32);
            self.forget_if_idle(owner);
        }
        if let Some(i) = sub {
            self.forget_if_idle(i);
        }
    }

    /// Marks a binding the peer made (a replicated session of `ep` on
    /// (`addr`, `port`)) as taken, with its mapping, block and counts;
    /// false when the pair is not in this share or another endpoint's
    /// mapping holds it here (see [`Self::steal`]).
    pub fn reserve(&mut self, addr: [u8; 4], port: u16, ep: u64) -> bool {
        let Some(bit) = self.bit(addr, port) else {
            return false;
        };
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        if self.cooling[w] & m != 0 {
            // Released here, bound again by the peer: its binding wins.
            self.cooling[w] &= !m;
            self.set_free(bit);
        } else if self.used[w] & m != 0 {
            if !self.add_user(ep, bit) {
                return false;
            }
            self.count_session(ep, None);
            return true;
        }
        self.take(bit, ep, self.hash(ep));
        self.count_session(ep, Some(bit));
        true
    }

    /// Gives the pair (`addr`, `port`), held here by the mapping of `old`
    /// (a stale copy: the peer's binding wins), to `ep`'s. The sessions
    /// left on the old mapping no longer release it.
    pub fn steal(&mut self, addr: [u8; 4], port: u16, ep: u64, old: u64) -> bool {
        let Some(bit) = self.bit(addr, port) else {
            return false;
        };
        if !self.bound(bit) {
            return self.reserve(addr, port, ep);
        }
        self.unmap(old, bit);
        if let Some(&i) = self.subs.get(&subscriber_of(old)) {
            let s = &mut self.slab[i as usize];
            s.ports = s.ports.saturating_sub(1);
            self.forget_if_idle(i as usize);
        }
        self.map(ep, bit, self.hash(ep));
        self.count_session(ep, Some(bit));
        true
    }

    /// The inside endpoint whose endpoint-independent mapping holds
    /// (`addr`, `port`) for protocol `proto`, if a new flow from the
    /// outside host `remote` may reach it under the pool's filtering
    /// (RFC 4787 section 5): then the flow's session is counted as one
    /// more user of the mapping (its end calls [`Self::unbind`]) and
    /// against the subscriber's session limit, which refuses it when
    /// full (`Err`), so a flood from outside cannot grow one subscriber's
    /// sessions past it. `Ok(None)`: nothing may come in there.
    pub fn admit(
        &mut self,
        addr: [u8; 4],
        port: u16,
        proto: u8,
        remote: u32,
    ) -> Result<Option<u64>, Refusal> {
        if !self.eim || self.filtering == Filtering::AddressAndPortDependent {
            return Ok(None);
        }
        let Some(bit) = self.bit(addr, port) else {
            return Ok(None);
        };
        self.write_ports();
        let holder = self.block_owner[self.block_of(bit)];
        if holder == 0 || !self.bound(bit) {
            return Ok(None);
        }
        let who = self.slab[holder as usize - 1].who.to_be_bytes();
        let ep = endpoint(who, self.inside_ports[bit], proto);
        if self.filtering == Filtering::AddressDependent
            && !self.remotes.contains_key(&(bit as u32, remote))
        {
            return Ok(None);
        }
        let sub = self.subs.get(&subscriber_of(ep)).map(|&i| i as usize);
        if let Some(i) = sub
            && self.max_sessions != 0
            && self.slab[i].sessions >= self.max_sessions
        {
            return Err(Refusal::SubscriberSessions);
        }
        if !self.add_user(ep, bit) {
            return Ok(None);
        }
        if let Some(i) = sub {
            self.slab[i].sessions += 1;
        }
        Ok(Some(ep))
    }

    /// Makes the `inside_ports` writes held back.
    fn write_ports(&mut self) {
        for &(bit, port) in &self.port_writes[..self.port_writes_len] {
            self.inside_ports[bit as usize] = port;
        }
        self.port_writes_len = 0;
    }

    /// Whether the pool remembers which outside hosts each mapping has
    /// sessions with (address-dependent filtering): then every session
    /// that binds or leaves a pair tells it with [`Self::remote`].
    #[inline]
    pub fn remembers_remotes(&self) -> bool {
        self.filtering == Filtering::AddressDependent
    }

    /// A session of the mapping on (`addr`, `port`) with the outside host
    /// `remote` began (`add`) or ended.
    pub fn remote(&mut self, addr: [u8; 4], port: u16, remote: u32, add: bool) {
        let Some(bit) = self.bit(addr, port) else {
            return;
        };
        let k = (bit as u32, remote);
        if add {
            *self.remotes.entry(k).or_insert(0) += 1;
        } else if let Some(n) = self.remotes.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.remotes.remove(&k);
            }
        }
    }

    /// Counts a replicated session of `ep` (and, if `bit` is set, its new
    /// mapping) against its subscriber, which takes the pair's block if
    /// nobody holds it. With no room for another subscriber it goes
    /// uncounted (the pair is bound all the same).
    fn count_session(&mut self, ep: u64, bit: Option<usize>) {
        let Some(i) = self.slot_of(subscriber_of(ep), self.now) else {
            return;
        };
        let block = bit.map(|b| (self.block_of(b), b / self.span as usize));
        let claim = block.is_some_and(|(b, _)| self.block_owner[b] == 0);
        let sub = &mut self.slab[i];
        sub.sessions += 1;
        if bit.is_some() {
            sub.ports += 1;
        }
        if let Some((b, a)) = block
            && claim
        {
            if usize::from(sub.n) < sub.blocks.len() {
                sub.blocks[usize::from(sub.n)] = b as u32;
                sub.n += 1;
                sub.addr = a as u8;
            }
            self.hand_block(b, i);
        }
    }

    /// Records the table slot of the synced session that holds a pair.
    pub fn set_holder(&mut self, addr: [u8; 4], port: u16, slot: u32) {
        if let Some(bit) = self.bit(addr, port) {
            self.holders[bit] = slot;
        }
    }

    /// The slot recorded by [`Self::set_holder`] for a bound pair.
    pub fn holder(&self, addr: [u8; 4], port: u16) -> Option<u32> {
        let bit = self.bit(addr, port)?;
        let h = self.holders[bit];
        (h != u32::MAX && self.bound(bit)).then_some(h)
    }

    pub fn available(&self) -> usize {
        self.free
    }

    /// The (address, port) pairs of this share.
    pub fn size(&self) -> usize {
        self.holders.len()
    }

    /// Whether the per-block free counts match the bitmap.
    #[cfg(test)]
    fn consistent(&self) -> bool {
        (0..self.block_owner.len()).all(|b| {
            let (lo, hi) = self.block_bits(b);
            let clear = (lo..hi)
                .filter(|&i| self.used[i / 64] & 1 << (i % 64) == 0)
                .count();
            clear == self.block_free[b] as usize
        }) && (0..self.addrs.len()).all(|a| {
            let per = self.per_addr as usize;
            let ready = (a * per..(a + 1) * per)
                .filter(|&b| self.block_owner[b] == 0 && self.whole(b))
                .count();
            ready == self.ready[a] as usize
        })
    }

    /// Blocks held by a subscriber, and blocks in all.
    pub fn blocks(&self) -> (usize, usize) {
        (self.blocks_held, self.block_owner.len())
    }

    /// Subscribers with a mapping or a session here.
    pub fn subscribers(&self) -> usize {
        self.subs.len()
    }

    /// Mappings (bound pairs) in use.
    #[cfg(test)]
    pub(crate) fn mappings(&self) -> usize {
        if self.eim {
            self.mappings.len()
        } else {
            self.eps.iter().filter(|&&e| e != 0).count()
        }
    }

    /// Whether every mapping's pair records its endpoint (a pair with no
    /// mapping may keep a stale one: the map is what a way in checks).
    #[cfg(test)]
    pub(crate) fn endpoints_true(&mut self) -> bool {
        self.write_ports();
        !self.track
            || self.mappings.iter().all(|m| {
                self.inside_ports[m.bit as usize] == (m.ep >> 32) as u16
                    && self.bound(m.bit as usize)
            })
    }

    /// Each pool address's ports and blocks in this share, for views (a
    /// walk of the bitmaps: for an operator's request, not per packet).
    pub fn address_use(&self) -> Vec<AddressUse> {
        let (span, per) = (self.span as usize, self.per_addr as usize);
        let bit = |v: &[u64], i: usize| v[i / 64] & 1 << (i % 64) != 0;
        self.addrs
            .iter()
            .enumerate()
            .map(|(a, &addr)| {
                let bits = a * span..(a + 1) * span;
                let cooling = bits.clone().filter(|&i| bit(&self.cooling, i)).count();
                let used = bits.filter(|&i| bit(&self.used, i)).count();
                let held = self.block_owner[a * per..(a + 1) * per]
                    .iter()
                    .filter(|&&o| o != 0)
                    .count();
                AddressUse {
                    addr,
                    ports: span as u32,
                    ports_in_use: (used - cooling) as u32,
                    ports_cooling: cooling as u32,
                    blocks: per as u32,
                    blocks_in_use: held as u32,
                }
            })
            .collect()
    }

    /// The `n` subscribers with the most ports (then sessions), for views.
    pub fn top_subscribers(&self, n: usize) -> Vec<SubscriberView> {
        let mut all: Vec<SubscriberView> = self.subscriber_views().collect();
        all.sort_unstable_by_key(|s| std::cmp::Reverse((s.ports, s.sessions)));
        all.truncate(n);
        all
    }

    /// The subscribers, for views.
    fn subscriber_views(&self) -> impl Iterator<Item = SubscriberView> + '_ {
        self.subs.values().map(|&i| {
            let s = &self.slab[i as usize];
            SubscriberView {
                inside: s.who.to_be_bytes(),
                pool_addr: if s.n > 0 {
                    self.addrs[usize::from(s.addr)]
                } else {
                    [0; 4]
                },
                blocks: u32::from(s.n),
                ports: s.ports,
                sessions: s.sessions,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_control::config::PortRange;

    use super::*;

    fn nat(lo: u16, hi: u16, addrs: usize) -> Nat {
        Nat {
            pool: (0..addrs)
                .map(|i| Ipv4Addr::new(198, 18, 2, 100 + i as u8))
                .collect(),
            ports: PortRange { lo, hi },
            port_reuse_delay_s: 0,
            mapping: Mapping::EndpointIndependent,
            block_size: 4,
            blocks_per_subscriber: 2,
            sessions_per_subscriber: 0,
            subscriber_sessions_per_sec: 0,
            filtering: Filtering::EndpointIndependent,
            statics: Vec::new(),
            forwards: Vec::new(),
        }
    }

    /// Endpoint `port` of inside host 10.0.0.`host`, UDP.
    fn ep(host: u8, port: u16) -> u64 {
        endpoint([10, 0, 0, host], port, 17)
    }

    #[test]
    fn shares_are_disjoint_and_owned() {
        let mut n = nat(1024, 1033, 2);
        n.blocks_per_subscriber = 32;
        let mut pools: Vec<_> = (0..3)
            .map(|w| PortPool::new(&n, w, 3, 1 << 20).unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (w, p) in pools.iter_mut().enumerate() {
            // One host per address (paired pooling keeps a host on one).
            for host in 1..=2 {
                let mut port = 0;
                while let Ok((a, pt)) = p.bind(ep(host, port), 0) {
                    assert!(seen.insert((a, pt)), "{a:?}:{pt} twice");
                    assert_eq!(p.owner_of_port(pt, 3), Some(w));
                    port += 1;
                }
            }
        }
        // 10 ports / 3 workers = 3 each (1033 is left over), on 2 addresses.
        assert_eq!(seen.len(), 18);
        assert_eq!(pools[0].owner_of_port(1033, 3), None);
        assert_eq!(pools[0].owner_of_port(80, 3), None);
    }

    #[test]
    fn an_endpoint_keeps_its_mapping_and_the_last_session_releases_it() {
        let mut p = PortPool::new(&nat(2000, 2099, 1), 0, 1, 1 << 20).unwrap();
        let a = p.bind(ep(1, 5000), 0).unwrap();
        assert_eq!(
            p.bind(ep(1, 5000), 0),
            Ok(a),
            "a second session, same mapping"
        );
        let b = p.bind(ep(1, 5001), 0).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.mappings(), 2);
        p.unbind(a.0, a.1, ep(1, 5000), false);
        assert_eq!(p.mappings(), 2, "one session left on it");
        p.unbind(a.0, a.1, ep(1, 5000), false);
        assert_eq!(p.mappings(), 1);
        // A session of another endpoint does not release the pair.
        p.unbind(b.0, b.1, ep(1, 9999), false);
        assert_eq!(p.mappings(), 1);
        p.unbind(b.0, b.1, ep(1, 5001), false);
        assert_eq!((p.mappings(), p.subscribers(), p.blocks().0), (0, 0, 0));
        assert_eq!(p.available(), 100);
    }

    #[test]
    fn address_and_port_dependent_mapping_takes_a_pair_per_session() {
        let mut n = nat(2000, 2099, 1);
        n.mapping = Mapping::AddressAndPortDependent;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        let a = p.bind(ep(1, 5000), 0).unwrap();
        assert_ne!(p.bind(ep(1, 5000), 0).unwrap(), a);
    }

    #[test]
    fn a_subscriber_stays_within_its_blocks_and_others_are_not_hurt() {
        // Blocks of 4 ports, 2 per subscriber, on 2 addresses.
        let mut p = PortPool::new(&nat(3000, 3015, 2), 0, 1, 1 << 20).unwrap();
        let mut mine = Vec::new();
        for port in 0..8 {
            mine.push(p.bind(ep(1, port), 0).unwrap());
        }
        assert_eq!(p.bind(ep(1, 8), 0), Err(Refusal::SubscriberPorts));
        // Paired pooling: one address for all of them.
        assert!(mine.iter().all(|(a, _)| *a == mine[0].0), "{mine:?}");
        // Its two blocks: 8 ports in two aligned runs of 4.
        let mut blocks: Vec<u16> = mine.iter().map(|(_, pt)| (pt - 3000) / 4).collect();
        blocks.sort_unstable();
        blocks.dedup();
        assert_eq!(blocks.len(), 2);
        // Three more subscribers: the other 6 blocks of 8 ports... two
        // blocks for 2, then the pool runs out.
        for host in 2..=4 {
            for port in 0..8 {
                let r = p.bind(ep(host, port), 0);
                assert!(r.is_ok(), "host {host} port {port}: {r:?}");
            }
        }
        assert_eq!(p.bind(ep(5, 0), 0), Err(Refusal::PoolExhausted));
        assert_eq!(p.blocks(), (8, 8));
        assert_eq!(p.subscribers(), 4);
        // Host 1 lets go of one block's ports: that block is free again,
        // and another subscriber may take it.
        for (i, &(a, pt)) in mine.iter().enumerate() {
            if (pt - 3000) / 4 == blocks[0] {
                p.unbind(a, pt, ep(1, i as u16), false);
            }
        }
        assert_eq!(p.blocks(), (7, 8));
        assert!(p.bind(ep(5, 0), 0).is_ok());
        assert!(p.consistent());
        let used: Vec<(u32, u32)> = p
            .address_use()
            .iter()
            .map(|a| (a.ports_in_use, a.blocks_in_use))
            .collect();
        assert_eq!(
            used.iter().map(|u| u.0).sum::<u32>(),
            29,
            "32 bound, 4 released, 1 new"
        );
        assert_eq!(used.iter().map(|u| u.1).sum::<u32>(), 8);
        let top = p.top_subscribers(2);
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].ports, top[0].blocks), (8, 2));
    }

    #[test]
    fn subscriber_session_and_rate_limits() {
        let mut n = nat(4000, 4099, 1);
        n.sessions_per_subscriber = 3;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        for _ in 0..3 {
            p.bind(ep(1, 1), 10).unwrap();
        }
        assert_eq!(p.bind(ep(1, 2), 10), Err(Refusal::SubscriberSessions));
        assert!(p.bind(ep(2, 2), 10).is_ok(), "another subscriber");
        n.sessions_per_subscriber = 0;
        n.subscriber_sessions_per_sec = 5;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        // Five sessions this second: the sixth waits for the next second,
        // on a new mapping or on an existing one.
        for port in 1..=5 {
            p.bind(ep(2, port), 10).unwrap();
        }
        assert_eq!(p.bind(ep(2, 1), 10), Err(Refusal::SubscriberRate));
        assert_eq!(p.bind(ep(2, 6), 10), Err(Refusal::SubscriberRate));
        assert!(p.bind(ep(3, 6), 10).is_ok(), "another subscriber");
        assert!(p.bind(ep(2, 6), 11).is_ok(), "the next second");
    }

    #[test]
    fn too_few_ports_for_the_workers_is_an_error() {
        assert!(PortPool::new(&nat(5000, 5000, 1), 0, 2, 1 << 20).is_err());
    }

    #[test]
    fn reserved_pairs_are_never_handed_out_and_rebuild_the_mappings() {
        let mut n = nat(3000, 3063, 1);
        n.block_size = 64;
        n.blocks_per_subscriber = 1;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        let pool = [198, 18, 2, 100];
        assert!(p.reserve(pool, 3001, ep(1, 7)));
        assert!(
            p.reserve(pool, 3001, ep(1, 7)),
            "a second session of the mapping"
        );
        assert!(!p.reserve(pool, 3001, ep(2, 7)), "another endpoint's");
        assert!(!p.reserve(pool, 2999, ep(1, 8)), "outside the range");
        assert!(
            !p.reserve([1, 2, 3, 4], 3002, ep(1, 8)),
            "not a pool address"
        );
        assert_eq!((p.mappings(), p.subscribers(), p.blocks().0), (1, 1, 1));
        // After a failover the endpoint keeps its pair.
        assert_eq!(p.bind(ep(1, 7), 0), Ok((pool, 3001)));
        // Host 2's first binding needs a block: host 1 holds the only one.
        assert_eq!(p.bind(ep(2, 1), 0), Err(Refusal::PoolExhausted));
        // A stale copy loses to the peer's newer binding.
        assert!(p.steal(pool, 3001, ep(2, 7), ep(1, 7)));
        assert_eq!(p.bind(ep(2, 7), 0), Ok((pool, 3001)));
        p.unbind(pool, 3001, ep(1, 7), false);
        assert_eq!(p.mappings(), 1, "host 1's sessions no longer release it");
        assert!(p.consistent());
    }

    #[test]
    fn a_released_port_waits_out_the_reuse_delay() {
        let mut n = nat(4000, 4003, 1);
        n.port_reuse_delay_s = 120;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        p.tick(10);
        let all: Vec<_> = (0..4).map(|i| p.bind(ep(1, i), 10).unwrap()).collect();
        assert!(p.bind(ep(1, 9), 10).is_err());
        p.unbind(all[1].0, all[1].1, ep(1, 1), false);
        p.unbind(all[1].0, all[1].1, ep(1, 1), false); // twice: queued once
        assert_eq!((p.available(), p.cooling()), (0, 1));
        p.tick(129);
        assert!(p.bind(ep(1, 9), 129).is_err(), "119 s after its release");
        p.tick(130);
        assert_eq!(p.bind(ep(1, 9), 130), Ok(all[1]), "free after 120 s");
        // A pair refused before it carried a packet is free at once.
        p.unbind(all[1].0, all[1].1, ep(1, 9), true);
        assert_eq!(p.bind(ep(1, 10), 130), Ok(all[1]));
        // The peer binding a cooling pair takes it over: it stays bound.
        p.unbind(all[2].0, all[2].1, ep(1, 2), false);
        assert!(p.reserve(all[2].0, all[2].1, ep(3, 3)));
        p.tick(400);
        assert!(p.consistent());
        assert_eq!((p.available(), p.cooling()), (0, 0));
        assert!(!p.reserve(all[2].0, all[2].1, ep(4, 4)), "still bound");
    }

    #[test]
    fn ports_are_not_handed_out_in_sequence() {
        let mut n = nat(10000, 29999, 1);
        n.block_size = 4096;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        let ports: Vec<u16> = (0..50).map(|i| p.bind(ep(1, i), 0).unwrap().1).collect();
        let ascending = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(ascending < 5, "{ports:?}");
    }

    #[test]
    fn memory_is_stated() {
        // docs/architecture.md ("NAPT44", Memory); keep it honest.
        assert_eq!(size_of::<Mapped>(), 16, "a mapping map entry");
        assert_eq!(size_of::<Subscriber>(), 152, "a subscriber slot");
        assert_eq!(size_of::<(u32, u32)>(), 8, "a subscriber index entry");
        let mut n = nat(1024, 65535, 1);
        n.block_size = 256;
        let p = PortPool::new(&n, 0, 2, 1 << 20).unwrap();
        assert_eq!((p.size(), p.blocks().1), (32256, 126), "the lab's share");
        assert!(p.mappings.capacity() >= p.size() && p.queue.capacity() >= p.size());
        assert!(p.subs.capacity() >= 126 + 64 && p.slab.len() == 126 + 64);
        // Per pair: the holder slot and the inside port (the default
        // filtering lets flows in), no endpoint; no remembered hosts.
        assert_eq!(
            (p.holders.len(), p.inside_ports.len(), p.eps.len()),
            (32256, 32256, 0)
        );
        assert_eq!((size_of::<u32>(), size_of::<u16>()), (4, 2));
        assert_eq!(p.remotes.capacity(), 0);
        n.filtering = Filtering::AddressDependent;
        let p = PortPool::new(&n, 0, 2, 1 << 20).unwrap();
        assert!(p.remotes.capacity() >= 1 << 20);
        assert_eq!(size_of::<((u32, u32), u32)>(), 12, "a remembered host");
        n.filtering = Filtering::AddressAndPortDependent;
        let p = PortPool::new(&n, 0, 2, 1 << 20).unwrap();
        assert_eq!((p.inside_ports.len(), p.eps.len()), (0, 0));
        n.mapping = Mapping::AddressAndPortDependent;
        let p = PortPool::new(&n, 0, 2, 1 << 20).unwrap();
        assert_eq!((p.inside_ports.len(), p.eps.len()), (0, 32256));
    }

    /// The prefetch hits what a lookup reads: if a hashbrown update moves
    /// its entries or probe start, this fails and `probe_start` must
    /// follow.
    #[test]
    fn prefetch_covers_the_mappings_lookups_read() {
        use crate::session::table::{GROUP, probe_start};
        let mut n = nat(1024, 65535, 1);
        n.blocks_per_subscriber = 32;
        n.block_size = 4096;
        let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
        for port in 0..2000 {
            p.bind(ep(1, port), 0).unwrap();
        }
        let (base, size) = p.mappings.allocator().block();
        let (mut covered, mut keys) = (0, 0);
        for port in 0..2000 {
            let e = ep(1, port);
            let h = p.hash(e);
            let found = p.mappings.find(h, |m| m.ep == e).unwrap();
            let at = std::ptr::from_ref(found) as usize;
            let (_, first) =
                probe_start(base, size, h, size_of::<Mapped>()).expect("hashbrown's shape");
            keys += 1;
            if (first - (GROUP - 1) * size_of::<Mapped>()..=first).contains(&at) {
                covered += 1;
            }
        }
        assert!(covered * 100 >= keys * 95, "{covered} of {keys} covered");
    }

    #[test]
    fn a_block_of_forwarded_ports_is_never_handed_out() {
        // Blocks of 4 ports (1024-1027, 1028-1031): the first all
        // forwarded, the second one port of it.
        let mut n = nat(1024, 1031, 1);
        n.blocks_per_subscriber = 2;
        n.forwards = [1024, 1025, 1026, 1027, 1029]
            .map(|port| tandem_control::config::Forward {
                protocol: tandem_control::config::Protocol(6),
                outside: std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 100), port),
                inside: std::net::SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 80),
            })
            .to_vec();
        let mut p = PortPool::new(&n, 0, 1, 64).unwrap();
        // Blocks are searched lowest first: the forwarded one comes first.
        p.lowest_first();
        assert!(p.consistent());
        assert_eq!(p.available(), 3);
        let got: Vec<u16> = (0..4)
            .filter_map(|i| p.bind(ep(1, i), 0).ok())
            .map(|x| x.1)
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1028, 1030, 1031], "{got:?}");
        assert_eq!(p.bind(ep(2, 1), 0), Err(Refusal::PoolExhausted));
        assert!(p.consistent());
    }

    proptest::proptest! {
        /// Any mix of binds, releases, the peer's bindings and time keeps
        /// the counts true to the bitmaps and never hands out a pair twice.
        #[test]
        fn counts_stay_true(ops in proptest::collection::vec((0u8..6, 1u8..6, 0u16..12), 1..300)) {
            let mut n = nat(6000, 6047, 2);
            n.port_reuse_delay_s = 3;
            let mut p = PortPool::new(&n, 0, 1, 1 << 20).unwrap();
            let mut live: Vec<(([u8; 4], u16), u64)> = Vec::new();
            let mut now = 0;
            for (op, host, port) in ops {
                let e = ep(host, port);
                match op {
                    0 | 1 => {
                        if let Ok(pair) = p.bind(e, now) {
                            if let Some(other) = live.iter().find(|(q, f)| *q == pair && *f != e) {
                                proptest::prop_assert!(false, "{pair:?} for {e} and {}", other.1);
                            }
                            live.push((pair, e));
                        }
                    }
                    2 if !live.is_empty() => {
                        let (pair, e) = live.swap_remove(usize::from(port) % live.len());
                        p.unbind(pair.0, pair.1, e, port % 3 == 0);
                    }
                    3 => {
                        let pair = ([198, 18, 2, 100 + host % 2], 6000 + port * 4);
                        if p.reserve(pair.0, pair.1, e) {
                            live.push((pair, e));
                        }
                    }
                    // A flow from outside through a live mapping.
                    4 if !live.is_empty() => {
                        let (pair, owner) = live[usize::from(port) % live.len()];
                        if let Ok(Some(e)) = p.admit(pair.0, pair.1, 17, 7) {
                            proptest::prop_assert_eq!(e, owner);
                            live.push((pair, e));
                        }
                    }
                    _ => {
                        now += 1;
                        p.tick(now);
                    }
                }
                proptest::prop_assert!(p.consistent());
                proptest::prop_assert!(p.endpoints_true());
                let bound = p.size() - p.available() - p.cooling();
                proptest::prop_assert_eq!(bound, p.mappings());
            }
        }
    }

    #[test]
    fn bit_range_helpers() {
        let used = [0b1011u64, !0, 0];
        assert_eq!(first_clear(&used, 0, 192), Some(2));
        assert_eq!(first_clear(&used, 3, 192), Some(4));
        assert_eq!(first_clear(&[!0, !0, 0], 3, 192), Some(128));
        assert_eq!(first_clear(&[!0, !0, 0], 3, 100), None);
        assert_eq!(first_clear(&used, 4, 5), Some(4));
    }
}

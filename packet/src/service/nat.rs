//! NAPT44 port pools, partitioned across workers.
//!
//! Design: a pool's port range is cut into one contiguous slice per worker,
//! the same slice on every pool address, so the owner of a translated flow
//! follows from its port alone: return traffic is handed to that worker.
//! Each worker keeps a bitmap of its (address, port) pairs, allocated once
//! at start. Allocation starts its search at a random pair (RFC 6056's
//! simple randomization: an off-path attacker cannot guess the next
//! port), and a released pair waits out the reuse delay (RFC 6888 REQ-8,
//! 120 s by default) in a queue before it is free again, so a new
//! mapping never gets a port whose last flow's stragglers may still
//! arrive. A standby marks the bindings its peer replicates with
//! [`PortPool::reserve`], so it never hands them out again after a
//! failover, and its own releases wait out the delay too.

use std::{collections::VecDeque, net::Ipv4Addr};

use tandem_control::config::Nat;

/// One worker's share of a NAT pool.
#[derive(Debug, Clone)]
pub struct PortPool {
    addrs: Vec<[u8; 4]>,
    lo: u16,
    /// Ports per worker.
    span: u32,
    /// This worker's first port.
    first: u16,
    /// Bit `a * span + (port - first)` is set while that pair is bound;
    /// the bits past the last pair are set for good.
    used: Vec<u64>,
    /// Per pair: the table slot of the synced session holding it, so a
    /// newer binding from the peer can evict a stale one (`u32::MAX`: none
    /// recorded).
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
    /// xorshift64 state for the search's random start.
    rng: u64,
    /// Where the next search starts, drawn (and its bitmap word
    /// prefetched) when the last one ended: the random start's cache
    /// miss overlaps the packets in between.
    next_from: usize,
}

/// Why a worker's share of a NAT pool could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("NAT port range {lo}-{hi} has fewer ports than the {workers} workers")]
    TooFewPorts { lo: u16, hi: u16, workers: usize },
}

impl PortPool {
    /// Worker `worker` of `workers`'s share of `nat`. Errs when the range
    /// has fewer ports than workers.
    pub fn new(nat: &Nat, worker: usize, workers: usize) -> Result<Self, PoolError> {
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
        Ok(Self {
            addrs,
            lo: nat.ports.lo,
            span,
            first: first as u16,
            used,
            holders: vec![u32::MAX; pairs],
            free: pairs,
            cooling: vec![0u64; pairs.div_ceil(64)],
            queue: VecDeque::with_capacity(pairs),
            delay: nat.port_reuse_delay_s,
            now: 0,
            // Per process and worker: a random seed (never 0).
            rng: std::collections::hash_map::RandomState::new().hash_one(worker) | 1,
            next_from: 0,
        })
        .map(|mut p: Self| {
            p.next_from = p.draw();
            p
        })
    }

    /// Moves the pool's clock to `now` (seconds): pairs whose reuse delay
    /// has passed are free again.
    pub fn tick(&mut self, now: u32) {
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
                self.used[w] &= !m;
                self.free += 1;
            }
        }
    }

    /// Pairs waiting out the reuse delay.
    pub fn cooling(&self) -> usize {
        self.cooling.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The search starts at the first pair: the lowest free one goes
    /// first (a zero xorshift state stays zero).
    #[cfg(test)]
    pub(crate) fn lowest_first(&mut self) {
        self.rng = 0;
        self.next_from = 0;
    }

    /// A random pair (xorshift64, scaled to the pairs without a
    /// division).
    fn draw(&mut self) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (((x >> 32) * self.holders.len() as u64) >> 32) as usize
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

    /// A free pair, searched for from a random one on.
    pub fn alloc(&mut self) -> Option<([u8; 4], u16)> {
        if self.free == 0 {
            return None;
        }
        let words = self.used.len();
        let from = self.next_from;
        self.next_from = self.draw();
        crate::hint::prefetch(std::ptr::from_ref(&self.used[self.next_from / 64]).cast());
        let (start, skip) = (from / 64, from % 64);
        // The start word twice: first its bits from the cursor on, last
        // the ones before it.
        for i in 0..=words {
            let w = (start + i) % words;
            let mut word = self.used[w];
            if i == 0 {
                word |= (1u64 << skip) - 1;
            }
            if word != !0 {
                let b = word.trailing_ones() as usize;
                self.used[w] |= 1 << b;
                let pair = w * 64 + b;
                self.free -= 1;
                let span = self.span as usize;
                let port = u32::from(self.first) + (pair % span) as u32;
                return Some((self.addrs[pair / span], port as u16));
            }
        }
        None
    }

    /// Marks a binding made elsewhere (by the peer) as taken; false when
    /// the pair is not in this share or is already bound here.
    pub fn reserve(&mut self, addr: [u8; 4], port: u16) -> bool {
        let Some(bit) = self.bit(addr, port) else {
            return false;
        };
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        if self.cooling[w] & m != 0 {
            // Released here, bound again by the peer: its binding wins.
            self.cooling[w] &= !m;
            return true;
        }
        if self.used[w] & m != 0 {
            return false;
        }
        self.used[w] |= m;
        self.free -= 1;
        true
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
        (h != u32::MAX && self.used[bit / 64] & 1 << (bit % 64) != 0).then_some(h)
    }

    /// Returns a pair [`Self::alloc`] handed out or [`Self::reserve`]
    /// took: free again once the reuse delay has passed.
    pub fn release(&mut self, addr: [u8; 4], port: u16) {
        if let Some(bit) = self.bit(addr, port) {
            self.holders[bit] = u32::MAX;
            let (w, m) = (bit / 64, 1u64 << (bit % 64));
            if self.used[w] & m == 0 || self.cooling[w] & m != 0 {
                return;
            }
            if self.delay == 0 {
                self.used[w] &= !m;
                self.free += 1;
            } else {
                self.cooling[w] |= m;
                self.queue.push_back((bit as u32, self.now));
            }
        }
    }

    /// Returns a pair [`Self::alloc`] just handed out for a flow that was
    /// then refused (it never carried a packet): free at once.
    pub fn unalloc(&mut self, addr: [u8; 4], port: u16) {
        if let Some(bit) = self.bit(addr, port) {
            let (w, m) = (bit / 64, 1u64 << (bit % 64));
            if self.used[w] & m != 0 && self.cooling[w] & m == 0 {
                self.used[w] &= !m;
                self.free += 1;
            }
        }
    }

    pub fn available(&self) -> usize {
        self.free
    }

    /// The (address, port) pairs of this share.
    pub fn size(&self) -> usize {
        self.holders.len()
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
        }
    }

    #[test]
    fn shares_are_disjoint_and_owned() {
        let n = nat(1024, 1033, 2);
        let mut pools: Vec<_> = (0..3).map(|w| PortPool::new(&n, w, 3).unwrap()).collect();
        let mut seen = std::collections::HashSet::new();
        for (w, p) in pools.iter_mut().enumerate() {
            while let Some((a, port)) = p.alloc() {
                assert!(seen.insert((a, port)), "{a:?}:{port} twice");
                assert_eq!(p.owner_of_port(port, 3), Some(w));
            }
        }
        // 10 ports / 3 workers = 3 each (1033 is left over), on 2 addresses.
        assert_eq!(seen.len(), 18);
        assert_eq!(pools[0].owner_of_port(1033, 3), None);
        assert_eq!(pools[0].owner_of_port(80, 3), None);
    }

    #[test]
    fn released_ports_come_back_and_foreign_ones_do_not() {
        let mut p = PortPool::new(&nat(2000, 2003, 1), 1, 2).unwrap();
        p.lowest_first();
        assert_eq!(p.available(), 2);
        let (a, port) = p.alloc().unwrap();
        assert_eq!(port, 2002);
        p.release(a, port);
        p.release(a, 2000); // worker 0's port
        p.release([1, 2, 3, 4], 2003);
        assert_eq!(p.available(), 2);
    }

    #[test]
    fn too_few_ports_for_the_workers_is_an_error() {
        assert!(PortPool::new(&nat(5000, 5000, 1), 0, 2).is_err());
    }

    #[test]
    fn reserved_pairs_are_never_handed_out() {
        // 130 pairs: three bitmap words, the last one partial.
        let mut p = PortPool::new(&nat(3000, 3064, 2), 0, 1).unwrap();
        assert_eq!(p.available(), 130);
        assert!(p.reserve([198, 18, 2, 100], 3001));
        assert!(!p.reserve([198, 18, 2, 100], 3001), "twice");
        assert!(!p.reserve([198, 18, 2, 100], 2999), "outside the range");
        assert!(!p.reserve([1, 2, 3, 4], 3002), "not a pool address");
        assert!(p.reserve([198, 18, 2, 101], 3064));
        let mut seen = std::collections::HashSet::new();
        while let Some(pair) = p.alloc() {
            assert!(seen.insert(pair));
        }
        assert_eq!(seen.len(), 128);
        assert!(!seen.contains(&([198, 18, 2, 100], 3001)));
        assert!(!seen.contains(&([198, 18, 2, 101], 3064)));
        p.release([198, 18, 2, 100], 3001);
        assert_eq!(p.alloc(), Some(([198, 18, 2, 100], 3001)));
        assert_eq!(p.available(), 0);
    }

    #[test]
    fn a_released_port_waits_out_the_reuse_delay() {
        let mut n = nat(4000, 4003, 1);
        n.port_reuse_delay_s = 120;
        let mut p = PortPool::new(&n, 0, 1).unwrap();
        p.tick(10);
        let all: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.alloc(), None);
        p.release(all[1].0, all[1].1);
        p.release(all[1].0, all[1].1); // twice: queued once
        assert_eq!((p.available(), p.cooling()), (0, 1));
        p.tick(129);
        assert_eq!(p.alloc(), None, "119 s after its release");
        p.tick(130);
        assert_eq!(p.alloc(), Some(all[1]), "free after 120 s");
        // A pair refused before it carried a packet is free at once.
        p.unalloc(all[1].0, all[1].1);
        assert_eq!(p.alloc(), Some(all[1]));
        // The peer binding a cooling pair takes it over: it stays bound.
        p.release(all[2].0, all[2].1);
        assert!(p.reserve(all[2].0, all[2].1));
        p.tick(400);
        assert_eq!((p.available(), p.cooling()), (0, 0));
        assert!(!p.reserve(all[2].0, all[2].1), "still bound");
    }

    #[test]
    fn ports_are_not_handed_out_in_sequence() {
        let mut p = PortPool::new(&nat(10000, 29999, 1), 0, 1).unwrap();
        let ports: Vec<u16> = (0..50).map(|_| p.alloc().unwrap().1).collect();
        let ascending = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(ascending < 5, "{ports:?}");
    }
}

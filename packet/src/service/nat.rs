//! NAPT44 port pools, partitioned across workers.
//!
//! Design: a pool's port range is cut into one contiguous slice per worker,
//! the same slice on every pool address, so the owner of a translated flow
//! follows from its port alone: return traffic is handed to that worker.
//! Each worker keeps a bitmap of its (address, port) pairs, allocated once
//! at start. Allocation searches from where the last one ended, so a
//! released port is reused as late as possible; a standby marks the
//! bindings its peer replicates with [`PortPool::reserve`], so it never
//! hands them out again after a failover.

use std::net::Ipv4Addr;

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
    /// Bit where the next search starts.
    cursor: usize,
    free: usize,
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
            cursor: 0,
            free: pairs,
        })
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

    pub fn alloc(&mut self) -> Option<([u8; 4], u16)> {
        if self.free == 0 {
            return None;
        }
        let words = self.used.len();
        let (start, skip) = (self.cursor / 64, self.cursor % 64);
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
                self.cursor = pair + 1;
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

    /// Returns a pair [`Self::alloc`] handed out or [`Self::reserve`] took.
    pub fn release(&mut self, addr: [u8; 4], port: u16) {
        if let Some(bit) = self.bit(addr, port) {
            self.holders[bit] = u32::MAX;
            let (w, m) = (bit / 64, 1u64 << (bit % 64));
            if self.used[w] & m != 0 {
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
    fn a_released_port_is_reused_last() {
        let mut p = PortPool::new(&nat(4000, 4199, 1), 0, 1).unwrap();
        let (a, first) = p.alloc().unwrap();
        p.release(a, first);
        let next: Vec<u16> = (0..100).map(|_| p.alloc().unwrap().1).collect();
        assert!(!next.contains(&first), "{first} came back early");
    }
}

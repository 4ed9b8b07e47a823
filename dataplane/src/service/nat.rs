//! NAPT44 port pools, partitioned across workers.
//!
//! Design: a pool's port range is cut into one contiguous slice per worker,
//! the same slice on every pool address, so the owner of a translated flow
//! follows from its port alone: return traffic is handed to that worker.
//! Each worker keeps a free stack of its (address, port) pairs, allocated
//! once at start.

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
    /// Free (address index, port) pairs.
    free: Vec<(u8, u16)>,
}

impl PortPool {
    /// Worker `worker` of `workers`'s share of `nat`. Errs when the range
    /// has fewer ports than workers.
    pub fn new(nat: &Nat, worker: usize, workers: usize) -> Result<Self, String> {
        let span = nat.ports.len() / workers as u32;
        if span == 0 {
            return Err(format!(
                "NAT port range {}-{} has fewer ports than the {workers} workers",
                nat.ports.lo, nat.ports.hi
            ));
        }
        let first = u32::from(nat.ports.lo) + span * worker as u32;
        let addrs: Vec<[u8; 4]> = nat.pool.iter().map(Ipv4Addr::octets).collect();
        let mut free = Vec::with_capacity(addrs.len() * span as usize);
        // Popped from the end: hand out low ports of the first address first.
        for a in (0..addrs.len()).rev() {
            for p in (first..first + span).rev() {
                free.push((a as u8, p as u16));
            }
        }
        Ok(Self {
            addrs,
            lo: nat.ports.lo,
            span,
            first: first as u16,
            free,
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

    pub fn alloc(&mut self) -> Option<([u8; 4], u16)> {
        let (a, p) = self.free.pop()?;
        Some((self.addrs[usize::from(a)], p))
    }

    /// Returns a pair [`Self::alloc`] handed out.
    pub fn release(&mut self, addr: [u8; 4], port: u16) {
        let mine = port >= self.first && u32::from(port) < u32::from(self.first) + self.span;
        if let Some(a) = self.addrs.iter().position(|x| *x == addr)
            && mine
        {
            self.free.push((a as u8, port));
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
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
}

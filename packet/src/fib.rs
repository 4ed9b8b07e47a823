//! The forwarding view workers read: routes, neighbours and interface
//! addresses mirrored from the kernel.
//!
//! Design: the netlink monitor owns a mutable [`Fib`], and on every change
//! publishes an immutable copy through [`FibHandle`]. Workers keep an `Arc`
//! to the copy and check one relaxed generation counter per batch, so a
//! lookup takes no lock and no syscall. Route lookup is longest-prefix-first
//! over a short sorted list: a services node has a handful of routes, and a
//! linear scan of a few cache lines beats a trie at that size.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use hashbrown::HashMap;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// One unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<A> {
    pub prefix: A,
    pub len: u8,
    pub oif: u32,
    /// Next hop; `None` for a directly connected prefix.
    pub gateway: Option<A>,
    pub priority: u32,
    pub kind: RouteKind,
}

/// What a route does with matching traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    /// blackhole, unreachable, prohibit: drop.
    Reject,
}

/// An interface as the kernel describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    /// Operational state: `None` until the kernel said.
    pub oper_up: Option<bool>,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// Where a packet leaves: interface and the two MACs of its new header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub oif: u32,
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

/// Why a lookup produced no next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No route, or a reject route.
    NoRoute,
    /// Route found, but the neighbour (gateway or destination) is unresolved.
    NoNeighbour { oif: u32 },
}

/// A snapshot of the kernel's forwarding state.
#[derive(Clone, Debug, Default)]
pub struct Fib {
    routes4: Vec<Route<Ipv4Addr>>,
    routes6: Vec<Route<Ipv6Addr>>,
    neigh: HashMap<(u32, IpAddr), Mac>,
    links: HashMap<u32, Link>,
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Fib {
    /// Adds or replaces a route (same prefix, length and priority).
    pub fn upsert_route4(&mut self, r: Route<Ipv4Addr>) {
        let r = Route {
            prefix: Ipv4Addr::from_bits(r.prefix.to_bits() & mask4(r.len)),
            ..r
        };
        upsert(&mut self.routes4, r);
    }

    pub fn upsert_route6(&mut self, r: Route<Ipv6Addr>) {
        let r = Route {
            prefix: Ipv6Addr::from_bits(r.prefix.to_bits() & mask6(r.len)),
            ..r
        };
        upsert(&mut self.routes6, r);
    }

    pub fn remove_route4(&mut self, prefix: Ipv4Addr, len: u8, priority: u32) {
        let prefix = Ipv4Addr::from_bits(prefix.to_bits() & mask4(len));
        self.routes4
            .retain(|r| !(r.prefix == prefix && r.len == len && r.priority == priority));
    }

    pub fn remove_route6(&mut self, prefix: Ipv6Addr, len: u8, priority: u32) {
        let prefix = Ipv6Addr::from_bits(prefix.to_bits() & mask6(len));
        self.routes6
            .retain(|r| !(r.prefix == prefix && r.len == len && r.priority == priority));
    }

    pub fn set_neighbour(&mut self, ifindex: u32, ip: IpAddr, mac: Option<Mac>) {
        match mac {
            Some(mac) => {
                self.neigh.insert((ifindex, ip), mac);
            }
            None => {
                self.neigh.remove(&(ifindex, ip));
            }
        }
    }

    pub fn link_mut(&mut self, ifindex: u32) -> &mut Link {
        self.links.entry(ifindex).or_default()
    }

    pub fn remove_link(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
        self.neigh.retain(|(i, _), _| *i != ifindex);
        self.routes4.retain(|r| r.oif != ifindex);
        self.routes6.retain(|r| r.oif != ifindex);
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    pub fn links(&self) -> impl Iterator<Item = (u32, &Link)> {
        self.links.iter().map(|(i, l)| (*i, l))
    }

    /// The interface that holds `addr`, if one does.
    pub fn link_with(&self, addr: IpAddr) -> Option<(u32, &Link)> {
        self.links().find(|(_, l)| match addr {
            IpAddr::V4(a) => l.v4.contains(&a),
            IpAddr::V6(a) => l.v6.contains(&a),
        })
    }

    pub fn route4(&self, dst: Ipv4Addr) -> Option<&Route<Ipv4Addr>> {
        let d = dst.to_bits();
        self.routes4
            .iter()
            .find(|r| d & mask4(r.len) == r.prefix.to_bits())
    }

    pub fn route6(&self, dst: Ipv6Addr) -> Option<&Route<Ipv6Addr>> {
        let d = dst.to_bits();
        self.routes6
            .iter()
            .find(|r| d & mask6(r.len) == r.prefix.to_bits())
    }

    /// Egress and MACs for an IPv4 destination.
    pub fn lookup4(&self, dst: Ipv4Addr) -> Result<NextHop, Miss> {
        let r = self.route4(dst).ok_or(Miss::NoRoute)?;
        if r.kind == RouteKind::Reject {
            return Err(Miss::NoRoute);
        }
        let via = IpAddr::V4(r.gateway.unwrap_or(dst));
        self.resolve(r.oif, via)
    }

    /// Egress and MACs for an IPv6 destination.
    pub fn lookup6(&self, dst: Ipv6Addr) -> Result<NextHop, Miss> {
        let r = self.route6(dst).ok_or(Miss::NoRoute)?;
        if r.kind == RouteKind::Reject {
            return Err(Miss::NoRoute);
        }
        let via = IpAddr::V6(r.gateway.unwrap_or(dst));
        self.resolve(r.oif, via)
    }

    fn resolve(&self, oif: u32, via: IpAddr) -> Result<NextHop, Miss> {
        let src_mac = self.links.get(&oif).ok_or(Miss::NoRoute)?.mac;
        let dst_mac = *self
            .neigh
            .get(&(oif, via))
            .ok_or(Miss::NoNeighbour { oif })?;
        Ok(NextHop {
            oif,
            src_mac,
            dst_mac,
        })
    }

    /// The address an ICMPv4 error from `ifindex` is sent from.
    pub fn source4(&self, ifindex: u32) -> Option<Ipv4Addr> {
        self.links.get(&ifindex)?.v4.first().copied()
    }

    /// The address an ICMPv6 error from `ifindex` is sent from: a global one
    /// if the interface has it.
    pub fn source6(&self, ifindex: u32) -> Option<Ipv6Addr> {
        let l = self.links.get(&ifindex)?;
        l.v6.iter()
            .find(|a| !a.is_unicast_link_local())
            .or(l.v6.first())
            .copied()
    }

    pub fn route_count(&self) -> (usize, usize) {
        (self.routes4.len(), self.routes6.len())
    }

    pub fn neighbour_count(&self) -> usize {
        self.neigh.len()
    }
}

fn upsert<A: Copy + PartialEq>(v: &mut Vec<Route<A>>, r: Route<A>) {
    if let Some(old) = v
        .iter_mut()
        .find(|o| o.prefix == r.prefix && o.len == r.len && o.priority == r.priority)
    {
        *old = r;
    } else {
        v.push(r);
    }
    // Longest prefix first; among equals, lowest metric first.
    v.sort_by(|a, b| b.len.cmp(&a.len).then(a.priority.cmp(&b.priority)));
}

/// Publishes FIB snapshots to workers.
#[derive(Debug)]
pub struct FibHandle {
    current: ArcSwap<Fib>,
    generation: AtomicU64,
}

impl FibHandle {
    pub fn new(fib: Fib) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(fib),
            generation: AtomicU64::new(1),
        })
    }

    pub fn publish(&self, fib: Fib) {
        self.current.store(Arc::new(fib));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A reader that refreshes its snapshot only when the generation moved.
    pub fn reader(self: &Arc<Self>) -> FibReader {
        FibReader {
            handle: Arc::clone(self),
            generation: self.generation.load(Ordering::Acquire),
            fib: self.current.load_full(),
        }
    }
}

/// A worker's view: one relaxed load per [`FibReader::refresh`].
#[derive(Debug)]
pub struct FibReader {
    handle: Arc<FibHandle>,
    generation: u64,
    fib: Arc<Fib>,
}

impl FibReader {
    /// Picks up a newer snapshot if one was published. Call once per batch.
    #[inline]
    pub fn refresh(&mut self) {
        let g = self.handle.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.fib = self.handle.current.load_full();
        }
    }

    #[inline]
    pub fn fib(&self) -> &Fib {
        &self.fib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: u32 = 2;
    const OUT: u32 = 3;

    fn lab() -> Fib {
        let mut f = Fib::default();
        *f.link_mut(IN) = Link {
            name: "in0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::new(198, 18, 1, 2)],
            v6: vec!["fe80::1".parse().unwrap(), "2001:db8:1::2".parse().unwrap()],
        };
        *f.link_mut(OUT) = Link {
            name: "out0".into(),
            mac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::new(198, 18, 2, 2)],
            v6: vec![],
        };
        let r = |p: [u8; 4], len, oif, gw: Option<[u8; 4]>| Route {
            prefix: Ipv4Addr::from(p),
            len,
            oif,
            gateway: gw.map(Ipv4Addr::from),
            priority: 0,
            kind: RouteKind::Unicast,
        };
        f.upsert_route4(r([198, 18, 1, 0], 24, IN, None));
        f.upsert_route4(r([198, 18, 2, 0], 24, OUT, None));
        f.upsert_route4(r([0, 0, 0, 0], 0, OUT, Some([198, 18, 2, 254])));
        f
    }

    #[test]
    fn longest_prefix_wins_over_default() {
        let f = lab();
        assert_eq!(f.route4(Ipv4Addr::new(198, 18, 1, 10)).unwrap().oif, IN);
        let d = f.route4(Ipv4Addr::new(8, 8, 8, 8)).unwrap();
        assert_eq!(d.len, 0);
        assert_eq!(d.gateway, Some(Ipv4Addr::new(198, 18, 2, 254)));
    }

    #[test]
    fn unresolved_neighbour_is_a_distinct_miss() {
        let mut f = lab();
        let dst = Ipv4Addr::new(198, 18, 2, 10);
        assert_eq!(f.lookup4(dst), Err(Miss::NoNeighbour { oif: OUT }));
        f.set_neighbour(OUT, dst.into(), Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(
            f.lookup4(dst),
            Ok(NextHop {
                oif: OUT,
                src_mac: [2, 0, 0, 0, 0, 2],
                dst_mac: [2, 0, 0, 0, 0, 9]
            })
        );
        f.set_neighbour(OUT, dst.into(), None);
        assert!(f.lookup4(dst).is_err());
    }

    #[test]
    fn gateway_route_resolves_the_gateway_not_the_destination() {
        let mut f = lab();
        f.set_neighbour(OUT, Ipv4Addr::new(198, 18, 2, 254).into(), Some([9; 6]));
        assert_eq!(
            f.lookup4(Ipv4Addr::new(1, 1, 1, 1)).unwrap().dst_mac,
            [9; 6]
        );
    }

    #[test]
    fn reject_route_and_removed_route_miss() {
        let mut f = lab();
        f.upsert_route4(Route {
            prefix: Ipv4Addr::new(10, 0, 0, 0),
            len: 8,
            oif: 0,
            gateway: None,
            priority: 0,
            kind: RouteKind::Reject,
        });
        assert_eq!(f.lookup4(Ipv4Addr::new(10, 1, 1, 1)), Err(Miss::NoRoute));
        f.remove_route4(Ipv4Addr::UNSPECIFIED, 0, 0);
        assert_eq!(f.lookup4(Ipv4Addr::new(8, 8, 8, 8)), Err(Miss::NoRoute));
    }

    #[test]
    fn upsert_masks_host_bits_and_replaces() {
        let mut f = Fib::default();
        let mut r = Route {
            prefix: Ipv4Addr::new(198, 18, 1, 77),
            len: 24,
            oif: 5,
            gateway: None,
            priority: 0,
            kind: RouteKind::Unicast,
        };
        f.upsert_route4(r);
        r.oif = 6;
        f.upsert_route4(r);
        assert_eq!(f.route_count(), (1, 0));
        assert_eq!(f.route4(Ipv4Addr::new(198, 18, 1, 1)).unwrap().oif, 6);
    }

    #[test]
    fn ipv6_lookup_and_source_prefers_global() {
        let mut f = lab();
        f.upsert_route6(Route {
            prefix: "2001:db8:1::".parse().unwrap(),
            len: 64,
            oif: IN,
            gateway: None,
            priority: 256,
            kind: RouteKind::Unicast,
        });
        let dst: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        f.set_neighbour(IN, dst.into(), Some([7; 6]));
        assert_eq!(f.lookup6(dst).unwrap().oif, IN);
        assert_eq!(f.source6(IN), Some("2001:db8:1::2".parse().unwrap()));
    }

    #[test]
    fn link_removal_drops_its_routes_and_neighbours() {
        let mut f = lab();
        f.set_neighbour(OUT, Ipv4Addr::new(198, 18, 2, 10).into(), Some([1; 6]));
        f.remove_link(OUT);
        assert_eq!(f.neighbour_count(), 0);
        assert_eq!(f.route4(Ipv4Addr::new(198, 18, 2, 10)), None);
    }

    #[test]
    fn reader_sees_published_snapshot_after_refresh() {
        let h = FibHandle::new(Fib::default());
        let mut r = h.reader();
        assert_eq!(r.fib().route_count(), (0, 0));
        h.publish(lab());
        assert_eq!(r.fib().route_count(), (0, 0));
        r.refresh();
        assert_eq!(r.fib().route_count(), (3, 0));
    }
}

//! Flow keys and the symmetric hash that picks a flow's owner.

use std::{
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use foldhash::fast::FixedState;

/// One direction of a flow as seen on the wire. IPv4 addresses are stored
/// IPv4-mapped so one key type serves both families. ICMP echo flows carry
/// the identifier in both ports, so a flow and its reply reverse cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Seed shared by every worker (and by both nodes of a pair): ownership and
/// table placement must agree everywhere.
const SEED: u64 = 0x7461_6e64_656d_0001;

/// IPv4-mapped form of an IPv4 address.
#[inline]
pub fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

#[inline]
fn unmapped(a: &[u8; 16]) -> Option<[u8; 4]> {
    (a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff).then(|| [a[12], a[13], a[14], a[15]])
}

fn addr(a: &[u8; 16]) -> IpAddr {
    match unmapped(a) {
        Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        None => IpAddr::V6(Ipv6Addr::from(*a)),
    }
}

impl FlowKey {
    pub fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src: mapped(src),
            dst: mapped(dst),
            sport,
            dport,
            proto,
        }
    }

    /// The same flow seen from the other end.
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    pub fn is_v4(&self) -> bool {
        unmapped(&self.src).is_some()
    }

    pub fn src_v4(&self) -> Option<[u8; 4]> {
        unmapped(&self.src)
    }

    pub fn dst_v4(&self) -> Option<[u8; 4]> {
        unmapped(&self.dst)
    }

    pub fn src_ip(&self) -> IpAddr {
        addr(&self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        addr(&self.dst)
    }

    /// Hash for the session index (direction-sensitive).
    #[inline]
    pub fn table_hash(&self) -> u64 {
        FixedState::with_seed(SEED).hash_one(self)
    }

    /// Direction-free hash: a flow and its reverse hash alike, so both
    /// directions pick the same owner. foldhash's quality variant: the
    /// fast one's output, taken modulo the worker count, put all twelve
    /// flows from one port to twelve consecutive ports on one worker for 3%
    /// of source ports (60 times chance).
    #[inline]
    pub fn symmetric_hash(&self) -> u64 {
        let a = (self.src, self.sport);
        let b = (self.dst, self.dport);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        foldhash::quality::FixedState::with_seed(SEED ^ 0x5f5f).hash_one((lo, hi, self.proto))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn symmetric_hash_ignores_direction(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            sport in any::<u16>(), dport in any::<u16>(), proto in any::<u8>(),
        ) {
            let k = FlowKey::v4(src, dst, sport, dport, proto);
            prop_assert_eq!(k.symmetric_hash(), k.reversed().symmetric_hash());
            prop_assert_eq!(k.reversed().reversed(), k);
        }
    }

    /// Flows that differ in a port or two spread over the workers as by
    /// chance: twelve flows from one client port to twelve consecutive
    /// server ports all land on the same one of two workers with
    /// probability 2/4096, about 2 of 4096 client ports.
    #[test]
    fn owners_spread_like_chance() {
        let mut all_on_one = 0;
        for sport in 40_000..44_096u16 {
            let on_one: u64 = (0..12u16)
                .map(|p| {
                    FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], sport, 7500 + p, 17)
                        .symmetric_hash()
                        % 2
                })
                .sum();
            if on_one == 0 || on_one == 12 {
                all_on_one += 1;
            }
        }
        // The fast variant gave about 120 here.
        assert!(all_on_one < 16, "{all_on_one} of 4096 client ports");
        // And 10k flows from consecutive client ports, over three workers.
        let mut per = [0u32; 3];
        for sport in 10_000..20_000u16 {
            let k = FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], sport, 53, 17);
            per[(k.symmetric_hash() % 3) as usize] += 1;
        }
        assert!(per.iter().all(|n| (3_100..3_570).contains(n)), "{per:?}");
    }

    #[test]
    fn table_hash_tells_directions_apart() {
        let k = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 6);
        assert_ne!(k.table_hash(), k.reversed().table_hash());
    }

    #[test]
    fn mapped_round_trips() {
        let k = FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 1, 2, 17);
        assert!(k.is_v4());
        assert_eq!(k.src_ip(), "198.18.1.10".parse::<IpAddr>().unwrap());
        let v6 = FlowKey {
            src: "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
            ..k
        };
        assert!(!v6.is_v4());
        assert_eq!(v6.src_ip(), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}

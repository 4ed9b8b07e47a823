//! Frames that announce an address that moved to this node: a
//! gratuitous ARP for IPv4, an unsolicited neighbour advertisement for
//! IPv6. Built here, sent by the redundancy driver.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A gratuitous ARP request for `addr` from `mac`: broadcast, sender and
/// target protocol address both `addr` (RFC 5227's ARP announcement),
/// which neighbours take to update an existing entry at once.
pub fn garp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address zero, as an announcement has it.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// An unsolicited neighbour advertisement for `addr` from `mac` (RFC 4861
/// 7.2.6): to all nodes (ff02::1), from `addr` itself, hop limit 255,
/// Override set so that neighbours replace the link-layer address they
/// have (an entry they do not have is not created), Router as the node's
/// own advertisements have it, and the target link-layer address option.
pub fn unsolicited_na(mac: [u8; 6], addr: Ipv6Addr, router: bool) -> [u8; 86] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; 86];
    f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58; // ICMPv6
    f[21] = 255;
    f[22..38].copy_from_slice(&addr.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    f[54] = 136; // neighbour advertisement
    f[58] = if router { 0x80 } else { 0 } | 0x20;
    f[62..78].copy_from_slice(&addr.octets());
    f[78] = 2; // target link-layer address
    f[79] = 1; // in units of 8 bytes
    f[80..86].copy_from_slice(&mac);
    // The ICMPv6 checksum covers a pseudo-header: source, destination,
    // upper-layer length and next header.
    let mut pseudo = [0u8; 40 + 32];
    pseudo[..32].copy_from_slice(&f[22..54]);
    pseudo[32..36].copy_from_slice(&32u32.to_be_bytes());
    pseudo[39] = 58;
    pseudo[40..].copy_from_slice(&f[54..86]);
    let sum = super::checksum(&pseudo, 0);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn unsolicited_na_parses_with_a_valid_checksum_and_overrides() {
        let mac = [2, 0, 0, 0, 0, 0xa1];
        let addr: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        for router in [false, true] {
            let f = unsolicited_na(mac, addr, router);
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6: {:?}", p.net);
            };
            let h = ip.header();
            assert_eq!(h.source_addr(), addr);
            assert_eq!(h.destination_addr(), "ff02::1".parse::<Ipv6Addr>().unwrap());
            assert_eq!(
                h.hop_limit(),
                255,
                "RFC 4861 drops NAs with another hop limit"
            );
            let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
                panic!("not ICMPv6: {:?}", p.transport);
            };
            assert!(icmp.is_checksum_valid(h.source(), h.destination()));
            let Icmpv6Type::NeighborAdvertisement(na) = icmp.icmp_type() else {
                panic!("not an NA: {:?}", icmp.icmp_type());
            };
            assert_eq!(
                (na.router, na.solicited, na.r#override),
                (router, false, true)
            );
            // Target, then the target link-layer address option.
            let body = icmp.payload();
            assert_eq!(body[..16], addr.octets());
            assert_eq!(body[16..18], [2, 1]);
            assert_eq!(body[18..24], mac);
        }
    }

    #[test]
    fn garp_announces_the_address_from_the_mac() {
        let f = garp_frame([2, 0, 0, 0, 0, 0xa1], Ipv4Addr::new(198, 18, 1, 1));
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Arp(arp)) = &p.net else {
            panic!("not ARP: {:?}", p.net);
        };
        assert_eq!(arp.sender_protocol_addr(), [198, 18, 1, 1]);
        assert_eq!(arp.target_protocol_addr(), [198, 18, 1, 1]);
        assert_eq!(arp.sender_hw_addr(), [2, 0, 0, 0, 0, 0xa1]);
        assert_eq!(f[..6], [0xff; 6]);
    }
}

//! Test helper: checks a frame's IPv4 and transport checksums against
//! etherparse, independently of the code under test.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::{ETH_HLEN, checksum, parse};

/// Asserts that the IPv4 header checksum and the TCP/UDP/ICMP checksum of
/// the frame in `buf` (which may be longer than the frame) verify, and
/// returns (src, sport, dst, dport); ICMP has the echo id in both ports.
pub fn verified_v4(buf: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let end = ETH_HLEN + parse(buf).expect("parses").datagram_len();
    let pkt = SlicedPacket::from_ethernet(&buf[..end]).expect("etherparse");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
    let (src, dst) = (h.source(), h.destination());
    match pkt.transport.expect("a transport header") {
        TransportSlice::Tcp(t) => {
            let c = t.to_header().calc_checksum_ipv4_raw(src, dst, t.payload());
            assert_eq!(c.expect("tcp checksum"), t.checksum());
            (src, t.source_port(), dst, t.destination_port())
        }
        TransportSlice::Udp(u) => {
            let c = u.to_header().calc_checksum_ipv4_raw(src, dst, u.payload());
            assert_eq!(c.expect("udp checksum"), u.checksum());
            (src, u.source_port(), dst, u.destination_port())
        }
        TransportSlice::Icmpv4(i) => {
            assert_eq!(checksum(i.slice(), 0), 0);
            let b = i.slice();
            let id = u16::from_be_bytes([b[4], b[5]]);
            (src, id, dst, id)
        }
        other @ TransportSlice::Icmpv6(_) => panic!("{other:?}"),
    }
}

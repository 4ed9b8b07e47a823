//! Wire formats the worker touches: Ethernet (+ one VLAN tag), IPv4, IPv6 and
//! the ICMP errors it originates.
//!
//! Design: plain offset arithmetic over the frame in the UMEM, no copies.
//! [`parse`] validates everything a later accessor relies on, so rewriting
//! code indexes without re-checking. Checksums follow RFC 1071 (full) and
//! RFC 1624 (incremental).

pub mod announce;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
mod l4;
mod nat;
mod reject;
#[cfg(test)]
pub mod testutil;
pub mod transport;

use self::transport::IcmpHeader;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use l4::{
    Kind, L4, Quoted, QuotedV6, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parse_l4, quoted_v4, quoted_v6,
};
pub use nat::{Rewrite, rewrite_icmp_error_v4, rewrite_v4};
pub use reject::tcp_reset;

pub use self::{
    ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetFrame, HEADER_LEN as ETH_HLEN},
    ipv4::{Ipv4Packet, MIN_HEADER_LEN as IPV4_MIN_HLEN},
    ipv6::{HEADER_LEN as IPV6_HLEN, Ipv6Packet},
};
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Why a frame could not be parsed. Each is a drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the headers it announces.
    Truncated,
    /// Not IPv4 or IPv6 (the XDP program should not have sent it).
    NotIp,
    /// Bad version, header length or total length.
    BadHeader,
    /// IPv4 header checksum does not verify.
    BadChecksum,
    /// More IPv6 extension headers than [`MAX_EXT_HEADERS`].
    HeaderChain,
}

/// IPv6 extension headers the parser follows before the transport header;
/// a longer chain is refused, never classified by the header it stops at.
pub const MAX_EXT_HEADERS: usize = 6;

/// The network header of a parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4 {
        /// Offset of the IPv4 header in the frame.
        l3: usize,
        /// IPv4 header length in bytes.
        ihl: usize,
        /// IPv4 total length.
        len: usize,
        dst: Ipv4Addr,
        ttl: u8,
    },
    V6 {
        l3: usize,
        /// 40 + payload length.
        len: usize,
        dst: Ipv6Addr,
        hop_limit: u8,
    },
}

impl Ip {
    /// The same header after a rewrite of its destination in `frame`
    /// (NAT of a reply back to the inside host): routing must see the
    /// address the datagram now goes to.
    #[inline]
    #[must_use]
    pub fn redirected(self, frame: &[u8]) -> Self {
        match self {
            Self::V4 {
                l3, ihl, len, ttl, ..
            } => Self::V4 {
                l3,
                ihl,
                len,
                dst: Ipv4Packet::new_unchecked(&frame[l3..]).dst(),
                ttl,
            },
            v6 @ Self::V6 { .. } => v6,
        }
    }

    #[inline]
    pub fn l3(&self) -> usize {
        match *self {
            Self::V4 { l3, .. } | Self::V6 { l3, .. } => l3,
        }
    }

    /// The source and destination addresses in `frame` (which this header
    /// was parsed from), IPv4 ones IPv4-mapped: one form for both
    /// families.
    #[inline]
    pub fn addresses(&self, frame: &[u8]) -> ([u8; 16], [u8; 16]) {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        match *self {
            Self::V4 { l3, .. } => {
                let ip = Ipv4Packet::new_unchecked(&frame[l3..]);
                src[10..12].fill(0xff);
                dst[10..12].fill(0xff);
                src[12..].copy_from_slice(&ip.src_addr());
                dst[12..].copy_from_slice(&ip.dst_addr());
            }
            Self::V6 { l3, .. } => {
                let ip = Ipv6Packet::new_unchecked(&frame[l3..]);
                src = ip.src_addr();
                dst = ip.dst_addr();
            }
        }
        (src, dst)
    }

    /// Whether an IPv4 datagram in `frame` may not be fragmented (DF); an
    /// IPv6 one never is on the way.
    #[inline]
    pub fn dont_fragment(&self, frame: &[u8]) -> bool {
        match *self {
            Self::V4 { l3, .. } => Ipv4Packet::new_unchecked(&frame[l3..]).dont_frag(),
            Self::V6 { .. } => true,
        }
    }

    /// Length of the IP datagram (header and payload, no link padding).
    #[inline]
    pub fn datagram_len(&self) -> usize {
        match *self {
            Self::V4 { len, .. } | Self::V6 { len, .. } => len,
        }
    }
}

/// A frame's network and transport headers, parsed once: the worker's
/// prefetch pass finds them, and the decision uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub ip: Ip,
    /// The transport view, or why there is none (a datagram may still be
    /// routed without services).
    pub l4: Result<L4, ParseError>,
}

impl Headers {
    /// Parses `frame`'s link, network and transport headers.
    pub fn parse(frame: &[u8]) -> Result<Self, ParseError> {
        let ip = parse(frame)?;
        Ok(Self {
            ip,
            l4: parse_l4(frame, &ip),
        })
    }

    /// The same headers after the datagram moved `by` bytes toward the
    /// frame's start (a VLAN tag removed).
    #[must_use]
    pub fn moved_up(self, by: usize) -> Self {
        let ip = match self.ip {
            Ip::V4 {
                l3,
                ihl,
                len,
                dst,
                ttl,
            } => Ip::V4 {
                l3: l3 - by,
                ihl,
                len,
                dst,
                ttl,
            },
            Ip::V6 {
                l3,
                len,
                dst,
                hop_limit,
            } => Ip::V6 {
                l3: l3 - by,
                len,
                dst,
                hop_limit,
            },
        };
        let l4 = self.l4.map(|mut l4| {
            if l4.off != 0 {
                l4.off -= by;
            }
            if let Kind::Error { inner } = &mut l4.kind {
                *inner -= by;
            }
            l4
        });
        Self { ip, l4 }
    }
}

/// The destination and source MACs of an Ethernet frame of at least
/// `ETH_HLEN` bytes.
#[inline]
pub fn macs(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    let eth = EthernetFrame::new_unchecked(frame);
    (eth.dst_addr(), eth.src_addr())
}

/// Parses the link and network headers of `frame`.
pub fn parse(frame: &[u8]) -> Result<Ip, ParseError> {
    let eth = EthernetFrame::new_checked(frame)?;
    let l3 = eth.header_len();
    match eth.payload_ethertype() {
        ETHERTYPE_IPV4 => parse_v4(frame, l3),
        ETHERTYPE_IPV6 => parse_v6(frame, l3),
        _ => Err(ParseError::NotIp),
    }
}

fn parse_v4(frame: &[u8], l3: usize) -> Result<Ip, ParseError> {
    let ip = Ipv4Packet::new_checked(frame.get(l3..).ok_or(ParseError::Truncated)?)?;
    if !ip.verify_checksum() {
        return Err(ParseError::BadChecksum);
    }
    Ok(Ip::V4 {
        l3,
        ihl: ip.header_len(),
        len: ip.total_len(),
        dst: ip.dst(),
        ttl: ip.ttl(),
    })
}

fn parse_v6(frame: &[u8], l3: usize) -> Result<Ip, ParseError> {
    let ip = Ipv6Packet::new_checked(frame.get(l3..).ok_or(ParseError::Truncated)?)?;
    Ok(Ip::V6 {
        l3,
        len: ip.total_len(),
        dst: ip.dst(),
        hop_limit: ip.hop_limit(),
    })
}

/// RFC 1071 one's-complement sum of `data` added to `initial`, folded and
/// complemented: the value to store in a checksum field (0 means the data,
/// including its checksum field, verifies).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1624 eqn. 3: checksum after one 16-bit word changed from `old` to `new`.
#[inline]
pub fn checksum_update(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Decrements the IPv4 TTL at `l3` and patches the header checksum.
#[inline]
pub fn decrement_ttl_v4(frame: &mut [u8], l3: usize) {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[l3..]);
    ip.set_ttl(ip.ttl() - 1);
}

/// Decrements the IPv6 hop limit at `l3`.
#[inline]
pub fn decrement_hop_limit_v6(frame: &mut [u8], l3: usize) {
    let mut ip = Ipv6Packet::new_unchecked(&mut frame[l3..]);
    ip.set_hop_limit(ip.hop_limit() - 1);
}

/// Writes an untagged Ethernet header ending at `l3` (so `l3 >= 14`).
#[inline]
pub fn write_eth(frame: &mut [u8], l3: usize, dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    let mut eth = EthernetFrame::new_unchecked(&mut frame[l3 - ETH_HLEN..l3]);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(ethertype);
}

/// Most of the offending datagram an ICMPv4 error quotes (576 - 20 - 8, the
/// RFC 1812 limit).
const ICMP4_QUOTE_MAX: usize = 548;
/// Most an ICMPv6 error quotes (RFC 4443: the error fits the 1280 minimum MTU).
const ICMP6_QUOTE_MAX: usize = 1280 - IPV6_HLEN - 8;

/// Whether an error may be sent about this IPv4 datagram (RFC 1812 4.3.2.7):
/// not about ICMP errors, non-first fragments, or non-unicast sources.
pub fn may_send_icmp4_error(frame: &[u8], l3: usize, ihl: usize) -> bool {
    let ip = Ipv4Packet::new_unchecked(&frame[l3..]);
    let src = Ipv4Addr::from(ip.src_addr());
    if src.is_multicast() || src.is_broadcast() || src.is_unspecified() || src.is_loopback() {
        return false;
    }
    if ip.is_later_fragment() {
        return false;
    }
    if ip.protocol() == PROTO_ICMP {
        // Only informational messages (echo, timestamp, ...) may trigger one.
        let Some(&ty) = frame.get(l3 + ihl) else {
            return false;
        };
        return matches!(ty, 0 | 8 | 13 | 14);
    }
    true
}

/// Turns the frame holding an IPv4 datagram at `l3` (of `len` bytes) into an
/// ICMPv4 error from `src` back to its sender. `frame` is the whole buffer
/// (its capacity, not just the received bytes). The Ethernet header is left
/// for the caller, which routes the error. `rest` is the second word of the
/// ICMP header (e.g. the next-hop MTU of "fragmentation needed"). Returns the new frame length and
/// the error's destination.
pub fn icmp4_error(
    frame: &mut [u8],
    l3: usize,
    len: usize,
    src: Ipv4Addr,
    ty: u8,
    code: u8,
    rest: u32,
) -> Option<(usize, Ipv4Addr)> {
    const OUT_L3: usize = ETH_HLEN;
    const QUOTE_AT: usize = OUT_L3 + IPV4_MIN_HLEN + 8;
    let quote = len.min(ICMP4_QUOTE_MAX);
    if frame.len() < QUOTE_AT + quote {
        return None;
    }
    let orig_src = Ipv4Packet::new_unchecked(&frame[l3..]).src_addr();
    frame.copy_within(l3..l3 + quote, QUOTE_AT);
    let total = IPV4_MIN_HLEN + 8 + quote;
    // Internetwork control precedence, and routers may fragment it.
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[OUT_L3..]);
    ip.emit_header(total as u16, 64, PROTO_ICMP, src.octets(), orig_src);
    ip.set_tos(0xc0);
    ip.set_dont_frag(false);
    ip.fill_checksum();
    let icmp_at = OUT_L3 + IPV4_MIN_HLEN;
    let message = &mut frame[icmp_at..QUOTE_AT + quote];
    IcmpHeader::new_unchecked(&mut *message).emit_header(ty, code, rest);
    let c = checksum(message, 0);
    IcmpHeader::new_unchecked(message).set_checksum(c);
    Some((ETH_HLEN + total, Ipv4Addr::from(orig_src)))
}

/// Whether an error may be sent about this IPv6 datagram (RFC 4443 2.4 e).
pub fn may_send_icmp6_error(frame: &[u8], l3: usize) -> bool {
    let ip = Ipv6Packet::new_unchecked(&frame[l3..]);
    let src = Ipv6Addr::from(ip.src_addr());
    if src.is_multicast() || src.is_unspecified() || src.is_loopback() {
        return false;
    }
    if ip.next_header() == PROTO_ICMPV6 {
        // Errors are types 0..=127; only informational ones may trigger one.
        return frame.get(l3 + IPV6_HLEN).is_some_and(|&ty| ty >= 128);
    }
    true
}

/// IPv6 counterpart of [`icmp4_error`].
pub fn icmp6_error(
    frame: &mut [u8],
    l3: usize,
    len: usize,
    src: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: u32,
) -> Option<(usize, Ipv6Addr)> {
    const OUT_L3: usize = ETH_HLEN;
    const QUOTE_AT: usize = OUT_L3 + IPV6_HLEN + 8;
    let quote = len.min(ICMP6_QUOTE_MAX);
    if frame.len() < QUOTE_AT + quote {
        return None;
    }
    let orig_src = Ipv6Addr::from(Ipv6Packet::new_unchecked(&frame[l3..]).src_addr());
    frame.copy_within(l3..l3 + quote, QUOTE_AT);
    let payload = 8 + quote;
    Ipv6Packet::new_unchecked(&mut frame[OUT_L3..]).emit_header(
        payload as u16,
        PROTO_ICMPV6,
        64,
        src.octets(),
        orig_src.octets(),
    );
    let icmp_at = OUT_L3 + IPV6_HLEN;
    let message = &mut frame[icmp_at..QUOTE_AT + quote];
    IcmpHeader::new_unchecked(&mut *message).emit_header(ty, code, rest);
    let c = checksum(
        message,
        pseudo_header_sum6(&src, &orig_src, payload as u32, PROTO_ICMPV6),
    );
    IcmpHeader::new_unchecked(message).set_checksum(c);
    Some((ETH_HLEN + IPV6_HLEN + payload, orig_src))
}

/// Unfolded one's-complement sum of the IPv6 pseudo-header (RFC 8200 8.1).
pub fn pseudo_header_sum6(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32, next: u8) -> u32 {
    let mut sum = 0u32;
    for a in [src.octets(), dst.octets()] {
        for c in a.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    }
    sum + (len >> 16) + (len & 0xffff) + u32::from(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    };

    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x02];

    fn udp4(ttl: u8, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], ttl)
            .udp(40000, 7);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn udp6(hops: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv6(
                "2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets(),
                "2001:db8:2::10".parse::<Ipv6Addr>().unwrap().octets(),
                hops,
            )
            .udp(40000, 7);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    #[test]
    fn parse_ipv4_udp() {
        let f = udp4(64, b"abc");
        let ip = parse(&f).unwrap();
        assert_eq!(
            ip,
            Ip::V4 {
                l3: 14,
                ihl: 20,
                len: 20 + 8 + 3,
                dst: Ipv4Addr::new(198, 18, 2, 10),
                ttl: 64
            }
        );
    }

    #[test]
    fn a_rewritten_destination_is_what_routing_sees() {
        let mut f = udp4(64, b"abc");
        let ip = parse(&f).unwrap();
        // A reply to the NAT pool, translated back to the inside host.
        f[14 + 16..14 + 20].copy_from_slice(&[198, 18, 1, 10]);
        let Ip::V4 { dst, len, ttl, .. } = ip.redirected(&f) else {
            panic!("v4")
        };
        assert_eq!(dst, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!((len, ttl), (31, 64));
        let v6 = parse(&udp6(9)).unwrap();
        assert_eq!(v6.redirected(&udp6(9)), v6);
    }

    #[test]
    fn parse_ignores_link_padding() {
        let mut f = udp4(64, b"");
        f.resize(60, 0);
        assert_eq!(parse(&f).unwrap().datagram_len(), 28);
    }

    #[test]
    fn parse_vlan_tagged_ipv4() {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .single_vlan(100.try_into().unwrap())
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
            .udp(1, 2);
        let mut f = Vec::new();
        b.write(&mut f, b"x").unwrap();
        assert_eq!(parse(&f).unwrap().l3(), 18);
    }

    #[test]
    fn parse_rejects_truncated_ipv4() {
        let f = udp4(64, b"abcdef");
        assert_eq!(parse(&f[..30]), Err(ParseError::Truncated));
        assert_eq!(parse(&f[..10]), Err(ParseError::Truncated));
        // Header complete, payload cut short of total length.
        assert_eq!(parse(&f[..f.len() - 1]), Err(ParseError::Truncated));
    }

    #[test]
    fn parse_rejects_bad_ihl_and_version() {
        let mut f = udp4(64, b"a");
        f[14] = 0x44;
        assert_eq!(parse(&f), Err(ParseError::BadHeader));
        f[14] = 0x65;
        assert_eq!(parse(&f), Err(ParseError::BadHeader));
    }

    #[test]
    fn parse_rejects_total_length_below_header() {
        let mut f = udp4(64, b"a");
        f[16..18].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse(&f), Err(ParseError::BadHeader));
    }

    #[test]
    fn parse_rejects_bad_checksum() {
        let mut f = udp4(64, b"a");
        f[24] ^= 0x55;
        assert_eq!(parse(&f), Err(ParseError::BadChecksum));
    }

    #[test]
    fn parse_rejects_non_ip() {
        let mut f = udp4(64, b"a");
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&f), Err(ParseError::NotIp));
    }

    #[test]
    fn parse_ipv6_udp_and_truncation() {
        let f = udp6(5);
        match parse(&f).unwrap() {
            Ip::V6 { len, hop_limit, .. } => {
                assert_eq!(len, 40 + 8 + 5);
                assert_eq!(hop_limit, 5);
            }
            Ip::V4 { .. } => panic!("v4"),
        }
        assert_eq!(parse(&f[..50]), Err(ParseError::Truncated));
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        for ttl in [2u8, 64, 128, 255] {
            let mut f = udp4(ttl, b"payload");
            decrement_ttl_v4(&mut f, 14);
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            assert_eq!(ip.header().ttl(), ttl - 1);
            assert_eq!(checksum(&f[14..34], 0), 0, "ttl {ttl}");
        }
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut f = udp4(64, b"z");
        // Every possible TTL value, against a from-scratch checksum.
        for ttl in 1..=255u8 {
            f[22] = ttl;
            f[24..26].copy_from_slice(&[0, 0]);
            let c = checksum(&f[14..34], 0);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            decrement_ttl_v4(&mut f, 14);
            let got = u16::from_be_bytes([f[24], f[25]]);
            f[24..26].copy_from_slice(&[0, 0]);
            let want = checksum(&f[14..34], 0);
            assert_eq!(got, want, "ttl {ttl}");
            f[22] = ttl;
        }
    }

    #[test]
    fn icmp4_time_exceeded_is_well_formed() {
        let orig = udp4(1, b"0123456789");
        let mut buf = vec![0u8; 2048];
        buf[..orig.len()].copy_from_slice(&orig);
        let ip = parse(&buf[..orig.len()]).unwrap();
        let src = Ipv4Addr::new(198, 18, 1, 2);
        let (len, to) = icmp4_error(&mut buf, 14, ip.datagram_len(), src, 11, 0, 0).unwrap();
        assert_eq!(to, Ipv4Addr::new(198, 18, 1, 10));
        write_eth(&mut buf, 14, SRC_MAC, DST_MAC, ETHERTYPE_IPV4);
        let p = SlicedPacket::from_ethernet(&buf[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip4)) = &p.net else {
            panic!()
        };
        assert_eq!(ip4.header().source(), [198, 18, 1, 2]);
        assert_eq!(ip4.header().destination(), [198, 18, 1, 10]);
        assert_eq!(checksum(&buf[14..34], 0), 0);
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!()
        };
        assert!(matches!(icmp.icmp_type(), Icmpv4Type::TimeExceeded(_)));
        assert_eq!(checksum(&buf[34..len], 0), 0);
        // The quote is the original datagram, byte for byte.
        assert_eq!(&buf[42..len], &orig[14..]);
    }

    #[test]
    fn icmp6_time_exceeded_checksum_verifies() {
        let orig = udp6(1);
        let mut buf = vec![0u8; 2048];
        buf[..orig.len()].copy_from_slice(&orig);
        let src: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let (len, to) = icmp6_error(&mut buf, 14, orig.len() - 14, src, 3, 0, 0).unwrap();
        assert_eq!(to, "2001:db8:1::10".parse::<Ipv6Addr>().unwrap());
        write_eth(&mut buf, 14, SRC_MAC, DST_MAC, ETHERTYPE_IPV6);
        let p = SlicedPacket::from_ethernet(&buf[..len]).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!()
        };
        assert!(matches!(icmp.icmp_type(), Icmpv6Type::TimeExceeded(_)));
        let payload = (len - 54) as u32;
        let sum = pseudo_header_sum6(&src, &to, payload, PROTO_ICMPV6);
        assert_eq!(checksum(&buf[54..len], sum), 0);
    }

    #[test]
    fn no_icmp_error_about_icmp_errors_or_fragments() {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
            .icmpv4(Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ));
        let mut f = Vec::new();
        b.write(&mut f, &[0; 28]).unwrap();
        assert!(!may_send_icmp4_error(&f, 14, 20));
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
            .icmpv4_echo_request(1, 1);
        let mut f = Vec::new();
        b.write(&mut f, b"ping").unwrap();
        assert!(may_send_icmp4_error(&f, 14, 20));
        let mut f = udp4(1, b"x");
        f[20] = 0x00;
        f[21] = 0x10; // fragment offset 16
        assert!(!may_send_icmp4_error(&f, 14, 20));
    }

    #[test]
    fn icmp_error_needs_room() {
        let orig = udp4(1, &[0u8; 600]);
        let mut buf = orig.clone();
        assert!(icmp4_error(&mut buf[..100], 14, 628, Ipv4Addr::LOCALHOST, 11, 0, 0).is_none());
    }
}

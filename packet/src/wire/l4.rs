//! Transport headers: what a session needs from a datagram.
//!
//! Design: one pass over the datagram that [`super::parse`] validated,
//! yielding the ports (or ICMP echo identifier) that key a flow, the TCP
//! flags that drive its state, and, for ICMP errors, where the quoted
//! datagram starts so the error can be matched to the session it is about.

use super::{
    IPV4_MIN_HLEN, IPV6_HLEN, Ip, Ipv4Packet, Ipv6Packet, MAX_EXT_HEADERS, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ParseError,
    ipv6::{self, Ipv6ExtHeader},
    transport::{IcmpHeader, TcpHeader, UdpHeader},
};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What kind of transport payload a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp {
        flags: u8,
    },
    Udp,
    /// ICMP/ICMPv6 echo; the identifier is in both port fields.
    Echo {
        request: bool,
    },
    /// ICMP/ICMPv6 error quoting a datagram that starts at `inner`.
    Error {
        inner: usize,
    },
    /// A non-first fragment: no transport header to key on.
    Fragment,
    /// Any other protocol or ICMP message: keyed by addresses only.
    Other,
}

/// The transport view of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the transport header in the frame (0 when there is none).
    pub off: usize,
    pub sport: u16,
    pub dport: u16,
    pub kind: Kind,
}

impl L4 {
    fn new(proto: u8, off: usize, kind: Kind) -> Self {
        Self {
            proto,
            off,
            sport: 0,
            dport: 0,
            kind,
        }
    }
}

/// Parses the transport header of a datagram [`super::parse`] accepted.
pub fn parse_l4(frame: &[u8], ip: &Ip) -> Result<L4, ParseError> {
    match *ip {
        Ip::V4 { l3, ihl, len, .. } => {
            let h = Ipv4Packet::new_unchecked(&frame[l3..l3 + len]);
            if h.is_later_fragment() {
                return Ok(L4::new(h.protocol(), 0, Kind::Fragment));
            }
            transport(frame, l3 + ihl, l3 + len, h.protocol(), false)
        }
        Ip::V6 { l3, len, .. } => {
            let end = l3 + len;
            let mut next = Ipv6Packet::new_unchecked(&frame[l3..end]).next_header();
            let mut off = l3 + IPV6_HLEN;
            // Hop-by-hop, routing, fragment, destination options and AH.
            for _ in 0..MAX_EXT_HEADERS {
                if !ipv6::is_extension(next) {
                    break;
                }
                let h = Ipv6ExtHeader::new_checked(frame.get(off..end).unwrap_or(&[]), next)?;
                if h.is_later_fragment() {
                    return Ok(L4::new(h.next_header(), 0, Kind::Fragment));
                }
                next = h.next_header();
                off += h.header_len();
            }
            if ipv6::is_extension(next) {
                return Err(ParseError::HeaderChain);
            }
            if off > end {
                return Err(ParseError::Truncated);
            }
            transport(frame, off, end, next, true)
        }
    }
}

fn transport(frame: &[u8], off: usize, end: usize, proto: u8, v6: bool) -> Result<L4, ParseError> {
    let seg = &frame[off..end];
    let ports = |sport, dport, kind| L4 {
        proto,
        off,
        sport,
        dport,
        kind,
    };
    match proto {
        PROTO_TCP => {
            let t = TcpHeader::new_checked(seg)?;
            Ok(ports(
                t.src_port(),
                t.dst_port(),
                Kind::Tcp { flags: t.flags() },
            ))
        }
        PROTO_UDP => {
            let u = UdpHeader::new_checked(seg)?;
            Ok(ports(u.src_port(), u.dst_port(), Kind::Udp))
        }
        PROTO_ICMP | PROTO_ICMPV6 if (proto == PROTO_ICMPV6) == v6 => {
            let m = IcmpHeader::new_checked(seg)?;
            let ty = m.msg_type();
            let (request, reply, is_error) = if v6 {
                (128, 129, ty < 128)
            } else {
                (8, 0, matches!(ty, 3 | 4 | 5 | 11 | 12))
            };
            let kind = if ty == request || ty == reply {
                Kind::Echo {
                    request: ty == request,
                }
            } else if is_error {
                Kind::Error {
                    inner: off + IcmpHeader::<&[u8]>::LEN,
                }
            } else {
                return Ok(L4::new(proto, off, Kind::Other));
            };
            let id = m.echo_ident();
            Ok(ports(id, id, kind))
        }
        _ => Ok(L4::new(proto, off, Kind::Other)),
    }
}

/// The datagram an ICMP error quotes: its addresses, protocol and the ports
/// (or echo id) of its first 8 transport bytes, with the offsets a NAT
/// rewrite needs. Only IPv4 errors are decoded (NAPT44 is the only rewrite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub l3: usize,
    pub ihl: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// The flow of the IPv6 datagram an ICMPv6 error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// Ports, or an echo's identifier in both (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
}

/// Decodes the IPv6 datagram quoted by an ICMPv6 error whose quote starts
/// at `inner` and whose datagram ends at `end` (no extension headers in
/// the quote). A quote too short for its header and eight transport
/// bytes, or not IPv6, is `Truncated`.
pub fn quoted_v6(frame: &[u8], inner: usize, end: usize) -> Result<QuotedV6, ParseError> {
    let q = frame.get(inner..end).ok_or(ParseError::Truncated)?;
    // The quote's payload length is the original's: only its header and
    // the eight transport bytes that identify the flow are read.
    if q.len() < IPV6_HLEN + 8 {
        return Err(ParseError::Truncated);
    }
    let ip = Ipv6Packet::new_unchecked(q);
    if ip.version() != 6 {
        return Err(ParseError::Truncated);
    }
    let proto = ip.next_header();
    let (sport, dport) = quoted_ports(&q[IPV6_HLEN..], proto, true);
    Ok(QuotedV6 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto,
        sport,
        dport,
    })
}

/// Decodes the IPv4 datagram quoted by an ICMPv4 error whose quote starts at
/// `inner` and whose datagram ends at `end`.
pub fn quoted_v4(frame: &[u8], inner: usize, end: usize) -> Result<Quoted, ParseError> {
    let q = frame.get(inner..end).ok_or(ParseError::Truncated)?;
    // The quote's total length is the original's: only its header and the
    // eight transport bytes that identify the flow are read.
    if q.len() < IPV4_MIN_HLEN {
        return Err(ParseError::Truncated);
    }
    let ip = Ipv4Packet::new_unchecked(q);
    let ihl = ip.header_len();
    if ip.version() != 4 || ihl < IPV4_MIN_HLEN {
        return Err(ParseError::BadHeader);
    }
    if q.len() < ihl + 8 {
        return Err(ParseError::Truncated);
    }
    let proto = ip.protocol();
    let (sport, dport) = quoted_ports(&q[ihl..], proto, false);
    Ok(Quoted {
        l3: inner,
        ihl,
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto,
        sport,
        dport,
    })
}

/// The ports (or an echo's identifier, twice) in the first eight transport
/// bytes `t` of a quoted datagram of protocol `proto`; zeros for others.
fn quoted_ports(t: &[u8], proto: u8, v6: bool) -> (u16, u16) {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            // Ports sit where UDP's do in either header.
            let u = UdpHeader::new_unchecked(t);
            (u.src_port(), u.dst_port())
        }
        PROTO_ICMP | PROTO_ICMPV6 if (proto == PROTO_ICMPV6) == v6 => {
            let m = IcmpHeader::new_unchecked(t);
            let echo = if v6 {
                matches!(m.msg_type(), 128 | 129)
            } else {
                matches!(m.msg_type(), 0 | 8)
            };
            if echo {
                (m.echo_ident(), m.echo_ident())
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;
    use crate::wire::parse;

    fn l4_of(buf: &[u8]) -> L4 {
        let ip = parse(buf).unwrap();
        parse_l4(buf, &ip).unwrap()
    }

    #[test]
    fn tcp_ports_and_flags() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000)
            .syn();
        let mut buf = Vec::new();
        b.write(&mut buf, &[]).unwrap();
        let l4 = l4_of(&buf);
        assert_eq!(
            (l4.proto, l4.sport, l4.dport, l4.off),
            (PROTO_TCP, 40000, 80, 34)
        );
        assert_eq!(l4.kind, Kind::Tcp { flags: TCP_SYN });
    }

    #[test]
    fn echo_id_keys_both_ports() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(0x1234, 1);
        let mut buf = Vec::new();
        b.write(&mut buf, b"ping").unwrap();
        let l4 = l4_of(&buf);
        assert_eq!((l4.sport, l4.dport), (0x1234, 0x1234));
        assert_eq!(l4.kind, Kind::Echo { request: true });
    }

    #[test]
    fn ipv6_skips_extension_headers_and_spots_fragments() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([1; 16], [2; 16], 64)
            .udp(5000, 53);
        let mut buf = Vec::new();
        b.write(&mut buf, b"q").unwrap();
        // Splice an 8-byte destination-options header in front of UDP.
        let mut v = buf[..54].to_vec();
        v[20] = 60;
        v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&buf[54..]);
        let plen = u16::from_be_bytes([v[18], v[19]]) + 8;
        v[18..20].copy_from_slice(&plen.to_be_bytes());
        let l4 = l4_of(&v);
        assert_eq!(
            (l4.proto, l4.sport, l4.dport, l4.off),
            (PROTO_UDP, 5000, 53, 62)
        );
        // Now a non-first fragment header instead.
        v[20] = 44;
        v[54..62].copy_from_slice(&[17, 0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(l4_of(&v).kind, Kind::Fragment);
    }

    /// A chain of `n` destination-options headers in front of a TCP
    /// segment: the parser follows `MAX_EXT_HEADERS` of them, and refuses
    /// a longer chain rather than calling it protocol 60.
    #[test]
    fn a_chain_longer_than_the_parser_follows_is_refused() {
        let chain = |n: usize| {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv6([1; 16], [2; 16], 64)
                .tcp(5000, 22, 1, 1000);
            let mut buf = Vec::new();
            b.write(&mut buf, b"x").unwrap();
            let mut v = buf[..54].to_vec();
            v[20] = 60;
            for i in 0..n {
                let next = if i + 1 == n { PROTO_TCP } else { 60 };
                v.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
            v.extend_from_slice(&buf[54..]);
            let plen = u16::from_be_bytes([v[18], v[19]]) + 8 * n as u16;
            v[18..20].copy_from_slice(&plen.to_be_bytes());
            v
        };
        let ok = chain(MAX_EXT_HEADERS);
        let l4 = l4_of(&ok);
        assert_eq!((l4.proto, l4.sport, l4.dport), (PROTO_TCP, 5000, 22));
        let long = chain(MAX_EXT_HEADERS + 1);
        let ip = parse(&long).unwrap();
        assert_eq!(parse_l4(&long, &ip), Err(ParseError::HeaderChain));
    }

    #[test]
    fn truncated_transport_is_an_error() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2);
        let mut buf = Vec::new();
        b.write(&mut buf, &[]).unwrap();
        // Claim a 4-byte UDP header by shrinking the IP total length.
        buf[16..18].copy_from_slice(&24u16.to_be_bytes());
        buf[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum(&buf[14..34], 0);
        buf[24..26].copy_from_slice(&c.to_be_bytes());
        let ip = parse(&buf).unwrap();
        assert_eq!(parse_l4(&buf, &ip), Err(ParseError::Truncated));
    }
}

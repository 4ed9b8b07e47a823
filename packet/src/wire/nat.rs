//! NAPT44 rewrites with incremental checksum updates (RFC 1624, RFC 3022).
//!
//! Design: every rewrite replaces one endpoint (address and port, or the ICMP
//! echo identifier) and patches each checksum that covers the changed words
//! by the difference, so the cost does not depend on the payload length.
//! ICMP errors rewrite the quoted datagram as well, mirrored: the quoted
//! packet travelled the other way.

use super::{
    Ipv4Packet, Kind, L4, PROTO_ICMP, PROTO_TCP, PROTO_UDP, checksum, quoted_v4,
    transport::{IcmpHeader, TcpHeader, UdpHeader},
};

/// Which endpoint of a datagram a rewrite replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    Source,
    Destination,
}

/// RFC 1624 eqn. 3 over any number of 16-bit words: the checksum after the
/// words `old` became `new` (both of even length).
fn adjust(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!csum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Offset of the transport checksum from the transport header, and whether a
/// zero checksum means "none" (UDP over IPv4).
fn transport_csum(proto: u8) -> Option<(usize, bool)> {
    match proto {
        PROTO_TCP => Some((16, false)),
        PROTO_UDP => Some((6, true)),
        PROTO_ICMP => Some((2, false)),
        _ => None,
    }
}

/// Replaces one endpoint of the IPv4 datagram at `l3`: the address, and the
/// port (TCP/UDP) or echo identifier (ICMP echo) when `l4` has one.
pub fn rewrite_v4(frame: &mut [u8], l3: usize, l4: &L4, which: Rewrite, addr: [u8; 4], port: u16) {
    let old_addr = {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[l3..]);
        let old = match which {
            Rewrite::Source => ip.src_addr(),
            Rewrite::Destination => ip.dst_addr(),
        };
        match which {
            Rewrite::Source => ip.set_src_addr(addr),
            Rewrite::Destination => ip.set_dst_addr(addr),
        }
        ip.set_header_checksum(adjust(ip.header_checksum(), &old, &addr));
        old
    };
    let seg = &mut frame[l4.off..];
    let new = port.to_be_bytes();
    // TCP and UDP checksums cover the addresses (pseudo-header) and the
    // port; ICMP's covers the echo identifier only.
    match l4.kind {
        Kind::Tcp { .. } => {
            let mut t = TcpHeader::new_unchecked(seg);
            let old = match which {
                Rewrite::Source => t.src_port(),
                Rewrite::Destination => t.dst_port(),
            };
            match which {
                Rewrite::Source => t.set_src_port(port),
                Rewrite::Destination => t.set_dst_port(port),
            }
            let c = adjust(t.checksum(), &old.to_be_bytes(), &new);
            t.set_checksum(adjust(c, &old_addr, &addr));
        }
        Kind::Udp => {
            let mut u = UdpHeader::new_unchecked(seg);
            let old = match which {
                Rewrite::Source => u.src_port(),
                Rewrite::Destination => u.dst_port(),
            };
            match which {
                Rewrite::Source => u.set_src_port(port),
                Rewrite::Destination => u.set_dst_port(port),
            }
            // A zero UDP checksum means none: it stays none.
            if u.checksum() != 0 {
                let c = adjust(u.checksum(), &old.to_be_bytes(), &new);
                let c = adjust(c, &old_addr, &addr);
                u.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        Kind::Echo { .. } => {
            let mut m = IcmpHeader::new_unchecked(seg);
            let old = m.echo_ident();
            m.set_echo_ident(port);
            m.set_checksum(adjust(m.checksum(), &old.to_be_bytes(), &new));
        }
        Kind::Error { .. } | Kind::Fragment | Kind::Other => {}
    }
}

/// Rewrites an ICMPv4 error crossing a NAT: the outer endpoint `which`
/// becomes `addr`, and the quoted datagram's opposite endpoint becomes
/// `addr`/`port` (it travelled the other way). Returns false, touching
/// nothing, when the quote cannot be decoded.
pub fn rewrite_icmp_error_v4(
    frame: &mut [u8],
    l3: usize,
    len: usize,
    l4: &L4,
    which: Rewrite,
    addr: [u8; 4],
    port: u16,
) -> bool {
    let Kind::Error { inner } = l4.kind else {
        return false;
    };
    let end = l3 + len;
    let Ok(q) = quoted_v4(frame, inner, end) else {
        return false;
    };
    // Outer header: the address only (ICMP has no pseudo-header).
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[l3..]);
    let old_addr = match which {
        Rewrite::Source => ip.src_addr(),
        Rewrite::Destination => ip.dst_addr(),
    };
    match which {
        Rewrite::Source => ip.set_src_addr(addr),
        Rewrite::Destination => ip.set_dst_addr(addr),
    }
    ip.set_header_checksum(adjust(ip.header_checksum(), &old_addr, &addr));

    // Quoted datagram: the mirrored endpoint.
    let quoted = L4 {
        proto: q.proto,
        off: q.l3 + q.ihl,
        sport: q.sport,
        dport: q.dport,
        kind: match q.proto {
            PROTO_TCP => Kind::Tcp { flags: 0 },
            PROTO_UDP => Kind::Udp,
            PROTO_ICMP if q.sport == q.dport => Kind::Echo { request: true },
            _ => Kind::Other,
        },
    };
    let mirrored = if which == Rewrite::Source {
        Rewrite::Destination
    } else {
        Rewrite::Source
    };
    // The quoted transport checksum may lie beyond the quote (TCP's at 16):
    // only patch what is there.
    let c_in_quote = transport_csum(q.proto).is_none_or(|(c_off, _)| quoted.off + c_off + 2 <= end);
    if c_in_quote {
        rewrite_v4(frame, q.l3, &quoted, mirrored, addr, port);
    } else {
        let no_csum = L4 {
            kind: Kind::Other,
            ..quoted
        };
        rewrite_v4(frame, q.l3, &no_csum, mirrored, addr, port);
        // Ports sit where UDP's do in either header.
        let mut u = UdpHeader::new_unchecked(&mut frame[quoted.off..]);
        match mirrored {
            Rewrite::Source => u.set_src_port(port),
            Rewrite::Destination => u.set_dst_port(port),
        }
    }
    // The ICMP checksum covers the whole quote: recompute it (errors are rare).
    let message = &mut frame[l4.off..end];
    IcmpHeader::new_unchecked(&mut *message).set_checksum(0);
    let c = checksum(message, 0);
    IcmpHeader::new_unchecked(message).set_checksum(c);
    true
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;
    use crate::wire::{parse, parse_l4, testutil::verified_v4};

    fn verify(buf: &[u8]) {
        verified_v4(buf);
    }

    fn both_ways(mut buf: Vec<u8>) {
        verify(&buf);
        let ip = parse(&buf).unwrap();
        let l4 = parse_l4(&buf, &ip).unwrap();
        rewrite_v4(&mut buf, 14, &l4, Rewrite::Source, [198, 18, 2, 100], 1030);
        verify(&buf);
        assert_eq!(&buf[26..30], &[198, 18, 2, 100]);
        let l4 = parse_l4(&buf, &ip).unwrap();
        rewrite_v4(&mut buf, 14, &l4, Rewrite::Destination, [10, 9, 8, 7], 4242);
        verify(&buf);
        assert_eq!(&buf[30..34], &[10, 9, 8, 7]);
    }

    #[test]
    fn tcp_udp_icmp_rewrites_keep_checksums_valid() {
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .write(&mut buf, b"hello world")
            .unwrap();
        both_ways(buf);
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
            .udp(5353, 53)
            .write(&mut buf, b"odd")
            .unwrap();
        both_ways(buf);
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
            .icmpv4_echo_request(77, 3)
            .write(&mut buf, b"ping")
            .unwrap();
        both_ways(buf);
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
            .udp(5353, 53)
            .write(&mut buf, b"x")
            .unwrap();
        buf[40..42].copy_from_slice(&[0, 0]);
        let ip = parse(&buf).unwrap();
        let l4 = parse_l4(&buf, &ip).unwrap();
        rewrite_v4(&mut buf, 14, &l4, Rewrite::Source, [198, 18, 2, 100], 1);
        assert_eq!(&buf[40..42], &[0, 0]);
    }

    #[test]
    fn icmp_error_rewrites_outer_and_quoted() {
        // The server answers a translated UDP datagram (198.18.2.100:1030 ->
        // 198.18.2.10:53) with port unreachable; un-NAT it for 198.18.1.10:5353.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4([198, 18, 2, 100], [198, 18, 2, 10], 63)
            .udp(1030, 53)
            .write(&mut quoted, b"query")
            .unwrap();
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 2, 10], [198, 18, 2, 100], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut buf, &quoted)
            .unwrap();
        verify(&buf);
        let ip = parse(&buf).unwrap();
        let l4 = parse_l4(&buf, &ip).unwrap();
        assert!(rewrite_icmp_error_v4(
            &mut buf,
            14,
            ip.datagram_len(),
            &l4,
            Rewrite::Destination,
            [198, 18, 1, 10],
            5353,
        ));
        verify(&buf);
        assert_eq!(&buf[30..34], &[198, 18, 1, 10]);
        let q = quoted_v4(&buf, 42, buf.len()).unwrap();
        assert_eq!((q.src, q.sport, q.dport), ([198, 18, 1, 10], 5353, 53));
        // The quoted datagram's own checksums are consistent again.
        let qip = &buf[42..62];
        assert_eq!(checksum(qip, 0), 0);
        let mut expect = Vec::new();
        PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 10], 63)
            .udp(5353, 53)
            .write(&mut expect, b"query")
            .unwrap();
        assert_eq!(&buf[62..70], &expect[20..28]);
    }
}

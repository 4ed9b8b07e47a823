//! TCP resets a firewall sends for rejected connections (RFC 793, "Reset
//! Generation").

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    ETH_HLEN, IPV4_MIN_HLEN, IPV6_HLEN, Ip, Ipv4Packet, Ipv6Packet, L4, PROTO_TCP, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN, checksum, pseudo_header_sum6, transport::TcpHeader,
};

const TCP_HLEN: usize = TcpHeader::<&[u8]>::MIN_LEN;

/// Replaces the TCP segment of the prepared datagram `ip` (at `ETH_HLEN`)
/// with the reset that answers it, addressed back to its sender. Returns
/// the reset's network header, or `None` for a segment that must not be
/// answered (a reset itself).
pub fn tcp_reset(frame: &mut [u8], ip: &Ip, l4: &L4) -> Option<Ip> {
    let end = ip.l3() + ip.datagram_len();
    let seg = TcpHeader::new_checked(frame.get(l4.off..end)?).ok()?;
    let flags = seg.flags();
    if flags & TCP_RST != 0 {
        return None;
    }
    let mut seg_len = (end - l4.off - seg.header_len()) as u32;
    if flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let (r_seq, r_ack, r_flags) = if flags & TCP_ACK != 0 {
        (seg.ack_number(), 0, TCP_RST)
    } else {
        (0, seg.seq_number().wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let (sport, dport) = (l4.sport, l4.dport);
    let l3 = ETH_HLEN;
    let (t, ip_out, pseudo) = match *ip {
        Ip::V4 { .. } => {
            let old = Ipv4Packet::new_unchecked(&frame[l3..]);
            let (src, dst) = (old.src_addr(), old.dst_addr());
            let total = IPV4_MIN_HLEN + TCP_HLEN;
            Ipv4Packet::new_unchecked(&mut frame[l3..]).emit_header(
                total as u16,
                64,
                PROTO_TCP,
                dst,
                src,
            );
            let out = Ip::V4 {
                l3,
                ihl: IPV4_MIN_HLEN,
                len: total,
                dst: Ipv4Addr::from(src),
                ttl: 64,
            };
            (
                l3 + IPV4_MIN_HLEN,
                out,
                pseudo_sum4(dst, src, TCP_HLEN as u32),
            )
        }
        Ip::V6 { .. } => {
            let old = Ipv6Packet::new_unchecked(&frame[l3..]);
            let (src, dst) = (old.src_addr(), old.dst_addr());
            Ipv6Packet::new_unchecked(&mut frame[l3..]).emit_header(
                TCP_HLEN as u16,
                PROTO_TCP,
                64,
                dst,
                src,
            );
            let out = Ip::V6 {
                l3,
                len: IPV6_HLEN + TCP_HLEN,
                dst: Ipv6Addr::from(src),
                hop_limit: 64,
            };
            let pseudo = pseudo_header_sum6(
                &Ipv6Addr::from(dst),
                &Ipv6Addr::from(src),
                TCP_HLEN as u32,
                PROTO_TCP,
            );
            (l3 + IPV6_HLEN, out, pseudo)
        }
    };
    let tcp = &mut frame[t..t + TCP_HLEN];
    let mut h = TcpHeader::new_unchecked(&mut *tcp);
    h.emit_header(dport, sport, r_seq, r_ack, r_flags);
    let c = checksum(tcp, pseudo);
    TcpHeader::new_unchecked(tcp).set_checksum(c);
    Some(ip_out)
}

fn pseudo_sum4(src: [u8; 4], dst: [u8; 4], len: u32) -> u32 {
    u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u32::from(PROTO_TCP)
        + len
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;
    use crate::wire::{parse, parse_l4};

    #[test]
    fn syn_gets_rst_ack_with_the_right_numbers() {
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 1, 10], [198, 18, 2, 10], 64)
            .tcp(40000, 23, 1000, 512)
            .syn()
            .write(&mut buf, &[])
            .unwrap();
        buf.resize(2048, 0);
        let ip = parse(&buf).unwrap();
        let l4 = parse_l4(&buf, &ip).unwrap();
        let out = tcp_reset(&mut buf, &ip, &l4).unwrap();
        let n = ETH_HLEN + out.datagram_len();
        let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(v4)) = &p.net else {
            panic!()
        };
        let h = v4.header();
        assert_eq!(h.source(), [198, 18, 2, 10]);
        assert_eq!(h.destination(), [198, 18, 1, 10]);
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.source_port(), t.destination_port()), (23, 40000));
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
        assert_eq!(
            t.to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), &[])
                .unwrap(),
            t.checksum()
        );
    }

    #[test]
    fn ack_segment_gets_rst_at_its_ack_and_rst_gets_nothing() {
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 80, 5, 512)
            .ack(777)
            .write(&mut buf, b"data")
            .unwrap();
        buf.resize(2048, 0);
        let ip = parse(&buf).unwrap();
        let l4 = parse_l4(&buf, &ip).unwrap();
        let mut rst = buf.clone();
        let out = tcp_reset(&mut rst, &ip, &l4).unwrap();
        let n = ETH_HLEN + out.datagram_len();
        let p = SlicedPacket::from_ethernet(&rst[..n]).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert!(t.rst() && !t.ack());
        assert_eq!(t.sequence_number(), 777);
        assert_eq!(
            t.to_header()
                .calc_checksum_ipv6_raw([2; 16], [1; 16], &[])
                .unwrap(),
            t.checksum()
        );
        // A reset is never answered.
        let mut again = rst[..n].to_vec();
        again.resize(2048, 0);
        let ip2 = parse(&again[..n]).unwrap();
        let l4 = parse_l4(&again[..n], &ip2).unwrap();
        assert_eq!(tcp_reset(&mut again, &ip2, &l4), None);
    }
}

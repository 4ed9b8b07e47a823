//! TCP resets a firewall sends for rejected connections (RFC 793, "Reset
//! Generation").

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    ETH_HLEN, IPV4_MIN_HLEN, IPV6_HLEN, Ip, L4, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    be16, checksum, pseudo_header_sum6,
};

const TCP_HLEN: usize = 20;

/// Replaces the TCP segment of the prepared datagram `ip` (at `ETH_HLEN`)
/// with the reset that answers it, addressed back to its sender. Returns
/// the reset's network header, or `None` for a segment that must not be
/// answered (a reset itself).
pub fn tcp_reset(frame: &mut [u8], ip: &Ip, l4: &L4) -> Option<Ip> {
    let seg = &frame[l4.off..ip.l3() + ip.datagram_len()];
    let flags = seg[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let seq = u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]);
    let ack = u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]);
    let doff = usize::from(seg[12] >> 4) * 4;
    let mut seg_len = (seg.len() - doff) as u32;
    if flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let (r_seq, r_ack, r_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let (sport, dport) = (l4.sport, l4.dport);
    let l3 = ETH_HLEN;
    let (t, out) = match *ip {
        Ip::V4 { .. } => {
            let src: [u8; 4] = frame[l3 + 12..l3 + 16].try_into().ok()?;
            let dst: [u8; 4] = frame[l3 + 16..l3 + 20].try_into().ok()?;
            let total = IPV4_MIN_HLEN + TCP_HLEN;
            let h = &mut frame[l3..l3 + IPV4_MIN_HLEN];
            h.copy_from_slice(&[
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[12..16].copy_from_slice(&dst);
            h[16..20].copy_from_slice(&src);
            let c = checksum(h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let pseudo = pseudo_sum4(dst, src, TCP_HLEN as u32);
            (
                l3 + IPV4_MIN_HLEN,
                (
                    Ip::V4 {
                        l3,
                        ihl: IPV4_MIN_HLEN,
                        len: total,
                        dst: Ipv4Addr::from(src),
                        ttl: 64,
                    },
                    pseudo,
                ),
            )
        }
        Ip::V6 { .. } => {
            let src: [u8; 16] = frame[l3 + 8..l3 + 24].try_into().ok()?;
            let dst: [u8; 16] = frame[l3 + 24..l3 + 40].try_into().ok()?;
            let h = &mut frame[l3..l3 + IPV6_HLEN];
            h[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, TCP_HLEN as u8, PROTO_TCP, 64]);
            h[8..24].copy_from_slice(&dst);
            h[24..40].copy_from_slice(&src);
            let pseudo = pseudo_header_sum6(
                &Ipv6Addr::from(dst),
                &Ipv6Addr::from(src),
                TCP_HLEN as u32,
                PROTO_TCP,
            );
            (
                l3 + IPV6_HLEN,
                (
                    Ip::V6 {
                        l3,
                        len: IPV6_HLEN + TCP_HLEN,
                        dst: Ipv6Addr::from(src),
                        hop_limit: 64,
                    },
                    pseudo,
                ),
            )
        }
    };
    let (ip_out, pseudo) = out;
    let tcp = &mut frame[t..t + TCP_HLEN];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&r_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&r_ack.to_be_bytes());
    tcp[12] = (TCP_HLEN as u8 / 4) << 4;
    tcp[13] = r_flags;
    let c = checksum(tcp, pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    debug_assert_eq!(be16(tcp, 0), dport);
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

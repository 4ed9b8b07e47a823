//! Hand-built frames for tests that need exact, often malformed, bytes.

/// An Ethernet header.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header from 198.18.1.10 to `dst` with a correct header checksum
/// over whatever `total` and `ihl` say, followed by `l4`. Options, when
/// `ihl` > 5, are zero bytes taken from the front of `l4`.
pub fn ipv4(proto: u8, total: u16, ihl: u8, dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[198, 18, 1, 10]);
    h.extend_from_slice(&dst);
    let c = tandem_dataplane::wire::checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// A complete, valid Ethernet + IPv4 + UDP frame (UDP checksum zero).
pub fn udp4(dst_mac: [u8; 6], src_mac: [u8; 6], dst: [u8; 4]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(17, 28, 5, dst, &[0x9c, 0x40, 0, 7, 0, 8, 0, 0]));
    f
}

/// The frames of the malformed-frame tests, each with the counter that must
/// count it: `xdp.drop_parse_error` for headers XDP cannot read,
/// `drop.<reason>` for what the worker checks.
pub fn malformed(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    const SERVER: [u8; 4] = [198, 18, 2, 10];
    let mut out = Vec::new();
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0]);
    out.push(("xdp.drop_parse_error", f));
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(17, 28, 3, SERVER, &[0; 8]));
    out.push(("xdp.drop_parse_error", f));
    let mut tcp = [0u8; 20];
    tcp[12] = 0x20;
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(6, 40, 5, SERVER, &tcp));
    out.push(("xdp.drop_parse_error", f));
    let mut f = eth(dst_mac, src_mac, 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    out.push(("xdp.drop_parse_error", f));
    // Readable headers whose length fields lie: the worker's checks.
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(17, 1400, 5, SERVER, &[0; 8]));
    out.push(("drop.truncated", f));
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(17, 12, 5, SERVER, &[0; 8]));
    out.push(("drop.bad_header", f));
    let mut f = udp4(dst_mac, src_mac, SERVER);
    f[14 + 10] ^= 0xff;
    out.push(("drop.bad_checksum", f));
    out
}

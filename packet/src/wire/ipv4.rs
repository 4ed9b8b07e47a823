//! IPv4 headers, as a zero-copy view.

use std::net::Ipv4Addr;

use super::{ParseError, checksum, checksum_update};

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// The shortest IPv4 header.
pub const MIN_HEADER_LEN: usize = 20;

/// A view of an IPv4 datagram at the start of a buffer.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view without checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a buffer that holds the whole datagram its header
    /// announces, with a version of 4 and a consistent header and total
    /// length: no accessor panics afterwards. The checksum is not checked
    /// here ([`Self::verify_checksum`]).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        let len = p.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if p.version() != 4 || p.header_len() < MIN_HEADER_LEN {
            return Err(ParseError::BadHeader);
        }
        if p.total_len() < p.header_len() {
            return Err(ParseError::BadHeader);
        }
        if len < p.total_len() {
            return Err(ParseError::Truncated);
        }
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.b()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }

    /// The header's length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    /// The datagram's length in bytes, header included.
    pub fn total_len(&self) -> usize {
        usize::from(self.be16(field::LENGTH))
    }

    pub fn dont_frag(&self) -> bool {
        self.b()[field::FLAGS_FRAG.start] & 0x40 != 0
    }

    /// Whether this is a fragment other than the first (its offset is not
    /// zero): it has no transport header.
    pub fn is_later_fragment(&self) -> bool {
        self.be16(field::FLAGS_FRAG) & 0x1fff != 0
    }

    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    pub fn header_checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b()[field::SRC]);
        a
    }

    pub fn dst_addr(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b()[field::DST]);
        a
    }

    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_addr())
    }

    /// Whether the header checksum verifies (RFC 1071).
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.b()[..self.header_len()], 0) == 0
    }

    /// The transport payload: after the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the TTL, patching the checksum (RFC 1624).
    pub fn set_ttl(&mut self, ttl: u8) {
        let word = |p: &Self| u16::from_be_bytes([p.ttl(), p.protocol()]);
        let old = word(self);
        self.buffer.as_mut()[field::TTL] = ttl;
        let c = checksum_update(self.header_checksum(), old, word(self));
        self.set_be16(field::CHECKSUM, c);
    }

    pub fn set_src_addr(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a);
    }

    pub fn set_dst_addr(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a);
    }

    pub fn set_header_checksum(&mut self, c: u16) {
        self.set_be16(field::CHECKSUM, c);
    }

    /// Writes a 20-byte header without options (DF set, identification 0)
    /// and its checksum.
    pub fn emit_header(
        &mut self,
        total_len: u16,
        ttl: u8,
        protocol: u8,
        src: [u8; 4],
        dst: [u8; 4],
    ) {
        let b = self.buffer.as_mut();
        b[..MIN_HEADER_LEN].fill(0);
        b[field::VER_IHL] = 0x45;
        b[field::FLAGS_FRAG.start] = 0x40;
        b[field::TTL] = ttl;
        b[field::PROTOCOL] = protocol;
        self.set_be16(field::LENGTH, total_len);
        self.set_src_addr(src);
        self.set_dst_addr(dst);
        self.fill_checksum();
    }

    /// Sets the type-of-service byte (DSCP and ECN); the checksum is the
    /// caller's to fill.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets or clears DF; the checksum is the caller's to fill.
    pub fn set_dont_frag(&mut self, df: bool) {
        let b = &mut self.buffer.as_mut()[field::FLAGS_FRAG.start];
        *b = if df { *b | 0x40 } else { *b & !0x40 };
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_be16(field::CHECKSUM, 0);
        let c = checksum(&self.buffer.as_ref()[..self.header_len()], 0);
        self.set_be16(field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 28] {
        let mut h = [0u8; 28];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&28u16.to_be_bytes());
        h[8] = 64;
        h[9] = 17;
        h[12..16].copy_from_slice(&[198, 18, 1, 10]);
        h[16..20].copy_from_slice(&[198, 18, 2, 10]);
        let mut p = Ipv4Packet::new_unchecked(&mut h[..]);
        p.fill_checksum();
        h
    }

    #[test]
    fn checked_views_refuse_what_an_accessor_could_not_read() {
        let h = header();
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.header_len(), p.total_len(), p.payload().len()),
            (20, 28, 8)
        );
        assert_eq!(
            Ipv4Packet::new_checked(&h[..19]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&h[..27]).unwrap_err(),
            ParseError::Truncated
        );
        let mut bad = h;
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadHeader
        );
        let mut short = h;
        short[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&short[..]).unwrap_err(),
            ParseError::BadHeader
        );
    }

    #[test]
    fn setting_the_ttl_keeps_the_checksum_right() {
        let mut h = header();
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.set_ttl(63);
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
    }
}

//! IPv6 headers, as a zero-copy view.

use std::net::Ipv6Addr;

use super::ParseError;

mod field {
    use core::ops::Range;

    pub const VER: usize = 0;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// The IPv6 header's length.
pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 datagram at the start of a buffer.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// A view without checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a buffer that holds the header and the payload it
    /// announces, with a version of 6: no accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if p.version() != 6 {
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

    pub fn version(&self) -> u8 {
        self.b()[field::VER] >> 4
    }

    pub fn payload_len(&self) -> usize {
        let b = &self.b()[field::PAYLOAD_LEN];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The header and its payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC]);
        a
    }

    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST]);
        a
    }

    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_addr())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Writes a header with no traffic class or flow label.
    pub fn emit_header(
        &mut self,
        payload_len: u16,
        next_header: u8,
        hop_limit: u8,
        src: [u8; 16],
        dst: [u8; 16],
    ) {
        let b = self.buffer.as_mut();
        b[..HEADER_LEN].fill(0);
        b[field::VER] = 0x60;
        b[field::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
        b[field::NEXT_HEADER] = next_header;
        b[field::HOP_LIMIT] = hop_limit;
        b[field::SRC].copy_from_slice(&src);
        b[field::DST].copy_from_slice(&dst);
    }

    /// Sets the hop limit (no checksum covers it).
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }
}

/// Next-header values of the extension headers tandem walks past.
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_AUTH: u8 = 51;
pub const EXT_DEST_OPTS: u8 = 60;

/// Whether `next` names an extension header.
pub const fn is_extension(next: u8) -> bool {
    matches!(
        next,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT | EXT_AUTH | EXT_DEST_OPTS
    )
}

/// A view of one IPv6 extension header of kind `kind` (its first eight
/// bytes are all any of them needs read).
#[derive(Debug, Clone)]
pub struct Ipv6ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
    kind: u8,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    /// The shortest extension header.
    pub const MIN_LEN: usize = 8;

    /// A view of a buffer that holds the header's first eight bytes.
    pub fn new_checked(buffer: T, kind: u8) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::MIN_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Self { buffer, kind })
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The header's length in bytes (AH counts 4-byte words less two,
    /// the others 8-byte words less one; a fragment header is 8 bytes).
    pub fn header_len(&self) -> usize {
        let n = usize::from(self.buffer.as_ref()[1]);
        match self.kind {
            EXT_FRAGMENT => Self::MIN_LEN,
            EXT_AUTH => (n + 2) * 4,
            _ => (n + 1) * 8,
        }
    }

    /// For a fragment header: whether this is a fragment other than the
    /// first (its offset is not zero).
    pub fn is_later_fragment(&self) -> bool {
        let b = self.buffer.as_ref();
        self.kind == EXT_FRAGMENT && u16::from_be_bytes([b[2], b[3]]) & 0xfff8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_views_hold_the_payload_they_announce() {
        let mut h = [0u8; 48];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&8u16.to_be_bytes());
        h[7] = 64;
        let p = Ipv6Packet::new_checked(&h[..]).unwrap();
        assert_eq!((p.total_len(), p.hop_limit()), (48, 64));
        assert_eq!(
            Ipv6Packet::new_checked(&h[..47]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            Ipv6Packet::new_checked(&h[..39]).unwrap_err(),
            ParseError::Truncated
        );
        h[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&h[..]).unwrap_err(),
            ParseError::BadHeader
        );
        h[0] = 0x60;
        let mut m = Ipv6Packet::new_checked(&mut h[..]).unwrap();
        m.set_hop_limit(63);
        assert_eq!(m.hop_limit(), 63);
    }
}

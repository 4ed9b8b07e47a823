//! TCP, UDP and ICMP/ICMPv6 headers, as zero-copy views of a datagram's
//! transport payload.

use super::ParseError;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpHeader<T> {
    pub const MIN_LEN: usize = 20;
    const CHECKSUM: usize = 16;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a segment that holds its whole header (data offset of at
    /// least five words, within the segment): no accessor panics
    /// afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let h = Self::new_unchecked(buffer);
        let len = h.buffer.as_ref().len();
        if len < Self::MIN_LEN {
            return Err(ParseError::Truncated);
        }
        if h.header_len() < Self::MIN_LEN || h.header_len() > len {
            return Err(ParseError::BadHeader);
        }
        Ok(h)
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }

    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), Self::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpHeader<T> {
    pub fn set_src_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), 0, p);
    }

    pub fn set_dst_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), 2, p);
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), Self::CHECKSUM, c);
    }

    /// Writes a header of 20 bytes without options: ports, numbers,
    /// flags, a zero window, checksum and urgent pointer zeroed.
    pub fn emit_header(&mut self, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) {
        let b = self.buffer.as_mut();
        b[..Self::MIN_LEN].fill(0);
        set_be16(b, 0, sport);
        set_be16(b, 2, dport);
        b[4..8].copy_from_slice(&seq.to_be_bytes());
        b[8..12].copy_from_slice(&ack.to_be_bytes());
        b[12] = (Self::MIN_LEN as u8 / 4) << 4;
        b[13] = flags;
    }
}

/// A view of a UDP datagram's header.
#[derive(Debug, Clone)]
pub struct UdpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpHeader<T> {
    pub const LEN: usize = 8;
    const CHECKSUM: usize = 6;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a buffer that holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let h = Self::new_unchecked(buffer);
        if h.buffer.as_ref().len() < Self::LEN {
            return Err(ParseError::Truncated);
        }
        Ok(h)
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// The checksum; 0 over IPv4 means none was computed.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), Self::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpHeader<T> {
    pub fn set_src_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), 0, p);
    }

    pub fn set_dst_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), 2, p);
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), Self::CHECKSUM, c);
    }
}

/// A view of an ICMP or ICMPv6 message's first eight bytes: type, code,
/// checksum, and the word an echo keeps its identifier and sequence in
/// (or an error leaves before its quote).
#[derive(Debug, Clone)]
pub struct IcmpHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpHeader<T> {
    pub const LEN: usize = 8;
    const CHECKSUM: usize = 2;
    const IDENT: usize = 4;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a buffer that holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let h = Self::new_unchecked(buffer);
        if h.buffer.as_ref().len() < Self::LEN {
            return Err(ParseError::Truncated);
        }
        Ok(h)
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), Self::CHECKSUM)
    }

    /// An echo's identifier.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), Self::IDENT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpHeader<T> {
    /// Writes the type, the code, a zero checksum and the header's second
    /// word (`rest`: an error's MTU, or zero).
    pub fn emit_header(&mut self, msg_type: u8, code: u8, rest: u32) {
        let b = self.buffer.as_mut();
        b[0] = msg_type;
        b[1] = code;
        set_be16(b, Self::CHECKSUM, 0);
        b[Self::IDENT..Self::LEN].copy_from_slice(&rest.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, id: u16) {
        set_be16(self.buffer.as_mut(), Self::IDENT, id);
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), Self::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_views_need_their_headers() {
        let mut seg = [0u8; 24];
        seg[12] = 6 << 4;
        assert_eq!(TcpHeader::new_checked(&seg[..]).unwrap().header_len(), 24);
        assert_eq!(
            TcpHeader::new_checked(&seg[..19]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            TcpHeader::new_checked(&seg[..20]).unwrap_err(),
            ParseError::BadHeader
        );
        seg[12] = 4 << 4;
        assert_eq!(
            TcpHeader::new_checked(&seg[..]).unwrap_err(),
            ParseError::BadHeader
        );
        assert_eq!(
            UdpHeader::new_checked(&seg[..7]).unwrap_err(),
            ParseError::Truncated
        );
        let mut u = UdpHeader::new_checked(&mut seg[..8]).unwrap();
        u.set_src_port(5353);
        u.set_dst_port(53);
        assert_eq!((u.src_port(), u.dst_port()), (5353, 53));
        let mut i = IcmpHeader::new_checked(&mut seg[..8]).unwrap();
        i.set_echo_ident(7);
        assert_eq!(i.echo_ident(), 7);
        assert_eq!(
            IcmpHeader::new_checked(&seg[..7]).unwrap_err(),
            ParseError::Truncated
        );
    }
}

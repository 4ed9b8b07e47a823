//! Ethernet II frames (and one 802.1Q / 802.1ad tag), as a zero-copy view.

use super::ParseError;

mod field {
    use core::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// The tagged frame's inner ethertype, after the tag's control word.
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of a header with one VLAN tag.
pub const TAGGED_HEADER_LEN: usize = 18;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// A view of an Ethernet frame in a buffer.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view without checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of a buffer that holds a whole header (a tagged frame's
    /// tag too): no accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let f = Self::new_unchecked(buffer);
        let len = f.buffer.as_ref().len();
        if len < HEADER_LEN || (f.is_tagged() && len < TAGGED_HEADER_LEN) {
            return Err(ParseError::Truncated);
        }
        Ok(f)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        a
    }

    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        a
    }

    /// The outer ethertype (a VLAN tag's TPID when tagged).
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Whether the frame carries one 802.1Q or 802.1ad tag.
    pub fn is_tagged(&self) -> bool {
        matches!(self.ethertype(), ETHERTYPE_VLAN | ETHERTYPE_QINQ)
    }

    /// What the frame carries: the ethertype after the tag, if tagged.
    pub fn payload_ethertype(&self) -> u16 {
        if self.is_tagged() {
            let b = &self.buffer.as_ref()[field::INNER_ETHERTYPE];
            u16::from_be_bytes([b[0], b[1]])
        } else {
            self.ethertype()
        }
    }

    /// Where the network header starts.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a);
    }

    pub fn set_src_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a);
    }

    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_needs_its_four_bytes_and_moves_the_payload() {
        let mut f = [0u8; 18];
        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[16..18].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert_eq!(
            EthernetFrame::new_checked(&f[..17]).unwrap_err(),
            ParseError::Truncated
        );
        let v = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(
            (v.header_len(), v.payload_ethertype()),
            (18, ETHERTYPE_IPV6)
        );
        let mut m = EthernetFrame::new_checked(&mut f[..]).unwrap();
        m.set_ethertype(ETHERTYPE_IPV4);
        m.set_dst_addr([1; 6]);
        assert_eq!(
            (m.header_len(), m.payload_ethertype(), m.dst_addr()),
            (14, ETHERTYPE_IPV4, [1; 6])
        );
        assert!(EthernetFrame::new_checked(&f[..13]).is_err());
    }
}

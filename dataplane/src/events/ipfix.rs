//! NAT events as IPFIX (RFC 7011 over UDP) in the record layouts of
//! RFC 8158: NAT44 session create and delete (natEvent 4 and 5), NAT
//! addresses exhausted (natEvent 3), and port block allocation and
//! de-allocation (natEvent 16 and 17).
//!
//! Design: one message is built in a buffer sized once; records go into
//! a data set of their template, and a message is sent when the next
//! record would pass [`MAX_MESSAGE`] or when the logging thread flushes.
//! The templates lead the first message and go again every
//! `template_every_s` (UDP collectors learn them only from the stream).

/// Largest message: within a 1500-byte MTU with IP and UDP headers.
pub const MAX_MESSAGE: usize = 1400;
/// The NAT44 session template (create and delete).
pub const NAT44_SESSION: u16 = 256;
/// The NAT addresses exhausted template.
pub const NAT_EXHAUSTED: u16 = 257;
/// The port block template (allocation and de-allocation).
pub const PORT_BLOCK: u16 = 258;

/// natEvent values (RFC 8158 section 4.1, IANA "NAT Event Type"; 1 and 2
/// are the historic translation create and delete).
pub const NAT44_CREATE: u8 = 4;
pub const NAT44_DELETE: u8 = 5;
pub const ADDRESSES_EXHAUSTED: u8 = 3;
pub const BLOCK_ALLOCATED: u8 = 16;
pub const BLOCK_RELEASED: u8 = 17;

/// (information element, length) of the session template, in order.
const SESSION_FIELDS: [(u16, u16); 12] = [
    (323, 8), // observationTimeMilliseconds
    (234, 4), // ingressVRFID
    (230, 1), // natEvent
    (4, 1),   // protocolIdentifier
    (8, 4),   // sourceIPv4Address
    (225, 4), // postNATSourceIPv4Address
    (12, 4),  // destinationIPv4Address
    (226, 4), // postNATDestinationIPv4Address
    (7, 2),   // sourceTransportPort
    (227, 2), // postNAPTSourceTransportPort
    (11, 2),  // destinationTransportPort
    (228, 2), // postNAPTDestinationTransportPort
];
const EXHAUSTED_FIELDS: [(u16, u16); 3] = [
    (323, 8), // observationTimeMilliseconds
    (230, 1), // natEvent
    (283, 4), // natPoolId
];
/// RFC 8158's port block allocation and de-allocation record.
const BLOCK_FIELDS: [(u16, u16); 8] = [
    (323, 8), // observationTimeMilliseconds
    (230, 1), // natEvent
    (8, 4),   // sourceIPv4Address
    (225, 4), // postNATSourceIPv4Address
    (361, 2), // portRangeStart
    (362, 2), // portRangeEnd
    (363, 2), // portRangeStepSize
    (364, 2), // portRangeNumPorts
];

/// A port block event.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub unix_ms: u64,
    pub event: u8,
    pub inside: [u8; 4],
    pub pool: [u8; 4],
    pub first: u16,
    pub last: u16,
}

const HEADER: usize = 16;
const SET_HEADER: usize = 4;

fn record_len(fields: &[(u16, u16)]) -> usize {
    fields.iter().map(|(_, l)| usize::from(*l)).sum()
}

/// A NAT44 session event.
#[derive(Clone, Copy, Debug)]
pub struct Nat44 {
    pub unix_ms: u64,
    pub event: u8,
    pub proto: u8,
    pub src: [u8; 4],
    pub nat_src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub nat_sport: u16,
    pub dport: u16,
}

/// Builds IPFIX messages for one observation domain.
pub struct Exporter {
    domain: u32,
    /// Data records sent before the message being built.
    seq: u32,
    buf: Vec<u8>,
    /// The open data set: (offset of its header, template id).
    set: Option<(usize, u16)>,
    records: u32,
    templates_due: bool,
}

impl Exporter {
    pub fn new(domain: u32) -> Self {
        let mut e = Self {
            domain,
            seq: 0,
            buf: Vec::with_capacity(MAX_MESSAGE),
            set: None,
            records: 0,
            templates_due: true,
        };
        e.clear();
        e
    }

    /// The next message starts with the templates.
    pub fn resend_templates(&mut self) {
        self.templates_due = true;
        if self.records == 0 {
            self.clear();
        }
    }

    /// Records in the message being built.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Whether a record of `template` fits in the message being built.
    pub fn fits(&self, template: u16) -> bool {
        let len = match template {
            NAT44_SESSION => record_len(&SESSION_FIELDS),
            PORT_BLOCK => record_len(&BLOCK_FIELDS),
            _ => record_len(&EXHAUSTED_FIELDS),
        };
        let set = if self.set.is_some_and(|(_, t)| t == template) {
            0
        } else {
            SET_HEADER
        };
        self.buf.len() + set + len <= MAX_MESSAGE
    }

    /// Appends a NAT44 session record (the caller checked [`Self::fits`]).
    pub fn nat44(&mut self, r: &Nat44) {
        self.open(NAT44_SESSION);
        let b = &mut self.buf;
        b.extend_from_slice(&r.unix_ms.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.push(r.event);
        b.push(r.proto);
        b.extend_from_slice(&r.src);
        b.extend_from_slice(&r.nat_src);
        b.extend_from_slice(&r.dst);
        b.extend_from_slice(&r.dst);
        b.extend_from_slice(&r.sport.to_be_bytes());
        b.extend_from_slice(&r.nat_sport.to_be_bytes());
        b.extend_from_slice(&r.dport.to_be_bytes());
        b.extend_from_slice(&r.dport.to_be_bytes());
        self.records += 1;
    }

    /// Appends a port block record (the caller checked [`Self::fits`]).
    pub fn block(&mut self, r: &Block) {
        self.open(PORT_BLOCK);
        let b = &mut self.buf;
        b.extend_from_slice(&r.unix_ms.to_be_bytes());
        b.push(r.event);
        b.extend_from_slice(&r.inside);
        b.extend_from_slice(&r.pool);
        b.extend_from_slice(&r.first.to_be_bytes());
        b.extend_from_slice(&r.last.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&(r.last - r.first + 1).to_be_bytes());
        self.records += 1;
    }

    /// Appends a NAT addresses exhausted record for pool `pool`.
    pub fn exhausted(&mut self, unix_ms: u64, pool: u32) {
        self.open(NAT_EXHAUSTED);
        let b = &mut self.buf;
        b.extend_from_slice(&unix_ms.to_be_bytes());
        b.push(ADDRESSES_EXHAUSTED);
        b.extend_from_slice(&pool.to_be_bytes());
        self.records += 1;
    }

    /// The finished message, exported at `unix_s`; then [`Self::clear`].
    pub fn finish(&mut self, unix_s: u32) -> &[u8] {
        self.close_set();
        let len = u16::try_from(self.buf.len()).expect("within MAX_MESSAGE");
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        self.buf[4..8].copy_from_slice(&unix_s.to_be_bytes());
        self.buf[8..12].copy_from_slice(&self.seq.to_be_bytes());
        &self.buf
    }

    /// Whether the message holds anything to send (records, or
    /// templates due).
    pub fn pending(&self) -> bool {
        self.records > 0 || self.templates_due
    }

    /// Starts the next message (with the templates if due).
    pub fn clear(&mut self) {
        self.seq = self.seq.wrapping_add(self.records);
        self.records = 0;
        self.set = None;
        self.buf.clear();
        self.buf.extend_from_slice(&10u16.to_be_bytes());
        self.buf.extend_from_slice(&[0; 10]);
        self.buf.extend_from_slice(&self.domain.to_be_bytes());
        debug_assert_eq!(self.buf.len(), HEADER);
        if self.templates_due {
            self.templates_due = false;
            let start = self.buf.len();
            self.buf.extend_from_slice(&2u16.to_be_bytes());
            self.buf.extend_from_slice(&[0; 2]);
            for (id, fields) in [
                (NAT44_SESSION, &SESSION_FIELDS[..]),
                (NAT_EXHAUSTED, &EXHAUSTED_FIELDS[..]),
                (PORT_BLOCK, &BLOCK_FIELDS[..]),
            ] {
                self.buf.extend_from_slice(&id.to_be_bytes());
                self.buf
                    .extend_from_slice(&(fields.len() as u16).to_be_bytes());
                for (ie, len) in fields {
                    self.buf.extend_from_slice(&ie.to_be_bytes());
                    self.buf.extend_from_slice(&len.to_be_bytes());
                }
            }
            let len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    fn open(&mut self, template: u16) {
        if self.set.is_some_and(|(_, t)| t == template) {
            return;
        }
        self.close_set();
        self.set = Some((self.buf.len(), template));
        self.buf.extend_from_slice(&template.to_be_bytes());
        self.buf.extend_from_slice(&[0; 2]);
    }

    fn close_set(&mut self) {
        if let Some((at, _)) = self.set.take() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u16) -> Nat44 {
        Nat44 {
            unix_ms: 1_796_292_000_123,
            event: NAT44_CREATE,
            proto: 17,
            src: [198, 18, 1, 10],
            nat_src: [198, 18, 2, 100],
            dst: [198, 18, 2, 10],
            sport: 4000 + i,
            nat_sport: 20000 + i,
            dport: 53,
        }
    }

    /// Walks a message's sets: (set id, length) each, checking that they
    /// tile the message exactly.
    fn sets(m: &[u8]) -> Vec<(u16, usize)> {
        assert_eq!(u16::from_be_bytes([m[0], m[1]]), 10);
        assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
        let mut at = HEADER;
        let mut out = Vec::new();
        while at < m.len() {
            let id = u16::from_be_bytes([m[at], m[at + 1]]);
            let len = usize::from(u16::from_be_bytes([m[at + 2], m[at + 3]]));
            assert!(len >= SET_HEADER && at + len <= m.len());
            out.push((id, len));
            at += len;
        }
        assert_eq!(at, m.len());
        out
    }

    #[test]
    fn the_first_message_carries_the_templates_and_records_tile_the_sets() {
        let mut e = Exporter::new(7);
        e.nat44(&rec(0));
        e.nat44(&rec(1));
        e.exhausted(1_796_292_000_500, 0);
        e.block(&Block {
            unix_ms: 1_796_292_000_600,
            event: BLOCK_ALLOCATED,
            inside: [198, 18, 1, 10],
            pool: [198, 18, 2, 100],
            first: 20224,
            last: 20479,
        });
        let m = e.finish(1_796_292_000).to_vec();
        assert_eq!(u32::from_be_bytes(m[12..16].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(m[8..12].try_into().unwrap()), 0);
        // Templates: 4 + (4 + 12 * 4) + (4 + 3 * 4) + (4 + 8 * 4) bytes.
        assert_eq!(
            sets(&m),
            [
                (2, 108),
                (NAT44_SESSION, 4 + 2 * 38),
                (NAT_EXHAUSTED, 4 + 13),
                (PORT_BLOCK, 4 + 25)
            ]
        );
        // The block record: its range, step 1, 256 ports.
        let r = &m[m.len() - 25..];
        assert_eq!(r[8], BLOCK_ALLOCATED);
        assert_eq!(&r[17..25], &[0x4f, 0x00, 0x4f, 0xff, 0, 1, 1, 0]);
        e.clear();
        e.nat44(&rec(2));
        let m = e.finish(1_796_292_001).to_vec();
        assert_eq!(sets(&m), [(NAT44_SESSION, 4 + 38)]);
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            4,
            "the sequence counts the records sent before"
        );
    }

    #[test]
    fn a_full_message_stays_within_the_mtu() {
        let mut e = Exporter::new(1);
        let mut n = 0;
        while e.fits(NAT44_SESSION) {
            e.nat44(&rec(n));
            n += 1;
        }
        let m = e.finish(0);
        assert!(
            m.len() <= MAX_MESSAGE && m.len() + 38 > MAX_MESSAGE - 4,
            "{}",
            m.len()
        );
        assert_eq!(sets(m).len(), 2);
    }
}

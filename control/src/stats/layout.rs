//! Byte layout of the stats segment.
//!
//! ```text
//! 0                Header (256 bytes)
//! dir_offset       Entry[dir_count]   (128 bytes each: name, labels, kind, slot)
//! state_offset     seqlock'd state    (u64 words: sequence, then payload)
//! values_offset    u64[values_count]  (counters and gauges, 64-byte aligned)
//! baseline_offset  u64[values_count]  (counter values at the last clear)
//! ```
//! Counters only ever grow; `clear statistics` copies them into the
//! baseline, and the human views show value - baseline. Prometheus gets the
//! raw, monotonic values.
//! Every multi-byte field is native-endian: the segment never leaves the
//! host. `layout_hash` covers the directory bytes and the state size, so a
//! reader that validates it cannot misread a segment of another layout.

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"TNDSTAT\0";
/// Bumped whenever the byte layout changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 256;
pub const ENTRY_SIZE: usize = 128;
pub const NAME_LEN: usize = 56;
pub const LABELS_LEN: usize = 64;
/// u64 words in the state area: one sequence word, then the payload.
pub const STATE_WORDS: usize = 128;

/// Field offsets inside the header.
pub mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_SIZE: usize = 12;
    pub const LAYOUT_HASH: usize = 16;
    pub const PID: usize = 24;
    pub const WORKERS: usize = 28;
    pub const START_NS: usize = 32;
    /// Updated by the daemon at least every 500 ms (unix ns): an atomic word.
    pub const HEARTBEAT_NS: usize = 40;
    pub const DIR_OFFSET: usize = 48;
    pub const DIR_COUNT: usize = 56;
    pub const ENTRY_SIZE: usize = 60;
    pub const STATE_OFFSET: usize = 64;
    pub const STATE_WORDS: usize = 72;
    pub const VALUES_OFFSET: usize = 80;
    pub const VALUES_COUNT: usize = 88;
    pub const TOTAL_SIZE: usize = 96;
    pub const BASELINE_OFFSET: usize = 104;
    /// Unix ns of the last clear (0: never): an atomic word.
    pub const CLEARED_NS: usize = 112;
}

/// Field offsets inside a directory entry.
pub mod entry {
    pub const NAME: usize = 0;
    pub const LABELS: usize = super::NAME_LEN;
    pub const KIND: usize = super::NAME_LEN + super::LABELS_LEN;
    pub const SLOT: usize = KIND + 4;
}

/// Whether a value only grows (counter) or moves both ways (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter = 0,
    Gauge = 1,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            _ => None,
        }
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms, which is all the
/// layout check needs.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The hash stored in the header for a directory.
pub fn layout_hash(directory: &[u8]) -> u64 {
    let h = fnv1a(&LAYOUT_VERSION.to_ne_bytes(), FNV_OFFSET);
    let h = fnv1a(&(STATE_WORDS as u64).to_ne_bytes(), h);
    fnv1a(directory, h)
}

pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A NUL-padded fixed-width string field.
pub fn get_str(b: &[u8]) -> &str {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_fit_and_do_not_overlap() {
        let offs = [
            (header::MAGIC, 8),
            (header::VERSION, 4),
            (header::HEADER_SIZE, 4),
            (header::LAYOUT_HASH, 8),
            (header::PID, 4),
            (header::WORKERS, 4),
            (header::START_NS, 8),
            (header::HEARTBEAT_NS, 8),
            (header::DIR_OFFSET, 8),
            (header::DIR_COUNT, 4),
            (header::ENTRY_SIZE, 4),
            (header::STATE_OFFSET, 8),
            (header::STATE_WORDS, 8),
            (header::VALUES_OFFSET, 8),
            (header::VALUES_COUNT, 8),
            (header::TOTAL_SIZE, 8),
            (header::BASELINE_OFFSET, 8),
            (header::CLEARED_NS, 8),
        ];
        for w in offs.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "gap or overlap at {}", w[1].0);
        }
        let (last, len) = offs[offs.len() - 1];
        assert!(last + len <= HEADER_SIZE);
        // Atomic words must be naturally aligned.
        assert_eq!(header::HEARTBEAT_NS % 8, 0);
        assert_eq!(header::CLEARED_NS % 8, 0);
    }

    #[test]
    fn entry_fields_fit() {
        const { assert!(entry::SLOT + 4 <= ENTRY_SIZE) };
        assert_eq!(entry::KIND, NAME_LEN + LABELS_LEN);
    }

    #[test]
    fn hash_depends_on_every_byte() {
        let a = layout_hash(b"abc");
        assert_ne!(a, layout_hash(b"abd"));
        assert_ne!(a, layout_hash(b"ab"));
        assert_eq!(a, layout_hash(b"abc"));
    }

    #[test]
    fn strings_stop_at_nul() {
        assert_eq!(get_str(b"in0\0\0\0"), "in0");
        assert_eq!(get_str(b"full"), "full");
    }
}

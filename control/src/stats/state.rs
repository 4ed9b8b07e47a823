//! The seqlock'd state of a node: its interfaces and whether it forwards.
//! Encoded into the segment's state words; decoding checks every field.

/// Which side of the node an interface faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceRole {
    Inside,
    Outside,
}

/// Link state as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Unknown,
    Up,
    Down,
}

/// How (whether) the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    None,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceState {
    pub name: String,
    pub ifindex: u32,
    pub role: IfaceRole,
    pub link: LinkState,
    pub xdp: XdpAttach,
    /// Rx queues with an AF_XDP socket.
    pub queues: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeState {
    /// Whether the node forwards service traffic.
    pub forward: bool,
    pub interfaces: Vec<IfaceState>,
}

const FORMAT: u8 = 1;
const IFACE_BYTES: usize = 28;
const NAME_BYTES: usize = 16;
pub const MAX_IFACES: usize = 16;

impl NodeState {
    /// Encodes into u64 words for `SegmentWriter::write_state`.
    pub fn encode(&self) -> Vec<u64> {
        let mut b = vec![FORMAT, u8::from(self.forward)];
        let n = self.interfaces.len().min(MAX_IFACES);
        b.push(n as u8);
        for i in &self.interfaces[..n] {
            let mut rec = [0u8; IFACE_BYTES];
            let name = i.name.as_bytes();
            let len = name.len().min(NAME_BYTES - 1);
            rec[..len].copy_from_slice(&name[..len]);
            rec[16..20].copy_from_slice(&i.ifindex.to_ne_bytes());
            rec[20] = match i.role {
                IfaceRole::Inside => 0,
                IfaceRole::Outside => 1,
            };
            rec[21] = match i.link {
                LinkState::Unknown => 0,
                LinkState::Up => 1,
                LinkState::Down => 2,
            };
            rec[22] = match i.xdp {
                XdpAttach::None => 0,
                XdpAttach::Native => 1,
                XdpAttach::Generic => 2,
            };
            rec[24..28].copy_from_slice(&i.queues.to_ne_bytes());
            b.extend_from_slice(&rec);
        }
        b.resize(b.len().div_ceil(8) * 8, 0);
        b.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    /// Decodes state words; `None` if they do not hold a valid state (an
    /// all-zero area, written before the daemon published anything, is
    /// `None` too).
    pub fn decode(words: &[u64]) -> Option<Self> {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        if b.len() < 3 || b[0] != FORMAT || b[1] > 1 {
            return None;
        }
        let n = usize::from(b[2]);
        if n > MAX_IFACES || b.len() < 3 + n * IFACE_BYTES {
            return None;
        }
        let mut interfaces = Vec::with_capacity(n);
        for k in 0..n {
            let rec = &b[3 + k * IFACE_BYTES..3 + (k + 1) * IFACE_BYTES];
            let end = rec[..NAME_BYTES].iter().position(|c| *c == 0)?;
            interfaces.push(IfaceState {
                name: std::str::from_utf8(&rec[..end]).ok()?.to_owned(),
                ifindex: u32::from_ne_bytes(rec[16..20].try_into().ok()?),
                role: match rec[20] {
                    0 => IfaceRole::Inside,
                    1 => IfaceRole::Outside,
                    _ => return None,
                },
                link: match rec[21] {
                    0 => LinkState::Unknown,
                    1 => LinkState::Up,
                    2 => LinkState::Down,
                    _ => return None,
                },
                xdp: match rec[22] {
                    0 => XdpAttach::None,
                    1 => XdpAttach::Native,
                    2 => XdpAttach::Generic,
                    _ => return None,
                },
                queues: u32::from_ne_bytes(rec[24..28].try_into().ok()?),
            });
        }
        Some(Self {
            forward: b[1] == 1,
            interfaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeState {
        NodeState {
            forward: true,
            interfaces: vec![
                IfaceState {
                    name: "in0".into(),
                    ifindex: 2,
                    role: IfaceRole::Inside,
                    link: LinkState::Up,
                    xdp: XdpAttach::Native,
                    queues: 2,
                },
                IfaceState {
                    name: "out0".into(),
                    ifindex: 3,
                    role: IfaceRole::Outside,
                    link: LinkState::Down,
                    xdp: XdpAttach::Generic,
                    queues: 2,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let words = s.encode();
        assert!(words.len() < crate::stats::layout::STATE_WORDS);
        assert_eq!(NodeState::decode(&words), Some(s));
    }

    #[test]
    fn fits_the_state_area_at_its_maximum() {
        let mut s = sample();
        s.interfaces = (0..MAX_IFACES).map(|_| s.interfaces[0].clone()).collect();
        assert!(s.encode().len() < crate::stats::layout::STATE_WORDS);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert_eq!(NodeState::decode(&[0; 10]), None);
        let mut w = sample().encode();
        // An out-of-range role byte: first record starts at byte 3.
        let mut b: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
        b[3 + 20] = 9;
        w = b
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(NodeState::decode(&w), None);
        assert_eq!(NodeState::decode(&[]), None);
    }
}

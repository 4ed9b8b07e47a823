//! The sync protocol's wire format.
//!
//! Every message is a frame: a 20-byte header, a body of `length` bytes,
//! and, when the pair shares a key, a 32-byte HMAC-SHA256 tag. All integers
//! are big-endian.
//!
//! ```text
//!  0  u16 magic 0x5444 ("TD")      2  u8 version   3  u8 kind
//!  4  u8  flags (bit 0: tag follows) 5  [u8; 3] zero
//!  8  u32 body length             12  u64 sequence (per direction, from 1)
//! 20  body, then the tag
//! ```
//!
//! Batches (add, delete, refresh) are a u32 count and fixed-size records:
//! 64 bytes per session added, 48 per delete, 56 per refresh. Decoding
//! checks the framing (magic, version, kind, flags, lengths, counts, zero
//! padding: any fault there refuses the whole frame, and the connection
//! ends) and leaves the meaning of record fields to
//! [`SessionRecord::validate`] and [`RefreshRecord::validate`], so a record
//! with a field out of range is nacked on its own.

use std::ops::Range;

pub const MAGIC: u16 = 0x5444;
/// 2: non-TCP records may carry `ANSWERED`, and the flow hash that places
/// sessions (and NAT bindings) on workers changed; a node of version 1
/// would nack both, so the versions do not talk.
/// 3: the ownership hash is a specified function (tandem-dataplane's
/// `FlowKey::owner_hash`) instead of foldhash's output; a node of version
/// 2 places sessions on other workers, so the versions do not talk.
pub const VERSION: u8 = 3;
pub const HEADER_LEN: usize = 20;
pub const TAG_LEN: usize = 32;
/// The largest body accepted: a batch flushes at 64 KiB, so anything near
/// this is an attack or a bug.
pub const MAX_BODY: usize = 1 << 20;
pub const KEY_LEN: usize = 37;
pub const ADD_LEN: usize = 64;
pub const DELETE_LEN: usize = 48;
pub const REFRESH_LEN: usize = 56;
pub const HELLO_LEN: usize = 44;

const FLAG_TAG: u8 = 1;

/// TCP states a record may carry (`CLOSED` = 0 .. `TIME-WAIT` = 9, the
/// data plane's numbering).
pub const TCP_STATES: u8 = 10;
/// The state of a session of another protocol once its responder has
/// answered (0 before): from then on it may be offloaded, on the peer too
/// after a takeover.
pub const ANSWERED: u8 = 1;
/// Session actions: forward, drop, reject.
pub const ACTIONS: u8 = 3;
/// The protocols whose sessions replicate: ICMP, TCP, UDP, ICMPv6.
pub const PROTOCOLS: [u8; 4] = [1, 6, 17, 58];

/// Record flags: the session is translated (NAPT44); it was initiated
/// from the outside; the translation rewrites the initiator's
/// destination (the record's NAT address and port are the inside host's:
/// an outside flow through a mapping, a forwarded port or a static
/// translation); the binding is a static rule's, not a pool pair. The
/// last two only go to a peer with [`CAP_STATIC_NAT`].
pub const REC_NAT: u8 = 1;
pub const REC_OUTSIDE: u8 = 2;
pub const REC_DNAT: u8 = 4;
pub const REC_STATIC: u8 = 8;

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    SyncStart = 2,
    Add = 3,
    Delete = 4,
    Refresh = 5,
    ColdSyncComplete = 6,
    Ack = 7,
    Nack = 8,
    Keepalive = 9,
    /// Sent only to a peer that announced [`CAP_DIGEST`].
    Digest = 10,
    /// Sent only to a peer that announced [`CAP_CONTRACT`].
    Contract = 11,
}

impl Kind {
    pub const ALL: [Self; 11] = [
        Self::Hello,
        Self::SyncStart,
        Self::Add,
        Self::Delete,
        Self::Refresh,
        Self::ColdSyncComplete,
        Self::Ack,
        Self::Nack,
        Self::Keepalive,
        Self::Digest,
        Self::Contract,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == v)
    }
}

/// Why a frame could not be read. The connection closes on any of them:
/// the peer is either not speaking this version or not well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic, flags or reserved bytes")]
    BadHeader,
    /// The peer speaks another version of the protocol, one the hello's
    /// capabilities cannot bridge.
    #[error("the peer speaks sync protocol version {0}, this node {VERSION}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    BadKind(u8),
    #[error("bad length")]
    BadLength,
    #[error("bad record")]
    BadRecord,
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub tagged: bool,
    pub len: u32,
    pub seq: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        h[2] = VERSION;
        h[3] = self.kind as u8;
        h[4] = if self.tagged { FLAG_TAG } else { 0 };
        h[8..12].copy_from_slice(&self.len.to_be_bytes());
        h[12..20].copy_from_slice(&self.seq.to_be_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN]) -> Result<Self, DecodeError> {
        if u16::from_be_bytes([h[0], h[1]]) != MAGIC {
            return Err(DecodeError::BadHeader);
        }
        if h[2] != VERSION {
            return Err(DecodeError::Version(h[2]));
        }
        let kind = Kind::from_u8(h[3]).ok_or(DecodeError::BadKind(h[3]))?;
        if h[4] & !FLAG_TAG != 0 || h[5..8] != [0, 0, 0] {
            return Err(DecodeError::BadHeader);
        }
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if len as usize > MAX_BODY {
            return Err(DecodeError::BadLength);
        }
        let seq = u64::from_be_bytes(h[12..20].try_into().expect("8 bytes"));
        Ok(Self {
            kind,
            tagged: h[4] & FLAG_TAG != 0,
            len,
            seq,
        })
    }
}

/// A whole frame found at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    /// Where the header + body (what the tag covers), the body and the tag
    /// are in the buffer.
    pub signed: Range<usize>,
    pub body: Range<usize>,
    pub tag: Option<Range<usize>>,
    /// Bytes the frame takes.
    pub total: usize,
}

/// Finds the frame at the start of `buf`: `Ok(None)` until it is complete.
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, DecodeError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(h)?;
    let body_end = HEADER_LEN + header.len as usize;
    let total = body_end + if header.tagged { TAG_LEN } else { 0 };
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Frame {
        header,
        signed: 0..body_end,
        body: HEADER_LEN..body_end,
        tag: header.tagged.then_some(body_end..total),
        total,
    }))
}

/// One direction of a flow: addresses IPv4-mapped for IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct WireKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl WireKey {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.push(self.proto);
    }

    fn get(b: &[u8]) -> Self {
        Self {
            src: b[0..16].try_into().expect("16 bytes"),
            dst: b[16..32].try_into().expect("16 bytes"),
            sport: u16::from_be_bytes([b[32], b[33]]),
            dport: u16::from_be_bytes([b[34], b[35]]),
            proto: b[36],
        }
    }

    fn is_v4(&self) -> bool {
        mapped(&self.src) && mapped(&self.dst)
    }

    /// Both addresses of one family.
    fn one_family(&self) -> bool {
        mapped(&self.src) == mapped(&self.dst)
    }
}

fn mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10..12] == [0xff, 0xff]
}

/// Why a record was refused (the nack reason on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NackReason {
    /// The receiver's table is full.
    TableFull = 1,
    /// A field is out of range (protocol, state, action, flags, family).
    IllegalFlow = 2,
    /// The service set index is not configured on the receiver.
    IllegalServiceSet = 3,
    /// A NAT binding the receiver cannot hold (not in its pool).
    NatConflict = 4,
    /// (Refresh) the receiver does not hold the session; the sender
    /// answers with a full add, which repairs a lost one.
    NotFound = 5,
}

impl NackReason {
    pub const ALL: [Self; 5] = [
        Self::TableFull,
        Self::IllegalFlow,
        Self::IllegalServiceSet,
        Self::NatConflict,
        Self::NotFound,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| *r as u8 == v)
    }
}

/// Which operation a nack refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Add = 1,
    Delete = 2,
    Refresh = 3,
}

impl Op {
    fn from_u8(v: u8) -> Option<Self> {
        [Self::Add, Self::Delete, Self::Refresh]
            .into_iter()
            .find(|o| *o as u8 == v)
    }
}

/// A session as the peer installs it: 64 bytes on the wire. Times are
/// relative (seconds ago), because the nodes' clocks differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub id: u64,
    /// The initiator's direction as received (before NAT).
    pub key: WireKey,
    pub state: u8,
    pub action: u8,
    /// `REC_NAT`, `REC_OUTSIDE`.
    pub flags: u8,
    pub service_set: u8,
    pub nat_addr: [u8; 4],
    pub nat_port: u16,
    /// Seconds since the session was created, and since its last packet.
    pub age: u32,
    pub idle: u32,
}

impl SessionRecord {
    /// Appends the record's wire form.
    pub fn put(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.to_be_bytes());
        self.key.put(out);
        out.extend_from_slice(&[self.state, self.action, self.flags, self.service_set]);
        out.extend_from_slice(&self.nat_addr);
        out.extend_from_slice(&self.nat_port.to_be_bytes());
        out.extend_from_slice(&self.age.to_be_bytes());
        out.extend_from_slice(&self.idle.to_be_bytes());
        out.resize(start + ADD_LEN, 0);
    }

    fn get(b: &[u8]) -> Result<Self, DecodeError> {
        if b[63] != 0 {
            return Err(DecodeError::BadRecord);
        }
        Ok(Self {
            id: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            key: WireKey::get(&b[8..45]),
            state: b[45],
            action: b[46],
            flags: b[47],
            service_set: b[48],
            nat_addr: b[49..53].try_into().expect("4 bytes"),
            nat_port: u16::from_be_bytes([b[53], b[54]]),
            age: u32::from_be_bytes(b[55..59].try_into().expect("4 bytes")),
            idle: u32::from_be_bytes(b[59..63].try_into().expect("4 bytes")),
        })
    }

    /// Whether the fields make a session: a known protocol's state, a
    /// known action and flags, NAT only on IPv4 with a port. Service sets
    /// are the receiver's to check (`services` configured there).
    pub fn validate(&self, services: usize) -> Result<(), NackReason> {
        let k = &self.key;
        let tcp = k.proto == 6;
        if !PROTOCOLS.contains(&k.proto)
            || !k.one_family()
            || (k.proto == 1 && !k.is_v4())
            || (k.proto == 58 && k.is_v4())
            || (tcp && self.state >= TCP_STATES)
            || (!tcp && self.state > ANSWERED)
            || self.action >= ACTIONS
            || self.flags & !(REC_NAT | REC_OUTSIDE | REC_DNAT | REC_STATIC) != 0
            || (self.flags & (REC_DNAT | REC_STATIC) != 0 && self.flags & REC_NAT == 0)
            || (self.flags & REC_NAT != 0 && (!k.is_v4() || self.nat_port == 0))
            || (self.flags & REC_NAT == 0 && (self.nat_addr != [0; 4] || self.nat_port != 0))
        {
            return Err(NackReason::IllegalFlow);
        }
        if usize::from(self.service_set) >= services {
            return Err(NackReason::IllegalServiceSet);
        }
        Ok(())
    }
}

/// A session the peer removes: 48 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeleteRecord {
    pub id: u64,
    pub key: WireKey,
}

impl DeleteRecord {
    /// Appends the record's wire form.
    pub fn put(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.to_be_bytes());
        self.key.put(out);
        out.resize(start + DELETE_LEN, 0);
    }

    fn get(b: &[u8]) -> Result<Self, DecodeError> {
        if b[45..48] != [0, 0, 0] {
            return Err(DecodeError::BadRecord);
        }
        Ok(Self {
            id: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            key: WireKey::get(&b[8..45]),
        })
    }
}

/// A long-lived session is still alive: 56 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefreshRecord {
    pub id: u64,
    pub key: WireKey,
    pub state: u8,
    /// Seconds since its last packet.
    pub idle: u32,
}

impl RefreshRecord {
    /// Whether the state fits the protocol (the session itself is the
    /// receiver's to find).
    pub fn validate(&self) -> bool {
        let tcp = self.key.proto == 6;
        PROTOCOLS.contains(&self.key.proto)
            && self.key.one_family()
            && ((tcp && self.state < TCP_STATES) || (!tcp && self.state <= ANSWERED))
    }

    /// Appends the record's wire form.
    pub fn put(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.to_be_bytes());
        self.key.put(out);
        out.push(self.state);
        out.extend_from_slice(&self.idle.to_be_bytes());
        out.resize(start + REFRESH_LEN, 0);
    }

    fn get(b: &[u8]) -> Result<Self, DecodeError> {
        if b[50..56].iter().any(|&x| x != 0) {
            return Err(DecodeError::BadRecord);
        }
        Ok(Self {
            id: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            key: WireKey::get(&b[8..45]),
            state: b[45],
            idle: u32::from_be_bytes(b[46..50].try_into().expect("4 bytes")),
        })
    }
}

/// What a node says first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Hello {
    pub node_id: u32,
    pub group_id: u32,
    /// Worker threads (the peer may run a different number).
    pub workers: u16,
    /// 1: active (sends sessions); 2: backup (asks for a cold sync).
    pub role: u8,
    pub capabilities: u32,
    /// Hash of the service set configuration: both nodes must agree.
    pub services_hash: u64,
    /// Fresh per connection: binds the connection's MAC key.
    pub nonce: [u8; 16],
}

pub const ROLE_ACTIVE: u8 = 1;
pub const ROLE_BACKUP: u8 = 2;
/// Capability: frames carry HMAC tags.
pub const CAP_AUTH: u32 = 1;
/// Capability: the node sends and reads [`Message::Digest`], and as
/// active it answers a repeated sync-start (a resync) on a Hot
/// connection. A node without it ignores the bit and is sent neither, so
/// the two versions still talk.
pub const CAP_DIGEST: u32 = 2;
/// Capability: the node sends [`Message::Contract`] after the hellos and
/// compares the peer's field by field instead of the hello's
/// `services_hash` (which a node without it still compares), so a rolling
/// change of what may differ (firewall rules, timeouts, limits) keeps the
/// link, and a mismatch names its field.
pub const CAP_CONTRACT: u32 = 4;
/// Capability: the node reads records with [`REC_DNAT`] or
/// [`REC_STATIC`] (sessions through a mapping from outside, forwarded
/// ports, static translations). A peer without it is not sent them: it
/// would refuse them, or take a static binding for a pool pair.
pub const CAP_STATIC_NAT: u32 = 8;
/// The entries of a contract: at most this many, each key and value at
/// most [`CONTRACT_TEXT`] bytes of UTF-8.
pub const CONTRACT_ENTRIES: usize = 4096;
pub const CONTRACT_TEXT: usize = 1024;

/// What a node holds of the replicated session set: how many sessions,
/// and the wrapping sum of a hash of each one's initiator key (order does
/// not matter, so two nodes holding the same set agree whatever order
/// they built it in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub sessions: u64,
    pub hash: u64,
}

impl Digest {
    pub fn add(&mut self, key_hash: u64) {
        self.sessions += 1;
        self.hash = self.hash.wrapping_add(key_hash);
    }

    pub fn remove(&mut self, key_hash: u64) {
        self.sessions = self.sessions.saturating_sub(1);
        self.hash = self.hash.wrapping_sub(key_hash);
    }

    /// The digest of the union of two disjoint sets (two workers' shards).
    #[must_use]
    pub fn merge(self, o: Self) -> Self {
        Self {
            sessions: self.sessions + o.sessions,
            hash: self.hash.wrapping_add(o.hash),
        }
    }
}

impl Hello {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.group_id.to_be_bytes());
        out.extend_from_slice(&self.workers.to_be_bytes());
        out.push(self.role);
        out.push(0);
        out.extend_from_slice(&self.capabilities.to_be_bytes());
        out.extend_from_slice(&self.services_hash.to_be_bytes());
        out.extend_from_slice(&self.nonce);
    }

    fn get(b: &[u8]) -> Result<Self, DecodeError> {
        if b[11] != 0 || !matches!(b[10], ROLE_ACTIVE | ROLE_BACKUP) || b[8..10] == [0, 0] {
            return Err(DecodeError::BadRecord);
        }
        Ok(Self {
            node_id: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            group_id: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
            workers: u16::from_be_bytes([b[8], b[9]]),
            role: b[10],
            capabilities: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
            services_hash: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            nonce: b[24..40].try_into().expect("16 bytes"),
        })
    }
}

/// A decoded message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    SyncStart,
    Add(Vec<SessionRecord>),
    Delete(Vec<DeleteRecord>),
    Refresh(Vec<RefreshRecord>),
    /// Sent after the last record of a cold sync: how many it carried.
    ColdSyncComplete {
        sessions: u64,
    },
    /// Every message up to `seq` was received and taken.
    Ack {
        seq: u64,
    },
    /// One record of message `seq` was refused.
    Nack {
        seq: u64,
        op: Op,
        reason: NackReason,
        key: WireKey,
    },
    Keepalive,
    /// The sender's [`Digest`] of its replicated session set.
    Digest(Digest),
    /// What must agree between the two nodes, as (field, value) pairs in
    /// the sender's order (see [`CAP_CONTRACT`]).
    Contract(Vec<(String, String)>),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::Hello,
            Self::SyncStart => Kind::SyncStart,
            Self::Add(_) => Kind::Add,
            Self::Delete(_) => Kind::Delete,
            Self::Refresh(_) => Kind::Refresh,
            Self::ColdSyncComplete { .. } => Kind::ColdSyncComplete,
            Self::Ack { .. } => Kind::Ack,
            Self::Nack { .. } => Kind::Nack,
            Self::Keepalive => Kind::Keepalive,
            Self::Digest(_) => Kind::Digest,
            Self::Contract(_) => Kind::Contract,
        }
    }

    /// Appends the body.
    pub fn put_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello(h) => {
                h.put(out);
                out.resize(out.len() + HELLO_LEN - 40, 0);
            }
            Self::SyncStart | Self::Keepalive => {}
            Self::Add(v) => {
                put_count(out, v.len());
                for r in v {
                    r.put(out);
                }
            }
            Self::Delete(v) => {
                put_count(out, v.len());
                for r in v {
                    r.put(out);
                }
            }
            Self::Refresh(v) => {
                put_count(out, v.len());
                for r in v {
                    r.put(out);
                }
            }
            Self::ColdSyncComplete { sessions: n } | Self::Ack { seq: n } => {
                out.extend_from_slice(&n.to_be_bytes());
            }
            Self::Nack {
                seq,
                op,
                reason,
                key,
            } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&[*op as u8, *reason as u8]);
                key.put(out);
                out.push(0);
            }
            Self::Digest(d) => {
                out.extend_from_slice(&d.sessions.to_be_bytes());
                out.extend_from_slice(&d.hash.to_be_bytes());
            }
            Self::Contract(entries) => {
                let text = |out: &mut Vec<u8>, t: &str| {
                    let t = &t.as_bytes()[..t.len().min(CONTRACT_TEXT)];
                    out.extend_from_slice(&(t.len() as u16).to_be_bytes());
                    out.extend_from_slice(t);
                };
                let n = entries.len().min(CONTRACT_ENTRIES);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for (k, v) in &entries[..n] {
                    text(out, k);
                    text(out, v);
                }
            }
        }
    }

    /// Decodes the body of a `kind` message.
    pub fn decode(kind: Kind, b: &[u8]) -> Result<Self, DecodeError> {
        let fixed = |n: usize| {
            if b.len() == n {
                Ok(())
            } else {
                Err(DecodeError::BadLength)
            }
        };
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(match kind {
            Kind::Hello => {
                fixed(HELLO_LEN)?;
                if b[40..].iter().any(|&x| x != 0) {
                    return Err(DecodeError::BadRecord);
                }
                Self::Hello(Hello::get(b)?)
            }
            Kind::SyncStart => {
                fixed(0)?;
                Self::SyncStart
            }
            Kind::Keepalive => {
                fixed(0)?;
                Self::Keepalive
            }
            Kind::Add => Self::Add(records(b, ADD_LEN, SessionRecord::get)?),
            Kind::Delete => Self::Delete(records(b, DELETE_LEN, DeleteRecord::get)?),
            Kind::Refresh => Self::Refresh(records(b, REFRESH_LEN, RefreshRecord::get)?),
            Kind::ColdSyncComplete => {
                fixed(8)?;
                Self::ColdSyncComplete {
                    sessions: u64_at(0),
                }
            }
            Kind::Ack => {
                fixed(8)?;
                Self::Ack { seq: u64_at(0) }
            }
            Kind::Nack => {
                fixed(8 + 2 + KEY_LEN + 1)?;
                let (Some(op), Some(reason), 0) =
                    (Op::from_u8(b[8]), NackReason::from_u8(b[9]), b[47])
                else {
                    return Err(DecodeError::BadRecord);
                };
                Self::Nack {
                    seq: u64_at(0),
                    op,
                    reason,
                    key: WireKey::get(&b[10..47]),
                }
            }
            Kind::Digest => {
                fixed(16)?;
                Self::Digest(Digest {
                    sessions: u64_at(0),
                    hash: u64_at(8),
                })
            }
            Kind::Contract => Self::Contract(contract(b)?),
        })
    }
}

/// A contract's entries; anything but exactly the announced entries of
/// bounded UTF-8 text is refused.
fn contract(b: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if b.len() < n {
            return Err(DecodeError::BadLength);
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn text(b: &mut &[u8]) -> Result<String, DecodeError> {
        let len = take(b, 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > CONTRACT_TEXT {
            return Err(DecodeError::BadRecord);
        }
        String::from_utf8(take(b, len)?.to_vec()).map_err(|_| DecodeError::BadRecord)
    }
    let mut b = b;
    let n = take(&mut b, 2)?;
    let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
    if n > CONTRACT_ENTRIES {
        return Err(DecodeError::BadRecord);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = text(&mut b)?;
        let v = text(&mut b)?;
        out.push((k, v));
    }
    if !b.is_empty() {
        return Err(DecodeError::BadLength);
    }
    Ok(out)
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).expect("batches are bounded").to_be_bytes());
}

fn records<T>(
    b: &[u8],
    len: usize,
    get: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let Some((count, rest)) = b.split_first_chunk::<4>() else {
        return Err(DecodeError::BadLength);
    };
    let n = u32::from_be_bytes(*count) as usize;
    if n.checked_mul(len) != Some(rest.len()) {
        return Err(DecodeError::BadLength);
    }
    rest.chunks_exact(len).map(get).collect()
}

#[cfg(test)]
mod tests;

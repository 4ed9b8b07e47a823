//! Why a packet was dropped: each reason indexes a counter.

use crate::wire::ParseError;

/// Why the worker dropped a packet. The discriminant indexes a counter.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than its IP length field says.
    Truncated = 0,
    /// Inconsistent network header (length fields, or not IP at all: the XDP
    /// program passes non-IP frames to the kernel, so that one should not occur).
    BadHeader = 1,
    BadChecksum = 2,
    NoRoute = 3,
    /// TTL/hop limit expired (an ICMP error may have been sent).
    TtlExpired = 4,
    /// Larger than the egress MTU (an ICMP error may have been sent).
    TooBig = 5,
    /// Unresolved neighbour and the punt rate limit was exhausted.
    PuntLimited = 6,
    /// The egress tx ring had no room.
    TxRingFull = 7,
    /// Routed out of an interface tandem does not forward on.
    ForeignEgress = 8,
    /// A non-first fragment: no ports to find its session by.
    Fragment = 9,
    /// No session, and the packet may not open one (TCP without SYN, echo
    /// reply, ICMP error, traffic to a NAT pool address).
    NoSession = 10,
    /// A firewall rule or default said drop (or reject).
    Policy = 11,
    /// The session table was full.
    TableFull = 12,
    /// The owner worker's handoff ring was full.
    HandoffFull = 13,
    /// NAT could not translate: no free port, or a protocol without ports.
    NatFailed = 14,
    /// An IPv6 header chain longer than the parser follows: its transport
    /// header, and so its ports, cannot be found, and no rule or session
    /// may be applied to a guess.
    HeaderChain = 15,
}

impl DropReason {
    pub const COUNT: usize = 16;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Truncated,
        Self::BadHeader,
        Self::BadChecksum,
        Self::NoRoute,
        Self::TtlExpired,
        Self::TooBig,
        Self::PuntLimited,
        Self::TxRingFull,
        Self::ForeignEgress,
        Self::Fragment,
        Self::NoSession,
        Self::Policy,
        Self::TableFull,
        Self::HandoffFull,
        Self::NatFailed,
        Self::HeaderChain,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::BadChecksum => "bad_checksum",
            Self::NoRoute => "no_route",
            Self::TtlExpired => "ttl_expired",
            Self::TooBig => "too_big",
            Self::PuntLimited => "punt_limited",
            Self::TxRingFull => "tx_ring_full",
            Self::ForeignEgress => "foreign_egress",
            Self::Fragment => "fragment",
            Self::NoSession => "no_session",
            Self::Policy => "policy",
            Self::TableFull => "table_full",
            Self::HandoffFull => "handoff_full",
            Self::NatFailed => "nat_failed",
            Self::HeaderChain => "header_chain",
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Truncated => Self::Truncated,
            ParseError::NotIp | ParseError::BadHeader => Self::BadHeader,
            ParseError::BadChecksum => Self::BadChecksum,
            ParseError::HeaderChain => Self::HeaderChain,
        }
    }
}

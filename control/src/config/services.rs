//! Sessions and service sets: the stateful firewall and NAPT44 settings.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, de};

/// An address prefix, `198.18.1.0/24` or `2001:db8::/32` (a bare address is
/// a host prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `a` lies in the prefix (never across families).
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?
        };
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn from_str_de<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_de(d)
    }
}

/// A port range, `80` or `1024-65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, p: u16) -> bool {
        (self.lo..=self.hi).contains(&p)
    }

    pub fn len(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port or a range like 1024-65535");
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(format!("`{s}`: the range is empty"));
        }
        Ok(Self { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Self { lo: n, hi: n }),
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// An IP protocol by name (`tcp`, `udp`, `icmp`, `icmp6`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(match s.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmp6" | "ipv6-icmp" => 58,
            n => n
                .parse()
                .map_err(|_| format!("`{s}` is not tcp, udp, icmp, icmp6 or 0..=255"))?,
        }))
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u8),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// What a firewall rule does with a new flow.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Forward,
    Drop,
    /// Drop and answer: TCP RST, or ICMP unreachable (administratively
    /// prohibited), rate-limited.
    Reject,
}

/// Which side initiated the flow a rule applies to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Any,
    /// First packet arrived on the inside interface.
    Inside,
    /// First packet arrived on the outside interface.
    Outside,
}

/// One firewall rule; every field left out matches anything.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub source: Option<Prefix>,
    pub destination: Option<Prefix>,
    pub protocol: Option<Protocol>,
    pub source_ports: Option<PortRange>,
    pub destination_ports: Option<PortRange>,
    #[serde(default)]
    pub direction: Direction,
    pub action: RuleAction,
}

/// The stateful firewall of a service set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Firewall {
    /// Checked in order against a flow's first packet; the first match wins.
    pub rules: Vec<Rule>,
    /// For flows no rule matched, by where they started.
    pub inside_initiated: RuleAction,
    pub outside_initiated: RuleAction,
}

impl Default for Firewall {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            inside_initiated: RuleAction::Forward,
            outside_initiated: RuleAction::Drop,
        }
    }
}

/// NAPT44: inside-initiated IPv4 flows leave from a pool address and port.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Nat {
    pub pool: Vec<Ipv4Addr>,
    #[serde(default = "default_nat_ports")]
    pub ports: PortRange,
    /// Seconds a released (address, port) waits before a new mapping may
    /// take it (RFC 6888 REQ-8); 0 reuses at once.
    #[serde(default = "default_port_reuse_delay_s")]
    pub port_reuse_delay_s: u32,
    /// How an inside endpoint's flows share external (address, port)
    /// pairs (RFC 4787 section 4.1).
    #[serde(default)]
    pub mapping: Mapping,
    /// Ports per block: a subscriber (inside address) takes the pool's
    /// ports a block at a time, all on one pool address (paired pooling),
    /// so a log line per block tells who held a port when.
    #[serde(default = "default_block_size")]
    pub block_size: u16,
    /// Blocks one subscriber may hold: its port limit is
    /// `block_size * blocks_per_subscriber` (RFC 6888 REQ-4).
    #[serde(default = "default_blocks_per_subscriber")]
    pub blocks_per_subscriber: u16,
    /// Sessions one subscriber may have at once (many share a mapping
    /// under endpoint-independent mapping); 0: no limit of its own.
    #[serde(default = "default_sessions_per_subscriber")]
    pub sessions_per_subscriber: u32,
    /// New sessions one subscriber may open per second (a burst of as
    /// many is allowed); 0: no limit.
    #[serde(default = "default_subscriber_sessions_per_sec")]
    pub subscriber_sessions_per_sec: u32,
    /// Which outside hosts may send to a mapping (RFC 4787 section 5).
    #[serde(default)]
    pub filtering: Filtering,
    /// 1:1 static translations: the inside host leaves from, and is
    /// reached at, its outside address (ports unchanged).
    #[serde(default, rename = "static")]
    pub statics: Vec<StaticNat>,
    /// Port forwarding: an outside (address, port) reaches an inside
    /// host's port.
    #[serde(default, rename = "forward")]
    pub forwards: Vec<Forward>,
}

/// RFC 4787 filtering behaviour: which packets from outside reach an
/// inside endpoint through its mapping without a session of their own.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Any outside host (REQ-8's choice where application transparency
    /// matters most: STUN, games, VoIP, WebRTC).
    #[default]
    EndpointIndependent,
    /// Hosts the endpoint has sent to (any port of theirs).
    AddressDependent,
    /// Only the (address, port)s the endpoint has sent to: each session's
    /// own replies.
    AddressAndPortDependent,
}

/// A 1:1 static translation.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticNat {
    pub inside: Ipv4Addr,
    pub outside: Ipv4Addr,
}

/// A forwarded port: flows of `protocol` to `outside` go to `inside`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub protocol: Protocol,
    pub outside: std::net::SocketAddrV4,
    pub inside: std::net::SocketAddrV4,
}

/// RFC 4787 mapping behaviour.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One external (address, port) per inside (address, port, protocol),
    /// whatever the destination (REQ-1; RFC 5382 REQ-1 for TCP).
    #[default]
    EndpointIndependent,
    /// A new external pair for every session.
    AddressAndPortDependent,
}

/// Blocks a subscriber holds at most.
pub const MAX_BLOCKS_PER_SUBSCRIBER: u16 = 32;

const fn default_port_reuse_delay_s() -> u32 {
    120
}

const fn default_block_size() -> u16 {
    256
}

const fn default_blocks_per_subscriber() -> u16 {
    8
}

const fn default_sessions_per_subscriber() -> u32 {
    8192
}

const fn default_subscriber_sessions_per_sec() -> u32 {
    2000
}

const fn default_offload() -> bool {
    true
}

fn default_nat_ports() -> PortRange {
    PortRange {
        lo: 1024,
        hi: 65535,
    }
}

/// A service set: which flows it serves and what it does to them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSet {
    pub name: String,
    /// Flows whose inside endpoint is in one of these; empty: every flow.
    #[serde(default)]
    pub inside_prefixes: Vec<Prefix>,
    #[serde(default)]
    pub firewall: Firewall,
    pub nat: Option<Nat>,
    /// Established sessions (TCP after the handshake, UDP and ICMP echo
    /// after the first reply; IPv4, and IPv6 without translation) are
    /// forwarded by the XDP program itself. On by default. On veth the receiving ends need GRO on (or an XDP
    /// program): a veth drops redirected frames otherwise, without a
    /// counter.
    #[serde(default = "default_offload")]
    pub offload: bool,
}

/// Idle timeouts in seconds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// SYN-SENT, SYN-RECEIVED.
    pub tcp_opening: u32,
    pub tcp_established: u32,
    /// FIN-WAIT-1/2, CLOSE-WAIT, CLOSING, LAST-ACK.
    pub tcp_closing: u32,
    pub tcp_time_wait: u32,
    /// After a reset.
    pub tcp_closed: u32,
    pub udp: u32,
    pub icmp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_opening: 20,
            tcp_established: 7200,
            tcp_closing: 60,
            tcp_time_wait: 30,
            tcp_closed: 1,
            udp: 60,
            icmp: 30,
            other: 60,
        }
    }
}

impl Timeouts {
    pub fn all(&self) -> [(&'static str, u32); 8] {
        [
            ("tcp_opening", self.tcp_opening),
            ("tcp_established", self.tcp_established),
            ("tcp_closing", self.tcp_closing),
            ("tcp_time_wait", self.tcp_time_wait),
            ("tcp_closed", self.tcp_closed),
            ("udp", self.udp),
            ("icmp", self.icmp),
            ("other", self.other),
        ]
    }
}

/// Session table sizing and aging.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    /// Sessions each worker can hold; allocated at start.
    pub per_worker: u32,
    /// Rejects (TCP RST / ICMP unreachable) a worker may send per second.
    pub rejects_per_sec: u32,
    pub timeouts: Timeouts,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            per_worker: 65536,
            rejects_per_sec: 100,
            timeouts: Timeouts::default(),
        }
    }
}

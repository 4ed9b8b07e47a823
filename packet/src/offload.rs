//! Session offload: the owner worker hands an established session's two
//! directions to the XDP program's flow map, and the program forwards
//! their packets itself (rewrite, `XDP_REDIRECT` through a devmap) without
//! a trip through AF_XDP.
//!
//! Design: the worker stays the owner. It decides once (TCP after the
//! handshake, UDP after the first reply), writes one [`FlowEntry`] per
//! direction with everything the program needs precomputed (MACs, egress
//! slot and MTU, the translation and its RFC 1624 checksum deltas), and
//! takes them back when the session closes or ages out, reading what the
//! program forwarded. Packets that change the session's state (TCP SYN,
//! FIN, RST) or need an ICMP error still reach the worker. This file turns
//! a session into its directions and entries; a [`FlowTable`] is where
//! they are written (the data plane's is the XDP program's mapped table).

use tandem_common::{
    FLOW_NAT_DESTINATION, FLOW_NAT_NONE, FLOW_NAT_SOURCE, FLOW_WAYS, FlowEntry, FlowV4Key,
    FlowV6Key,
};
use tandem_control::config::Config;

use crate::{
    session::{FlowKey, Session},
    wire::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

/// Largest flow table the daemon creates, in slots (64 MiB).
pub const MAX_FLOWS: u32 = 1 << 20;

/// What the program forwarded for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds of the latest packet, to about a
    /// millisecond; 0: none.
    pub last_seen_ns: u64,
}

/// Why a write to the flow table failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Every way of the key's home slot is taken.
    Full,
    /// The slot stayed locked by another writer.
    Busy,
}

/// The fast path's flow table as a worker's services use it: install a
/// direction, read and remove what the program forwarded for it, and keep
/// the program's clock. The data plane's implementation is the XDP
/// program's mapped table; tests and the fuzzer use one in memory.
pub trait FlowTable: Send {
    /// Installs (or replaces) direction `key`, leaving by `out` translated
    /// by `nat`, with zeroed counters.
    fn install(&mut self, key: &DirKey, out: Egress, nat: Nat) -> Result<(), WriteError>;
    /// What the program forwarded for direction `key`, if installed.
    fn read_dir(&mut self, key: &DirKey) -> Option<Forwarded>;
    /// Removes direction `key`, returning what it forwarded.
    fn remove_dir(&mut self, key: &DirKey) -> Option<Forwarded>;
    /// Moves the program's clock to now (a worker calls this once per
    /// loop).
    fn advance_clock(&self);
    /// Now on the clock the program's stamps are read against
    /// (CLOCK_MONOTONIC_COARSE, ns).
    fn now_ns(&self) -> u64;
}

/// One direction's key in the flow map of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKey {
    V4(FlowV4Key),
    V6(FlowV6Key),
}

/// The flow table's size for `cfg` with `workers` workers, in slots: a
/// power of two at least twice the directions of every session the
/// workers can hold (so that probes stay short), up to [`MAX_FLOWS`].
pub fn capacity(cfg: &Config, workers: u32) -> u32 {
    cfg.sessions
        .per_worker
        .saturating_mul(workers)
        .saturating_mul(4)
        .clamp(FLOW_WAYS, MAX_FLOWS)
        .next_power_of_two()
}

/// The translation one direction gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    None,
    /// Source address and port become these.
    Source([u8; 4], u16),
    /// Destination address and port become these.
    Destination([u8; 4], u16),
}

/// Where one direction leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    pub slot: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub mtu: u16,
}

/// One's-complement sum of `~old + new` over the 16-bit words of two
/// equally long byte strings, not folded.
fn word_delta(old: &[u8], new: &[u8]) -> u32 {
    old.chunks_exact(2)
        .zip(new.chunks_exact(2))
        .map(|(o, n)| {
            u32::from(!u16::from_be_bytes([o[0], o[1]]))
                + u32::from(u16::from_be_bytes([n[0], n[1]]))
        })
        .sum()
}

pub(super) fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// `~old + new` of the TTL/protocol word when the TTL drops by one:
/// `~w + (w - 0x100)` is `0xffff - 0x100` whatever `w` is.
const TTL_DELTA: u32 = 0xfeff;

/// The flow map key of a packet with session key `k`: IPv4 TCP, UDP and
/// ICMP (echo: sessions of no other ICMP type exist) only, what the
/// program's fast path parses.
pub fn key_of(k: &FlowKey) -> Option<FlowV4Key> {
    if ![PROTO_TCP, PROTO_UDP, PROTO_ICMP].contains(&k.proto) {
        return None;
    }
    Some(FlowV4Key {
        src: k.src_v4()?,
        dst: k.dst_v4()?,
        sport: k.sport.to_be_bytes(),
        dport: k.dport.to_be_bytes(),
        proto: k.proto,
        pad: [0; 3],
    })
}

/// The entry for packets with key `key` leaving by `out`, translated by
/// `nat`.
pub fn entry(key: &FlowV4Key, out: Egress, nat: Nat) -> FlowEntry {
    let (kind, old_addr, old_port, addr, port) = match nat {
        Nat::None => (FLOW_NAT_NONE, key.src, key.sport, key.src, key.sport),
        Nat::Source(a, p) => (FLOW_NAT_SOURCE, key.src, key.sport, a, p.to_be_bytes()),
        Nat::Destination(a, p) => (FLOW_NAT_DESTINATION, key.dst, key.dport, a, p.to_be_bytes()),
    };
    let addr_delta = word_delta(&old_addr, &addr);
    // ICMP's checksum has no pseudo-header: only the echo identifier.
    let l4_addr_delta = if key.proto == PROTO_ICMP {
        0
    } else {
        addr_delta
    };
    FlowEntry {
        dst_mac: out.dst_mac,
        src_mac: out.src_mac,
        tx_slot: u16::try_from(out.slot).unwrap_or(u16::MAX),
        mtu: out.mtu,
        nat: kind,
        nat_addr: addr,
        nat_port: port,
        ip_delta: fold(addr_delta + TTL_DELTA),
        l4_delta: fold(l4_addr_delta + word_delta(&old_port, &port)),
    }
}

/// Adds what the program has forwarded so far for an offloaded `s` to its
/// counters and moves its `last_seen` (second `now`, CLOCK_MONOTONIC_COARSE
/// `now_ns`) to the latest fast-path packet: a listing's copy, the
/// entries stay.
pub fn add_forwarded<F: FlowTable + ?Sized>(flows: &mut F, s: &mut Session, now: u32, now_ns: u64) {
    let Some(f) = forwarded(flows, s) else {
        return;
    };
    for (i, d) in f.iter().enumerate() {
        s.packets[i] += d.packets;
        s.bytes[i] += d.bytes;
    }
    s.last_seen = s.last_seen.max(last_seen(&f, now, now_ns));
}

/// What the program has forwarded for an offloaded `s`, per direction
/// (initiator's, responder's); `None` if `s` is not offloaded.
pub fn forwarded<F: FlowTable + ?Sized>(flows: &mut F, s: &Session) -> Option<[Forwarded; 2]> {
    if !s.is_offloaded() {
        return None;
    }
    let dirs = directions(s)?;
    Some(dirs.map(|(k, _)| flows.read_dir(&k).unwrap_or_default()))
}

/// The worker second (of `now`, at CLOCK_MONOTONIC_COARSE `now_ns`) of the
/// latest packet in `f`; 0 if there was none.
pub fn last_seen(f: &[Forwarded; 2], now: u32, now_ns: u64) -> u32 {
    let last = f[0].last_seen_ns.max(f[1].last_seen_ns);
    if last == 0 {
        return 0;
    }
    let idle = u32::try_from(now_ns.saturating_sub(last) / 1_000_000_000).unwrap_or(u32::MAX);
    now.saturating_sub(idle)
}

/// The IPv6 flow map key of a packet with session key `k`: TCP, UDP and
/// ICMPv6 (echo) between IPv6 addresses.
pub fn key6_of(k: &FlowKey) -> Option<FlowV6Key> {
    if k.src_v4().is_some()
        || k.dst_v4().is_some()
        || ![PROTO_TCP, PROTO_UDP, PROTO_ICMPV6].contains(&k.proto)
    {
        return None;
    }
    Some(FlowV6Key {
        src: k.src,
        dst: k.dst,
        sport: k.sport.to_be_bytes(),
        dport: k.dport.to_be_bytes(),
        proto: k.proto,
        pad: [0; 3],
    })
}

/// The two directions of session `s`: (initiator's key and translation,
/// responder's key and translation). `None` for what the fast path does
/// not carry (protocols without ports, translated IPv6).
pub fn directions(s: &Session) -> Option<[(DirKey, Nat); 2]> {
    if let (Some(init), Some(reply)) = (key6_of(&s.key), key6_of(&s.reply_key())) {
        return s.nat().is_none().then_some([
            (DirKey::V6(init), Nat::None),
            (DirKey::V6(reply), Nat::None),
        ]);
    }
    let init = key_of(&s.key)?;
    let reply = key_of(&s.reply_key())?;
    Some(match s.nat() {
        Some((addr, port)) if s.is_dnat() => [
            (DirKey::V4(init), Nat::Destination(addr, port)),
            (DirKey::V4(reply), Nat::Source(init.dst, s.key.dport)),
        ],
        Some((addr, port)) => [
            (DirKey::V4(init), Nat::Source(addr, port)),
            (DirKey::V4(reply), Nat::Destination(init.src, s.key.sport)),
        ],
        None => [
            (DirKey::V4(init), Nat::None),
            (DirKey::V4(reply), Nat::None),
        ],
    })
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;
    use crate::wire::{self, Rewrite};

    /// Where the tests' directions leave.
    const OUT: Egress = Egress {
        slot: 1,
        dst_mac: [0xa; 6],
        src_mac: [0xb; 6],
        mtu: 1500,
    };

    /// The program's rewrite, step for step, in Rust: the privileged
    /// BPF_PROG_RUN test checks the program itself against the worker.
    fn fast(frame: &mut [u8], e: &FlowEntry) {
        let apply = |c: u16, d: u16| !fold(u32::from(!c) + u32::from(d));
        frame[..6].copy_from_slice(&e.dst_mac);
        frame[6..12].copy_from_slice(&e.src_mac);
        frame[22] -= 1;
        let (udp, icmp) = (frame[23] == 17, frame[23] == 1);
        let csum_at = match frame[23] {
            17 => 34 + 6,
            1 => 34 + 2,
            _ => 34 + 16,
        };
        let (addr_at, port_at) = match (e.nat, icmp) {
            (FLOW_NAT_SOURCE, false) => (26, 34),
            (FLOW_NAT_DESTINATION, false) => (30, 36),
            (FLOW_NAT_SOURCE, true) => (26, 38),
            (FLOW_NAT_DESTINATION, true) => (30, 38),
            _ => (0, 0),
        };
        if addr_at != 0 {
            frame[addr_at..addr_at + 4].copy_from_slice(&e.nat_addr);
            frame[port_at..port_at + 2].copy_from_slice(&e.nat_port);
            let old = u16::from_be_bytes([frame[csum_at], frame[csum_at + 1]]);
            if !(udp && old == 0) {
                let mut new = apply(old, e.l4_delta);
                if udp && new == 0 {
                    new = 0xffff;
                }
                frame[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
        let old = u16::from_be_bytes([frame[24], frame[25]]);
        frame[24..26].copy_from_slice(&apply(old, e.ip_delta).to_be_bytes());
    }

    /// A frame of protocol `proto` (6, 17, or 1: an echo request with
    /// identifier `sport`).
    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64);
        let mut out = Vec::new();
        match proto {
            6 => b
                .tcp(sport, dport, 7, 1000)
                .ack(9)
                .write(&mut out, b"payload")
                .unwrap(),
            17 => b.udp(sport, dport).write(&mut out, b"payload").unwrap(),
            _ => b
                .icmpv4_echo_request(sport, 3)
                .write(&mut out, b"payload")
                .unwrap(),
        }
        out
    }

    /// The worker's path for the same packet: TTL, MACs, then NAT.
    fn worker(frame: &mut [u8], nat: Nat) {
        wire::decrement_ttl_v4(frame, 14);
        frame[..6].copy_from_slice(&OUT.dst_mac);
        frame[6..12].copy_from_slice(&OUT.src_mac);
        let ip = wire::parse(frame).unwrap();
        let l4 = wire::parse_l4(frame, &ip).unwrap();
        match nat {
            Nat::None => {}
            Nat::Source(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Source, a, p),
            Nat::Destination(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Destination, a, p),
        }
    }

    #[test]
    fn precomputed_deltas_rewrite_like_the_worker() {
        for proto in [6, 17, 1] {
            for nat in [
                Nat::None,
                Nat::Source([198, 18, 2, 100], 20001),
                Nat::Destination([198, 18, 1, 10], 40000),
                Nat::Source([255, 255, 0, 1], 65535),
            ] {
                let frame = packet(proto, [198, 18, 1, 10], [198, 18, 2, 10], 40000, 7);
                let ip = wire::parse(&frame).unwrap();
                let l4 = wire::parse_l4(&frame, &ip).unwrap();
                let key = FlowV4Key {
                    src: [198, 18, 1, 10],
                    dst: [198, 18, 2, 10],
                    sport: l4.sport.to_be_bytes(),
                    dport: l4.dport.to_be_bytes(),
                    proto: l4.proto,
                    pad: [0; 3],
                };
                let flow = entry(&key, OUT, nat);
                let (mut by_xdp, mut by_worker) = (frame.clone(), frame.clone());
                fast(&mut by_xdp, &flow);
                worker(&mut by_worker, nat);
                assert_eq!(by_xdp, by_worker, "protocol {proto} {nat:?}");
                // And both verify.
                let p = SlicedPacket::from_ethernet(&by_xdp).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                    panic!()
                };
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                match &p.transport {
                    Some(TransportSlice::Tcp(t)) => assert_eq!(
                        t.checksum(),
                        t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
                    ),
                    Some(TransportSlice::Udp(u)) => assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap()
                    ),
                    Some(TransportSlice::Icmpv4(i)) => assert_eq!(
                        i.checksum(),
                        etherparse::Icmpv4Header::with_checksum(i.icmp_type(), i.payload())
                            .checksum
                    ),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// What the fast path cannot parse is never offloaded: the listing
    /// would call the session offloaded while the worker forwards it.
    #[test]
    fn only_what_the_fast_path_parses_has_directions() {
        for (proto, carried) in [(6, true), (17, true), (1, true), (47, false), (132, false)] {
            let s = Session::new(
                FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 0, 0, proto),
                1,
                crate::session::Origin::Inside,
                0,
                0,
            );
            assert_eq!(directions(&s).is_some(), carried, "protocol {proto}");
        }
        let v6 = Session::new(
            FlowKey {
                src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                ..FlowKey::v4([0; 4], [198, 18, 2, 10], 1, 2, 17)
            },
            1,
            crate::session::Origin::Inside,
            0,
            0,
        );
        assert!(directions(&v6).is_none(), "mixed families");
    }

    #[test]
    fn directions_translate_both_ways() {
        use crate::session::{Origin, Session};
        let k = FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 40000, 7, 17);
        let mut s = Session::new(k, 1, Origin::Inside, 0, 0);
        assert_eq!(
            directions(&s).unwrap(),
            [
                (DirKey::V4(key_of(&k).unwrap()), Nat::None),
                (DirKey::V4(key_of(&k.reversed()).unwrap()), Nat::None)
            ]
        );
        s.set_nat([198, 18, 2, 100], 20001);
        let [(DirKey::V4(i), ni), (DirKey::V4(r), nr)] = directions(&s).unwrap() else {
            panic!("IPv4 directions");
        };
        assert_eq!(ni, Nat::Source([198, 18, 2, 100], 20001));
        assert_eq!(
            (r.dst, r.dport),
            ([198, 18, 2, 100], 20001u16.to_be_bytes())
        );
        assert_eq!(nr, Nat::Destination([198, 18, 1, 10], 40000));
        assert_eq!(i.src, [198, 18, 1, 10]);
        let mixed = FlowKey { src: [1; 16], ..k };
        assert!(directions(&Session::new(mixed, 2, Origin::Inside, 0, 0)).is_none());
        // IPv6: both directions, never translated.
        let v6 = FlowKey {
            src: [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            dst: [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            ..k
        };
        let mut s6 = Session::new(v6, 3, Origin::Inside, 0, 0);
        let [(DirKey::V6(i), Nat::None), (DirKey::V6(r), Nat::None)] = directions(&s6).unwrap()
        else {
            panic!("IPv6 directions");
        };
        assert_eq!(
            (i.src, i.sport, r.src, r.dport),
            (
                v6.src,
                40000u16.to_be_bytes(),
                v6.dst,
                40000u16.to_be_bytes()
            )
        );
        s6.set_nat([198, 18, 2, 100], 20001);
        assert!(directions(&s6).is_none(), "no NAT66 on the fast path");
    }
}

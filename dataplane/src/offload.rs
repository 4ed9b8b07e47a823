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
//! FIN, RST) or need an ICMP error still reach the worker. The map is per
//! CPU, so the program's counters need no atomics; the worker writes the
//! same entry for every CPU and sums them when it reads.
//!
//! The map is written with raw `bpf(2)` calls from a buffer allocated
//! once: an install is one syscall per direction and no allocation.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use tandem_common::{FLOW_NAT_DESTINATION, FLOW_NAT_NONE, FLOW_NAT_SOURCE, FlowEntry, FlowV4Key};
use tandem_control::config::Config;

use crate::session::{FlowKey, Session};

/// Largest flow map the daemon creates (entries, two per session): the
/// map is preallocated per CPU.
pub const MAX_FLOWS: u32 = 1 << 18;

/// The flow map's size for `cfg` with `workers` workers: room for every
/// session's two directions, up to [`MAX_FLOWS`].
pub fn capacity(cfg: &Config, workers: u32) -> u32 {
    cfg.sessions
        .per_worker
        .saturating_mul(workers)
        .saturating_mul(2)
        .clamp(2, MAX_FLOWS)
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

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// `~old + new` of the TTL/protocol word when the TTL drops by one:
/// `~w + (w - 0x100)` is `0xffff - 0x100` whatever `w` is.
const TTL_DELTA: u32 = 0xfeff;

/// The flow map key of a packet with session key `k` (IPv4 only).
pub fn key_of(k: &FlowKey) -> Option<FlowV4Key> {
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
    FlowEntry {
        dst_mac: out.dst_mac,
        src_mac: out.src_mac,
        tx_slot: out.slot,
        mtu: out.mtu,
        nat: kind,
        nat_addr: addr,
        nat_port: port,
        ip_delta: fold(addr_delta + TTL_DELTA),
        l4_delta: fold(addr_delta + word_delta(&old_port, &port)),
        ..FlowEntry::default()
    }
}

/// Adds what the program has forwarded so far for an offloaded `s` to its
/// counters and moves its `last_seen` (second `now`, CLOCK_MONOTONIC_COARSE
/// `now_ns`) to the latest fast-path packet: a listing's copy, the
/// entries stay.
pub fn add_forwarded(flows: &mut FlowMap, s: &mut Session, now: u32, now_ns: u64) {
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
pub fn forwarded(flows: &mut FlowMap, s: &Session) -> Option<[Forwarded; 2]> {
    if !s.is_offloaded() {
        return None;
    }
    let dirs = directions(s)?;
    Some(dirs.map(|(k, _)| flows.read(&k).unwrap_or_default()))
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

/// The two directions of session `s`: (initiator's key and translation,
/// responder's key and translation). `None` for what the fast path does
/// not carry (IPv6, protocols without ports).
pub fn directions(s: &Session) -> Option<[(FlowV4Key, Nat); 2]> {
    let init = key_of(&s.key)?;
    let reply = key_of(&s.reply_key())?;
    Some(match s.nat() {
        Some((addr, port)) => [
            (init, Nat::Source(addr, port)),
            (reply, Nat::Destination(init.src, s.key.sport)),
        ],
        None => [(init, Nat::None), (reply, Nat::None)],
    })
}

/// What the program forwarded for one direction, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds of the latest packet; 0: none.
    pub last_seen_ns: u64,
}

/// Why a write to the flow map failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    Full,
    Other(i32),
}

/// `union bpf_attr` as the map element commands read it.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// A worker's handle on the flow map.
#[derive(Debug)]
pub struct FlowMap {
    fd: OwnedFd,
    /// One value per possible CPU, as the kernel reads and writes them.
    values: Vec<FlowEntry>,
}

impl FlowMap {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(Self {
            fd,
            values: vec![FlowEntry::default(); cpus],
        })
    }

    fn call(&self, cmd: libc::c_long, key: &FlowV4Key, value: u64, flags: u64) -> Result<(), i32> {
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd().cast_unsigned(),
            pad: 0,
            key: (&raw const *key) as u64,
            value,
            flags,
        };
        // SAFETY: attr points at a live key and, for lookup and update, at
        // `values`, which holds one entry per possible CPU as the kernel
        // expects of a per-CPU map.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &raw const attr,
                size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    }

    /// Installs (or replaces) `key`'s entry, the same on every CPU.
    pub fn insert(&mut self, key: &FlowV4Key, e: &FlowEntry) -> Result<(), WriteError> {
        self.values.fill(*e);
        let value = self.values.as_ptr() as u64;
        self.call(BPF_MAP_UPDATE_ELEM, key, value, 0)
            .map_err(|errno| match errno {
                libc::E2BIG | libc::ENOMEM | libc::ENOSPC => WriteError::Full,
                e => WriteError::Other(e),
            })
    }

    /// What the program forwarded for `key`, if it is installed.
    pub fn read(&mut self, key: &FlowV4Key) -> Option<Forwarded> {
        let value = self.values.as_mut_ptr() as u64;
        self.call(BPF_MAP_LOOKUP_ELEM, key, value, 0).ok()?;
        Some(
            self.values
                .iter()
                .fold(Forwarded::default(), |a, e| Forwarded {
                    packets: a.packets + e.packets,
                    bytes: a.bytes + e.bytes,
                    last_seen_ns: a.last_seen_ns.max(e.last_seen_ns),
                }),
        )
    }

    /// Removes every entry; how many. A node that stops forwarding clears
    /// the map so that nothing it offloaded outlives its sessions.
    pub fn clear(&mut self) -> usize {
        let mut n = 0;
        let mut first = FlowV4Key::default();
        loop {
            // A null key asks for the first key; each one found is deleted.
            let attr = ElemAttr {
                map_fd: self.fd.as_raw_fd().cast_unsigned(),
                pad: 0,
                key: 0,
                value: (&raw mut first) as u64,
                flags: 0,
            };
            // SAFETY: attr names a key buffer `first` the kernel writes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_GET_NEXT_KEY,
                    &raw const attr,
                    size_of::<ElemAttr>() as libc::c_uint,
                )
            };
            if r != 0 || self.call(BPF_MAP_DELETE_ELEM, &first, 0, 0).is_err() {
                return n;
            }
            n += 1;
        }
    }

    /// Removes `key`'s entry, returning what it forwarded.
    pub fn remove(&mut self, key: &FlowV4Key) -> Option<Forwarded> {
        let got = self.read(key);
        let _ = self.call(BPF_MAP_DELETE_ELEM, key, 0, 0);
        got
    }
}

/// CLOCK_MONOTONIC_COARSE now, in nanoseconds (the clock of
/// `bpf_ktime_get_coarse_ns`, which stamps the flow entries).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;
    use crate::wire::{self, Rewrite};

    /// The program's rewrite, step for step, in Rust: the privileged
    /// BPF_PROG_RUN test checks the program itself against the worker.
    fn fast(frame: &mut [u8], e: &FlowEntry) {
        let apply = |c: u16, d: u16| !fold(u32::from(!c) + u32::from(d));
        frame[..6].copy_from_slice(&e.dst_mac);
        frame[6..12].copy_from_slice(&e.src_mac);
        frame[22] -= 1;
        let udp = frame[23] == 17;
        let csum_at = if udp { 34 + 6 } else { 34 + 16 };
        let (addr_at, port_at) = match e.nat {
            FLOW_NAT_SOURCE => (26, 34),
            FLOW_NAT_DESTINATION => (30, 36),
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

    fn packet(tcp: bool, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64);
        let mut out = Vec::new();
        if tcp {
            b.tcp(sport, dport, 7, 1000)
                .ack(9)
                .write(&mut out, b"payload")
                .unwrap();
        } else {
            b.udp(sport, dport).write(&mut out, b"payload").unwrap();
        }
        out
    }

    const OUT: Egress = Egress {
        slot: 1,
        dst_mac: [0xa; 6],
        src_mac: [0xb; 6],
        mtu: 1500,
    };

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
        for tcp in [true, false] {
            for nat in [
                Nat::None,
                Nat::Source([198, 18, 2, 100], 20001),
                Nat::Destination([198, 18, 1, 10], 40000),
                Nat::Source([255, 255, 0, 1], 65535),
            ] {
                let frame = packet(tcp, [198, 18, 1, 10], [198, 18, 2, 10], 40000, 7);
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
                assert_eq!(by_xdp, by_worker, "tcp {tcp} {nat:?}");
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
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn directions_translate_both_ways() {
        use crate::session::{Origin, Session};
        let k = FlowKey::v4([198, 18, 1, 10], [198, 18, 2, 10], 40000, 7, 17);
        let mut s = Session::new(k, 1, Origin::Inside, 0, 0);
        assert_eq!(
            directions(&s).unwrap(),
            [
                (key_of(&k).unwrap(), Nat::None),
                (key_of(&k.reversed()).unwrap(), Nat::None)
            ]
        );
        s.set_nat([198, 18, 2, 100], 20001);
        let [(i, ni), (r, nr)] = directions(&s).unwrap();
        assert_eq!(ni, Nat::Source([198, 18, 2, 100], 20001));
        assert_eq!(
            (r.dst, r.dport),
            ([198, 18, 2, 100], 20001u16.to_be_bytes())
        );
        assert_eq!(nr, Nat::Destination([198, 18, 1, 10], 40000));
        assert_eq!(i.src, [198, 18, 1, 10]);
        let v6 = FlowKey { src: [1; 16], ..k };
        assert!(directions(&Session::new(v6, 2, Origin::Inside, 0, 0)).is_none());
    }
}

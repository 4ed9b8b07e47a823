//! The packet path on arbitrary frames: a sequence of frames, each from
//! either interface, through one worker's whole decision (parse, untag,
//! services, route, rewrite, offload offer), with or without services
//! (and so a session table), with or without a fast-path flow table,
//! with the table aged as time moves. Nothing panics, and what leaves is
//! well formed: a transmitted or handed-over frame parses again, and a
//! forwarded TCP or UDP datagram whose checksum was right still has a
//! right checksum after NAT.
//!
//! Input: one byte of setup (bit 0: services; bit 1: a flow table;
//! bit 2: this is worker 1 of 2, else 0; bits 3-4: the firewall), then
//! frames, each as one byte (bit 0: from the outside; bits 1-7: seconds
//! to move the clock first), a big-endian u16 length, and the frame.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::OnceLock,
};

use libfuzzer_sys::fuzz_target;
use tandem_control::config::Config;
use tandem_packet::{
    counters::Tally,
    fib::{Fib, Link, Route, RouteKind},
    forward::{Action, Limits, RateLimit},
    offload::{DirKey, Egress, FlowTable, Forwarded, Nat, WriteError},
    path::{self, Arrival, Context, Decision, Routes},
    service::Services,
    wire::{self, ETH_HLEN, Ip, Kind},
};

const IN: u32 = 2;
const OUT: u32 = 3;
/// A UMEM frame's size: replies are built in the frame's buffer.
const FRAME: usize = 2048;

/// A flow table in memory, of a few entries, that fills up.
#[derive(Default)]
struct MemFlows {
    entries: Vec<(DirKey, Forwarded)>,
}

impl FlowTable for MemFlows {
    fn install(&mut self, key: &DirKey, _: Egress, _: Nat) -> Result<(), WriteError> {
        if let Some(e) = self.entries.iter_mut().find(|(k, _)| k == key) {
            e.1 = Forwarded::default();
            return Ok(());
        }
        if self.entries.len() == 16 {
            return Err(WriteError::Full);
        }
        self.entries.push((*key, Forwarded::default()));
        Ok(())
    }
    fn read_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        self.entries.iter().find(|(k, _)| k == key).map(|e| e.1)
    }
    fn remove_dir(&mut self, key: &DirKey) -> Option<Forwarded> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.swap_remove(at).1)
    }
    fn advance_clock(&self) {}
    fn now_ns(&self) -> u64 {
        1_000_000_000_000
    }
}

fn fib() -> Fib {
    let mut f = Fib::default();
    for (ifindex, name, mac, v4, v6) in [
        (IN, "in0", 1, [198, 18, 1, 2], "2001:db8:1::2"),
        (OUT, "out0", 2, [198, 18, 2, 2], "2001:db8:2::2"),
    ] {
        *f.link_mut(ifindex) = Link {
            name: name.into(),
            mac: [2, 0, 0, 0, 0, mac],
            mtu: 1500,
            oper_up: Some(true),
            v4: vec![Ipv4Addr::from(v4)],
            v6: vec![v6.parse().unwrap()],
        };
    }
    for (p, oif) in [
        ([198, 18, 1, 0], IN),
        ([198, 18, 2, 0], OUT),
        ([0, 0, 0, 0], OUT),
    ] {
        f.upsert_route4(Route {
            prefix: Ipv4Addr::from(p),
            len: if p == [0; 4] { 0 } else { 24 },
            oif,
            gateway: None,
            priority: 0,
            kind: RouteKind::Unicast,
        });
    }
    for (p, oif) in [("2001:db8:1::", IN), ("2001:db8:2::", OUT)] {
        f.upsert_route6(Route {
            prefix: p.parse().unwrap(),
            len: 64,
            oif,
            gateway: None,
            priority: 0,
            kind: RouteKind::Unicast,
        });
    }
    // Resolved neighbours for the lab's client and server; anything else
    // is unresolved (a punt).
    let c6: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    let s6: Ipv6Addr = "2001:db8:2::10".parse().unwrap();
    for (ifindex, ip, mac) in [
        (IN, IpAddr::from([198, 18, 1, 10]), 0x10),
        (OUT, IpAddr::from([198, 18, 2, 10]), 0x20),
        (IN, c6.into(), 0x10),
        (OUT, s6.into(), 0x20),
    ] {
        f.set_neighbour(ifindex, ip, Some([2, 0, 0, 0, 0, mac]));
    }
    f
}

/// The four configurations, parsed once: each input builds its own
/// services from one, so that every run starts from an empty table.
fn config(firewall: u8) -> &'static Config {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    &CONFIGS.get_or_init(|| (0..4).map(parse_config).collect())[usize::from(firewall & 3)]
}

fn parse_config(firewall: u8) -> Config {
    let rules = match firewall {
        0 => "",
        1 => {
            "[[service_set.firewall.rules]]\nname = \"r\"\nprotocol = \"tcp\"\ndestination_ports = 22\naction = \"reject\"\n"
        }
        2 => {
            "[[service_set.firewall.rules]]\nname = \"d\"\nprotocol = \"udp\"\naction = \"drop\"\n"
        }
        _ => "[service_set.firewall]\noutside_initiated = \"reject\"\n",
    };
    // Each filtering, a forward (in the pool's range) and a static
    // translation: flows from outside and hairpins have ways in.
    let filtering = ["endpoint-independent", "address-dependent", "address-and-port-dependent"]
        [usize::from(firewall % 3)];
    let text = format!(
        "[interfaces]\ninside = \"in0\"\noutside = \"out0\"\n\
         [sessions]\nper_worker = 64\n\
         [[service_set]]\nname = \"lab\"\n{rules}\
         [service_set.nat]\npool = [\"198.18.2.100\"]\nports = \"1024-1151\"\n\
         block_size = 16\nfiltering = \"{filtering}\"\n\
         [[service_set.nat.forward]]\nprotocol = \"tcp\"\noutside = \"198.18.2.100:1030\"\n\
         inside = \"198.18.1.10:80\"\n\
         [[service_set.nat.static]]\ninside = \"198.18.1.20\"\noutside = \"198.18.2.120\"\n\
         [[service_set]]\nname = \"v6\"\ninside_prefixes = [\"2001:db8:1::/64\"]\n"
    );
    Config::parse(Path::new("fuzz.toml"), &text).expect("the fuzz target's configuration")
}

/// Whether an IPv4 TCP or UDP datagram (unfragmented, whole) carries a
/// checksum that verifies; `None` when there is nothing to check.
fn l4_checksum_ok(frame: &[u8], ip: &Ip) -> Option<bool> {
    let Ip::V4 { l3, ihl, len, .. } = *ip else {
        return None;
    };
    let h = frame.get(l3..l3 + len)?;
    let proto = h[9];
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 || !(proto == 6 || proto == 17) {
        return None;
    }
    let seg = &h[ihl..];
    if proto == 17 && seg.len() >= 8 && seg[6..8] == [0, 0] {
        return None;
    }
    let mut pseudo = Vec::with_capacity(12 + seg.len());
    pseudo.extend_from_slice(&h[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(seg);
    Some(wire::checksum(&pseudo, 0) == 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let (workers, worker) = (2, usize::from(setup >> 2 & 1));
    let mut services = (setup & 1 != 0).then(|| {
        let mut s = Services::new(config(setup >> 3), worker, workers, IN, 0)
            .expect("valid")
            .expect("service sets");
        if setup & 2 != 0 {
            s.set_flow_map(Box::new(MemFlows::default()));
        }
        s
    });
    static FIB: OnceLock<Fib> = OnceLock::new();
    let fib = FIB.get_or_init(fib);
    let slots = [IN, OUT];
    let mut limits = Limits {
        icmp: RateLimit::new(1000),
        punt: RateLimit::new(1000),
        reject: RateLimit::new(1000),
    };
    let mut tally = Tally::new(workers);
    let mut now = 0u32;
    let mut buf = vec![0u8; FRAME];
    while rest.len() >= 3 {
        let (head, len) = (rest[0], usize::from(u16::from_be_bytes([rest[1], rest[2]])));
        rest = &rest[3..];
        let len = len.min(rest.len()).min(FRAME);
        let (frame, tail) = rest.split_at(len);
        rest = tail;
        now += u32::from(head >> 1);
        if let Some(svc) = services.as_mut() {
            svc.advance_clock();
            svc.expire_some(now, 8, &mut tally);
        }
        buf.fill(0);
        buf[..len].copy_from_slice(frame);
        let (slot, ingress) = if head & 1 == 0 { (0, IN) } else { (1, OUT) };
        let before = wire::Headers::parse(frame);
        let checksum_in = before
            .as_ref()
            .ok()
            .and_then(|h| l4_checksum_ok(frame, &h.ip));
        let headers = services.is_some().then(|| before);
        let mut cx = Context {
            routes: Routes { fib, slots: &slots },
            limits: &mut limits,
            services: services.as_mut(),
        };
        let at = Arrival {
            len,
            slot,
            ingress,
            handed: false,
        };
        match path::decide(&mut cx, &mut buf, at, headers, now, &mut tally) {
            Decision::Handoff {
                to,
                len,
                slot: from,
                ingress: via,
            } => {
                assert!(to < workers && to != worker, "handed to {to}");
                // As it arrived, or (a hairpin's second pass) from outside.
                assert!(
                    (from, via) == (slot, ingress) || via == OUT,
                    "handed as from {from}/{via}"
                );
                let again = wire::parse(&buf[..len]).expect("a handed frame parses");
                assert_eq!(again.l3(), ETH_HLEN, "a handed frame is untagged");
            }
            Decision::Act(action) => {
                if let Action::Punt { l3, len, .. } = action {
                    assert!(l3 + len <= FRAME);
                }
                if let Some((oif, out_len)) = path::account(action, slot, &mut tally) {
                    assert!(oif == IN || oif == OUT, "out of {oif}");
                    assert!(out_len <= FRAME);
                    let ip = wire::parse(&buf[..out_len]).expect("what leaves parses");
                    if matches!(action, Action::Forward { .. })
                        && checksum_in == Some(true)
                        && let Ok(l4) = wire::parse_l4(&buf[..out_len], &ip)
                        && matches!(l4.kind, Kind::Tcp { .. } | Kind::Udp)
                    {
                        assert_eq!(
                            l4_checksum_ok(&buf[..out_len], &ip),
                            Some(true),
                            "a forwarded datagram's checksum broke"
                        );
                    }
                }
            }
        }
    }
});

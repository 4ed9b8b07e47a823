//! The steering program alone, run by the kernel on hand-built frames with
//! `BPF_PROG_RUN`: every verdict, including the defensive ones that a running
//! daemon never produces, returns its action and moves exactly its counter.

use etherparse::PacketBuilder;
use libtest_mimic::Failed;
use tandem_common::{FLOW_TICK_SHIFT, FlowEntry6, FlowV4Key, FlowV6Key, XdpCounter};
use tandem_dataplane::{
    offload::{self, DirKey, Egress, FlowTable as _, Nat},
    sys::monotonic_ns,
    wire::{self, Rewrite},
    xdp::{flow::FlowMap, loader::Loader},
};

use crate::{Test, check, frame, netns::Topo};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn totals(l: &Loader) -> Vec<u64> {
    l.counters_per_cpu()
        .expect("read counters")
        .into_iter()
        .map(|(_, per_cpu)| per_cpu.iter().sum())
        .collect()
}

/// One frame, the conditions it meets and the verdict it must get.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    /// (ifindex, queue); `None`: the loopback device, not ours.
    ingress: Option<(u32, u32)>,
    forward: bool,
    counter: XdpCounter,
}

impl Case {
    fn action(&self) -> u32 {
        if self.counter.name().starts_with("pass_") {
            XDP_PASS
        } else {
            XDP_DROP
        }
    }
}

fn every_xdp_verdict_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let in0 = topo.node.ifindex("in0");
    let mac = topo.node.mac("in0");
    let peer = topo.client.mac("c0");
    topo.node.enter(move || -> Result<(), Failed> {
        let mut l = Loader::load(64)?;
        l.add_iface(in0, 0, 1)?;
        l.sync_local_addresses(&["198.18.1.1".parse()?].into_iter().collect())?;
        let on_in0 = Some((in0, 0));
        let case = |what, frame, forward, counter| Case {
            what,
            frame,
            ingress: on_in0,
            forward,
            counter,
        };
        let service = frame::udp4(mac, peer, [198, 18, 2, 10]);
        let mut arp = frame::eth([0xff; 6], peer, 0x0806);
        arp.extend_from_slice(&[0; 28]);
        let mut nd = frame::eth([0x33, 0x33, 0xff, 0, 0, 1], peer, 0x86dd);
        nd.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 58, 255]);
        nd.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        nd.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1]);
        nd.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        nd.extend_from_slice(&[0; 16]);
        let mut cases = vec![
            case(
                "service, not master",
                service.clone(),
                false,
                XdpCounter::DropNotMaster,
            ),
            // Redirecting to an empty XSK map slot fails: no socket.
            case(
                "service, no XSK bound",
                service.clone(),
                true,
                XdpCounter::DropNoSocket,
            ),
            Case {
                ingress: None,
                ..case(
                    "foreign interface",
                    service,
                    true,
                    XdpCounter::PassUnknownIface,
                )
            },
            case("ARP", arp, true, XdpCounter::PassNonIp),
            case("IPv6 ND", nd, true, XdpCounter::PassControl),
            case(
                "to the node",
                frame::udp4(mac, peer, [198, 18, 1, 1]),
                true,
                XdpCounter::PassLocal,
            ),
            case(
                "multicast",
                frame::udp4(mac, peer, [224, 0, 0, 5]),
                true,
                XdpCounter::PassControl,
            ),
        ];
        for (counter, f) in frame::malformed(mac, peer) {
            cases.push(if counter == "xdp.drop_parse_error" {
                case("unreadable header", f, true, XdpCounter::DropParseError)
            } else {
                // Length fields and checksums are the worker's to check.
                case(
                    "lying length or checksum",
                    f,
                    true,
                    XdpCounter::DropNoSocket,
                )
            });
        }
        for c in cases {
            l.set_forward(c.forward)?;
            let before = totals(&l);
            let got = l.run_once(&c.frame, c.ingress)?;
            let after = totals(&l);
            let (what, want) = (c.what, c.action());
            check(got == want, format!("{what}: action {got}, want {want}"))?;
            for k in XdpCounter::ALL {
                let moved = after[k as usize] - before[k as usize];
                let want = u64::from(k == c.counter || k == XdpCounter::RxFrames);
                check(
                    moved == want,
                    format!("{what}: {} moved by {moved}, want {want}", k.name()),
                )?;
            }
        }
        Ok(())
    })
}

const XDP_REDIRECT: u32 = 4;

/// The worker's rewrite of the same packet: TTL, MACs, then NAT.
fn worker_path(frame: &mut [u8], out: Egress, nat: Nat) {
    wire::decrement_ttl_v4(frame, 14);
    frame[..6].copy_from_slice(&out.dst_mac);
    frame[6..12].copy_from_slice(&out.src_mac);
    let ip = wire::parse(frame).expect("parse");
    let l4 = wire::parse_l4(frame, &ip).expect("l4");
    match nat {
        Nat::None => {}
        Nat::Source(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Source, a, p),
        Nat::Destination(a, p) => wire::rewrite_v4(frame, 14, &l4, Rewrite::Destination, a, p),
    }
}

fn build(tcp_flags: Option<u8>, ttl: u8, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        [198, 18, 1, 10],
        [198, 18, 2, 10],
        ttl,
    );
    let body = vec![0x5a; payload];
    let mut out = Vec::new();
    match tcp_flags {
        Some(flags) => {
            let mut t = b.tcp(40000, 7, 1, 1000);
            if flags & 0x10 != 0 {
                t = t.ack(5);
            }
            if flags & 0x02 != 0 {
                t = t.syn();
            }
            if flags & 0x01 != 0 {
                t = t.fin();
            }
            t.write(&mut out, &body).expect("tcp");
        }
        None => b.udp(40000, 7).write(&mut out, &body).expect("udp"),
    }
    out
}

/// An ICMP echo request (or reply) with identifier 40000.
fn echo(request: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        [198, 18, 1, 10],
        [198, 18, 2, 10],
        64,
    );
    let mut out = Vec::new();
    let b = if request {
        b.icmpv4_echo_request(40000, 1)
    } else {
        b.icmpv4_echo_reply(40000, 1)
    };
    b.write(&mut out, &[0x5a; 56]).expect("icmp");
    out
}

/// A loaded program forwarding between `in0` (slot 0) and `out0` (slot
/// 1), a flow map handle, and an egress out of `out0`.
/// Runs `frame` (arriving on `in0`) through the program and checks that
/// it was redirected, rewritten as the worker rewrites it for `out` and
/// `nat`, and counted once as fast-forwarded. Returns the counter totals
/// from before and after the run.
fn redirected_like_the_worker(
    l: &Loader,
    frame: &[u8],
    in0: u32,
    out: Egress,
    nat: Nat,
    what: &str,
) -> Result<(Vec<u64>, Vec<u64>), Failed> {
    let before = totals(l);
    let (action, got) = l.run_frame(frame, (in0, 0))?;
    let after = totals(l);
    let mut want = frame.to_vec();
    worker_path(&mut want, out, nat);
    check(action == XDP_REDIRECT, format!("{what}: action {action}"))?;
    check(
        got == want,
        format!("{what}: fast path differs from the worker"),
    )?;
    let fwd = XdpCounter::FastForwarded as usize;
    check(
        after[fwd] - before[fwd] == 1,
        format!("{what}: fast_forwarded"),
    )?;
    Ok((before, after))
}

fn forwarding(in0: u32, out0: u32) -> Result<(Loader, FlowMap, Egress), Failed> {
    let mut l = Loader::load(64)?;
    l.add_iface(in0, 0, 1)?;
    l.add_iface(out0, 1, 1)?;
    l.set_forward(true)?;
    let flows = l.flow_map()?;
    let out = Egress {
        slot: 1,
        dst_mac: [2, 0, 0, 0, 0, 0xb],
        src_mac: [2, 0, 0, 0, 0, 0xa],
        mtu: 1500,
    };
    Ok((l, flows, out))
}

/// The fast path under BPF_PROG_RUN: a flow table hit is rewritten byte
/// for byte as the worker rewrites the same packet (MACs, TTL, NAT and
/// both checksums) and redirected, counted in the entry and in
/// `fast_forwarded`, for TCP, UDP and ICMP echo alike; a TCP SYN or FIN,
/// a TTL of 1 and a datagram over the egress MTU are left untouched for
/// the worker, each under its counter, and so is an ICMP message that is
/// no echo.
fn offloaded_flow_rewrites_like_the_worker_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let (in0, out0) = (topo.node.ifindex("in0"), topo.node.ifindex("out0"));
    topo.node.enter(move || -> Result<(), Failed> {
        let (l, mut flows, out) = forwarding(in0, out0)?;
        let key = |proto| FlowV4Key {
            src: [198, 18, 1, 10],
            dst: [198, 18, 2, 10],
            sport: 40000u16.to_be_bytes(),
            dport: 7u16.to_be_bytes(),
            proto,
            pad: [0; 3],
        };
        let cases = [
            (None, Nat::Source([198, 18, 2, 100], 20001)),
            (Some(0x10), Nat::Source([198, 18, 2, 100], 20001)),
            (None, Nat::Destination([198, 18, 2, 99], 9)),
            (Some(0x18), Nat::None),
        ];
        for (tcp, nat) in cases {
            let k = key(if tcp.is_some() { 6 } else { 17 });
            flows
                .insert(&k, &offload::entry(&k, out, nat))
                .map_err(|e| format!("insert: {e:?}"))?;
            let frame = build(tcp, 64, 100);
            let what = format!("{tcp:?} {nat:?}");
            let (before, after) = redirected_like_the_worker(&l, &frame, in0, out, nat, &what)?;
            let bytes = XdpCounter::FastForwardedBytes as usize;
            check(
                after[bytes] - before[bytes] == (frame.len() - 14) as u64,
                format!("{what}: fast_forwarded_bytes"),
            )?;
            let f = flows.read(&k).ok_or("entry gone")?;
            check(
                f.packets == 1 && f.bytes == (frame.len() - 14) as u64 && f.last_seen_ns > 0,
                format!("{what}: entry counted {f:?}"),
            )?;
            flows.remove(&k);
        }

        // The stamp is the workers' clock (TND_CLOCK), not the kernel's:
        // set 5 s back, a packet now reads as seen 5 s ago.
        let k = key(17);
        let nat = Nat::None;
        flows
            .insert(&k, &offload::entry(&k, out, nat))
            .map_err(|e| format!("insert: {e:?}"))?;
        let clock = l.clock()?;
        let back = monotonic_ns() - 5_000_000_000;
        clock.set((back >> FLOW_TICK_SHIFT) as u32);
        let frame = build(None, 64, 100);
        redirected_like_the_worker(&l, &frame, in0, out, nat, "clock")?;
        let f = flows.read(&k).ok_or("entry gone")?;
        let ago = monotonic_ns().saturating_sub(f.last_seen_ns);
        check(
            (4_900_000_000..5_500_000_000).contains(&ago),
            format!("stamped {ago} ns ago, want the clock's 5 s"),
        )?;
        // A worker's loop moves it to now again.
        flows.advance_clock();
        redirected_like_the_worker(&l, &frame, in0, out, nat, "clock now")?;
        let f = flows.read(&k).ok_or("entry gone")?;
        let ago = monotonic_ns().saturating_sub(f.last_seen_ns);
        check(ago < 100_000_000, format!("stamped {ago} ns ago, want now"))?;
        flows.remove(&k);

        // ICMP echo: the identifier is both ports of the key and the word
        // NAT rewrites (no pseudo-header in ICMP's checksum). Anything but
        // an echo request or reply stays with the worker.
        let echo_key = FlowV4Key {
            sport: 40000u16.to_be_bytes(),
            dport: 40000u16.to_be_bytes(),
            ..key(1)
        };
        for (request, nat) in [
            (true, Nat::Source([198, 18, 2, 100], 20001)),
            (false, Nat::Destination([198, 18, 2, 99], 9)),
        ] {
            flows
                .insert(&echo_key, &offload::entry(&echo_key, out, nat))
                .map_err(|e| format!("insert: {e:?}"))?;
            let frame = echo(request);
            let what = format!("echo request {request} {nat:?}");
            redirected_like_the_worker(&l, &frame, in0, out, nat, &what)?;
            // Code 1 is no echo: the worker's, untouched.
            let mut odd = frame.clone();
            odd[35] = 1;
            let (action, got) = l.run_frame(&odd, (in0, 0))?;
            check(
                action == XDP_DROP && got == odd,
                format!("{what}, code 1: action {action}"),
            )?;
            check(
                flows.remove(&echo_key).is_some_and(|f| f.packets == 1),
                format!("{what}: counted once"),
            )?;
        }

        // One rule for a datagram's header, the worker's: a frame whose
        // IPv4 checksum does not verify, or that does not hold its total
        // length, is the worker's to drop and count (the program leaves it
        // untouched); link padding after the datagram is not forwarded.
        let k = key(17);
        flows
            .insert(&k, &offload::entry(&k, out, Nat::None))
            .map_err(|e| format!("insert: {e:?}"))?;
        let frame = build(None, 64, 10);
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 12]);
        let (action, got) = l.run_frame(&padded, (in0, 0))?;
        let mut want = frame.clone();
        worker_path(&mut want, out, Nat::None);
        check(
            action == XDP_REDIRECT && got == want,
            format!("padded: action {action}, {} bytes out", got.len()),
        )?;
        let mut bad_sum = frame.clone();
        bad_sum[24] ^= 0x40;
        let mut too_long = frame.clone();
        let claimed = u16::from_be_bytes([too_long[16], too_long[17]]) + 4;
        too_long[16..18].copy_from_slice(&claimed.to_be_bytes());
        too_long[24..26].copy_from_slice(&[0, 0]);
        let sum = wire::checksum(&too_long[14..34], 0);
        too_long[24..26].copy_from_slice(&sum.to_be_bytes());
        for (what, f, worker) in [
            ("bad checksum", &bad_sum, wire::ParseError::BadChecksum),
            (
                "longer than the frame",
                &too_long,
                wire::ParseError::Truncated,
            ),
        ] {
            check(
                wire::parse(f) == Err(worker),
                format!("{what}: the worker's parse"),
            )?;
            let before = totals(&l);
            let (action, got) = l.run_frame(f, (in0, 0))?;
            let after = totals(&l);
            check(
                action == XDP_DROP && got == *f,
                format!("{what}: action {action}"),
            )?;
            for c in [XdpCounter::FastPuntHeader, XdpCounter::DropNoSocket] {
                check(
                    after[c as usize] - before[c as usize] == 1,
                    format!("{what}: {} did not move", c.name()),
                )?;
            }
        }
        check(
            flows.remove(&k).is_some_and(|f| f.packets == 1),
            "only the padded frame was forwarded",
        )?;

        // Left to the worker, untouched: no XSK is bound here, so they end
        // as drop_no_socket after their punt counter.
        let k = key(6);
        flows
            .insert(
                &k,
                &offload::entry(&k, Egress { mtu: 200, ..out }, Nat::None),
            )
            .map_err(|e| format!("insert: {e:?}"))?;
        for (what, frame, counter) in [
            ("SYN", build(Some(0x02), 64, 10), XdpCounter::FastPuntFlags),
            ("FIN", build(Some(0x11), 64, 10), XdpCounter::FastPuntFlags),
            ("TTL 1", build(Some(0x10), 1, 10), XdpCounter::FastPuntTtl),
            (
                "over the MTU",
                build(Some(0x10), 64, 400),
                XdpCounter::FastPuntTooBig,
            ),
        ] {
            let before = totals(&l);
            let (action, got) = l.run_frame(&frame, (in0, 0))?;
            let after = totals(&l);
            check(
                action == XDP_DROP && got == frame,
                format!("{what}: action {action}"),
            )?;
            for c in [counter, XdpCounter::DropNoSocket] {
                check(
                    after[c as usize] - before[c as usize] == 1,
                    format!("{what}: {} did not move", c.name()),
                )?;
            }
        }
        check(
            flows.read(&k).is_some_and(|f| f.packets == 0),
            "punts are not counted as forwarded",
        )?;
        // A redirect to a slot with no device is not attempted.
        let mut bad = k;
        bad.sport = 40001u16.to_be_bytes();
        flows
            .insert(
                &bad,
                &offload::entry(&bad, Egress { slot: 5, ..out }, Nat::None),
            )
            .map_err(|e| format!("insert: {e:?}"))?;
        let mut frame = build(Some(0x10), 64, 10);
        // Source port 40001, TCP checksum left stale: the program never
        // reads it.
        frame[34..36].copy_from_slice(&40001u16.to_be_bytes());
        let before = totals(&l);
        let (_, got) = l.run_frame(&frame, (in0, 0))?;
        let after = totals(&l);
        let c = XdpCounter::FastRedirectFailed as usize;
        check(
            after[c] - before[c] == 1 && got == frame,
            "no device at the slot",
        )?;
        // What a node leaving MASTER does: every entry goes.
        check(
            flows.clear() == 2 && flows.read(&k).is_none() && flows.read(&bad).is_none(),
            "clear removes both entries left",
        )?;
        Ok(())
    })
}

/// An ARP frame: `op` from (`sha`, `spa`) about `tpa`, broadcast.
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = frame::eth([0xff; 6], sha, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

/// The program answers ARP requests for a pool address on the pool's
/// interface while the node forwards, byte for byte as a reply should be;
/// everything else ARP goes to the kernel untouched.
fn pool_arp_answered_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let (in0, out0) = (topo.node.ifindex("in0"), topo.node.ifindex("out0"));
    let mac = topo.node.mac("out0");
    let asker = topo.server.mac("s0");
    topo.node.enter(move || -> Result<(), Failed> {
        let mut l = Loader::load(64)?;
        l.add_iface(in0, 0, 1)?;
        l.add_iface(out0, 1, 1)?;
        let pool = [198, 18, 2, 100];
        l.answer_arp(pool.into(), out0, mac)?;
        let server = [198, 18, 2, 10];
        let request = arp(1, asker, server, pool);
        let reply_to = |sender: [u8; 4]| {
            let mut r = frame::eth(asker, mac, 0x0806);
            r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&pool);
            r.extend_from_slice(&asker);
            r.extend_from_slice(&sender);
            r
        };
        let mut unicast = request.clone();
        unicast[..6].copy_from_slice(&mac);
        l.set_forward(true)?;
        for (what, f, want) in [
            ("broadcast request", &request, reply_to(server)),
            ("request to the interface", &unicast, reply_to(server)),
            // RFC 5227: the owner answers a probe for its address.
            (
                "address probe",
                &arp(1, asker, [0; 4], pool),
                reply_to([0; 4]),
            ),
        ] {
            let before = totals(&l);
            let (action, out) = l.run_frame(f, (out0, 0))?;
            let after = totals(&l);
            check(
                action == XDP_REDIRECT,
                format!("{what}: action {action}, want XDP_REDIRECT"),
            )?;
            check(
                out == want,
                format!("{what}: reply {out:02x?}, want {want:02x?}"),
            )?;
            let moved =
                after[XdpCounter::ArpReplied as usize] - before[XdpCounter::ArpReplied as usize];
            check(moved == 1, format!("{what}: arp_replied moved by {moved}"))?;
        }

        let mut cases = vec![
            ("not master", request.clone(), out0, false),
            ("on the inside interface", request.clone(), in0, true),
            (
                "another address",
                arp(1, asker, server, [198, 18, 2, 101]),
                out0,
                true,
            ),
            ("a reply", arp(2, asker, server, pool), out0, true),
            ("gratuitous", arp(1, asker, pool, pool), out0, true),
        ];
        let mut elsewhere = request.clone();
        elsewhere[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        cases.push(("addressed to another host", elsewhere, out0, true));
        // 802.1Q, VLAN 5: the kernel never answered there either.
        let mut tagged = request[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0, 0, 5]);
        tagged.extend_from_slice(&request[12..]);
        cases.push(("VLAN-tagged", tagged, out0, true));
        let mut short = request.clone();
        short.truncate(40);
        cases.push(("truncated", short, out0, true));
        for (what, f, ifindex, forward) in cases {
            l.set_forward(forward)?;
            let before = totals(&l);
            let (action, out) = l.run_frame(&f, (ifindex, 0))?;
            let after = totals(&l);
            check(
                action == XDP_PASS,
                format!("{what}: action {action}, want XDP_PASS"),
            )?;
            check(out == f, format!("{what}: the frame was changed"))?;
            let moved =
                after[XdpCounter::PassNonIp as usize] - before[XdpCounter::PassNonIp as usize];
            check(moved == 1, format!("{what}: pass_non_ip moved by {moved}"))?;
        }
        Ok(())
    })
}

/// A datagram or TCP SYN from `src` to `dst` (ports `sport`, `dport`).
fn to_node(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tcp: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(src, dst, 64);
    let mut out = Vec::new();
    if tcp {
        b.tcp(sport, dport, 1, 1000)
            .syn()
            .write(&mut out, &[])
            .expect("tcp");
    } else {
        b.udp(sport, dport).write(&mut out, &[0; 128]).expect("udp");
    }
    out
}

/// The pair's control sockets take traffic only from the peer's address
/// on the configured interface; the rest is dropped before the kernel.
fn control_sockets_admit_only_the_peer_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let in0 = topo.node.ifindex("in0");
    topo.node.enter(move || -> Result<(), Failed> {
        let mut l = Loader::load(64)?;
        l.add_iface(in0, 0, 1)?;
        let me = [198, 18, 1, 2];
        let peer = [198, 18, 1, 3];
        let sync = [198, 18, 9, 1];
        l.sync_local_addresses(&[me.into(), sync.into()].into_iter().collect())?;
        l.admit_control((me, 7469).into(), 17, peer.into(), in0)?;
        // The sync address lives on another interface (sync0).
        l.admit_control((sync, 7468).into(), 6, [198, 18, 9, 2].into(), in0 + 100)?;
        l.admit_control((sync, 7469).into(), 17, [198, 18, 9, 2].into(), in0 + 100)?;
        let stranger = [198, 18, 1, 10];
        for (what, f, want, counter) in [
            (
                "a heartbeat from the peer",
                to_node(peer, me, 7469, 7469, false),
                XDP_PASS,
                XdpCounter::PassLocal,
            ),
            (
                "a heartbeat from a host",
                to_node(stranger, me, 7469, 7469, false),
                XDP_DROP,
                XdpCounter::DropControl,
            ),
            (
                "another port from a host",
                to_node(stranger, me, 5000, 7470, false),
                XDP_PASS,
                XdpCounter::PassLocal,
            ),
            (
                "TCP to the heartbeat port",
                to_node(peer, me, 5000, 7469, true),
                XDP_PASS,
                XdpCounter::PassLocal,
            ),
            (
                "a SYN to the sync port through in0",
                to_node(stranger, sync, 5000, 7468, true),
                XDP_DROP,
                XdpCounter::DropControl,
            ),
            (
                "the peer's sync address, spoofed, through in0",
                to_node([198, 18, 9, 2], sync, 5000, 7468, true),
                XDP_DROP,
                XdpCounter::DropControl,
            ),
            (
                "a heartbeat to the sync address through in0",
                to_node(stranger, sync, 7469, 7469, false),
                XDP_DROP,
                XdpCounter::DropControl,
            ),
        ] {
            let before = totals(&l);
            let got = l.run_once(&f, Some((in0, 0)))?;
            let after = totals(&l);
            check(got == want, format!("{what}: action {got}, want {want}"))?;
            for k in XdpCounter::ALL {
                let by = after[k as usize] - before[k as usize];
                let want = u64::from(k == counter || k == XdpCounter::RxFrames);
                check(
                    by == want,
                    format!("{what}: {} moved by {by}, want {want}", k.name()),
                )?;
            }
        }
        Ok(())
    })
}

/// (what, frame, forward, lease, action, counters that move)
type FenceCase<'a> = (&'a str, &'a [u8], bool, u64, u32, &'a [XdpCounter]);

/// A VIP's ARP requests and neighbour solicitations reach the kernel
/// only while the node forwards under a valid lease; a lease that ran out
/// makes the node a standby for every frame, and both count.
fn vips_are_fenced_and_the_lease_runs_out_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let in0 = topo.node.ifindex("in0");
    let mac = topo.node.mac("in0");
    let asker = topo.client.mac("c0");
    topo.node.enter(move || -> Result<(), Failed> {
        let mut l = Loader::load(64)?;
        l.add_iface(in0, 0, 1)?;
        let vip = [198, 18, 1, 1];
        l.fence_vip(std::net::IpAddr::from(vip))?;
        let vip6: std::net::Ipv6Addr = "2001:db8:1::1".parse()?;
        l.fence_vip(vip6.into())?;
        let request = arp(1, asker, [198, 18, 1, 10], vip);
        let other = arp(1, asker, [198, 18, 1, 10], [198, 18, 1, 2]);
        let mut ns = frame::eth([0x33, 0x33, 0xff, 0, 0, 1], asker, 0x86dd);
        ns.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 58, 255]);
        ns.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ns.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1]);
        ns.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        ns.extend_from_slice(&vip6.octets());
        let service = frame::udp4(mac, asker, [198, 18, 2, 10]);
        let far = monotonic_ns() + 10_000_000_000;
        // (what, frame, forward, lease, action, counters that move)
        let cases: [FenceCase; 9] = [
            (
                "VIP, standby",
                &request,
                false,
                0,
                XDP_DROP,
                &[XdpCounter::ArpFenced],
            ),
            (
                "VIP NS, standby",
                &ns,
                false,
                0,
                XDP_DROP,
                &[XdpCounter::ArpFenced],
            ),
            (
                "VIP, master",
                &request,
                true,
                far,
                XDP_PASS,
                &[XdpCounter::PassNonIp],
            ),
            (
                "VIP NS, master",
                &ns,
                true,
                far,
                XDP_PASS,
                &[XdpCounter::PassControl],
            ),
            (
                "VIP, lease run out",
                &request,
                true,
                1,
                XDP_DROP,
                &[XdpCounter::ArpFenced, XdpCounter::LeaseExpired],
            ),
            (
                "VIP NS, lease run out",
                &ns,
                true,
                1,
                XDP_DROP,
                &[XdpCounter::ArpFenced, XdpCounter::LeaseExpired],
            ),
            (
                "another address, lease run out",
                &other,
                true,
                1,
                XDP_PASS,
                &[XdpCounter::PassNonIp, XdpCounter::LeaseExpired],
            ),
            (
                "service, lease run out",
                &service,
                true,
                1,
                XDP_DROP,
                &[XdpCounter::DropNotMaster, XdpCounter::LeaseExpired],
            ),
            (
                "service, fixed roles (no lease)",
                &service,
                true,
                0,
                XDP_DROP,
                &[XdpCounter::DropNoSocket],
            ),
        ];
        for (what, f, forward, lease, want, moved) in cases {
            l.set_role(forward, lease)?;
            let before = totals(&l);
            let got = l.run_once(f, Some((in0, 0)))?;
            let after = totals(&l);
            check(got == want, format!("{what}: action {got}, want {want}"))?;
            for k in XdpCounter::ALL {
                let by = after[k as usize] - before[k as usize];
                let want = u64::from(moved.contains(&k) || k == XdpCounter::RxFrames);
                check(
                    by == want,
                    format!("{what}: {} moved by {by}, want {want}", k.name()),
                )?;
            }
        }
        Ok(())
    })
}

/// The IPv6 fast path under BPF_PROG_RUN: TCP, UDP and ICMPv6 echo hits
/// leave with the entry's MACs and the hop limit one lower, nothing else
/// changed (no translation, no checksum covers either), counted in the
/// entry; a SYN and a hop limit of 1 stay with the worker, untouched.
fn offloaded_ipv6_flow_under_prog_run() -> Result<(), Failed> {
    let topo = Topo::new();
    let (in0, out0) = (topo.node.ifindex("in0"), topo.node.ifindex("out0"));
    topo.node.enter(move || -> Result<(), Failed> {
        let (l, mut flows, out) = forwarding(in0, out0)?;
        let (src, dst): ([u8; 16], [u8; 16]) = (
            "2001:db8:1::10".parse::<std::net::Ipv6Addr>()?.octets(),
            "2001:db8:2::10".parse::<std::net::Ipv6Addr>()?.octets(),
        );
        let frame = |proto: u8, flags: u8, hop: u8| {
            let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv6(src, dst, hop);
            let mut f = Vec::new();
            match proto {
                6 => {
                    let mut t = b.tcp(40000, 7, 1, 1000).ack(5);
                    if flags & 0x02 != 0 {
                        t = t.syn();
                    }
                    t.write(&mut f, &[0x5a; 20]).expect("tcp");
                }
                17 => b.udp(40000, 7).write(&mut f, &[0x5a; 20]).expect("udp"),
                _ => b
                    .icmpv6_echo_request(40000, 1)
                    .write(&mut f, &[0x5a; 20])
                    .expect("icmpv6"),
            }
            f
        };
        for proto in [6u8, 17, 58] {
            let (sport, dport) = if proto == 58 {
                (40000, 40000)
            } else {
                (40000, 7)
            };
            let key = DirKey::V6(FlowV6Key {
                src,
                dst,
                sport: u16::to_be_bytes(sport),
                dport: u16::to_be_bytes(dport),
                proto,
                pad: [0; 3],
            });
            flows
                .install(&key, out, Nat::None)
                .map_err(|e| format!("install: {e:?}"))?;
            let f = frame(proto, 0x10, 64);
            let (action, got) = l.run_frame(&f, (in0, 0))?;
            let mut want = f.clone();
            want[..6].copy_from_slice(&out.dst_mac);
            want[6..12].copy_from_slice(&out.src_mac);
            want[14 + 7] = 63;
            check(
                action == XDP_REDIRECT,
                format!("protocol {proto}: action {action}"),
            )?;
            check(
                got == want,
                format!("protocol {proto}: rewritten {got:02x?}"),
            )?;
            let n = flows.read_dir(&key).ok_or("entry gone")?;
            check(
                n.packets == 1 && n.bytes == (f.len() - 14) as u64 && n.last_seen_ns > 0,
                format!("protocol {proto}: entry counted {n:?}"),
            )?;
            // Left to the worker, untouched (no XSK here: dropped after
            // the punt counter).
            let mut punts = vec![(frame(proto, 0x10, 1), XdpCounter::FastPuntTtl)];
            if proto == 6 {
                punts.push((frame(6, 0x02, 64), XdpCounter::FastPuntFlags));
            }
            for (p, counter) in punts {
                let before = totals(&l);
                let (action, got) = l.run_frame(&p, (in0, 0))?;
                let after = totals(&l);
                check(
                    action == XDP_DROP && got == p,
                    format!("protocol {proto}, {}: action {action}", counter.name()),
                )?;
                check(
                    after[counter as usize] - before[counter as usize] == 1,
                    format!("protocol {proto}: {} moved", counter.name()),
                )?;
            }
            // Read and removed in one call (BPF_MAP_LOOKUP_AND_DELETE_ELEM);
            // a second removal finds nothing.
            let gone = flows.remove_dir(&key);
            check(
                gone.is_some_and(|n| n.packets == 1 && n.bytes == (f.len() - 14) as u64),
                format!("protocol {proto}: removed with its counts {gone:?}"),
            )?;
            check(
                flows.remove_dir(&key).is_none() && flows.read_dir(&key).is_none(),
                format!("protocol {proto}: removed twice"),
            )?;
            let (action, _) = l.run_frame(&f, (in0, 0))?;
            check(
                action == XDP_DROP,
                format!("protocol {proto}: a miss after removal"),
            )?;
        }
        // An element the kernel handed to another direction while the
        // program held it: its key copy differs, and it reads as a miss.
        let udp = FlowV6Key {
            src,
            dst,
            sport: 40000u16.to_be_bytes(),
            dport: 7u16.to_be_bytes(),
            proto: 17,
            pad: [0; 3],
        };
        let reused = FlowEntry6 {
            key: FlowV6Key {
                dport: 8u16.to_be_bytes(),
                ..udp
            },
            dst_mac: out.dst_mac,
            src_mac: out.src_mac,
            tx_slot: 1,
            mtu: 1500,
            ..FlowEntry6::default()
        };
        l.ipv6_flows()?.insert(udp, reused, 0)?;
        let f = frame(17, 0, 64);
        let before = totals(&l);
        let (action, got) = l.run_frame(&f, (in0, 0))?;
        let after = totals(&l);
        let fwd = XdpCounter::FastForwarded as usize;
        check(
            action == XDP_DROP && got == f && after[fwd] == before[fwd],
            format!("a mismatched key copy: action {action}"),
        )?;
        Ok(())
    })
}

pub const TESTS: &[(&str, Test)] = &[
    (
        "offloaded_ipv6_flow_under_prog_run",
        offloaded_ipv6_flow_under_prog_run,
    ),
    (
        "every_xdp_verdict_under_prog_run",
        every_xdp_verdict_under_prog_run,
    ),
    (
        "pool_arp_answered_under_prog_run",
        pool_arp_answered_under_prog_run,
    ),
    (
        "vips_are_fenced_and_the_lease_runs_out_under_prog_run",
        vips_are_fenced_and_the_lease_runs_out_under_prog_run,
    ),
    (
        "control_sockets_admit_only_the_peer_under_prog_run",
        control_sockets_admit_only_the_peer_under_prog_run,
    ),
    (
        "offloaded_flow_rewrites_like_the_worker_under_prog_run",
        offloaded_flow_rewrites_like_the_worker_under_prog_run,
    ),
];

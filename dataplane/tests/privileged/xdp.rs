//! The steering program alone, run by the kernel on hand-built frames with
//! `BPF_PROG_RUN`: every verdict, including the defensive ones that a running
//! daemon never produces, returns its action and moves exactly its counter.

use libtest_mimic::Failed;
use tandem_common::XdpCounter;
use tandem_dataplane::loader::Loader;

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
        let mut l = Loader::load()?;
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

pub const TESTS: &[(&str, Test)] = &[(
    "every_xdp_verdict_under_prog_run",
    every_xdp_verdict_under_prog_run,
)];

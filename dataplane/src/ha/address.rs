//! The addresses that follow mastership: the VIPs (added to the
//! interfaces at takeover) and the NAT pool addresses (answered by the XDP
//! program), with the takeover, the release and the announcements.

use std::{net::IpAddr, sync::atomic::Ordering, time::Instant};

use tandem_control::config::{Config, Side};

use super::HaThread;
use crate::{fib::netlink, sys, wire::announce};

/// An address that follows mastership.
#[derive(Clone, Debug)]
pub(super) struct Moving {
    pub(super) address: IpAddr,
    pub(super) ifindex: u32,
    pub(super) ifname: String,
    /// Added to the interface at takeover (a VIP); a NAT pool address is
    /// only announced: the XDP program answers ARP for it.
    pub(super) kernel: bool,
}

/// The VIPs, then the NAT pool addresses (on the outside interface).
pub(super) fn moving_addresses(
    cfg: &Config,
    ifnames: &[String],
    ifindexes: &[u32],
) -> Vec<(&'static str, Moving)> {
    let side = |s: Side| match s {
        Side::Inside => 0,
        Side::Outside => 1,
    };
    let mut out = Vec::new();
    if let Some(r) = &cfg.redundancy {
        for v in &r.vip {
            let i = side(v.interface);
            out.push((
                "vip",
                Moving {
                    address: v.address,
                    ifindex: ifindexes[i],
                    ifname: ifnames[i].clone(),
                    kernel: true,
                },
            ));
        }
    }
    for a in cfg.pool_addresses() {
        out.push((
            "pool",
            Moving {
                address: IpAddr::V4(a),
                ifindex: ifindexes[1],
                ifname: ifnames[1].clone(),
                kernel: false,
            },
        ));
    }
    out
}

impl HaThread {
    pub(super) fn take_over(&mut self) {
        {
            let mut l = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let until = sys::monotonic_ns() + self.lease_ns();
            if let Err(e) = l.set_role(true, until) {
                tracing::error!(error = %e, "takeover: setting the XDP role");
            }
            self.lease.granted(until, Instant::now());
        }
        self.node.set_forward(true);
        self.node.active.store(true, Ordering::Relaxed);
        for m in self.addresses.iter().filter(|m| m.kernel) {
            if let Err(e) = netlink::set_address(m.ifindex, m.address, true) {
                tracing::error!(error = %e, "takeover: adding an address");
            }
        }
        let fib = self.fib.fib();
        self.macs = self
            .addresses
            .iter()
            .filter_map(|m| {
                fib.link(m.ifindex)
                    .map(|l| (m.ifindex, l.mac, sys::ipv6_forwarding(&m.ifname)))
            })
            .collect();
        self.garp_left = self.garp_count;
        self.garp_next = Instant::now();
        self.send_garps();
        tracing::info!(
            addresses = self.addresses.len(),
            "took over: forwarding, VIPs added, addresses announced"
        );
    }

    pub(super) fn release(&mut self) {
        self.garp_left = 0;
        self.node.active.store(false, Ordering::Relaxed);
        {
            let mut l = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = l.set_forward(false) {
                tracing::error!(error = %e, "release: setting the XDP role");
            }
        }
        self.node.set_forward(false);
        if let Some(f) = self.flows.as_mut() {
            let n = f.clear();
            tracing::info!(entries = n, "release: offloaded flows cleared");
        }
        // Pool addresses too: only an earlier build put them there, and a
        // missing address is no error.
        for m in &self.addresses {
            if let Err(e) = netlink::set_address(m.ifindex, m.address, false) {
                tracing::error!(error = %e, "release: removing an address");
            }
        }
    }

    /// One round of announcements: a gratuitous ARP for each IPv4 address,
    /// an unsolicited neighbour advertisement for each IPv6 one.
    pub(super) fn send_garps(&mut self) {
        for m in &self.addresses {
            let Some((_, mac, router)) = self.macs.iter().find(|(i, ..)| *i == m.ifindex) else {
                continue;
            };
            let r = match m.address {
                IpAddr::V4(a) => self.garp.send(m.ifindex, &announce::garp_frame(*mac, a)),
                IpAddr::V6(a) => self
                    .garp
                    .send(m.ifindex, &announce::unsolicited_na(*mac, a, *router)),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, address = %m.address, "address announcement");
            }
        }
        self.garp_left -= 1;
        self.garp_next = Instant::now() + self.garp_interval;
    }
}

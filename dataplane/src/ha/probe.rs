//! Probe-based failure detection (ipmpstat's model): ICMP echo to the
//! configured targets from a test address on each probed interface.

use std::net::{IpAddr, Ipv4Addr};

use tandem_control::{
    config::{Config, Side},
    ha::{
        fsm::{Check, Event},
        probe::{self, Change, Prober},
    },
    stats,
};

use super::{HaThread, address::moving_addresses};
use crate::{fib::Fib, sys::IcmpSocket};

/// The probed interfaces: (side id, name, test address, targets). The
/// test address is the interface's first IPv4 address that does not move
/// with mastership; without one, probing is disabled there.
pub(super) fn probed(
    cfg: &Config,
    fib: &Fib,
    ifnames: &[String],
) -> Vec<(u16, String, Option<Ipv4Addr>, Vec<Ipv4Addr>)> {
    let Some(r) = &cfg.redundancy else {
        return Vec::new();
    };
    let moving: Vec<IpAddr> = moving_addresses(cfg, ifnames, &[0; 2])
        .into_iter()
        .map(|(_, m)| m.address)
        .collect();
    r.probe
        .iter()
        .map(|p| {
            let side = u16::from(p.interface == Side::Outside);
            let name = ifnames[usize::from(side)].clone();
            let test = fib
                .links()
                .find(|(_, l)| l.name == name)
                .and_then(|(_, l)| {
                    l.v4.iter()
                        .copied()
                        .find(|a| !moving.contains(&IpAddr::V4(*a)))
                });
            (side, name, test, p.targets.clone())
        })
        .collect()
}

/// Probing of one interface.
pub(super) struct Probed {
    pub(super) side: u16,
    pub(super) name: String,
    pub(super) socket: Option<IcmpSocket>,
    pub(super) prober: Prober,
}

impl HaThread {
    /// Takes the probes' replies, then sends those due; a lost or
    /// answered probe is logged, a failure or repair goes to the FSM.
    pub(super) fn probe(&mut self) {
        let mut buf = [0u8; 256];
        let mut changes = Vec::new();
        let mut done = Vec::new();
        for p in &mut self.probes {
            let Some(sock) = &p.socket else { continue };
            while let Some((n, rx_ns)) = sock.recv(&mut buf) {
                let Some((from, ident, seq)) = probe::parse_reply(&buf[..n]) else {
                    continue;
                };
                if ident != p.prober.ident {
                    continue;
                }
                if let Some((rec, ch)) = p.prober.answered(self.epoch.elapsed(), from, seq, rx_ns) {
                    done.push((p.name.clone(), rec));
                    changes.extend(ch.map(|c| (p.side, p.name.clone(), c)));
                }
            }
            let now = self.epoch.elapsed();
            if p.prober.due(now) {
                let unix = stats::unix_ns();
                let (seq, target, lost, ch) = p.prober.next(now, unix);
                done.extend(lost.map(|r| (p.name.clone(), r)));
                changes.extend(ch.map(|c| (p.side, p.name.clone(), c)));
                if let Err(e) = sock.send(target, &probe::echo_request(p.prober.ident, seq, unix)) {
                    tracing::debug!(iface = %p.name, %target, error = %e, "probe not sent");
                }
            }
        }
        if !done.is_empty() {
            let mut log = self
                .node
                .probes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, r) in done {
                log.push(&name, r);
            }
        }
        for (side, name, c) in changes {
            let check = Check::Probe;
            if c == Change::Failed {
                tracing::warn!(iface = %name, lost = probe::LOST_TO_FAIL, "probes failed");
                self.event(Event::Failure { check, id: side });
            } else {
                tracing::warn!(iface = %name, answered = probe::ANSWERED_TO_REPAIR, "probes repaired");
                self.event(Event::Recovery { check, id: side });
            }
        }
    }
}

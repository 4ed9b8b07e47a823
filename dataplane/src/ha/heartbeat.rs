//! Heartbeats: the configured paths, and one heartbeat out on each.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering,
    time::Instant,
};

use tandem_control::{config::Config, ha::heartbeat::Heartbeat};

use super::HaThread;
use crate::fib::Fib;

/// A configured heartbeat path: (name, local, peer).
pub(super) fn paths(cfg: &Config, fib: &Fib) -> Vec<(String, SocketAddr, SocketAddr)> {
    let (Some(r), Some(s)) = (&cfg.redundancy, &cfg.sync) else {
        return Vec::new();
    };
    let name = |a: IpAddr| {
        fib.links()
            .find(|(_, l)| match a {
                IpAddr::V4(x) => l.v4.contains(&x),
                IpAddr::V6(x) => l.v6.contains(&x),
            })
            .map_or_else(|| a.to_string(), |(_, l)| l.name.clone())
    };
    std::iter::once((s.local, s.peer))
        .chain(r.heartbeat.iter().map(|h| (h.local, h.peer)))
        .map(|(l, p)| {
            (
                name(l),
                SocketAddr::new(l, r.port),
                SocketAddr::new(p, r.port),
            )
        })
        .collect()
}

impl HaThread {
    pub(super) fn send_heartbeats(&mut self) {
        let now = Instant::now();
        self.seq += 1;
        let hb = Heartbeat {
            view: self.fsm.view(),
            group: self.me.group,
            incarnation: self.me.incarnation,
            seq: self.seq,
            echo_incarnation: 0,
            echo_seq: 0,
            echo_hold_us: 0,
            path: 0,
            sync: self.node.sync_state.load(Ordering::Relaxed),
            sessions: self.sessions(),
        };
        for (i, p) in self.paths.iter_mut().enumerate() {
            p.send(
                Heartbeat {
                    path: i as u8,
                    ..hb
                },
                self.me.keys.first(),
                now,
            );
        }
        self.next_send = now + self.keepalive;
    }
}

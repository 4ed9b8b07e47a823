//! What a reload may change: a new configuration against the running one.
//!
//! Design: every field of the file is named here, by destructuring
//! without `..`, so a field added to the configuration does not compile
//! until it is sorted into what applies live (firewall rules, timeouts,
//! limits, the probes' failure detection time, the log) and what only a restart changes (interfaces,
//! workers, rings, tables, pools, the pair's link and identity).

use super::{Config, Dataplane, Interfaces, Node, Redundancy, Sessions, Sync, log::Log};

/// The keys that differ between two configurations, sorted by whether
/// they may change while tandemd runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys a reload applies.
    pub live: Vec<String>,
    /// Keys only a restart changes: a reload that finds one is refused.
    pub fixed: Vec<String>,
}

impl Changes {
    fn note(&mut self, live: bool, key: impl Into<String>, differs: bool) {
        if differs {
            if live {
                self.live.push(key.into());
            } else {
                self.fixed.push(key.into());
            }
        }
    }
}

const LIVE: bool = true;
const FIXED: bool = false;

macro_rules! fields {
    ($ch:expr, $kind:expr, $prefix:literal, $old:expr, $new:expr, [$($f:ident),* $(,)?]) => {
        $( $ch.note($kind, concat!($prefix, ".", stringify!($f)), $old.$f != $new.$f); )*
    };
}

impl Config {
    /// How `new` differs from this (the running) configuration.
    pub fn changes(&self, new: &Self) -> Changes {
        let mut ch = Changes::default();
        let Self {
            interfaces,
            dataplane,
            node,
            sessions,
            service_sets,
            sync,
            redundancy,
            log,
        } = new;
        let Interfaces { inside, outside } = interfaces;
        ch.note(
            FIXED,
            "interfaces.inside",
            *inside != self.interfaces.inside,
        );
        ch.note(
            FIXED,
            "interfaces.outside",
            *outside != self.interfaces.outside,
        );
        let Dataplane {
            workers: _,
            cores: _,
            xdp_mode: _,
            bind: _,
            frame_size: _,
            frames_per_worker: _,
            rx_ring: _,
            tx_ring: _,
            fill_ring: _,
            comp_ring: _,
            batch: _,
            icmp_errors_per_sec: _,
            punts_per_sec: _,
        } = dataplane;
        let d = &self.dataplane;
        fields!(
            ch,
            FIXED,
            "dataplane",
            d,
            dataplane,
            [
                workers,
                cores,
                xdp_mode,
                bind,
                frame_size,
                frames_per_worker,
                rx_ring,
                tx_ring,
                fill_ring,
                comp_ring,
                batch,
            ]
        );
        fields!(
            ch,
            LIVE,
            "dataplane",
            d,
            dataplane,
            [icmp_errors_per_sec, punts_per_sec]
        );
        let Node {
            local_addresses: _,
            forward: _,
            allow_kernel_forwarding: _,
        } = node;
        fields!(
            ch,
            FIXED,
            "node",
            self.node,
            node,
            [local_addresses, forward, allow_kernel_forwarding,]
        );
        let Sessions {
            per_worker: _,
            rejects_per_sec: _,
            timeouts,
        } = sessions;
        fields!(ch, FIXED, "sessions", self.sessions, sessions, [per_worker]);
        fields!(
            ch,
            LIVE,
            "sessions",
            self.sessions,
            sessions,
            [rejects_per_sec]
        );
        for (name, v) in timeouts.all() {
            let old = self.sessions.timeouts.all();
            let was = old.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            ch.note(LIVE, format!("sessions.timeouts.{name}"), was != Some(v));
        }
        if service_sets.len() == self.service_sets.len() {
            for (i, (old, new)) in self.service_sets.iter().zip(service_sets).enumerate() {
                let super::ServiceSet {
                    name,
                    inside_prefixes,
                    firewall,
                    nat,
                    offload,
                } = new;
                let at = |k: &str| format!("service_set[{i}].{k}");
                ch.note(FIXED, at("name"), *name != old.name);
                ch.note(
                    FIXED,
                    at("inside_prefixes"),
                    *inside_prefixes != old.inside_prefixes,
                );
                ch.note(FIXED, at("nat"), *nat != old.nat);
                ch.note(FIXED, at("offload"), *offload != old.offload);
                ch.note(LIVE, at("firewall"), *firewall != old.firewall);
            }
        } else {
            ch.note(FIXED, "service_set", true);
        }
        match (&self.sync, sync) {
            (Some(o), Some(n)) => {
                let Sync {
                    local: _,
                    peer: _,
                    port: _,
                    role: _,
                    node_id: _,
                    group: _,
                    key: _,
                    accept_keys: _,
                    insecure: _,
                    flush_bytes: _,
                    flush_ms: _,
                    keepalive_ms: _,
                    dead_after: _,
                    grace: _,
                    max_backlog_kib: _,
                } = n;
                fields!(
                    ch,
                    FIXED,
                    "sync",
                    o,
                    n,
                    [
                        local,
                        peer,
                        port,
                        role,
                        node_id,
                        group,
                        key,
                        accept_keys,
                        insecure,
                        flush_bytes,
                        flush_ms,
                        keepalive_ms,
                        dead_after,
                        grace,
                        max_backlog_kib,
                    ]
                );
            }
            (o, n) => ch.note(FIXED, "sync", o.is_some() != n.is_some()),
        }
        match (&self.redundancy, redundancy) {
            (Some(o), Some(n)) => {
                let Redundancy {
                    priority: _,
                    preempt: _,
                    hold_down_ms: _,
                    keepalive_ms: _,
                    multiplier: _,
                    port: _,
                    heartbeat: _,
                    vip: _,
                    critical: _,
                    stall_ms: _,
                    garp_count: _,
                    garp_interval_ms: _,
                    failure_detection_ms: _,
                    probe: _,
                    unsynced_warn_ms: _,
                } = n;
                // The counter segment holds a set of counters per probed
                // interface and target, laid out at start: probes and
                // their targets are fixed, their pace is not.
                fields!(
                    ch,
                    FIXED,
                    "redundancy",
                    o,
                    n,
                    [
                        priority,
                        preempt,
                        hold_down_ms,
                        keepalive_ms,
                        multiplier,
                        port,
                        heartbeat,
                        vip,
                        critical,
                        stall_ms,
                        garp_count,
                        garp_interval_ms,
                        probe,
                        unsynced_warn_ms,
                    ]
                );
                fields!(ch, LIVE, "redundancy", o, n, [failure_detection_ms]);
            }
            (o, n) => ch.note(FIXED, "redundancy", o.is_some() != n.is_some()),
        }
        let Log { level, events } = log;
        ch.note(LIVE, "log.level", *level != self.log.level);
        let super::Events {
            syslog: _,
            facility: _,
            hostname: _,
            ipfix: _,
            observation_domain: _,
            template_every_s: _,
            ring: _,
        } = events;
        let e = &self.log.events;
        fields!(
            ch,
            LIVE,
            "log.events",
            e,
            events,
            [
                syslog,
                facility,
                hostname,
                ipfix,
                observation_domain,
                template_every_s,
            ]
        );
        fields!(ch, FIXED, "log.events", e, events, [ring]);
        ch
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[interfaces]
inside = "in0"
outside = "out0"
[[service_set]]
name = "edge"
[service_set.nat]
pool = ["198.18.2.100"]
"#;

    fn with(extra: &str) -> Config {
        Config::parse(Path::new("t.toml"), &format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(with("").changes(&with("")), Changes::default());
    }

    #[test]
    fn rules_timeouts_limits_and_the_log_apply_live() {
        let new = with(
            "[[service_set.firewall.rules]]\nname = \"no-telnet\"\nprotocol = \"tcp\"\n\
             destination_ports = 23\naction = \"reject\"\n\
             [sessions]\nrejects_per_sec = 5\n[sessions.timeouts]\nudp = 30\n\
             [dataplane]\npunts_per_sec = 10\n[log]\nlevel = \"debug\"\n",
        );
        let ch = with("").changes(&new);
        assert!(ch.fixed.is_empty(), "{ch:?}");
        assert_eq!(
            ch.live,
            [
                "dataplane.punts_per_sec",
                "sessions.rejects_per_sec",
                "sessions.timeouts.udp",
                "service_set[0].firewall",
                "log.level",
            ]
        );
    }

    #[test]
    fn interfaces_workers_and_pools_are_named_and_fixed() {
        let text = format!("{BASE}[dataplane]\nworkers = 2\n")
            .replace("198.18.2.100", "198.18.2.101")
            .replace("out0", "out1");
        let new = Config::parse(Path::new("t.toml"), &text).unwrap();
        let ch = with("").changes(&new);
        assert_eq!(
            ch.fixed,
            [
                "interfaces.outside",
                "dataplane.workers",
                "service_set[0].nat"
            ]
        );
        assert!(ch.live.is_empty());
    }
}

//! The stats segment: every counter of an instance in one shared-memory file.
//!
//! Design (after VPP's stats segment): a header, a directory of named
//! metrics (Prometheus-style family name plus `k=v` labels) pointing at u64
//! value slots, one cache-line-aligned block of slots per worker written by
//! that worker alone with relaxed stores, and a seqlock'd state area for
//! multi-field state (interfaces, role). Readers map the file read-only and
//! sum what they need; they never talk to the daemon and never block it.

pub mod layout;
pub mod segment;
pub mod state;

pub use layout::Kind;
pub use segment::{
    Entry, EntryDef, Schema, SegmentReader, SegmentWriter, StatsError, segment_path,
};
pub use state::{IfaceRole, IfaceState, LinkState, NodeState, XdpAttach};

/// The kernel's AF_XDP socket statistics (struct xdp_statistics), in its
/// field order; families are `tandem_xsk_<name>_total`.
pub const XSK_STATS: [&str; 6] = [
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
];

/// Wall-clock time in unix nanoseconds: the heartbeat's clock, shared by
/// the daemon (writer) and the readers.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Heartbeat age after which readers call the daemon stale.
pub const STALE_AFTER_NS: u64 = 3_000_000_000;

/// What each metric family means, for `HELP` lines and `--help` texts.
/// Every family a daemon registers must be listed (a test checks it).
pub fn help(family: &str) -> Option<&'static str> {
    if let Some(field) = family
        .strip_prefix("tandem_sync_")
        .and_then(|f| f.strip_suffix("_total"))
        && let Some(i) = crate::sync::Stats::NAMES.iter().position(|n| *n == field)
    {
        return Some(crate::sync::Stats::DOCS[i].trim());
    }
    Some(match family {
        "tandem_worker_rx_packets_total" => "Frames a worker received from its AF_XDP sockets.",
        "tandem_worker_rx_bytes_total" => "Bytes a worker received from its AF_XDP sockets.",
        "tandem_worker_tx_packets_total" => "Frames a worker put on its AF_XDP tx rings.",
        "tandem_worker_tx_bytes_total" => "Bytes a worker put on its AF_XDP tx rings.",
        "tandem_worker_rx_batches_total" => "Worker iterations that received at least one frame.",
        "tandem_worker_tx_wakeups_total" => "sendto() calls made to kick tx rings.",
        "tandem_worker_idle_polls_total" => "poll() sleeps taken because every rx ring was empty.",
        "tandem_worker_forwarded_total" => "Packets forwarded (routed, rewritten, transmitted).",
        "tandem_worker_icmp_errors_sent_total" => {
            "ICMP errors originated (time exceeded, too big)."
        }
        "tandem_worker_icmp_errors_suppressed_total" => {
            "ICMP errors due but not sent: rate limit, no source address or no route back."
        }
        "tandem_worker_sessions_created_total" => "Sessions a worker created.",
        "tandem_worker_sessions_deleted_total" => {
            "Sessions a worker removed (idle timeout, or closed and aged)."
        }
        "tandem_worker_sessions_refused_total" => {
            "New sessions refused because the worker's table was full."
        }
        "tandem_worker_nat_alloc_failures_total" => {
            "New translated sessions refused: no mapping for them (the four reasons below, in all)."
        }
        "tandem_worker_nat_pool_exhausted_total" => {
            "New translated sessions refused: no port block left for the subscriber (on its pool address)."
        }
        "tandem_worker_nat_subscriber_ports_exceeded_total" => {
            "New translated sessions refused: the subscriber's blocks were full and it may hold no more."
        }
        "tandem_worker_nat_subscriber_sessions_exceeded_total" => {
            "New translated sessions refused: the subscriber had sessions_per_subscriber sessions."
        }
        "tandem_worker_nat_subscriber_rate_exceeded_total" => {
            "New translated sessions refused: the subscriber opened subscriber_sessions_per_sec this second."
        }
        "tandem_worker_handoffs_received_total" => {
            "Frames handed to this worker by others because it owns their flows."
        }
        "tandem_worker_rejects_sent_total" => {
            "Rejects sent: TCP resets and ICMP administratively-prohibited."
        }
        "tandem_handoffs_total" => {
            "Frames a worker handed to the owner of their flow, by sending and owning worker."
        }
        "tandem_sessions_active" => "Sessions in a worker's table.",
        "tandem_sessions_capacity" => "Sessions a worker's table holds at most.",
        "tandem_nat_ports_in_use" => {
            "NAT (address, port) pairs of a worker's pool shares bound to a session."
        }
        "tandem_nat_ports" => "NAT (address, port) pairs of a worker's pool shares.",
        "tandem_nat_blocks_in_use" => {
            "NAT port blocks of a worker's pool shares held by a subscriber."
        }
        "tandem_nat_blocks" => "NAT port blocks of a worker's pool shares.",
        "tandem_nat_subscribers" => {
            "Subscribers (inside addresses) with a NAT mapping or session on a worker."
        }
        "tandem_nat_ports_cooling" => {
            "NAT (address, port) pairs released and waiting out the reuse delay before a new mapping may take them."
        }
        "tandem_sessions_created_per_second" => "Sessions a worker created in the last second.",
        "tandem_sessions_deleted_per_second" => "Sessions a worker removed in the last second.",
        "tandem_worker_punted_total" => {
            "Packets handed to the kernel to resolve their next hop's neighbour."
        }
        "tandem_worker_punt_errors_total" => "Punts the kernel refused.",
        "tandem_worker_offloads_installed_total" => {
            "Sessions a worker handed to the XDP fast path (both directions)."
        }
        "tandem_worker_offloads_removed_total" => {
            "Offloaded sessions a worker took back: closed, expired or no longer forwarded."
        }
        "tandem_worker_offload_map_full_total" => {
            "Sessions kept on the worker path because the XDP flow map was full."
        }
        "tandem_worker_offload_failures_total" => {
            "Sessions kept on the worker path because writing the XDP flow map failed."
        }
        "tandem_worker_sessions_early_dropped_total" => {
            "Sessions that never saw an answer, ended to make room in a full table (early drop)."
        }
        "tandem_worker_events_dropped_total" => {
            "Session and NAT events dropped because the event log's ring was full."
        }
        "tandem_events_sent_total" => {
            "Session and NAT events handed to the collector's socket (syslog messages, IPFIX records)."
        }
        "tandem_events_send_errors_total" => {
            "Session and NAT events lost because the collector's socket refused them."
        }
        "tandem_events_ipfix_messages_total" => "IPFIX messages sent to the collector.",
        "tandem_worker_loops_total" => {
            "Iterations of a worker's loop; the stall detector watches it."
        }
        "tandem_worker_fill_short_total" => {
            "Times the free-frame pool could not top up a fill ring by a full batch."
        }
        "tandem_drops_total" => {
            "Packets a worker dropped, by interface (ingress; egress for tx_ring_full) and reason."
        }
        "tandem_iface_rx_packets_total" => "Frames received per interface and worker.",
        "tandem_iface_rx_bytes_total" => "Bytes received per interface and worker.",
        "tandem_iface_tx_packets_total" => "Frames transmitted per interface and worker.",
        "tandem_iface_tx_bytes_total" => "Bytes transmitted per interface and worker.",
        "tandem_xdp_verdicts_total" => {
            "XDP program decisions per CPU (fast_forwarded_bytes: the IP bytes of the fast_forwarded frames)."
        }
        "tandem_xsk_rx_dropped_total" => "AF_XDP: frames dropped for other reasons (kernel).",
        "tandem_xsk_rx_invalid_descs_total" => "AF_XDP: invalid rx descriptors (kernel).",
        "tandem_xsk_tx_invalid_descs_total" => "AF_XDP: invalid tx descriptors (kernel).",
        "tandem_xsk_rx_ring_full_total" => "AF_XDP: frames dropped because the rx ring was full.",
        "tandem_xsk_rx_fill_ring_empty_descs_total" => {
            "AF_XDP: frames dropped because the fill ring was empty."
        }
        "tandem_xsk_tx_ring_empty_descs_total" => {
            "AF_XDP: tx wakeups that found the tx ring empty."
        }
        "tandem_sync_role" => "Replication role: 0 active (sends), 1 backup (installs).",
        "tandem_sync_connection_up" => "1 while the sync link to the peer is up.",
        "tandem_sync_state" => "Synchronization: 0 off, 1 cold (cold sync under way), 2 hot.",
        "tandem_sync_add_pending" => "Session adds sent and not yet acknowledged by the peer.",
        "tandem_sync_add_per_second" => {
            "Session adds sent (active) or installed (backup) in the last second."
        }
        "tandem_sync_delete_per_second" => {
            "Session deletes sent (active) or carried out (backup) in the last second."
        }
        "tandem_sync_swept_total" => {
            "Synced sessions a backup removed after a cold sync that no longer carried them."
        }
        "tandem_sync_digest_sessions" => {
            "Sessions in this node's replicated set (its digest's count)."
        }
        "tandem_sync_digest_hash" => {
            "This node's replicated set: an order-independent 48-bit hash of its keys."
        }
        "tandem_sync_peer_digest_sessions" => {
            "Sessions in the peer's replicated set, as the peer last sent its digest."
        }
        "tandem_sync_peer_digest_hash" => {
            "The peer's replicated set's 48-bit hash, as the peer last sent its digest."
        }
        "tandem_sync_digest_match" => "1 while the peer's last digest equals this node's.",
        "tandem_sync_lag_p50_us" => {
            "Replication lag, median over the last 10-20 s: a record batched to its acknowledgement (active)."
        }
        "tandem_sync_lag_p99_us" => {
            "Replication lag, 99th percentile over the last 10-20 s (active)."
        }
        "tandem_sync_oldest_unacked_ms" => {
            "How long the oldest record not yet acknowledged by the peer has waited (active)."
        }
        "tandem_sync_stalled" => {
            "1 while a record has waited 5 s or more for the peer's acknowledgement."
        }
        "tandem_sync_config_refused" => {
            "1 after a sync connection was refused because the two configurations disagree, until Hot."
        }
        "tandem_sync_digest_differs_ms" => {
            "(Backup) how long the replicated sets have differed with the active steady, resyncs included; 0 when they agree."
        }
        "tandem_sync_diverged" => {
            "(Backup) 1 while the replicated sets have differed for 10 s or more: resync and repair have not made the standby whole."
        }
        "tandem_sync_local_info" => "This node's sync address and port, as labels; the value is 1.",
        "tandem_sync_interface_info" => {
            "The interface holding the sync address at start, as a label; the value is 1."
        }
        "tandem_sync_remote_info" => "The peer's sync address and port, as labels; the value is 1.",
        "tandem_ha_state" => {
            "Redundancy state: 0 INIT, 1 WAITING, 2 MASTER, 3 STANDBY, 4 STANDBY-WARNED."
        }
        "tandem_ha_healthy" => "1 while no critical check of this node has failed.",
        "tandem_ha_peer_alive" => {
            "1 while a heartbeat from the peer arrived within the dead interval."
        }
        "tandem_ha_peer_state" => {
            "The peer's last announced state (as tandem_ha_state); 255 unknown."
        }
        "tandem_ha_peer_healthy" => "1 when the peer's last heartbeat said its health passed.",
        "tandem_ha_peer_priority" => "The peer's priority, from its heartbeats.",
        "tandem_ha_peer_node_id" => "The peer's node id, from its heartbeats; 0 never heard.",
        "tandem_ha_peer_sync_state" => "The peer's synchronization: 0 off, 1 cold, 2 hot.",
        "tandem_ha_mastership_changes_total" => "Times this node became or stopped being MASTER.",
        "tandem_ha_sync_state" => {
            "This node's synchronization: 0 off, 1 cold, 2 hot (a standby holds every session)."
        }
        "tandem_ha_peer_sessions" => "Sessions the peer holds, from its heartbeats.",
        "tandem_ha_unsynced_ms" => {
            "How long a live standby of the pair has not been Hot, milliseconds; 0 when it is."
        }
        "tandem_ha_unsynced_warning" => {
            "1 while the standby has not been Hot for longer than unsynced_warn_ms."
        }
        "tandem_ha_takeovers_without_hot_total" => {
            "Times this node became MASTER without Hot after a peer had been MASTER (sessions lost)."
        }
        "tandem_ha_insecure" => "1 when the pair runs without a key (insecure = true).",
        "tandem_ha_lease_lapses_total" => {
            "Times this MASTER's forwarding lease ran out because its daemon did not run."
        }
        "tandem_ha_key_mismatch" => {
            "1 while heartbeats from the peer's address fail authentication: the keys differ."
        }
        "tandem_ha_heartbeats_auth_failed_total" => {
            "Datagrams from the peer's address on a path whose tag did not verify."
        }
        "tandem_ha_heartbeats_unproven_total" => {
            "Heartbeats of a new peer incarnation held until they echoed a recent one of ours."
        }
        "tandem_ha_local_info" => "This node's group, node id, priority and preemption, as labels.",
        "tandem_ha_transition_events_total" => {
            "Mastership transitions the state machine received, and those it ignored."
        }
        "tandem_ha_monitored_events_total" => {
            "Monitored events the state machine received, and those that changed no state."
        }
        "tandem_ha_check_failed" => {
            "1 while a health check (link, worker stall, probes) is failed."
        }
        "tandem_ha_probe_state" => {
            "Probe-based detection of an interface: 0 unknown, 1 ok, 2 failed, 3 disabled."
        }
        "tandem_ha_probe_fdt_ms" => "Probe-based failure detection time, milliseconds.",
        "tandem_ha_probes_sent_total" => "ICMP probes sent to a target from an interface.",
        "tandem_ha_probes_answered_total" => "Probes answered before the next one was due.",
        "tandem_ha_probes_lost_total" => "Probes unanswered when the next one was due.",
        "tandem_ha_probe_rtt_avg_us" => "Smoothed probe round trip to a target, microseconds.",
        "tandem_ha_probe_rtt_dev_us" => "Mean deviation of the probe round trip, microseconds.",
        "tandem_ha_heartbeats_sent_total" => "Heartbeats sent on a path.",
        "tandem_ha_heartbeat_send_errors_total" => "Heartbeats whose send failed on a path.",
        "tandem_ha_heartbeats_received_total" => "Heartbeats accepted from the peer on a path.",
        "tandem_ha_heartbeats_missed_total" => {
            "Heartbeats the peer sent on a path that never arrived (sequence gaps)."
        }
        "tandem_ha_heartbeats_rejected_total" => {
            "Datagrams refused on a path: malformed, wrong key or group, replayed, stranger."
        }
        "tandem_ha_heartbeats_acked_total" => "Heartbeats whose echo measured a round trip.",
        "tandem_ha_path_down_total" => "Times a path went silent for the dead interval.",
        "tandem_ha_rtt_us" => "Last heartbeat round trip on a path, microseconds.",
        "tandem_ha_srtt_us" => "Smoothed heartbeat round trip on a path, microseconds.",
        "tandem_ha_rttvar_us" => "Mean deviation of the round trip on a path, microseconds.",
        "tandem_ha_worst_delay_us" => "Longest heartbeat round trip seen on a path, microseconds.",
        "tandem_ha_path_alive" => "1 while the peer is heard on a path.",
        "tandem_ha_address_held" => "1 while this node holds a VIP or NAT pool address.",
        _ => return None,
    })
}

/// Flat `key=value` totals of a segment, summed over workers and CPUs:
/// `worker.<counter>`, `drop.<reason>`, `<iface>.<counter>`, `xdp.<verdict>`,
/// `xsk.<iface>.<queue>.<stat>`, `handoff.<from>.<to>`, `sync.<counter>`.
/// Used for the
/// daemon's exit report.
pub fn flat_totals(reader: &SegmentReader) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut add = |k: String, v: u64| {
        if let Some(e) = out.iter_mut().find(|(key, _)| *key == k) {
            e.1 = e.1.saturating_add(v);
        } else {
            out.push((k, v));
        }
    };
    for e in &reader.entries {
        let v = reader.value(e.slot);
        let Some(stem) = e
            .name
            .strip_prefix("tandem_")
            .and_then(|n| n.strip_suffix("_total"))
        else {
            continue;
        };
        let l = |k| e.label(k).unwrap_or("?");
        if let Some(c) = stem.strip_prefix("worker_") {
            add(format!("worker.{c}"), v);
        } else if stem == "drops" {
            add(format!("drop.{}", l("reason")), v);
        } else if let Some(c) = stem.strip_prefix("iface_") {
            add(format!("{}.{c}", l("iface")), v);
        } else if stem == "xdp_verdicts" {
            add(format!("xdp.{}", l("verdict")), v);
        } else if let Some(c) = stem.strip_prefix("xsk_") {
            add(format!("xsk.{}.{}.{c}", l("iface"), l("queue")), v);
        } else if stem == "handoffs" {
            add(format!("handoff.{}.{}", l("worker"), l("to")), v);
        } else if let Some(c) = stem.strip_prefix("sync_") {
            add(format!("sync.{c}"), v);
        } else if let Some(c) = stem.strip_prefix("events_") {
            match e.label("sink") {
                Some(sink) => add(format!("events.{sink}.{c}"), v),
                None => add(format!("events.{c}"), v),
            }
        } else if let Some(t) = stem
            .strip_prefix("ha_")
            .and_then(|x| x.strip_suffix("_events"))
        {
            add(format!("ha.{t}.{}.{}", l("event"), l("count")), v);
        } else if matches!(
            stem,
            "ha_mastership_changes" | "ha_takeovers_without_hot" | "ha_lease_lapses"
        ) {
            add(format!("ha.{}", &stem[3..]), v);
        } else if let Some(c) = stem.strip_prefix("ha_") {
            add(format!("ha.{}.{c}", l("path")), v);
        }
    }
    out
}

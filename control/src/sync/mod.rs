//! Session replication between the two nodes of a pair.
//!
//! Design: `wire` is the format, `auth` the frame tags, `conn` the protocol
//! of one TCP connection as a pure state machine (told its `settings`,
//! telling its driver `event`s) (bytes in, bytes and
//! events out, timers as `Instant`s handed in), in the manner of quiche: no
//! socket, no clock, no thread. The driver in tandemd owns the socket and
//! the data path's session events, and feeds them through a `Conn`. Tests
//! drive two `Conn`s through an in-memory pipe that loses, duplicates and
//! reorders bytes and cuts the link.

pub mod auth;
pub mod conn;
pub mod driver;
pub mod event;
pub mod lag;
pub mod settings;
pub mod wire;

pub use conn::Conn;
pub use event::{Event, Fatal};
pub use settings::{Role, Settings, SyncState};
pub use wire::{DeleteRecord, Digest, NackReason, Op, RefreshRecord, SessionRecord, WireKey};

macro_rules! stats {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Replication counters, named as in `show services ha statistics`
        /// where the meaning carries over (the docs of each field say what
        /// it counts here). One set per node, kept across connections.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Field names, in order: JSON keys and segment names.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name),)*];

            /// What each field counts, in the order of `NAMES` (its doc
            /// comment): `HELP` lines and `tandemstat ha --help`.
            pub const DOCS: &'static [&'static str] = &[$(concat!($($doc),*),)*];

            /// Field values, in the order of `NAMES`.
            pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
                [$(self.$name,)*].into_iter()
            }
        }
    };
}

stats! {
    /// TCP connections to the peer that were established.
    connection_establish,
    /// Connections that ended, for any reason.
    connection_teardown,
    /// Cold-sync requests this node sent as backup.
    sync_start_sent,
    /// Cold-sync requests this node received as active.
    sync_start_received,
    /// Cold syncs finished: sent in full (active) or received in full (backup).
    cold_sync_completed_count,
    /// Session adds sent (active), live and cold-sync ones.
    add_sent,
    /// Session adds received (backup).
    add_received,
    /// Adds acknowledged by the peer and not refused (active), or installed
    /// here (backup).
    add_completed,
    /// Adds this backup refused (each answered with a nack).
    add_nack_sent,
    /// Nacks for adds received from the backup.
    add_nack_received,
    /// Session deletes sent (active).
    delete_sent,
    /// Session deletes received (backup).
    delete_received,
    /// Deletes acknowledged by the peer (active) or carried out here (backup).
    delete_completed,
    /// Deletes this backup refused (malformed record).
    delete_nack_sent,
    /// Nacks for deletes received from the backup.
    delete_nack_received,
    /// Deletes for sessions this backup does not hold (not an error: the
    /// session may have aged out here first).
    delete_not_found,
    /// Refreshes of long-lived sessions sent (active): a TCP state change,
    /// or a busy session whose timer was pushed back.
    refresh_sent,
    /// Refreshes received (backup).
    refresh_received,
    /// Refreshes this backup refused: state out of range, or a session it
    /// does not hold (the active then sends the whole session again).
    refresh_nack_sent,
    /// Nacks for refreshes received from the backup.
    refresh_nack_received,
    /// Received records that could not be applied here: adds refused (table
    /// full, a NAT binding held by a session of this node), and records
    /// dropped because the worker owning them fell too far behind.
    install_failures,
    /// Received records with an unknown protocol, state, action or flags.
    illegal_flow_type,
    /// Received records naming a service set not configured here.
    illegal_service_set,
    /// Session events a worker could not queue because its sync ring was
    /// full (the sessions are marked and sent again by repair; see
    /// `repair_sent`).
    send_overflow,
    /// Session events not sent because no peer was connected (the next cold
    /// sync carries the sessions that still exist).
    send_discard,
    /// Records not batched because the connection's unsent backlog was
    /// over its limit (their sessions are marked and sent again by
    /// repair).
    batch_begin_failures,
    /// Batches begun or sent but never acknowledged before the connection
    /// ended.
    batch_commit_failures,
    /// Writes to the peer's socket that failed.
    batch_flush_failures,
    /// Records refused at encoding (a field out of range).
    encode_failures,
    /// Frames whose body did not decode (non-zero padding, an unknown role,
    /// reason or op) or made no sense (an ack of a message never sent).
    decode_failures,
    /// Frames with a bad magic or version.
    invalid_header,
    /// Frames of an unknown kind, or of a kind not expected now.
    invalid_kind,
    /// Frames longer than the protocol allows, of the wrong size for their
    /// kind, or batches whose count disagrees with their length.
    invalid_length,
    /// Frames without a valid tag while a key is configured, or with one
    /// while none is.
    auth_failures,
    /// Frames out of sequence (replayed, dropped or reordered in transit).
    replays,
    /// Connections refused: not from the configured peer, or a hello that
    /// does not match (group, node, roles, service sets).
    refused_connections,
    /// Frames sent to the peer.
    messages_sent,
    /// Frames received from the peer.
    messages_received,
    /// Bytes sent to the peer (headers and tags included).
    bytes_sent,
    /// Bytes received from the peer.
    bytes_received,
    /// (Active) records sent again by repair: sessions whose add or
    /// refresh could not be queued or batched, or that the backup refused
    /// once, and deletes that could not be queued at first.
    repair_sent,
    /// (Active) sessions the backup refused again after a repair: left to
    /// the digest check and a resync.
    repair_abandoned,
    /// (Active) sessions that ended while marked for repair, before it
    /// sent them (the peer never held their latest record; their delete
    /// went out all the same).
    repair_ended,
    /// (Backup) resyncs asked for: the digests stayed different while the
    /// active was quiet, or an operator asked (`tandemctl request resync`).
    resync_requested,
    /// (Active) resyncs the backup asked for and this node walked.
    resync_received,
    /// (Backup) digest checks that found the two sets different while the
    /// active's was steady (each second).
    digest_mismatches,
}

#[cfg(test)]
mod tests;

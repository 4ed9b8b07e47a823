//! What a sync connection tells its driver: the [`Event`]s to act on, and
//! the [`Fatal`] reason it ended.

use std::time::Duration;

use super::wire::{
    DecodeError, DeleteRecord, Digest, Hello, Kind, NackReason, Op, RefreshRecord, SessionRecord,
    WireKey,
};

/// What the driver acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's hello was accepted.
    Up(Hello),
    /// (Active) the backup asked for a cold sync: walk every session, then
    /// call `cold_sync_complete`. A walk under way when the connection
    /// goes down must stop: its completion belongs to no later connection.
    ColdSyncRequested,
    /// (Backup) records of message `seq` to install, remove or refresh.
    /// Invalid ones were already refused.
    Add {
        seq: u64,
        records: Vec<SessionRecord>,
    },
    Delete {
        seq: u64,
        records: Vec<DeleteRecord>,
    },
    Refresh {
        seq: u64,
        records: Vec<RefreshRecord>,
    },
    /// (Backup) the cold sync is complete.
    ColdSyncComplete { sessions: u64 },
    /// (Active) the backup refused a record.
    Nacked {
        op: Op,
        reason: NackReason,
        key: WireKey,
    },
    /// The peer's digest of its replicated session set (sent every second
    /// by a peer with [`super::wire::CAP_DIGEST`]).
    PeerDigest(Digest),
}

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    #[error("undecodable frame: {0}")]
    Decode(DecodeError),
    #[error("frame failed authentication")]
    Auth,
    #[error("frame out of sequence: expected {expected}, got {got}")]
    Sequence { expected: u64, got: u64 },
    #[error("unexpected {0:?} message")]
    Unexpected(Kind),
    #[error("peer refused: {0}")]
    Refused(&'static str),
    /// A field of what must agree between the nodes differs.
    #[error("the nodes disagree on {0}")]
    Contract(String),
    #[error("acknowledgement of a message never sent ({0})")]
    BogusAck(u64),
    #[error("peer silent for {0:?}")]
    PeerDead(Duration),
}

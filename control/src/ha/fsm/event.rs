//! What goes into the state machine and what comes out: its events, its
//! actions, the event kinds the views count (received and ignored), and
//! the node's identity and policy.

use std::time::Duration;

use super::{Check, PeerView, Policy, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The driver is ready: leave INIT.
    Start,
    /// Check `check` number `id` failed (link down, probe failure, stall).
    Failure {
        check: Check,
        id: u16,
    },
    Recovery {
        check: Check,
        id: u16,
    },
    /// A heartbeat from the peer.
    Peer(PeerView),
    /// No heartbeat on any path for the dead interval.
    PeerDead,
    /// `tandemctl request acquire|release [--force]`.
    Manual {
        acquire: bool,
        force: bool,
    },
    /// The time given by the last `Action::Arm` came.
    Timer,
    /// This node's sync link became Hot (`true`) or stopped being Hot.
    Sync {
        hot: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Entered MASTER: forward, add the addresses, announce them.
    TakeOver,
    /// Left MASTER: stop forwarding and remove the addresses, before
    /// anything else.
    Release,
    /// The heartbeat's content changed: send one on every path now.
    Announce,
    /// Won a dual mastership: announce the addresses again (gratuitous
    /// ARPs, unsolicited neighbour advertisements).
    Reannounce,
    /// Deliver `Event::Timer` at this time (since the driver's epoch);
    /// `None` disarms.
    Arm(Option<Duration>),
}

/// Mastership transitions, as the extensive view lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    AcquireAuto = 0,
    AcquireManual = 1,
    ReleaseAuto = 2,
    ReleaseManual = 3,
}

impl Transition {
    pub const ALL: [Self; 4] = [
        Self::AcquireAuto,
        Self::AcquireManual,
        Self::ReleaseAuto,
        Self::ReleaseManual,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::AcquireAuto => "Acquire mastership auto",
            Self::AcquireManual => "Acquire mastership manual",
            Self::ReleaseAuto => "Release mastership auto",
            Self::ReleaseManual => "Release mastership manual",
        }
    }

    pub const fn key(self) -> &'static str {
        match self {
            Self::AcquireAuto => "acquire_auto",
            Self::AcquireManual => "acquire_manual",
            Self::ReleaseAuto => "release_auto",
            Self::ReleaseManual => "release_manual",
        }
    }
}

/// Monitored events, as the extensive view lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitored {
    LinkDown = 0,
    ProbeFailure = 1,
    WorkerStall = 2,
    PeerDead = 3,
    PeerAcquire = 4,
    PeerRelease = 5,
}

impl Monitored {
    pub const ALL: [Self; 6] = [
        Self::LinkDown,
        Self::ProbeFailure,
        Self::WorkerStall,
        Self::PeerDead,
        Self::PeerAcquire,
        Self::PeerRelease,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::LinkDown => "Link-down",
            Self::ProbeFailure => "Probe failure",
            Self::WorkerStall => "Worker stall",
            Self::PeerDead => "Peer dead",
            Self::PeerAcquire => "Peer mastership-acquire",
            Self::PeerRelease => "Peer mastership-release",
        }
    }

    pub const fn key(self) -> &'static str {
        match self {
            Self::LinkDown => "link_down",
            Self::ProbeFailure => "probe_failure",
            Self::WorkerStall => "worker_stall",
            Self::PeerDead => "peer_dead",
            Self::PeerAcquire => "peer_acquire",
            Self::PeerRelease => "peer_release",
        }
    }

    pub(super) const fn of(c: Check) -> Self {
        match c {
            Check::Link => Self::LinkDown,
            Check::Probe => Self::ProbeFailure,
            Check::Stall => Self::WorkerStall,
        }
    }
}

/// Received and ignored counts. An event is ignored when it changed no
/// state: already where it points, warn-only by policy, or nobody to
/// hand mastership to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// [received, ignored] by [`Transition`].
    pub transitions: [[u64; 2]; 4],
    /// [received, ignored] by [`Monitored`].
    pub monitored: [[u64; 2]; 6],
    /// Times this node became MASTER while its sync link was not Hot,
    /// after a peer had been MASTER (whose unreplicated sessions were
    /// lost): a dead master's takeover, or a forced request.
    pub takeovers_without_hot: u64,
}

/// Why a mastership request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `acquire` on the MASTER.
    AlreadyMaster,
    /// `acquire` in INIT, `release` off MASTER.
    NotNow(State),
    /// `acquire` on a node whose health failed (STANDBY-WARNED).
    Warned,
    /// `acquire` while the MASTER lives and this node's sync is not Hot:
    /// it does not hold the master's sessions.
    NotHot,
    /// `release` with no live peer.
    NoPeer,
    /// `release` to a peer that cannot take over (health, state).
    PeerIneligible(PeerView),
    /// `release` to a peer whose sync is not Hot.
    PeerNotHot(PeerView),
}

impl Counts {
    pub(super) fn transition(&mut self, t: Transition, ignored: bool) {
        self.transitions[t as usize][0] += 1;
        self.transitions[t as usize][1] += u64::from(ignored);
    }

    pub(super) fn monitored(&mut self, m: Monitored, ignored: bool) {
        self.monitored[m as usize][0] += 1;
        self.monitored[m as usize][1] += u64::from(ignored);
    }
}

/// Identity and policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub node_id: u32,
    pub priority: u8,
    pub preempt: bool,
    /// Startup wait for the peer, preemption delay, and how long a
    /// request waits for the master's release.
    pub hold_down: Duration,
    pub policy: Policy,
}

//! What the state machine knows: the redundancy states, the health
//! checks and their policy, and the peer as its heartbeats describe it.

/// Redundancy set state, spelled as the views print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Init = 0,
    Waiting = 1,
    Master = 2,
    Standby = 3,
    StandbyWarned = 4,
}

impl State {
    pub const ALL: [Self; 5] = [
        Self::Init,
        Self::Waiting,
        Self::Master,
        Self::Standby,
        Self::StandbyWarned,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Waiting => "WAITING",
            Self::Master => "MASTER",
            Self::Standby => "STANDBY",
            Self::StandbyWarned => "STANDBY-WARNED",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Local health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// A monitored interface's link (netlink).
    Link = 0,
    /// Probes to a target through an interface.
    Probe = 1,
    /// A worker that stopped making progress.
    Stall = 2,
}

impl Check {
    pub const ALL: [Self; 3] = [Self::Link, Self::Probe, Self::Stall];

    /// Configuration spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Link => "link-down",
            Self::Probe => "probe-failure",
            Self::Stall => "worker-stall",
        }
    }
}

/// Which failures are critical (release mastership, not eligible to take
/// over); the others only warn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub critical: [bool; 3],
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            critical: [true; 3],
        }
    }
}

/// What a heartbeat says of its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "the heartbeat's flag bits, one field each"
)]
pub struct PeerView {
    pub state: State,
    pub priority: u8,
    pub node_id: u32,
    /// No critical failure.
    pub healthy: bool,
    /// Gave mastership away and has not seen a master since.
    pub released: bool,
    /// Asks the master to release (switchover or preemption).
    pub acquire: bool,
    /// The request or release under way was forced.
    pub force: bool,
    /// Its sync link is Hot: as a standby it holds every session of the
    /// master, as a master its standby does.
    pub hot: bool,
    /// Its mastership term: raised past both nodes' terms each time it
    /// becomes MASTER, so the higher term is the newer master.
    pub term: u64,
}

//! The redundancy state machine: pure, no I/O. The driver feeds it events
//! (local health, the peer's heartbeats, the peer's death, operator
//! requests, its timer) and carries out the actions it returns.
//!
//! Rules, evaluated after every event until nothing changes:
//! - WAITING at startup: the peer is MASTER -> STANDBY; the peer is not
//!   eligible (STANDBY-WARNED, INIT, failed health) -> MASTER; both
//!   eligible and neither master -> the standby tie-break picks one; no
//!   peer heard by the hold-down's end -> MASTER (STANDBY-WARNED when this
//!   node's health failed).
//! - WAITING on a request (manual acquire, preemption): the peer leaves
//!   MASTER or dies -> MASTER; the hold-down ends first -> STANDBY.
//! - MASTER: another MASTER -> the loser of the dual-master tie-break
//!   releases; the peer requests mastership -> release (if the peer is
//!   eligible or the request is forced); a critical failure -> release,
//!   but only to an eligible peer (nobody forwarding is worse).
//! - STANDBY: peer dead, or not eligible and not master -> MASTER; both
//!   STANDBY -> the tie-break picks one; a critical failure ->
//!   STANDBY-WARNED, which never takes over by itself.
//!
//! Tie-breaks are total and both nodes compute them from the same
//! heartbeat fields, so exactly one side wins: standby (a node that just
//! released yields, then higher priority, then lower node id) and dual
//! master (healthy first, then the newer term, then priority, then node
//! id). Terms: a node that becomes MASTER takes a term above both its
//! own and the highest it heard from the peer. After a partition, or a
//! frozen master's wake, the newer master is the one the hosts were last
//! sent to (its announcements came last) and the one holding the
//! sessions made since; the older one yields, whatever its priority. The
//! winner announces its addresses again ([`Action::Reannounce`]): the
//! loser's release took nothing from the hosts' caches, but its own
//! announcements during the partition may have.
//! Preemption (off by default): a healthy STANDBY that wins on priority
//! and whose sync is Hot requests mastership after the hold-down.
//!
//! Mastership moves by choice only to a node that holds the sessions: a
//! plain request to acquire is refused while the master lives and this
//! node's sync is not Hot, a plain release while the peer's is not, and
//! preemption waits for Hot. A dead master leaves no better choice: its
//! standby takes over whatever it holds, and [`Counts`] counts the
//! takeovers made without Hot.

mod event;
mod state;

use std::{cmp::Reverse, collections::BTreeSet, time::Duration};

pub use self::{
    event::{Action, Counts, Event, Monitored, Refusal, Settings, Transition},
    state::{Check, PeerView, Policy, State},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    Startup,
    Request,
    Preempt,
}

#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts the rules read, one field each"
)]
pub struct Fsm {
    s: Settings,
    state: State,
    failed: BTreeSet<(Check, u16)>,
    /// The peer's last heartbeat while it lives.
    peer: Option<PeerView>,
    released: bool,
    /// A request for mastership under way (WAITING): whether forced, and
    /// how it counts (manual, or automatic for preemption).
    acquiring: Option<(bool, Transition)>,
    /// The release (or acquire) under way was forced.
    force: bool,
    /// Mastership taken by force: kept through this node's failed health
    /// until the next health change or request.
    pinned: bool,
    timer: Option<(Duration, Timer)>,
    /// This node's sync link is Hot.
    hot: bool,
    /// It was Hot when the request under way (`acquiring`) was made: the
    /// link may drop once the peer releases (its role changes), which
    /// does not make the takeover one without Hot.
    asked_hot: bool,
    /// A peer has been MASTER since this node started: a takeover
    /// without Hot may lose its sessions.
    peer_was_master: bool,
    /// This node's mastership term, and the highest the peer announced.
    term: u64,
    peer_term: u64,
    pub counts: Counts,
}

/// What the heartbeat carries; a change is announced at once.
type Shown = (
    State,
    bool,
    bool,
    Option<(bool, Transition)>,
    bool,
    bool,
    u64,
);

impl Fsm {
    pub fn new(s: Settings) -> Self {
        Self {
            s,
            state: State::Init,
            failed: BTreeSet::new(),
            peer: None,
            released: false,
            acquiring: None,
            force: false,
            pinned: false,
            timer: None,
            hot: false,
            asked_hot: false,
            peer_was_master: false,
            term: 0,
            peer_term: 0,
            counts: Counts::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// No critical check failed.
    pub fn healthy(&self) -> bool {
        !self
            .failed
            .iter()
            .any(|(c, _)| self.s.policy.critical[*c as usize])
    }

    /// This node's sync link is Hot.
    pub fn hot(&self) -> bool {
        self.hot
    }

    /// Failed checks, critical or not.
    pub fn failed(&self) -> impl Iterator<Item = (Check, u16)> + '_ {
        self.failed.iter().copied()
    }

    /// The peer's last heartbeat, while it lives.
    pub fn peer(&self) -> Option<PeerView> {
        self.peer
    }

    /// What this node's heartbeats say.
    pub fn view(&self) -> PeerView {
        PeerView {
            state: self.state,
            priority: self.s.priority,
            node_id: self.s.node_id,
            healthy: self.healthy(),
            released: self.released,
            acquire: self.acquiring.is_some(),
            force: self.force || self.acquiring.is_some_and(|(f, _)| f),
            hot: self.hot,
            term: self.term,
        }
    }

    /// This node's mastership term.
    pub fn term(&self) -> u64 {
        self.term
    }

    fn shown(&self) -> Shown {
        (
            self.state,
            self.healthy(),
            self.released,
            self.acquiring,
            self.force,
            self.hot,
            self.term,
        )
    }

    /// Why a mastership request (`acquire` or release, `force`d or not)
    /// would be refused now; `None`: it is carried out.
    pub fn refusal(&self, acquire: bool, force: bool) -> Option<Refusal> {
        if acquire {
            return match self.state {
                State::Master => Some(Refusal::AlreadyMaster),
                State::Init => Some(Refusal::NotNow(self.state)),
                State::StandbyWarned if !force => Some(Refusal::Warned),
                _ if !force && !self.hot && self.peer.is_some_and(|p| p.state == State::Master) => {
                    Some(Refusal::NotHot)
                }
                _ => None,
            };
        }
        if self.state != State::Master {
            return Some(Refusal::NotNow(self.state));
        }
        let Some(p) = self.peer else {
            return Some(Refusal::NoPeer);
        };
        if p.state == State::Init || !(eligible(&p) || (force && p.state != State::Master)) {
            return Some(Refusal::PeerIneligible(p));
        }
        if !force && !p.hot {
            return Some(Refusal::PeerNotHot(p));
        }
        None
    }

    /// Handles one event at `now` (since the driver's epoch).
    pub fn handle(&mut self, now: Duration, ev: Event) -> Vec<Action> {
        let shown = self.shown();
        let timer = self.timer;
        let mut out = Vec::new();
        match ev {
            Event::Start => {
                if self.state == State::Init {
                    self.state = State::Waiting;
                    self.timer = Some((now + self.s.hold_down, Timer::Startup));
                    self.settle(now, &mut out);
                }
            }
            Event::Failure { check, id } => {
                let before = self.state;
                let new = self.failed.insert((check, id));
                self.pinned = false;
                let was_master = before == State::Master;
                self.settle(now, &mut out);
                let ignored = !new || self.state == before;
                self.counts.monitored(Monitored::of(check), ignored);
                if new && was_master && self.state == State::Master && !self.healthy() {
                    // Wanted to release, but nobody can take over.
                    self.counts.transition(Transition::ReleaseAuto, true);
                }
            }
            Event::Recovery { check, id } => {
                if self.failed.remove(&(check, id)) {
                    self.pinned = false;
                }
                self.settle(now, &mut out);
            }
            Event::Peer(v) => self.peer_heard(now, v, &mut out),
            Event::PeerDead => {
                let before = self.state;
                let known = self.peer.take().is_some();
                self.settle(now, &mut out);
                self.counts
                    .monitored(Monitored::PeerDead, !known || self.state == before);
                if known && before == State::StandbyWarned && self.state == before {
                    // Not eligible to take over.
                    self.counts.transition(Transition::AcquireAuto, true);
                }
            }
            Event::Manual {
                acquire: true,
                force,
            } => self.manual_acquire(now, force, &mut out),
            Event::Manual {
                acquire: false,
                force,
            } => self.manual_release(now, force, &mut out),
            Event::Timer => self.timer_fired(now, &mut out),
            Event::Sync { hot } => {
                self.hot = hot;
                self.settle(now, &mut out);
            }
        }
        if self.shown() != shown {
            out.push(Action::Announce);
        }
        if self.timer != timer {
            out.push(Action::Arm(self.timer.map(|(t, _)| t)));
        }
        out
    }

    fn peer_heard(&mut self, now: Duration, v: PeerView, out: &mut Vec<Action>) {
        let prev = self.peer.replace(v);
        let before = self.state;
        self.peer_term = self.peer_term.max(v.term);
        if v.state == State::Master {
            self.peer_was_master = true;
            // A master exists: nothing of ours is pending against it any
            // more but a request.
            self.released = false;
            self.force = false;
        }
        self.settle(now, out);
        if self.state == State::Master
            && v.state != State::Master
            && prev.is_none_or(|p| p.state == State::Master)
        {
            // A dual mastership ended in this node's favour, or the peer
            // is heard again (a healed partition, a restart) and may have
            // announced the addresses meanwhile.
            out.push(Action::Reannounce);
        }
        let Some(p) = prev else {
            return;
        };
        let ignored = self.state == before;
        let acquired =
            (v.state == State::Master && p.state != State::Master) || (v.acquire && !p.acquire);
        let released =
            (p.state == State::Master && v.state != State::Master) || (v.released && !p.released);
        if acquired {
            self.counts.monitored(Monitored::PeerAcquire, ignored);
        }
        if released {
            self.counts.monitored(Monitored::PeerRelease, ignored);
        }
    }

    fn manual_acquire(&mut self, now: Duration, force: bool, out: &mut Vec<Action>) {
        if self.refusal(true, force).is_some() {
            self.counts.transition(Transition::AcquireManual, true);
            return;
        }
        self.released = false;
        self.force = false;
        if self.peer.is_some_and(|p| p.state == State::Master) {
            // Ask the master to release; take over when it has.
            self.state = State::Waiting;
            self.acquiring = Some((force, Transition::AcquireManual));
            self.asked_hot = self.hot;
            self.timer = Some((now + self.s.hold_down, Timer::Request));
            self.settle(now, out);
        } else {
            self.pinned = force;
            self.counts.transition(Transition::AcquireManual, false);
            self.enter(now, State::Master, out);
            self.settle(now, out);
        }
    }

    fn manual_release(&mut self, now: Duration, force: bool, out: &mut Vec<Action>) {
        if self.refusal(false, force).is_some() {
            self.counts.transition(Transition::ReleaseManual, true);
            return;
        }
        self.counts.transition(Transition::ReleaseManual, false);
        self.released = true;
        self.force = force;
        self.pinned = false;
        let to = if self.healthy() {
            State::Standby
        } else {
            State::StandbyWarned
        };
        self.enter(now, to, out);
        self.settle(now, out);
    }

    fn timer_fired(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some((at, what)) = self.timer else {
            return;
        };
        if now < at {
            return;
        }
        self.timer = None;
        match what {
            Timer::Startup
                if self.state == State::Waiting
                    && self.acquiring.is_none()
                    && self.peer.is_none() =>
            {
                if self.healthy() {
                    self.counts.transition(Transition::AcquireAuto, false);
                    self.enter(now, State::Master, out);
                } else {
                    self.enter(now, State::StandbyWarned, out);
                }
            }
            Timer::Request if self.state == State::Waiting && self.acquiring.is_some() => {
                // The master did not release in time.
                if let Some((_, t)) = self.acquiring.take() {
                    self.counts.transition(t, true);
                }
                let to = if self.healthy() {
                    State::Standby
                } else {
                    State::StandbyWarned
                };
                self.enter(now, to, out);
            }
            Timer::Preempt if self.state == State::Standby && self.preempts() => {
                self.state = State::Waiting;
                self.acquiring = Some((false, Transition::AcquireAuto));
                self.asked_hot = self.hot;
                self.timer = Some((now + self.s.hold_down, Timer::Request));
            }
            _ => {}
        }
        self.settle(now, out);
    }

    /// Whether this healthy STANDBY outranks the live master and should
    /// take mastership back.
    fn preempts(&self) -> bool {
        self.s.preempt
            && self.healthy()
            && self.hot
            && !self.released
            && self.peer.is_some_and(|p| {
                p.state == State::Master
                    && (self.s.priority, Reverse(self.s.node_id)) > (p.priority, Reverse(p.node_id))
            })
    }

    fn enter(&mut self, now: Duration, to: State, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        if from == State::Master {
            out.push(Action::Release);
        }
        self.state = to;
        if to == State::Master {
            // Hot when this node asked for it, or, unasked, handed over
            // by a plain release (which the peer makes only to a Hot node).
            let hot = self.hot
                || if self.acquiring.is_some() {
                    self.asked_hot
                } else {
                    self.peer.is_some_and(|p| p.released && !p.force)
                };
            if !hot && self.peer_was_master {
                self.counts.takeovers_without_hot += 1;
            }
            self.term = self.term.max(self.peer_term) + 1;
            self.acquiring = None;
            self.released = false;
            if matches!(self.timer, Some((_, Timer::Request | Timer::Preempt))) {
                self.timer = None;
            }
            out.push(Action::TakeOver);
        }
        if matches!(self.timer, Some((_, Timer::Startup))) && to != State::Waiting {
            self.timer = None;
        }
        if to == State::Waiting && self.acquiring.is_none() {
            self.timer = Some((now + self.s.hold_down, Timer::Startup));
        }
    }

    /// Applies the rules until nothing changes.
    fn settle(&mut self, now: Duration, out: &mut Vec<Action>) {
        for _ in 0..8 {
            let Some((to, counted)) = self.next() else {
                break;
            };
            if let Some(t) = counted {
                self.counts.transition(t, false);
            }
            if self.state == State::Master && to != State::Master {
                self.released = true;
                self.pinned = false;
            }
            if to == State::Master
                && (self.acquiring.is_some_and(|(force, _)| force)
                    || self
                        .peer
                        .is_some_and(|p| p.force && p.released && p.state != State::Master))
            {
                // Taken by a forced request, or handed by a forced release.
                self.pinned = true;
            }
            self.enter(now, to, out);
        }
        if self.state == State::Standby && self.preempts() {
            if !matches!(self.timer, Some((_, Timer::Preempt))) {
                self.timer = Some((now + self.s.hold_down, Timer::Preempt));
            }
        } else if matches!(self.timer, Some((_, Timer::Preempt))) {
            self.timer = None;
        }
    }

    /// The next transition the rules call for, and how it counts.
    fn next(&self) -> Option<(State, Option<Transition>)> {
        use Transition::{AcquireAuto, ReleaseAuto};
        let healthy = self.healthy();
        let resting = if healthy {
            State::Standby
        } else {
            State::StandbyWarned
        };
        match self.state {
            State::Init => None,
            State::Waiting => match (self.acquiring, self.peer) {
                (Some((force, t)), None) => (healthy || force).then_some((State::Master, Some(t))),
                (Some((_, t)), Some(p)) if p.state != State::Master => {
                    Some((State::Master, Some(t)))
                }
                (Some(_), _) | (None, None) => None,
                (None, Some(p)) if p.state == State::Master => Some((resting, None)),
                (None, Some(p)) => {
                    if !healthy {
                        Some((State::StandbyWarned, None))
                    } else if !eligible(&p) || (!p.acquire && self.wins_standby(&p)) {
                        Some((State::Master, Some(AcquireAuto)))
                    } else {
                        Some((State::Standby, None))
                    }
                }
            },
            State::Master => {
                let p = self.peer?;
                if p.state == State::Master && !self.wins_dual(&p) {
                    return Some((resting, Some(ReleaseAuto)));
                }
                // A plain request comes only from a Hot peer; this checks
                // it again.
                if p.acquire && ((eligible(&p) && p.hot) || p.force) {
                    return Some((resting, Some(ReleaseAuto)));
                }
                if !healthy && !self.pinned && eligible(&p) && p.state != State::Master {
                    return Some((State::StandbyWarned, Some(ReleaseAuto)));
                }
                None
            }
            State::Standby => {
                if !healthy {
                    return Some((State::StandbyWarned, None));
                }
                let Some(p) = self.peer else {
                    return Some((State::Master, Some(AcquireAuto)));
                };
                let take = match p.state {
                    State::Master | State::Waiting => false,
                    _ if p.acquire => false,
                    _ if p.released && p.force => true,
                    // Our own forced release stands until the peer takes it.
                    _ if !eligible(&p) => !(self.released && self.force),
                    _ => self.wins_standby(&p),
                };
                take.then_some((State::Master, Some(AcquireAuto)))
            }
            State::StandbyWarned => {
                if healthy {
                    // With the peer unheard (its death may only have been
                    // our own links failing), wait to hear it before
                    // taking anything, as at startup.
                    let to = if self.peer.is_some() {
                        State::Standby
                    } else {
                        State::Waiting
                    };
                    return Some((to, None));
                }
                // Only a forced release hands mastership to a warned node.
                self.peer
                    .filter(|p| p.released && p.force && p.state != State::Master)
                    .map(|_| (State::Master, Some(AcquireAuto)))
            }
        }
    }

    fn wins_standby(&self, p: &PeerView) -> bool {
        (!self.released, self.s.priority, Reverse(self.s.node_id))
            > (!p.released, p.priority, Reverse(p.node_id))
    }

    fn wins_dual(&self, p: &PeerView) -> bool {
        (
            self.healthy(),
            self.term,
            self.s.priority,
            Reverse(self.s.node_id),
        ) > (p.healthy, p.term, p.priority, Reverse(p.node_id))
    }
}

/// Can take over: healthy and past startup.
fn eligible(p: &PeerView) -> bool {
    p.healthy && matches!(p.state, State::Standby | State::Waiting | State::Master)
}

#[cfg(test)]
mod tests;

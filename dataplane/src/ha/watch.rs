//! The monitors the redundancy thread runs every turn: the sync link's
//! Hot (and how long a standby has lacked it), the monitored links' state
//! in the FIB mirror, and the workers' loop counters (stalls). Each turns
//! a change into a state machine event.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tandem_control::ha::fsm::{Check, Event, State};

use super::HaThread;

impl HaThread {
    /// Feeds the sync link's Hot to the state machine, and times how long
    /// a standby has lacked it while a master lives.
    pub(super) fn watch_sync(&mut self, now: Instant) {
        let hot = self.node.sync_state.load(Ordering::Relaxed) == 2;
        if hot != self.fsm.hot() {
            tracing::info!(hot, "sync link");
            self.event(Event::Sync { hot });
        }
        let unsynced = match (self.fsm.state(), self.fsm.peer()) {
            (State::Master, Some(p)) => !p.hot && p.state != State::Init,
            (State::Standby | State::StandbyWarned, Some(p)) => p.state == State::Master && !hot,
            _ => false,
        };
        let was = self.unsynced().1;
        self.unsynced_since = match (unsynced, self.unsynced_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        match (was, self.unsynced().1) {
            (false, true) => tracing::warn!(
                after_ms = self.unsynced_warn.as_millis(),
                "the standby is not Hot: a takeover now would lose sessions"
            ),
            (true, false) => tracing::info!("the standby is Hot again (or the pair changed)"),
            _ => {}
        }
    }

    /// How long the standby has lacked Hot, and whether that is a warning.
    pub(super) fn unsynced(&self) -> (Duration, bool) {
        let d = self.unsynced_since.map_or(Duration::ZERO, |s| s.elapsed());
        (d, self.unsynced_since.is_some() && d >= self.unsynced_warn)
    }

    pub(super) fn watch_links(&mut self) {
        self.fib.refresh();
        for id in 0..self.links.len() {
            let (ifindex, failed) = self.links[id];
            let down = self
                .fib
                .fib()
                .link(ifindex)
                .is_none_or(|l| l.oper_up == Some(false));
            if down != failed {
                self.links[id].1 = down;
                let name = self
                    .fib
                    .fib()
                    .link(ifindex)
                    .map_or("?", |l| l.name.as_str())
                    .to_owned();
                tracing::warn!(iface = %name, down, "monitored link");
                let check = Check::Link;
                let id = id as u16;
                self.event(if down {
                    Event::Failure { check, id }
                } else {
                    Event::Recovery { check, id }
                });
            }
        }
    }

    pub(super) fn watch_workers(&mut self, now: Instant) {
        for id in 0..self.workers.len() {
            let (slot, last, moved, stalled) = self.workers[id];
            let v = self.segment.value(slot).load(Ordering::Relaxed);
            let check = Check::Stall;
            let id16 = id as u16;
            if v != last {
                self.workers[id] = (slot, v, now, false);
                if stalled {
                    tracing::warn!(worker = id, "worker progressing again");
                    self.event(Event::Recovery { check, id: id16 });
                }
            } else if !stalled && now.duration_since(moved) >= self.stall {
                self.workers[id].3 = true;
                tracing::error!(
                    worker = id,
                    after_ms = self.stall.as_millis(),
                    "worker stalled"
                );
                self.event(Event::Failure { check, id: id16 });
            }
        }
    }
}

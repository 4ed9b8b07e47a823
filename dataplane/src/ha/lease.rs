//! The MASTER lease: the XDP program forwards (service traffic, fast
//! path, ARP answers for the pool, the VIPs' ARP and ND reaching the
//! kernel) only until a time this thread keeps moving forward. It lasts
//! half the peer's dead interval and is renewed when half of it is left,
//! so a daemon that stops running (SIGSTOP, a wedged thread, starvation)
//! stops attracting and forwarding traffic before its peer takes over.
//!
//! A lease that ran out is counted. If this node was silent for less
//! than the dead interval, the peer cannot have taken over and the lease
//! is renewed at once. If it was silent longer (frozen), the peer may be
//! MASTER now with a newer term: the node holds off for one dead
//! interval, reading the peer's heartbeats, and yields to a newer master
//! (the state machine's dual-master rule) rather than take traffic back.

use std::time::Instant;

use tandem_control::ha::fsm::State;

use super::HaThread;
use crate::sys::monotonic_ns;

/// The lease's state in the driver.
#[derive(Debug)]
pub(super) struct Lease {
    /// Until when the program forwards (`CLOCK_MONOTONIC_COARSE` ns).
    until_ns: u64,
    /// When it was last granted or renewed.
    renewed: Instant,
    /// After a long silence: no renewal before this time.
    hold_until: Instant,
    held: bool,
    /// Times it ran out.
    pub(super) lapses: u64,
}

impl Lease {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            until_ns: 0,
            renewed: now,
            hold_until: now,
            held: false,
            lapses: 0,
        }
    }

    /// The program was told to forward until `until_ns`, at `now`.
    pub(super) fn granted(&mut self, until_ns: u64, now: Instant) {
        self.until_ns = until_ns;
        self.renewed = now;
        self.hold_until = now;
        self.held = false;
    }
}

impl HaThread {
    /// The lease's length in nanoseconds: half the dead interval.
    pub(super) fn lease_ns(&self) -> u64 {
        u64::try_from((self.dead / 2).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Notices, first thing after a wait, a lease that ran out while
    /// this node was MASTER: counts it and, after a silence longer than
    /// the dead interval, holds renewal off for one (the heartbeats read
    /// next may show a newer master, to which this node yields).
    pub(super) fn notice_lapse(&mut self, now: Instant) {
        if self.fsm.state() != State::Master
            || self.lease.held
            || monotonic_ns() < self.lease.until_ns
        {
            return;
        }
        let silent = now.duration_since(self.lease.renewed);
        self.lease.lapses += 1;
        if silent >= self.dead {
            self.lease.held = true;
            self.lease.hold_until = now + self.dead;
            tracing::warn!(
                silent_ms = silent.as_millis(),
                "the MASTER lease ran out: this daemon did not run for longer than the \
                 peer's dead interval; not forwarding for one more dead interval, \
                 listening for a newer master"
            );
        } else {
            tracing::warn!(
                silent_ms = silent.as_millis(),
                "the MASTER lease ran out (this daemon was starved); renewing"
            );
            // Renewed by keep_lease in this turn.
            self.lease.until_ns = 0;
        }
    }

    /// Renews the lease while MASTER, when half of it is left (or it ran
    /// out and no hold is on).
    pub(super) fn keep_lease(&mut self, now: Instant) {
        if self.fsm.state() != State::Master || now < self.lease.hold_until {
            return;
        }
        let now_ns = monotonic_ns();
        let half = self.lease_ns() / 2;
        if !self.lease.held && self.lease.until_ns.saturating_sub(now_ns) > half {
            return;
        }
        let until = now_ns + self.lease_ns();
        let set = {
            let mut l = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.set_role(true, until)
        };
        match set {
            Ok(()) => self.lease.granted(until, now),
            Err(e) => tracing::error!(error = %e, "renewing the MASTER lease"),
        }
    }
}

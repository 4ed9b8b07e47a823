//! Session and NAT events for the event log (syslog, IPFIX).
//!
//! Design: a worker pushes a fixed-size [`Event`] (the session as it is,
//! by copy) into its own single-producer ring; the logging thread drains
//! every ring, stamps, formats and sends. A full ring drops the event and
//! counts it: the data path never waits for the log. Only a node that
//! forwards logs (a standby's copies end as the active's do, and the
//! active logged them), and stubs, which stand for another worker's
//! session, are never logged.

use crate::session::Session;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A session was created (with its NAT binding, if any).
    Create,
    /// A session ended: its idle timeout passed.
    Expired,
    /// A session ended: an operator cleared it.
    Cleared,
    /// A session that never saw an answer ended to make room in a full
    /// table (early drop).
    EarlyDropped,
    /// A new translated flow found no free port in this worker's share of
    /// its service set's pool (at most one a second per worker).
    PortsExhausted,
    /// A subscriber took a port block: the event's session names the
    /// subscriber (`key.src`), the pool address and first port (its NAT
    /// binding) and the last port (`key.dport`).
    BlockAllocated,
    /// A subscriber's port block went back to the pool (its last mapping
    /// ended); as [`EventKind::BlockAllocated`].
    BlockReleased,
}

/// One event: the session at that moment.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub session: Session,
}

/// Producer end of a worker's event ring.
pub type EventsTx = rtrb::Producer<Event>;
/// Consumer end, the logging thread's.
pub type EventsRx = rtrb::Consumer<Event>;

/// A worker's ring and consumer end, of `capacity` events.
pub fn ring(capacity: usize) -> (EventsTx, EventsRx) {
    rtrb::RingBuffer::new(capacity)
}

/// A worker's side of the event log.
pub struct EventSink {
    tx: EventsTx,
    /// A collector is configured (a reload may change it).
    pub wanted: bool,
    /// This node forwards (a standby does not log).
    pub active: bool,
    dropped: u64,
    /// The second of the last ports-exhausted event.
    exhausted_at: Option<u32>,
}

impl EventSink {
    pub fn new(tx: EventsTx) -> Self {
        Self {
            tx,
            wanted: false,
            active: false,
            dropped: 0,
            exhausted_at: None,
        }
    }

    /// Queues an event about `s` (never a stub's), or counts it dropped.
    #[inline]
    pub fn push(&mut self, kind: EventKind, s: &Session) {
        if !(self.wanted && self.active) || s.remote != 0 {
            return;
        }
        if self.tx.push(Event { kind, session: *s }).is_err() {
            self.dropped += 1;
        }
    }

    /// A port block of service set `set` went to (`allocated`) or came
    /// back from subscriber `inside`: ports `first..=last` of `pool`.
    pub fn block(
        &mut self,
        allocated: bool,
        set: u8,
        inside: [u8; 4],
        pool: [u8; 4],
        (first, last): (u16, u16),
    ) {
        if !(self.wanted && self.active) {
            return;
        }
        let mut s = Session::new(
            crate::session::FlowKey::v4(inside, [0; 4], first, last, 0),
            0,
            crate::session::Origin::Inside,
            set,
            0,
        );
        s.set_nat(pool, first);
        let kind = if allocated {
            EventKind::BlockAllocated
        } else {
            EventKind::BlockReleased
        };
        if self.tx.push(Event { kind, session: s }).is_err() {
            self.dropped += 1;
        }
    }

    /// [`EventKind::PortsExhausted`] for a flow like `s`, at most once in
    /// second `now`.
    pub fn exhausted(&mut self, s: &Session, now: u32) {
        if self.exhausted_at != Some(now) && self.wanted && self.active {
            self.exhausted_at = Some(now);
            self.push(EventKind::PortsExhausted, s);
        }
    }

    /// Counts `n` events lost before they reached the ring.
    pub fn lost(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Events dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{FlowKey, Origin};

    fn session() -> Session {
        Session::new(
            FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 1], 4000, 53, 17),
            7,
            Origin::Inside,
            0,
            3,
        )
    }

    #[test]
    fn a_full_ring_drops_and_counts_and_an_idle_sink_queues_nothing() {
        let (tx, mut rx) = ring(2);
        let mut sink = EventSink::new(tx);
        sink.push(EventKind::Create, &session());
        assert!(
            rx.pop().is_err(),
            "nothing while no collector is configured"
        );
        sink.wanted = true;
        sink.push(EventKind::Create, &session());
        assert!(rx.pop().is_err(), "nothing while the node does not forward");
        sink.active = true;
        for _ in 0..3 {
            sink.push(EventKind::Create, &session());
        }
        assert_eq!(sink.take_dropped(), 1);
        assert_eq!(sink.take_dropped(), 0);
        assert_eq!(rx.pop().unwrap().session.id, 7);
        let mut stub = session();
        stub.remote = 2;
        rx.pop().unwrap();
        sink.push(EventKind::Expired, &stub);
        assert!(rx.pop().is_err(), "a stub is another worker's session");
        sink.exhausted(&session(), 9);
        sink.exhausted(&session(), 9);
        assert_eq!(rx.pop().unwrap().kind, EventKind::PortsExhausted);
        assert!(rx.pop().is_err(), "one ports-exhausted event a second");
    }
}

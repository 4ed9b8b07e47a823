//! Session listings, answered by the workers that own the sessions.
//!
//! Design: the control thread posts a [`Job`] to every worker; each worker
//! walks its own table a bounded number of slots per loop iteration and
//! sends matching sessions in chunks over a bounded channel with
//! `try_send`, so neither a large table nor a slow reader ever stalls
//! forwarding: a full channel just waits for the next iteration.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
    mpsc::{SyncSender, TrySendError},
};

use tandem_control::{config::Prefix, sessions::Query};

use crate::{
    service::NatView,
    session::{Origin, Session, Table},
};

/// Slots a worker scans per loop iteration.
const SCAN_SLOTS: usize = 4096;
/// Sessions per chunk sent to the control thread.
const CHUNK: usize = 256;

/// A query compiled against the daemon's names.
#[derive(Clone, Debug, Default)]
pub struct Match {
    pub protocol: Option<u8>,
    pub source: Option<Prefix>,
    pub destination: Option<Prefix>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub service_set: Option<u8>,
    pub origin: Option<Origin>,
}

impl Match {
    /// Compiles `q`; errs naming an unknown service set or interface.
    pub fn compile(
        q: &Query,
        sets: &[String],
        inside: &str,
        outside: &str,
    ) -> Result<Self, String> {
        let service_set = match &q.service_set {
            None => None,
            Some(n) => Some(sets.iter().position(|s| s == n).ok_or_else(|| {
                format!(
                    "unknown service set `{n}` (configured: {})",
                    if sets.is_empty() {
                        "none".to_owned()
                    } else {
                        sets.join(", ")
                    }
                )
            })? as u8),
        };
        let origin = match q.interface.as_deref() {
            None => None,
            Some(i) if i == inside => Some(Origin::Inside),
            Some(i) if i == outside => Some(Origin::Outside),
            Some(i) => {
                return Err(format!(
                    "unknown interface `{i}` (sessions arrive on {inside} or {outside})"
                ));
            }
        };
        Ok(Self {
            protocol: q.protocol,
            source: q.source_prefix,
            destination: q.destination_prefix,
            source_port: q.source_port,
            destination_port: q.destination_port,
            service_set,
            origin,
        })
    }

    /// Whether `s` matches; addresses and ports are the initiator's, as it
    /// sent them (before NAT).
    pub fn matches(&self, s: &Session) -> bool {
        let k = &s.key;
        self.protocol.is_none_or(|p| p == k.proto)
            && self.source.is_none_or(|p| p.contains(k.src_ip()))
            && self.destination.is_none_or(|p| p.contains(k.dst_ip()))
            && self.source_port.is_none_or(|p| p == k.sport)
            && self.destination_port.is_none_or(|p| p == k.dport)
            && self.service_set.is_none_or(|i| i == s.service_set)
            && self.origin.is_none_or(|o| o == s.origin())
    }
}

/// What a worker sends back.
#[derive(Debug)]
pub enum Chunk {
    Rows {
        worker: usize,
        sessions: Vec<Session>,
    },
    /// The worker's NAT pools (a `nat` job's one answer, before `Done`).
    Nat { worker: usize, sets: Vec<NatView> },
    /// The worker's walk is over: `matched` sessions, per service set.
    Done {
        worker: usize,
        matched: u64,
        by_set: Vec<u64>,
    },
}

/// A listing request for one worker.
pub struct Job {
    pub filter: Match,
    pub count_only: bool,
    /// End the matching sessions instead of listing them
    /// (`tandemctl clear sessions`); `Done` says how many.
    pub clear: bool,
    /// Describe the worker's NAT pools instead (`show nat`): one
    /// [`Chunk::Nat`], then `Done`.
    pub nat: bool,
    pub sets: usize,
    pub tx: SyncSender<Chunk>,
    /// Set by the control thread once it has what it needs (a limit).
    pub cancel: Arc<AtomicBool>,
}

/// A worker's listing in progress.
pub struct Walk {
    job: Job,
    worker: usize,
    cursor: Option<u32>,
    matched: u64,
    by_set: Vec<u64>,
    rows: Vec<Session>,
}

impl Walk {
    pub fn new(job: Job, worker: usize) -> Self {
        let by_set = vec![0; job.sets];
        Self {
            job,
            worker,
            cursor: Some(0),
            matched: 0,
            by_set,
            rows: Vec::with_capacity(CHUNK),
        }
    }

    /// One bounded step; true when the walk is finished. `live` completes
    /// each listed copy (an offloaded session's fast-path counts).
    pub fn step(&mut self, table: Option<&Table>, mut live: impl FnMut(&mut Session)) -> bool {
        if self.job.cancel.load(Ordering::Relaxed) {
            return true;
        }
        if !self.rows.is_empty() && !self.flush() {
            return self.gone();
        }
        if let Some(from) = self.cursor {
            let Some(table) = table else {
                self.cursor = None;
                return false;
            };
            let (filter, count_only) = (&self.job.filter, self.job.count_only);
            let (rows, matched, by_set) = (&mut self.rows, &mut self.matched, &mut self.by_set);
            self.cursor = table.scan(from, SCAN_SLOTS, |s| {
                if filter.matches(s) {
                    *matched += 1;
                    if let Some(n) = by_set.get_mut(usize::from(s.service_set)) {
                        *n += 1;
                    }
                    if !count_only {
                        let mut copy = *s;
                        live(&mut copy);
                        rows.push(copy);
                    }
                }
            });
            if self.rows.len() >= CHUNK || self.cursor.is_none() {
                let _ = self.flush();
            }
            return self.gone();
        }
        if !self.rows.is_empty() {
            return self.gone();
        }
        self.send_done()
    }

    /// Whether this job ends the sessions it matches.
    pub fn clears(&self) -> bool {
        self.job.clear
    }

    /// Whether this job asks for the worker's NAT pools.
    pub fn describes_nat(&self) -> bool {
        self.job.nat
    }

    /// One step of a `nat` job: sends what `view` describes (once), then
    /// `Done`. True when finished; a full channel waits for the next step.
    pub fn step_nat(&mut self, view: impl FnOnce() -> Vec<NatView>) -> bool {
        if self.cursor.is_some() {
            let chunk = Chunk::Nat {
                worker: self.worker,
                sets: view(),
            };
            match self.job.tx.try_send(chunk) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => self.cursor = None,
                Err(TrySendError::Full(_)) => return false,
            }
        }
        self.send_done()
    }

    /// One bounded step of a clear: `clear(from, filter)` ends the
    /// matching sessions of a chunk of the table from slot `from` and says
    /// where to go on and how many ended. True when finished (its `Done`
    /// sent).
    pub fn step_clear(&mut self, clear: impl FnOnce(u32, &Match) -> (Option<u32>, u64)) -> bool {
        if let Some(from) = self.cursor {
            let (next, n) = clear(from, &self.job.filter);
            self.matched += n;
            self.cursor = next;
            return false;
        }
        self.send_done()
    }

    /// Sends the walk's `Done`; false if the channel is full (try again).
    fn send_done(&mut self) -> bool {
        let done = Chunk::Done {
            worker: self.worker,
            matched: self.matched,
            by_set: std::mem::take(&mut self.by_set),
        };
        match self.job.tx.try_send(done) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => true,
            Err(TrySendError::Full(Chunk::Done { by_set, .. })) => {
                self.by_set = by_set;
                false
            }
            Err(TrySendError::Full(_)) => false,
        }
    }

    /// Sends the pending rows; false if the channel is full or closed.
    fn flush(&mut self) -> bool {
        let rows = std::mem::replace(&mut self.rows, Vec::with_capacity(CHUNK));
        match self.job.tx.try_send(Chunk::Rows {
            worker: self.worker,
            sessions: rows,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(Chunk::Rows { sessions, .. })) => {
                self.rows = sessions;
                false
            }
            Err(_) => {
                self.job.cancel.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether the reader went away.
    fn gone(&self) -> bool {
        self.job.cancel.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tandem_control::config::Timeouts;

    use super::*;
    use crate::session::FlowKey;

    fn table(n: u16) -> Table {
        let mut t = Table::new(10_000, Timeouts::default(), 0);
        for i in 0..n {
            let k = FlowKey::v4([10, 0, 0, 1], [10, 0, 1, (i % 3) as u8], 1000 + i, 80, 6);
            let origin = if i % 2 == 0 {
                Origin::Inside
            } else {
                Origin::Outside
            };
            t.insert(Session::new(k, u64::from(i), origin, (i % 2) as u8, 0))
                .unwrap();
        }
        t
    }

    fn run(t: &Table, filter: Match, count_only: bool, depth: usize) -> (Vec<u64>, u64, usize) {
        let (tx, rx) = mpsc::sync_channel(depth);
        let mut w = Walk::new(
            Job {
                filter,
                count_only,
                clear: false,
                nat: false,
                sets: 2,
                tx,
                cancel: Arc::new(AtomicBool::new(false)),
            },
            3,
        );
        let (mut ids, mut matched, mut steps) = (Vec::new(), None, 0);
        loop {
            steps += 1;
            let finished = w.step(Some(t), |_| {});
            // A slow reader: drain one chunk per step.
            if let Ok(c) = rx.try_recv() {
                match c {
                    Chunk::Rows { sessions, .. } => ids.extend(sessions.iter().map(|s| s.id)),
                    Chunk::Done { matched: m, .. } => matched = Some(m),
                    Chunk::Nat { .. } => panic!("a listing answers no NAT view"),
                }
            }
            if finished && matched.is_some() {
                break;
            }
            assert!(steps < 10_000, "walk never ended");
        }
        ids.sort_unstable();
        (ids, matched.unwrap(), steps)
    }

    #[test]
    fn walks_everything_in_bounded_steps_past_a_slow_reader() {
        let t = table(5000);
        let (ids, matched, steps) = run(&t, Match::default(), false, 1);
        assert_eq!(matched, 5000);
        assert_eq!(ids, (0..5000).collect::<Vec<u64>>());
        assert!(steps >= 3, "10000 slots take several bounded steps");
    }

    #[test]
    fn filters_and_counts() {
        let t = table(300);
        let f = Match {
            origin: Some(Origin::Outside),
            destination: Some("10.0.1.0/32".parse().unwrap()),
            ..Match::default()
        };
        let (ids, matched, _) = run(&t, f.clone(), false, 4);
        assert!(ids.iter().all(|i| i % 2 == 1 && i % 3 == 0));
        assert_eq!(matched, ids.len() as u64);
        assert_eq!(matched, 50);
        let (ids, counted, _) = run(&t, f, true, 4);
        assert!(ids.is_empty());
        assert_eq!(counted, 50);
    }

    #[test]
    fn unknown_names_are_refused() {
        let q = Query {
            service_set: Some("nope".into()),
            ..Query::default()
        };
        let e = Match::compile(&q, &["lab".into()], "in0", "out0").unwrap_err();
        assert!(e.contains("configured: lab"), "{e}");
        let q = Query {
            interface: Some("eth9".into()),
            ..Query::default()
        };
        assert!(
            Match::compile(&q, &[], "in0", "out0")
                .unwrap_err()
                .contains("in0 or out0")
        );
    }
}

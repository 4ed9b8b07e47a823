//! The node's state that every thread may read: whether this node is the
//! active one, whether the XDP program forwards, the role epoch workers
//! follow, the sync link's state, the last probes, and the operator's
//! mastership requests on their way to the redundancy driver.
//!
//! Design: a leaf. It imports no thread's module, so the redundancy
//! driver that writes it and the workers, sync and control threads that
//! read it depend on it and never on each other.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc,
    },
};

use tandem_control::ha::probe::Record;

/// State shared by the redundancy, sync, netlink, control and worker
/// threads.
#[derive(Debug, Default)]
pub struct Node {
    /// This node sends its sessions (MASTER); else it installs the peer's.
    pub active: AtomicBool,
    /// The XDP program forwards service traffic.
    pub forward: AtomicBool,
    /// The role epoch: changes of `forward`, counted, times two, plus
    /// `forward`. A worker that sees it move re-examines its offloads
    /// (takes them back; on becoming MASTER, offloads every established
    /// session it holds).
    pub role: AtomicU64,
    /// The sync link's state (0 off, 1 cold, 2 hot), for the heartbeat.
    pub sync_state: AtomicU8,
    /// The last finished probes, for `tandemstat -p`.
    pub probes: Mutex<ProbeLog>,
    /// A fault injected by a test (`tandemctl debug panic`): the thread
    /// of this number ([`tandem_control::ctl::Thread`]) panics; 0 none.
    pub fault: AtomicU8,
    /// A fault injected by a test (`tandemctl debug hang workers`): the
    /// workers stop making progress, as a wedged data path would.
    pub hang_workers: AtomicBool,
}

impl Node {
    /// Panics if a test asked this thread to (a half-dead daemon must
    /// not be possible: the panic hook ends the process).
    pub fn check_fault(&self, t: tandem_control::ctl::Thread) {
        if self.fault.load(Ordering::Relaxed) == t as u8 {
            self.fault.store(0, Ordering::Relaxed);
            panic!("fault injected: the {} thread panics", t.name());
        }
    }
}

impl Node {
    /// Records whether the XDP program forwards service traffic, and
    /// moves the role epoch.
    pub fn set_forward(&self, on: bool) {
        self.forward.store(on, Ordering::Relaxed);
        let changes = (self.role.load(Ordering::Relaxed) >> 1) + 1;
        self.role
            .store(changes << 1 | u64::from(on), Ordering::Release);
    }

    /// Whether a role epoch says the node forwards.
    pub fn forwards(role: u64) -> bool {
        role & 1 == 1
    }
}

/// Finished probes, newest last, each numbered in the order they finished.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// Number of the next record.
    pub next: u64,
    /// (number, interface, record).
    pub records: VecDeque<(u64, String, Record)>,
}

impl ProbeLog {
    /// Records kept; `tandemstat -p` asks twice a second, and probes go
    /// out at most 50 a second per interface.
    pub const KEEP: usize = 1024;

    pub fn push(&mut self, iface: &str, r: Record) {
        if self.records.len() == Self::KEEP {
            self.records.pop_front();
        }
        self.records.push_back((self.next, iface.to_owned(), r));
        self.next += 1;
    }
}

/// An operator's mastership request (`tandemctl request acquire|release`)
/// and where its one-line answer goes.
#[derive(Debug)]
pub struct MastershipRequest {
    /// Acquire mastership (else release it).
    pub acquire: bool,
    /// Override the health and peer checks.
    pub force: bool,
    pub reply: mpsc::Sender<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_epoch_moves_on_every_change_and_carries_the_flag() {
        let n = Node::default();
        assert!(!Node::forwards(n.role.load(Ordering::Relaxed)));
        n.set_forward(true);
        let first = n.role.load(Ordering::Relaxed);
        assert!(Node::forwards(first) && n.forward.load(Ordering::Relaxed));
        n.set_forward(true);
        let second = n.role.load(Ordering::Relaxed);
        assert_ne!(first, second, "a repeated takeover still moves the epoch");
        n.set_forward(false);
        assert!(!Node::forwards(n.role.load(Ordering::Relaxed)));
    }

    #[test]
    fn the_probe_log_keeps_the_newest() {
        let mut log = ProbeLog::default();
        let r = Record {
            seq: 0,
            target: std::net::Ipv4Addr::LOCALHOST,
            sent_ns: 0,
            net_rtt_us: None,
            rtt_us: None,
            avg_us: None,
            dev_us: None,
        };
        for _ in 0..ProbeLog::KEEP + 5 {
            log.push("in0", r);
        }
        assert_eq!(log.records.len(), ProbeLog::KEEP);
        assert_eq!(log.records.front().unwrap().0, 5);
        assert_eq!(log.next, (ProbeLog::KEEP + 5) as u64);
    }
}

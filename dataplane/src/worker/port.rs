//! A worker's AF_XDP sockets and the frames that circulate through them:
//! the free pool, the fill rings and the completion rings.

use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue};

use super::Worker;
use crate::counters::{Tally, WorkerCounter};

/// One AF_XDP socket of a worker: an (interface, queue) pair.
pub struct Port {
    /// Interface slot (index into the daemon's interface list).
    pub slot: usize,
    pub ifindex: u32,
    pub queue: u32,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fq: FillQueue,
    pub cq: CompQueue,
}

impl Port {
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

impl Worker {
    /// Puts `per_port` frames on every fill ring. Call before the XDP program
    /// is attached so no frame arrives to an empty ring.
    pub fn prime(&mut self, per_port: usize) {
        for p in &mut self.ports {
            let n = per_port.min(self.free.len());
            let at = self.free.len() - n;
            // SAFETY: the frames come from this worker's UMEM and are on no
            // other ring.
            let done = unsafe { p.fq.produce(&self.free[at..]) };
            self.free.truncate(self.free.len() - done);
        }
    }

    /// Takes the frames the kernel has transmitted back into the free pool.
    pub(super) fn reap_completions(&mut self, comp: &mut [FrameDesc]) {
        for p in &mut self.ports {
            loop {
                // SAFETY: completions return frames this worker transmitted.
                let n = unsafe { p.cq.consume(comp) };
                self.free.extend_from_slice(&comp[..n]);
                if n < comp.len() {
                    break;
                }
            }
        }
    }

    /// Tops up every fill ring from the free pool, a batch at a time.
    pub(super) fn refill(&mut self, tally: &mut Tally) {
        for p in &mut self.ports {
            // nb_free may report the whole ring; top up one batch at a time.
            let want = (p.fq.nb_free(self.batch as u32) as usize).min(self.batch);
            if want == 0 {
                continue;
            }
            let n = want.min(self.free.len());
            if n < want {
                tally.add(WorkerCounter::FillShort, 1);
            }
            if n == 0 {
                continue;
            }
            let at = self.free.len() - n;
            // SAFETY: frames from the free pool are on no ring.
            let done = unsafe { p.fq.produce(&self.free[at..]) };
            self.free.truncate(self.free.len() - done);
        }
    }
}

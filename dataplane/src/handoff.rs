//! Handing frames to the worker that owns their flow.
//!
//! Design: a frame lives in its receiving worker's UMEM, which the owner
//! cannot transmit from, so a handoff copies it into a parcel: a buffer
//! from a shared pool, allocated at start. Parcels travel in one bounded
//! lock-free queue per owner (crossbeam's `ArrayQueue`) and go back to the
//! pool once the owner copied them into its own UMEM. A full queue or an
//! empty pool drops the frame (`drop.handoff_full`). An owner asleep in
//! poll() is woken through its eventfd, and only then: a sleeping flag
//! keeps the wakeup syscall off the common path.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::{
    listing::Job,
    sys::{EventFd, SyscallError},
};

/// A frame on its way to its owner.
pub struct Parcel {
    /// Interface slot and ifindex it arrived on.
    pub slot: usize,
    pub ingress: u32,
    pub len: usize,
    pub data: Box<[u8]>,
}

/// One worker's inbox: frames it owns, and listing jobs.
struct Inbox {
    queue: ArrayQueue<Box<Parcel>>,
    jobs: ArrayQueue<Job>,
    sleeping: AtomicBool,
    wake: EventFd,
}

/// The handoff queues of all workers and their shared parcel pool.
pub struct Handoff {
    inboxes: Vec<Inbox>,
    pool: ArrayQueue<Box<Parcel>>,
}

impl Handoff {
    /// Queues of `depth` parcels per worker, parcels of `frame_size` bytes.
    pub fn new(workers: usize, depth: usize, frame_size: usize) -> Result<Self, SyscallError> {
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            inboxes.push(Inbox {
                queue: ArrayQueue::new(depth),
                jobs: ArrayQueue::new(4),
                sleeping: AtomicBool::new(false),
                wake: EventFd::new()?,
            });
        }
        let total = workers * depth;
        let pool = ArrayQueue::new(total);
        for _ in 0..total {
            let parcel = Box::new(Parcel {
                slot: 0,
                ingress: 0,
                len: 0,
                data: vec![0u8; frame_size].into_boxed_slice(),
            });
            let _ = pool.push(parcel);
        }
        Ok(Self { inboxes, pool })
    }

    /// The descriptor worker `w` adds to its poll set.
    pub fn wake_fd(&self, w: usize) -> i32 {
        self.inboxes[w].wake.fd()
    }

    /// Copies `frame` into a parcel for worker `to`. False: no parcel free
    /// or `to`'s queue is full; the caller drops and counts.
    pub fn send(&self, to: usize, slot: usize, ingress: u32, frame: &[u8]) -> bool {
        let Some(mut p) = self.pool.pop() else {
            return false;
        };
        if frame.len() > p.data.len() {
            let _ = self.pool.push(p);
            return false;
        }
        p.data[..frame.len()].copy_from_slice(frame);
        p.len = frame.len();
        p.slot = slot;
        p.ingress = ingress;
        let inbox = &self.inboxes[to];
        if let Err(p) = inbox.queue.push(p) {
            let _ = self.pool.push(p);
            return false;
        }
        if inbox.sleeping.swap(false, Ordering::SeqCst) {
            inbox.wake.signal();
        }
        true
    }

    /// The next parcel for worker `w`.
    #[inline]
    pub fn recv(&self, w: usize) -> Option<Box<Parcel>> {
        self.inboxes[w].queue.pop()
    }

    /// Returns a received parcel to the pool.
    #[inline]
    pub fn recycle(&self, p: Box<Parcel>) {
        let _ = self.pool.push(p);
    }

    /// Posts a listing job to worker `w` and wakes it. Errs (returning the
    /// job) when `w` already has four waiting.
    pub fn post_job(&self, w: usize, job: Job) -> Result<(), Job> {
        self.inboxes[w].jobs.push(job)?;
        self.inboxes[w].wake.signal();
        Ok(())
    }

    pub fn take_job(&self, w: usize) -> Option<Job> {
        self.inboxes[w].jobs.pop()
    }

    /// Worker `w` is about to sleep: true if it may (nothing queued). A
    /// sender that queues after this sees the flag and wakes it.
    pub fn prepare_sleep(&self, w: usize) -> bool {
        let inbox = &self.inboxes[w];
        inbox.sleeping.store(true, Ordering::SeqCst);
        if inbox.queue.is_empty() && inbox.jobs.is_empty() {
            true
        } else {
            inbox.sleeping.store(false, Ordering::SeqCst);
            false
        }
    }

    /// Worker `w` woke up.
    pub fn awake(&self, w: usize) {
        let inbox = &self.inboxes[w];
        inbox.sleeping.store(false, Ordering::SeqCst);
        inbox.wake.drain();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread, time::Duration};

    use super::*;
    use crate::sys::Poller;

    #[test]
    fn parcels_arrive_intact_and_return_to_the_pool() {
        let h = Handoff::new(2, 4, 64).unwrap();
        assert!(h.send(1, 0, 7, &[1, 2, 3]));
        let p = h.recv(1).unwrap();
        assert_eq!((&p.data[..p.len], p.ingress), (&[1u8, 2, 3][..], 7));
        assert!(h.recv(0).is_none());
        h.recycle(p);
        for _ in 0..4 {
            assert!(h.send(0, 0, 1, &[0]));
        }
        assert!(!h.send(0, 0, 1, &[0]), "queue of 4 is full");
        assert!(!h.send(1, 0, 1, &[0; 65]), "larger than a parcel");
    }

    #[test]
    fn a_sleeping_owner_is_woken() {
        let h = Arc::new(Handoff::new(2, 4, 64).unwrap());
        assert!(h.prepare_sleep(1));
        let mut poller = Poller::new(&[h.wake_fd(1)]);
        let sender = {
            let h = Arc::clone(&h);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                assert!(h.send(1, 0, 1, &[9]));
            })
        };
        assert!(poller.wait(Duration::from_secs(5)), "not woken");
        h.awake(1);
        assert!(h.recv(1).is_some());
        sender.join().unwrap();
        // Something queued: the owner must not sleep.
        assert!(h.send(1, 0, 1, &[9]));
        assert!(!h.prepare_sleep(1));
    }
}

//! What the threads hand each other besides the node's state: frames to
//! the worker that owns their flow, session-listing jobs from the control
//! thread ([`listing`]), and wakeups of a worker asleep in poll().
//!
//! Design: a frame lives in its receiving worker's UMEM, which the owner
//! cannot transmit from, so a handoff copies it into a batch: a buffer of
//! up to `batch` frames, allocated at start and owned by the receiving
//! side's inbox. A sender fills one batch per destination while it works
//! through its rx rings and posts the filled batches once per loop
//! (`flush`), holding a partial batch back while its owner still has
//! earlier ones to take; the owner empties them and gives them back.
//! Batches travel
//! in bounded lock-free queues (crossbeam's `ArrayQueue`), so the shared
//! cache lines are touched once per batch, not once per frame. No free
//! batch drops the frame (`drop.handoff_full`). An owner asleep in poll()
//! is woken through its eventfd, and only then: a sleeping flag keeps the
//! wakeup syscall off the common path.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;

pub mod listing;

use self::listing::Job;
use crate::sys::{EventFd, SyscallError};

/// Where a handed frame came from, and where its bytes are in the batch.
#[derive(Clone, Copy, Debug)]
pub struct Parcel {
    /// Interface slot and ifindex it arrived on.
    pub slot: usize,
    pub ingress: u32,
    start: usize,
    len: usize,
}

/// Up to `capacity` frames on their way to one owner.
pub struct Batch {
    parcels: Vec<Parcel>,
    bytes: Vec<u8>,
    /// Frames it holds: `bytes` has room for this many of `frame_size`, so
    /// filling it never reallocates.
    capacity: usize,
    frame_size: usize,
}

impl Batch {
    fn new(capacity: usize, frame_size: usize) -> Self {
        Self {
            parcels: Vec::with_capacity(capacity),
            bytes: Vec::with_capacity(capacity * frame_size),
            capacity,
            frame_size,
        }
    }

    fn is_full(&self) -> bool {
        self.parcels.len() == self.capacity
    }

    /// The frames in the order they were handed, with their bytes.
    pub fn frames(&self) -> impl Iterator<Item = (&Parcel, &[u8])> {
        self.parcels
            .iter()
            .map(|p| (p, &self.bytes[p.start..p.start + p.len]))
    }

    pub fn len(&self) -> usize {
        self.parcels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parcels.is_empty()
    }
}

/// One worker's inbox: batches of frames it owns, the empty batches
/// senders fill for it, and listing jobs.
struct Inbox {
    full: ArrayQueue<Box<Batch>>,
    empty: ArrayQueue<Box<Batch>>,
    jobs: ArrayQueue<Job>,
    sleeping: AtomicBool,
    wake: EventFd,
}

/// The inboxes of all workers.
pub struct Handoff {
    inboxes: Vec<Inbox>,
}

/// A sender's batches being filled, one slot per destination worker. Each
/// worker owns one.
pub struct Outbox {
    staged: Vec<Option<Box<Batch>>>,
}

impl Handoff {
    /// `batches` batches of `batch` frames of up to `frame_size` bytes per
    /// worker: a worker can have `batches * batch` frames waiting.
    pub fn new(
        workers: usize,
        batches: usize,
        batch: usize,
        frame_size: usize,
    ) -> Result<Self, SyscallError> {
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let empty = ArrayQueue::new(batches);
            for _ in 0..batches {
                let _ = empty.push(Box::new(Batch::new(batch, frame_size)));
            }
            inboxes.push(Inbox {
                full: ArrayQueue::new(batches),
                empty,
                jobs: ArrayQueue::new(4),
                sleeping: AtomicBool::new(false),
                wake: EventFd::new()?,
            });
        }
        Ok(Self { inboxes })
    }

    /// An outbox for one sender.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            staged: (0..self.inboxes.len()).map(|_| None).collect(),
        }
    }

    /// The descriptor worker `w` adds to its poll set.
    pub fn wake_fd(&self, w: usize) -> i32 {
        self.inboxes[w].wake.fd()
    }

    /// Copies `frame` into the batch `out` fills for worker `to`; posts the
    /// batch when it is full. False: no batch free or the frame is larger
    /// than a parcel; the caller drops and counts.
    pub fn send(
        &self,
        out: &mut Outbox,
        to: usize,
        slot: usize,
        ingress: u32,
        frame: &[u8],
    ) -> bool {
        let staged = &mut out.staged[to];
        if staged.is_none() {
            *staged = self.inboxes[to].empty.pop();
        }
        let Some(batch) = staged.as_mut() else {
            return false;
        };
        if frame.len() > batch.frame_size {
            return false;
        }
        batch.parcels.push(Parcel {
            slot,
            ingress,
            start: batch.bytes.len(),
            len: frame.len(),
        });
        batch.bytes.extend_from_slice(frame);
        if batch.is_full() {
            self.post(out, to);
        }
        true
    }

    /// Posts the batches `out` has begun whose owners have taken all they
    /// were sent before. An owner that is behind (off its core, on a
    /// shared machine) gets full batches instead of one per sender loop,
    /// so the batches in flight hold more frames before any drop. Senders
    /// call it once per loop.
    pub fn flush(&self, out: &mut Outbox) {
        self.post_begun(out, false);
    }

    /// Posts every batch `out` has begun, however far behind its owner is.
    /// A sender calls it before it sleeps, so no frame waits on its nap.
    pub fn flush_all(&self, out: &mut Outbox) {
        self.post_begun(out, true);
    }

    fn post_begun(&self, out: &mut Outbox, even_if_behind: bool) {
        for to in 0..out.staged.len() {
            if out.staged[to].as_ref().is_some_and(|b| !b.is_empty())
                && (even_if_behind || self.inboxes[to].full.is_empty())
            {
                self.post(out, to);
            }
        }
    }

    fn post(&self, out: &mut Outbox, to: usize) {
        let Some(batch) = out.staged[to].take() else {
            return;
        };
        let inbox = &self.inboxes[to];
        // Cannot fail: the queue holds as many batches as exist.
        let _ = inbox.full.push(batch);
        if inbox.sleeping.swap(false, Ordering::SeqCst) {
            inbox.wake.signal();
        }
    }

    /// The next batch for worker `w`.
    #[inline]
    pub fn recv(&self, w: usize) -> Option<Box<Batch>> {
        self.inboxes[w].full.pop()
    }

    /// Worker `w` gives an emptied batch back for reuse.
    #[inline]
    pub fn recycle(&self, w: usize, mut batch: Box<Batch>) {
        batch.parcels.clear();
        batch.bytes.clear();
        let _ = self.inboxes[w].empty.push(batch);
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

    /// Wakes worker `w` if it sleeps (something else was queued for it).
    pub fn nudge(&self, w: usize) {
        let inbox = &self.inboxes[w];
        if inbox.sleeping.swap(false, Ordering::SeqCst) {
            inbox.wake.signal();
        }
    }

    /// Worker `w` is about to sleep: true if it may (nothing queued). A
    /// sender that queues after this sees the flag and wakes it.
    pub fn prepare_sleep(&self, w: usize) -> bool {
        let inbox = &self.inboxes[w];
        inbox.sleeping.store(true, Ordering::SeqCst);
        if inbox.full.is_empty() && inbox.jobs.is_empty() {
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

    fn frames(b: &Batch) -> Vec<(u32, Vec<u8>)> {
        b.frames().map(|(p, f)| (p.ingress, f.to_vec())).collect()
    }

    #[test]
    fn frames_arrive_intact_in_order_and_batches_return() {
        // 2 batches of 3 frames of up to 64 bytes per worker.
        let h = Handoff::new(2, 2, 3, 64).unwrap();
        let mut out = h.outbox();
        assert!(h.send(&mut out, 1, 0, 7, &[1, 2, 3]));
        assert!(h.send(&mut out, 1, 0, 8, &[4]));
        assert!(h.recv(1).is_none(), "nothing is posted before a flush");
        h.flush(&mut out);
        let b = h.recv(1).unwrap();
        assert_eq!(frames(&b), vec![(7, vec![1, 2, 3]), (8, vec![4])]);
        assert!(h.recv(0).is_none());
        h.recycle(1, b);
        assert!(!h.send(&mut out, 1, 0, 1, &[0; 65]), "larger than a parcel");
        // A full batch posts itself; 2 x 3 frames is all worker 0 can hold.
        for i in 0..6 {
            assert!(h.send(&mut out, 0, 0, i, &[0]), "frame {i}");
        }
        assert!(!h.send(&mut out, 0, 0, 6, &[0]), "no batch free");
        let b = h.recv(0).unwrap();
        assert_eq!(b.len(), 3);
        h.recycle(0, b);
        assert!(
            h.send(&mut out, 0, 0, 6, &[0]),
            "a returned batch is reused"
        );
        // Worker 0 has not taken its full batch: the partial one waits.
        h.flush(&mut out);
        let full = h.recv(0).unwrap();
        assert_eq!(full.len(), 3);
        h.recycle(0, full);
        assert!(h.recv(0).is_none(), "held back while the owner was behind");
        assert!(h.send(&mut out, 0, 0, 7, &[0]));
        h.flush(&mut out);
        let last = h.recv(0).unwrap();
        assert_eq!(frames(&last), vec![(6, vec![0]), (7, vec![0])]);
        h.recycle(0, last);
        // Before a sender sleeps everything goes, backlog or not.
        for i in 0..4 {
            assert!(h.send(&mut out, 0, 0, i, &[0]));
        }
        h.flush_all(&mut out);
        assert_eq!(h.recv(0).unwrap().len(), 3, "the full one");
        assert_eq!(h.recv(0).unwrap().len(), 1, "and the partial one");
    }

    #[test]
    fn a_sleeping_owner_is_woken() {
        let h = Arc::new(Handoff::new(2, 4, 4, 64).unwrap());
        assert!(h.prepare_sleep(1));
        let mut poller = Poller::new(&[h.wake_fd(1)]);
        let sender = {
            let h = Arc::clone(&h);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                let mut out = h.outbox();
                assert!(h.send(&mut out, 1, 0, 1, &[9]));
                h.flush(&mut out);
            })
        };
        assert!(poller.wait(Duration::from_secs(5)), "not woken");
        h.awake(1);
        assert!(h.recv(1).is_some());
        sender.join().unwrap();
        // Something queued: the owner must not sleep.
        let mut out = h.outbox();
        assert!(h.send(&mut out, 1, 0, 1, &[9]));
        h.flush(&mut out);
        assert!(!h.prepare_sleep(1));
    }
}

//! The clock the XDP program stamps `last_seen` with (the `TND_CLOCK`
//! map), mapped into this process.
//!
//! Design: the program reads this word instead of calling a kernel clock
//! per packet (the helper cost more than the rest of the stamping); every
//! worker moves it forward once per loop, so a stamp is at most one idle
//! worker's nap (100 ms) old, and aging works in seconds.
#![expect(
    unsafe_code,
    reason = "the clock is a word of a BPF array mapped into this process"
)]

use std::{
    io,
    os::fd::OwnedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use tandem_common::FLOW_TICK_SHIFT;

use crate::sys;

/// The length of [`Clock`]'s mapping: the kernel maps array values in
/// whole pages.
const CLOCK_LEN: usize = 4096;

/// The clock the program stamps `last_seen` with (the `TND_CLOCK` map),
/// mapped into this process. The program reads it instead of a kernel
/// clock; every worker moves it forward once per loop
/// ([`FLOW_TICK_SHIFT`]).
#[derive(Debug)]
pub struct Clock {
    page: NonNull<AtomicU32>,
}

// SAFETY: the mapping is shared memory reached only through an atomic.
unsafe impl Send for Clock {}

impl Drop for Clock {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once; nothing refers
        // into it after the drop.
        unsafe { sys::unmap(self.page, CLOCK_LEN) };
    }
}

impl Clock {
    /// Maps the clock behind `fd` (an mmapable array of one `u32`).
    pub fn new(fd: &OwnedFd) -> io::Result<Self> {
        Ok(Self {
            page: sys::map_shared(fd, CLOCK_LEN)?,
        })
    }

    fn cell(&self) -> &AtomicU32 {
        // SAFETY: the first (aligned) word of the mapping, only accessed
        // atomically here; the program reads it whole.
        unsafe { self.page.as_ref() }
    }

    /// The tick the program stamps now.
    pub fn tick(&self) -> u32 {
        self.cell().load(Ordering::Relaxed)
    }

    /// Sets the clock to `tick` as it is, back or forth (tests: the
    /// workers only [`Self::advance`] it).
    pub fn set(&self, tick: u32) {
        self.cell().store(tick, Ordering::Relaxed);
    }

    /// Moves the clock to CLOCK_MONOTONIC_COARSE `now_ns`, never back:
    /// workers advance it each from its own reading, and a worker that
    /// read the time before another stored a later one leaves it. Tick 0
    /// means "never seen", so it is skipped.
    pub fn advance(&self, now_ns: u64) {
        #[expect(clippy::cast_possible_truncation, reason = "ticks wrap")]
        let tick = ((now_ns >> FLOW_TICK_SHIFT) as u32).max(1);
        let cell = self.cell();
        let mut cur = cell.load(Ordering::Relaxed);
        // Ahead means less than half the ring ahead; 0 is the unset clock.
        while cur == 0 || tick.wrapping_sub(cur).wrapping_sub(1) < u32::MAX / 2 {
            match cell.compare_exchange_weak(cur, tick, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::testutil::memfd;

    /// A memfd page mapped as the clock.
    fn clock() -> Clock {
        Clock::new(&memfd(4096)).unwrap()
    }

    #[test]
    fn the_clock_only_moves_forward_and_never_to_zero() {
        let c = clock();
        let ns = |tick: u32| u64::from(tick) << FLOW_TICK_SHIFT;
        assert_eq!(c.tick(), 0);
        // Unset, it takes any time, even one more than half the ring on.
        c.advance(ns(0x9000_0000));
        assert_eq!(c.tick(), 0x9000_0000);
        c.advance(ns(0x9000_0005));
        assert_eq!(c.tick(), 0x9000_0005);
        // A worker that read the time earlier leaves it.
        c.advance(ns(0x9000_0001));
        assert_eq!(c.tick(), 0x9000_0005);
        // Across the wrap; tick 0 ("never seen") is skipped.
        c.set(u32::MAX - 1);
        c.advance(1 << 32 << FLOW_TICK_SHIFT);
        assert_eq!(c.tick(), 1);
        c.advance(ns(3));
        assert_eq!(c.tick(), 3);
        // Half the ring or more ahead reads as behind.
        c.advance(ns(3 + u32::MAX / 2 + 1));
        assert_eq!(c.tick(), 3);
    }
}

//! Rate limits on what the node originates or hands to the kernel.

use std::time::{Duration, Instant};

/// A token bucket: `rate` events per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u32,
    tokens: u32,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// A new rate from now on; the tokens left stay within it.
    pub fn set_rate(&mut self, rate: u32) {
        self.rate = rate;
        self.tokens = self.tokens.min(rate);
    }

    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(10) {
            let add = u64::from(self.rate) * elapsed.as_millis() as u64 / 1000;
            if add > 0 {
                self.tokens = (u64::from(self.tokens) + add).min(u64::from(self.rate)) as u32;
                self.last = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Per-worker state the decision needs besides the frame and the FIB.
#[derive(Debug)]
pub struct Limits {
    pub icmp: RateLimit,
    pub punt: RateLimit,
    /// Firewall rejects (resets and unreachables) sent.
    pub reject: RateLimit,
}

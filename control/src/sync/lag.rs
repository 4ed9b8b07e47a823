//! Replication lag: how long the active's records took from entering a
//! batch to the backup's acknowledgement, as a histogram of log-linear
//! buckets (four per power of two of microseconds, so a quantile is
//! within 25%) over two windows: the current one and the one before, so a
//! quantile always covers 10 to 20 seconds of traffic.

use std::time::{Duration, Instant};

const BUCKETS: usize = 160;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Lag {
    windows: [[u64; BUCKETS]; 2],
    /// When the current window began.
    began: Option<Instant>,
}

impl Default for Lag {
    fn default() -> Self {
        Self {
            windows: [[0; BUCKETS]; 2],
            began: None,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let sub = (us >> (e - 2)) as usize & 3;
    (4 + (e - 2) * 4 + sub).min(BUCKETS - 1)
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let (e, sub) = ((i - 4) / 4 + 2, (i - 4) % 4);
    ((4 + sub as u64 + 1) << (e - 2)) - 1
}

impl Lag {
    /// `n` records acknowledged `us` microseconds after they were batched.
    pub fn record(&mut self, now: Instant, us: u64, n: u64) {
        let began = *self.began.get_or_insert(now);
        if now.saturating_duration_since(began) >= WINDOW {
            self.windows[1] = self.windows[0];
            self.windows[0] = [0; BUCKETS];
            self.began = Some(now);
        }
        self.windows[0][bucket(us)] += n;
    }

    /// The `q` quantile (0..=1) in microseconds, as its bucket's upper
    /// bound; 0 without samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.windows.iter().flatten().sum();
        if total == 0 {
            return 0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank among at most 2^64 samples"
        )]
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += self.windows[0][i] + self.windows[1][i];
            if seen >= rank {
                return upper(i);
            }
        }
        upper(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_quarter() {
        for us in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            999,
            1000,
            1500,
            2047,
            2048,
            1 << 30,
        ] {
            let i = bucket(us);
            assert!(upper(i) >= us, "{us}");
            assert!(upper(i) <= us + us / 4 + 1, "{us}: {}", upper(i));
            if i > 0 {
                assert!(upper(i - 1) < us, "{us}");
            }
        }
    }

    #[test]
    fn quantiles_over_two_windows() {
        let t = Instant::now();
        let mut l = Lag::default();
        assert_eq!(l.quantile(0.5), 0);
        l.record(t, 100, 98);
        l.record(t, 5000, 2);
        assert!((100..=125).contains(&l.quantile(0.5)));
        assert!((100..=125).contains(&l.quantile(0.98)));
        assert!((5000..=6250).contains(&l.quantile(0.99)));
        // A window later the old samples still count; two later, gone.
        l.record(t + WINDOW, 1000, 100);
        assert!((5000..=6250).contains(&l.quantile(0.995)));
        l.record(t + WINDOW * 2, 1000, 1);
        assert!((1000..=1250).contains(&l.quantile(0.999)));
    }
}

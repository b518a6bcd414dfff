//! Backoff with jitter: the one schedule every retry loop of the functions uses (contended
//! DynamoDB writes in [`crate::store`], the conversations worker's calls to the agents API).
//!
//! Retrying in lockstep makes contention worse: two writers that collided and retry after the
//! same delay collide again. The delays here grow exponentially and carry a random part, so
//! concurrent callers spread out (AWS Architecture Blog, "Exponential Backoff And Jitter").

use std::time::Duration;

/// Exponential backoff with "equal jitter": the delay before retry `n` (0-based) is half of
/// `base * 2^n` (capped at `max`) plus a random part of the other half. Delays therefore grow
/// from one retry to the next even with jitter, and concurrent callers spread out instead of
/// retrying in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry `retry` (0-based); `random` is uniform in `[0, 1)`.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        let full = self
            .base
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max);
        let half = full / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }

    /// Sleeps for [`Backoff::delay`] of `retry`, with fresh randomness.
    pub async fn wait(&self, retry: u32) {
        tokio::time::sleep(self.delay(retry, random_unit())).await;
    }
}

/// A uniform random number in `[0, 1)` from the OS generator (through `uuid`'s v4).
pub fn random_unit() -> f64 {
    // The low 64 bits of a v4 UUID are random but for the two variant bits at the top.
    let low = uuid::Uuid::new_v4().as_u128() as u64;
    let bits = (low << 2) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_exponentially_with_bounded_jitter() {
        let b = Backoff {
            base: 100 * MS,
            max: 1_000 * MS,
        };
        assert_eq!(b.delay(0, 0.0), 50 * MS);
        assert_eq!(b.delay(0, 0.999_999).as_millis(), 99);
        assert_eq!(b.delay(1, 0.0), 100 * MS);
        assert_eq!(b.delay(2, 0.5), 300 * MS);
        // Even the shortest delay of a retry is no shorter than the longest of the one before.
        for n in 0..3 {
            assert!(b.delay(n + 1, 0.0) >= b.delay(n, 0.999));
        }
        assert_eq!(b.delay(10, 1.0), 1_000 * MS, "capped");
        assert_eq!(b.delay(40, 0.0), 500 * MS, "no overflow");
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }
}

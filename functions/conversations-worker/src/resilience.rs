//! A circuit breaker for calls to another service: a pure state machine over caller-given
//! instants, so it is unit-tested without clocks or sockets. (Retry delays: [`shared::retry`].)

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting one probe through.
    pub cool_down: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`; if it never reports (its future was dropped),
    /// another is let through after a cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// A circuit breaker kept per warm instance: after `failure_threshold` consecutive failures it
/// opens and calls fail at once (no socket, no wait) until `cool_down` has passed; then one
/// probe goes through (half-open): its success closes the breaker, its failure opens it again.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is always valid; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make one attempt now.
    pub fn acquire(&self, now: Instant) -> Result<(), Open> {
        let mut state = self.lock();
        let ready_at = match *state {
            State::Closed { .. } => return Ok(()),
            State::Open { until } => until,
            State::HalfOpen { since } => since + self.config.cool_down,
        };
        if now < ready_at {
            return Err(Open);
        }
        *state = State::HalfOpen { since: now };
        Ok(())
    }

    /// The service answered (any answer that is not a server error).
    pub fn succeeded(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// The attempt failed (server error, timeout, connection refused).
    pub fn failed(&self, now: Instant) {
        let mut state = self.lock();
        let open = State::Open {
            until: now + self.config.cool_down,
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            _ => open,
        };
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A closed breaker that opens after `failure_threshold` failures, for a cool-down of 1 s.
    fn breaker(failure_threshold: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold,
            cool_down: 1_000 * MS,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_short_circuits() {
        let br = breaker(3);
        let t0 = Instant::now();
        br.failed(t0);
        br.failed(t0);
        br.succeeded();
        br.failed(t0);
        br.failed(t0);
        assert_eq!(
            br.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        br.failed(t0);
        assert_eq!(br.state(), BreakerState::Open);
        assert_eq!(br.acquire(t0 + 999 * MS), Err(Open));
    }

    #[test]
    fn half_opens_after_cool_down_with_one_probe_then_closes_or_reopens() {
        let br = breaker(1);
        let t0 = Instant::now();
        br.failed(t0);
        let t1 = t0 + 1_000 * MS;
        assert_eq!(br.acquire(t1), Ok(()), "the probe");
        assert_eq!(br.state(), BreakerState::HalfOpen);
        assert_eq!(br.acquire(t1), Err(Open), "one probe at a time");
        br.failed(t1);
        assert_eq!(br.state(), BreakerState::Open, "a failed probe reopens");
        assert_eq!(br.acquire(t1 + 500 * MS), Err(Open));
        let t2 = t1 + 1_000 * MS;
        assert_eq!(br.acquire(t2), Ok(()));
        br.succeeded();
        assert_eq!(br.state(), BreakerState::Closed);
        assert_eq!(br.acquire(t2), Ok(()));
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let br = breaker(1);
        let t0 = Instant::now();
        br.failed(t0);
        assert_eq!(br.acquire(t0 + 1_000 * MS), Ok(()));
        // The probe never reports; after another cool-down a new probe is allowed.
        assert_eq!(br.acquire(t0 + 1_500 * MS), Err(Open));
        assert_eq!(br.acquire(t0 + 2_000 * MS), Ok(()));
    }
}

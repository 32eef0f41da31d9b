//! The retry budget: retries (attempts after a request's first) may be at most a share of the
//! requests, plus a small allowance per second. A struggling backend makes requests fail; with
//! a fixed number of retries per request each failure multiplies its load, a retry storm that
//! keeps it down. With a budget, once the budget is spent a request that would retry gets the
//! fallback list at once (Finagle's `RetryBudget`, the gRPC retry throttling of gRFC A6).

use std::sync::Mutex;
use std::time::Instant;

/// Tokens the budget holds at most: the retries a burst may spend after a quiet spell.
const MAX_TOKENS: f64 = 100.0;

/// A token bucket filled by requests (`ratio` per request) and by time (`per_second`).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    per_second: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `per_second` (validated: finite, ≥ 0),
    /// starting with one second's allowance.
    pub fn new(ratio: f64, per_second: f64) -> Self {
        let tokens = per_second.min(MAX_TOKENS);
        Self { ratio, per_second, state: Mutex::new(State { tokens, refilled: Instant::now() }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived: it earns `ratio` of a retry.
    pub fn deposit(&self) {
        let mut s = self.state();
        s.tokens = (s.tokens + self.ratio).min(MAX_TOKENS);
    }

    /// Takes one retry when the budget has one.
    pub fn try_withdraw(&self) -> bool {
        let mut s = self.state();
        let now = Instant::now();
        let earned = now.duration_since(s.refilled).as_secs_f64() * self.per_second;
        s.tokens = (s.tokens + earned).min(MAX_TOKENS);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_once_the_initial_tokens_are_spent() {
        let budget = RetryBudget::new(0.1, 0.0);
        // Every request fails and wants a retry.
        let (requests, mut retries) = (10_000, 0);
        for _ in 0..requests {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        let allowed = (requests as f64 * 0.1) as i32;
        assert!(retries <= allowed, "{retries} retries for {requests} requests (allowed {allowed})");
        assert!(retries >= allowed - 1, "the budget must allow what it earned: {retries} of {allowed}");
    }

    #[test]
    fn time_refills_a_quiet_budget() {
        let budget = RetryBudget::new(0.0, 1_000.0);
        while budget.try_withdraw() {}
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(budget.try_withdraw(), "20 ms at 1000/s earns retries");
    }
}

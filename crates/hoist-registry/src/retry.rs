use std::time::Duration;

/// Bounded exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts after this much time spent on one request.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.max_backoff);
        // Half fixed, half random: spreads retries without ever waiting 0.
        cap / 2 + cap.mul_f64(fastrand::f64() / 2.0)
    }
}

/// One request's retry budget: every attempt of every loop the request
/// goes through (endpoints, `send`, a manifest's body, a blob's resumes)
/// counts against the same `--retries` and `--retry-max-time`.
pub(crate) struct RetryBudget {
    pub(crate) attempts: u32,
    started: std::time::Instant,
}

impl RetryBudget {
    pub(crate) fn new() -> RetryBudget {
        RetryBudget {
            attempts: 0,
            started: std::time::Instant::now(),
        }
    }

    /// Count an attempt.
    pub(crate) fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// Give back an attempt that was no real try (an auth round trip, a
    /// switch from HTTPS to plain HTTP).
    pub(crate) fn refund(&mut self) {
        self.attempts = self.attempts.saturating_sub(1);
    }

    pub(crate) fn allows_another(&self, p: &RetryPolicy) -> bool {
        self.attempts < p.max_attempts && self.started.elapsed() < p.max_elapsed
    }
}

impl crate::client::RegistryClient {
    pub(crate) fn can_retry(&self, b: &RetryBudget) -> bool {
        b.allows_another(&self.options().retry)
    }

    /// The back-off before another attempt; a cancelled call stops here.
    pub(crate) fn pause(
        &self,
        call: &crate::client::Call,
        ctx: &crate::error::ErrorContext,
        b: &RetryBudget,
        why: &str,
    ) -> Result<(), crate::error::RegistryError> {
        let d = self.options().retry.backoff(b.attempts);
        tracing::debug!("retrying in {d:?} after {why}");
        call.cancel
            .sleep(d)
            .map_err(|_| crate::error::RegistryError::Cancelled { ctx: ctx.clone() })
    }
}

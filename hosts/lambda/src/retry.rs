//! Bounded, jittered retries that fit inside the invocation's deadline.
//!
//! The SDK clients are built with their own retries disabled, so this is the only retry loop
//! and its budget is the invocation's: a call is retried on throttling and transient faults
//! with full-jitter exponential backoff, and given up on (and reported as a batch item
//! failure by the caller) when the next attempt would not finish before the deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 8;
const BASE: Duration = Duration::from_millis(25);
const CAP: Duration = Duration::from_secs(2);

/// The time an invocation has left.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    deadline: Instant,
    reserve: Duration,
}

impl Budget {
    /// A budget ending at `deadline`, keeping `reserve` for the response and for reporting
    /// failures.
    pub fn until(deadline: Instant, reserve: Duration) -> Budget {
        Budget { deadline, reserve }
    }

    /// A budget from the Lambda context's deadline (milliseconds since the Unix epoch).
    pub fn from_epoch_ms(deadline_ms: u64) -> Budget {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        // Keep a tenth of the time, at least half a second, for reporting.
        let reserve = (left / 10).max(Duration::from_millis(500));
        Budget::until(Instant::now() + left, reserve)
    }

    /// Time left before the reserve.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.reserve)
    }
}

/// Whether an SDK error is worth another attempt: throttling, 5xx, time-outs and connection
/// failures.
pub fn is_transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            matches!(
                s.err().code(),
                Some(
                    "ProvisionedThroughputExceededException"
                        | "ThrottlingException"
                        | "Throttling"
                        | "RequestLimitExceeded"
                        | "InternalServerError"
                        | "ServiceUnavailable"
                        | "SlowDown"
                        | "RequestThrottled"
                        | "TransactionConflictException"
                )
            ) || s.raw().status().as_u16() >= 500
        }
        _ => false,
    }
}

/// The backoff before attempt `attempt + 1`: uniformly random in `[0, min(CAP, BASE·2^n)]`.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BASE.saturating_mul(1u32 << attempt.min(16)).min(CAP);
    ceiling.mul_f64(fastrand::f64())
}

/// Runs `op` until it succeeds, fails for good, runs out of attempts or would overrun
/// `budget`. `what` names the call in the warning logged before each retry.
pub async fn retry<T, E, F, Fut>(
    budget: &Budget,
    what: &str,
    mut op: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && attempt + 1 < MAX_ATTEMPTS => {
                let wait = backoff(attempt);
                if budget.remaining() <= wait {
                    return Err(e);
                }
                tracing::warn!(call = what, attempt, wait_ms = wait.as_millis() as u64, error = %describe(&e), "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A one-line description of an SDK error: its code and message when the service sent them.
pub fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &SdkError<E, HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("unknown error"),
            s.err().message().unwrap_or("no message")
        ),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for attempt in 0..40 {
            let b = backoff(attempt);
            assert!(b <= CAP, "{b:?}");
            assert!(b <= BASE.saturating_mul(1 << attempt.min(16)));
        }
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(6)).collect();
        assert!(draws.len() > 1, "no jitter");
    }

    #[test]
    fn budget_keeps_its_reserve() {
        let b = Budget::until(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(b.remaining(), Duration::ZERO);
        let b = Budget::until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(1),
        );
        assert!(b.remaining() > Duration::from_secs(8));
    }
}

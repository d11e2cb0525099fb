//! A warn line for each call refused or failed (limits, budget, guardrail, Bedrock), without
//! prompt text, and at most `PER_INTERVAL` per error code each `INTERVAL`: a storm of refusals
//! becomes a few lines and one "suppressed" summary per code.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use crate::{errors::ApiError, metrics::EndpointLabels};

/// How many lines each error code may log per interval.
pub const PER_INTERVAL: u32 = 10;

/// How often suppressed lines are summed up and the allowance renewed.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Window {
    logged: u32,
    suppressed: u64,
}

/// Counts per error code within the current interval.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<BTreeMap<&'static str, Window>>,
}

impl RefusalLog {
    /// Logs `err` for a call to `endpoint` from `pod`, unless its code has used its allowance.
    /// Only the code, status and names: the message may quote Bedrock, which may quote the prompt.
    pub fn record(&self, err: &ApiError, endpoint: &EndpointLabels, pod: &str) {
        let allowed = {
            let Ok(mut windows) = self.windows.lock() else {
                return;
            };
            let window = windows.entry(err.code).or_default();
            if window.logged < PER_INTERVAL {
                window.logged += 1;
                true
            } else {
                window.suppressed += 1;
                false
            }
        };
        if allowed {
            tracing::warn!(
                code = err.code,
                status = err.status.as_u16(),
                namespace = %endpoint.namespace,
                endpoint = %endpoint.endpoint,
                model = %endpoint.model,
                pod,
                "model call refused or failed"
            );
        }
    }

    /// Logs how many lines each code suppressed since the last flush, and renews the allowances.
    pub fn flush(&self) {
        let windows = match self.windows.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => return,
        };
        for (code, window) in windows {
            if window.suppressed > 0 {
                tracing::warn!(
                    code,
                    suppressed = window.suppressed,
                    "suppressed {} more refused or failed calls with this code (at most {PER_INTERVAL} logged per {} s)",
                    window.suppressed,
                    INTERVAL.as_secs()
                );
            }
        }
    }

    /// Flushes every `INTERVAL`, for ever.
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn each_code_has_its_own_allowance_renewed_by_a_flush() {
        let log = RefusalLog::default();
        let labels = EndpointLabels {
            namespace: Arc::from("ns"),
            endpoint: Arc::from("e"),
            model: Arc::from("m"),
        };
        let limited = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "x");
        let budget = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", "x");
        for _ in 0..PER_INTERVAL + 3 {
            log.record(&limited, &labels, "p");
        }
        log.record(&budget, &labels, "p");
        {
            let w = log.windows.lock().unwrap();
            assert_eq!(
                (w["rate_limited"].logged, w["rate_limited"].suppressed),
                (PER_INTERVAL, 3)
            );
            assert_eq!(
                (w["budget_exceeded"].logged, w["budget_exceeded"].suppressed),
                (1, 0)
            );
        }
        log.flush();
        log.record(&limited, &labels, "p");
        let w = log.windows.lock().unwrap();
        assert_eq!(
            (w["rate_limited"].logged, w["rate_limited"].suppressed),
            (1, 0)
        );
    }
}

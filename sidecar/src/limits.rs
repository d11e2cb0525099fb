//! Limits and budgets, enforced locally with no network call on the request path: requests per
//! minute (GCRA via `governor`), tokens per minute (a bucket that is reserved from `maxTokens` and
//! settled with the real count), concurrency (a semaphore), and cost budgets (the worst case is
//! reserved before the call and settled with the real cost after).

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use k8s_ai_api::model_endpoint::{CostBudget, RateLimit};
use rust_decimal::Decimal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{catalog::EndpointConfig, errors::ApiError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A token bucket that can give back what a call reserved but did not use.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    per_second: f64,
    available: f64,
    updated: Instant,
}

impl TokenBucket {
    #[allow(clippy::cast_precision_loss)] // token counts far below 2^52
    fn new(per_minute: u64) -> Self {
        let capacity = per_minute as f64;
        TokenBucket {
            capacity,
            per_second: capacity / 60.0,
            available: capacity,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.available = (self.available
            + now.duration_since(self.updated).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.updated = now;
    }

    /// Takes `n` tokens (at most a whole minute's worth) and says how many it took, or how long
    /// until they are there.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn take(&mut self, n: u64) -> Result<u64, Duration> {
        self.refill();
        let wanted = (n as f64).min(self.capacity); // a call larger than the minute waits for a full bucket
        if self.available >= wanted {
            self.available -= wanted;
            Ok(wanted as u64)
        } else {
            Err(Duration::from_secs_f64(
                (wanted - self.available) / self.per_second,
            ))
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn give_back(&mut self, n: u64) {
        self.refill();
        self.available = (self.available + n as f64).min(self.capacity);
    }
}

/// The limiters of one endpoint, rebuilt when its `rateLimit` changes.
struct Limiters {
    rate_limit: RateLimit,
    requests: DefaultDirectRateLimiter,
    tokens: Option<Mutex<TokenBucket>>,
    concurrency: Option<Arc<Semaphore>>,
}

impl Limiters {
    fn new(rate_limit: RateLimit) -> Self {
        let rpm = NonZeroU32::new(rate_limit.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        Limiters {
            requests: RateLimiter::direct(Quota::per_minute(rpm)),
            tokens: rate_limit
                .tokens_per_minute
                .map(|t| Mutex::new(TokenBucket::new(t))),
            concurrency: rate_limit
                .max_concurrency
                .map(|c| Arc::new(Semaphore::new(usize::try_from(c).unwrap_or(usize::MAX)))),
            rate_limit,
        }
    }
}

/// Counters of one period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub period: String,
    pub invocations: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Decimal,
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn roll(&mut self, period: &str) {
        if self.period != period {
            *self = Counters {
                period: period.to_owned(),
                ..Counters::default()
            };
        }
    }
}

/// What this pod used of one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub day: Counters,
    pub month: Counters,
    pub lifetime: Counters,
    /// Worst-case cost of calls in flight.
    pub reserved: Decimal,
    /// Requests (accepted or refused) in the last full minute: the demand the operator balances on.
    pub recent_requests_per_minute: u32,
    demand_window: (u64, u32),
}

impl Usage {
    /// Counts one request toward the demand of the current minute.
    fn count_demand(&mut self) {
        let minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 60;
        let (window, count) = self.demand_window;
        if window == minute {
            self.demand_window.1 = count.saturating_add(1);
        } else {
            self.recent_requests_per_minute = if window + 1 == minute { count } else { 0 };
            self.demand_window = (minute, 1);
        }
    }
}

/// Now, as RFC 3339 in UTC.
pub fn rfc3339_now() -> String {
    jiff::Timestamp::now().to_string()
}

struct EndpointState {
    limiters: Limiters,
    calendar: Calendar,
    usage: Mutex<Usage>,
}

/// Limits, budgets and usage of every endpoint of this pod.
#[derive(Default)]
pub struct Ledger {
    endpoints: Mutex<HashMap<String, Arc<EndpointState>>>,
}

/// A call admitted against an endpoint's limits: settle it with the real usage, or drop it to
/// give everything back.
pub struct Admission {
    state: Arc<EndpointState>,
    reserved_cost: Decimal,
    reserved_tokens: u64,
    _permit: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl Admission {
    /// Records the call's real usage and cost, and releases what was reserved.
    pub fn settle(mut self, input_tokens: u64, output_tokens: u64, cost: Decimal) {
        self.settled = true;
        if let Some(bucket) = &self.state.limiters.tokens {
            let used = input_tokens + output_tokens;
            lock(bucket).give_back(self.reserved_tokens.saturating_sub(used));
        }
        let (day, month) = self.state.calendar.periods(SystemTime::now());
        let mut guard = lock(&self.state.usage);
        let usage = &mut *guard;
        usage.reserved -= self.reserved_cost;
        for (counters, period) in [
            (&mut usage.day, day.as_str()),
            (&mut usage.month, month.as_str()),
        ] {
            counters.roll(period);
        }
        for counters in [&mut usage.day, &mut usage.month, &mut usage.lifetime] {
            counters.invocations += 1;
            counters.input_tokens += input_tokens;
            counters.output_tokens += output_tokens;
            counters.cost += cost;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.settled {
            // The call never reached the model (or failed before it was charged): give it all back.
            if let Some(bucket) = &self.state.limiters.tokens {
                lock(bucket).give_back(self.reserved_tokens);
            }
            lock(&self.state.usage).reserved -= self.reserved_cost;
        }
    }
}

/// Where budget days and months begin: the endpoint's `costBudget.timeZone`, UTC by default.
#[derive(Debug, Clone)]
pub struct Calendar {
    name: Option<String>,
    zone: jiff::tz::TimeZone,
}

impl Calendar {
    /// The calendar of an IANA time zone name; UTC (with a warning) when the name is unknown.
    pub fn new(name: Option<&str>) -> Self {
        let zone = match name {
            None => jiff::tz::TimeZone::UTC,
            Some(n) => jiff::tz::TimeZone::get(n).unwrap_or_else(|e| {
                tracing::warn!(time_zone = n, error = %e, "unknown time zone; budget periods use UTC");
                jiff::tz::TimeZone::UTC
            }),
        };
        Calendar {
            name: name.map(str::to_owned),
            zone,
        }
    }

    fn zoned(&self, at: SystemTime) -> jiff::ZonedDateTime {
        let ts = jiff::Timestamp::try_from(at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        ts.to_zoned_datetime(self.zone.clone())
    }

    /// `YYYY-MM-DD` and `YYYY-MM` of `at` in this calendar.
    pub fn periods(&self, at: SystemTime) -> (String, String) {
        let date = self.zoned(at).date();
        (
            format!("{date}"),
            format!("{:04}-{:02}", date.year(), date.month()),
        )
    }

    /// Time from `at` until the next day (`daily`) or month (`monthly`) begins.
    fn until_next(&self, which: &str, at: SystemTime) -> Duration {
        let now = self.zoned(at);
        let date = now.date();
        let next = if which == "daily" {
            date.tomorrow().ok()
        } else {
            date.last_of_month().tomorrow().ok()
        };
        next.and_then(|d| d.to_zoned_datetime(self.zone.clone()).ok())
            .and_then(|start| now.duration_until(&start).try_into().ok())
            .unwrap_or(Duration::from_secs(3600))
    }
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar::new(None)
    }
}

impl Ledger {
    fn state(&self, endpoint: &EndpointConfig) -> Arc<EndpointState> {
        let rate_limit = endpoint.effective_rate_limit();
        let time_zone = endpoint
            .spec
            .cost_budget
            .as_ref()
            .and_then(|b| b.time_zone.as_deref());
        let fresh = |usage: Usage| {
            Arc::new(EndpointState {
                limiters: Limiters::new(rate_limit.clone()),
                calendar: Calendar::new(time_zone),
                usage: Mutex::new(usage),
            })
        };
        let mut endpoints = lock(&self.endpoints);
        let state = endpoints
            .entry(endpoint.name.clone())
            .or_insert_with(|| fresh(Usage::default()));
        if state.limiters.rate_limit != rate_limit || state.calendar.name.as_deref() != time_zone {
            // New limits or calendar: new limiters, same usage.
            let usage = lock(&state.usage).clone();
            *state = fresh(usage);
        }
        Arc::clone(state)
    }

    /// This pod's usage of `endpoint` so far.
    pub fn usage(&self, endpoint: &str) -> Option<Usage> {
        lock(&self.endpoints)
            .get(endpoint)
            .map(|s| lock(&s.usage).clone())
    }

    /// Every endpoint's usage, for metrics and reports.
    pub fn all_usage(&self) -> Vec<(String, Usage)> {
        lock(&self.endpoints)
            .iter()
            .map(|(n, s)| (n.clone(), lock(&s.usage).clone()))
            .collect()
    }

    /// Counts a request refused before it reached the model.
    pub fn reject(&self, endpoint: &EndpointConfig, reason: &'static str) {
        let state = self.state(endpoint);
        let (day, month) = state.calendar.periods(SystemTime::now());
        let mut guard = lock(&state.usage);
        let usage = &mut *guard;
        usage.day.roll(&day);
        usage.month.roll(&month);
        for counters in [&mut usage.day, &mut usage.month, &mut usage.lifetime] {
            *counters.rejected.entry(reason).or_default() += 1;
        }
    }

    /// Admits a call that may use up to `max_tokens` tokens and cost up to `worst_case_cost`, or
    /// says why not (429 with Retry-After).
    pub fn admit(
        &self,
        endpoint: &EndpointConfig,
        max_tokens: u64,
        worst_case_cost: Decimal,
    ) -> Result<Admission, ApiError> {
        let state = self.state(endpoint);
        // Every request that reaches the limits is demand, whether it is admitted or not.
        lock(&state.usage).count_demand();
        let limiters = &state.limiters;
        let refuse = |code: &'static str, message: String, wait: Duration| {
            self.reject(endpoint, code);
            Err(ApiError::rate_limited(code, message, wait))
        };
        if let Err(not_until) = limiters.requests.check() {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            return refuse(
                "rate_limited",
                format!(
                    "{} allows {} requests per minute",
                    endpoint.name, limiters.rate_limit.requests_per_minute
                ),
                wait,
            );
        }
        let permit = match &limiters.concurrency {
            Some(semaphore) => match Arc::clone(semaphore).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return refuse(
                        "concurrency_limited",
                        format!(
                            "{} allows {} calls in flight",
                            endpoint.name,
                            limiters.rate_limit.max_concurrency.unwrap_or_default()
                        ),
                        Duration::from_secs(1),
                    );
                }
            },
            None => None,
        };
        let reserved_tokens = match &limiters.tokens {
            Some(bucket) => match lock(bucket).take(max_tokens) {
                Ok(taken) => taken,
                Err(wait) => {
                    let limit = limiters.rate_limit.tokens_per_minute.unwrap_or_default();
                    return refuse(
                        "tokens_rate_limited",
                        format!("{} allows {limit} tokens per minute", endpoint.name),
                        wait,
                    );
                }
            },
            None => 0,
        };
        let admission = Admission {
            state: Arc::clone(&state),
            reserved_cost: Decimal::ZERO,
            reserved_tokens,
            _permit: permit,
            settled: false,
        };
        self.reserve_budget(endpoint, admission, worst_case_cost)
    }

    fn reserve_budget(
        &self,
        endpoint: &EndpointConfig,
        mut admission: Admission,
        worst_case: Decimal,
    ) -> Result<Admission, ApiError> {
        let budget = endpoint.spec.cost_budget.clone().unwrap_or_default();
        let (day, month) = admission.state.calendar.periods(SystemTime::now());
        let mut usage = lock(&admission.state.usage);
        usage.day.roll(&day);
        usage.month.roll(&month);
        let exceeded = exceeded(&budget, &usage, endpoint, worst_case);
        if let Some(which) = exceeded {
            drop(usage);
            let retry = admission
                .state
                .calendar
                .until_next(which, SystemTime::now());
            drop(admission);
            self.reject(endpoint, "budget_exceeded");
            return Err(ApiError::rate_limited(
                "budget_exceeded",
                format!(
                    "the {which} budget of {} would be exceeded by this call (worst case ${worst_case})",
                    endpoint.name
                ),
                retry,
            ));
        }
        usage.reserved += worst_case;
        drop(usage);
        admission.reserved_cost = worst_case;
        Ok(admission)
    }
}

/// Which budget (`daily` or `monthly`) a call costing up to `worst_case` would pass.
fn exceeded(
    budget: &CostBudget,
    usage: &Usage,
    endpoint: &EndpointConfig,
    worst_case: Decimal,
) -> Option<&'static str> {
    // Spend the operator has folded in (all pods) plus this pod's own, plus calls in flight.
    let today = endpoint.reported_cost_today.max(usage.day.cost) + usage.reserved + worst_case;
    let month =
        endpoint.reported_cost_this_month.max(usage.month.cost) + usage.reserved + worst_case;
    if budget.daily.is_some_and(|d| today > d.amount()) {
        return Some("daily");
    }
    if budget.monthly.is_some_and(|m| month > m.amount()) {
        return Some("monthly");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_budget_time_zone() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_620_180); // 2026-11-25T15:23:00Z
        assert_eq!(
            Calendar::default().periods(at),
            ("2026-11-25".into(), "2026-11".into())
        );
        assert_eq!(
            Calendar::new(Some("Asia/Tokyo")).periods(at),
            ("2026-11-26".into(), "2026-11".into())
        );
        assert_eq!(
            Calendar::new(Some("America/Los_Angeles")).periods(at),
            ("2026-11-25".into(), "2026-11".into())
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(
            Calendar::default().periods(leap),
            ("2000-02-29".into(), "2000-02".into())
        );
        assert_eq!(
            Calendar::new(Some("Not/AZone")).periods(at).0,
            "2026-11-25",
            "unknown zones fall back to UTC"
        );
        // 08:37 of UTC's day remain at 15:23; Tokyo's next day starts at 15:00 UTC, 23 h 37 min later.
        assert_eq!(
            Calendar::default().until_next("daily", at),
            Duration::from_secs(8 * 3600 + 37 * 60)
        );
        assert_eq!(
            Calendar::new(Some("Asia/Tokyo")).until_next("daily", at),
            Duration::from_secs(23 * 3600 + 37 * 60)
        );
        assert_eq!(
            Calendar::default().until_next("monthly", at),
            Duration::from_secs(5 * 86_400 + 8 * 3600 + 37 * 60)
        );
    }

    #[test]
    fn token_bucket_reserves_and_gives_back() {
        let mut b = TokenBucket::new(600);
        assert_eq!(b.take(500), Ok(500));
        assert!(b.take(200).is_err());
        b.give_back(300);
        assert!(b.take(200).is_ok());
        assert_eq!(
            TokenBucket::new(100).take(5000),
            Ok(100),
            "a call over the minute takes the whole bucket, no more"
        );
        let wait = b.take(600).unwrap_err();
        assert!(
            wait > Duration::from_secs(39),
            "400 tokens missing at 10 a second: {wait:?}"
        );
    }
}

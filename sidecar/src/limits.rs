//! Limits and budgets, enforced locally with no network call on the request path: requests per
//! minute (a rolling-minute count whose limit can change in place), tokens per minute (a bucket that is reserved from
//! `maxTokens` and settled with the real count), concurrency (calls in flight, counted across
//! limit changes), and cost budgets (the
//! worst case is reserved before the call and settled with the real cost after).
//!
//! The operator rebalances each pod's share of an endpoint's limits every few seconds, so a rate
//! change keeps what was already sent: a fresh limiter per change would hand out a new minute each
//! time and let the pods together overshoot the endpoint's limit. (`governor`'s GCRA has a quota
//! fixed per limiter and lets up to twice the rate through in a rolling minute, hence the window.)

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_ai_api::{
    model_endpoint::{CostBudget, RateLimit},
    model_usage::{Allocation, Holding},
};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU32, Ordering};

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
        if self.capacity <= 0.0 {
            return Err(ZERO_SHARE_RETRY); // a zero share: nothing until the operator gives one
        }
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

    /// A new rate: what is available now stays, up to the new capacity.
    #[allow(clippy::cast_precision_loss)]
    fn set_per_minute(&mut self, per_minute: u64) {
        self.refill();
        self.capacity = per_minute as f64;
        self.per_second = self.capacity / 60.0;
        self.available = self.available.min(self.capacity);
    }

    #[allow(clippy::cast_precision_loss)]
    fn give_back(&mut self, n: u64) {
        self.refill();
        self.available = (self.available + n as f64).min(self.capacity);
    }
}

/// Requests per minute, exactly: at most `per_minute` admitted in any rolling 60 seconds (the
/// whole minute may go at once). Counted in one-second buckets, so memory stays at 61 counters
/// whatever the rate; the count survives a change of `per_minute`, so a rebalanced share starts
/// from what this pod already sent.
#[derive(Debug)]
struct MinuteWindow {
    per_minute: u32,
    origin: Instant,
    /// (second since `origin`, requests admitted in it), oldest first, the last 61 seconds.
    seconds: std::collections::VecDeque<(u64, u32)>,
}

/// How soon a pod whose share of a limit is zero is told to try again: the operator hands shares
/// to waiting pods every few seconds.
pub const ZERO_SHARE_RETRY: Duration = Duration::from_secs(2);

impl MinuteWindow {
    fn new(per_minute: u32) -> Self {
        MinuteWindow {
            per_minute,
            origin: Instant::now(),
            seconds: std::collections::VecDeque::new(),
        }
    }

    /// Requests admitted in the rolling minute ending at `now` (forgetting older ones).
    fn admitted(&mut self, now: Instant) -> u32 {
        let second = now.saturating_duration_since(self.origin).as_secs();
        // Any rolling minute ending in `second` lies within seconds `second - 60 ..= second`.
        while self.seconds.front().is_some_and(|(s, _)| s + 60 < second) {
            self.seconds.pop_front();
        }
        self.seconds.iter().map(|(_, n)| n).sum()
    }

    /// Counts one request admitted at `now` (after [`MinuteWindow::room`] said there was room).
    fn record(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
    }

    /// Whether one more request may be admitted at `now`, or how long until one may.
    fn room(&mut self, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Err(ZERO_SHARE_RETRY);
        }
        let admitted = self.admitted(now);
        if admitted < self.per_minute {
            return Ok(());
        }
        // Wait until enough of the oldest seconds leave the window to make room for one.
        let mut to_free = admitted - self.per_minute + 1;
        for (s, n) in &self.seconds {
            to_free = to_free.saturating_sub(*n);
            if to_free == 0 {
                let free_at = self.origin + Duration::from_secs(s + 61);
                return Err(free_at
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)));
            }
        }
        Err(Duration::from_secs(61))
    }

    fn set_per_minute(&mut self, per_minute: u32) {
        self.per_minute = per_minute;
    }
}

/// Calls in flight, shared with their permits: counted across limit changes, so a lowered limit
/// admits nothing new until enough of the calls already in flight have finished.
#[derive(Debug)]
struct InFlight {
    count: AtomicU32,
    /// The concurrency limit in force (`u32::MAX`: none).
    limit: AtomicU32,
    /// Woken when a call ends while more were in flight than the limit (a share was taken back
    /// and is draining): the operator hands the unit on once a report shows it free.
    released: Arc<tokio::sync::Notify>,
}

/// One call in flight; dropping it makes room.
pub struct InFlightPermit(Arc<InFlight>);

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let before = self.0.count.fetch_sub(1, Ordering::AcqRel);
        if before > self.0.limit.load(Ordering::Acquire) {
            self.0.released.notify_one();
        }
    }
}

/// The limiters of one endpoint, adjusted in place when its limits (or this pod's share) change.
struct Limiters {
    rate_limit: RateLimit,
    /// The share being enforced (none: the endpoint's own limits) and the ledger it came from
    /// (UID, generation): a share read earlier never replaces a newer one of the same ledger,
    /// while a ledger created again (deleted by hand) starts its generations afresh.
    share: Option<(Allocation, (String, i64))>,
    requests: MinuteWindow,
    tokens: Option<TokenBucket>,
    in_flight: Arc<InFlight>,
}

impl Limiters {
    fn new(rate_limit: RateLimit, released: Arc<tokio::sync::Notify>) -> Self {
        Limiters {
            requests: MinuteWindow::new(rate_limit.requests_per_minute),
            tokens: rate_limit.tokens_per_minute.map(TokenBucket::new),
            in_flight: Arc::new(InFlight {
                count: AtomicU32::new(0),
                limit: AtomicU32::new(rate_limit.max_concurrency.unwrap_or(u32::MAX)),
                released,
            }),
            share: None,
            rate_limit,
        }
    }

    fn in_flight(&self) -> u32 {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// New limits, keeping what was already used of the old ones (requests in the rolling
    /// minute, tokens, calls in flight).
    fn update(&mut self, rate_limit: RateLimit) {
        self.requests.set_per_minute(rate_limit.requests_per_minute);
        self.tokens = match (self.tokens.take(), rate_limit.tokens_per_minute) {
            (Some(mut bucket), Some(per_minute)) => {
                bucket.set_per_minute(per_minute);
                Some(bucket)
            }
            (_, per_minute) => per_minute.map(TokenBucket::new),
        };
        self.in_flight.limit.store(
            rate_limit.max_concurrency.unwrap_or(u32::MAX),
            Ordering::Release,
        );
        self.rate_limit = rate_limit;
    }

    /// Applies `endpoint`'s limits: its share, unless an older one than that already applied.
    fn apply(&mut self, endpoint: &EndpointConfig) {
        let share = endpoint
            .allocation
            .clone()
            .map(|a| (a, endpoint.allocation_from.clone()));
        if let (Some((_, (applied_uid, applied))), Some((_, (offered_uid, offered)))) =
            (&self.share, &share)
            && offered_uid == applied_uid
            && offered < applied
        {
            return;
        }
        let rate_limit = endpoint.effective_rate_limit();
        if self.rate_limit != rate_limit {
            self.update(rate_limit);
        }
        self.share = share;
    }
}

/// Recent demand: requests (admitted or not) and tokens (used, or asked for and refused) in the
/// last [`DEMAND_WINDOW`], in five-second buckets. The window is the limit's own minute: a pod
/// idle for that long has nothing of its share left in anyone's rolling minute, so moving the
/// share to a busy pod cannot push the endpoint over its limit.
#[derive(Debug, Clone, Default, PartialEq)]
struct DemandWindow {
    /// (bucket number since the epoch, requests, tokens), newest last.
    buckets: std::collections::VecDeque<(u64, u32, u64)>,
    /// (bucket number, most calls wanted in flight at once), newest last.
    concurrency: std::collections::VecDeque<(u64, u32)>,
}

/// How far back demand is measured; reported scaled to a minute.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);
const DEMAND_BUCKET: Duration = Duration::from_secs(5);
/// How many recent buckets the concurrency wanted is the peak of.
const CONCURRENCY_BUCKETS: u64 = 2;

impl DemandWindow {
    fn bucket_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / DEMAND_BUCKET.as_secs()
    }

    fn add(&mut self, requests: u32, tokens: u64) {
        let now = Self::bucket_now();
        match self.buckets.back_mut() {
            Some((bucket, r, t)) if *bucket == now => {
                *r = r.saturating_add(requests);
                *t = t.saturating_add(tokens);
            }
            _ => self.buckets.push_back((now, requests, tokens)),
        }
        self.expire(now);
    }

    /// Records that `wanted` calls were wanted in flight at once (the ones in flight and this one).
    fn want_concurrency(&mut self, wanted: u32) {
        let now = Self::bucket_now();
        match self.concurrency.back_mut() {
            Some((bucket, peak)) if *bucket == now => *peak = (*peak).max(wanted),
            _ => self.concurrency.push_back((now, wanted)),
        }
        while self
            .concurrency
            .front()
            .is_some_and(|(bucket, _)| bucket + CONCURRENCY_BUCKETS <= now)
        {
            self.concurrency.pop_front();
        }
    }

    /// The most calls wanted in flight at once in the last two buckets (about ten seconds: a
    /// concurrency share is taken back within seconds once nobody needs it).
    fn peak_concurrency(&self) -> u32 {
        let now = Self::bucket_now();
        self.concurrency
            .iter()
            .filter(|(bucket, _)| bucket + CONCURRENCY_BUCKETS > now)
            .map(|(_, peak)| *peak)
            .max()
            .unwrap_or(0)
    }

    fn expire(&mut self, now: u64) {
        let kept = DEMAND_WINDOW.as_secs() / DEMAND_BUCKET.as_secs();
        while self
            .buckets
            .front()
            .is_some_and(|(bucket, _, _)| bucket + kept <= now)
        {
            self.buckets.pop_front();
        }
    }

    /// (requests, tokens) per minute over the window.
    fn per_minute(&self) -> (u32, u64) {
        let now = Self::bucket_now();
        let kept = DEMAND_WINDOW.as_secs() / DEMAND_BUCKET.as_secs();
        let (requests, tokens) = self
            .buckets
            .iter()
            .filter(|(bucket, _, _)| bucket + kept > now)
            .fold((0u32, 0u64), |(r, t), (_, br, bt)| {
                (r.saturating_add(*br), t.saturating_add(*bt))
            });
        let scale = 60 / DEMAND_WINDOW.as_secs();
        (
            requests.saturating_mul(u32::try_from(scale).unwrap_or(1)),
            tokens.saturating_mul(scale),
        )
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
    pub rejected: BTreeMap<String, u64>,
}

impl Counters {
    /// Adds counters stored in the ledger (by an earlier run of this sidecar).
    fn add_stored(&mut self, stored: &k8s_ai_api::model_usage::PeriodUsage) {
        self.invocations = self.invocations.saturating_add(stored.invocations);
        self.input_tokens = self.input_tokens.saturating_add(stored.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(stored.output_tokens);
        self.cost += stored.cost.amount();
        for (reason, count) in &stored.rejected {
            let total = self.rejected.entry(reason.clone()).or_default();
            *total = total.saturating_add(*count);
        }
    }

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
    /// Recent requests and tokens: the demand the operator balances shares on.
    demand: DemandWindow,
    /// The worst case of the last call refused today for want of budget grant (reported, so the
    /// operator grants it first).
    pub budget_wanted: Option<Decimal>,
}

impl Usage {
    /// Recent demand per minute: (requests, tokens).
    pub fn demand_per_minute(&self) -> (u32, u64) {
        self.demand.per_minute()
    }

    /// The most calls wanted in flight at once, recently.
    pub fn concurrency_wanted(&self) -> u32 {
        self.demand.peak_concurrency()
    }
}

/// Now, as RFC 3339 in UTC.
pub fn rfc3339_now() -> String {
    jiff::Timestamp::now().to_string()
}

struct EndpointState {
    limiters: Mutex<Limiters>,
    calendar: Calendar,
    usage: Mutex<Usage>,
}

/// This pod's tally: limits, budgets and usage of each of its endpoints, in memory (the
/// operator's ledger, the ModelUsage object, is what it reports to).
#[derive(Default)]
pub struct Tally {
    endpoints: Mutex<HashMap<String, Arc<EndpointState>>>,
    /// Endpoints whose stored counters have been taken over (see [`Tally::resume`]).
    resumed: Mutex<std::collections::HashSet<String>>,
    /// Woken when a call ends above a share that was taken back (see [`Tally::unit_released`]).
    released: Arc<tokio::sync::Notify>,
}

/// A call admitted against an endpoint's limits: settle it with the real usage, or drop it to
/// give everything back.
pub struct Reservation {
    state: Arc<EndpointState>,
    reserved_cost: Decimal,
    reserved_tokens: u64,
    _permit: InFlightPermit,
    settled: bool,
}

impl Reservation {
    /// Records the call's real usage and cost, and releases what was reserved.
    pub fn settle(mut self, input_tokens: u64, output_tokens: u64, cost: Decimal) {
        self.settled = true;
        let used = input_tokens + output_tokens;
        if let Some(bucket) = &mut lock(&self.state.limiters).tokens {
            bucket.give_back(self.reserved_tokens.saturating_sub(used));
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
        usage.demand.add(0, used);
        for counters in [&mut usage.day, &mut usage.month, &mut usage.lifetime] {
            counters.invocations += 1;
            counters.input_tokens += input_tokens;
            counters.output_tokens += output_tokens;
            counters.cost += cost;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            // The call never reached the model (or failed before it was charged): give it all back.
            if let Some(bucket) = &mut lock(&self.state.limiters).tokens {
                bucket.give_back(self.reserved_tokens);
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

impl Tally {
    fn state(&self, endpoint: &EndpointConfig) -> Arc<EndpointState> {
        let time_zone = endpoint
            .spec
            .cost_budget
            .as_ref()
            .and_then(|b| b.time_zone.as_deref());
        let fresh = |usage: Usage| {
            let mut limiters =
                Limiters::new(endpoint.effective_rate_limit(), Arc::clone(&self.released));
            limiters.apply(endpoint);
            Arc::new(EndpointState {
                limiters: Mutex::new(limiters),
                calendar: Calendar::new(time_zone),
                usage: Mutex::new(usage),
            })
        };
        let mut endpoints = lock(&self.endpoints);
        let state = endpoints
            .entry(endpoint.name.clone())
            .or_insert_with(|| fresh(Usage::default()));
        if state.calendar.name.as_deref() == time_zone {
            lock(&state.limiters).apply(endpoint);
        } else {
            // A new calendar: new state, same usage (the limiters start afresh, rarely).
            let usage = lock(&state.usage).clone();
            *state = fresh(usage);
        }
        Arc::clone(state)
    }

    /// Waits until a call ends while this pod held more calls in flight than its share (at once
    /// if one has since the last wait): worth reporting, the operator waits for that unit.
    pub async fn unit_released(&self) {
        self.released.notified().await;
    }

    /// What this pod holds of `endpoint`'s limits now, its current share applied first: the
    /// operator moves a unit of a share to another pod only once it is free here.
    pub fn holding(&self, endpoint: &EndpointConfig) -> Holding {
        let state = self.state(endpoint);
        let mut limiters = lock(&state.limiters);
        Holding {
            budget_grant: endpoint.budget_grant.clone(),
            allocation: limiters.share.as_ref().map(|(a, _)| a.clone()),
            requests_in_last_minute: limiters.requests.admitted(Instant::now()),
            in_flight: limiters.in_flight(),
        }
    }

    /// Whether `endpoint`'s counters stored in the ledger still need taking over.
    pub fn needs_resume(&self, endpoint: &str) -> bool {
        !lock(&self.resumed).contains(endpoint)
    }

    /// Takes over the counters an earlier run of this sidecar stored in the pod's ledger (the
    /// container restarted; the pod did not): they are added to what this run has counted, so
    /// reports stay cumulative and nothing used before the restart is lost.
    pub fn resume(&self, endpoint: &EndpointConfig, stored: Option<&k8s_ai_api::ModelUsageStatus>) {
        if !lock(&self.resumed).insert(endpoint.name.clone()) {
            return;
        }
        let Some(stored) = stored else { return };
        let state = self.state(endpoint);
        let (day, month) = state.calendar.periods(SystemTime::now());
        let mut guard = lock(&state.usage);
        let usage = &mut *guard;
        usage.day.roll(&day);
        usage.month.roll(&month);
        for (counters, from, period) in [
            (&mut usage.day, stored.day.as_ref(), Some(day.as_str())),
            (
                &mut usage.month,
                stored.month.as_ref(),
                Some(month.as_str()),
            ),
            (&mut usage.lifetime, stored.lifetime.as_ref(), None),
        ] {
            if let Some(from) = from.filter(|f| period.is_none_or(|p| f.period == p)) {
                counters.add_stored(from);
            }
        }
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
            *counters.rejected.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// Admits a call that may use up to `max_tokens` tokens and cost up to `worst_case_cost`, or
    /// says why not (429 with Retry-After).
    pub fn admit(
        &self,
        endpoint: &EndpointConfig,
        max_tokens: u64,
        worst_case_cost: Decimal,
    ) -> Result<Reservation, ApiError> {
        let state = self.state(endpoint);
        let mut limiters = lock(&state.limiters);
        let now = Instant::now();
        let in_flight = limiters.in_flight();
        // Every request that reaches the limits is demand, whether it is admitted or not; tokens
        // count as demand when they are refused (used ones are counted at settlement).
        lock(&state.usage)
            .demand
            .want_concurrency(in_flight.saturating_add(1));
        let refuse = |code: &'static str, message: String, wait: Duration, tokens: u64| {
            lock(&state.usage).demand.add(1, tokens);
            self.reject(endpoint, code);
            Err(ApiError::rate_limited(code, message, wait))
        };
        // Nothing is taken until every check has passed: a refused request uses up no share.
        if let Err(wait) = limiters.requests.room(now) {
            let limit = limiters.rate_limit.requests_per_minute;
            drop(limiters);
            return refuse(
                "rate_limited",
                share_message(endpoint, limit, "requests per minute"),
                wait,
                0,
            );
        }
        if let Some(limit) = limiters.rate_limit.max_concurrency
            && in_flight >= limit
        {
            drop(limiters);
            let wait = if limit == 0 {
                ZERO_SHARE_RETRY
            } else {
                Duration::from_secs(1)
            };
            return refuse(
                "concurrency_limited",
                share_message(endpoint, limit, "calls in flight"),
                wait,
                0,
            );
        }
        let reserved_tokens = match limiters.tokens.as_mut().map(|b| b.take(max_tokens)) {
            Some(Ok(taken)) => taken,
            Some(Err(wait)) => {
                let limit = limiters.rate_limit.tokens_per_minute.unwrap_or_default();
                drop(limiters);
                return refuse(
                    "tokens_rate_limited",
                    share_message(
                        endpoint,
                        u32::try_from(limit).unwrap_or(u32::MAX),
                        "tokens per minute",
                    ),
                    wait,
                    max_tokens,
                );
            }
            None => 0,
        };
        limiters.requests.record(now);
        // Counted whether or not there is a concurrency limit now: a share may bring one.
        limiters.in_flight.count.fetch_add(1, Ordering::AcqRel);
        let permit = InFlightPermit(Arc::clone(&limiters.in_flight));
        drop(limiters);
        lock(&state.usage).demand.add(1, 0);
        let reservation = Reservation {
            state: Arc::clone(&state),
            reserved_cost: Decimal::ZERO,
            reserved_tokens,
            _permit: permit,
            settled: false,
        };
        self.reserve_budget(endpoint, reservation, worst_case_cost)
    }

    fn reserve_budget(
        &self,
        endpoint: &EndpointConfig,
        mut reservation: Reservation,
        worst_case: Decimal,
    ) -> Result<Reservation, ApiError> {
        let budget = endpoint.spec.cost_budget.clone().unwrap_or_default();
        let (day, month) = reservation.state.calendar.periods(SystemTime::now());
        let mut usage = lock(&reservation.state.usage);
        if usage.day.period != day {
            usage.budget_wanted = None;
        }
        usage.day.roll(&day);
        usage.month.roll(&month);
        let exceeded = exceeded(&budget, &usage, endpoint, worst_case, (&day, &month));
        if exceeded.is_some() && granted(endpoint, (&day, &month)) {
            usage.budget_wanted = Some(worst_case);
        }
        if let Some(which) = exceeded {
            drop(usage);
            // Refused by this pod's grant while the budget itself still has room: the operator
            // grants the call within a round or two (cutting back idle pods' headroom if need
            // be). Only an exhausted budget waits for the next period.
            let retry = if granted(endpoint, (&day, &month)) && !endpoint.budget_exhausted {
                GRANT_RETRY
            } else {
                reservation
                    .state
                    .calendar
                    .until_next(which, SystemTime::now())
            };
            drop(reservation);
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
        reservation.reserved_cost = worst_case;
        Ok(reservation)
    }
}

/// How soon a pod refused by its budget grant (the budget not exhausted) is told to try again.
pub const GRANT_RETRY: Duration = Duration::from_secs(5);

/// Why a limit refused: the endpoint's figure, or this pod's share of it (none at the moment:
/// shares rotate among the pods that want them).
fn share_message(endpoint: &EndpointConfig, limit: u32, what: &str) -> String {
    match (&endpoint.allocation, limit) {
        (Some(_), 0) => format!(
            "this pod has no share of {}'s {what} at the moment; shares rotate among the pods that ask, retry shortly",
            endpoint.name
        ),
        (Some(_), _) => format!("this pod's share of {} is {limit} {what}", endpoint.name),
        (None, _) => format!("{} allows {limit} {what}", endpoint.name),
    }
}

/// Whether the operator has granted this pod a slice of the endpoint's budget for these periods.
fn granted(endpoint: &EndpointConfig, (day, month): (&str, &str)) -> bool {
    endpoint
        .budget_grant
        .as_ref()
        .is_some_and(|g| g.day.as_deref() == Some(day) || g.month.as_deref() == Some(month))
}

/// Which budget (`daily` or `monthly`) a call costing up to `worst_case` would pass.
///
/// With a grant for the period (the operator's slice of the budget for this pod), this pod's own
/// spend and calls in flight must stay within it: exact, whatever the number of pods. Without one
/// (no operator yet, or a period just begun), the endpoint's reported spend and this pod's own.
fn exceeded(
    budget: &CostBudget,
    usage: &Usage,
    endpoint: &EndpointConfig,
    worst_case: Decimal,
    (day, month): (&str, &str),
) -> Option<&'static str> {
    let grant = endpoint.budget_grant.clone().unwrap_or_default();
    let daily_grant = grant.daily.filter(|_| grant.day.as_deref() == Some(day));
    let monthly_grant = grant
        .monthly
        .filter(|_| grant.month.as_deref() == Some(month));
    let own_today = usage.day.cost + usage.reserved + worst_case;
    let own_month = usage.month.cost + usage.reserved + worst_case;
    // Spend the operator has folded in (all pods) plus this pod's own, plus calls in flight.
    let today = endpoint.reported_cost_today.max(usage.day.cost) + usage.reserved + worst_case;
    let month_total =
        endpoint.reported_cost_this_month.max(usage.month.cost) + usage.reserved + worst_case;
    let over_day = match (budget.daily, daily_grant) {
        (Some(_), Some(g)) => own_today > g.amount(),
        (Some(d), None) => today > d.amount(),
        (None, _) => false,
    };
    if over_day {
        return Some("daily");
    }
    let over_month = match (budget.monthly, monthly_grant) {
        (Some(_), Some(g)) => own_month > g.amount(),
        (Some(m), None) => month_total > m.amount(),
        (None, _) => false,
    };
    over_month.then_some("monthly")
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MinuteWindow {
        /// Admits one request at `now`, or says how long until one would be admitted.
        fn check(&mut self, now: Instant) -> Result<(), Duration> {
            self.room(now)?;
            self.record(now);
            Ok(())
        }
    }

    #[test]
    fn an_older_share_never_replaces_a_newer_one_but_a_recreated_ledger_counts() {
        let catalog = crate::catalog::Catalog::new(
            "ai-workloads".into(),
            "p".into(),
            vec!["claude-haiku".into()],
        );
        let endpoint = include_str!("../../manifests/samples/modelendpoint.yaml");
        let with_ledger = |uid: &str, generation: i64, rpm: u32| {
            let yaml = format!(
                "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: p.claude-haiku, namespace: ai-workloads, uid: {uid}, generation: {generation}}}\nspec: {{podName: p, podUid: u, endpoint: claude-haiku, allocation: {{requestsPerMinute: {rpm}}}}}\n---\n{endpoint}"
            );
            catalog.update(&crate::catalog::parse_manifests(&yaml).unwrap());
            Arc::clone(&catalog.snapshot().endpoints["claude-haiku"])
        };
        let tally = Tally::default();
        let enforced =
            |e: &EndpointConfig| tally.holding(e).allocation.map(|a| a.requests_per_minute);
        assert_eq!(enforced(&with_ledger("first", 5, 7)), Some(7));
        assert_eq!(
            enforced(&with_ledger("first", 3, 9)),
            Some(7),
            "a share read from an older generation is ignored"
        );
        assert_eq!(
            enforced(&with_ledger("again", 1, 2)),
            Some(2),
            "a ledger deleted and created again starts at generation 1"
        );
    }

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
    fn minute_window_admits_a_whole_minute_at_once_and_no_more_in_any_rolling_minute() {
        let mut window = MinuteWindow::new(60);
        let start = window.origin;
        for _ in 0..60 {
            assert_eq!(window.check(start), Ok(()));
        }
        let wait = window.check(start).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(61),
            "room again when second 0 leaves the window"
        );
        // A steady 2 requests a second for 5 minutes: at most 60 in any 60 s.
        let mut window = MinuteWindow::new(60);
        let admitted: Vec<u64> = (0..600)
            .filter(|half| {
                window
                    .check(start + Duration::from_millis(half * 500))
                    .is_ok()
            })
            .map(|half| half * 500)
            .collect();
        for (i, at) in admitted.iter().enumerate() {
            let in_minute = admitted[i..]
                .iter()
                .take_while(|t| **t < at + 60_000)
                .count();
            assert!(in_minute <= 60, "{in_minute} in the minute from {at} ms");
        }
        assert!(admitted.len() >= 5 * 60 - 60, "{} admitted", admitted.len());
    }

    #[test]
    fn minute_window_limit_change_keeps_what_was_sent() {
        let mut window = MinuteWindow::new(30);
        let start = window.origin;
        for _ in 0..30 {
            assert_eq!(window.check(start), Ok(()));
        }
        // A bigger share adds only the difference; a smaller one waits the sent ones out.
        window.set_per_minute(40);
        let more = (0..30).filter(|_| window.check(start).is_ok()).count();
        assert_eq!(more, 10);
        window.set_per_minute(10);
        assert!(window.check(start + Duration::from_secs(30)).is_err());
        assert_eq!(window.check(start + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn demand_is_recent_and_per_minute() {
        let mut window = DemandWindow::default();
        for _ in 0..7 {
            window.add(1, 100);
        }
        assert_eq!(window.per_minute(), (7, 700), "the last minute's demand");
        window
            .buckets
            .iter_mut()
            .for_each(|(bucket, _, _)| *bucket -= 12);
        assert_eq!(
            window.per_minute(),
            (0, 0),
            "older than the window: forgotten"
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

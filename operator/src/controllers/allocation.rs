//! Limit allocation: each endpoint's `rateLimit` split into per-pod shares, max-min fair by the
//! demand the sidecars report, written to each live ledger's `spec.allocation`, which the pod's
//! sidecar enforces on its own (nothing shared on the request path); and, in the same rounds,
//! each pod's budget grant (`spec.budgetGrant`, see `budget`).
//!
//! Rebalanced every [`INTERVAL`], and at once when a ledger appears or goes, so a new pod gets a
//! share within a moment and a departed pod's share is returned. The shares of an endpoint never
//! add up to more than its limit, and decreases are written before increases, so the shares the
//! sidecars hold never do either (but for a write in flight). Sidecars keep their last allocation
//! while the operator is away.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::{Stream, StreamExt, stream};
use k8s_ai_api::{
    ModelEndpoint, ModelUsage, ModelUsageStatus,
    model_endpoint::RateLimit,
    model_usage::{Allocation, BudgetGrant, Demand},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use tokio::sync::Notify;

use super::{Context, Error, cache};

/// How often shares are rebalanced on the demand the sidecars reported.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How often while a pod waits for a share, or a round has written shares or grants: units move
/// as soon as their holders report them free.
const WAITING_INTERVAL: Duration = Duration::from_secs(1);
/// A new or departed ledger is acted on after this pause, so a burst of pods is one rebalance.
const DEBOUNCE: Duration = Duration::from_millis(200);
const MANAGER: &str = "k8s-ai-operator/allocation";
/// How long a round waits for the cache to show the last round's writes, and how often it looks.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Shares and grants written at once: a round at thousands of pods takes seconds, not minutes,
/// and the API server is not flooded.
const WRITES_IN_FLIGHT: usize = 16;
/// How long a share of 0 waits to grow to its whole target at once (a new pod's sidecar is not
/// ready until it has a share, so its app starts with what it is meant to have); after this it
/// takes what is free, so a pod is never kept waiting on units that stay held elsewhere.
const WHOLE_SHARE_WAIT: Duration = Duration::from_secs(5);

/// Max-min fair shares of `limit` among pods with these demands (`None`: not reported yet,
/// counted as an equal share). Every pod keeps one unit when the limit allows, so an idle pod's
/// first request gets through and shows up as demand; what nobody asked for is shared out too,
/// leaving room for bursts. The shares add up to `limit` exactly (to less only when there are
/// more pods than units).
pub fn fair_shares(limit: u64, demands: &[Option<u64>]) -> Vec<u64> {
    fair_shares_by_priority(limit, demands, &vec![0; demands.len()])
}

/// [`fair_shares`], where units too few to go round go to the pods of highest `priority` (the
/// ones waiting longest): with more pods than units, the units rotate.
pub fn fair_shares_by_priority(limit: u64, demands: &[Option<u64>], priority: &[u64]) -> Vec<u64> {
    let pods = demands.len() as u64;
    if pods == 0 {
        return Vec::new();
    }
    let floor = u64::from(limit >= pods);
    let mut shares = vec![floor; demands.len()];
    let mut left = limit - floor * pods;
    let equal = limit / pods;
    let wants: Vec<u64> = demands
        .iter()
        .map(|d| d.unwrap_or(equal).saturating_sub(floor))
        .collect();
    // Water-filling: the smallest demands are met in full, the rest split what remains evenly.
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| (wants[i], priority.get(i).copied().unwrap_or(0)));
    for (served, &i) in order.iter().enumerate() {
        let give = wants[i].min(left / (pods - served as u64));
        shares[i] += give;
        left -= give;
    }
    let each = left / pods;
    for share in &mut shares {
        *share += each;
    }
    left -= each * pods;
    // The last few units go to the biggest demands.
    for &i in order.iter().rev().take(usize::try_from(left).unwrap_or(0)) {
        shares[i] += 1;
    }
    shares
}

/// Each pod's fair share of `limit` (its target), pods in the order of `demands`; units too few
/// to go round go to the pods of highest `priority`.
pub fn allocate(
    limit: &RateLimit,
    demands: &[Option<Demand>],
    priority: &[u64],
) -> Vec<Allocation> {
    let requests = fair_shares_by_priority(
        u64::from(limit.requests_per_minute),
        &demands
            .iter()
            .map(|d| d.as_ref().map(|d| u64::from(d.requests_per_minute)))
            .collect::<Vec<_>>(),
        priority,
    );
    let tokens = limit.tokens_per_minute.map(|tpm| {
        fair_shares_by_priority(
            tpm,
            &demands
                .iter()
                .map(|d| d.as_ref().map(|d| d.tokens_per_minute))
                .collect::<Vec<_>>(),
            priority,
        )
    });
    let concurrency = limit.max_concurrency.map(|c| {
        fair_shares_by_priority(
            u64::from(c),
            &demands
                .iter()
                .map(|d| d.as_ref().map(|d| u64::from(d.max_concurrency)))
                .collect::<Vec<_>>(),
            priority,
        )
    });
    (0..demands.len())
        .map(|i| Allocation {
            requests_per_minute: u32::try_from(requests[i]).unwrap_or(u32::MAX),
            tokens_per_minute: tokens.as_ref().map(|t| t[i]),
            max_concurrency: concurrency
                .as_ref()
                .map(|c| u32::try_from(c[i]).unwrap_or(u32::MAX)),
        })
        .collect()
}

/// How long a pod keeps units it was just given before they may go round again: a pod refused
/// for want of a share retries after 2 s (`Retry-After`), and must find the unit still there.
const HOLD_AT_LEAST: Duration = Duration::from_secs(4);

/// Who waits for units and who was just given some, by ledger (namespace, name), kept from round
/// to round.
#[derive(Debug, Default)]
pub struct Waiting {
    /// Since when each has wanted more than its share: the longest waiting are served first, so
    /// with more pods than units every pod that asks gets one in turn.
    since: BTreeMap<(String, String), Instant>,
    /// When each waiting pod was last given units: they are not taken back for
    /// [`HOLD_AT_LEAST`], so the pod can use them (else units would pass from pod to pod faster
    /// than apps retry, serving nobody).
    grown: BTreeMap<(String, String), Instant>,
}

impl Waiting {
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }

    /// The order in which `key` is given units: recently served pods keep theirs, then the
    /// longest waiting first (in milliseconds waited), then the content.
    fn priority(&self, key: &(String, String), now: Instant) -> u64 {
        if self
            .grown
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < HOLD_AT_LEAST)
        {
            return u64::MAX;
        }
        self.since.get(key).map_or(0, |since| {
            u64::try_from(now.saturating_duration_since(*since).as_millis())
                .unwrap_or(u64::MAX - 1)
                .saturating_add(1)
                .min(u64::MAX - 1)
        })
    }
}

/// The allocations to write, decreases first. Targets are max-min fair by demand (the longest
/// waiting first when units are too few); requests per minute and concurrency then move
/// exactly: a unit is taken back only from a sidecar that has reported its current share, and
/// given to another only once the sidecar that held it has reported it free (its rolling minute
/// no longer counts it, no call holds it), so the shares held never add up to more than the
/// limit, also while they move.
pub fn plan(
    endpoints: &[Arc<ModelEndpoint>],
    ledgers: &[Arc<ModelUsage>],
    waiting: &mut Waiting,
    now: Instant,
) -> Vec<Change> {
    // The live ledgers of each endpoint, in a stable order; a ledger being deleted has left.
    let mut by_endpoint: BTreeMap<(String, String), Vec<&ModelUsage>> = BTreeMap::new();
    for ledger in ledgers {
        if ledger.metadata.deletion_timestamp.is_none() {
            by_endpoint
                .entry((
                    ledger.namespace().unwrap_or_default(),
                    ledger.spec.endpoint.clone(),
                ))
                .or_default()
                .push(ledger);
        }
    }
    let live: std::collections::BTreeSet<(String, String)> = by_endpoint
        .values()
        .flatten()
        .map(|l| (l.namespace().unwrap_or_default(), l.name_any()))
        .collect();
    waiting.since.retain(|key, _| live.contains(key));
    waiting
        .grown
        .retain(|key, at| live.contains(key) && now.saturating_duration_since(*at) < HOLD_AT_LEAST);
    let mut changes = Vec::new();
    for endpoint in endpoints {
        let key = (
            endpoint.namespace().unwrap_or_default(),
            endpoint.name_any(),
        );
        if let Some(mut pods) = by_endpoint.remove(&key) {
            pods.sort_by_key(|l| l.name_any());
            changes.extend(plan_endpoint(endpoint, &key.0, &pods, waiting, now));
        }
    }
    // Shrinking shares are written first, so the shares held never add up to more than the limit.
    changes.sort_by_key(|c| !c.shrinks);
    changes
}

/// The changes of one endpoint's shares among its live `pods` (in a stable order).
fn plan_endpoint(
    endpoint: &ModelEndpoint,
    namespace: &str,
    pods: &[&ModelUsage],
    waiting: &mut Waiting,
    now: Instant,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let limit = endpoint.spec.rate_limit.clone().unwrap_or_default();
    let wall_clock = SystemTime::now();
    let views: Vec<PodView> = pods
        .iter()
        .map(|l| PodView::of(l, &limit, wall_clock))
        .collect();
    let keys: Vec<(String, String)> = pods
        .iter()
        .map(|l| (namespace.to_owned(), l.name_any()))
        .collect();
    let priority: Vec<u64> = keys.iter().map(|k| waiting.priority(k, now)).collect();
    let demands: Vec<Option<Demand>> = pods
        .iter()
        .map(|l| l.status.as_ref().and_then(|s| s.demand.clone()))
        .collect();
    let targets = targets(&limit, pods, &views, &demands, &priority);
    let waited_briefly: Vec<bool> = keys
        .iter()
        .map(|k| {
            waiting
                .since
                .get(k)
                .is_none_or(|since| now.saturating_duration_since(*since) < WHOLE_SHARE_WAIT)
        })
        .collect();
    let views: Vec<PodView> = views
        .into_iter()
        .zip(&waited_briefly)
        .map(|(v, &brief)| v.whole_only(brief))
        .collect();
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(priority[i]));
    let requests = move_exactly(
        u64::from(limit.requests_per_minute),
        &views.iter().map(|v| v.requests).collect::<Vec<_>>(),
        &targets
            .iter()
            .map(|t| u64::from(t.requests_per_minute))
            .collect::<Vec<_>>(),
        &order,
    );
    let concurrency = limit.max_concurrency.map(|c| {
        move_exactly(
            u64::from(c),
            &views.iter().map(|v| v.concurrency).collect::<Vec<_>>(),
            &targets
                .iter()
                .map(|t| u64::from(t.max_concurrency.unwrap_or(c)))
                .collect::<Vec<_>>(),
            &order,
        )
    });
    for (i, ledger) in pods.iter().enumerate() {
        // Waiting: it asked for more than its share, or its target could not be met yet
        // (the units are still held elsewhere); rounds come every second meanwhile.
        let short = requests[i] < u64::from(targets[i].requests_per_minute)
            || concurrency
                .as_ref()
                .is_some_and(|c| c[i] < u64::from(targets[i].max_concurrency.unwrap_or(u32::MAX)));
        let still_waiting = views[i].wants_more() || short;
        let share = Allocation {
            requests_per_minute: u32::try_from(requests[i]).unwrap_or(u32::MAX),
            tokens_per_minute: targets[i].tokens_per_minute,
            max_concurrency: concurrency
                .as_ref()
                .map(|c| u32::try_from(c[i]).unwrap_or(u32::MAX)),
        };
        let current = ledger.spec.allocation.as_ref();
        let grows = u64::from(share.requests_per_minute) > views[i].requests.share
            || concurrency
                .as_ref()
                .is_some_and(|c| c[i] > views[i].concurrency.share);
        // A pod that waited and is given units keeps them a while (a share that merely grows
        // with demand does not: it would hold its units against the pods waiting).
        let handed_over = grows && waiting.since.contains_key(&keys[i]);
        if grows || !still_waiting {
            // Served, or content: its wait is over (it starts again, last in line, if it
            // still wants more).
            waiting.since.remove(&keys[i]);
        }
        if handed_over {
            waiting.grown.insert(keys[i].clone(), now);
        }
        if still_waiting {
            waiting.since.entry(keys[i].clone()).or_insert(now);
        }
        if current == Some(&share) {
            continue;
        }
        let shrinks = current.is_none_or(|c| {
            share.requests_per_minute < c.requests_per_minute
                || share.tokens_per_minute < c.tokens_per_minute
                || share.max_concurrency < c.max_concurrency
        });
        changes.push(Change {
            namespace: namespace.to_owned(),
            ledger: ledger.name_any(),
            allocation: share,
            shrinks,
        });
    }
    changes
}

/// Each pod's target: its fair share by demand among the pods whose sidecar runs (a stopped
/// one, whose last report closed its ledger, is due nothing), or the share it holds where a limit
/// is settled.
fn targets(
    limit: &RateLimit,
    pods: &[&ModelUsage],
    views: &[PodView],
    demands: &[Option<Demand>],
    priority: &[u64],
) -> Vec<Allocation> {
    let closed: Vec<bool> = pods.iter().map(|l| is_closed(l)).collect();
    let live: Vec<usize> = (0..pods.len()).filter(|&i| !closed[i]).collect();
    let live_targets = allocate(
        limit,
        &live.iter().map(|&i| demands[i].clone()).collect::<Vec<_>>(),
        &live.iter().map(|&i| priority[i]).collect::<Vec<_>>(),
    );
    let mut targets = vec![
        Allocation {
            requests_per_minute: 0,
            tokens_per_minute: limit.tokens_per_minute.map(|_| 0),
            max_concurrency: limit.max_concurrency.map(|_| 0),
        };
        pods.len()
    ];
    for (&i, target) in live.iter().zip(live_targets) {
        targets[i] = target;
    }
    // Settled shares are kept, unless a stopped sidecar still has one to take back.
    let stopped_holds_a_share = closed
        .iter()
        .zip(views)
        .any(|(c, v)| *c && (v.requests.share > 0 || v.concurrency.share > 0));
    if !stopped_holds_a_share {
        keep_settled_shares(&mut targets, views, pods, demands);
    }
    targets
}

/// Whether one limit's shares can stay as they are: every unit is handed out as the targets
/// would, nobody wants more than its share, and nobody whose target is above 0 is left at 0.
/// Demand moves a little every round; rewriting every share for it would cost a write per pod
/// per round and move nothing anybody needs.
fn settled(shares: &[u64], targets: &[u64], wants_more: &[bool]) -> bool {
    shares.iter().sum::<u64>() == targets.iter().sum::<u64>()
        && !wants_more.iter().any(|w| *w)
        && shares.iter().zip(targets).all(|(s, t)| *s > 0 || *t == 0)
}

/// Replaces the targets of each settled limit by the shares in force (see [`settled`]).
fn keep_settled_shares(
    targets: &mut [Allocation],
    views: &[PodView],
    pods: &[&ModelUsage],
    demands: &[Option<Demand>],
) {
    let requests: Vec<u64> = views.iter().map(|v| v.requests.share).collect();
    let wanted: Vec<bool> = views.iter().map(|v| v.requests.wants_more).collect();
    let requests_targets: Vec<u64> = targets
        .iter()
        .map(|t| u64::from(t.requests_per_minute))
        .collect();
    if settled(&requests, &requests_targets, &wanted) {
        for (t, share) in targets.iter_mut().zip(&requests) {
            t.requests_per_minute = u32::try_from(*share).unwrap_or(u32::MAX);
        }
    }
    if targets.iter().all(|t| t.max_concurrency.is_some()) {
        let shares: Vec<u64> = views.iter().map(|v| v.concurrency.share).collect();
        let wanted: Vec<bool> = views.iter().map(|v| v.concurrency.wants_more).collect();
        let wanted_targets: Vec<u64> = targets
            .iter()
            .map(|t| u64::from(t.max_concurrency.unwrap_or_default()))
            .collect();
        if settled(&shares, &wanted_targets, &wanted) {
            for (t, share) in targets.iter_mut().zip(&shares) {
                t.max_concurrency = Some(u32::try_from(*share).unwrap_or(u32::MAX));
            }
        }
    }
    // Tokens per minute are not moved by hand-over; only a share of the limit already in force
    // is kept (a new pod's 0, or a limit added, takes the target).
    let tokens: Option<Vec<u64>> = pods
        .iter()
        .map(|l| l.spec.allocation.as_ref().and_then(|a| a.tokens_per_minute))
        .collect();
    let tokens_targets: Option<Vec<u64>> = targets.iter().map(|t| t.tokens_per_minute).collect();
    if let (Some(shares), Some(wanted_targets)) = (tokens, tokens_targets) {
        let wanted: Vec<bool> = demands
            .iter()
            .zip(&shares)
            .map(|(d, share)| d.as_ref().is_some_and(|d| d.tokens_per_minute > *share))
            .collect();
        if settled(&shares, &wanted_targets, &wanted) {
            for (t, share) in targets.iter_mut().zip(shares) {
                t.tokens_per_minute = Some(share);
            }
        }
    }
}

/// One pod's standing in one limit (requests per minute, or calls in flight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Its share in the ledger's spec (the whole limit when it has none).
    pub share: u64,
    /// What it may be using: the most of its share in the spec, the share its sidecar last
    /// reported enforcing, and what it reported holding.
    pub committed: u64,
    /// Whether its sidecar has reported enforcing the share in the spec (a smaller share may be
    /// written; otherwise an earlier, larger one might still be in force).
    pub acked: bool,
    /// Whether it asked for more than its share recently.
    pub wants_more: bool,
    /// Whether its share, now 0, may only grow to its whole target at once (the units free
    /// meanwhile are kept for it).
    pub whole_only: bool,
}

/// What the plan reads of one ledger.
struct PodView {
    requests: Standing,
    concurrency: Standing,
}

/// Whether the ledger's sidecar has stopped: its last report closed the ledger.
fn is_closed(ledger: &ModelUsage) -> bool {
    ledger.status.as_ref().is_some_and(|s| s.closed)
}

/// How long after its last report a stopped sidecar's requests may still count in the
/// endpoint's rolling minute (the sidecar counts a request for up to 61 s).
const ROLLING_MINUTE_SECONDS: i64 = 61;

impl PodView {
    fn of(ledger: &ModelUsage, limit: &RateLimit, now: SystemTime) -> Self {
        if let Some(status) = ledger.status.as_ref().filter(|s| s.closed) {
            return PodView::stopped(ledger, status, now);
        }
        let whole_rpm = u64::from(limit.requests_per_minute);
        let whole_concurrency = u64::from(limit.max_concurrency.unwrap_or(u32::MAX));
        let spec = ledger.spec.allocation.as_ref();
        let status = ledger.status.as_ref().filter(|s| s.sequence > 0);
        let holding = status.and_then(|s| s.holding.as_ref());
        let demand = status.and_then(|s| s.demand.as_ref());
        let standing =
            |whole: u64, share_of: &dyn Fn(&Allocation) -> Option<u64>, held: u64, wanted: u64| {
                let share = spec.and_then(share_of).unwrap_or(whole);
                let (enforced, held) = match (status, holding) {
                    // Never reported: its sidecar has not started, nothing is in use.
                    (None, _) => (0, 0),
                    (Some(_), Some(h)) => (
                        h.allocation.as_ref().and_then(share_of).unwrap_or(whole),
                        held,
                    ),
                    // A sidecar that does not report what it holds: assume all of its share.
                    (Some(_), None) => (share, share),
                };
                Standing {
                    share,
                    committed: share.max(enforced).max(held),
                    acked: status.is_none() || enforced == share,
                    wants_more: wanted > share,
                    whole_only: false,
                }
            };
        let requests = standing(
            whole_rpm,
            &|a| Some(u64::from(a.requests_per_minute)),
            holding.map_or(0, |h| u64::from(h.requests_in_last_minute)),
            demand.map_or(0, |d| u64::from(d.requests_per_minute)),
        );
        let concurrency = standing(
            whole_concurrency,
            &|a| a.max_concurrency.map(u64::from),
            holding.map_or(0, |h| u64::from(h.in_flight)),
            demand.map_or(0, |d| u64::from(d.max_concurrency)),
        );
        PodView {
            requests,
            concurrency: if limit.max_concurrency.is_some() {
                concurrency
            } else {
                Standing {
                    wants_more: false,
                    ..concurrency
                }
            },
        }
    }

    /// A stopped sidecar: nothing in flight, and nothing in the rolling minute once a minute has
    /// passed since its last report; its share is taken back at once (nobody enforces it).
    fn stopped(ledger: &ModelUsage, status: &ModelUsageStatus, now: SystemTime) -> Self {
        let spec = ledger.spec.allocation.as_ref();
        let minute_over = status
            .reported_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|at| {
                let since = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                at.as_second().saturating_add(ROLLING_MINUTE_SECONDS) <= since
            });
        let requests = spec.map_or(0, |a| u64::from(a.requests_per_minute));
        // A sidecar that did not report what it held: all of its share.
        let held = if minute_over {
            0
        } else {
            status
                .holding
                .as_ref()
                .map_or(requests, |h| u64::from(h.requests_in_last_minute))
        };
        PodView {
            requests: Standing {
                share: requests,
                committed: held,
                acked: true,
                wants_more: false,
                whole_only: false,
            },
            concurrency: Standing {
                share: spec.and_then(|a| a.max_concurrency).map_or(0, u64::from),
                committed: 0,
                acked: true,
                wants_more: false,
                whole_only: false,
            },
        }
    }

    fn wants_more(&self) -> bool {
        self.requests.wants_more || self.concurrency.wants_more
    }

    /// A share of 0 grows only whole while `waited_briefly`: a partial first share would let a
    /// new pod's sidecar turn ready, and its app start into refusals.
    fn whole_only(self, waited_briefly: bool) -> Self {
        let whole = |s: Standing| Standing {
            whole_only: waited_briefly && s.share == 0,
            ..s
        };
        PodView {
            requests: whole(self.requests),
            concurrency: whole(self.concurrency),
        }
    }
}

/// The new shares of one limit: each pod moves toward its target, a share shrinks only where
/// its sidecar has acknowledged the current one, and grows (the longest waiting first, in
/// `order`) only into what no pod may be using, so the committed units never pass `limit`. A
/// share that may only grow whole and cannot yet keeps what is free for itself, so the pods
/// after it cannot take the units it waits for.
pub fn move_exactly(
    limit: u64,
    standings: &[Standing],
    targets: &[u64],
    order: &[usize],
) -> Vec<u64> {
    let mut shares: Vec<u64> = standings.iter().map(|s| s.share).collect();
    let mut committed: Vec<u64> = standings.iter().map(|s| s.committed).collect();
    for (i, standing) in standings.iter().enumerate() {
        if targets[i] < standing.share && standing.acked {
            shares[i] = targets[i];
        }
    }
    let mut free = limit.saturating_sub(committed.iter().sum());
    for &i in order {
        if targets[i] <= shares[i] {
            continue;
        }
        // The largest share up to the target whose extra commitment fits in what is free.
        let reach = committed[i] + free;
        let grown = targets[i].min(reach);
        if standings[i].whole_only && grown < targets[i] {
            free = 0;
            continue;
        }
        if grown > shares[i] {
            let extra = grown.max(committed[i]) - committed[i];
            shares[i] = grown;
            committed[i] += extra;
            free -= extra;
        }
    }
    shares
}

/// One ledger's new share.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub namespace: String,
    pub ledger: String,
    pub allocation: Allocation,
    /// Whether any part of the share gets smaller.
    pub shrinks: bool,
}

/// One merge patch of a ledger's spec (a share or a grant).
struct Write {
    namespace: String,
    ledger: String,
    patch: serde_json::Value,
}

/// A ledger spec the operator wrote, by the generation the write gave it: the next round plans
/// only once the cache shows that generation (or later), so it never plans on a share or grant
/// older than its own last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub namespace: String,
    pub ledger: String,
    pub generation: i64,
}

/// Writes `patches`, [`WRITES_IN_FLIGHT`] at a time; what was written, and the first failure.
/// A write refused because the ledger changed since it was read (its `resourceVersion`
/// precondition) is left to the next round.
async fn write_all(ctx: &Context, patches: Vec<Write>) -> (Vec<Written>, Result<(), Error>) {
    let results: Vec<Result<Option<Written>, Error>> = stream::iter(patches)
        .map(|w| async move {
            tracing::debug!(namespace = %w.namespace, ledger = %w.ledger, patch = %w.patch, "writing a share or grant");
            let api: Api<ModelUsage> = Api::namespaced(ctx.client.clone(), &w.namespace);
            match api
                .patch(
                    &w.ledger,
                    &PatchParams::apply(MANAGER),
                    &Patch::Merge(&w.patch),
                )
                .await
            {
                // Gone meanwhile: its share is handed out at the next rebalance.
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(namespace = %w.namespace, ledger = %w.ledger, "ledger changed since it was read; planning it again next round");
                    ctx.metrics.reconcile_failed("Allocation", "Conflict");
                    Ok(None)
                }
                Err(source) => Err(Error::Kube {
                    kind: "ModelUsage",
                    name: format!("{}/{}", w.namespace, w.ledger),
                    source,
                }),
                Ok(written) => {
                    ctx.metrics.allocation_written();
                    Ok(Some(Written {
                        namespace: w.namespace,
                        ledger: w.ledger,
                        generation: written.metadata.generation.unwrap_or_default(),
                    }))
                }
            }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    let mut written = Vec::new();
    let mut outcome = Ok(());
    for result in results {
        match result {
            Ok(w) => written.extend(w),
            Err(e) if outcome.is_ok() => outcome = Err(e),
            Err(_) => {}
        }
    }
    (written, outcome)
}

/// Whether the cache shows every ledger in `written` at its written generation or later (or
/// gone): only then does a plan see the operator's own last writes.
fn caught_up(ctx: &Context, written: &[Written]) -> bool {
    written.iter().all(|w| {
        ctx.ledgers
            .get(&reflector::ObjectRef::new(&w.ledger).within(&w.namespace))
            .is_none_or(|l| l.metadata.generation.unwrap_or_default() >= w.generation)
    })
}

/// Writes the shares: every shrinking one first (all of them done), then the others, so the
/// shares held never add up to more than the limit. A failed shrink holds the growths back.
async fn write(ctx: &Context, changes: Vec<Change>) -> (Vec<Written>, Result<(), Error>) {
    let (shrinks, grows): (Vec<Change>, Vec<Change>) = changes.into_iter().partition(|c| c.shrinks);
    let patches = |changes: Vec<Change>| -> Vec<Write> {
        changes
            .into_iter()
            .map(|c| Write {
                // Every field named: a merge patch keeps a field it leaves out (an unlimited
                // share is a null, which removes the earlier figure).
                patch: json!({ "spec": { "allocation": {
                    "requestsPerMinute": c.allocation.requests_per_minute,
                    "tokensPerMinute": c.allocation.tokens_per_minute,
                    "maxConcurrency": c.allocation.max_concurrency,
                } } }),
                namespace: c.namespace,
                ledger: c.ledger,
            })
            .collect()
    };
    let (mut written, outcome) = write_all(ctx, patches(shrinks)).await;
    if outcome.is_err() {
        return (written, outcome);
    }
    let (grows_written, outcome) = write_all(ctx, patches(grows)).await;
    written.extend(grows_written);
    (written, outcome)
}

/// The budget grants of `endpoint`'s pods to top up (see `budget`). The endpoint is read afresh,
/// after the ledgers were taken, so a pod retired meanwhile counts once (as in the ledger totals).
async fn grants(
    ctx: &Context,
    endpoint: &ModelEndpoint,
    snapshot: &[Arc<ModelUsage>],
) -> Result<Vec<Write>, Error> {
    let ns = endpoint.namespace().unwrap_or_default();
    let name = endpoint.name_any();
    let own: Vec<&ModelUsage> = snapshot
        .iter()
        .filter(|l| l.namespace().as_deref() == Some(ns.as_str()) && l.spec.endpoint == name)
        .map(AsRef::as_ref)
        .collect();
    if own.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = api.get_opt(&name).await.map_err(|source| Error::Kube {
        kind: "ModelEndpoint",
        name: format!("{ns}/{name}"),
        source,
    })?
    else {
        return Ok(Vec::new());
    };
    let tz = fresh
        .spec
        .cost_budget
        .as_ref()
        .and_then(|b| b.time_zone.clone());
    let (day, month) = super::ledger::periods(tz.as_deref());
    let plan = super::budget::plan(&fresh, &own, &day, &month);
    let mut writes = Vec::new();
    for (ledger, grant) in plan.grants {
        let current = own
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(ledger.as_str()));
        let leaving = current.is_some_and(|l| l.metadata.deletion_timestamp.is_some());
        let due = current.is_none_or(|l| super::budget::top_up_due(l, &grant, &day, &month));
        if leaving || !due {
            continue;
        }
        writes.push(Write {
            namespace: ns.clone(),
            patch: grant_patch(current.copied(), &grant),
            ledger,
        });
    }
    Ok(writes)
}

/// The merge patch that writes `grant` to a ledger as it was `read` (its `resourceVersion` a
/// precondition): a grant planned on a ledger that has changed since (a stale cache: a report,
/// a grant written meanwhile) is refused with 409, and planned again next round.
pub fn grant_patch(read: Option<&ModelUsage>, grant: &BudgetGrant) -> serde_json::Value {
    let version = read.and_then(|l| l.metadata.resource_version.clone());
    json!({ "metadata": { "resourceVersion": version }, "spec": { "budgetGrant": grant } })
}

/// Tops up (or cuts back) the budget grants of every budgeted endpoint: the endpoints read
/// [`WRITES_IN_FLIGHT`] at a time, then the grants written as many at a time (a grant grows only
/// into budget no pod may be spending, so in any order). Also whether any write was planned.
async fn write_grants(
    ctx: &Context,
    endpoints: &[Arc<ModelEndpoint>],
    snapshot: &[Arc<ModelUsage>],
) -> (Vec<Written>, bool) {
    let planned: Vec<Result<Vec<Write>, Error>> =
        stream::iter(endpoints.iter().filter(|e| e.spec.cost_budget.is_some()))
            .map(|endpoint| grants(ctx, endpoint, snapshot))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
    let mut writes = Vec::new();
    for plan in planned {
        match plan {
            Ok(w) => writes.extend(w),
            Err(e) => {
                ctx.metrics.reconcile_failed("Allocation", e.category());
                tracing::warn!(error = %e, "planning budget grants failed; retrying at the next rebalance");
            }
        }
    }
    let planned = !writes.is_empty();
    let (written, outcome) = write_all(ctx, writes).await;
    if let Err(e) = outcome {
        ctx.metrics.reconcile_failed("Allocation", e.category());
        tracing::warn!(error = %e, "writing budget grants failed; retrying at the next rebalance");
    }
    (written, planned)
}

/// Keeps every live ledger's share up to date until the process ends.
pub async fn run(
    ctx: Arc<Context>,
    ledger_changes: impl Stream<Item = cache::Change<ModelUsage>> + Send + 'static,
) {
    // The shared watch waits for its slowest subscriber: the changes are taken as they come,
    // apart from the rounds (which last seconds at thousands of pods), and only remembered.
    let wake = Notify::new();
    let ledgers_listed = AtomicBool::new(false);
    let follow = async {
        futures_util::pin_mut!(ledger_changes);
        while let Some(change) = ledger_changes.next().await {
            match change {
                cache::Change::Listed => {
                    ledgers_listed.store(true, Ordering::Release);
                    wake.notify_one();
                }
                // Only a ledger that needs a share or gives one back calls for an early
                // rebalance; status reports (demand) are picked up at the next interval.
                cache::Change::Applied(l) | cache::Change::Deleted(l)
                    if l.spec.allocation.is_none()
                        || l.metadata.generation == Some(1)
                        || l.metadata.deletion_timestamp.is_some() =>
                {
                    wake.notify_one();
                }
                cache::Change::Applied(_) | cache::Change::Deleted(_) => {}
            }
        }
    };
    tokio::select! {
        () = follow => {}
        () = rebalance(&ctx, &wake, &ledgers_listed) => {}
    }
}

/// The rebalancing rounds: at every [`INTERVAL`] and when woken.
async fn rebalance(ctx: &Context, wake: &Notify, ledgers_listed: &AtomicBool) {
    let (endpoints, endpoint_writer) = reflector::store::<ModelEndpoint>();
    let events = reflector(
        endpoint_writer,
        watcher(
            Api::<ModelEndpoint>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|event| match event {
        Ok(watcher::Event::InitDone) => Signal::Listed,
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
        _ => Signal::Nothing,
    });
    futures_util::pin_mut!(events);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing is decided before both lists are complete (an absent ledger would mean nothing).
    let mut endpoints_listed = false;
    let mut waiting = Waiting::default();
    let mut last_written: Vec<Written> = Vec::new();
    // Whether the last round planned writes (done, or refused as the ledger had changed).
    let mut moving = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Signal::Listed) => endpoints_listed = true,
                Some(Signal::Changed) => {}
                Some(Signal::Nothing) => continue,
            },
            () = wake.notified() => {}
            _ = tick.tick() => {}
            // Pods waiting for units, or shares and grants on the move (the sidecars acknowledge
            // writes within moments; a refused write is planned again): the next round soon.
            () = tokio::time::sleep(WAITING_INTERVAL), if !waiting.is_empty() || moving => {}
        }
        if !endpoints_listed || !ledgers_listed.load(Ordering::Acquire) {
            continue;
        }
        // A burst of new pods is one rebalance; the stores keep filling meanwhile.
        let pause = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                event = events.next() => if event.is_none() { return },
            }
        }
        // Plan only on a cache that shows this operator's own last writes (the watch brings them
        // within moments; a round that would wait longer is skipped).
        let mut waited = Duration::ZERO;
        while !caught_up(ctx, &last_written) && waited < CATCH_UP_WAIT {
            tokio::time::sleep(CATCH_UP_POLL).await;
            waited += CATCH_UP_POLL;
        }
        if !caught_up(ctx, &last_written) {
            tracing::debug!(
                "the ledger cache does not show the last round's writes yet; skipping a round"
            );
            continue;
        }
        let _timer = ctx.metrics.reconcile_started("Allocation");
        let snapshot = ctx.ledgers.state();
        let budgeted = endpoints.state();
        // Grants first: each is conditional on the ledger as read, which this round's share
        // write would change (so a grant written after it would always be refused).
        let (granted, grants_planned) = write_grants(ctx, &budgeted, &snapshot).await;
        let changes = plan(&budgeted, &snapshot, &mut waiting, Instant::now());
        let shares_planned = !changes.is_empty();
        let (written, outcome) = write(ctx, changes).await;
        if let Err(e) = outcome {
            ctx.metrics.reconcile_failed("Allocation", e.category());
            tracing::warn!(error = %e, "writing allocations failed; retrying at the next rebalance");
        }
        last_written = granted;
        last_written.extend(written);
        moving = shares_planned || grants_planned;
    }
}

/// What a ModelEndpoint watch event means for the rebalance.
enum Signal {
    /// The first complete list of endpoints is in.
    Listed,
    /// Something that calls for a rebalance now.
    Changed,
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_pods_split_the_limit_evenly() {
        assert_eq!(fair_shares(60, &[Some(100); 5]), vec![12; 5]);
        assert_eq!(
            fair_shares(60, &[None; 5]),
            vec![12; 5],
            "unknown demand: an equal share"
        );
    }

    #[test]
    fn an_idle_pods_share_goes_to_the_busy_ones() {
        let shares = fair_shares(60, &[Some(500), Some(0), Some(0), Some(0), Some(0)]);
        assert_eq!(shares, vec![56, 1, 1, 1, 1]);
        let shares = fair_shares(60, &[Some(5), Some(100), Some(100)]);
        assert_eq!(shares[0], 5, "a small demand is met in full");
        assert!(
            shares[1].abs_diff(shares[2]) <= 1,
            "the rest is split evenly: {shares:?}"
        );
    }

    #[test]
    fn spare_capacity_is_shared_and_the_sum_never_exceeds_the_limit() {
        assert_eq!(fair_shares(60, &[Some(10), Some(10)]), vec![30, 30]);
        for limit in [0, 1, 2, 7, 60, 1000] {
            for pods in 0..12 {
                let demands: Vec<Option<u64>> = (0..pods)
                    .map(|i| (i % 3 != 0).then_some(i * 7 % 50))
                    .collect();
                let shares = fair_shares(limit, &demands);
                assert_eq!(shares.len(), demands.len());
                let sum: u64 = shares.iter().sum();
                assert!(sum <= limit, "{limit} among {pods}: {shares:?}");
                if pods > 0 && limit >= pods {
                    assert_eq!(sum, limit, "nothing left unallocated");
                    assert!(shares.iter().all(|s| *s >= 1), "nobody starved: {shares:?}");
                }
            }
        }
        assert_eq!(
            fair_shares(3, &[Some(9); 5]).iter().sum::<u64>(),
            3,
            "more pods than units"
        );
    }

    /// Endpoint `e` in namespace `ns` with this `rateLimit`.
    fn limited_endpoint(rate_limit: &serde_json::Value) -> Arc<ModelEndpoint> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelEndpoint",
                "metadata": { "name": "e", "namespace": "ns" },
                "spec": { "modelId": "m", "region": "us-east-1", "rateLimit": rate_limit },
            }))
            .unwrap(),
        )
    }

    /// A share of requests per minute alone.
    fn rpm_share(rpm: u32) -> Allocation {
        Allocation {
            requests_per_minute: rpm,
            ..Allocation::default()
        }
    }

    /// A ledger whose spec holds `allocation`, and whose sidecar reported enforcing `enforced`
    /// with `held` requests in its last minute (no report at all when `enforced` is `None`).
    fn ledger(
        name: &str,
        allocation: &Allocation,
        enforced: Option<&Allocation>,
        held: u32,
        demand: Option<u32>,
    ) -> Arc<ModelUsage> {
        let status = enforced.map(|e| {
            json!({
                "demand": demand.map(|d| json!({ "requestsPerMinute": d })),
                "holding": { "allocation": e, "requestsInLastMinute": held },
                "sequence": 1,
            })
        });
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
                "metadata": { "name": name, "namespace": "ns" },
                "spec": { "podName": name, "podUid": "u", "endpoint": "e", "allocation": allocation },
                "status": status,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn plan_writes_only_changes_and_shrinks_first() {
        let endpoint = limited_endpoint(&json!({ "requestsPerMinute": 60 }));
        let share = rpm_share;
        let written = |changes: Vec<Change>| -> Vec<(String, u32, bool)> {
            changes
                .into_iter()
                .map(|c| (c.ledger, c.allocation.requests_per_minute, c.shrinks))
                .collect()
        };
        // b holds a share of 0 (it was refused for want of one); a holds the whole minute and
        // has used 20 of it.
        let mut waiting = Waiting::default();
        let ledgers = vec![
            ledger("a", &share(60), Some(&share(60)), 20, Some(500)),
            ledger("b", &share(0), None, 0, None),
        ];
        let changes = plan(
            std::slice::from_ref(&endpoint),
            &ledgers,
            &mut waiting,
            Instant::now(),
        );
        assert_eq!(
            written(changes),
            vec![("a".into(), 30, true)],
            "a shrinks first; b waits until a has enforced that"
        );
        let ledgers = vec![
            ledger("a", &share(30), Some(&share(30)), 20, Some(500)),
            ledger("b", &share(0), None, 0, None),
        ];
        let changes = plan(
            std::slice::from_ref(&endpoint),
            &ledgers,
            &mut waiting,
            Instant::now(),
        );
        assert_eq!(
            written(changes),
            vec![("b".into(), 30, false)],
            "then b gets its half"
        );
        let settled = vec![
            ledger("a", &share(30), Some(&share(30)), 20, Some(500)),
            ledger("b", &share(30), Some(&share(30)), 0, None),
        ];
        assert!(
            plan(&[endpoint], &settled, &mut waiting, Instant::now()).is_empty(),
            "nothing to write when nothing changed"
        );
    }

    #[test]
    fn a_unit_just_handed_over_stays_long_enough_to_be_used() {
        // One request a minute, two pods that both want it: a holds it, b waits.
        let endpoint = limited_endpoint(&json!({ "requestsPerMinute": 1 }));
        let share = rpm_share;
        let pod = |name, rpm, held| ledger(name, &share(rpm), Some(&share(rpm)), held, Some(1));
        let written = |changes: Vec<Change>| -> Vec<(String, u32)> {
            changes
                .into_iter()
                .map(|c| (c.ledger, c.allocation.requests_per_minute))
                .collect()
        };
        let mut waiting = Waiting::default();
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let round = |pods: &[Arc<ModelUsage>], waiting: &mut Waiting, t| {
            written(plan(std::slice::from_ref(&endpoint), pods, waiting, t))
        };
        assert_eq!(
            round(&[pod("a", 1, 0), pod("b", 0, 0)], &mut waiting, at(0)),
            [("a".to_owned(), 0)],
            "a's unit is taken back for b"
        );
        assert_eq!(
            round(&[pod("a", 0, 0), pod("b", 0, 0)], &mut waiting, at(1)),
            [("b".to_owned(), 1)],
            "a reported it free: b's"
        );
        assert!(
            round(&[pod("a", 0, 0), pod("b", 1, 1)], &mut waiting, at(3)).is_empty(),
            "a now waits, but b keeps the unit it was just given"
        );
        assert_eq!(
            round(
                &[pod("a", 0, 0), pod("b", 1, 1)],
                &mut waiting,
                at(2) + HOLD_AT_LEAST
            ),
            [("b".to_owned(), 0)],
            "then it goes round again"
        );
    }

    #[test]
    fn demand_that_moves_within_the_shares_rewrites_nothing() {
        let endpoint = limited_endpoint(&json!({ "requestsPerMinute": 60 }));
        let share = rpm_share;
        let round = |a_wants, b_wants| {
            let pods = [
                ledger("a", &share(30), Some(&share(30)), 0, Some(a_wants)),
                ledger("b", &share(30), Some(&share(30)), 0, Some(b_wants)),
            ];
            plan(
                std::slice::from_ref(&endpoint),
                &pods,
                &mut Waiting::default(),
                Instant::now(),
            )
            .into_iter()
            .map(|c| (c.ledger, c.allocation.requests_per_minute))
            .collect::<Vec<_>>()
        };
        assert_eq!(fair_shares(60, &[Some(10), Some(12)]), [29, 31]);
        assert!(round(10, 12).is_empty(), "both within their shares");
        assert_eq!(
            round(10, 45),
            [("a".to_owned(), 12)],
            "b wants more: a's share is taken back first (b grows once a reports it)"
        );
    }

    #[test]
    fn a_stopped_sidecars_share_goes_to_the_others_once_its_minute_is_over() {
        let endpoint = limited_endpoint(&json!({ "requestsPerMinute": 60, "maxConcurrency": 2 }));
        // A Job's pod: its sidecar reported 20 requests in its last minute and closed the ledger.
        let stopped = |reported: jiff::Timestamp| -> Arc<ModelUsage> {
            Arc::new(
                serde_json::from_value(json!({
                    "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
                    "metadata": { "name": "job", "namespace": "ns" },
                    "spec": { "podName": "job", "podUid": "u", "endpoint": "e",
                              "allocation": { "requestsPerMinute": 60, "maxConcurrency": 2 } },
                    "status": { "closed": true, "sequence": 9, "reportedAt": reported.to_string(),
                                "holding": { "allocation": { "requestsPerMinute": 60, "maxConcurrency": 2 }, "requestsInLastMinute": 20 } },
                }))
                .unwrap(),
            )
        };
        let newcomer: Arc<ModelUsage> = Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
                "metadata": { "name": "web", "namespace": "ns" },
                "spec": { "podName": "web", "podUid": "v", "endpoint": "e",
                          "allocation": { "requestsPerMinute": 0, "tokensPerMinute": 0, "maxConcurrency": 0 } },
            }))
            .unwrap(),
        );
        let round = |reported| {
            plan(
                std::slice::from_ref(&endpoint),
                &[stopped(reported), Arc::clone(&newcomer)],
                &mut Waiting::default(),
                Instant::now(),
            )
            .into_iter()
            .map(|c| {
                (
                    c.ledger,
                    c.allocation.requests_per_minute,
                    c.allocation.max_concurrency,
                )
            })
            .collect::<Vec<_>>()
        };
        let now = jiff::Timestamp::now();
        assert_eq!(
            round(now),
            [
                ("job".to_owned(), 0, Some(0)),
                ("web".to_owned(), 0, Some(2))
            ],
            "its calls in flight are over, its 20 requests still count: web waits for 60 whole"
        );
        assert_eq!(
            round(now - jiff::SignedDuration::from_secs(62)),
            [
                ("job".to_owned(), 0, Some(0)),
                ("web".to_owned(), 60, Some(2))
            ],
            "a minute later the whole limit is web's"
        );
    }

    fn standing(share: u64, committed: u64, acked: bool) -> Standing {
        Standing {
            share,
            committed,
            acked,
            wants_more: false,
            whole_only: false,
        }
    }

    #[test]
    fn a_first_share_comes_whole_and_the_pods_behind_it_wait() {
        // Four units: a holds three of them (its share is already down to 2), the new pod b wants
        // 2 whole, c (behind b) wants 1.
        let new = Standing {
            whole_only: true,
            ..standing(0, 0, true)
        };
        let (targets, order) = ([2, 2, 1], [1, 2, 0]);
        let shares = move_exactly(
            4,
            &[standing(2, 3, true), new, standing(0, 0, true)],
            &targets,
            &order,
        );
        assert_eq!(
            shares,
            [2, 0, 0],
            "one unit free: b waits for two, c may not take it"
        );
        let shares = move_exactly(
            4,
            &[standing(2, 2, true), new, standing(0, 0, true)],
            &targets,
            &order,
        );
        assert_eq!(shares, [2, 2, 0], "a let go: b gets both at once");
        let partial = Standing {
            whole_only: false,
            ..new
        };
        let shares = move_exactly(
            4,
            &[standing(2, 3, true), partial, standing(0, 0, true)],
            &targets,
            &order,
        );
        assert_eq!(shares, [2, 1, 0], "after its wait b takes what is free");
    }

    #[test]
    fn a_unit_moves_only_once_its_holder_has_let_go_of_it() {
        // Two units, three pods: a and b hold one each, c waits and is the target.
        let (targets, order) = ([0, 1, 1], [2, 1, 0]);
        for (a, moved, why) in [
            (
                standing(1, 1, false),
                [1, 1, 0],
                "a has not reported its current share: c waits",
            ),
            (
                standing(1, 1, true),
                [0, 1, 0],
                "a's share is taken back; its call holds the unit",
            ),
            (
                standing(0, 0, true),
                [0, 1, 1],
                "a reported 0 and nothing in flight: c's unit",
            ),
        ] {
            let standings = [a, standing(1, 1, true), standing(0, 0, true)];
            assert_eq!(
                move_exactly(2, &standings, &targets, &order),
                moved,
                "{why}"
            );
        }
    }

    #[test]
    fn committed_units_never_pass_the_limit_whatever_the_reports() {
        // Every combination of shares, commitments and acknowledgements within a limit of 3.
        let limit = 3;
        let values = [0u64, 1, 2, 3];
        for a in values {
            for b in values {
                for held in values {
                    for acked in [false, true] {
                        let standings = [
                            standing(a, a.max(held), acked),
                            standing(b, b, true),
                            standing(0, 0, true),
                        ];
                        if standings.iter().map(|s| s.committed).sum::<u64>() > limit {
                            continue; // not a state the operator can reach
                        }
                        let shares = move_exactly(limit, &standings, &[1, 1, 1], &[2, 1, 0]);
                        let committed: u64 = shares
                            .iter()
                            .zip(&standings)
                            .map(|(s, st)| (*s).max(st.committed))
                            .sum();
                        assert!(committed <= limit, "{standings:?} -> {shares:?}");
                        if !acked {
                            assert!(
                                shares[0] >= a,
                                "an unacknowledged share is never taken back"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn with_more_pods_than_units_the_units_go_round() {
        // Five pods that all want a call in flight, two units: each round the two waiting longest
        // are the targets, so every pod is a target within three rounds.
        let mut waited = [0u64; 5];
        let mut served = [false; 5];
        for _round in 0..3 {
            let priority: Vec<u64> = waited.iter().map(|w| w + 1).collect();
            let shares = fair_shares_by_priority(2, &[Some(1); 5], &priority);
            assert_eq!(shares.iter().sum::<u64>(), 2);
            for (i, share) in shares.iter().enumerate() {
                if *share > 0 {
                    served[i] = true;
                    waited[i] = 0;
                } else {
                    waited[i] += 1;
                }
            }
        }
        assert_eq!(served, [true; 5]);
    }
}

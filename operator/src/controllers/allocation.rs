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
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream};
use k8s_ai_api::{
    ModelEndpoint, ModelUsage,
    model_endpoint::RateLimit,
    model_usage::{Allocation, Demand},
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
/// A new or departed ledger is acted on after this pause, so a burst of pods is one rebalance.
const DEBOUNCE: Duration = Duration::from_millis(200);
const MANAGER: &str = "k8s-ai-operator/allocation";
/// Shares and grants written at once: a round at thousands of pods takes seconds, not minutes,
/// and the API server is not flooded.
const WRITES_IN_FLIGHT: usize = 16;

/// Max-min fair shares of `limit` among pods with these demands (`None`: not reported yet,
/// counted as an equal share). Every pod keeps one unit when the limit allows, so an idle pod's
/// first request gets through and shows up as demand; what nobody asked for is shared out too,
/// leaving room for bursts. The shares add up to `limit` exactly (to less only when there are
/// more pods than units).
pub fn fair_shares(limit: u64, demands: &[Option<u64>]) -> Vec<u64> {
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
    order.sort_by_key(|&i| wants[i]);
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

/// Each pod's share of `limit`, pods in the order of `demands`.
pub fn allocate(limit: &RateLimit, demands: &[Option<Demand>]) -> Vec<Allocation> {
    let requests = fair_shares(
        u64::from(limit.requests_per_minute),
        &demands
            .iter()
            .map(|d| d.as_ref().map(|d| u64::from(d.requests_per_minute)))
            .collect::<Vec<_>>(),
    );
    let tokens = limit.tokens_per_minute.map(|tpm| {
        fair_shares(
            tpm,
            &demands
                .iter()
                .map(|d| d.as_ref().map(|d| d.tokens_per_minute))
                .collect::<Vec<_>>(),
        )
    });
    // Nobody reports concurrency demand: it is split evenly.
    let concurrency = limit
        .max_concurrency
        .map(|c| fair_shares(u64::from(c), &vec![None; demands.len()]));
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

/// The allocations to write: (namespace, ledger name, allocation), decreases first.
pub fn plan(endpoints: &[Arc<ModelEndpoint>], ledgers: &[Arc<ModelUsage>]) -> Vec<Change> {
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
    let mut changes = Vec::new();
    for endpoint in endpoints {
        let key = (
            endpoint.namespace().unwrap_or_default(),
            endpoint.name_any(),
        );
        let Some(mut pods) = by_endpoint.remove(&key) else {
            continue;
        };
        pods.sort_by_key(|l| l.name_any());
        let limit = endpoint.spec.rate_limit.clone().unwrap_or_default();
        let demands: Vec<Option<Demand>> = pods
            .iter()
            .map(|l| l.status.as_ref().and_then(|s| s.demand.clone()))
            .collect();
        for (ledger, share) in pods.iter().zip(allocate(&limit, &demands)) {
            let current = ledger.spec.allocation.as_ref();
            if current != Some(&share) {
                let shrinks = current.is_some_and(|c| {
                    share.requests_per_minute < c.requests_per_minute
                        || share.tokens_per_minute < c.tokens_per_minute
                        || share.max_concurrency < c.max_concurrency
                });
                changes.push(Change {
                    namespace: key.0.clone(),
                    ledger: ledger.name_any(),
                    allocation: share,
                    shrinks,
                });
            }
        }
    }
    // Shrinking shares are written first, so the shares held never add up to more than the limit.
    changes.sort_by_key(|c| !c.shrinks);
    changes
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

/// Writes `patches`, [`WRITES_IN_FLIGHT`] at a time; the first failure, once all are done.
async fn write_all(ctx: &Context, patches: Vec<Write>) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = stream::iter(patches)
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
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(source) => Err(Error::Kube {
                    kind: "ModelUsage",
                    name: format!("{}/{}", w.namespace, w.ledger),
                    source,
                }),
                Ok(_) => {
                    ctx.metrics.allocation_written();
                    Ok(())
                }
            }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Writes the shares: every shrinking one first (all of them done), then the others, so the
/// shares held never add up to more than the limit. A failed shrink holds the growths back.
async fn write(ctx: &Context, changes: Vec<Change>) -> Result<(), Error> {
    let (shrinks, grows): (Vec<Change>, Vec<Change>) = changes.into_iter().partition(|c| c.shrinks);
    let patches = |changes: Vec<Change>| -> Vec<Write> {
        changes
            .into_iter()
            .map(|c| Write {
                patch: json!({ "spec": { "allocation": c.allocation } }),
                namespace: c.namespace,
                ledger: c.ledger,
            })
            .collect()
    };
    write_all(ctx, patches(shrinks)).await?;
    write_all(ctx, patches(grows)).await
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
            ledger,
            patch: json!({ "spec": { "budgetGrant": grant } }),
        });
    }
    Ok(writes)
}

/// Tops up the budget grants of every budgeted endpoint: the endpoints read [`WRITES_IN_FLIGHT`]
/// at a time, then the grants written as many at a time (grants only grow, so in any order).
async fn write_grants(
    ctx: &Context,
    endpoints: &[Arc<ModelEndpoint>],
    snapshot: &[Arc<ModelUsage>],
) {
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
    if let Err(e) = write_all(ctx, writes).await {
        ctx.metrics.reconcile_failed("Allocation", e.category());
        tracing::warn!(error = %e, "writing budget grants failed; retrying at the next rebalance");
    }
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
                    if l.spec.allocation.is_none() || l.metadata.deletion_timestamp.is_some() =>
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
        let _timer = ctx.metrics.reconcile_started("Allocation");
        let snapshot = ctx.ledgers.state();
        let budgeted = endpoints.state();
        let changes = plan(&budgeted, &snapshot);
        if let Err(e) = write(ctx, changes).await {
            ctx.metrics.reconcile_failed("Allocation", e.category());
            tracing::warn!(error = %e, "writing allocations failed; retrying at the next rebalance");
        }
        write_grants(ctx, &budgeted, &snapshot).await;
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

    fn ledger(name: &str, allocation: Option<&Allocation>, demand: Option<u32>) -> Arc<ModelUsage> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
                "metadata": { "name": name, "namespace": "ns" },
                "spec": { "podName": name, "podUid": "u", "endpoint": "e", "allocation": allocation },
                "status": { "demand": demand.map(|d| json!({ "requestsPerMinute": d })), "sequence": 1 },
            }))
            .unwrap(),
        )
    }

    #[test]
    fn plan_writes_only_changes_and_shrinks_first() {
        let endpoint: Arc<ModelEndpoint> = Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelEndpoint",
                "metadata": { "name": "e", "namespace": "ns" },
                "spec": { "modelId": "m", "region": "us-east-1", "rateLimit": { "requestsPerMinute": 60 } },
            }))
            .unwrap(),
        );
        let share = |rpm| Allocation {
            requests_per_minute: rpm,
            ..Allocation::default()
        };
        let ledgers = vec![
            ledger("a", Some(&share(60)), Some(500)),
            ledger("b", None, None),
        ];
        let changes = plan(std::slice::from_ref(&endpoint), &ledgers);
        assert_eq!(
            changes
                .iter()
                .map(|c| (
                    c.ledger.as_str(),
                    c.allocation.requests_per_minute,
                    c.shrinks
                ))
                .collect::<Vec<_>>(),
            vec![("a", 30, true), ("b", 30, false)],
            "the new pod gets half; the old one shrinks first"
        );
        let settled = vec![
            ledger("a", Some(&share(30)), Some(500)),
            ledger("b", Some(&share(30)), None),
        ];
        assert!(
            plan(&[endpoint], &settled).is_empty(),
            "nothing to write when nothing changed"
        );
    }
}

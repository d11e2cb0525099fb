//! The ledger's lifecycle (first part): for each injected pod and each endpoint it may use, a
//! `ModelUsage` owned by the pod, which its sidecar fills in; and the sums of the live ledgers
//! written into each ModelEndpoint's status (cost today and this month, invocations, tokens).
//!
//! Deleted pods' counters are folded into the endpoint's retired totals by `fold`; each ledger's
//! share of the endpoint's limits is set by `allocation`, its share of the budget by `budget`.

use std::sync::Arc;

use futures_util::Stream;

use k8s_ai_api::{
    ModelEndpoint, ModelUsage, ModelUsageStatus, Money,
    model_endpoint::RetiredUsage,
    model_usage::{Allocation, ModelUsageSpec, PeriodUsage, ledger_name},
};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use rust_decimal::Decimal;
use serde_json::json;

use super::{
    Context, Error, RECHECK,
    cache::{Change, triggers},
};
use crate::webhook::inject::requested_endpoints;

const MANAGER: &str = "k8s-ai-operator/ledger";

/// Creates the pod's ledgers (idempotent: server-side apply of the same spec).
async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("Ledger");
    let ns = pod.namespace().ok_or(Error::NoNamespace)?;
    let Ok(endpoints) = requested_endpoints(&pod) else {
        return Ok(Action::await_change());
    };
    let (Some(uid), false) = (pod.uid(), pod.meta().deletion_timestamp.is_some()) else {
        return Ok(Action::await_change());
    };
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: uid.clone(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    // Before the first list an empty cache would read as "no earlier ledger" (a restarted
    // operator sees pods first): it must not decide anything yet.
    ctx.ledgers.listed().await?;
    let api: Api<ModelUsage> = Api::namespaced(ctx.client.clone(), &ns);
    let mut waiting = false;
    for endpoint in endpoints {
        let name = ledger_name(&pod.name_any(), &endpoint);
        // The periodic re-check writes only what is missing or wrong, not every ledger again.
        let cached = ctx.ledgers.get(&ObjectRef::new(&name).within(&ns));
        if cached
            .as_ref()
            .is_some_and(|l| is_complete(l, &pod.name_any(), &uid, &endpoint))
        {
            continue;
        }
        // A pod recreated under the same name (a StatefulSet's) finds the earlier pod's ledger
        // still there while its counters are folded: writing over it would hand those counters
        // to the new pod, and count them twice. Its own ledger is created once that one is gone.
        if let Some(earlier) = cached.as_ref().filter(|l| belongs_to_another_pod(l, &uid)) {
            tracing::debug!(namespace = %ns, ledger = %name, earlier_pod_uid = %earlier.spec.pod_uid, "waiting for the earlier pod's ledger to be folded");
            waiting = true;
            continue;
        }
        // The write is conditional on what the cache showed, as the cache may lag: created only
        // if no ledger exists (an earlier pod's may have appeared since), completed only if it is
        // still the version read. A refused write is looked at again shortly.
        let mut ledger = ModelUsage::new(
            &name,
            ModelUsageSpec {
                pod_name: pod.name_any(),
                pod_uid: uid.clone(),
                endpoint: endpoint.clone(),
                allocation: None,
                budget_grant: None,
            },
        );
        ledger.metadata.owner_references = Some(vec![owner.clone()]);
        // Born with the fold finalizer, so no deletion can skip the fold.
        ledger.metadata.finalizers = Some(vec![super::fold::FINALIZER.into()]);
        let written = match cached.and_then(|l| l.resource_version()) {
            None => {
                // Born with a share of 0: its sidecar admits nothing, and is not ready, until the
                // rebalance hands it its whole share out of units the other pods have let go of,
                // so a burst of new pods cannot pass the endpoint's limit. (A ledger without a
                // share, as the operator wrote them before, enforces the endpoint's own limits.)
                ledger.spec.allocation = Some(Allocation {
                    requests_per_minute: 0,
                    tokens_per_minute: Some(0),
                    max_concurrency: Some(0),
                });
                let params = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..PostParams::default()
                };
                api.create(&params, &ledger).await.map(drop)
            }
            Some(version) => {
                ledger.metadata.resource_version = Some(version);
                let params = PatchParams::apply(MANAGER).force();
                api.patch(&name, &params, &Patch::Apply(&ledger))
                    .await
                    .map(drop)
            }
        };
        match written {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => waiting = true,
            Err(source) => {
                return Err(Error::Kube {
                    kind: "ModelUsage",
                    name: format!("{ns}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(Action::requeue(if waiting {
        EARLIER_LEDGER_RECHECK
    } else {
        RECHECK
    }))
}

/// How soon a pod waiting for the ledger of an earlier pod of its name is looked at again.
const EARLIER_LEDGER_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `ledger` is another pod's: an earlier pod of the same name (another UID), or one being
/// deleted (its counters are being folded into the endpoint).
fn belongs_to_another_pod(ledger: &ModelUsage, uid: &str) -> bool {
    ledger.metadata.deletion_timestamp.is_some()
        || (!ledger.spec.pod_uid.is_empty() && ledger.spec.pod_uid != uid)
}

/// Whether `ledger` is already what the ledger controller would write for this pod and endpoint.
fn is_complete(ledger: &ModelUsage, pod: &str, uid: &str, endpoint: &str) -> bool {
    ledger.metadata.deletion_timestamp.is_none()
        && ledger.spec.pod_name == pod
        && ledger.spec.pod_uid == uid
        && ledger.spec.endpoint == endpoint
        && ledger
            .finalizers()
            .iter()
            .any(|f| f == super::fold::FINALIZER)
        && ledger.owner_references().iter().any(|o| o.uid == uid)
}

/// Runs the ledger controller (injected pods → their ModelUsages) until the process ends.
pub async fn run(ctx: Arc<Context>, pods: impl Stream<Item = Change<Pod>> + Send + 'static) {
    let ctx_for_results = Arc::clone(&ctx);
    let results = Controller::for_stream(triggers(pods, false), ctx.pods.store())
        .shutdown_on_signal()
        .run(reconcile, super::error_policy, ctx);
    super::drive(&ctx_for_results, results).await;
}

/// The sums of an endpoint's live ledgers for the current periods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub cost_today: Decimal,
    pub cost_this_month: Decimal,
    pub invocations_today: u64,
    pub invocations_this_month: u64,
    /// Requests refused this month, every reason together.
    pub rejected_this_month: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Lifetime cost, live and retired.
    pub cost_total: Decimal,
    /// Retired pods' possible unreported spend (included in the costs above).
    pub unreconciled: Decimal,
    /// The daily / monthly budget can no longer pay for a call a pod wants (see `budget`).
    pub day_exhausted: bool,
    pub month_exhausted: bool,
}

/// Sums the live ledgers of `endpoint` and what retired pods used (`retired`), counting day and
/// month counters only for `day` / `month`. Ledgers already folded into `retired` (deleted, their
/// finalizer not yet released) are not counted again.
pub fn totals<'a>(
    ledgers: impl IntoIterator<Item = &'a ModelUsage>,
    endpoint: &str,
    day: &str,
    month: &str,
    retired: Option<&RetiredUsage>,
) -> Totals {
    let mut t = Totals::default();
    let folded = |l: &ModelUsage| {
        retired.is_some_and(|r| {
            l.metadata
                .uid
                .as_ref()
                .is_some_and(|u| r.folded.contains(u))
        })
    };
    let retired_status = retired.map(|r| ModelUsageStatus {
        day: r.day.clone(),
        month: r.month.clone(),
        lifetime: r.lifetime.clone(),
        ..ModelUsageStatus::default()
    });
    let live = ledgers
        .into_iter()
        .filter(|l| l.spec.endpoint == endpoint && !folded(l))
        .filter_map(|l| l.status.as_ref());
    let current = |p: Option<&PeriodUsage>, period: &str| p.filter(|p| p.period == period).cloned();
    for status in live.chain(retired_status.as_ref()) {
        if let Some(d) = current(status.day.as_ref(), day) {
            t.cost_today += d.cost.amount();
            t.invocations_today += d.invocations;
        }
        if let Some(m) = current(status.month.as_ref(), month) {
            t.cost_this_month += m.cost.amount();
            t.invocations_this_month += m.invocations;
            t.rejected_this_month += m.rejected.values().sum::<u64>();
        }
        if let Some(l) = &status.lifetime {
            t.input_tokens += l.input_tokens;
            t.output_tokens += l.output_tokens;
            t.cost_total += l.cost.amount();
        }
    }
    t
}

/// The totals of an endpoint's usage, and them as status fields, from the operator's cache of
/// ledgers and the endpoint's retired totals.
pub async fn endpoint_usage(
    ctx: &Context,
    endpoint: &ModelEndpoint,
) -> Result<(Totals, serde_json::Value), Error> {
    let ns = endpoint.namespace().ok_or(Error::NoNamespace)?;
    let name = endpoint.name_any();
    // An incomplete cache would read as ledgers that do not exist: low totals.
    ctx.ledgers.listed().await?;
    let ledgers = own_ledgers(&ctx.ledgers, &ns, &name);
    let tz = endpoint
        .spec
        .cost_budget
        .as_ref()
        .and_then(|b| b.time_zone.clone());
    let (day, month) = periods(tz.as_deref());
    // `retired` is read from the API server after the ledgers were taken from the cache, never
    // from a cache: a ledger the cache no longer holds was deleted, so folded before this read;
    // one folded since is both taken and in `retired`, and its recorded UID makes it count once.
    let fresh = Api::<ModelEndpoint>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Kube {
            kind: "ModelEndpoint",
            name: format!("{ns}/{name}"),
            source,
        })?;
    let retired = fresh
        .as_ref()
        .and_then(|e| e.status.as_ref())
        .and_then(|s| s.retired.as_ref());
    let mut t = totals(
        ledgers.iter().map(AsRef::as_ref),
        &name,
        &day,
        &month,
        retired,
    );
    t.unreconciled = retired
        .and_then(|r| r.unreconciled)
        .map_or(Decimal::ZERO, Money::amount);
    if let Some(fresh) = &fresh {
        let own: Vec<&ModelUsage> = ledgers.iter().map(AsRef::as_ref).collect();
        let plan = super::budget::plan(fresh, &own, &day, &month);
        t.day_exhausted = plan.day_exhausted;
        t.month_exhausted = plan.month_exhausted;
    }
    let money = |d: Decimal| Money::new(d).map_or_else(|| d.to_string(), |m| m.to_string());
    let fields = json!({
        "costToday": money(t.cost_today),
        "costThisMonth": money(t.cost_this_month),
        "invocationsToday": t.invocations_today,
        "invocationsThisMonth": t.invocations_this_month,
        "rejectedThisMonth": t.rejected_this_month,
        "totalInputTokens": t.input_tokens,
        "totalOutputTokens": t.output_tokens,
        "totalCost": money(t.cost_total),
        "unreconciledCost": money(t.unreconciled),
    });
    Ok((t, fields))
}

/// The cached ledgers of endpoint `name` in `ns`: a scan of the cache (microseconds per thousand
/// ledgers), so no index to keep in step with it.
pub fn own_ledgers(ledgers: &Store<ModelUsage>, ns: &str, name: &str) -> Vec<Arc<ModelUsage>> {
    ledgers.state_filter(|l| l.metadata.namespace.as_deref() == Some(ns) && l.spec.endpoint == name)
}

/// Today's and this month's period names in `tz` (UTC by default), as the sidecars write them.
pub fn periods(tz: Option<&str>) -> (String, String) {
    // The workspace's jiff, with the tz database built in: k8s-openapi's has none, and would
    // silently count every named zone's days in UTC (the sidecars count them in the zone).
    let zone = match tz.map(jiff::tz::TimeZone::get) {
        None => jiff::tz::TimeZone::UTC,
        Some(Ok(zone)) => zone,
        Some(Err(e)) => {
            tracing::warn!(time_zone = tz, error = %e, "unknown time zone; budget periods use UTC");
            jiff::tz::TimeZone::UTC
        }
    };
    let date = jiff::Timestamp::now().to_zoned_datetime(zone).date();
    (
        format!("{date}"),
        format!("{:04}-{:02}", date.year(), date.month()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_counted_in_the_named_time_zone() {
        // 26 hours apart: whatever the time, the day in Kiribati is later than on Baker Island.
        let (east, _) = periods(Some("Etc/GMT-14"));
        let (west, _) = periods(Some("Etc/GMT+12"));
        assert!(east > west, "{east} vs {west}");
        assert_eq!(periods(Some("Mars/Olympus_Mons")), periods(None));
    }

    fn ledger(
        endpoint: &str,
        day: &str,
        day_cost: &str,
        month: &str,
        month_cost: &str,
        invocations: u64,
    ) -> ModelUsage {
        serde_json::from_value(json!({
            "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
            "metadata": { "name": "x", "namespace": "ns" },
            "spec": { "podName": "p", "podUid": "u", "endpoint": endpoint },
            "status": {
                "day": { "period": day, "invocations": invocations, "cost": day_cost },
                "month": { "period": month, "invocations": invocations, "cost": month_cost, "rejected": { "rate_limited": 1, "budget_exceeded": 2 } },
                "lifetime": { "invocations": invocations, "inputTokens": 10, "outputTokens": 20, "cost": month_cost },
            },
        }))
        .unwrap()
    }

    #[test]
    fn totals_are_exact_and_count_only_the_current_periods() {
        let ledgers = [
            ledger("e", "2026-11-25", "0.000001", "2026-11", "1.100001", 2),
            ledger("e", "2026-11-24", "5.000000", "2026-11", "0.200000", 3),
            ledger("other", "2026-11-25", "9", "2026-11", "9", 9),
        ];
        let t = totals(&ledgers, "e", "2026-11-25", "2026-11", None);
        assert_eq!(
            t.cost_today,
            Decimal::new(1, 6),
            "yesterday's day counters are not today's"
        );
        assert_eq!(t.cost_this_month, Decimal::new(1_300_001, 6));
        assert_eq!((t.invocations_today, t.invocations_this_month), (2, 5));
        assert_eq!(
            t.rejected_this_month, 6,
            "every reason, this month's ledgers only"
        );
        assert_eq!((t.input_tokens, t.output_tokens), (20, 40));
    }
}

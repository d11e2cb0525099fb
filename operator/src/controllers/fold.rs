//! Exactly-once folding of deleted pods' ledgers into their endpoint's retired totals.
//!
//! Every `ModelUsage` carries the finalizer `ai.kernelpanic09.io/fold`. A ledger whose pod is gone
//! is deleted (the garbage collector does it too, through the owner reference); while the
//! finalizer holds it, its final counters are added to `ModelEndpoint.status.retired` together
//! with its UID, in **one** status write guarded by the endpoint's `resourceVersion`. Only then is
//! the finalizer released. A crash anywhere leaves one of three states, each retried safely:
//! nothing written (fold again), folded but finalizer held (the UID is found: release only), or
//! done. The list of UIDs is pruned of ledgers the operator's cache no longer holds, so it holds
//! only deletions in flight.
//!
//! Pruning by the cache, not by a fresh list, keeps the endpoint's sums exact: they take the
//! ledgers from the same cache, then read `retired`. A ledger leaves the cache only once deleted
//! (folded, so in `retired`), and never comes back; its UID is pruned only after it has left. So
//! the sums never count a ledger both live and retired, but for a prune written in the moment
//! between taking the ledgers and reading `retired` (high by that ledger, for one reconcile).

use std::{sync::Arc, time::Duration};

use futures_util::Stream;

use k8s_ai_api::{
    ModelEndpoint, ModelUsage, ModelUsageStatus, Money,
    model_endpoint::RetiredUsage,
    model_usage::{PeriodUsage, ledger_name},
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        finalizer::{Event, finalizer},
        reflector::ObjectRef,
    },
};

use super::{
    Context, Error, RECHECK,
    cache::{Change, triggers},
    ledger::periods,
};
use crate::webhook::inject::requested_endpoints;

/// Holds a ledger until its counters are folded into the endpoint.
pub const FINALIZER: &str = "ai.kernelpanic09.io/fold";

/// Adds a retiring ledger's counters to `retired` for the current `day` and `month`.
pub fn fold_into(retired: &mut RetiredUsage, ledger: &ModelUsageStatus, day: &str, month: &str) {
    fold_period(&mut retired.day, ledger.day.as_ref(), day);
    fold_period(&mut retired.month, ledger.month.as_ref(), month);
    if let Some(lifetime) = &ledger.lifetime {
        retired
            .lifetime
            .get_or_insert_with(PeriodUsage::default)
            .add(lifetime);
    }
}

/// Counts `amount` of possible unreported spend in the current periods, the lifetime and
/// `unreconciled`.
fn add_unreported(
    retired: &mut RetiredUsage,
    amount: rust_decimal::Decimal,
    day: &str,
    month: &str,
) {
    let Some(amount) = Money::new(amount) else {
        return;
    };
    let extra = PeriodUsage {
        cost: amount,
        ..PeriodUsage::default()
    };
    for (into, period) in [(&mut retired.day, day), (&mut retired.month, month)] {
        fold_period(
            into,
            Some(&PeriodUsage {
                period: period.to_owned(),
                ..extra.clone()
            }),
            period,
        );
    }
    retired
        .lifetime
        .get_or_insert_with(PeriodUsage::default)
        .add(&extra);
    let before = retired.unreconciled.unwrap_or(Money::ZERO);
    retired.unreconciled = Some(before.checked_add(amount).unwrap_or(before));
}

fn fold_period(into: &mut Option<PeriodUsage>, from: Option<&PeriodUsage>, current: &str) {
    // A past period's retired counters are no longer shown: the current one starts afresh.
    if into.as_ref().is_some_and(|p| p.period != current) {
        *into = None;
    }
    if let Some(from) = from.filter(|f| f.period == current) {
        into.get_or_insert_with(|| PeriodUsage {
            period: current.to_owned(),
            ..PeriodUsage::default()
        })
        .add(from);
    }
}

fn kube_error(kind: &'static str, name: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { kind, name, source }
}

/// A live ledger: deleted when its pod is gone (or is another pod of the same name).
async fn release_if_orphaned(ledger: &ModelUsage, ctx: &Context) -> Result<Action, Error> {
    let ns = ledger.namespace().ok_or(Error::NoNamespace)?;
    let cached = ctx
        .pods
        .get(&ObjectRef::new(&ledger.spec.pod_name).within(&ns));
    if cached.is_some_and(|p| p.uid().as_deref() == Some(ledger.spec.pod_uid.as_str())) {
        return Ok(Action::requeue(RECHECK));
    }
    // The cache may lag, or hold only labelled pods: a deletion is decided by the API server.
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&ledger.spec.pod_name)
        .await
        .map_err(kube_error("Pod", format!("{ns}/{}", ledger.spec.pod_name)))?;
    let alive = pod.is_some_and(|p| p.uid().as_deref() == Some(ledger.spec.pod_uid.as_str()));
    if !alive {
        Api::<ModelUsage>::namespaced(ctx.client.clone(), &ns)
            .delete(&ledger.name_any(), &DeleteParams::default())
            .await
            .map_err(kube_error(
                "ModelUsage",
                format!("{ns}/{}", ledger.name_any()),
            ))?;
    }
    Ok(Action::requeue(RECHECK))
}

/// Folds a deleted ledger into its endpoint, once; `Ok` lets the finalizer go. Other writers of
/// the endpoint's status make the guarded write fail with a conflict: read again and retry.
async fn fold(ledger: &ModelUsage, ctx: &Context) -> Result<Action, Error> {
    let mut attempt = 0;
    loop {
        match fold_once(ledger, ctx).await {
            Err(Error::Kube {
                source: kube::Error::Api(e),
                ..
            }) if e.code == 409 && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}

async fn fold_once(ledger: &ModelUsage, ctx: &Context) -> Result<Action, Error> {
    let ns = ledger.namespace().ok_or(Error::NoNamespace)?;
    let uid = ledger.uid().unwrap_or_default();
    let endpoints: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let name = &ledger.spec.endpoint;
    let Some(mut endpoint) = endpoints
        .get_opt(name)
        .await
        .map_err(kube_error("ModelEndpoint", format!("{ns}/{name}")))?
    else {
        // The endpoint, and the totals it carried, are gone: nothing to keep.
        return Ok(Action::await_change());
    };
    let mut status = endpoint.status.clone().unwrap_or_default();
    let mut retired = status.retired.clone().unwrap_or_default();
    if retired.folded.contains(&uid) {
        return Ok(Action::await_change());
    }
    // An incomplete cache would prune UIDs of ledgers still held, so counted twice (see above).
    ctx.ledgers.listed().await?;
    let cached: std::collections::HashSet<String> = ctx
        .ledgers
        .state_filter(|l| l.metadata.namespace.as_deref() == Some(ns.as_str()))
        .iter()
        .filter_map(|l| l.metadata.uid.clone())
        .collect();
    retired.folded.retain(|u| cached.contains(u));
    let tz = endpoint
        .spec
        .cost_budget
        .as_ref()
        .and_then(|b| b.time_zone.clone());
    let (day, month) = periods(tz.as_deref());
    if let Some(counters) = &ledger.status {
        fold_into(&mut retired, counters, &day, &month);
    }
    // A sidecar that vanished without its closing report may have spent up to its grant: that
    // counts as spent, so cost reads high by at most it, never low.
    let unreported = super::budget::unreported_bound(ledger, &day, &month);
    if unreported > rust_decimal::Decimal::ZERO {
        add_unreported(&mut retired, unreported, &day, &month);
        tracing::warn!(namespace = %ns, endpoint = %name, ledger = %ledger.name_any(), %unreported, "a retired pod may have spent this much unreported; counted as spent (unreconciledCost)");
    }
    retired.folded.push(uid);
    status.retired = Some(retired);
    endpoint.status = Some(status);
    // The object read above carries its resourceVersion: a concurrent write makes this fail (409)
    // and the fold is retried from a fresh read.
    endpoints
        .replace_status(name, &PostParams::default(), &endpoint)
        .await
        .map_err(kube_error("ModelEndpoint", format!("{ns}/{name}")))?;
    tracing::info!(namespace = %ns, endpoint = %name, ledger = %ledger.name_any(), "folded a deleted pod's usage into the endpoint");
    Ok(Action::await_change())
}

async fn reconcile(ledger: Arc<ModelUsage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("Fold");
    let ns = ledger.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ModelUsage> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, ledger, |event| async {
        match event {
            Event::Apply(l) => release_if_orphaned(&l, &ctx).await,
            Event::Cleanup(l) => fold(&l, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// Runs the fold controller until the process ends: every ledger, re-checked when its pod changes.
pub async fn run(
    ctx: Arc<Context>,
    ledgers: impl Stream<Item = Change<ModelUsage>> + Send + 'static,
    pods: impl Stream<Item = Change<Pod>> + Send + 'static,
) {
    let ctx_for_results = Arc::clone(&ctx);
    let results = Controller::for_stream(triggers(ledgers, false), ctx.ledgers.store())
        .watches_stream(triggers(pods, true), |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            requested_endpoints(&pod)
                .unwrap_or_default()
                .into_iter()
                .map(move |endpoint| ObjectRef::new(&ledger_name(&name, &endpoint)).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile, super::error_policy, ctx);
    super::drive(&ctx_for_results, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(name: &str, invocations: u64, cost: &str) -> PeriodUsage {
        PeriodUsage {
            period: name.into(),
            invocations,
            input_tokens: invocations * 10,
            output_tokens: invocations * 20,
            cost: cost.parse().unwrap(),
            rejected: [("rate_limited".to_owned(), 1)].into(),
        }
    }

    fn status(day: &str, month: &str, invocations: u64, cost: &str) -> ModelUsageStatus {
        ModelUsageStatus {
            day: Some(period(day, invocations, cost)),
            month: Some(period(month, invocations, cost)),
            lifetime: Some(period("", invocations, cost)),
            ..ModelUsageStatus::default()
        }
    }

    #[test]
    fn folds_add_exactly_and_keep_only_the_current_periods() {
        let mut retired = RetiredUsage::default();
        fold_into(
            &mut retired,
            &status("2026-11-24", "2026-11", 1, "0.000001"),
            "2026-11-24",
            "2026-11",
        );
        fold_into(
            &mut retired,
            &status("2026-11-24", "2026-11", 2, "0.100002"),
            "2026-11-24",
            "2026-11",
        );
        let day = retired.day.clone().unwrap();
        assert_eq!(
            (
                day.period.as_str(),
                day.invocations,
                day.cost.to_string().as_str()
            ),
            ("2026-11-24", 3, "0.100003")
        );
        assert_eq!(day.rejected["rate_limited"], 2);
        // The next day: yesterday's retired day counters go; month and lifetime keep adding.
        fold_into(
            &mut retired,
            &status("2026-11-24", "2026-11", 4, "1"),
            "2026-11-25",
            "2026-11",
        );
        assert!(
            retired.day.is_none(),
            "a ledger's counters of an earlier day are not today's"
        );
        fold_into(
            &mut retired,
            &status("2026-11-25", "2026-11", 5, "2"),
            "2026-11-25",
            "2026-11",
        );
        assert_eq!(retired.day.as_ref().unwrap().invocations, 5);
        assert_eq!(retired.month.as_ref().unwrap().invocations, 12);
        assert_eq!(retired.month.as_ref().unwrap().cost.to_string(), "3.100003");
        assert_eq!(retired.lifetime.as_ref().unwrap().input_tokens, 120);
        // A new month starts afresh too.
        fold_into(
            &mut retired,
            &status("2026-12-01", "2026-12", 1, "0.5"),
            "2026-12-01",
            "2026-12",
        );
        assert_eq!(retired.month.as_ref().unwrap().invocations, 1);
        assert_eq!(retired.lifetime.as_ref().unwrap().invocations, 13);
    }
}

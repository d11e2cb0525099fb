//! Usage reporting: this pod's cumulative counters written to its `ModelUsage` ledgers' status,
//! as absolute values (a retried or repeated write is harmless), batched every few seconds,
//! retried on the next round when the API server is away, flushed on shutdown. Nothing on the
//! request path waits for it.

use std::{sync::Arc, time::Duration};

use k8s_ai_api::{
    ModelUsage, Money,
    model_usage::{Demand, ModelUsageStatus, PeriodUsage, ledger_name},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::{calls::AppState, limits::Counters};

/// The field manager of the sidecar's status writes.
const MANAGER: &str = "ai-sidecar";

/// Cost as the ledger stores it: micro-dollars, rounded up, so a ledger is never low. The
/// counters are cumulative, so this rounding never accumulates: at most $0.000001 per period.
fn ledger_money(cost: Decimal) -> Money {
    Money::new(
        cost.round_dp_with_strategy(k8s_ai_api::MONEY_MAX_SCALE, RoundingStrategy::AwayFromZero),
    )
    .unwrap_or(Money::ZERO)
}

fn period(c: &Counters) -> PeriodUsage {
    PeriodUsage {
        period: c.period.clone(),
        invocations: c.invocations,
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cost: ledger_money(c.cost),
        rejected: c.rejected.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

/// Writes every endpoint's counters once. Returns how many ledgers were written.
/// `closing`: the sidecar is stopping and these are its last counters.
pub async fn report_once(state: &AppState, client: &Client, sequence: u64, closing: bool) -> usize {
    let pod = &state.settings.pod_name;
    let api: Api<ModelUsage> = Api::namespaced(client.clone(), state.catalog.namespace());
    let snapshot = state.catalog.snapshot();
    // Every endpoint with a share is reported, used or not: the operator moves a unit of an
    // idle pod's share only once the pod has reported enforcing the smaller one.
    for config in snapshot
        .endpoints
        .values()
        .filter(|c| c.allocation.is_some())
    {
        state.tally.holding(config);
    }
    resume(state, &api).await;
    let mut written = 0;
    for (endpoint, usage) in state.tally.all_usage() {
        if state.tally.needs_resume(&endpoint) {
            continue; // its stored counters could not be read yet: reporting now would lose them
        }
        let (requests_per_minute, tokens_per_minute) = usage.demand_per_minute();
        let holding = snapshot
            .endpoints
            .get(&endpoint)
            .map(|config| state.tally.holding(config));
        let status = ModelUsageStatus {
            day: Some(period(&usage.day)),
            month: Some(period(&usage.month)),
            lifetime: Some(period(&usage.lifetime)),
            demand: Some(Demand {
                requests_per_minute,
                tokens_per_minute,
                max_concurrency: usage.concurrency_wanted(),
            }),
            holding,
            reserved: Some(ledger_money(usage.reserved)),
            budget_wanted: usage.budget_wanted.map(ledger_money),
            closed: closing,
            sequence,
            reported_at: Some(crate::limits::rfc3339_now()),
        };
        let patch = serde_json::json!({ "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage", "status": status });
        let name = ledger_name(pod, &endpoint);
        match api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => written += 1,
            // The operator creates ledgers; until it has, the counters wait in memory.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(ledger = %name, "no ModelUsage yet; will report later");
            }
            Err(e) => tracing::warn!(ledger = %name, error = %e, "usage report failed; will retry"),
        }
    }
    written
}

/// Before the first report of each endpoint, takes over what an earlier run of this sidecar (the
/// container restarted, the pod did not) stored in the ledger.
async fn resume(state: &AppState, api: &Api<ModelUsage>) {
    let snapshot = state.catalog.snapshot();
    for (endpoint, _) in state.tally.all_usage() {
        if !state.tally.needs_resume(&endpoint) {
            continue;
        }
        let Some(config) = snapshot.endpoints.get(&endpoint) else {
            continue;
        };
        let name = ledger_name(&state.settings.pod_name, &endpoint);
        match api.get_opt(&name).await {
            // An earlier pod of this name left it (its counters are being folded into the
            // endpoint): not ours to take over or write. Ours comes once that one is gone.
            Ok(Some(ledger)) if !state.catalog.owns(&ledger) => {
                tracing::info!(ledger = %name, earlier_pod_uid = %ledger.spec.pod_uid, "the ledger is an earlier pod's of this name; counting in memory until this pod's own exists");
            }
            Ok(ledger) => {
                let stored = ledger.and_then(|l| l.status);
                if stored.as_ref().is_some_and(|s| s.sequence > 0) {
                    tracing::info!(ledger = %name, "taking over the counters of an earlier run of this sidecar");
                }
                state.tally.resume(config, stored.as_ref());
            }
            Err(e) => {
                tracing::warn!(ledger = %name, error = %e, "cannot read the ledger; will retry");
            }
        }
    }
}

/// How long after a change of share its report is written (a burst of changes is one report).
const SHARE_REPORT_DELAY: Duration = Duration::from_millis(100);

/// Reports every `interval`, and soon after this pod's share changes or a call ends above a
/// share taken back (the operator waits for those reports before handing a unit to another
/// pod), until the process ends.
pub async fn run(state: Arc<AppState>, client: Client, interval: Duration) {
    let mut sequence = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.catalog.share_changed() => {
                // Several changes in a moment are one report.
                tokio::time::sleep(SHARE_REPORT_DELAY).await;
                tick.reset();
            }
            () = state.tally.unit_released() => {
                tokio::time::sleep(SHARE_REPORT_DELAY).await;
                tick.reset();
            }
        }
        sequence += 1;
        report_once(&state, &client, sequence, false).await;
    }
}

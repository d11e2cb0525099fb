//! The operator's Prometheus metrics (`:8080/metrics`), with the original operator's name for
//! endpoint availability.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use rust_decimal::prelude::ToPrimitive;

use k8s_ai_api::model_endpoint::ModelEndpoint;
use kube::{ResourceExt, runtime::reflector::Store};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a ModelEndpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: String,
    pub endpoint: String,
    pub model: String,
    pub region: String,
}

/// Labels of an endpoint's cost.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub namespace: String,
    pub endpoint: String,
    pub model: String,
}

/// Labels of an endpoint's pods.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointPodsLabels {
    pub namespace: String,
    pub endpoint: String,
}

/// Labels of an endpoint's budget period.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeriodLabels {
    pub namespace: String,
    pub endpoint: String,
    /// `day` or `month`, in the budget's time zone.
    pub period: String,
}

/// Labels of a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    /// The error's category (`KubeError`, `BedrockError`, ...).
    pub error: String,
}

/// Labels of an admission decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `injected`, `skipped` (not opted in or already injected) or `denied` (also malformed reviews).
    pub outcome: String,
}

/// Labels of a certificate rotation step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    /// `renewed_serving`, `announced_ca`, `switched_ca`, `retired_ca`, `created`.
    pub step: String,
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Registry,
    endpoint_available: Family<EndpointLabels, Gauge>,
    outdated_sidecars: Family<EndpointPodsLabels, Gauge>,
    /// US dollars, floats for Prometheus only (the ledger is exact decimals).
    budget: Family<PeriodLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    spend: Family<PeriodLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// US dollars; a float only here, for Prometheus. The ledger itself is exact decimals.
    cost: Family<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// The endpoints whose cost was reported at the last scrape, with their UIDs: a counter starts
    /// again only for a new object of the same name, never because one reading was lower.
    cost_reported: Mutex<HashMap<CostLabels, String>>,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_duration: Histogram,
    pub leader: Gauge,
    pub certificate_expiry: Gauge,
    pub certificate_rotations: Family<RotationLabels, Counter>,
    /// Ledger shares rewritten by the allocation rebalance.
    pub allocation_writes: Counter,
}

fn reconcile_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            endpoint_available: Family::default(),
            outdated_sidecars: Family::default(),
            budget: Family::default(),
            spend: Family::default(),
            cost: Family::default(),
            cost_reported: Mutex::default(),
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_buckets),
            admissions: Family::default(),
            // The API server's timeout is seconds; the handler should take well under 2 ms.
            admission_duration: Histogram::new([
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
            ]),
            leader: Gauge::default(),
            certificate_expiry: Gauge::default(),
            certificate_rotations: Family::default(),
            allocation_writes: Counter::default(),
        };
        let sub = m.registry.sub_registry_with_prefix("k8s_ai_operator");
        sub.register(
            "bedrock_endpoint_available",
            "1 when the ModelEndpoint is Ready (credentials, model, guardrail and price checked), else 0",
            m.endpoint_available.clone(),
        );
        sub.register(
            "outdated_sidecars",
            "Pods using each ModelEndpoint whose sidecar is not the image the webhook injects now (status.outdatedSidecars)",
            m.outdated_sidecars.clone(),
        );
        sub.register(
            "budget_dollars",
            "Each ModelEndpoint's cost budget per period (day, month), from spec.costBudget",
            m.budget.clone(),
        );
        sub.register(
            "spend_dollars",
            "US dollars spent through each ModelEndpoint in the current period (day, month, in the budget's time zone), all pods",
            m.spend.clone(),
        );
        sub.register(
            "bedrock_invocation_cost_dollars",
            "US dollars spent through each ModelEndpoint since it was created, all pods, live and gone (from the ledger)",
            m.cost.clone(),
        );
        sub.register(
            "reconciliations",
            "Reconciles started, by controller",
            m.reconciliations.clone(),
        );
        sub.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by controller and error category",
            m.reconcile_errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by controller",
            m.reconcile_duration.clone(),
        );
        sub.register(
            "webhook_admissions",
            "Pods reviewed by the injecting webhook, by outcome",
            m.admissions.clone(),
        );
        sub.register(
            "webhook_admission_duration_seconds",
            "Time the webhook took to decide on a pod (handler only, without TLS and transport)",
            m.admission_duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            m.leader.clone(),
        );
        sub.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires (Unix time)",
            m.certificate_expiry.clone(),
        );
        sub.register(
            "webhook_certificate_rotations",
            "Steps taken by the self-managed certificate rotation",
            m.certificate_rotations.clone(),
        );
        sub.register(
            "allocation_writes",
            "Pods' shares of endpoint limits rewritten by the rebalance (ModelUsage spec.allocation)",
            m.allocation_writes.clone(),
        );
        m
    }
}

/// Measures one reconcile: counted when started, its duration observed when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Call at the start of a reconcile; keep the guard until it ends.
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.reconciliations.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            started: Instant::now(),
        }
    }

    /// Counts one ledger share written.
    pub fn allocation_written(&self) {
        self.allocation_writes.inc();
    }

    pub fn reconcile_failed(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }

    pub fn admission(&self, outcome: &str, started: Instant) {
        self.admission_duration
            .observe(started.elapsed().as_secs_f64());
        self.admissions
            .get_or_create(&AdmissionLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Moves the cost counter of `labels` up to `total`. A lower reading of the same endpoint is
    /// ignored: the status can read high for one reconcile while a ledger is folded, and a counter
    /// must never go down. Only a recreated endpoint (another UID) starts it again, which
    /// Prometheus sees as a counter reset.
    fn advance_cost(&self, labels: &CostLabels, recreated: bool, total: f64) {
        if recreated {
            self.cost.remove(labels);
        }
        let counter = self.cost.get_or_create(labels);
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }

    /// Sets the budget and spend gauges of `endpoint` for the periods it has figures for.
    fn budget_and_spend(&self, endpoint: &ModelEndpoint) {
        let budget = endpoint.spec.cost_budget.as_ref();
        let status = endpoint.status.as_ref();
        let periods = [
            (
                "day",
                budget.and_then(|b| b.daily),
                status.and_then(|s| s.cost_today),
            ),
            (
                "month",
                budget.and_then(|b| b.monthly),
                status.and_then(|s| s.cost_this_month),
            ),
        ];
        for (period, limit, spent) in periods {
            let labels = PeriodLabels {
                namespace: endpoint.namespace().unwrap_or_default(),
                endpoint: endpoint.name_any(),
                period: period.to_owned(),
            };
            if let Some(limit) = limit.and_then(|m| m.amount().to_f64()) {
                self.budget.get_or_create(&labels).set(limit);
            }
            if let Some(spent) = spent.and_then(|m| m.amount().to_f64()) {
                self.spend.get_or_create(&labels).set(spent);
            }
        }
    }

    /// The OpenMetrics page, with endpoint availability read from `endpoints` now (so deleted
    /// endpoints disappear, and every replica reports what the leader published).
    pub fn render(&self, endpoints: Option<&Store<ModelEndpoint>>) -> String {
        let mut seen = HashMap::new();
        if let Some(store) = endpoints {
            self.endpoint_available.clear();
            self.outdated_sidecars.clear();
            self.budget.clear();
            self.spend.clear();
            let previous = self
                .cost_reported
                .lock()
                .map(|reported| reported.clone())
                .unwrap_or_default();
            for endpoint in store.state() {
                let labels = CostLabels {
                    namespace: endpoint.namespace().unwrap_or_default(),
                    endpoint: endpoint.name_any(),
                    model: endpoint.spec.model_id.clone(),
                };
                let total = endpoint
                    .status
                    .as_ref()
                    .and_then(|s| s.total_cost)
                    .and_then(|c| c.amount().to_f64())
                    .unwrap_or_default();
                let uid = endpoint.uid().unwrap_or_default();
                let recreated = previous.get(&labels).is_some_and(|known| *known != uid);
                self.advance_cost(&labels, recreated, total);
                seen.insert(labels, uid);
                let available = endpoint.status.as_ref().and_then(|s| s.available) == Some(true);
                self.endpoint_available
                    .get_or_create(&EndpointLabels {
                        namespace: endpoint.namespace().unwrap_or_default(),
                        endpoint: endpoint.name_any(),
                        model: endpoint.spec.model_id.clone(),
                        region: endpoint.spec.region.clone(),
                    })
                    .set(i64::from(available));
                self.budget_and_spend(&endpoint);
                if let Some(outdated) = endpoint.status.as_ref().and_then(|s| s.outdated_sidecars) {
                    self.outdated_sidecars
                        .get_or_create(&EndpointPodsLabels {
                            namespace: endpoint.namespace().unwrap_or_default(),
                            endpoint: endpoint.name_any(),
                        })
                        .set(i64::from(outdated));
                }
            }
        }
        if endpoints.is_some()
            && let Ok(mut reported) = self.cost_reported.lock()
        {
            // Endpoints that are gone stop being reported.
            for gone in reported.keys().filter(|labels| !seen.contains_key(*labels)) {
                self.cost.remove(gone);
            }
            *reported = seen;
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_admissions_are_counted_with_their_labels() {
        let m = Metrics::default();
        drop(m.reconcile_started("ModelEndpoint"));
        m.reconcile_failed("ModelEndpoint", "KubeError");
        m.admission("injected", Instant::now());
        let page = m.render(None);
        assert!(
            page.contains("k8s_ai_operator_reconciliations_total{controller=\"ModelEndpoint\"} 1"),
            "{page}"
        );
        assert!(page.contains("k8s_ai_operator_reconcile_errors_total{controller=\"ModelEndpoint\",error=\"KubeError\"} 1"), "{page}");
        assert!(page.contains("k8s_ai_operator_webhook_admissions_total{outcome=\"injected\"} 1"));
        assert!(page.contains(
            "k8s_ai_operator_reconcile_duration_seconds_count{controller=\"ModelEndpoint\"} 1"
        ));
    }

    /// The endpoint `claude-haiku` with object `uid` and `totalCost`.
    fn endpoint(uid: &str, total_cost: &str) -> ModelEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ai.kernelpanic09.io/v1alpha1",
            "kind": "ModelEndpoint",
            "metadata": {"name": "claude-haiku", "namespace": "ai", "uid": uid},
            "spec": {"modelId": "m", "region": "us-east-1"},
            "status": {"totalCost": total_cost},
        }))
        .unwrap()
    }

    /// The cost counter's value on the page rendered from a store holding `endpoint`.
    fn cost_after(m: &Metrics, endpoint: ModelEndpoint) -> String {
        let (store, mut writer) = kube::runtime::reflector::store::<ModelEndpoint>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(endpoint));
        let page = m.render(Some(&store));
        page.lines()
            .find_map(|l| l.strip_prefix("k8s_ai_operator_bedrock_invocation_cost_dollars_total{namespace=\"ai\",endpoint=\"claude-haiku\",model=\"m\"} "))
            .unwrap_or_else(|| panic!("no cost counter: {page}"))
            .to_owned()
    }

    #[test]
    fn the_cost_counter_never_goes_down_unless_the_endpoint_is_recreated() {
        let m = Metrics::default();
        assert_eq!(cost_after(&m, endpoint("a", "0.5")), "0.5");
        // A fold in flight can read one ledger high for a reconcile, then the true figure.
        assert_eq!(cost_after(&m, endpoint("a", "0.75")), "0.75");
        assert_eq!(cost_after(&m, endpoint("a", "0.6")), "0.75");
        assert_eq!(cost_after(&m, endpoint("a", "0.8")), "0.8");
        // Deleted and created again: a new object, so a new counter (a reset Prometheus knows).
        assert_eq!(cost_after(&m, endpoint("b", "0.1")), "0.1");
    }

    #[test]
    fn budgets_and_spend_are_reported_per_period() {
        let m = Metrics::default();
        let budgeted: ModelEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "ai.kernelpanic09.io/v1alpha1",
            "kind": "ModelEndpoint",
            "metadata": {"name": "claude-haiku", "namespace": "ai", "uid": "a"},
            "spec": {"modelId": "m", "region": "us-east-1", "costBudget": {"daily": "10.00", "monthly": "200.00"}},
            "status": {"costToday": "1.25", "costThisMonth": "42.5"},
        }))
        .unwrap();
        let (store, mut writer) = kube::runtime::reflector::store::<ModelEndpoint>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(budgeted));
        let page = m.render(Some(&store));
        for line in [
            "k8s_ai_operator_budget_dollars{namespace=\"ai\",endpoint=\"claude-haiku\",period=\"day\"} 10.0",
            "k8s_ai_operator_budget_dollars{namespace=\"ai\",endpoint=\"claude-haiku\",period=\"month\"} 200.0",
            "k8s_ai_operator_spend_dollars{namespace=\"ai\",endpoint=\"claude-haiku\",period=\"day\"} 1.25",
            "k8s_ai_operator_spend_dollars{namespace=\"ai\",endpoint=\"claude-haiku\",period=\"month\"} 42.5",
        ] {
            assert!(page.contains(line), "{line} not in:\n{page}");
        }
        // An endpoint without a budget reports its spend, and no budget.
        let (store, mut writer) = kube::runtime::reflector::store::<ModelEndpoint>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(endpoint("a", "0")));
        assert!(
            !m.render(Some(&store))
                .contains("k8s_ai_operator_budget_dollars{")
        );
    }

    #[test]
    fn outdated_sidecars_are_reported_per_endpoint_from_its_status() {
        let m = Metrics::default();
        let mut outdated = endpoint("a", "0");
        if let Some(status) = outdated.status.as_mut() {
            status.outdated_sidecars = Some(3);
        }
        let (store, mut writer) = kube::runtime::reflector::store::<ModelEndpoint>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(outdated));
        let page = m.render(Some(&store));
        assert!(
            page.contains(
                "k8s_ai_operator_outdated_sidecars{namespace=\"ai\",endpoint=\"claude-haiku\"} 3"
            ),
            "{page}"
        );
        // An endpoint whose status does not say yet is not reported as 0.
        let (store, mut writer) = kube::runtime::reflector::store::<ModelEndpoint>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(endpoint("a", "0")));
        assert!(
            !m.render(Some(&store))
                .contains("k8s_ai_operator_outdated_sidecars{")
        );
    }
}

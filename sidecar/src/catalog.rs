//! The live configuration: the ModelEndpoints this pod may use, the PromptTemplates of its
//! namespace and the GuardrailPolicies they reference, as one immutable snapshot swapped whole
//! on every change. Sources: a YAML file (`--standalone`) or watches on the API server.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use k8s_ai_api::{
    GuardrailPolicy, ModelEndpoint, ModelEndpointSpec, ModelUsage, PromptTemplate,
    pricing::{self, ModelPrice, UnknownPrice},
    template::CompiledTemplate,
};
use kube::ResourceExt;
use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::{metrics::EndpointLabels, pii::PiiFilter};

/// One endpoint as the sidecar serves it.
#[derive(Debug)]
pub struct EndpointConfig {
    pub name: String,
    pub spec: ModelEndpointSpec,
    /// The id Bedrock is called with: the operator's resolution of `spec.modelId`, usually an
    /// inference profile (see `ModelEndpoint::model_to_call`).
    pub model_to_call: String,
    /// The price per token, or why there is none (calls are refused: never a silent zero).
    pub price: Result<ModelPrice, UnknownPrice>,
    /// The guardrail to apply, if the endpoint names one.
    pub guardrail: Option<Arc<GuardrailConfig>>,
    /// Spend the operator has folded into the endpoint's status (all pods).
    pub reported_cost_today: Decimal,
    pub reported_cost_this_month: Decimal,
    /// This pod's share of the endpoint's limits (its ModelUsage's spec), if the operator set one.
    pub allocation: Option<k8s_ai_api::model_usage::Allocation>,
    /// The ledger the allocation was read from, by UID and generation (empty and 0 without
    /// one): a share read earlier never replaces a newer one of the same ledger in the limiters.
    pub allocation_from: (String, i64),
    /// When this pod's ledger was created (none: no ledger seen).
    pub ledger_created: Option<std::time::SystemTime>,
    /// Since when this injected pod (its UID known) has waited for the operator to create its
    /// ledger (none: it has one, or is not an injected pod).
    pub awaiting_ledger_since: Option<std::time::SystemTime>,
    /// Whether the operator reports the budget exhausted for the period (`BudgetExceeded`): no
    /// grant will grow before the next day or month.
    pub budget_exhausted: bool,
    /// What this pod may spend per day and month (its ModelUsage's spec), if the operator granted it.
    pub budget_grant: Option<k8s_ai_api::model_usage::BudgetGrant>,
    /// Its metrics' labels: namespace, name, model.
    pub metric_labels: EndpointLabels,
}

/// How long a new pod's sidecar reports not ready while its first share of the endpoint's
/// limits has a zero in it (more pods than units): the kubelet starts the app after the native
/// sidecar's startup probe passes, so the app does not start into refusals; after this long the
/// sidecar is ready regardless (a share can rightly stay 0 a while).
pub const FIRST_SHARE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl EndpointConfig {
    /// Whether this pod still waits for its first share of the endpoint's limits: a share with
    /// a zero in it, or no budget grant under a cost budget, on a ledger younger than
    /// [`FIRST_SHARE_WAIT`]; or no ledger yet for up to that long (the operator creates it as
    /// the pod is created, with a share of 0). Until then the pod could only enforce the
    /// endpoint's whole figures, which a burst of new pods would pass together.
    pub fn awaiting_first_share(&self, now: std::time::SystemTime) -> bool {
        let young = |since: Option<std::time::SystemTime>| {
            since.is_some_and(|t| now.duration_since(t).unwrap_or_default() < FIRST_SHARE_WAIT)
        };
        let Some(share) = &self.allocation else {
            return young(self.awaiting_ledger_since);
        };
        let zero = share.requests_per_minute == 0
            || share.max_concurrency == Some(0)
            || share.tokens_per_minute == Some(0);
        let ungranted = self.spec.cost_budget.is_some() && self.budget_grant.is_none();
        (zero || ungranted) && young(self.ledger_created)
    }

    /// Whether this new pod still waits for the operator to sync the endpoint's guardrail policy
    /// to Bedrock (a policy applied just before the pod): until then only the local PII filter
    /// applies, so the app's first calls would go without the policy's Bedrock filters. Bounded
    /// as [`Self::awaiting_first_share`] is, from the pod's ledger.
    pub fn awaiting_guardrail(&self, now: std::time::SystemTime) -> bool {
        let unsynced = self
            .guardrail
            .as_ref()
            .is_some_and(|g| g.bedrock.is_none() && g.problem.is_none());
        let since = self.ledger_created.or(self.awaiting_ledger_since);
        unsynced
            && since.is_some_and(|t| now.duration_since(t).unwrap_or_default() < FIRST_SHARE_WAIT)
    }

    /// The limits this pod enforces: its allocation when it has one, else the endpoint's own.
    pub fn effective_rate_limit(&self) -> k8s_ai_api::model_endpoint::RateLimit {
        match &self.allocation {
            Some(a) => k8s_ai_api::model_endpoint::RateLimit {
                // A zero share admits nothing: the operator rotates shares among the pods asking.
                requests_per_minute: a.requests_per_minute,
                tokens_per_minute: a.tokens_per_minute,
                max_concurrency: a.max_concurrency,
            },
            None => self.spec.rate_limit.clone().unwrap_or_default(),
        }
    }
}

/// A guardrail as applied by the sidecar.
#[derive(Debug)]
pub struct GuardrailConfig {
    pub policy: String,
    /// Local PII filtering, before anything leaves the pod and on the answer.
    pub pii: Option<PiiFilter>,
    /// The synced Bedrock guardrail (id, version), once the operator has published it.
    pub bedrock: Option<(String, String)>,
    pub blocked_input_message: String,
    pub blocked_output_message: String,
    /// Why the policy could not be used, if it could not (the endpoint then refuses calls).
    pub problem: Option<String>,
}

/// One template as the sidecar renders it.
#[derive(Debug)]
pub struct TemplateConfig {
    pub name: String,
    pub endpoint: String,
    /// The `metadata.resourceVersion` (or `generation` in standalone mode) rendered with.
    pub revision: String,
    pub compiled: Result<CompiledTemplate, String>,
}

/// Everything the sidecar serves at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub endpoints: HashMap<String, Arc<EndpointConfig>>,
    pub templates: HashMap<String, Arc<TemplateConfig>>,
}

/// The current snapshot, replaced whole when the configuration changes.
#[derive(Debug)]
pub struct Catalog {
    namespace: String,
    /// This pod's name: whose ModelUsage allocations apply.
    pod: String,
    /// This pod's UID, when known: a ledger of another UID is an earlier pod's of the same name.
    pod_uid: String,
    /// Endpoint names this pod may use; empty means all (standalone only).
    allowed: Vec<String>,
    current: RwLock<Arc<Snapshot>>,
    loaded: watch::Sender<bool>,
    /// The endpoints, templates and policies (name and revision) the last info log announced:
    /// the pod's own ledger changes every report, which must not log a reload each time.
    announced: Mutex<Vec<String>>,
    /// Woken when this pod's share of an endpoint changes: the operator waits for the sidecar to
    /// report the new share before it hands a freed unit to another pod.
    shares_changed: tokio::sync::Notify,
    /// When this catalog was made (the sidecar's start).
    started: std::time::SystemTime,
}

impl Catalog {
    pub fn new(namespace: String, pod: String, allowed: Vec<String>) -> Self {
        Catalog {
            namespace,
            pod,
            pod_uid: String::new(),
            allowed,
            current: RwLock::new(Arc::new(Snapshot::default())),
            loaded: watch::channel(false).0,
            announced: Mutex::new(Vec::new()),
            shares_changed: tokio::sync::Notify::new(),
            started: std::time::SystemTime::now(),
        }
    }

    /// Waits until this pod's share of an endpoint changes (at once if it has since the last wait).
    pub async fn share_changed(&self) {
        self.shares_changed.notified().await;
    }

    /// This catalog for the pod with `uid` (the downward API's metadata.uid).
    #[must_use]
    pub fn with_pod_uid(mut self, uid: String) -> Self {
        self.pod_uid = uid;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether `ledger` is this pod's own: its name, and its UID when both are known (a pod
    /// recreated under the same name must not use the grant or counters of the earlier one).
    pub fn owns(&self, ledger: &ModelUsage) -> bool {
        (self.pod.is_empty() || ledger.spec.pod_name == self.pod)
            && (self.pod_uid.is_empty()
                || ledger.spec.pod_uid.is_empty()
                || ledger.spec.pod_uid == self.pod_uid)
    }

    /// Whether this pod may use `endpoint` (of its own namespace).
    pub fn allows(&self, endpoint: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| a == endpoint)
    }

    /// This pod's name (empty when not set).
    pub fn pod(&self) -> &str {
        &self.pod
    }

    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .map_or_else(|_| Arc::new(Snapshot::default()), |s| Arc::clone(&s))
    }

    /// Whether a configuration has been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Replaces the configuration with one built from these objects.
    pub fn update(&self, objects: &Manifests) {
        let snapshot = self.build(objects);
        let revisions = configuration_revisions(objects);
        // A poisoned lock only costs a log line: announce.
        let changed = self.announced.lock().map_or(true, |mut announced| {
            let changed = *announced != revisions || !self.is_loaded();
            *announced = revisions;
            changed
        });
        if changed {
            tracing::info!(
                endpoints = snapshot.endpoints.len(),
                templates = snapshot.templates.len(),
                "configuration loaded"
            );
        } else {
            tracing::debug!("configuration refreshed (ledgers or allocations)");
        }
        // A share or a grant: the operator waits for the report that this pod enforces it.
        let shares = |s: &Snapshot| {
            let mut shares: Vec<_> = s
                .endpoints
                .iter()
                .map(|(name, e)| (name.clone(), e.allocation.clone(), e.budget_grant.clone()))
                .collect();
            shares.sort_by(|a, b| a.0.cmp(&b.0));
            shares
        };
        if shares(&self.snapshot()) != shares(&snapshot) {
            self.shares_changed.notify_one();
        }
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(snapshot);
        }
        self.loaded.send_replace(true);
    }

    fn build(&self, objects: &Manifests) -> Snapshot {
        let Manifests {
            endpoints,
            templates,
            policies,
            usages,
        } = objects;
        let policies: HashMap<String, &GuardrailPolicy> =
            policies.iter().map(|p| (p.name_any(), p)).collect();
        let mut guardrails: HashMap<String, Arc<GuardrailConfig>> = HashMap::new();
        let mut snapshot = Snapshot::default();
        for endpoint in endpoints {
            let name = endpoint.name_any();
            if endpoint.namespace().as_deref().unwrap_or(&self.namespace) != self.namespace
                || !self.allows(&name)
            {
                continue;
            }
            let guardrail = endpoint.spec.guardrail_policy_ref.as_ref().map(|policy| {
                Arc::clone(guardrails.entry(policy.clone()).or_insert_with(|| {
                    Arc::new(guardrail_config(policy, policies.get(policy).copied()))
                }))
            });
            let status = endpoint.status.as_ref();
            let own_ledger = usages
                .iter()
                .find(|u| u.spec.endpoint == name && self.owns(u));
            let model_to_call = endpoint.model_to_call();
            let config = EndpointConfig {
                price: pricing::price_for(&endpoint.spec, &model_to_call),
                model_to_call,
                spec: endpoint.spec.clone(),
                guardrail,
                reported_cost_today: status
                    .and_then(|s| s.cost_today)
                    .map(k8s_ai_api::Money::amount)
                    .unwrap_or_default(),
                reported_cost_this_month: status
                    .and_then(|s| s.cost_this_month)
                    .map(k8s_ai_api::Money::amount)
                    .unwrap_or_default(),
                // The operator's share of the endpoint's limits and budget for this pod, when it has
                // written them.
                allocation: own_ledger.and_then(|u| u.spec.allocation.clone()),
                allocation_from: own_ledger.map_or_else(Default::default, |u| {
                    (
                        u.metadata.uid.clone().unwrap_or_default(),
                        u.metadata.generation.unwrap_or_default(),
                    )
                }),
                ledger_created: own_ledger
                    .and_then(|u| u.metadata.creation_timestamp.as_ref())
                    .map(|t| std::time::SystemTime::from(t.0)),
                awaiting_ledger_since: (own_ledger.is_none() && !self.pod_uid.is_empty())
                    .then_some(self.started),
                budget_grant: own_ledger.and_then(|u| u.spec.budget_grant.clone()),
                budget_exhausted: status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "BudgetExceeded" && c.status == "True")
                }),
                metric_labels: EndpointLabels {
                    namespace: self.namespace.as_str().into(),
                    endpoint: name.as_str().into(),
                    model: endpoint.spec.model_id.as_str().into(),
                },
                name: name.clone(),
            };
            snapshot.endpoints.insert(name, Arc::new(config));
        }
        for template in templates {
            if template.namespace().as_deref().unwrap_or(&self.namespace) != self.namespace {
                continue;
            }
            let revision = template
                .resource_version()
                .or_else(|| template.metadata.generation.map(|g| g.to_string()))
                .unwrap_or_else(|| "0".to_owned());
            let config = TemplateConfig {
                name: template.name_any(),
                endpoint: template.spec.model_endpoint_ref.name.clone(),
                revision,
                compiled: CompiledTemplate::compile(&template.spec).map_err(|e| e.to_string()),
            };
            snapshot
                .templates
                .insert(config.name.clone(), Arc::new(config));
        }
        snapshot
    }

    /// Loads the objects of a multi-document YAML file (standalone mode).
    pub fn load_file(&self, path: &Path) -> Result<(), ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let objects = parse_manifests(&text).map_err(|message| ConfigFileError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        self.update(&objects);
        Ok(())
    }
}

fn guardrail_config(policy: &str, found: Option<&GuardrailPolicy>) -> GuardrailConfig {
    let Some(found) = found else {
        return GuardrailConfig {
            policy: policy.to_owned(),
            pii: None,
            bedrock: None,
            blocked_input_message: k8s_ai_api::guardrail_policy::DEFAULT_BLOCKED_INPUT_MESSAGE
                .to_owned(),
            blocked_output_message: k8s_ai_api::guardrail_policy::DEFAULT_BLOCKED_OUTPUT_MESSAGE
                .to_owned(),
            problem: Some(format!("GuardrailPolicy {policy} not found")),
        };
    };
    let (pii, problem) = match found
        .spec
        .sensitive_information_policy
        .as_ref()
        .map(PiiFilter::new)
        .transpose()
    {
        Ok(pii) => (pii.filter(|p| !p.is_empty()), None),
        Err(e) => (None, Some(format!("GuardrailPolicy {policy}: {e}"))),
    };
    let status = found.status.as_ref();
    let bedrock = status.and_then(|s| {
        Some((
            s.guardrail_id.clone()?,
            s.version.clone().unwrap_or_else(|| "DRAFT".to_owned()),
        ))
    });
    GuardrailConfig {
        policy: policy.to_owned(),
        pii,
        bedrock,
        blocked_input_message: found.spec.blocked_input_messaging.clone(),
        blocked_output_message: found.spec.blocked_outputs_messaging.clone(),
        problem,
    }
}

/// The objects of a manifest file, by kind.
#[derive(Debug, Default)]
pub struct Manifests {
    pub endpoints: Vec<ModelEndpoint>,
    pub templates: Vec<PromptTemplate>,
    pub policies: Vec<GuardrailPolicy>,
    pub usages: Vec<ModelUsage>,
}

/// Kind, name and revision of every object that configures endpoints (ledgers left out), sorted.
fn configuration_revisions(objects: &Manifests) -> Vec<String> {
    // The generation (spec changes) where the API server keeps one: the endpoints' status
    // changes with every fold of usage, which is no news in the log.
    fn revision<K: ResourceExt>(kind: &str, object: &K) -> String {
        let meta = object.meta();
        let version = meta.generation.map_or_else(
            || meta.resource_version.clone().unwrap_or_default(),
            |generation| generation.to_string(),
        );
        format!("{kind}/{}@{version}", object.name_any())
    }
    let mut out: Vec<String> = (objects
        .endpoints
        .iter()
        .map(|o| revision("ModelEndpoint", o)))
    .chain(
        objects
            .templates
            .iter()
            .map(|o| revision("PromptTemplate", o)),
    )
    .chain(
        objects
            .policies
            .iter()
            .map(|o| revision("GuardrailPolicy", o)),
    )
    .collect();
    out.sort_unstable();
    out
}

/// Parses a multi-document YAML stream of our kinds; other kinds (Namespaces, …) are skipped.
pub fn parse_manifests(text: &str) -> Result<Manifests, String> {
    use serde::Deserialize;
    let mut out = Manifests::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let context = |e: serde_yaml::Error| format!("document {} ({kind}): {e}", i + 1);
        match kind.as_str() {
            "ModelEndpoint" => out
                .endpoints
                .push(serde_yaml::from_value(value).map_err(context)?),
            "PromptTemplate" => out
                .templates
                .push(serde_yaml::from_value(value).map_err(context)?),
            "GuardrailPolicy" => out
                .policies
                .push(serde_yaml::from_value(value).map_err(context)?),
            "ModelUsage" => out
                .usages
                .push(serde_yaml::from_value(value).map_err(context)?),
            _ => tracing::debug!(kind, "skipping a document of another kind"),
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {message}")]
    Parse { path: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = concat!(
        include_str!("../../manifests/samples/guardrailpolicy.yaml"),
        "---\n",
        include_str!("../../manifests/samples/modelendpoint.yaml"),
        "---\n",
        include_str!("../../manifests/samples/prompttemplate.yaml"),
    );

    #[test]
    fn a_new_pod_waits_for_its_first_share_a_bounded_time() {
        let catalog = Catalog::new(
            "ai-workloads".into(),
            "p".into(),
            vec!["claude-haiku".into()],
        );
        // The seed's endpoint has a cost budget: a share is whole with a grant.
        let granted = |created: &str, rpm: u32, grant: &str| {
            format!(
                "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: p.claude-haiku, namespace: ai-workloads, creationTimestamp: \"{created}\"}}\nspec: {{podName: p, podUid: u, endpoint: claude-haiku, allocation: {{requestsPerMinute: {rpm}}}{grant}}}\n---\n{SEED}"
            )
        };
        let ledger = |created: &str, rpm: u32| {
            granted(
                created,
                rpm,
                ", budgetGrant: {day: \"2026-12-06\", daily: \"1.00\"}",
            )
        };
        let now = std::time::SystemTime::now();
        let just_now = jiff::Timestamp::try_from(now).unwrap().to_string();
        let waiting = |yaml: &str, at: std::time::SystemTime| {
            catalog.update(&parse_manifests(yaml).unwrap());
            catalog.snapshot().endpoints["claude-haiku"].awaiting_first_share(at)
        };
        assert!(waiting(&ledger(&just_now, 0), now), "a first share of 0");
        assert!(
            !waiting(&ledger(&just_now, 12), now),
            "its first share came"
        );
        assert!(
            !waiting(&ledger(&just_now, 0), now + FIRST_SHARE_WAIT),
            "ready after the bound, share or not"
        );
        assert!(
            waiting(&granted(&just_now, 12, ""), now),
            "a share but no grant of the budget yet"
        );
        assert!(!waiting(SEED, now), "no ledger: the endpoint's own limits");
        let injected = Catalog::new(
            "ai-workloads".into(),
            "p".into(),
            vec!["claude-haiku".into()],
        )
        .with_pod_uid("u".into());
        let waiting = |yaml: &str, at: std::time::SystemTime| {
            injected.update(&parse_manifests(yaml).unwrap());
            injected.snapshot().endpoints["claude-haiku"].awaiting_first_share(at)
        };
        assert!(
            waiting(SEED, now),
            "an injected pod's ledger is still to come"
        );
        assert!(
            !waiting(SEED, std::time::SystemTime::now() + FIRST_SHARE_WAIT),
            "ready after the bound, ledger or not"
        );
        assert!(
            !waiting(&ledger(&just_now, 12), now),
            "its ledger came with a share"
        );
        // The seed's policy is not synced to Bedrock yet: a new pod waits for it, within the bound.
        let guardrail = |at| injected.snapshot().endpoints["claude-haiku"].awaiting_guardrail(at);
        assert!(guardrail(now), "a young pod waits for the policy's sync");
        assert!(!guardrail(now + FIRST_SHARE_WAIT), "ready after the bound");
        let synced = ledger(&just_now, 12).replace(
            "kind: GuardrailPolicy\n",
            "kind: GuardrailPolicy\nstatus: {guardrailId: gr-1, version: \"1\"}\n",
        );
        injected.update(&parse_manifests(&synced).unwrap());
        assert!(!guardrail(now), "synced");
    }

    #[test]
    fn the_seed_manifests_load_as_one_file() {
        let catalog = Catalog::new(
            "ai-workloads".into(),
            String::new(),
            vec!["claude-haiku".into()],
        );
        let m = parse_manifests(SEED).unwrap();
        catalog.update(&m);
        let snap = catalog.snapshot();
        let me = &snap.endpoints["claude-haiku"];
        assert!(me.price.is_ok());
        let guardrail = me.guardrail.as_ref().unwrap();
        assert!(guardrail.problem.is_none() && guardrail.pii.is_some());
        assert!(
            guardrail.bedrock.is_none(),
            "no guardrail id before the operator syncs it"
        );
        assert!(snap.templates["code-review"].compiled.is_ok());
    }

    #[test]
    fn only_configuration_changes_count_as_a_new_configuration() {
        let mut m = parse_manifests(SEED).unwrap();
        let before = configuration_revisions(&m);
        assert_eq!(before.len(), 3, "{before:?}");
        // The pod's own ledger changes at every report: not a configuration change.
        let spec = k8s_ai_api::ModelUsageSpec {
            pod_name: "p".into(),
            pod_uid: String::new(),
            endpoint: "claude-haiku".into(),
            allocation: None,
            budget_grant: None,
        };
        m.usages.push(ModelUsage::new("p.claude-haiku", spec));
        assert_eq!(configuration_revisions(&m), before);
        m.endpoints[0].metadata.resource_version = Some("42".into());
        assert_ne!(configuration_revisions(&m), before);
    }

    #[test]
    fn other_namespaces_and_endpoints_are_ignored() {
        let catalog = Catalog::new("elsewhere".into(), String::new(), vec![]);
        let m = parse_manifests(SEED).unwrap();
        catalog.update(&m);
        assert!(catalog.snapshot().endpoints.is_empty());
        let catalog = Catalog::new("ai-workloads".into(), String::new(), vec!["other".into()]);
        catalog.update(&m);
        assert!(catalog.snapshot().endpoints.is_empty());
    }

    #[test]
    fn bad_documents_are_reported_with_their_position() {
        let err = parse_manifests("kind: ModelEndpoint\napiVersion: ai.kernelpanic09.io/v1alpha1\nmetadata: {name: x}\nspec: {}\n").unwrap_err();
        assert!(err.contains("document 1 (ModelEndpoint)"), "{err}");
    }
}

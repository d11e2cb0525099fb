//! `ModelEndpoint`: one Bedrock model in one region, who may invoke it, and its limits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Money, model_usage::PeriodUsage};

/// Default `maxTokens`, as the original operator had it.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Largest `maxTokens` accepted.
pub const MAX_MAX_TOKENS: u32 = 131_072;
/// Default `rateLimit.requestsPerMinute`.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;

/// IAM role ARNs in any AWS partition.
pub const ROLE_ARN_PATTERN: &str =
    r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$";
/// AWS region names such as `us-east-1`, `eu-central-2`, `us-gov-west-1`.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-gov|-iso|-isob)?-[a-z]+-[0-9]{1,2}$";
/// Bedrock model ids, inference profile ids (`us.`, `eu.`, `global.` …) and model or profile ARNs.
pub const MODEL_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$";

/// Access to one AWS Bedrock model in one region: the IAM role that may invoke it, token limits,
/// rate limits shared by every pod that uses it, a cost budget, and an optional guardrail.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ai.kernelpanic09.io",
    version = "v1alpha1",
    kind = "ModelEndpoint",
    doc = "Access to one AWS Bedrock model in one region, with the IAM role that may invoke it, limits shared by every pod that uses it, a cost budget and an optional guardrail.",
    namespaced,
    status = "ModelEndpointStatus",
    shortname = "me",
    category = "ai",
    derive = "PartialEq",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelId"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Available", type_ = "boolean", json_path = ".status.available"),
    printcolumn(
        name = "Calls",
        type_ = "string",
        json_path = ".status.resolvedModelId",
        priority = 1
    ),
    printcolumn(
        name = "Cost/Month",
        type_ = "string",
        json_path = ".status.costThisMonth"
    ),
    printcolumn(
        name = "Invocations",
        type_ = "integer",
        json_path = ".status.invocationsThisMonth"
    ),
    printcolumn(
        name = "Outdated",
        type_ = "integer",
        json_path = ".status.outdatedSidecars",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointSpec {
    /// The Bedrock model id (e.g. `anthropic.claude-haiku-4-5-20251001-v1:0`), a cross-region
    /// inference profile id (`us.`, `eu.`, `apac.`, `global.` prefixes) or a model or profile ARN.
    #[schemars(length(min = 1, max = 2048), regex(pattern = MODEL_ID_PATTERN))]
    pub model_id: String,

    /// Which inference profile to call when `modelId` is a base model id: `geographic` (the
    /// cross-region profile of the region's geography, `us.`, `eu.`, `apac.`, `jp.`, `au.`…),
    /// `global` (the `global.` profile: any commercial region, about 10% cheaper for Claude 4.5
    /// and later), or the id or ARN of a profile to call as is (e.g. an application inference
    /// profile). When omitted, the model is called by its id where Bedrock allows on-demand calls,
    /// and through the geographic profile where it does not (Claude 3.7 and later, Nova Premier,
    /// Llama 3.2 and later). The id called is published in `status.resolvedModelId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = MODEL_ID_PATTERN))]
    pub inference_profile: Option<String>,

    /// The AWS region whose Bedrock runtime serves this endpoint, e.g. `us-east-1`.
    #[schemars(length(max = 32), regex(pattern = REGION_PATTERN))]
    pub region: String,

    /// The IAM role pods assume (IRSA, STS AssumeRoleWithWebIdentity with the pod's projected
    /// service-account token) to invoke the model. It needs `bedrock:InvokeModel` and
    /// `bedrock:InvokeModelWithResponseStream` on the model. When omitted, the sidecar uses the
    /// default AWS credential chain of its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = ROLE_ARN_PATTERN))]
    pub irsa_role_arn: Option<String>,

    /// The most output tokens one call may ask for; requests asking for more are capped to it.
    /// Between 1 and 131072.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 131_072))]
    pub max_tokens: u32,

    /// Spending limits in US dollars, enforced across all pods using this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget: Option<CostBudget>,

    /// Rate limits for this endpoint as a whole, shared among all pods that use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// The name of a cluster-scoped GuardrailPolicy applied to every call through this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub guardrail_policy_ref: Option<String>,

    /// Prices to charge instead of the built-in on-demand price table, e.g. for models with
    /// negotiated or provisioned pricing, or models the table does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
}

/// What `spec.inferenceProfile` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileChoice<'a> {
    /// Not set: the model id where on-demand calls are allowed, else the geographic profile.
    Automatic,
    /// `geographic`: the cross-region profile of the region's geography.
    Geographic,
    /// `global`: the `global.` cross-region profile.
    Global,
    /// The id or ARN of a profile, called as is.
    Named(&'a str),
}

impl ModelEndpointSpec {
    /// What `inferenceProfile` asks for.
    pub fn profile_choice(&self) -> ProfileChoice<'_> {
        match self.inference_profile.as_deref() {
            None => ProfileChoice::Automatic,
            Some("geographic") => ProfileChoice::Geographic,
            Some("global") => ProfileChoice::Global,
            Some(named) => ProfileChoice::Named(named),
        }
    }
}

impl ModelEndpoint {
    /// The model id, profile id or ARN that calls through this endpoint send to Bedrock: the one
    /// the operator resolved for the current spec (`status.resolvedModelId`), else the best that
    /// the spec alone tells (a named profile; the first geographic or the global profile when asked;
    /// the model id), so a sidecar without an operator (standalone mode) still calls something.
    pub fn model_to_call(&self) -> String {
        let status = self.status.as_ref();
        if let Some(resolved) = status.and_then(|s| s.resolved_model_id.as_deref())
            && status.and_then(|s| s.observed_generation) == self.metadata.generation
        {
            return resolved.to_owned();
        }
        let spec = &self.spec;
        let bare = crate::model_id::parse(&spec.model_id).filter(|m| !m.is_profile());
        match (spec.profile_choice(), bare) {
            (ProfileChoice::Named(profile), _) => profile.to_owned(),
            (ProfileChoice::Global, Some(m)) => {
                crate::model_id::profile_id(crate::model_id::GLOBAL_PREFIX, m.base)
            }
            (ProfileChoice::Geographic, Some(m)) => {
                match crate::model_id::geographic_prefixes(&spec.region).first() {
                    Some(prefix) => crate::model_id::profile_id(prefix, m.base),
                    None => spec.model_id.clone(),
                }
            }
            _ => spec.model_id.clone(),
        }
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}

fn default_requests_per_minute() -> u32 {
    DEFAULT_REQUESTS_PER_MINUTE
}

/// Daily and monthly spending limits in US dollars, as decimal strings such as `"10.00"`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.daily) || !has(self.monthly) || quantity(self.daily).compareTo(quantity(self.monthly)) <= 0").message("costBudget.daily must not exceed costBudget.monthly").field_path(".daily"))]
pub struct CostBudget {
    /// Most US dollars to spend per day, e.g. `"10.00"`: a non-negative decimal with at most 6
    /// decimals. Calls are refused with `budget_exceeded` once it is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Money>,

    /// Most US dollars to spend per calendar month, e.g. `"200.00"`; must be at least `daily`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Money>,

    /// The IANA time zone in which days and months begin, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_+/-]*$"),
        // The API server's own time zone database decides (it embeds Go's): an unknown zone is an error.
        extend("x-kubernetes-validations" = [{
            "rule": "self != 'Local' && timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0",
            "message": "not a known IANA time zone, e.g. Europe/Berlin or UTC"
        }])
    )]
    pub time_zone: Option<String>,
}

/// Limits for the endpoint as a whole; the operator divides them among the pods that use it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Most requests per minute across all pods. Default 60.
    #[serde(default = "default_requests_per_minute")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_minute: u32,

    /// Most tokens (input plus output) per minute across all pods. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub tokens_per_minute: Option<u64>,

    /// Most calls in flight at once across all pods. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_concurrency: Option<u32>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            tokens_per_minute: None,
            max_concurrency: None,
        }
    }
}

/// The counters of deleted pods' ledgers, kept after the ledgers are gone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiredUsage {
    /// Their counters for the day named in `period` (older days are dropped at rollover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<PeriodUsage>,
    /// Their counters for the month named in `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<PeriodUsage>,
    /// Their counters since the endpoint was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<PeriodUsage>,
    /// UIDs of ledgers already folded in whose deletion may not have completed: a retried fold
    /// finds its ledger here and does not count it twice. Pruned once those ledgers are gone, so it
    /// holds only the deletions in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10_000))]
    pub folded: Vec<String>,
    /// US dollars retired pods may have spent without reporting it (they vanished holding a
    /// budget grant): counted as spent in the figures above, since the endpoint was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreconciled: Option<Money>,
}

/// Prices in US dollars per million tokens, as decimal strings such as `"3.00"`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// US dollars per million input tokens.
    pub input_per_million_tokens: Money,
    /// US dollars per million output tokens.
    pub output_per_million_tokens: Money,
    /// US dollars per million input tokens read from the prompt cache. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million_tokens: Option<Money>,
    /// US dollars per million input tokens written to the prompt cache. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million_tokens: Option<Money>,
}

/// What the operator observed about the endpoint, and what it has cost.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointStatus {
    /// Whether pods can invoke the model through this endpoint now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,

    /// The id sidecars send to Bedrock for the spec of `observedGeneration`: `modelId` itself, or
    /// the inference profile it resolves to (see `spec.inferenceProfile`). Prices follow this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_model_id: Option<String>,

    /// Current state: `Ready`, `Available`, `CredentialsValid`, `GuardrailResolved`, `PriceKnown`,
    /// `BudgetExceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// US dollars spent today (in the budget's time zone), all pods together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_today: Option<Money>,

    /// US dollars spent this calendar month (in the budget's time zone), all pods together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_this_month: Option<Money>,

    /// Spend that may have happened but was never reported (pods that vanished holding a budget
    /// grant); already included in the cost figures, so they can be high by this much, never low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreconciled_cost: Option<Money>,

    /// Successful calls today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocations_today: Option<u64>,

    /// Successful calls this calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocations_this_month: Option<u64>,

    /// Requests refused this month (rate limit, budget, guardrail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_this_month: Option<u64>,

    /// Input tokens billed since the endpoint was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_input_tokens: Option<u64>,

    /// Output tokens billed since the endpoint was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_output_tokens: Option<u64>,

    /// US dollars spent since the endpoint was created, all pods together (live and retired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost: Option<Money>,

    /// What pods that are gone used, folded in exactly once when their ledgers were deleted; the
    /// figures above include it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<RetiredUsage>,

    /// Pods using this endpoint whose sidecar is not the image the operator injects now (they keep
    /// the one they were created with): restart them to upgrade it (`kubectl rollout restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outdated_sidecars: Option<u32>,

    /// Kept for compatibility with the original operator, which published a proxy Service name here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";

    fn endpoint(spec: &serde_json::Value, status: &serde_json::Value) -> ModelEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ai.kernelpanic09.io/v1alpha1",
            "kind": "ModelEndpoint",
            "metadata": {"name": "e", "namespace": "n", "generation": 2},
            "spec": spec.clone(),
            "status": status.clone(),
        }))
        .unwrap()
    }

    #[test]
    fn the_operators_resolution_wins_only_for_the_generation_it_saw() {
        let spec = serde_json::json!({"modelId": HAIKU, "region": "us-east-1"});
        let current = endpoint(
            &spec,
            &serde_json::json!({"resolvedModelId": format!("us.{HAIKU}"), "observedGeneration": 2}),
        );
        assert_eq!(current.model_to_call(), format!("us.{HAIKU}"));
        let stale = endpoint(
            &spec,
            &serde_json::json!({"resolvedModelId": "eu.x", "observedGeneration": 1}),
        );
        assert_eq!(stale.model_to_call(), HAIKU);
    }

    #[test]
    fn without_the_operator_the_spec_alone_decides() {
        let call = |profile: Option<&str>, region: &str, model: &str| {
            let mut spec = serde_json::json!({"modelId": model, "region": region});
            if let Some(p) = profile {
                spec["inferenceProfile"] = p.into();
            }
            endpoint(&spec, &serde_json::json!({})).model_to_call()
        };
        assert_eq!(call(None, "us-east-1", HAIKU), HAIKU);
        assert_eq!(
            call(Some("global"), "us-east-1", HAIKU),
            format!("global.{HAIKU}")
        );
        assert_eq!(
            call(Some("geographic"), "eu-west-1", HAIKU),
            format!("eu.{HAIKU}")
        );
        assert_eq!(
            call(Some("geographic"), "ap-northeast-1", HAIKU),
            format!("jp.{HAIKU}")
        );
        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        assert_eq!(call(Some(arn), "us-east-1", HAIKU), arn);
        // A model id that already names a profile is called as written.
        assert_eq!(
            call(Some("global"), "us-east-1", &format!("eu.{HAIKU}")),
            format!("eu.{HAIKU}")
        );
    }
}

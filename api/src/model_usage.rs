//! `ModelUsage`: the usage ledger, one object per (pod, endpoint). The operator writes `spec`
//! (the pod's share of the endpoint's limits and budget); the pod's sidecar writes `status`
//! (cumulative counters, as absolute values so a retried write is harmless).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Money;
use crate::model_endpoint::DNS_SUBDOMAIN_PATTERN;

/// The name of the ModelUsage of `pod` for `endpoint`: `<pod>.<endpoint>`, or, when that would
/// be over 253 characters, a prefix of it and a hash that keeps it unique.
pub fn ledger_name(pod: &str, endpoint: &str) -> String {
    let full = format!("{pod}.{endpoint}");
    if full.len() <= 253 {
        return full;
    }
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut prefix: String = full.chars().take(253 - 17).collect();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    format!("{prefix}-{hash:016x}")
}

/// One pod's use of one ModelEndpoint, and its allocation of the endpoint's limits.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ai.kernelpanic09.io",
    version = "v1alpha1",
    kind = "ModelUsage",
    doc = "The usage ledger of one pod for one ModelEndpoint: the pod's allocation of the endpoint's limits (spec, written by the operator) and what it used (status, written by its sidecar).",
    namespaced,
    status = "ModelUsageStatus",
    shortname = "mu",
    category = "ai",
    derive = "PartialEq",
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.podName"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(
        name = "Cost/Month",
        type_ = "string",
        json_path = ".status.month.cost"
    ),
    printcolumn(
        name = "Invocations",
        type_ = "integer",
        json_path = ".status.month.invocations"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsageSpec {
    /// The pod whose sidecar reports into this ledger.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub pod_name: String,
    /// The pod's UID, so a new pod with the same name never inherits this ledger.
    #[schemars(length(min = 1, max = 64))]
    pub pod_uid: String,
    /// The ModelEndpoint, in this namespace, whose use is recorded here.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub endpoint: String,
    /// This pod's share of the endpoint's rate limits, set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// How much of the endpoint's remaining budget this pod may spend, set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_grant: Option<BudgetGrant>,
}

/// A pod's share of an endpoint's limits.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Requests per minute this pod may send.
    pub requests_per_minute: u32,
    /// Tokens per minute this pod may use; unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Calls this pod may have in flight at once; unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// The budget a pod may spend, per period.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetGrant {
    /// The day this grant belongs to (`YYYY-MM-DD` in the budget's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub day: Option<String>,
    /// Total US dollars this pod may spend on `day` (cumulative: what it has spent is included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Money>,
    /// The month this grant belongs to (`YYYY-MM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}$"))]
    pub month: Option<String>,
    /// Total US dollars this pod may spend in `month`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Money>,
}

/// What the sidecar has used, as cumulative counters.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsageStatus {
    /// Use on the current day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<PeriodUsage>,
    /// Use in the current month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<PeriodUsage>,
    /// Use since the pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<PeriodUsage>,
    /// Recent demand, which the operator uses to rebalance allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<Demand>,
    /// What the sidecar held of its share when it reported: the operator moves a unit to another
    /// pod only once it is free here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<Holding>,
    /// Budget reserved by calls still in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Money>,
    /// The worst-case cost of the last call refused today for want of budget grant: the
    /// operator grants that much first, when the budget allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_wanted: Option<Money>,
    /// The sidecar has stopped and these counters are all it used (its last report on shutdown).
    /// A ledger retired without it may hide unreported use up to its budget grant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    /// Increases with every report; the operator ignores reports older than one it has seen.
    #[serde(default)]
    pub sequence: u64,
    /// When the sidecar last reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// Counters for one period.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeriodUsage {
    /// The period: `YYYY-MM-DD`, `YYYY-MM`, or empty for the lifetime.
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub period: String,
    /// Successful calls.
    #[serde(default)]
    pub invocations: u64,
    /// Input tokens billed.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens billed.
    #[serde(default)]
    pub output_tokens: u64,
    /// US dollars spent.
    #[serde(default)]
    pub cost: Money,
    /// Requests refused, by reason (`rate_limited`, `budget_exceeded`, `guardrail_blocked`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected: std::collections::BTreeMap<String, u64>,
}

impl PeriodUsage {
    /// Adds `other`'s counters to these, exactly (counters saturate rather than wrap).
    pub fn add(&mut self, other: &PeriodUsage) {
        self.invocations = self.invocations.saturating_add(other.invocations);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        // Unreachable in practice: the range ends near 7.9e28 dollars.
        self.cost = self.cost.checked_add(other.cost).unwrap_or(self.cost);
        for (reason, count) in &other.rejected {
            let total = self.rejected.entry(reason.clone()).or_default();
            *total = total.saturating_add(*count);
        }
    }
}

/// Recent demand of a pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    /// Requests per minute the app asked for recently, accepted or not.
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Tokens per minute used recently.
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// Calls the app wanted in flight at once recently (in flight, plus one for a call refused
    /// for concurrency).
    #[serde(default)]
    pub max_concurrency: u32,
}

/// What a sidecar held of its share of the endpoint's limits when it reported.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// The share it enforced (its ledger's `spec.allocation` as it had seen it); none: it had no
    /// share and enforced the endpoint's own limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// Requests it admitted in the last rolling minute.
    #[serde(default)]
    pub requests_in_last_minute: u32,
    /// Calls it had in flight.
    #[serde(default)]
    pub in_flight: u32,
    /// The budget grant it enforced (its ledger's `spec.budgetGrant` as it had seen it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_grant: Option<BudgetGrant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_names_are_valid_and_unique() {
        assert_eq!(
            ledger_name("web-7d9f", "claude-haiku"),
            "web-7d9f.claude-haiku"
        );
        let long_pod = "p".repeat(250);
        let a = ledger_name(&long_pod, "endpoint-a");
        let b = ledger_name(&long_pod, "endpoint-b");
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
    }
}

//! The reconcilers: one module per kind, the same shape each (`reconcile` → `apply` on the
//! object, `error_policy` with backoff), sharing one [`Context`] and one [`Error`].

pub mod allocation;
pub mod budget;
pub mod cache;
pub mod conditions;
pub mod fold;
pub mod guardrail_policy;
pub mod ledger;
pub mod model_endpoint;
pub mod prompt_template;
pub mod sidecar_rbac;

use std::{sync::Arc, time::Duration};

use aws_sdk_bedrock::error::{ProvideErrorMetadata, SdkError};
use futures_util::{Stream, StreamExt};
use k8s_ai_api::ModelUsage;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client, ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};

/// What every reconciler needs.
pub struct Context {
    pub client: Client,
    /// Publishes Events on transitions (`kubectl describe` shows them).
    pub recorder: kube::runtime::events::Recorder,
    /// The operator's own AWS configuration (its identity, region and endpoint overrides).
    pub aws: aws_config::SdkConfig,
    /// The last AWS checks of each ModelEndpoint (`ns/name` → generation, when, result).
    pub aws_checks: model_endpoint::AwsChecks,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Consecutive failures per object, for growing retry delays.
    pub backoff: Backoff,
    /// Every ModelUsage, from the operator's one watch of them (see `cache`).
    pub ledgers: cache::Cached<ModelUsage>,
    /// Every injected Pod, from the operator's one watch of them.
    pub pods: cache::Cached<Pod>,
    /// The sidecar image the webhook injects now: pods running another are outdated.
    pub sidecar_image: String,
}

/// Why a reconcile failed; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read or write {kind} {name}")]
    Kube {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("the object has no namespace")]
    NoNamespace,
    #[error("Bedrock {operation} failed: {message}")]
    Bedrock {
        operation: &'static str,
        message: String,
        /// The SDK's error, when there is one (not when a guardrail stayed busy).
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Adding or removing the finalizer failed (a failed apply or cleanup is its own error).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the operator's cache of {kind}s has stopped")]
    CacheGone {
        kind: String,
        source: tokio::sync::watch::error::RecvError,
    },
}

impl Error {
    /// Whether the API server refused a write because the object changed since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(e), .. } if e.code == 409)
    }

    /// A short PascalCase category, for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeError",
            Error::NoNamespace => "NoNamespace",
            Error::Bedrock { .. } => "BedrockError",
            Error::Finalizer(_) => "FinalizerError",
            Error::CacheGone { .. } => "CacheGone",
        }
    }
}

/// An AWS SDK error as Conditions, Events and logs show it: a service error's code and message
/// (`code: message`), else the SDK's own description.
pub fn aws_error_message<E: ProvideErrorMetadata + std::fmt::Display>(e: &SdkError<E>) -> String {
    match e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// A server-side apply patch of `K`'s status subresource: `status` under `K`'s own `apiVersion`
/// and `kind`, which an apply patch must name.
pub fn status_patch<K: kube::Resource<DynamicType = ()>>(
    status: serde_json::Value,
) -> serde_json::Value {
    let mut patch = serde_json::Map::new();
    patch.insert("apiVersion".into(), K::api_version(&()).into());
    patch.insert("kind".into(), K::kind(&()).into());
    patch.insert("status".into(), status);
    serde_json::Value::Object(patch)
}

/// Publishes an Event on `object` (call on transitions only): Normal when `good`, else Warning.
pub async fn announce<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    good: bool,
    reason: &str,
    message: String,
) {
    use kube::runtime::events::{Event, EventType};
    let event = Event {
        type_: if good {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason.into(),
        // The API server refuses notes over 1 KiB.
        note: Some(message.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(kind = %K::kind(&()), object = %object.name_any(), error = %e, "could not publish an Event");
    }
}

/// How long to wait before retrying after a write lost to a concurrent one (409 Conflict).
pub const RETRY_AFTER_CONFLICT: Duration = Duration::from_millis(500);

/// How long to wait before retrying after an error.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(15);
/// How often an object is checked again when nothing changes.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Per-object retry delays: doubling from [`RETRY_AFTER_ERROR`] with each consecutive failure,
/// capped at [`RECHECK`], forgotten at the next success.
#[derive(Default)]
pub struct Backoff(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl Backoff {
    /// Records a failure of `key`; returns how long to wait before retrying it.
    pub fn failed(&self, key: String) -> Duration {
        let failures = self.0.lock().map_or(1, |mut map| {
            let n = map.entry(key).or_default();
            *n = n.saturating_add(1);
            *n
        });
        RETRY_AFTER_ERROR
            .saturating_mul(1 << failures.saturating_sub(1).min(8))
            .min(RECHECK)
    }

    /// Forgets the failures of `key`.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

/// The error policy of every controller: log and count the failure by category, retry after a
/// pause that grows with consecutive failures of the same object (a conflict is retried at once).
#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime calls
pub fn error_policy<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    // The ledger controller reconciles Pods; every other one is named after its kind.
    let kind = K::kind(&());
    let controller = if kind == "Pod" { "Ledger" } else { &kind };
    ctx.metrics.reconcile_failed(controller, error.category());
    if error.is_conflict() {
        // Someone else wrote first; a fresh read will likely succeed at once.
        return Action::requeue(RETRY_AFTER_CONFLICT);
    }
    let delay = ctx
        .backoff
        .failed(ObjectRef::from_obj(object.as_ref()).to_string());
    tracing::warn!(%controller, object = %object.name_any(), category = error.category(), error = %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Drives a controller's stream of results until it ends (at shutdown), forgetting the failures
/// of each object that reconciles successfully.
pub async fn drive<K, E: std::fmt::Display>(
    ctx: &Context,
    results: impl Stream<Item = Result<(ObjectRef<K>, Action), E>>,
) where
    K: kube::Resource,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    ObjectRef<K>: std::fmt::Display,
{
    results
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => ctx.backoff.succeeded(&object.to_string()),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patches_name_the_api_version_and_kind() {
        use k8s_ai_api::{GuardrailPolicy, ModelEndpoint, PromptTemplate};
        let status = serde_json::json!({ "observedGeneration": 1 });
        for (patch, kind) in [
            (
                status_patch::<ModelEndpoint>(status.clone()),
                "ModelEndpoint",
            ),
            (
                status_patch::<PromptTemplate>(status.clone()),
                "PromptTemplate",
            ),
            (
                status_patch::<GuardrailPolicy>(status.clone()),
                "GuardrailPolicy",
            ),
        ] {
            assert_eq!(
                serde_json::to_string(&patch).unwrap(),
                serde_json::to_string(&serde_json::json!({
                    "apiVersion": "ai.kernelpanic09.io/v1alpha1",
                    "kind": kind,
                    "status": { "observedGeneration": 1 },
                }))
                .unwrap()
            );
        }
    }

    #[test]
    fn retry_delays_double_per_failure_up_to_the_recheck_and_reset_on_success() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.failed("a".into()).as_secs())
            .collect();
        assert_eq!(delays, [15, 30, 60, 120, 240, 300]);
        assert_eq!(backoff.failed("b".into()).as_secs(), 15, "per object");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into()).as_secs(), 15);
    }
}

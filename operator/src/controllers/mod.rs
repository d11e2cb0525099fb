//! The reconcilers: one module per kind, the same shape each (`reconcile` → `apply` on the
//! object, `error_policy` with backoff), sharing one [`Context`] and one [`Error`].

pub mod conditions;
pub mod guardrail_policy;
pub mod model_endpoint;
pub mod prompt_template;

use std::time::Duration;

use kube::Client;

/// What every reconciler needs.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The operator's own AWS configuration (its identity, region and endpoint overrides).
    pub aws: aws_config::SdkConfig,
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
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short PascalCase category, for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeError",
            Error::NoNamespace => "NoNamespace",
            Error::Bedrock { .. } => "BedrockError",
            Error::Finalizer(_) => "FinalizerError",
        }
    }
}

/// How long to wait before retrying after an error.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(15);
/// How often an object is checked again when nothing changes.
pub const RECHECK: Duration = Duration::from_secs(300);

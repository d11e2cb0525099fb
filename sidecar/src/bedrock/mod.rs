//! Calls to Bedrock Runtime: what the app asked (`ModelRequest`) and the model answered
//! (`ModelAnswer`), the credentials each call signs with, and the mapping of Bedrock's errors to
//! the sidecar's. Every call goes through one client (`client.rs`).

mod client;
mod stream;
mod wire;

use std::{sync::Arc, time::Duration};

use aws_sdk_bedrockruntime::types::ConversationRole;
use axum::http::StatusCode;

use self::client::{BedrockClient, Signer};
pub use self::stream::{ConverseEvents, StreamPart};
use crate::{
    credentials::{ChainCredentials, RoleCredentialsRegistry},
    errors::ApiError,
};

/// What the app asked the model, normalised from any of the sidecar's APIs.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    pub system: Option<String>,
    /// (role, text) pairs; roles are `user` or `assistant`.
    pub messages: Vec<(ConversationRole, String)>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop_sequences: Vec<String>,
    /// The synced Bedrock guardrail (id, version), if any.
    pub guardrail: Option<(String, String)>,
}

impl ModelRequest {
    /// Text the model reads, for token estimates and PII checks.
    /// An upper bound of the input tokens Bedrock bills for this request: a token is at least one
    /// byte of text, and the framing around the texts (role markers; the original README's
    /// 47-byte prompt is billed 24 tokens, about 12 of them framing) is bounded by
    /// [`FRAMING_BOUND_PER_REQUEST`] plus [`FRAMING_BOUND_PER_MESSAGE`] per message and system
    /// prompt, several times what Claude bills.
    pub fn worst_case_input_tokens(&self) -> u64 {
        let blocks = self.messages.len() + usize::from(self.system.is_some());
        u64::try_from(self.input_text_len())
            .unwrap_or(u64::MAX)
            .saturating_add(FRAMING_BOUND_PER_REQUEST)
            .saturating_add(
                FRAMING_BOUND_PER_MESSAGE.saturating_mul(u64::try_from(blocks).unwrap_or(u64::MAX)),
            )
    }

    pub fn input_text_len(&self) -> usize {
        self.system.as_ref().map_or(0, String::len)
            + self.messages.iter().map(|(_, t)| t.len()).sum::<usize>()
    }
}

/// The model's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelAnswer {
    pub text: String,
    pub stop_reason: String,
    pub usage: k8s_ai_api::pricing::TokenUsage,
    /// Text units the Bedrock guardrail evaluated (from the trace), charged on top of tokens.
    pub guardrail_units: k8s_ai_api::pricing::GuardrailUnits,
}

/// Bedrock Runtime, signed with the pod's identity: an endpoint's role, else the base chain,
/// or a Bedrock API key when one is set.
pub struct Upstream {
    roles: Arc<RoleCredentialsRegistry>,
    chain: ChainCredentials,
    client: BedrockClient,
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`): preferred to SigV4, as by the SDK.
    bearer: Option<Arc<str>>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(
        base: aws_config::SdkConfig,
        roles: Arc<RoleCredentialsRegistry>,
        timeout: Duration,
        refresh_before: Duration,
    ) -> Result<Self, rustls::Error> {
        let client = BedrockClient::new(base)?;
        Ok(Upstream {
            chain: ChainCredentials::new(client.default_credentials(), refresh_before),
            bearer: client.bearer_token().map(Arc::from),
            client,
            roles,
            timeout,
        })
    }

    pub fn roles(&self) -> &RoleCredentialsRegistry {
        &self.roles
    }

    /// Resolves the role's credentials now, so a failure is a clear 503, never a hang or a 502.
    /// With an API key there is nothing to resolve: the key is used instead of the role.
    pub async fn check_credentials(&self, role: Option<&str>) -> Result<(), ApiError> {
        let Some(role) = role.filter(|_| self.bearer.is_none()) else {
            return Ok(());
        };
        self.roles
            .for_role(role)
            .get()
            .await
            .map(|_| ())
            .map_err(|e| ApiError::unavailable("credentials_unavailable", e.to_string()))
    }

    /// How a call for `role` (or the base chain's identity) is signed.
    async fn signer(&self, role: Option<&str>) -> Result<Signer, ApiError> {
        let unavailable = |e: crate::credentials::CredentialsError| {
            ApiError::unavailable("credentials_unavailable", e.to_string())
        };
        Ok(match (&self.bearer, role) {
            (Some(token), _) => Signer::Bearer(Arc::clone(token)),
            (None, Some(role)) => {
                Signer::SigV4(self.roles.for_role(role).get().await.map_err(unavailable)?)
            }
            (None, None) => Signer::SigV4(self.chain.get().await.map_err(unavailable)?),
        })
    }

    /// Converse, retried within `timeout` (what is left of the request's deadline).
    pub async fn converse(
        &self,
        region: &str,
        role: Option<&str>,
        model_id: &str,
        request: &ModelRequest,
        timeout: Duration,
    ) -> Result<ModelAnswer, ApiError> {
        let signer = self.signer(role).await?;
        self.client
            .converse(
                region,
                &signer,
                model_id,
                request,
                timeout.min(self.timeout),
            )
            .await
    }

    /// ConverseStream, retried until Bedrock accepts it within `timeout`; its events follow.
    pub async fn converse_stream(
        &self,
        region: &str,
        role: Option<&str>,
        model_id: &str,
        request: &ModelRequest,
        timeout: Duration,
    ) -> Result<ConverseEvents, ApiError> {
        let signer = self.signer(role).await?;
        self.client
            .converse_stream(
                region,
                &signer,
                model_id,
                request,
                timeout.min(self.timeout),
            )
            .await
    }
}

/// Input tokens reserved once per request for framing (see `ModelRequest::worst_case_input_tokens`).
pub const FRAMING_BOUND_PER_REQUEST: u64 = 64;
/// Input tokens reserved per message and per system prompt for framing.
pub const FRAMING_BOUND_PER_MESSAGE: u64 = 16;

/// Bedrock's error code and message as the app sees them: 429 for throttling, 504 for a model
/// timeout, 502 for the rest, with Bedrock's code and message kept in ours.
pub fn service_error(code: &str, message: &str) -> ApiError {
    let message = format!("Bedrock {code}: {message}");
    match code {
        "ThrottlingException" | "ServiceQuotaExceededException" => {
            ApiError::rate_limited("upstream_throttled", message, Duration::from_secs(1))
        }
        "ModelTimeoutException" => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
        }
        "ValidationException" => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_rejected", message)
        }
        "AccessDeniedException" | "UnrecognizedClientException" | "ExpiredTokenException" => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_access_denied", message)
        }
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message),
    }
}

//! Calls to Bedrock Runtime: what the app asked (`ModelRequest`) and the model answered
//! (`ModelAnswer`), the credentials each call signs with, and the mapping of Bedrock's errors to
//! the sidecar's. Every call goes through one client (`client.rs`).

mod client;
pub mod embeddings;
mod model;
mod stream;
mod wire;

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;

pub use self::client::Invoked;
use self::client::{BedrockClient, Signer};
pub(crate) use self::client::{HttpsClient, https_client};
pub use self::{
    model::{
        Block, CachePoint, CacheTtl, DocumentFormat, Effort, FRAMING_BOUND_PER_MESSAGE,
        FRAMING_BOUND_PER_REQUEST, ImageFormat, MAX_IMAGE_BYTES, MAX_IMAGES, Message, ModelAnswer,
        ModelRequest, OutputSchema, Purpose, ReasoningStyle, Role, Thinking, Tool, ToolCall,
        ToolChoice, Tools, adaptive_thinking_only, caches_prompts, closed, has_structured_outputs,
        reasoning_style,
    },
    stream::{ConverseEvents, StreamPart},
};
use crate::{
    credentials::{ChainCredentials, DEFAULT_CHAIN, POD_IDENTITY, RoleCredentialsRegistry},
    errors::ApiError,
};

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
    /// `pod_identity`: the pod's EKS Pod Identity credentials, used instead of the base chain
    /// for endpoints that name no role.
    pub fn new(
        base: aws_config::SdkConfig,
        roles: Arc<RoleCredentialsRegistry>,
        pod_identity: Option<aws_credential_types::provider::SharedCredentialsProvider>,
        timeout: Duration,
        refresh_before: Duration,
    ) -> Result<Self, rustls::Error> {
        let client = BedrockClient::new(base)?;
        Ok(Upstream {
            chain: match pod_identity {
                Some(own_role) => {
                    ChainCredentials::new(Some(own_role), POD_IDENTITY, refresh_before)
                }
                None => ChainCredentials::new(
                    client.default_credentials(),
                    DEFAULT_CHAIN,
                    refresh_before,
                ),
            },
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

    /// CountTokens for `request` as Converse would send it, retried within `timeout`.
    pub async fn count_tokens(
        &self,
        region: &str,
        role: Option<&str>,
        model_id: &str,
        request: &ModelRequest,
        timeout: Duration,
    ) -> Result<u64, ApiError> {
        let signer = self.signer(role).await?;
        self.client
            .count_tokens(
                region,
                &signer,
                model_id,
                request,
                timeout.min(self.timeout),
            )
            .await
    }

    /// InvokeModel with the model's own JSON `body`, retried within `timeout`.
    pub async fn invoke(
        &self,
        region: &str,
        role: Option<&str>,
        model_id: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Invoked, ApiError> {
        let signer = self.signer(role).await?;
        self.client
            .invoke(region, &signer, model_id, body, timeout.min(self.timeout))
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

/// Bedrock's error code and message as the app sees them: 429 for throttling, 504 for a model
/// timeout, 502 for the rest, with Bedrock's code and message kept in ours.
pub fn service_error(code: &str, message: &str) -> ApiError {
    let original = Some((code.to_owned(), message.to_owned()));
    let message = format!("Bedrock {code}: {message}");
    let error = match code {
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
    };
    ApiError {
        bedrock: original,
        ..error
    }
}

//! Calls to Bedrock Runtime: Converse through the sidecar's own client (`converse.rs`),
//! ConverseStream through one SDK client per (region, role), the credentials both sign with,
//! and the mapping of Bedrock's errors to the sidecar's.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    Client,
    config::{StalledStreamProtectionConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    types::{ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock},
};
use axum::http::StatusCode;

use crate::{
    converse::{ConverseClient, Signer},
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

    fn sdk_messages(&self) -> Result<Vec<Message>, ApiError> {
        self.messages
            .iter()
            .map(|(role, text)| {
                Message::builder()
                    .role(role.clone())
                    .content(ContentBlock::Text(text.clone()))
                    .build()
                    .map_err(|e| ApiError::invalid(format!("message: {e}")))
            })
            .collect()
    }

    fn inference(&self) -> InferenceConfiguration {
        let mut b = InferenceConfiguration::builder()
            .max_tokens(i32::try_from(self.max_tokens).unwrap_or(i32::MAX));
        if let Some(t) = self.temperature {
            b = b.temperature(t);
        }
        if let Some(p) = self.top_p {
            b = b.top_p(p);
        }
        b.set_stop_sequences((!self.stop_sequences.is_empty()).then(|| self.stop_sequences.clone()))
            .build()
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

/// Bedrock Runtime: the Converse client, and SDK clients for streams, one per (region, role).
pub struct Upstream {
    base: aws_config::SdkConfig,
    roles: Arc<RoleCredentialsRegistry>,
    chain: ChainCredentials,
    direct: ConverseClient,
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`): preferred to SigV4, as by the SDK.
    bearer: Option<String>,
    timeout: Duration,
    clients: Mutex<HashMap<(String, Option<String>), Client>>,
}

impl Upstream {
    pub fn new(
        base: aws_config::SdkConfig,
        roles: Arc<RoleCredentialsRegistry>,
        timeout: Duration,
        refresh_before: Duration,
    ) -> Result<Self, rustls::Error> {
        let direct = ConverseClient::new(base.clone())?;
        Ok(Upstream {
            chain: ChainCredentials::new(direct.default_credentials(), refresh_before),
            bearer: direct.bearer_token(),
            direct,
            base,
            roles,
            timeout,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn roles(&self) -> &RoleCredentialsRegistry {
        &self.roles
    }

    /// The SDK client for an endpoint's streams. With a role, its credentials come from the role's
    /// cache, so they are resolved (or the failure reported) before the call: see
    /// [`Self::check_credentials`].
    pub fn client(&self, region: &str, role: Option<&str>) -> Client {
        let key = (region.to_owned(), role.map(str::to_owned));
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(key)
            .or_insert_with(|| {
                let mut config = aws_sdk_bedrockruntime::config::Builder::from(&self.base)
                    .region(aws_sdk_bedrockruntime::config::Region::new(
                        region.to_owned(),
                    ))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(self.timeout)
                            .build(),
                    )
                    // The operation timeout bounds a whole call and the stream pump a silent stream
                    // (the SDK's stall check never cut one off). The check armed a 100 ms timer per
                    // call, and tokio wakes its own event loop for a timer due before all others
                    // (an eventfd write and one more epoll_wait a call: tokio-rs/tokio#5207).
                    .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
                if let Some(role) = role {
                    config = config
                        .credentials_provider(SharedRole(self.roles.for_role(role)))
                        // The role cache refreshes early and single-flight; a second cache would only delay that.
                        .identity_cache(aws_sdk_bedrockruntime::config::IdentityCache::no_cache());
                }
                Client::from_conf(config.build())
            })
            .clone()
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

    /// Converse through the sidecar's own client, signed with the role's credentials (or the
    /// base chain's), retried within `timeout` (what is left of the request's deadline).
    pub async fn converse(
        &self,
        region: &str,
        role: Option<&str>,
        model_id: &str,
        request: &ModelRequest,
        timeout: Duration,
    ) -> Result<ModelAnswer, ApiError> {
        let unavailable = |e: crate::credentials::CredentialsError| {
            ApiError::unavailable("credentials_unavailable", e.to_string())
        };
        let credentials;
        let signer = match (&self.bearer, role) {
            (Some(token), _) => Signer::Bearer(token),
            (None, Some(role)) => {
                credentials = self.roles.for_role(role).get().await.map_err(unavailable)?;
                Signer::SigV4(&credentials)
            }
            (None, None) => {
                credentials = self.chain.get().await.map_err(unavailable)?;
                Signer::SigV4(&credentials)
            }
        };
        self.direct
            .converse(
                region,
                &signer,
                model_id,
                request,
                timeout.min(self.timeout),
            )
            .await
    }

    pub async fn converse_stream(
        &self,
        client: &Client,
        model_id: &str,
        request: &ModelRequest,
    ) -> Result<
        aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver<
            aws_sdk_bedrockruntime::types::ConverseStreamOutput,
            aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError,
        >,
        ApiError,
    > {
        let mut call = client
            .converse_stream()
            .model_id(model_id)
            .set_messages(Some(request.sdk_messages()?))
            .inference_config(request.inference());
        if let Some(system) = &request.system {
            call = call.system(SystemContentBlock::Text(system.clone()));
        }
        if let Some((id, version)) = &request.guardrail {
            call = call.guardrail_config(
                aws_sdk_bedrockruntime::types::GuardrailStreamConfiguration::builder()
                    .guardrail_identifier(id)
                    .guardrail_version(version)
                    // Bedrock checks each chunk before sending it (its default, said explicitly):
                    // in async mode unchecked text reaches the app and is only flagged afterwards.
                    .stream_processing_mode(
                        aws_sdk_bedrockruntime::types::GuardrailStreamProcessingMode::Sync,
                    )
                    // The trace carries the text units Bedrock charges for the guardrail.
                    .trace(aws_sdk_bedrockruntime::types::GuardrailTrace::Enabled)
                    .build(),
            );
        }
        Ok(call.send().await.map_err(|e| upstream_error(&e))?.stream)
    }
}

/// Input tokens reserved once per request for framing (see `ModelRequest::worst_case_input_tokens`).
pub const FRAMING_BOUND_PER_REQUEST: u64 = 64;
/// Input tokens reserved per message and per system prompt for framing.
pub const FRAMING_BOUND_PER_MESSAGE: u64 = 16;

/// The guardrail text units of a stream's trace (its metadata event), input and output.
pub fn guardrail_units(
    trace: Option<&aws_sdk_bedrockruntime::types::ConverseStreamTrace>,
) -> k8s_ai_api::pricing::GuardrailUnits {
    let n = |v: i32| u64::try_from(v).unwrap_or(0);
    let Some(guardrail) = trace.and_then(|t| t.guardrail()) else {
        return k8s_ai_api::pricing::GuardrailUnits::default();
    };
    guardrail
        .input_assessment()
        .into_iter()
        .flat_map(|m| m.values())
        .chain(
            guardrail
                .output_assessments()
                .into_iter()
                .flat_map(|m| m.values().flatten()),
        )
        .filter_map(|a| a.invocation_metrics()?.usage())
        .fold(k8s_ai_api::pricing::GuardrailUnits::default(), |sum, u| {
            sum.plus(k8s_ai_api::pricing::GuardrailUnits {
                content: n(u.content_policy_units()),
                topic: n(u.topic_policy_units()),
                word: n(u.word_policy_units()),
                sensitive_information: n(u.sensitive_information_policy_units()),
                sensitive_information_free: n(u.sensitive_information_policy_free_units()),
                contextual_grounding: n(u.contextual_grounding_policy_units()),
            })
        })
}

/// Token counts as Bedrock reports them (input excludes cached tokens).
pub fn token_usage(
    usage: Option<&aws_sdk_bedrockruntime::types::TokenUsage>,
) -> k8s_ai_api::pricing::TokenUsage {
    let n = |v: i32| u64::try_from(v).unwrap_or(0);
    usage.map_or_else(Default::default, |u| k8s_ai_api::pricing::TokenUsage {
        input_tokens: n(u.input_tokens()),
        output_tokens: n(u.output_tokens()),
        cache_read_input_tokens: u.cache_read_input_tokens().map_or(0, n),
        cache_write_input_tokens: u.cache_write_input_tokens().map_or(0, n),
    })
}

#[derive(Debug)]
struct SharedRole(Arc<crate::credentials::RoleCredentials>);

impl aws_credential_types::provider::ProvideCredentials for SharedRole {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

/// Bedrock's error, as the app sees it: 429 for throttling, 504 for timeouts, 503 for missing
/// credentials, 502 for the rest, with Bedrock's own code and message kept in ours.
pub fn upstream_error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> ApiError {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            service_error(
                err.code().unwrap_or("UnknownError"),
                err.message().unwrap_or_default(),
            )
        }
        SdkError::TimeoutError(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "Bedrock did not answer before the deadline",
        ),
        SdkError::DispatchFailure(d)
            if format!("{d:?}").contains("credentials")
                || format!("{d:?}").contains("Credentials") =>
        {
            ApiError::unavailable(
                "credentials_unavailable",
                format!("no AWS credentials: {d:?}"),
            )
        }
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("cannot reach Bedrock: {other}"),
        ),
    }
}

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

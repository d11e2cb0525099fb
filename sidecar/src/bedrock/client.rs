//! The sidecar's one Bedrock Runtime client: every call (Converse, ConverseStream) is signed,
//! sent, retried and its errors read here, without the SDK's orchestrator.
//!
//! The SDK's orchestrator is generic machinery (type-erased config layers, interceptors, user-agent
//! strings built twice a call) that these few request shapes do not need, and it showed in
//! profiles of the sidecar as a large share of a call's CPU. This client makes the same
//! requests with the crates the SDK is built on: the body by `serde_json`, SigV4 by `sigv4.rs` on
//! ring, HTTP/1.1 by hyper on rustls/ring with native roots and pooled keep-alive connections,
//! streams decoded by `aws-smithy-eventstream` (`stream.rs`). It keeps the SDK's behaviour where an
//! operator would notice: the endpoint comes from the SDK's own resolver
//! (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_ENDPOINT_URL`, FIPS, dual-stack, partitions),
//! `AWS_BEARER_TOKEN_BEDROCK` sends a Bedrock API key instead of a signature, and retries follow
//! the standard mode (`AWS_MAX_ATTEMPTS`, jittered exponential backoff, a retry quota).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use aws_sdk_bedrockruntime::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_types::service_config::ServiceConfigKey;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Serialize;

use super::{
    ModelAnswer, ModelRequest,
    stream::ConverseEvents,
    wire::{ConverseBody, ConverseOutput, ErrorBody, error_code},
};
use crate::{credentials::error_chain, errors::ApiError, sigv4::SigV4Signer};

/// Where a call's credentials come from.
pub enum Signer {
    /// SigV4 with these credentials.
    SigV4(Credentials),
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`), as the SDK sends it.
    Bearer(Arc<str>),
}

/// The SDK's standard-mode retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_sdk(config: Option<&aws_smithy_types::retry::RetryConfig>) -> Self {
        let standard = aws_smithy_types::retry::RetryConfig::standard();
        let c = config.unwrap_or(&standard);
        RetryPolicy {
            max_attempts: c.max_attempts().max(1),
            initial_backoff: c.initial_backoff(),
            max_backoff: c.max_backoff(),
        }
    }

    /// Full jitter: a random share of `initial × 2^(retry-1)`, capped, as the SDK waits.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        exp.min(self.max_backoff).mul_f64(fastrand::f64())
    }
}

/// The SDK's retry quota: retries draw from a shared bucket that successes refill, so an
/// unhealthy Bedrock is not hit with three times the traffic.
#[derive(Debug)]
struct RetryQuota(AtomicU32);

const QUOTA_CAPACITY: u32 = 500;
const RETRY_COST: u32 = 5;
const TIMEOUT_RETRY_COST: u32 = 10;

impl RetryQuota {
    fn take(&self, cost: u32) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(cost)
            })
            .is_ok()
    }

    fn give_back(&self, amount: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some((left + amount).min(QUOTA_CAPACITY))
            });
    }
}

/// Where Converse requests for one region go.
#[derive(Debug, Clone)]
struct Target {
    /// `scheme://authority[/prefix]`, without a trailing slash.
    base: String,
    /// The `host` header, exactly as signed.
    host: HeaderValue,
}

impl Target {
    /// HTTPS, or plain HTTP to this host (a local emulator): nothing crosses a network in clear.
    fn may_carry_a_bearer_key(&self) -> bool {
        if self.base.starts_with("https://") {
            return true;
        }
        let host = self.host.to_str().unwrap_or_default();
        let name = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name);
        matches!(name, "localhost" | "[::1]") || name.starts_with("127.")
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// Bedrock answered with an error.
    Service {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// No answer: connection refused or reset, TLS failure, a body cut short.
    Io(String),
    /// Bedrock answered 200 with a body we cannot read.
    Malformed(String),
    /// The request could not be built or signed; sending it again would not help.
    Request(String),
}

impl AttemptError {
    /// The SDK's classification: throttling codes and 429, then 5xx, `RequestTimeout*` and
    /// Bedrock's retryable `ModelNotReadyException`, then errors without an answer.
    fn retry_cost(&self) -> Option<u32> {
        match self {
            AttemptError::Service { status, code, .. } => {
                let throttled = *status == StatusCode::TOO_MANY_REQUESTS
                    || THROTTLING_ERRORS.contains(&code.as_str());
                let transient = matches!(status.as_u16(), 500 | 502 | 503 | 504)
                    || matches!(
                        code.as_str(),
                        "RequestTimeout" | "RequestTimeoutException" | "ModelNotReadyException"
                    );
                (throttled || transient).then_some(RETRY_COST)
            }
            AttemptError::Io(_) => Some(TIMEOUT_RETRY_COST),
            AttemptError::Malformed(_) | AttemptError::Request(_) => None,
        }
    }

    fn into_api_error(self) -> ApiError {
        match self {
            // Bedrock's authentication front end answers a bad API key with no code at all.
            AttemptError::Service {
                status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                code,
                message,
            } if code.starts_with("Http") => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_access_denied",
                format!("Bedrock {code}: {message}"),
            ),
            AttemptError::Service { code, message, .. } => {
                crate::bedrock::service_error(&code, &message)
            }
            AttemptError::Io(reason) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("cannot reach Bedrock: {reason}"),
            ),
            AttemptError::Malformed(reason) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("Bedrock's answer could not be read: {reason}"),
            ),
            AttemptError::Request(reason) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("cannot make the request to Bedrock: {reason}"),
            ),
        }
    }
}

/// The AWS SDK's throttling error codes (aws-runtime's `THROTTLING_ERRORS`).
const THROTTLING_ERRORS: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// The largest answer read from Bedrock; Converse answers are a few kilobytes to a few hundred.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The SDK's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// Bedrock Runtime over a shared connection pool, one endpoint per region.
pub struct BedrockClient {
    http: HttpsClient,
    base: aws_types::SdkConfig,
    targets: Mutex<HashMap<String, Target>>,
    retry: RetryPolicy,
    quota: RetryQuota,
    user_agent: HeaderValue,
    sigv4: SigV4Signer,
}

impl BedrockClient {
    /// Fails only if rustls cannot offer its default protocol versions with ring (it always can).
    pub fn new(base: aws_types::SdkConfig) -> Result<Self, rustls::Error> {
        let http = https_client()?;
        let retry = RetryPolicy::from_sdk(base.retry_config());
        Ok(BedrockClient {
            http,
            base,
            targets: Mutex::new(HashMap::new()),
            retry,
            quota: RetryQuota(AtomicU32::new(QUOTA_CAPACITY)),
            user_agent: HeaderValue::from_static(concat!("ai-sidecar/", env!("CARGO_PKG_VERSION"))),
            sigv4: SigV4Signer::default(),
        })
    }

    /// A Bedrock API key from `AWS_BEARER_TOKEN_BEDROCK`, which the SDK prefers to SigV4 too.
    pub fn bearer_token(&self) -> Option<String> {
        let key = service_key("bedrock", "AWS_BEARER_TOKEN", "")?;
        self.base
            .service_config()?
            .load_config(key)
            .filter(|t| !t.is_empty())
    }

    /// The base credentials chain (no role named), as the SDK would use it.
    pub fn default_credentials(
        &self,
    ) -> Option<aws_credential_types::provider::SharedCredentialsProvider> {
        self.base.credentials_provider()
    }

    /// Where Bedrock Runtime is for `region`, as the SDK resolves it.
    async fn target(&self, region: &str) -> Result<Target, ApiError> {
        if let Some(t) = self
            .targets
            .lock()
            .ok()
            .and_then(|t| t.get(region).cloned())
        {
            return Ok(t);
        }
        let configured = self
            .base
            .service_config()
            .zip(service_key(
                "Bedrock Runtime",
                "AWS_ENDPOINT_URL",
                "endpoint_url",
            ))
            .and_then(|(c, key)| c.load_config(key))
            .or_else(|| self.base.endpoint_url().map(str::to_owned));
        let params = Params::builder()
            .region(region)
            .use_fips(self.base.use_fips().unwrap_or(false))
            .use_dual_stack(self.base.use_dual_stack().unwrap_or(false))
            .set_endpoint(configured)
            .build()
            .map_err(|e| no_endpoint(region, &e))?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| no_endpoint(region, &*e))?;
        let url = endpoint.url().trim_end_matches('/').to_owned();
        let uri: http::Uri = url.parse().map_err(|e| no_endpoint(region, &e))?;
        let host = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| no_endpoint(region, &"the endpoint URL has no host"))?;
        let target = Target { base: url, host };
        if let Ok(mut targets) = self.targets.lock() {
            targets.insert(region.to_owned(), target.clone());
        }
        Ok(target)
    }

    /// Converse, retried as the SDK retries, within `deadline` for all attempts together.
    pub async fn converse(
        &self,
        region: &str,
        signer: &Signer,
        model_id: &str,
        request: &ModelRequest,
        deadline: Duration,
    ) -> Result<ModelAnswer, ApiError> {
        let body = json_body(&ConverseBody::new(request, false))?;
        let call = Call {
            region,
            signer,
            path: format!("/model/{}/converse", label(model_id)),
            accept: "application/json",
            body,
        };
        self.send(&call, deadline, async |response| {
            let bytes = read_body(response.into_body()).await?;
            let out: ConverseOutput = serde_json::from_slice(&bytes)
                .map_err(|e| AttemptError::Malformed(e.to_string()))?;
            Ok(out.into_answer())
        })
        .await
    }

    /// ConverseStream: retried as Converse until Bedrock accepts the call (a 200 and the stream's
    /// headers), within `deadline`; after that, the stream's events come as Bedrock sends them and
    /// a failure mid-answer is the stream's last event, never retried (the model already ran).
    pub async fn converse_stream(
        &self,
        region: &str,
        signer: &Signer,
        model_id: &str,
        request: &ModelRequest,
        deadline: Duration,
    ) -> Result<ConverseEvents, ApiError> {
        let body = json_body(&ConverseBody::new(request, true))?;
        let call = Call {
            region,
            signer,
            path: format!("/model/{}/converse-stream", label(model_id)),
            accept: "application/vnd.amazon.eventstream",
            body,
        };
        self.send(&call, deadline, async |response| {
            Ok(ConverseEvents::new(response.into_body()))
        })
        .await
    }

    /// CountTokens for `request` as Converse would send it: Bedrock's count of its input tokens.
    pub async fn count_tokens(
        &self,
        region: &str,
        signer: &Signer,
        model_id: &str,
        request: &ModelRequest,
        deadline: Duration,
    ) -> Result<u64, ApiError> {
        let body = json_body(&super::wire::CountTokensBody::new(request))?;
        let call = Call {
            region,
            signer,
            path: format!("/model/{}/count-tokens", label(model_id)),
            accept: "application/json",
            body,
        };
        self.send(&call, deadline, async |response| {
            let bytes = read_body(response.into_body()).await?;
            let counted: super::wire::CountTokensOutput = serde_json::from_slice(&bytes)
                .map_err(|e| AttemptError::Malformed(e.to_string()))?;
            Ok(counted.input_tokens)
        })
        .await
    }

    /// InvokeModel with `body` (the model's own JSON), retried as Converse: the answer's body and
    /// Bedrock's count of its input tokens (the `x-amzn-bedrock-input-token-count` header).
    pub async fn invoke(
        &self,
        region: &str,
        signer: &Signer,
        model_id: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Invoked, ApiError> {
        let call = Call {
            region,
            signer,
            path: format!("/model/{}/invoke", label(model_id)),
            accept: "application/json",
            body,
        };
        self.send(&call, deadline, async |response| {
            let input_tokens = response
                .headers()
                .get("x-amzn-bedrock-input-token-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = read_body(response.into_body()).await?;
            Ok(Invoked { body, input_tokens })
        })
        .await
    }

    /// Sends `call`, retried as the SDK retries, within `deadline` for all attempts together;
    /// `read` turns a successful answer into the result (its failure is the attempt's).
    async fn send<T>(
        &self,
        call: &Call<'_>,
        deadline: Duration,
        read: impl AsyncFn(http::Response<Incoming>) -> Result<T, AttemptError>,
    ) -> Result<T, ApiError> {
        let attempts = async {
            let target = self.target(call.region).await?;
            if matches!(call.signer, Signer::Bearer(_)) && !target.may_carry_a_bearer_key() {
                // An API key is a long-term secret: like botocore, never send it in clear text.
                return Err(ApiError::unavailable(
                    "credentials_unavailable",
                    format!(
                        "AWS_BEARER_TOKEN_BEDROCK is only sent over HTTPS (or to this host), not to {}",
                        target.base
                    ),
                ));
            }
            let url = format!("{}{}", target.base, call.path);
            let mut retries = 0;
            loop {
                let attempt = match self.attempt(&target, &url, call).await {
                    Ok(response) => read(response).await,
                    Err(err) => Err(err),
                };
                let err = match attempt {
                    Ok(answer) => {
                        self.quota
                            .give_back(if retries == 0 { 1 } else { RETRY_COST });
                        return Ok(answer);
                    }
                    Err(err) => err,
                };
                let cost = err.retry_cost();
                let retry = cost.is_some_and(|cost| {
                    retries + 1 < self.retry.max_attempts && self.quota.take(cost)
                });
                if !retry {
                    return Err(err.into_api_error());
                }
                retries += 1;
                tracing::debug!(retry = retries, path = call.path, error = ?err, "retrying a Bedrock call");
                tokio::time::sleep(self.retry.backoff(retries)).await;
            }
        };
        tokio::time::timeout(deadline, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Bedrock did not answer before the deadline",
                ))
            })
    }

    /// One signed request; Bedrock's error answers are read whole, a success is returned unread.
    async fn attempt(
        &self,
        target: &Target,
        url: &str,
        call: &Call<'_>,
    ) -> Result<http::Response<Incoming>, AttemptError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::HOST, target.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, call.accept)
            .header(header::USER_AGENT, self.user_agent.clone())
            .body(Full::new(call.body.clone()))
            .map_err(|e| AttemptError::Request(e.to_string()))?;
        match call.signer {
            Signer::SigV4(credentials) => self
                .sigv4
                .sign(
                    &mut req,
                    call.region,
                    credentials,
                    &call.body,
                    SystemTime::now(),
                )
                .map_err(|e| AttemptError::Request(format!("signing: {e}")))?,
            Signer::Bearer(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    AttemptError::Request(
                        "AWS_BEARER_TOKEN_BEDROCK holds characters an HTTP header cannot carry"
                            .into(),
                    )
                })?;
                // Kept out of any debug output of the request.
                value.set_sensitive(true);
                req.headers_mut().insert(header::AUTHORIZATION, value);
            }
        }
        let response = self
            .http
            .request(req)
            .await
            .map_err(|e| AttemptError::Io(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_body(response.into_body()).await?;
        let fields: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = error_code(error_type.as_deref(), &fields, status);
        Err(AttemptError::Service {
            status,
            code,
            message: fields.message(),
        })
    }
}

/// InvokeModel's answer.
pub struct Invoked {
    pub body: Bytes,
    /// Bedrock's count of the input tokens, when it sent one.
    pub input_tokens: Option<u64>,
}

/// One Bedrock Runtime operation to send: where, signed how, with what body.
struct Call<'a> {
    region: &'a str,
    signer: &'a Signer,
    /// The operation's path, its labels encoded (`/model/{modelId}/converse`).
    path: String,
    accept: &'static str,
    body: Bytes,
}

/// An answer's whole body, at most [`MAX_ANSWER_BYTES`].
async fn read_body(body: Incoming) -> Result<Bytes, AttemptError> {
    Ok(Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| AttemptError::Io(format!("reading the answer: {e}")))?
        .to_bytes())
}

fn json_body(body: &impl Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ApiError::invalid(format!("request: {e}")))
}

/// A URI label encoded as the SDK encodes `{modelId}`: everything but unreserved characters,
/// so an ARN's `:` and `/` stay inside one path segment.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    crate::sigv4::uri_encode(&mut out, value);
    out
}

fn no_endpoint(region: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("no Bedrock Runtime endpoint for region {region}: {e}"),
    )
}

/// A key for the SDK's environment/profile lookups; all its fields are set, so it always builds.
fn service_key<'a>(
    service: &'a str,
    env: &'a str,
    profile: &'a str,
) -> Option<ServiceConfigKey<'a>> {
    ServiceConfigKey::builder()
        .service_id(service)
        .env(env)
        .profile(profile)
        .build()
        .ok()
}

/// The system's root certificates, as the SDK loads them; none found is logged, not fatal.
/// An HTTP/1 client on rustls (ring) with the system's CA certificates and a pool kept 90 s.
pub(crate) fn https_client() -> Result<HttpsClient, rustls::Error> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(native_roots())
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// What [`https_client`] builds.
pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (valid, _) = roots.add_parsable_certificates(found.certs);
    if valid == 0 {
        tracing::warn!(
            errors = ?found.errors,
            "no root CA certificates found; HTTPS calls to Bedrock will fail"
        );
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_stay_one_path_segment() {
        assert_eq!(
            label("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(
            label("arn:aws:bedrock:us-east-1:1:inference-profile/us.x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x"
        );
    }

    #[test]
    fn throttling_and_5xx_are_retried_validation_is_not() {
        let service = |status: u16, code: &str| AttemptError::Service {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            message: String::new(),
        };
        assert!(service(429, "ThrottlingException").retry_cost().is_some());
        assert!(service(400, "ThrottlingException").retry_cost().is_some());
        assert!(
            service(500, "InternalServerException")
                .retry_cost()
                .is_some()
        );
        assert!(
            service(424, "ModelNotReadyException")
                .retry_cost()
                .is_some()
        );
        assert!(service(400, "ValidationException").retry_cost().is_none());
        assert!(service(408, "ModelTimeoutException").retry_cost().is_none());
        assert!(AttemptError::Io("reset".into()).retry_cost().is_some());
    }

    #[test]
    fn backoff_is_jittered_below_the_exponential_cap() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
        };
        for retry in 1..=8 {
            let cap = Duration::from_secs(1 << (retry - 1)).min(Duration::from_secs(20));
            assert!(p.backoff(retry) <= cap, "retry {retry}");
        }
    }

    #[tokio::test]
    async fn endpoints_resolve_as_the_sdks_resolver_does() {
        let resolve = |config: aws_types::SdkConfig, region: &'static str| async move {
            let client = BedrockClient::new(config).unwrap();
            let t = client.target(region).await.unwrap();
            (t.base, t.host.to_str().unwrap().to_owned())
        };
        let plain = aws_types::SdkConfig::builder().build();
        assert_eq!(
            resolve(plain.clone(), "eu-west-1").await,
            (
                "https://bedrock-runtime.eu-west-1.amazonaws.com".to_owned(),
                "bedrock-runtime.eu-west-1.amazonaws.com".to_owned()
            )
        );
        assert_eq!(
            resolve(plain, "cn-north-1").await.0,
            "https://bedrock-runtime.cn-north-1.amazonaws.com.cn"
        );
        let fips = aws_types::SdkConfig::builder().use_fips(true).build();
        assert_eq!(
            resolve(fips, "us-east-1").await.0,
            "https://bedrock-runtime-fips.us-east-1.amazonaws.com"
        );
        let custom = aws_types::SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:4566/")
            .build();
        assert_eq!(
            resolve(custom, "us-east-1").await,
            (
                "http://127.0.0.1:4566".to_owned(),
                "127.0.0.1:4566".to_owned()
            )
        );
    }

    #[test]
    fn the_quota_runs_out_and_refills() {
        let q = RetryQuota(AtomicU32::new(12));
        assert!(q.take(RETRY_COST));
        assert!(q.take(RETRY_COST));
        assert!(!q.take(RETRY_COST));
        q.give_back(QUOTA_CAPACITY * 2);
        assert_eq!(q.0.load(Ordering::Relaxed), QUOTA_CAPACITY);
    }
}

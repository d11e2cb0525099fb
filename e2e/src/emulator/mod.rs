//! An emulator of AWS Bedrock (runtime and control plane) and STS that speaks their real wire
//! protocols, so the official SDKs talk to it unchanged: restJson1 with SigV4, the event-stream
//! framing for streams, awsQuery XML for STS. Deterministic, with faults on demand.
//!
//! Start it in-process with [`Emulator::start`], or as the `bedrock-emulator` binary.

// Protocol handlers read best top to bottom, one operation each, even when long.
#![allow(clippy::too_many_lines)]

mod cache;
pub mod config;
mod control;
mod embeddings;
pub mod error;
mod guardrails;
mod media;
mod pod_identity;
mod reasoning;
mod runtime;
pub mod sigv4;
mod sts;
pub mod text;
mod tools;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use jsonwebtoken::jwk::JwkSet;
use serde::Serialize;
use tokio::net::TcpListener;

use self::{
    config::{ACCOUNT_ID, Config, Role},
    error::{AwsError, xml_escape},
    sigv4::KnownKey,
};

/// Who signed a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    User {
        name: String,
        allowed_models: Vec<String>,
    },
    AssumedRole {
        role_arn: String,
        session: String,
        allowed_models: Vec<String>,
    },
}

impl Principal {
    /// The ARN AWS reports for this caller.
    pub fn arn(&self) -> String {
        match self {
            Principal::User { name, .. } => format!("arn:aws:iam::{ACCOUNT_ID}:user/{name}"),
            Principal::AssumedRole {
                role_arn, session, ..
            } => {
                let role_name = role_arn.rsplit('/').next().unwrap_or(role_arn);
                format!("arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role_name}/{session}")
            }
        }
    }

    fn user_id(&self) -> String {
        match self {
            Principal::User { name, .. } => format!("AIDA{}", short_hash(name)),
            Principal::AssumedRole {
                role_arn, session, ..
            } => format!("AROA{}:{session}", short_hash(role_arn)),
        }
    }

    fn allowed_models(&self) -> &[String] {
        match self {
            Principal::User { allowed_models, .. }
            | Principal::AssumedRole { allowed_models, .. } => allowed_models,
        }
    }
}

fn short_hash(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut out, b| {
            use std::fmt::Write;
            let _ = write!(out, "{b:02X}");
            out
        })
}

/// A verified caller: who signed, and for which region.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub region: String,
}

/// One access key the emulator accepts.
#[derive(Clone, Debug)]
struct KeyEntry {
    secret: String,
    session_token: Option<String>,
    expires: Option<SystemTime>,
    principal: Principal,
}

/// Temporary credentials issued by STS.
#[derive(Clone, Debug)]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: SystemTime,
    pub assumed_role_arn: String,
    pub assumed_role_id: String,
}

impl IssuedCredentials {
    fn xml(&self) -> String {
        format!(
            "    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n",
            xml_escape(&self.assumed_role_id),
            xml_escape(&self.assumed_role_arn),
            self.access_key_id,
            xml_escape(&self.secret_access_key),
            xml_escape(&self.session_token),
            iso8601(self.expiration)
        )
    }
}

/// RFC 3339 / ISO 8601 in UTC, as AWS writes timestamps.
pub fn iso8601(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// A request as the admin API reports it.
#[derive(Clone, Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub seq: u64,
    pub at_unix_ms: u128,
    pub service: &'static str,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The error code answered, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<String>,
    /// The guardrail's text units charged for the call (input and output), Bedrock's `usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail_usage: Option<serde_json::Value>,
}

impl Record {
    fn sts(action: &str, error: Option<&'static str>) -> Self {
        Record {
            service: "sts",
            operation: action.to_owned(),
            error,
            ..Record::default()
        }
    }
}

struct Inner {
    config: RwLock<Arc<Config>>,
    keys: RwLock<HashMap<String, KeyEntry>>,
    jwks: RwLock<Arc<JwkSet>>,
    guardrails: Mutex<guardrails::Store>,
    log: Mutex<VecDeque<Record>>,
    /// Hashes of prompt prefixes already cached (`cachePoint`), for cache read/write tokens.
    prompt_cache: Mutex<cache::Store>,
    seq: AtomicU64,
    runtime_calls: AtomicU64,
    /// Model calls in flight now, and the most ever at once (a test checks a limit across pods).
    in_flight: AtomicU64,
    in_flight_peak: AtomicU64,
}

/// One model call in flight, counted until it is dropped (a stream: until its body ends).
pub struct InFlightCall(Emulator);

impl Drop for InFlightCall {
    fn drop(&mut self) {
        (self.0).0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The emulator's state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Emulator(Arc<Inner>);

/// A running emulator.
pub struct Running {
    pub addr: SocketAddr,
    pub emulator: Emulator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Emulator {
    /// Counts a model call in flight until the returned guard is dropped.
    pub fn call_in_flight(&self) -> InFlightCall {
        let now = self.0.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.0.in_flight_peak.fetch_max(now, Ordering::AcqRel);
        InFlightCall(self.clone())
    }

    pub fn new(config: Config) -> Self {
        let inner = Inner {
            config: RwLock::new(Arc::new(config)),
            keys: RwLock::new(HashMap::new()),
            jwks: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            guardrails: Mutex::new(guardrails::Store::default()),
            log: Mutex::new(VecDeque::new()),
            prompt_cache: Mutex::new(cache::Store::default()),
            seq: AtomicU64::new(0),
            runtime_calls: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
        };
        let emulator = Emulator(Arc::new(inner));
        emulator.reset();
        emulator
    }

    /// Binds `addr` and serves in the background until the returned handle is dropped.
    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let emulator = Emulator::new(config);
        emulator.prefetch_jwks().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = emulator.router();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Running {
            addr,
            emulator,
            shutdown: Some(tx),
        })
    }

    /// The HTTP routes of every emulated service and of the admin API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", post(sts_route))
            .route("/model/{model_id}/converse", post(runtime::converse))
            .route(
                "/model/{model_id}/converse-stream",
                post(runtime::converse_stream),
            )
            .route("/model/{model_id}/invoke", post(runtime::invoke_model))
            .route(
                "/model/{model_id}/count-tokens",
                post(runtime::count_tokens_route),
            )
            .route(
                "/model/{model_id}/invoke-with-response-stream",
                post(runtime::invoke_model_with_response_stream),
            )
            .route(
                "/guardrail/{id}/version/{version}/apply",
                post(runtime::apply_guardrail),
            )
            .route(
                "/guardrails",
                post(control::create_guardrail).get(control::list_guardrails),
            )
            .route(
                "/guardrails/{id}",
                get(control::get_guardrail)
                    .put(control::update_guardrail)
                    .post(control::create_guardrail_version)
                    .delete(control::delete_guardrail),
            )
            .route("/foundation-models", get(control::list_foundation_models))
            .route(
                "/foundation-models/{id}",
                get(control::get_foundation_model),
            )
            .route("/inference-profiles", get(control::list_inference_profiles))
            .route(
                "/inference-profiles/{id}",
                get(control::get_inference_profile),
            )
            // The EKS Pod Identity agent (pods reach it at 169.254.170.23:80 through the node).
            .route("/v1/credentials", get(pod_identity::credentials))
            .route("/_emulator/requests", get(admin_requests))
            .route("/_emulator/credentials", get(admin_credentials))
            .route("/_emulator/in-flight", get(admin_in_flight))
            .route("/_emulator/reset", post(admin_reset))
            .route(
                "/_emulator/config",
                get(admin_get_config).put(admin_put_config),
            )
            .fallback(unknown_operation)
            .with_state(self.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.0
            .config
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_default()
    }

    /// Replaces the configuration (catalogue, roles, output, latency, faults) at run time.
    pub fn set_config(&self, config: Config) {
        let users = config.users.clone();
        if let Ok(mut c) = self.0.config.write() {
            *c = Arc::new(config);
        }
        if let Ok(mut keys) = self.0.keys.write() {
            keys.retain(|_, k| matches!(k.principal, Principal::AssumedRole { .. }));
            for user in users {
                keys.insert(
                    user.access_key_id,
                    KeyEntry {
                        secret: user.secret_access_key,
                        session_token: None,
                        expires: None,
                        principal: Principal::User {
                            name: user.name,
                            allowed_models: user.allowed_models,
                        },
                    },
                );
            }
        }
    }

    /// Forgets issued credentials, guardrails, the request log and fault counters.
    pub fn reset(&self) {
        if let Ok(mut keys) = self.0.keys.write() {
            keys.clear();
        }
        self.set_config(Config::clone(&self.config()));
        if let Ok(mut g) = self.0.guardrails.lock() {
            *g = guardrails::Store::default();
        }
        if let Ok(mut log) = self.0.log.lock() {
            log.clear();
        }
        if let Ok(mut cache) = self.0.prompt_cache.lock() {
            cache.clear();
        }
        self.0.runtime_calls.store(0, Ordering::Relaxed);
    }

    /// Requests received, oldest first (at most `requestLogSize`).
    pub fn requests(&self) -> Vec<Record> {
        self.0
            .log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, mut record: Record) {
        record.seq = self.0.seq.fetch_add(1, Ordering::Relaxed) + 1;
        record.at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let limit = self.config().request_log_size;
        if let Ok(mut log) = self.0.log.lock() {
            if log.len() >= limit.max(1) {
                log.pop_front();
            }
            log.push_back(record);
        }
    }

    /// The n-th runtime call (1-based), for deterministic faults.
    fn next_runtime_call(&self) -> u64 {
        self.0.runtime_calls.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Verifies the SigV4 signature and returns who signed.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        method: &str,
        path_and_query: &str,
        service: &str,
    ) -> Result<Caller, AwsError> {
        let mut principal = None;
        let skew = Duration::from_secs(self.config().max_clock_skew_seconds);
        let signed = sigv4::verify(
            method,
            path_and_query,
            headers,
            body,
            service,
            skew,
            |akid| {
                let keys = self.0.keys.read().ok()?;
                let entry = keys.get(akid)?;
                principal = Some(entry.principal.clone());
                Some(KnownKey {
                    secret_access_key: entry.secret.clone(),
                    session_token: entry.session_token.clone(),
                    expires: entry.expires,
                })
            },
        )?;
        Ok(Caller {
            principal: principal.ok_or_else(AwsError::internal)?,
            region: signed.region,
        })
    }

    /// [`Self::authenticate`] for Bedrock (runtime and control plane both sign as `bedrock`).
    fn authenticate_bedrock(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        method: &str,
        uri: &Uri,
    ) -> Result<Caller, AwsError> {
        if let Some(key) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.authenticate_api_key(key.trim());
        }
        let path_and_query = uri
            .path_and_query()
            .map_or("/", axum::http::uri::PathAndQuery::as_str);
        self.authenticate(headers, body, method, path_and_query, "bedrock")
    }

    /// A Bedrock API key: Bedrock answers an unknown one with 403 and only a `Message`.
    fn authenticate_api_key(&self, key: &str) -> Result<Caller, AwsError> {
        let config = self.config();
        let user = config
            .users
            .iter()
            .find(|u| u.api_key.as_deref() == Some(key))
            .ok_or_else(|| {
                AwsError::new(
                    StatusCode::FORBIDDEN,
                    "",
                    "Authentication failed: Please make sure your API Key is valid.",
                )
            })?;
        Ok(Caller {
            principal: Principal::User {
                name: user.name.clone(),
                allowed_models: user.allowed_models.clone(),
            },
            region: user.api_key_region.clone(),
        })
    }

    fn issue_role_credentials(
        &self,
        role: &Role,
        session: &str,
        lifetime: Duration,
    ) -> IssuedCredentials {
        let access_key_id = format!("ASIA{}", random_token(8).to_uppercase());
        let issued = IssuedCredentials {
            secret_access_key: random_token(20),
            session_token: format!("IQoJb3JpZ2luX2Vj{}", random_token(48)),
            expiration: SystemTime::now() + lifetime,
            assumed_role_arn: Principal::AssumedRole {
                role_arn: role.arn.clone(),
                session: session.to_owned(),
                allowed_models: Vec::new(),
            }
            .arn(),
            assumed_role_id: format!("AROA{}:{session}", short_hash(&role.arn)),
            access_key_id,
        };
        if let Ok(mut keys) = self.0.keys.write() {
            let now = SystemTime::now();
            keys.retain(|_, k| k.expires.is_none_or(|e| e > now));
            keys.insert(
                issued.access_key_id.clone(),
                KeyEntry {
                    secret: issued.secret_access_key.clone(),
                    session_token: Some(issued.session_token.clone()),
                    expires: Some(issued.expiration),
                    principal: Principal::AssumedRole {
                        role_arn: role.arn.clone(),
                        session: session.to_owned(),
                        allowed_models: role.allowed_models.clone(),
                    },
                },
            );
        }
        issued
    }

    /// Fetches the OIDC provider's keys now, if one is configured. Best effort: they are fetched
    /// again on the first token signed with an unknown key id.
    pub async fn prefetch_jwks(&self) {
        if let Some(oidc) = self.config().oidc.clone()
            && let Err(e) = self.refresh_jwks(&oidc).await
        {
            tracing::warn!(error = %e, "could not fetch the OIDC provider's keys yet");
        }
    }

    fn jwks(&self) -> Arc<JwkSet> {
        self.0.jwks.read().map_or_else(
            |_| Arc::new(JwkSet { keys: Vec::new() }),
            |j| Arc::clone(&j),
        )
    }

    async fn refresh_jwks(&self, oidc: &config::OidcProvider) -> Result<Arc<JwkSet>, String> {
        let set = Arc::new(sts::fetch_jwks(oidc).await?);
        if let Ok(mut j) = self.0.jwks.write() {
            *j = Arc::clone(&set);
        }
        Ok(set)
    }
}

/// A random lowercase alphanumeric string of `n` characters.
fn random_token(n: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    // SystemRandom only fails when the OS has no entropy source; then fall back to the clock.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = nanos.to_le_bytes()[i % 16]);
    }
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// A request id in AWS's format.
pub fn request_id() -> String {
    let t = random_token(32);
    format!(
        "{}-{}-{}-{}-{}",
        &t[..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    )
}

async fn sts_route(State(emulator): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    sts::handle(&emulator, &headers, &body).await
}

async fn unknown_operation(method: Method, uri: Uri) -> Response {
    AwsError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        format!("No operation at {method} {}", uri.path()),
    )
    .into_response()
}

async fn admin_requests(
    State(emulator): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Vec<Record>> {
    let mut records = emulator.requests();
    if let Some(op) = q.get("operation") {
        records.retain(|r| &r.operation == op);
    }
    Json(records)
}

/// Model calls in flight now and the most ever at once: `{"inFlight": n, "peak": p}`.
async fn admin_in_flight(State(emulator): State<Emulator>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "inFlight": emulator.0.in_flight.load(Ordering::Acquire),
        "peak": emulator.0.in_flight_peak.load(Ordering::Acquire),
    }))
}

/// The secrets of the temporary credentials issued so far (secret keys and session tokens), so a
/// test can check they appear in no log.
async fn admin_credentials(State(emulator): State<Emulator>) -> Json<Vec<String>> {
    let secrets = emulator.0.keys.read().map_or_else(
        |_| Vec::new(),
        |keys| {
            keys.values()
                .filter(|k| matches!(k.principal, Principal::AssumedRole { .. }))
                .flat_map(|k| [Some(k.secret.clone()), k.session_token.clone()])
                .flatten()
                .collect()
        },
    );
    Json(secrets)
}

async fn admin_reset(State(emulator): State<Emulator>) -> StatusCode {
    emulator.reset();
    StatusCode::NO_CONTENT
}

async fn admin_get_config(State(emulator): State<Emulator>) -> Json<Config> {
    Json(Config::clone(&emulator.config()))
}

async fn admin_put_config(State(emulator): State<Emulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<Config>(&body) {
        Ok(config) => {
            emulator.set_config(config);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "message": e.to_string() })),
        )
            .into_response(),
    }
}

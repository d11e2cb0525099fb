//! Credentials per IAM role: STS `AssumeRoleWithWebIdentity` with the pod's projected token
//! (IRSA), or `AssumeRole` signed with the pod's EKS Pod Identity credentials (role chaining);
//! cached, refreshed well before expiry, single-flight (one STS call however many requests wait),
//! and never a hang: STS has a deadline, a failure is remembered for a backoff, and cached
//! credentials serve until they expire.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use aws_credential_types::{
    Credentials,
    provider::{self, ProvideCredentials, future},
};

/// Why no credentials could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the service-account token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("STS {operation} into {role} failed: {reason}")]
    Sts {
        operation: &'static str,
        role: String,
        reason: String,
    },
    #[error("STS did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no AWS credentials from {from}: {reason}")]
    Chain { from: &'static str, reason: String },
}

/// How the pod becomes an endpoint's role.
#[derive(Debug, Clone)]
pub enum RoleSource {
    /// IRSA: `AssumeRoleWithWebIdentity` with the projected token in this file (the kubelet
    /// rotates it). The STS client needs no credentials.
    WebIdentity { token_file: PathBuf },
    /// EKS Pod Identity: `AssumeRole` with the STS client signed by the pod's own role's
    /// credentials from the Pod Identity agent. The endpoint's role must trust that role.
    PodIdentity,
}

impl RoleSource {
    fn operation(&self) -> &'static str {
        match self {
            RoleSource::WebIdentity { .. } => "AssumeRoleWithWebIdentity",
            RoleSource::PodIdentity => "AssumeRole",
        }
    }
}

/// Temporary credentials for one role, shared by every endpoint that names it.
#[derive(Debug)]
pub struct RoleCredentials {
    role_arn: String,
    session_name: String,
    source: RoleSource,
    sts: aws_sdk_sts::Client,
    cache: CredentialCache,
    refreshes: std::sync::atomic::AtomicU64,
}

/// Credentials held between refreshes: served while more than `refresh_before` is left, refreshed
/// single-flight (one task calls the source; the others keep serving what is cached while it is
/// still valid, or wait for that one result), and kept until they expire when a refresh fails. A
/// failure is remembered for a backoff (1 s, doubling to 30 s): meanwhile nobody calls the source
/// again, and without valid credentials every request gets that failure at once. Credentials
/// without an expiry (static keys) are re-read every 15 minutes, as the SDK's identity cache does.
#[derive(Debug)]
struct CredentialCache {
    refresh_before: Duration,
    cached: Mutex<Option<(Credentials, SystemTime)>>,
    refreshing: tokio::sync::Mutex<()>,
    failure: Mutex<Option<Failure>>,
}

/// The last failed refresh: until `retry_at`, its error is the answer.
#[derive(Debug, Clone)]
struct Failure {
    error: CredentialsError,
    retry_at: Instant,
    backoff: Duration,
}

/// How long credentials without an expiry are kept before their source is asked again.
const UNDATED_CREDENTIALS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The first wait after a failed refresh; it doubles with each failure in a row, up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl CredentialCache {
    fn new(refresh_before: Duration) -> Self {
        CredentialCache {
            refresh_before,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            failure: Mutex::new(None),
        }
    }

    /// The cached credentials, or `load`'s (`source` names it in the log when it fails).
    async fn get_or_load<F>(
        &self,
        source: &str,
        load: impl FnOnce() -> F,
    ) -> Result<Credentials, CredentialsError>
    where
        F: std::future::Future<Output = Result<Credentials, CredentialsError>>,
    {
        if let Some(answer) = self.without_calling() {
            return answer;
        }
        let _turn = if let Ok(turn) = self.refreshing.try_lock() {
            turn
        } else {
            // Someone is refreshing: what we hold is good enough meanwhile.
            if let Some(valid) = self.cached_if(|remaining| remaining > Duration::ZERO) {
                return Ok(valid);
            }
            self.refreshing.lock().await
        };
        // Whoever held the lock may have refreshed, or failed, while we waited.
        if let Some(answer) = self.without_calling() {
            return answer;
        }
        match load().await {
            Ok(credentials) => {
                let expiry = credentials
                    .expiry()
                    .unwrap_or_else(|| SystemTime::now() + UNDATED_CREDENTIALS_LIFETIME);
                if let Ok(mut cached) = self.cached.lock() {
                    *cached = Some((credentials.clone(), expiry));
                }
                if let Ok(mut failure) = self.failure.lock() {
                    *failure = None;
                }
                Ok(credentials)
            }
            Err(e) => {
                let backoff = self.remember_failure(&e);
                // The source is down but what we hold is still valid: use it until it expires.
                if let Some(still_valid) = self.cached_if(|remaining| remaining > Duration::ZERO) {
                    tracing::warn!(source, error = %e, retry_in = ?backoff, "credential refresh failed; using cached credentials until they expire");
                    return Ok(still_valid);
                }
                tracing::warn!(source, error = %e, retry_in = ?backoff, "credential refresh failed");
                Err(e)
            }
        }
    }

    /// The answer that needs no call to the source: fresh cached credentials, or, during the
    /// backoff after a failure, the still-valid cached ones or that failure.
    fn without_calling(&self) -> Option<Result<Credentials, CredentialsError>> {
        if let Some(fresh) = self.cached_if(|remaining| remaining > self.refresh_before) {
            return Some(Ok(fresh));
        }
        let failure = self
            .failure
            .lock()
            .ok()?
            .clone()
            .filter(|f| Instant::now() < f.retry_at)?;
        Some(
            self.cached_if(|remaining| remaining > Duration::ZERO)
                .ok_or(failure.error),
        )
    }

    /// Records a failed refresh and returns how long until the next attempt.
    fn remember_failure(&self, error: &CredentialsError) -> Duration {
        let Ok(mut failure) = self.failure.lock() else {
            return FIRST_BACKOFF;
        };
        let backoff = failure
            .as_ref()
            .map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
        *failure = Some(Failure {
            error: error.clone(),
            retry_at: Instant::now() + backoff,
            backoff,
        });
        backoff
    }

    fn cached_if(&self, ok: impl Fn(Duration) -> bool) -> Option<Credentials> {
        let (credentials, expiry) = self.cached.lock().ok()?.clone()?;
        let remaining = expiry
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        ok(remaining).then_some(credentials)
    }
}

impl RoleCredentials {
    /// Credentials valid for at least `refresh_before` more, refreshing them if needed.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        self.cache
            .get_or_load(&self.role_arn, || self.assume())
            .await
    }

    /// How many times STS was called (for metrics and tests).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn assume(&self) -> Result<Credentials, CredentialsError> {
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = Duration::from_secs(10);
        let operation = self.source.operation();
        let failed = |reason: String| CredentialsError::Sts {
            operation,
            role: self.role_arn.clone(),
            reason,
        };
        let credentials = match &self.source {
            RoleSource::WebIdentity { token_file } => {
                // Re-read on every refresh: the kubelet rotates the projected token.
                let token = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                    CredentialsError::Token {
                        path: token_file.display().to_string(),
                        reason: e.to_string(),
                    }
                })?;
                let call = self
                    .sts
                    .assume_role_with_web_identity()
                    .role_arn(&self.role_arn)
                    .role_session_name(&self.session_name)
                    .web_identity_token(token.trim())
                    .send();
                within(deadline, call, failed).await?.credentials
            }
            RoleSource::PodIdentity => {
                let call = self
                    .sts
                    .assume_role()
                    .role_arn(&self.role_arn)
                    .role_session_name(&self.session_name)
                    .send();
                within(deadline, call, failed).await?.credentials
            }
        };
        let c = credentials.ok_or_else(|| failed("no credentials in the answer".into()))?;
        let expiry = SystemTime::try_from(c.expiration).ok();
        tracing::info!(role = %self.role_arn, via = operation, "obtained temporary credentials");
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            expiry,
            "ai-sidecar-role",
        ))
    }
}

/// STS's answer to `call` within `deadline`, its failure described by `failed`.
async fn within<O, E>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<O, aws_sdk_sts::error::SdkError<E>>>,
    failed: impl FnOnce(String) -> CredentialsError,
) -> Result<O, CredentialsError>
where
    E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| CredentialsError::Timeout(deadline))?
        .map_err(|e| failed(sts_reason(&e)))
}

fn sts_reason<E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + 'static>(
    e: &aws_sdk_sts::error::SdkError<E>,
) -> String {
    match e {
        aws_sdk_sts::error::SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or_default()
            )
        }
        // The Pod Identity agent's refusal comes through the signing credentials: say why.
        other => error_chain(other),
    }
}

impl ProvideCredentials for RoleCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.get()
                .await
                .map_err(provider::error::CredentialsError::provider_error)
        })
    }
}

/// The credential caches of every role in use, created on first use.
#[derive(Debug)]
pub struct RoleCredentialsRegistry {
    source: RoleSource,
    session_name: String,
    refresh_before: Duration,
    sts: aws_sdk_sts::Client,
    roles: Mutex<HashMap<String, Arc<RoleCredentials>>>,
}

impl RoleCredentialsRegistry {
    /// `sts` must fit `source`: without credentials for `WebIdentity` (its call carries no
    /// signature), signed with the Pod Identity credentials for `PodIdentity`.
    pub fn new(
        sts: aws_sdk_sts::Client,
        source: RoleSource,
        session_name: String,
        refresh_before: Duration,
    ) -> Self {
        RoleCredentialsRegistry {
            source,
            session_name,
            refresh_before,
            sts,
            roles: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_role(&self, role_arn: &str) -> Arc<RoleCredentials> {
        let mut roles = match self.roles.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(roles.entry(role_arn.to_owned()).or_insert_with(|| {
            Arc::new(RoleCredentials {
                role_arn: role_arn.to_owned(),
                session_name: self.session_name.clone(),
                source: self.source.clone(),
                sts: self.sts.clone(),
                cache: CredentialCache::new(self.refresh_before),
                refreshes: std::sync::atomic::AtomicU64::new(0),
            })
        }))
    }

    /// STS calls made so far, all roles together.
    pub fn refreshes(&self) -> u64 {
        self.roles
            .lock()
            .map(|r| r.values().map(|c| c.refreshes()).sum())
            .unwrap_or_default()
    }
}

/// Credentials from the base chain (environment, profile, web identity variables, ECS, IMDS), or
/// from the EKS Pod Identity agent when the pod has it, for endpoints that name no role, cached
/// as a role's are.
#[derive(Debug)]
pub struct ChainCredentials {
    provider: Option<provider::SharedCredentialsProvider>,
    /// What the provider is, for errors and logs.
    from: &'static str,
    cache: CredentialCache,
}

/// The agent answers 404 for a service account without an association (EKS Auth's
/// ResourceNotFoundException), which the SDK reports as a bare status code.
const POD_IDENTITY_404: &str = "StatusCode(404)";

impl ChainCredentials {
    pub fn new(
        provider: Option<provider::SharedCredentialsProvider>,
        from: &'static str,
        refresh_before: Duration,
    ) -> Self {
        ChainCredentials {
            provider,
            from,
            cache: CredentialCache::new(refresh_before),
        }
    }

    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        self.cache.get_or_load(self.from, || self.load()).await
    }

    async fn load(&self) -> Result<Credentials, CredentialsError> {
        let failed = |reason: String| CredentialsError::Chain {
            from: self.from,
            reason,
        };
        let Some(chain) = &self.provider else {
            return Err(failed("no credentials provider configured".into()));
        };
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, chain.provide_credentials())
            .await
            .map_err(|_| CredentialsError::Timeout(deadline))?
            .map_err(|e| {
                let mut reason = error_chain(&e);
                if self.from == POD_IDENTITY && reason.ends_with(POD_IDENTITY_404) {
                    reason.push_str(
                        " (the pod's service account has no Pod Identity association, or it is not in effect yet)",
                    );
                }
                failed(reason)
            })
    }
}

/// How ChainCredentials names the EKS Pod Identity agent.
pub const POD_IDENTITY: &str = "the EKS Pod Identity agent";
/// How ChainCredentials names the SDK's default chain.
pub const DEFAULT_CHAIN: &str = "the default chain";

/// An error with its sources: the chain's own message is often only "an error occurred".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

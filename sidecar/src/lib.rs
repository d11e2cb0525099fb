//! `ai-sidecar`: Bedrock through localhost for one pod. See docs/sidecar.md.

pub mod api;
pub mod bedrock;
pub mod calls;
pub mod catalog;
pub mod credentials;
pub mod errors;
pub mod fetch;
pub mod limits;
// The operator's binder, compiled in here too: one file for both binaries, not a crate of its own.
#[path = "../../operator/src/listen.rs"]
pub mod listen;
pub mod metrics;
pub mod pii;
pub mod refusals;
pub mod report;
pub mod server;
pub mod settings;
pub mod sigv4;
pub mod traces;
pub mod watch;

use std::{future::Future, sync::Arc};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::net::TcpListener;

use crate::{
    bedrock::Upstream,
    calls::AppState,
    catalog::Catalog,
    credentials::{RoleCredentialsRegistry, RoleSource},
    limits::Tally,
    metrics::Metrics,
    settings::Settings,
};

/// Why the sidecar cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the data port must listen on loopback only (got {0}): anyone who reaches it spends this pod's budget"
    )]
    NotLoopback(std::net::SocketAddr),
    #[error("--standalone needs --config FILE")]
    NoConfigFile,
    #[error("cannot load the configuration file")]
    ConfigFile(#[from] catalog::ConfigFileError),
    #[error(
        "cannot reach the Kubernetes API server (not in a cluster? use --standalone --config FILE)"
    )]
    Kube(#[from] kube::Error),
    #[error("cannot set up TLS for Bedrock")]
    Tls(#[source] rustls::Error),
    #[error(transparent)]
    ImageUrlAllow(#[from] fetch::AllowListError),
    #[error(transparent)]
    Traces(#[from] traces::TraceConfigError),
    #[error("cannot set up TLS for the OTLP exporter")]
    TracesTls(#[source] rustls::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Loads the configuration and builds everything a request needs. In cluster mode, starts the
/// watches (the catalog fills in the background; `/readyz` says when).
pub async fn build_state(settings: Settings) -> Result<Arc<AppState>, StartError> {
    if !settings.listen.ip().is_loopback() {
        return Err(StartError::NotLoopback(settings.listen));
    }
    // One crypto provider for every TLS client here (kube, STS, Bedrock): ring, see Cargo.toml.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let catalog = Arc::new(
        Catalog::new(
            settings.namespace.clone(),
            settings.pod_name.clone(),
            settings.allowed_endpoints(),
        )
        .with_pod_uid(settings.pod_uid.clone()),
    );
    if settings.standalone {
        let path = settings.config.as_ref().ok_or(StartError::NoConfigFile)?;
        catalog.load_file(path)?;
    }
    let kube_client = if settings.standalone {
        None
    } else {
        let client = kube::Client::try_default().await?;
        tokio::spawn(watch::run(client.clone(), Arc::clone(&catalog)));
        Some(client)
    };
    let upstream = upstream(&settings).await?;
    let images = fetch::ImageFetcher::new(&settings.image_url_allow)?;
    let metrics = Metrics::default();
    let trace_config = settings.traces.config(&traces::PodIdentity {
        name: &settings.pod_name,
        uid: &settings.pod_uid,
        namespace: &settings.namespace,
    })?;
    let tracer = trace_config
        .map(|config| {
            let counters = traces::SpanCounters(metrics.trace_spans.clone());
            traces::Tracer::start(config, counters).map(Arc::new)
        })
        .transpose()
        .map_err(StartError::TracesTls)?;
    let state = Arc::new(AppState {
        images,
        settings,
        catalog,
        upstream,
        tally: Tally::default(),
        metrics,
        refusals: Arc::default(),
        kube: kube_client,
        tracer,
    });
    tokio::spawn(Arc::clone(&state.refusals).run());
    if let Some(client) = state.kube.clone() {
        tokio::spawn(report::run(
            Arc::clone(&state),
            client,
            state.settings.report_interval,
        ));
    }
    Ok(state)
}

/// Bedrock as the pod: the endpoints' roles assumed with its identity (IRSA's web identity, or
/// EKS Pod Identity's credentials when EKS gave it the agent), its base chain for the others.
async fn upstream(settings: &Settings) -> Result<Upstream, StartError> {
    // HTTPS to STS and Bedrock on ring (see Cargo.toml), with the system's CA certificates.
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    // The region for STS only (each endpoint names its own) from the environment, never IMDS:
    // a pod that cannot reach it (EKS's hop limit of 1) would start 2 s late on its timeouts.
    let region = aws_config::meta::region::RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .region()
    .await
    .unwrap_or_else(|| aws_config::Region::new("us-east-1"));
    let base = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https.clone())
        .region(region.clone())
        .load()
        .await;
    // EKS Pod Identity, when EKS gave the pod the agent's URL: the pod's own role, from the agent.
    // Endpoints' roles are then assumed from it (AssumeRole, signed), not by web identity.
    let pod_identity = std::env::var_os(POD_IDENTITY_URI_ENV).map(|_| {
        SharedCredentialsProvider::new(
            aws_config::ecs::EcsCredentialsProvider::builder()
                .configure(
                    &aws_config::provider_config::ProviderConfig::without_region()
                        .with_http_client(https.clone()),
                )
                .build(),
        )
    });
    let sts_config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .region(region.clone());
    let (sts_config, role_source) = match &pod_identity {
        Some(own_role) => (
            sts_config.credentials_provider(own_role.clone()),
            RoleSource::PodIdentity,
        ),
        // AssumeRoleWithWebIdentity is unsigned: its client needs no credentials of its own.
        None => (
            sts_config.no_credentials(),
            RoleSource::WebIdentity {
                token_file: settings.token_file.clone(),
            },
        ),
    };
    let sts_config = sts_config.load().await;
    tracing::info!(
        identity = if pod_identity.is_some() {
            "EKS Pod Identity"
        } else {
            "IRSA (web identity)"
        },
        "endpoints' IAM roles are assumed with the pod's identity"
    );
    let session = if settings.pod_name.is_empty() {
        "ai-sidecar".to_owned()
    } else {
        format!("ai-sidecar-{}", settings.pod_name)
    };
    let session: String = session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(*c))
        .take(64)
        .collect();
    let roles = Arc::new(RoleCredentialsRegistry::new(
        aws_sdk_sts::Client::new(&sts_config),
        role_source,
        session,
        settings.credential_refresh_before,
    ));
    Upstream::new(
        base,
        roles,
        pod_identity,
        settings.upstream_timeout,
        settings.credential_refresh_before,
    )
    .map_err(StartError::Tls)
}

/// Set by EKS in containers of pods whose service account has a Pod Identity association (with
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`): the agent's credentials URL.
const POD_IDENTITY_URI_ENV: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";

/// Bound listeners, ready to serve.
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub fn bind(settings: &Settings) -> Result<Self, StartError> {
        let bind = |addr| listen::bind(addr).map_err(|source| StartError::Listen { addr, source });
        Ok(Listeners {
            data: bind(settings.listen)?,
            admin: bind(settings.admin_listen)?,
        })
    }
}

/// Serves both ports until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state_for_flush = Arc::clone(&state);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let read_timeout = state.settings.client_read_timeout;
    let data = server::serve(
        listeners.data,
        api::data_router(Arc::clone(&state)),
        read_timeout,
        rx.clone(),
    );
    let admin = server::serve(listeners.admin, api::admin_router(state), read_timeout, rx);
    tokio::spawn(async move {
        shutdown.await;
        tx.send_replace(true);
    });
    let flush_state = Arc::clone(&state_for_flush);
    tokio::join!(data, admin);
    // The last interval's "suppressed" counts, or a storm just before shutdown would go unseen.
    flush_state.refusals.flush();
    // Drained: write the final counters so nothing used is lost, and send the last spans.
    if let Some(client) = flush_state.kube.clone() {
        report::report_once(&flush_state, &client, u64::MAX / 2, true).await;
    }
    if let Some(tracer) = &flush_state.tracer {
        tracer.flush().await;
    }
}

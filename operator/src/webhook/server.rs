//! Serving `/mutate` over TLS: AdmissionReviews in, the injection patch (or a denial) out.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{Json, Router, extract::State, routing::post};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{DynamicObject, admission::AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use k8s_ai_api::model_endpoint::ModelEndpoint;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{
    admission::{self, EndpointLookup},
    inject::InjectSettings,
};
use crate::metrics::Metrics;

/// What the webhook handler needs.
pub struct Webhook {
    pub settings: InjectSettings,
    pub metrics: Arc<Metrics>,
    /// Every ModelEndpoint, to warn about pods that name one that does not exist; `None` without
    /// a cluster connection.
    pub endpoints: Option<Store<ModelEndpoint>>,
}

impl Webhook {
    fn lookup(&self, namespace: &str, name: &str) -> EndpointLookup {
        match &self.endpoints {
            // Before the first list completes, absence proves nothing.
            Some(store) if has_listed(store) => {
                if store.get(&ObjectRef::new(name).within(namespace)).is_some() {
                    EndpointLookup::Exists
                } else {
                    EndpointLookup::Missing
                }
            }
            _ => EndpointLookup::Unknown,
        }
    }
}

/// Whether the cache has its first list (without waiting for it).
fn has_listed(store: &Store<ModelEndpoint>) -> bool {
    use futures_util::FutureExt as _;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// The webhook's routes.
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(webhook)
}

async fn mutate(
    State(webhook): State<Arc<Webhook>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let namespace = review
        .request
        .as_ref()
        .and_then(|r| r.namespace.clone())
        .unwrap_or_default();
    let out = admission::review(review, &webhook.settings, &|ns, name| {
        webhook.lookup(ns, name)
    });
    let outcome = match &out.response {
        Some(response) if !response.allowed => {
            tracing::info!(%namespace, reason = %response.result.message, "denied a pod");
            "denied"
        }
        Some(response) if response.patch.is_some() => {
            tracing::debug!(%namespace, warnings = ?response.warnings, "injected the AI sidecar");
            "injected"
        }
        _ => "skipped",
    };
    webhook.metrics.admission(outcome, started);
    Json(out)
}

/// Serves `router` over TLS on `listener` until the process ends. Every connection gets the
/// certificate the resolver holds at its handshake, so rotations apply without a restart.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(stream) => {
                    if let Err(e) = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            }
        });
    }
}

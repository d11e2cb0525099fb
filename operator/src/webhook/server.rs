//! Serving `/mutate` over TLS: AdmissionReviews in, the injection patch (or a denial) out.

use std::{net::SocketAddr, sync::Arc};

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

use super::{
    admission::{self, EndpointLookup},
    inject::InjectSettings,
};

/// The webhook's routes.
pub fn router(settings: Arc<InjectSettings>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(settings)
}

async fn mutate(
    State(settings): State<Arc<InjectSettings>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let namespace = review
        .request
        .as_ref()
        .and_then(|r| r.namespace.clone())
        .unwrap_or_default();
    // No ModelEndpoint cache here yet: Unknown means no missing-endpoint warnings.
    let out = admission::review(review, &settings, &|_, _| EndpointLookup::Unknown);
    if let Some(response) = &out.response {
        if !response.allowed {
            tracing::info!(%namespace, reason = %response.result.message, "denied a pod");
        } else if response.patch.is_some() {
            tracing::info!(%namespace, warnings = ?response.warnings, "injected the AI sidecar");
        }
    }
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

//! Serving `/mutate` over TLS: AdmissionReviews in, the injection patch (or a denial) out.

use std::{net::SocketAddr, sync::Arc};

use axum::{Json, Router, extract::State, routing::post};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::inject::{InjectSettings, patch_for};

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
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return Json(
                AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                    .into_review(),
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = request.object.as_ref() else {
        return Json(response.into_review());
    };
    let response = match patch_for(pod, &settings) {
        Ok(None) => response,
        Ok(Some(patch)) => match response.clone().with_patch(patch) {
            Ok(patched) => {
                tracing::info!(
                    namespace = request.namespace.as_deref().unwrap_or_default(),
                    "injected the AI sidecar"
                );
                patched
            }
            Err(e) => response.deny(format!("internal error encoding the patch: {e}")),
        },
        Err(denial) => {
            tracing::info!(namespace = request.namespace.as_deref().unwrap_or_default(), reason = %denial, "denied a pod");
            response.deny(denial.0)
        }
    };
    Json(response.into_review())
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

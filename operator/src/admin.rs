//! The operator's own HTTP server: metrics and the probes, on every replica.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    http::{HeaderMap, StatusCode, header},
    routing::get,
};
use k8s_ai_api::model_endpoint::ModelEndpoint;
use kube::runtime::reflector::Store;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// The webhook serves a certificate.
    pub webhook_serving: AtomicBool,
    /// The replica drains before it exits.
    pub shutting_down: AtomicBool,
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (the webhook serves a certificate
/// and the replica is not draining), over plain HTTP.
///
/// # Errors
/// When `listen` cannot be bound.
pub fn admin_server(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    endpoints: Option<Store<ModelEndpoint>>,
) -> std::io::Result<impl Future<Output = ()>> {
    let listener = crate::listen::bind(listen)?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| async move {
                let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
                let (content_type, body) =
                    k8s_ai_api::exposition::negotiate(accept, metrics.render(endpoints.as_ref()));
                ([(header::CONTENT_TYPE, content_type)], body)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if health.shutting_down.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                } else if health.webhook_serving.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "webhook certificate not ready",
                    )
                }
            }),
        );
    tracing::info!(%listen, "metrics and probes listening");
    Ok(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    })
}

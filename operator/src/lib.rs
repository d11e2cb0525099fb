//! The k8s-ai-operator's library: the admission webhook (sidecar injection and its TLS server)
//! the controllers, the self-managed webhook certificates and the metrics.

pub mod admin;
pub mod certs;
pub mod controllers;
pub mod leader;
pub mod listen;
pub mod metrics;
pub mod webhook;

//! The k8s-ai-operator's library: what the binary's `run` will serve. So far the sidecar
//! injection logic of the admission webhook (pure, tested); the controllers and the TLS server
//! are the rest of issue 5.

pub mod webhook;

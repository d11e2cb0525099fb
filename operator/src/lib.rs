//! The k8s-ai-operator's library: the admission webhook (sidecar injection and its TLS server)
//! and the controllers built so far (PromptTemplate).

pub mod controllers;
pub mod webhook;

//! The mutating admission webhook: which pods get the sidecar, and the JSON patch that adds it.

pub mod admission;
pub mod inject;
pub mod server;

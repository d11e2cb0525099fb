//! Serving certificates for the operator's admission webhook: a self-managed CA stored in a
//! Secret, or cert-manager's mounted files, hot-reloaded. Not built yet: this crate is empty.

//! OpenTelemetry traces of model calls, sent over OTLP/HTTP (JSON) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: one CLIENT span per call, a child of the app's
//! `traceparent` when it sends one, with the GenAI semantic conventions and our own attributes
//! (`gen_ai.rs`). Off, nothing of this runs: the middleware is not installed.
//!
//! The span of a request lives in a task-local, so the call's steps in `calls.rs` record into it
//! without every API's handler passing it along; a stream's pump carries it into its own task.
//! The span ends when its last holder lets go (the handler, or the stream's pump) and is queued
//! for the exporter (`otlp.rs`), which never holds a request up.

mod config;
pub mod gen_ai;
mod otlp;

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};

pub use config::{PodIdentity, Sampler, TraceConfig, TraceConfigError, TraceSettings};
pub use otlp::{Exporter, SpanCounters};

tokio::task_local! {
    /// The span of the request being handled, when it is sampled.
    static CURRENT: Arc<CallSpan>;
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Strs(Vec<String>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// The app's trace context, from its `traceparent` (and `tracestate`) headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
    pub state: Option<String>,
}

impl Parent {
    /// W3C Trace Context: `version-traceid-parentid-flags`, lower-case hex; a later version may
    /// add fields after these. All-zero ids, version `ff` and malformed headers are ignored.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<Self> {
        let value = headers.get("traceparent")?.to_str().ok()?.trim();
        let mut fields = value.split('-');
        let (version, trace, span, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?;
        let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
        // tracestate is opaque to us; W3C caps it at 32 entries, ~512 characters is plenty.
        let state = headers
            .get("tracestate")
            .and_then(|s| s.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .map(str::to_owned);
        Some(Parent {
            trace_id,
            span_id,
            sampled,
            state,
        })
    }
}

/// A span being recorded: what a call's steps have set so far.
#[derive(Debug, Default)]
pub struct Fields {
    /// Set when the request turns into a model call: a request that never does (a render, a
    /// malformed body) leaves no span.
    name: Option<String>,
    attributes: Vec<(&'static str, Value)>,
    /// The error's description, when the call failed.
    error: Option<String>,
}

impl Fields {
    /// Names the span: it is a model call and will be exported.
    pub fn open(&mut self, name: String) {
        self.name = Some(name);
    }

    /// Sets `key`, replacing an earlier value.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// Marks the span failed.
    pub fn fail(&mut self, description: String) {
        self.error = Some(description);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A finished span, queued for export.
#[derive(Debug)]
pub struct FinishedSpan {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub trace_state: Option<String>,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: Option<String>,
}

/// The span of one request.
pub struct CallSpan {
    trace_id: u128,
    span_id: u64,
    parent: Option<Parent>,
    start_unix_nanos: u64,
    started: Instant,
    message_content: bool,
    fields: Mutex<Fields>,
    exporter: Arc<Exporter>,
}

impl CallSpan {
    fn fields(&self) -> MutexGuard<'_, Fields> {
        self.fields.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether prompts and answers go into spans (`--trace-message-content`).
    pub fn records_message_content(&self) -> bool {
        self.message_content
    }
}

impl Drop for CallSpan {
    fn drop(&mut self) {
        let fields = std::mem::take(&mut *self.fields());
        let Some(name) = fields.name else {
            return;
        };
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let parent = self.parent.take();
        self.exporter.queue(FinishedSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: parent.as_ref().map(|p| p.span_id),
            trace_state: parent.and_then(|p| p.state),
            name,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.start_unix_nanos.saturating_add(elapsed),
            attributes: fields.attributes,
            error: fields.error,
        });
    }
}

/// Starts spans and hands finished ones to the exporter.
pub struct Tracer {
    sampler: Sampler,
    message_content: bool,
    exporter: Arc<Exporter>,
}

impl Tracer {
    /// The tracer of `config`, its exporter running in the background.
    pub fn start(config: TraceConfig, counters: SpanCounters) -> Result<Self, rustls::Error> {
        let (sampler, message_content) = (config.sampler, config.message_content);
        let exporter = Exporter::start(config, counters)?;
        Ok(Tracer {
            sampler,
            message_content,
            exporter,
        })
    }

    /// A span for a request, `None` when the sampler leaves it out.
    pub fn begin(&self, parent: Option<Parent>) -> Option<CallSpan> {
        let trace_id = parent
            .as_ref()
            .map_or_else(|| fastrand::u128(1..), |p| p.trace_id);
        if !self
            .sampler
            .samples(trace_id, parent.as_ref().map(|p| p.sampled))
        {
            return None;
        }
        let start_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Some(CallSpan {
            trace_id,
            span_id: fastrand::u64(1..),
            parent,
            start_unix_nanos,
            started: Instant::now(),
            message_content: self.message_content,
            fields: Mutex::default(),
            exporter: Arc::clone(&self.exporter),
        })
    }

    /// Sends what is queued, within the export timeout (at shutdown).
    pub async fn flush(&self) {
        self.exporter.flush().await;
    }
}

/// Middleware of the data routes: the request's span, when sampled, around its handling.
pub async fn trace_requests(
    State(tracer): State<Arc<Tracer>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let Some(span) = tracer.begin(Parent::from_headers(request.headers())) else {
        return next.run(request).await;
    };
    let span = Arc::new(span);
    if let Some(route) = route {
        span.fields().set("http.route", route.as_str());
    }
    let response = CURRENT.scope(Arc::clone(&span), next.run(request)).await;
    span.fields().set(
        "http.response.status_code",
        Value::Int(i64::from(response.status().as_u16())),
    );
    response
}

/// Records into the current request's span, if it has one.
pub fn record(f: impl FnOnce(&mut Fields)) {
    let _ = CURRENT.try_with(|span| f(&mut span.fields()));
}

/// The current request's span, to carry into another task.
pub fn current() -> Option<Arc<CallSpan>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `future` with `span` as its current span (a stream's pump, in its own task).
pub async fn within<F: Future>(span: Option<Arc<CallSpan>>, future: F) -> F::Output {
    match span {
        Some(span) => CURRENT.scope(span, future).await,
        None => future.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(traceparent).unwrap());
        h
    }

    #[test]
    fn traceparent_is_read_as_w3c_trace_context_says() {
        let mut h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let p = Parent::from_headers(&h).unwrap();
        assert_eq!(p.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(p.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(p.sampled);
        assert_eq!(p.state.as_deref(), Some("vendor=x"));
        let unsampled = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!Parent::from_headers(&unsampled).unwrap().sampled);
        // A later version may carry more fields.
        let later = headers("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what");
        assert!(Parent::from_headers(&later).is_some());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(Parent::from_headers(&headers(bad)), None, "{bad}");
        }
    }

    #[test]
    fn fields_replace_earlier_values() {
        let mut f = Fields::default();
        f.set("k8s_ai.limit.decision", "admitted");
        f.set("k8s_ai.limit.decision", "rate_limited");
        assert_eq!(f.attributes.len(), 1);
        assert_eq!(
            f.get("k8s_ai.limit.decision"),
            Some(&Value::from("rate_limited"))
        );
    }
}

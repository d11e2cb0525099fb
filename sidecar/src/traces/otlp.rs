//! The exporter: finished spans wait in a bounded queue and leave in batches as OTLP/HTTP JSON
//! (`POST .../v1/traces`), retried on the answers OTLP calls retryable. A full queue or a
//! receiver that stays away drops spans, counted in `k8s_ai_operator_sidecar_trace_spans_total`
//! and said in a warn line at most once a minute: a call is never held up by its trace.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use super::{FinishedSpan, TraceConfig, Value, config::shown};
use crate::{bedrock::HttpsClient, metrics::TraceSpanLabels};

/// Spans waiting for export at most; more are dropped (a receiver down for a while).
const QUEUE: usize = 2048;
/// Spans sent in one request at most (OpenTelemetry's default batch).
const MAX_BATCH: usize = 512;
/// At most one warn line about dropped spans this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// An answer's body read at most (a partial success names its rejected spans).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Spans by what became of them: `exported`, `rejected` (by the receiver), `queue_full`,
/// `export_failed`.
#[derive(Clone, Default)]
pub struct SpanCounters(pub Family<TraceSpanLabels, Counter>);

impl SpanCounters {
    fn add(&self, outcome: &'static str, n: usize) {
        self.0
            .get_or_create(&TraceSpanLabels { outcome })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

/// The queue's end the spans enter by.
pub struct Exporter {
    spans: mpsc::Sender<FinishedSpan>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    counters: SpanCounters,
    timeout: Duration,
}

impl Exporter {
    /// Starts the sender task of `config`.
    pub(super) fn start(
        config: TraceConfig,
        counters: SpanCounters,
    ) -> Result<Arc<Self>, rustls::Error> {
        let client = crate::bedrock::https_client()?;
        let (spans, queued) = mpsc::channel(QUEUE);
        let (flushes, flush_requests) = mpsc::channel(1);
        let timeout = config.timeout;
        tracing::info!(
            endpoint = %shown(&config.url),
            message_content = config.message_content,
            "OpenTelemetry traces of model calls are exported over OTLP/HTTP"
        );
        let sender = Sender {
            client,
            config,
            counters: counters.clone(),
            dropped_unsaid: 0,
            last_warned: None,
        };
        tokio::spawn(sender.run(queued, flush_requests));
        Ok(Arc::new(Exporter {
            spans,
            flushes,
            counters,
            timeout,
        }))
    }

    /// Queues a finished span, or drops it when the queue is full.
    pub(super) fn queue(&self, span: FinishedSpan) {
        if self.spans.try_send(span).is_err() {
            self.counters.add("queue_full", 1);
        }
    }

    /// Sends everything queued now; returns when it is done or the export timeout has passed.
    pub(super) async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), finished).await;
        }
    }
}

/// The task that sends batches.
struct Sender {
    client: HttpsClient,
    config: TraceConfig,
    counters: SpanCounters,
    /// Spans dropped since the last warn line.
    dropped_unsaid: usize,
    last_warned: Option<Instant>,
}

/// What the receiver made of a batch.
enum Answer {
    Accepted {
        rejected: usize,
    },
    /// Worth another try (429, 502, 503, 504, or no connection).
    Retry(String),
    Refused(String),
}

impl Sender {
    async fn run(
        mut self,
        mut queued: mpsc::Receiver<FinishedSpan>,
        mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::new();
        let mut tick = tokio::time::interval(self.config.batch_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = queued.recv() => {
                    let Some(span) = span else { break };
                    batch.push(span);
                    if batch.len() >= MAX_BATCH {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                }
                Some(done) = flush_requests.recv() => {
                    while let Ok(span) = queued.try_recv() {
                        batch.push(span);
                        if batch.len() >= MAX_BATCH {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                    }
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    /// Sends `batch`, retrying within the export timeout; counts what became of its spans.
    async fn send(&mut self, batch: Vec<FinishedSpan>) {
        let count = batch.len();
        let body = Bytes::from(encode(&self.config.resource, &batch));
        drop(batch);
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut backoff = Duration::from_millis(250);
        let failure = loop {
            let answer = tokio::time::timeout_at(deadline, self.post(body.clone())).await;
            let why = match answer {
                Ok(Answer::Accepted { rejected }) => {
                    let rejected = rejected.min(count);
                    self.counters.add("exported", count - rejected);
                    if rejected > 0 {
                        self.counters.add("rejected", rejected);
                        self.warn(
                            rejected,
                            "the receiver rejected some spans (partial success)",
                        );
                    }
                    return;
                }
                Ok(Answer::Refused(why)) => break why,
                Ok(Answer::Retry(why)) => why,
                Err(_) => break "no answer within OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(),
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                break why;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        };
        self.counters.add("export_failed", count);
        self.warn(count, &failure);
    }

    async fn post(&self, body: Bytes) -> Answer {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.config.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("ai-sidecar/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Answer::Refused(format!("cannot build the request: {e}")),
        };
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) => return Answer::Retry(crate::credentials::error_chain(&e)),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        if status.is_success() {
            return Answer::Accepted {
                rejected: rejected_spans(&body),
            };
        }
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let why = format!("HTTP {status}: {excerpt}");
        match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Answer::Retry(why),
            _ => Answer::Refused(why),
        }
    }

    /// A warn line about `dropped` spans, at most once a minute (the others are added to the next).
    fn warn(&mut self, dropped: usize, why: &str) {
        self.dropped_unsaid += dropped;
        let now = Instant::now();
        if self.last_warned.is_some_and(|at| now < at + WARN_EVERY) {
            return;
        }
        tracing::warn!(
            endpoint = %shown(&self.config.url),
            spans = self.dropped_unsaid,
            error = %why,
            "spans were not exported (k8s_ai_operator_sidecar_trace_spans_total counts them)"
        );
        self.dropped_unsaid = 0;
        self.last_warned = Some(now);
    }
}

/// `partialSuccess.rejectedSpans` of an OTLP answer (an int64, so a string in JSON), 0 if none.
fn rejected_spans(body: &[u8]) -> usize {
    let Ok(answer) = serde_json::from_slice::<Json>(body) else {
        return 0;
    };
    let rejected = &answer["partialSuccess"]["rejectedSpans"];
    rejected
        .as_u64()
        .or_else(|| rejected.as_str().and_then(|s| s.parse().ok()))
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// An ExportTraceServiceRequest in OTLP's JSON form (ids in hex, 64-bit integers as strings),
/// written straight from the spans: a batch is encoded on the thread that serves requests, so it
/// builds no JSON tree and formats numbers in place.
fn encode(resource: &[(String, Value)], spans: &[FinishedSpan]) -> Vec<u8> {
    let request = ExportRequest { resource, spans };
    serde_json::to_vec(&request).unwrap_or_default()
}

struct ExportRequest<'a> {
    resource: &'a [(String, Value)],
    spans: &'a [FinishedSpan],
}

impl Serialize for ExportRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let resource = Attributes(self.resource);
        let scope = ScopeSpans { spans: self.spans };
        let resource_spans = ResourceSpans {
            resource: Resource {
                attributes: resource,
            },
            scope_spans: [scope],
        };
        let mut request = serializer.serialize_map(Some(1))?;
        request.serialize_entry("resourceSpans", &[resource_spans])?;
        request.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Attributes<'a, String>,
}

struct ScopeSpans<'a> {
    spans: &'a [FinishedSpan],
}

impl Serialize for ScopeSpans<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut scope = serializer.serialize_map(Some(2))?;
        scope.serialize_entry(
            "scope",
            &Scope {
                name: "ai-sidecar",
                version: env!("CARGO_PKG_VERSION"),
            },
        )?;
        scope.serialize_entry("spans", self.spans)?;
        scope.end()
    }
}

impl Serialize for FinishedSpan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut span = serializer.serialize_map(None)?;
        span.serialize_entry("traceId", &Hex(format_args!("{:032x}", self.trace_id)))?;
        span.serialize_entry("spanId", &Hex(format_args!("{:016x}", self.span_id)))?;
        if let Some(parent) = self.parent_span_id {
            span.serialize_entry("parentSpanId", &Hex(format_args!("{parent:016x}")))?;
        }
        if let Some(state) = &self.trace_state {
            span.serialize_entry("traceState", state)?;
        }
        span.serialize_entry("name", &self.name)?;
        // SPAN_KIND_CLIENT: the sidecar calls Bedrock for the app.
        span.serialize_entry("kind", &3)?;
        span.serialize_entry(
            "startTimeUnixNano",
            &Hex(format_args!("{}", self.start_unix_nanos)),
        )?;
        span.serialize_entry(
            "endTimeUnixNano",
            &Hex(format_args!("{}", self.end_unix_nanos)),
        )?;
        span.serialize_entry("attributes", &Attributes(&self.attributes))?;
        // A call that succeeded leaves the status unset, as the conventions ask.
        if let Some(message) = &self.error {
            span.serialize_entry("status", &Status { code: 2, message })?;
        }
        span.end()
    }
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Status<'a> {
    code: u8,
    message: &'a str,
}

/// Text formatted as it is written (ids in hex, int64s as decimal strings): no String between.
struct Hex<'a>(std::fmt::Arguments<'a>);

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Key-value pairs as OTLP's `[{"key": ..., "value": {AnyValue}}]`.
struct Attributes<'a, K>(&'a [(K, Value)]);

impl<K: AsRef<str>> Serialize for Attributes<'_, K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(key, value)| KeyValue {
            key: key.as_ref(),
            value: AnyValue(value),
        }))
    }
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

struct AnyValue<'a>(&'a Value);

impl Serialize for AnyValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut any = serializer.serialize_map(Some(1))?;
        match self.0 {
            Value::Str(s) => any.serialize_entry("stringValue", s)?,
            Value::Int(n) => any.serialize_entry("intValue", &Hex(format_args!("{n}")))?,
            Value::Float(f) => any.serialize_entry("doubleValue", f)?,
            Value::Bool(b) => any.serialize_entry("boolValue", b)?,
            Value::Strs(list) => any.serialize_entry(
                "arrayValue",
                &StringArray {
                    values: Strings(list),
                },
            )?,
        }
        any.end()
    }
}

/// `{"values": [{"stringValue": ...}, ...]}`.
#[derive(Serialize)]
struct StringArray<'a> {
    values: Strings<'a>,
}

struct Strings<'a>(&'a [String]);

impl Serialize for Strings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct StringValue<'a> {
            #[serde(rename = "stringValue")]
            string_value: &'a str,
        }
        serializer.collect_seq(self.0.iter().map(|s| StringValue { string_value: s }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let span = FinishedSpan {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0xab,
            parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
            trace_state: None,
            name: "chat m".to_owned(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![
                ("gen_ai.usage.input_tokens", Value::Int(12)),
                (
                    "gen_ai.response.finish_reasons",
                    Value::Strs(vec!["end_turn".into()]),
                ),
            ],
            error: Some("rate_limited".to_owned()),
        };
        let json: Json = serde_json::from_slice(&encode(
            &[("service.name".to_owned(), Value::from("s"))],
            &[span],
        ))
        .unwrap();
        let s = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["spanId"], "00000000000000ab");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["startTimeUnixNano"], "1");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "12");
        assert_eq!(
            s["attributes"][1]["value"]["arrayValue"]["values"][0]["stringValue"],
            "end_turn"
        );
        assert_eq!(s["status"]["code"], 2);
        assert!(s.get("traceState").is_none());
    }

    #[test]
    fn partial_success_counts_rejected_spans() {
        assert_eq!(rejected_spans(br#"{"partialSuccess":{}}"#), 0);
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"3"}}"#),
            3
        );
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":2}}"#),
            2
        );
        assert_eq!(rejected_spans(b"not json"), 0);
    }
}

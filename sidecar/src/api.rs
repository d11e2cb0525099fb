//! The HTTP APIs: the data port (`/invoke`, `/render`, OpenAI-compatible `/v1/...`) and the
//! admin port (`/healthz`, `/readyz`, `/metrics`).

use std::{
    convert::Infallible,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use aws_sdk_bedrockruntime::types::ConversationRole;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    bedrock::ModelRequest,
    calls::{AppState, CallResult, StreamEvent, format_cost},
    errors::ApiError,
};

type Shared = State<Arc<AppState>>;

/// The data API, for the app's containers.
pub fn data_router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/invoke/{namespace}/{endpoint}", post(invoke))
        .route("/render/{namespace}/{template}", post(render))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: see docs/sidecar.md",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(refuse_web_pages))
        .with_state(state)
}

/// Refuses requests a web browser sends on behalf of a site (a cross-site form or fetch, or a page
/// that rebinds its DNS name to 127.0.0.1): browsers name the page's origin, other clients don't.
async fn refuse_web_pages(request: Request, next: Next) -> Response {
    match request.headers().get(header::ORIGIN) {
        Some(origin) if !is_loopback_origin(origin) => ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "requests from web pages are refused: the Origin header names a site other than \
             localhost (see docs/security.md)",
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match authority.strip_prefix("[::1]") {
        Some(rest) => return rest.is_empty() || rest.starts_with(':'),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let port_ok = authority[host.len()..]
        .strip_prefix(':')
        .is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    port_ok && (host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1")
}

/// A route's two path names (namespace and endpoint or template), or our JSON 400 when the path
/// cannot be decoded (invalid UTF-8 after percent-decoding).
pub struct Names(String, String);

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((namespace, name))| Names(namespace, name))
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
    }
}

/// The admin API, for the kubelet and Prometheus.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): Shared) -> Response {
    if !state.catalog.is_loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet",
        )
            .into_response();
    }
    let now = std::time::SystemTime::now();
    let snapshot = state.catalog.snapshot();
    let mut waiting: Vec<&str> = snapshot
        .endpoints
        .values()
        .filter(|e| e.awaiting_first_share(now))
        .map(|e| e.name.as_str())
        .collect();
    if waiting.is_empty() {
        return "ok".into_response();
    }
    waiting.sort_unstable();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "waiting for the operator's first share of {}",
            waiting.join(", ")
        ),
    )
        .into_response()
}

/// OpenMetrics when asked for (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): Shared, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let (content_type, body) = k8s_ai_api::exposition::negotiate(accept, state.metrics.render());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The request body, or our JSON error when it cannot be read (413 over the size limit).
pub struct Body(Bytes);

impl axum::extract::FromRequest<Arc<AppState>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let timeout = state.settings.client_read_timeout;
        let read = <Bytes as axum::extract::FromRequest<_>>::from_request(req, state);
        let Ok(read) = tokio::time::timeout(timeout, read).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body was not received within {} s (AI_SIDECAR_CLIENT_READ_TIMEOUT)",
                    timeout.as_secs_f64()
                ),
            ));
        };
        read.map(Body).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is over the size limit (AI_SIDECAR_MAX_BODY_BYTES)",
                )
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut: user text echoed in an error.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses a JSON body into `T`, or a 400 (413 when too large) naming what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {limit} bytes"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// A chat message of the seed's `/invoke` body.
#[derive(Debug, Deserialize)]
struct InvokeMessage {
    role: String,
    content: String,
}

/// The seed's `/invoke` body, plus our additions.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvokeBody {
    messages: Vec<InvokeMessage>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
}

fn role(name: &str, index: usize) -> Result<ConversationRole, ApiError> {
    match name {
        "user" => Ok(ConversationRole::User),
        "assistant" => Ok(ConversationRole::Assistant),
        other => Err(ApiError::invalid(format!(
            "messages[{index}].role must be \"user\" or \"assistant\", not {:?}",
            truncated(other, 64)
        ))),
    }
}

fn check_sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
) -> Result<(), ApiError> {
    if temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ApiError::invalid("temperature must be between 0 and 1"));
    }
    if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::invalid("topP must be between 0 and 1"));
    }
    if max_tokens == Some(0) {
        return Err(ApiError::invalid("maxTokens must be at least 1"));
    }
    Ok(())
}

impl InvokeBody {
    fn into_request(self) -> Result<(ModelRequest, Option<u32>, bool), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must hold at least one message"));
        }
        check_sampling(self.temperature, self.top_p, self.max_tokens)?;
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| Ok((role(&m.role, i)?, m.content)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        if messages
            .first()
            .is_some_and(|(r, _)| *r != ConversationRole::User)
        {
            return Err(ApiError::invalid("the first message must be from the user"));
        }
        let request = ModelRequest {
            system: self.system.filter(|s| !s.is_empty()),
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            stop_sequences: self.stop_sequences,
            ..ModelRequest::default()
        };
        Ok((request, self.max_tokens, self.stream))
    }
}

/// The seed's answer shape.
fn seed_answer(result: &CallResult) -> Value {
    json!({
        "content": result.answer.text,
        "inputTokens": result.answer.usage.input_tokens + result.answer.usage.cache_read_input_tokens + result.answer.usage.cache_write_input_tokens,
        "outputTokens": result.answer.usage.output_tokens,
        "stopReason": result.answer.stop_reason,
        "costUSD": format_cost(result.cost),
    })
}

async fn invoke(State(state): Shared, Names(namespace, name): Names, Body(body): Body) -> Response {
    let outcome = async {
        let endpoint = state.endpoint(&namespace, &name)?;
        let (request, max_tokens, streaming) =
            parse::<InvokeBody>(&body, state.settings.max_body_bytes)?.into_request()?;
        let prepared = state.prepare(endpoint, request, max_tokens).await?;
        if streaming {
            let events = state.call_streaming(prepared).await?;
            return Ok(seed_stream(events, Value::Null));
        }
        let result = state.call(prepared).await?;
        Ok(Json(seed_answer(&result)).into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

/// The seed-style stream: `delta` events, then `done` with the answer (plus `extra` fields), or `error`.
fn seed_stream(events: mpsc::Receiver<StreamEvent>, extra: Value) -> Response {
    sse(events, move |event| match event {
        StreamEvent::Delta(text) => Event::default()
            .event("delta")
            .json_data(json!({ "text": text })),
        StreamEvent::Done(result) => {
            let mut answer = seed_answer(&result);
            merge(&mut answer, &extra);
            Event::default().event("done").json_data(answer)
        }
        StreamEvent::Error(e) => Event::default()
            .event("error")
            .json_data(json!({ "error": { "code": e.code, "message": e.message } })),
    })
}

fn sse(
    events: mpsc::Receiver<StreamEvent>,
    to_event: impl Fn(StreamEvent) -> Result<Event, axum::Error> + Send + 'static,
) -> Response {
    let stream = stream::unfold(
        events,
        |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
    )
    .map(move |e| {
        Ok::<Event, Infallible>(
            to_event(e).unwrap_or_else(|_| Event::default().event("error").data("{}")),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `/render` body: the template's variables, and the invoke options.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenderBody {
    #[serde(default)]
    variables: serde_json::Map<String, Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stream: bool,
}

async fn render(State(state): Shared, Names(namespace, name): Names, Body(body): Body) -> Response {
    let outcome = async {
        let body: RenderBody = parse(&body, state.settings.max_body_bytes)?;
        check_sampling(body.temperature, body.top_p, body.max_tokens)?;
        if namespace != state.catalog.namespace() {
            return Err(ApiError::not_allowed(&format!("namespace {namespace}")));
        }
        let template = state
            .catalog
            .snapshot()
            .templates
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "template_not_found",
                    format!(
                        "PromptTemplate {namespace}/{name} does not exist (or is not loaded yet)"
                    ),
                )
            })?;
        let compiled = template.compiled.as_ref().map_err(|e| {
            ApiError::unavailable("template_invalid", format!("PromptTemplate {name}: {e}"))
        })?;
        let rendered = compiled
            .render(&body.variables)
            .map_err(|e| ApiError::invalid(format!("PromptTemplate {name}: {e}")))?;
        let about = json!({ "template": template.name, "revision": template.revision });
        if body.dry_run {
            let mut answer =
                json!({ "systemPrompt": rendered.system_prompt, "prompt": rendered.prompt });
            merge(&mut answer, &about);
            return Ok(Json(answer).into_response());
        }
        let endpoint = state.endpoint(&namespace, &template.endpoint)?;
        let request = ModelRequest {
            system: rendered.system_prompt,
            messages: vec![(ConversationRole::User, rendered.prompt)],
            temperature: body.temperature,
            top_p: body.top_p,
            ..ModelRequest::default()
        };
        let prepared = state.prepare(endpoint, request, body.max_tokens).await?;
        if body.stream {
            let events = state.call_streaming(prepared).await?;
            return Ok(seed_stream(events, about));
        }
        let result = state.call(prepared).await?;
        let mut answer = seed_answer(&result);
        merge(&mut answer, &about);
        Ok(Json(answer).into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        a.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// An OpenAI chat message: content is a string or a list of text parts.
#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    /// `name`, `tool_calls`, `audio`, ...: refused unless empty (SDKs echo `"refusal": null`).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// The OpenAI `/v1/chat/completions` body: the fields we implement, and every other one in
/// `other`, each refused by name unless ignoring it cannot change the answer (`check_fields`).
#[derive(Debug, Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Request fields of OpenAI's Chat Completions we accept and do not act on: identifiers and
/// cache or storage hints, whose absence cannot change the answer (see docs/sidecar.md).
const IGNORED_FIELDS: &[&str] = &[
    "user",
    "safety_identifier",
    "metadata",
    "prompt_cache_key",
    "prompt_cache_retention",
    // Only about tools, which are refused unless empty.
    "parallel_tool_calls",
];

/// Whether `value` of the unimplemented field `name` is what leaving it out means, so ignoring
/// it changes nothing (LangChain sends `n: 1`, SDKs echo nulls).
fn is_neutral(name: &str, value: &Value) -> bool {
    let empty = match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    empty
        || match name {
            "n" => value.as_u64() == Some(1),
            "logprobs" | "store" => value == &Value::Bool(false),
            "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
            "response_format" => value == &json!({ "type": "text" }),
            "modalities" => value == &json!(["text"]),
            "tool_choice" => matches!(value.as_str(), Some("none" | "auto")),
            "service_tier" => matches!(value.as_str(), Some("auto" | "default")),
            _ => false,
        }
}

/// Refuses the first field of `fields` (named under `prefix`) that is neither ignorable nor
/// neutral: a client must never get a plain answer to a question it asked differently.
fn check_fields(
    prefix: &str,
    fields: &serde_json::Map<String, Value>,
    ignored: &[&str],
) -> Result<(), ApiError> {
    let refused = fields
        .iter()
        .find(|(name, value)| !ignored.contains(&name.as_str()) && !is_neutral(name, value));
    match refused {
        None => Ok(()),
        Some((name, _)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_parameter", // OpenAI's own code for this
            format!(
                "{prefix}{} is not supported by this sidecar's OpenAI route: remove it (see docs/sidecar.md)",
                truncated(name, 64)
            ),
        )),
    }
}

fn text_of(content: &Value, index: usize) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_owned()),
                _ => Err(ApiError::invalid(format!(
                    "messages[{index}].content: only text parts are supported"
                ))),
            })
            .collect(),
        _ => Err(ApiError::invalid(format!(
            "messages[{index}].content must be a string or a list of text parts"
        ))),
    }
}

impl ChatBody {
    fn into_request(self) -> Result<(String, ModelRequest, Option<u32>, bool, bool), ApiError> {
        check_fields("", &self.other, IGNORED_FIELDS)?;
        if let Some(options) = &self.stream_options {
            // It only pads chunks against length side channels on a network; ours is loopback.
            check_fields("stream_options.", &options.other, &["include_obfuscation"])?;
        }
        for (i, m) in self.messages.iter().enumerate() {
            check_fields(&format!("messages[{i}]."), &m.other, &[])?;
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        check_sampling(self.temperature.map(|t| t / 2.0), self.top_p, max_tokens)?; // OpenAI's temperature runs 0..2
        let mut system = Vec::new();
        let mut messages = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            let text = text_of(&m.content, i)?;
            match m.role.as_str() {
                "system" | "developer" => system.push(text),
                other => messages.push((role(other, i)?, text)),
            }
        }
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must hold at least one user message",
            ));
        }
        let stop_sequences = match self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "stop must be a string or a list of strings",
                ));
            }
        };
        let request = ModelRequest {
            system: (!system.is_empty()).then(|| system.join("\n")),
            messages,
            // Bedrock's temperature runs 0..1 where OpenAI's runs 0..2.
            temperature: self.temperature.map(|t| t / 2.0),
            top_p: self.top_p,
            stop_sequences,
            ..ModelRequest::default()
        };
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok((self.model, request, max_tokens, self.stream, include_usage))
    }
}

fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        "tool_use" => "tool_calls",
        _ => "stop",
    }
}

fn openai_usage(result: &CallResult) -> Value {
    let u = &result.answer.usage;
    let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens;
    json!({ "prompt_tokens": prompt, "completion_tokens": u.output_tokens, "total_tokens": prompt + u.output_tokens })
}

/// A completion id unique in this process (a counter) and, by 64 random bits, across pods.
fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: LazyLock<u64> = LazyLock::new(|| fastrand::u64(..));
    format!(
        "chatcmpl-{:016x}{:08x}",
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn chat_completions(State(state): Shared, Body(body): Body) -> Response {
    let outcome = async {
        let (model, request, max_tokens, streaming, include_usage) =
            parse::<ChatBody>(&body, state.settings.max_body_bytes)?.into_request()?;
        let namespace = state.catalog.namespace().to_owned();
        let endpoint = state.endpoint(&namespace, &model)?;
        let prepared = state.prepare(endpoint, request, max_tokens).await?;
        let id = completion_id();
        let created = unix_now();
        if streaming {
            let events = state.call_streaming(prepared).await?;
            return Ok(openai_stream(events, id, created, model, include_usage));
        }
        let result = state.call(prepared).await?;
        Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [ { "index": 0, "message": { "role": "assistant", "content": result.answer.text }, "finish_reason": finish_reason(&result.answer.stop_reason) } ],
            "usage": openai_usage(&result),
        }))
        .into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

fn openai_stream(
    events: mpsc::Receiver<StreamEvent>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Response {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [ { "index": 0, "delta": delta, "finish_reason": finish } ] })
    };
    let first = chunk(json!({ "role": "assistant", "content": "" }), None);
    let body = stream::once(async move { Some(first) })
        .chain(stream::unfold(events, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).flat_map(move |event| {
            let items: Vec<Value> = match event {
                StreamEvent::Delta(text) => vec![chunk(json!({ "content": text }), None)],
                StreamEvent::Done(result) => {
                    let mut last = vec![chunk(json!({}), Some(finish_reason(&result.answer.stop_reason)))];
                    if include_usage {
                        let mut usage_chunk = chunk(json!({}), None);
                        usage_chunk["choices"] = json!([]);
                        usage_chunk["usage"] = openai_usage(&result);
                        last.push(usage_chunk);
                    }
                    last
                }
                StreamEvent::Error(e) => vec![json!({ "error": { "code": e.code, "message": e.message, "type": e.code } })],
            };
            stream::iter(items.into_iter().map(Some))
        }))
        .chain(stream::once(async { None }))
        .map(|item| {
            let data = item.map_or_else(|| "[DONE]".to_owned(), |v| v.to_string());
            Ok::<Event, Infallible>(Event::default().data(data))
        });
    sse_response(body)
}

fn sse_response(body: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn models(State(state): Shared) -> Json<Value> {
    let snapshot = state.catalog.snapshot();
    let mut names: Vec<&String> = snapshot.endpoints.keys().collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|n| json!({ "id": n, "object": "model", "created": 0, "owned_by": format!("{}/{}", state.catalog.namespace(), n) }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_origins_pass() {
        let pass = |o: &str| is_loopback_origin(&HeaderValue::from_str(o).unwrap());
        for ok in [
            "http://localhost",
            "http://LOCALHOST:3000",
            "https://127.0.0.1:8443",
            "http://[::1]",
            "http://[::1]:8090",
        ] {
            assert!(pass(ok), "{ok} should pass");
        }
        for refused in [
            "null",
            "file://",
            "http://attacker.example",
            "http://localhost.attacker.example",
            "http://127.0.0.1.attacker.example:80",
            "http://localhost:",
            "http://localhost:80x",
            "http://[::1].attacker.example",
            "http://user@localhost",
            "localhost",
        ] {
            assert!(!pass(refused), "{refused} should be refused");
        }
    }

    #[test]
    fn echoed_text_is_cut_at_a_character_boundary() {
        assert_eq!(truncated("ééé", 2), "éé…");
        assert_eq!(truncated("ab", 2), "ab");
    }
}

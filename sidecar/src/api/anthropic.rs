//! Anthropic's Messages API, two ways in: `POST /v1/messages` for the Anthropic SDKs (and tools
//! built on them) with base URL `http://localhost:8090`, and Bedrock's InvokeModel with an
//! Anthropic body (`/model/{modelId}/invoke`, `/invoke-with-response-stream`) for the
//! `AnthropicBedrock` client and apps that call InvokeModel themselves. Both become the same
//! `ModelRequest`, so they get the limits, budget, guardrail and exact cost of every route.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{
    Body, bedrock_runtime, check_sampling, claude_thinking, media, parse, role, truncated,
};
use crate::{
    bedrock::{
        Block, CachePoint, ModelAnswer, ModelRequest, Role, Tool, ToolChoice, Tools,
        embeddings::Family,
    },
    calls::{AppState, CallResult, StreamEvent, format_cost},
    errors::ApiError,
};

/// An Anthropic Messages body. Fields the sidecar does not implement are refused by name.
#[derive(Debug, Deserialize)]
struct MessagesBody {
    /// `/v1/messages` names the model here; InvokeModel names it in the path.
    #[serde(default)]
    model: Option<String>,
    /// InvokeModel's marker of an Anthropic body (`bedrock-2023-05-31`).
    #[serde(default)]
    anthropic_version: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    messages: Vec<MessageIn>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    tools: Option<Vec<Map<String, Value>>>,
    #[serde(default)]
    tool_choice: Option<Map<String, Value>>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default)]
    output_config: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Value,
}

/// Fields accepted and not acted on: `metadata.user_id` identifies the end user to Anthropic.
const IGNORED: &[&str] = &["metadata"];

fn unsupported(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_parameter",
        format!(
            "{} is not supported by this sidecar's Anthropic Messages route: remove it (see docs/sidecar.md)",
            truncated(field, 80)
        ),
    )
}

/// Refuses the keys of `block` other than `allowed` that are set (`null` counts as unset).
fn only(block: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match block
        .iter()
        .find(|(k, v)| !allowed.contains(&k.as_str()) && !v.is_null())
    {
        Some((k, _)) => Err(unsupported(&format!("{at}.{k}"))),
        None => Ok(()),
    }
}

/// A block's `cache_control` as a cache point.
fn cache_control(block: &Map<String, Value>, at: &str) -> Result<Option<CachePoint>, ApiError> {
    super::cache_control(block.get("cache_control"), at)
}

/// The system prompt (a string or text blocks) and the cache point one of its blocks asks for.
fn system(value: &Value) -> Result<(String, Option<CachePoint>), ApiError> {
    let mut point = None;
    if let Value::Array(blocks) = value {
        for (k, b) in blocks.iter().enumerate() {
            if let Some(b) = b.as_object() {
                point = cache_control(b, &format!("system[{k}]"))?.or(point);
            }
        }
    }
    Ok((text(value, "system")?, point))
}

/// Text that is a string or a list of `text` blocks.
fn text(value: &Value, at: &str) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (k, b) in blocks.iter().enumerate() {
                let b_at = format!("{at}[{k}]");
                let b = b
                    .as_object()
                    .ok_or_else(|| ApiError::invalid(format!("{b_at} must be an object")))?;
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(unsupported(&format!(
                        "{b_at} of type {}",
                        b.get("type").unwrap_or(&Value::Null)
                    )));
                }
                only(b, &["type", "text", "citations", "cache_control"], &b_at)?;
                out.push_str(&bedrock_runtime::text_field(
                    &b["text"],
                    &format!("{b_at}.text"),
                )?);
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid(format!(
            "{at} must be a string or a list of text blocks"
        ))),
    }
}

/// The blocks of message `i`'s content.
fn blocks(content: &Value, at: &str) -> Result<Vec<Block>, ApiError> {
    let Value::Array(items) = content else {
        return Ok(vec![Block::Text(text(content, at)?)]);
    };
    let mut out = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let b_at = format!("{at}[{j}]");
        let b = item
            .as_object()
            .ok_or_else(|| ApiError::invalid(format!("{b_at} must be an object")))?;
        let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
        let point = cache_control(b, &b_at)?;
        out.push(match kind {
            "text" => {
                only(b, &["type", "text", "citations", "cache_control"], &b_at)?;
                Block::Text(bedrock_runtime::text_field(
                    &b["text"],
                    &format!("{b_at}.text"),
                )?)
            }
            "tool_use" => {
                only(b, &["type", "id", "name", "input", "cache_control"], &b_at)?;
                Block::ToolUse {
                    id: bedrock_runtime::text_field(&b["id"], &format!("{b_at}.id"))?,
                    name: bedrock_runtime::text_field(&b["name"], &format!("{b_at}.name"))?,
                    input: b.get("input").cloned().unwrap_or_else(|| json!({})),
                }
            }
            "tool_result" => {
                only(
                    b,
                    &["type", "tool_use_id", "content", "is_error", "cache_control"],
                    &b_at,
                )?;
                Block::ToolResult {
                    id: bedrock_runtime::text_field(
                        &b["tool_use_id"],
                        &format!("{b_at}.tool_use_id"),
                    )?,
                    text: match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(c) => text(c, &format!("{b_at}.content"))?,
                    },
                    error: b.get("is_error") == Some(&Value::Bool(true)),
                }
            }
            "thinking" => {
                only(b, &["type", "thinking", "signature"], &b_at)?;
                Block::Reasoning {
                    text: bedrock_runtime::text_field(&b["thinking"], &format!("{b_at}.thinking"))?,
                    signature: b["signature"].as_str().unwrap_or_default().to_owned(),
                }
            }
            "image" | "document" => {
                only(b, &["type", "source", "title", "cache_control"], &b_at)?;
                let source = &b["source"];
                if source["type"] != "base64" {
                    return Err(ApiError::invalid(format!(
                        "{b_at}.source: only base64 sources are accepted: a URL fetched from the pod could reach anything the pod can, so the sidecar fetches images only under the prefixes the pod allows (annotation ai.kernelpanic09.io/image-url-allow) and documents never"
                    )));
                }
                let media_type = source["media_type"].as_str().unwrap_or_default();
                let data = source["data"].as_str().unwrap_or_default();
                let bytes = media::base64(data, &format!("{b_at}.source.data"))?;
                if kind == "image" {
                    media::image(media_type, bytes, &b_at)?
                } else {
                    media::document(media_type, b["title"].as_str(), bytes, &b_at)?
                }
            }
            other => {
                return Err(unsupported(&format!(
                    "{b_at} of type {:?}",
                    truncated(other, 40)
                )));
            }
        });
        // The prompt up to and with this block is cached.
        out.extend(point.map(Block::CachePoint));
    }
    Ok(out)
}

fn tools(
    offered: Option<&Vec<Map<String, Value>>>,
    choice: Option<&Map<String, Value>>,
) -> Result<Option<Tools>, ApiError> {
    let mut tools = Vec::new();
    let mut cache = None;
    for (i, t) in offered.into_iter().flatten().enumerate() {
        let at = format!("tools[{i}]");
        cache = cache_control(t, &at)?.or(cache);
        // Anthropic's server tools (web search, code execution, ...) have a `type`; Bedrock runs none.
        if t.get("type").is_some_and(|k| k != "custom" && !k.is_null()) {
            return Err(unsupported(&format!("{at}.type {}", t["type"])));
        }
        only(
            t,
            &[
                "type",
                "name",
                "description",
                "input_schema",
                "strict",
                "cache_control",
            ],
            &at,
        )?;
        let schema = t.get("input_schema").cloned().unwrap_or(Value::Null);
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(ApiError::invalid(format!(
                "{at}.input_schema must be a JSON Schema of type \"object\""
            )));
        }
        tools.push(Tool {
            name: bedrock_runtime::text_field(&t["name"], &format!("{at}.name"))?,
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            strict: t.get("strict") == Some(&Value::Bool(true)),
            schema,
        });
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(c) => {
            if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                return Err(unsupported("tool_choice.disable_parallel_tool_use"));
            }
            match c.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Any,
                Some("tool") => ToolChoice::Named(bedrock_runtime::text_field(
                    c.get("name").unwrap_or(&Value::Null),
                    "tool_choice.name",
                )?),
                // Converse has no "none": the model is offered no tool.
                Some("none") => return Ok(None),
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice.type must be \"auto\", \"any\", \"tool\" or \"none\"",
                    ));
                }
            }
        }
    };
    Ok((!tools.is_empty()).then_some(Tools {
        tools,
        choice,
        cache,
    }))
}

/// What a Messages body asks: the request, its token cap, whether to stream.
struct Asked {
    model: Option<String>,
    request: ModelRequest,
    max_tokens: u32,
    stream: bool,
}

impl MessagesBody {
    /// The body with its allowed image URLs fetched and put inline.
    async fn inline_images(mut self, state: &AppState) -> Result<Self, ApiError> {
        let contents = self.messages.iter_mut().map(|m| &mut m.content).collect();
        media::inline_image_urls(contents, media::ImageUrls::Anthropic, &state.images).await?;
        Ok(self)
    }

    fn into_request(self) -> Result<Asked, ApiError> {
        for (name, value) in &self.other {
            if !value.is_null() && !IGNORED.contains(&name.as_str()) {
                return Err(unsupported(name));
            }
        }
        let max_tokens = self
            .max_tokens
            .ok_or_else(|| ApiError::invalid("max_tokens: field required"))?;
        check_sampling(self.temperature, self.top_p, Some(max_tokens))?;
        let (system_text, system_cache) = match &self.system {
            None | Some(Value::Null) => (String::new(), None),
            Some(s) => system(s)?,
        };
        let mut request = ModelRequest {
            system: Some(system_text).filter(|s| !s.is_empty()),
            system_cache,
            temperature: self.temperature,
            top_p: self.top_p,
            stop_sequences: self.stop_sequences,
            ..ModelRequest::default()
        };
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages: at least one message is required",
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            let role = role(&m.role, i)?;
            for block in blocks(&m.content, &format!("messages[{i}].content"))? {
                request.push(role, block);
            }
        }
        if request
            .messages
            .first()
            .is_some_and(|m| m.role != Role::User)
        {
            return Err(ApiError::invalid(
                "messages: the first message must use the \"user\" role",
            ));
        }
        request.tools = tools(self.tools.as_ref(), self.tool_choice.as_ref())?;
        claude_thinking(
            self.thinking.as_ref(),
            self.output_config.as_ref(),
            "",
            &mut request,
        )?;
        Ok(Asked {
            model: self.model,
            request,
            max_tokens,
            stream: self.stream,
        })
    }
}

/// A message id unique in this process (a counter) and, by 64 random bits, across pods.
fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: LazyLock<u64> = LazyLock::new(|| fastrand::u64(..));
    format!(
        "msg_{:016x}{:08x}",
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Converse's stop reason as Anthropic names it.
fn stop_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "max_tokens",
        "stop_sequence" => "stop_sequence",
        "tool_use" => "tool_use",
        "guardrail_intervened" | "content_filtered" => "refusal",
        _ => "end_turn",
    }
}

fn usage(answer: &ModelAnswer) -> Value {
    let u = &answer.usage;
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_input_tokens - u.cache_write_1h_input_tokens.min(u.cache_write_input_tokens),
            "ephemeral_1h_input_tokens": u.cache_write_1h_input_tokens,
        },
    })
}

/// The Messages answer: its blocks (text, then tool calls), why it stopped, the usage.
fn message(answer: &ModelAnswer, model: &str) -> Value {
    let mut content = Vec::new();
    if answer.thought() {
        content.push(json!({ "type": "thinking", "thinking": answer.reasoning, "signature": answer.reasoning_signature }));
    }
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({ "type": "text", "text": answer.text }));
    }
    for call in &answer.tool_calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        content
            .push(json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input }));
    }
    json!({
        "id": message_id(), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason(&answer.stop_reason), "stop_sequence": null,
        "usage": usage(answer),
    })
}

/// A guardrail's block as an answer: the policy's message, stopped as a refusal.
fn refusal(e: &ApiError, model: &str) -> Value {
    json!({
        "id": message_id(), "type": "message", "role": "assistant", "model": model,
        "content": [ { "type": "text", "text": e.message } ], "stop_reason": "refusal",
        "stop_sequence": null, "usage": { "input_tokens": 0, "output_tokens": 0 },
    })
}

/// Anthropic's error type for one of the sidecar's refusals.
fn error_type(e: &ApiError) -> &'static str {
    match e.status.as_u16() {
        400 | 408 => "invalid_request_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// A refusal as Anthropic's API writes it, our stable code first in the message.
fn anthropic_error(e: &ApiError) -> Response {
    let body = json!({ "type": "error", "error": { "type": error_type(e), "message": format!("{}: {}", e.code, e.message) } });
    let mut response = (e.status, Json(body)).into_response();
    if let Some(after) = e.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// Calls the model for `asked` through `endpoint`, whole or streamed.
async fn run(
    state: &Arc<AppState>,
    endpoint: Arc<crate::catalog::EndpointConfig>,
    asked: Asked,
) -> Result<Answer, ApiError> {
    let prepared = state
        .prepare(endpoint, asked.request, Some(asked.max_tokens))
        .await?;
    if asked.stream {
        Ok(Answer::Streamed(state.call_streaming(prepared).await?))
    } else {
        Ok(Answer::Whole(Box::new(state.call(prepared).await?)))
    }
}

enum Answer {
    Whole(Box<CallResult>),
    Streamed(mpsc::Receiver<StreamEvent>),
}

pub(super) async fn messages(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let outcome = async {
        let asked = parse::<MessagesBody>(&body, state.settings.max_body_bytes)?
            .inline_images(&state)
            .await?
            .into_request()?;
        let model = asked
            .model
            .clone()
            .ok_or_else(|| ApiError::invalid("model: field required"))?;
        let endpoint = bedrock_runtime::endpoint(&state, &model)?;
        Ok((model, run(&state, endpoint, asked).await))
    };
    match outcome.await {
        Ok((model, Ok(Answer::Whole(result)))) => {
            let mut response = Json(message(&result.answer, &model)).into_response();
            cost_header(&mut response, &result);
            response
        }
        Ok((model, Ok(Answer::Streamed(events)))) => sse(events, model),
        Ok((model, Err(e))) if e.code == "guardrail_blocked" => {
            Json(refusal(&e, &model)).into_response()
        }
        Ok((_, Err(e))) | Err(e) => anthropic_error(&e),
    }
}

fn cost_header(response: &mut Response, result: &CallResult) {
    if let Ok(cost) = HeaderValue::from_str(&format_cost(result.cost)) {
        response.headers_mut().insert("x-ai-sidecar-cost-usd", cost);
    }
}

/// Anthropic's stream events for the sidecar's: blocks opened, filled and closed in order.
struct Events {
    model: String,
    started: Instant,
    /// The block now open, and whether it is text.
    open: Option<(u32, &'static str)>,
    next: u32,
    /// InvokeModelWithResponseStream adds Bedrock's invocation metrics to `message_stop`.
    bedrock_metrics: bool,
}

impl Events {
    fn start(&self) -> Vec<Value> {
        vec![json!({ "type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            // Bedrock counts the input at the end of the stream; `message_delta` carries it.
            "usage": { "input_tokens": 0, "output_tokens": 0 },
        } })]
    }

    fn close(&mut self) -> Vec<Value> {
        self.open
            .take()
            .map(|(index, _)| json!({ "type": "content_block_stop", "index": index }))
            .into_iter()
            .collect()
    }

    fn open_block(&mut self, block: &Value, kind: &'static str) -> Vec<Value> {
        let mut out = self.close();
        let index = self.next;
        self.next += 1;
        self.open = Some((index, kind));
        out.push(json!({ "type": "content_block_start", "index": index, "content_block": block }));
        out
    }

    /// A piece of Claude's thinking (or its signature), in the thinking block.
    fn thinking(&mut self, delta: &Value) -> Vec<Value> {
        let mut out = match self.open {
            Some((_, "thinking")) => vec![],
            _ => self.open_block(
                &json!({ "type": "thinking", "thinking": "", "signature": "" }),
                "thinking",
            ),
        };
        let index = self.open.map_or(0, |(i, _)| i);
        out.push(json!({ "type": "content_block_delta", "index": index, "delta": delta }));
        out
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        let mut out = match self.open {
            Some((_, "text")) => vec![],
            _ => self.open_block(&json!({ "type": "text", "text": "" }), "text"),
        };
        let index = self.open.map_or(0, |(i, _)| i);
        out.push(json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } }));
        out
    }

    fn end(
        &mut self,
        stop: &str,
        answer_usage: &Value,
        output_tokens: u64,
        input_tokens: u64,
    ) -> Vec<Value> {
        let mut out = self.close();
        out.push(json!({ "type": "message_delta", "delta": { "stop_reason": stop, "stop_sequence": null }, "usage": answer_usage }));
        let mut stop_event = json!({ "type": "message_stop" });
        if self.bedrock_metrics {
            let latency = bedrock_runtime::latency_ms(self.started);
            stop_event["amazon-bedrock-invocationMetrics"] = json!({
                "inputTokenCount": input_tokens, "outputTokenCount": output_tokens,
                "invocationLatency": latency, "firstByteLatency": latency,
            });
        }
        out.push(stop_event);
        out
    }

    /// The events for one of the sidecar's; `Err` is a failure to report as the stream's last.
    fn take(&mut self, event: StreamEvent) -> Result<Vec<Value>, ApiError> {
        Ok(match event {
            StreamEvent::Delta(text) => self.text(&text),
            StreamEvent::ToolCall { id, name, .. } => self.open_block(
                &json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                "tool_use",
            ),
            StreamEvent::Reasoning(text) => {
                self.thinking(&json!({ "type": "thinking_delta", "thinking": text }))
            }
            StreamEvent::ReasoningSignature(signature) => {
                self.thinking(&json!({ "type": "signature_delta", "signature": signature }))
            }
            StreamEvent::ToolArguments { json: partial, .. } => {
                let index = self.open.map_or(0, |(i, _)| i);
                vec![
                    json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": partial } }),
                ]
            }
            StreamEvent::Done(result) => {
                let u = result.answer.usage;
                self.end(
                    stop_reason(&result.answer.stop_reason),
                    &usage(&result.answer),
                    u.output_tokens,
                    u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
                )
            }
            StreamEvent::Error(e) if e.code == "guardrail_blocked" => {
                let mut out = self.close();
                out.extend(self.text(&e.message));
                out.extend(self.end("refusal", &json!({ "output_tokens": 0 }), 0, 0));
                out
            }
            StreamEvent::Error(e) => return Err(e),
        })
    }
}

/// `/v1/messages`' stream: server-sent events named by their `type`, an `error` event last on failure.
fn sse(events: mpsc::Receiver<StreamEvent>, model: String) -> Response {
    let writer = Events {
        model,
        started: Instant::now(),
        open: None,
        next: 0,
        bedrock_metrics: false,
    };
    let first = writer.start();
    let named = |v: Value| {
        let name = v["type"].as_str().unwrap_or("message").to_owned();
        Ok::<Event, std::convert::Infallible>(Event::default().event(name).data(v.to_string()))
    };
    let rest = stream::unfold((events, writer), |(mut rx, mut writer)| async move {
        let event = rx.recv().await?;
        let values = writer.take(event).unwrap_or_else(|e| {
            vec![json!({ "type": "error", "error": { "type": error_type(&e), "message": format!("{}: {}", e.code, e.message) } })]
        });
        Some((stream::iter(values), (rx, writer)))
    })
    .flatten();
    let body = stream::iter(first).chain(rest).map(named);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `/v1/messages/count_tokens`: the input tokens of a Messages body (no `max_tokens` needed), as
/// Bedrock's CountTokens counts them; free, so no limit or budget is taken.
pub(super) async fn count_tokens(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let outcome = async {
        let mut parsed: MessagesBody = parse(&body, state.settings.max_body_bytes)?;
        parsed.max_tokens.get_or_insert(1);
        let asked = parsed.inline_images(&state).await?.into_request()?;
        let model = asked
            .model
            .ok_or_else(|| ApiError::invalid("model: field required"))?;
        let endpoint = bedrock_runtime::endpoint(&state, &model)?;
        state.count_tokens(endpoint, asked.request).await
    };
    match outcome.await {
        Ok(tokens) => Json(json!({ "input_tokens": tokens })).into_response(),
        Err(e) => anthropic_error(&e),
    }
}

/// An InvokeModel call with an Anthropic body: the model as Bedrock names it in answers, and
/// the answer, whole or streamed (`stream`, by the route).
async fn invoked(
    state: &Arc<AppState>,
    model_id: &str,
    body: &[u8],
    stream: bool,
) -> Result<(String, Result<Answer, ApiError>), ApiError> {
    let endpoint = bedrock_runtime::endpoint(state, model_id)?;
    let asked = invoke_body(body, state)?
        .inline_images(state)
        .await?
        .into_request()?;
    let model = k8s_ai_api::model_id::base_model_id(&endpoint.model_to_call).to_owned();
    Ok((model, run(state, endpoint, Asked { stream, ..asked }).await))
}

/// InvokeModel with an Anthropic body: the Messages answer in Bedrock's wire protocol (an
/// embedding endpoint's own bodies go to [`super::embeddings::invoke_native`]).
pub(super) async fn invoke(
    State(state): State<Arc<AppState>>,
    bedrock_runtime::ModelId(model_id): bedrock_runtime::ModelId,
    Body(body): Body,
) -> Response {
    if let Ok(endpoint) = bedrock_runtime::endpoint(&state, &model_id)
        && let Some(family) = Family::of(&endpoint.model_to_call)
    {
        return super::embeddings::invoke_native(&state, endpoint, family, &body).await;
    }
    let outcome = invoked(&state, &model_id, &body, false);
    match outcome.await {
        Ok((model, Ok(Answer::Whole(result)))) => {
            let mut response = Json(message(&result.answer, &model)).into_response();
            cost_header(&mut response, &result);
            let u = result.answer.usage;
            let headers = response.headers_mut();
            headers.insert(
                "x-amzn-bedrock-input-token-count",
                HeaderValue::from(
                    u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
                ),
            );
            headers.insert(
                "x-amzn-bedrock-output-token-count",
                HeaderValue::from(u.output_tokens),
            );
            response
        }
        Ok((model, Err(e))) if e.code == "guardrail_blocked" => {
            Json(refusal(&e, &model)).into_response()
        }
        Ok((_, Ok(Answer::Streamed(_)))) => bedrock_runtime::bedrock_error(&ApiError::invalid(
            "internal: a whole answer was asked for",
        )),
        Ok((_, Err(e))) | Err(e) => bedrock_runtime::bedrock_error(&e),
    }
}

/// InvokeModelWithResponseStream with an Anthropic body: Anthropic's stream events, each in a
/// `chunk` frame (its JSON in base64), the last with Bedrock's invocation metrics.
pub(super) async fn invoke_with_response_stream(
    State(state): State<Arc<AppState>>,
    bedrock_runtime::ModelId(model_id): bedrock_runtime::ModelId,
    Body(body): Body,
) -> Response {
    let outcome = invoked(&state, &model_id, &body, true);
    let (model, events) = match outcome.await {
        Ok((model, Ok(Answer::Streamed(events)))) => (model, Some(events)),
        Ok((model, Err(e))) if e.code == "guardrail_blocked" => {
            let mut writer = Events {
                model,
                started: Instant::now(),
                open: None,
                next: 0,
                bedrock_metrics: true,
            };
            let mut values = writer.start();
            values.extend(writer.take(StreamEvent::Error(e)).unwrap_or_default());
            let frames: Vec<Result<Bytes, std::convert::Infallible>> =
                values.iter().map(|v| Ok(chunk(v))).collect();
            return bedrock_runtime::stream_response(stream::iter(frames).boxed());
        }
        Ok((_, Ok(Answer::Whole(_)))) => (String::new(), None),
        Ok((_, Err(e))) | Err(e) => return bedrock_runtime::bedrock_error(&e),
    };
    let Some(events) = events else {
        return bedrock_runtime::bedrock_error(&ApiError::invalid(
            "internal: a stream was asked for",
        ));
    };
    let writer = Events {
        model,
        started: Instant::now(),
        open: None,
        next: 0,
        bedrock_metrics: true,
    };
    let first: Vec<Bytes> = writer.start().iter().map(chunk).collect();
    let rest = stream::unfold((events, writer), |(mut rx, mut writer)| async move {
        let event = rx.recv().await?;
        let frames: Vec<Bytes> = match writer.take(event) {
            Ok(values) => values.iter().map(chunk).collect(),
            Err(e) => vec![bedrock_runtime::error_exception(&e)],
        };
        Some((stream::iter(frames), (rx, writer)))
    })
    .flatten();
    bedrock_runtime::stream_response(stream::iter(first).chain(rest).map(Ok).boxed())
}

/// The request of an InvokeModel body CountTokens counts (Anthropic's, `max_tokens` optional).
pub(super) async fn counted_invoke_body(
    state: &AppState,
    body: &[u8],
) -> Result<ModelRequest, ApiError> {
    let mut parsed = invoke_body(body, state)?;
    parsed.max_tokens.get_or_insert(1);
    Ok(parsed.inline_images(state).await?.into_request()?.request)
}

/// A `chunk` event: one Anthropic stream event, its JSON in base64, as Bedrock wraps them.
fn chunk(event: &Value) -> Bytes {
    let bytes = aws_smithy_types::base64::encode(event.to_string());
    bedrock_runtime::event("chunk", &json!({ "bytes": bytes }))
}

/// An InvokeModel body, which must be Anthropic's Messages (`anthropic_version`); the model is
/// the path's, and streaming is the route's.
fn invoke_body(body: &[u8], state: &AppState) -> Result<MessagesBody, ApiError> {
    let parsed: MessagesBody = parse(body, state.settings.max_body_bytes)?;
    if parsed.anthropic_version.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_parameter",
            "InvokeModel bodies other than Anthropic's Messages (with anthropic_version) are not supported by this sidecar: use Converse (see docs/sidecar.md)",
        ));
    }
    if parsed.model.is_some() {
        return Err(unsupported(
            "model (InvokeModel names the model in its path)",
        ));
    }
    if parsed.stream {
        return Err(unsupported(
            "stream (call invoke-with-response-stream instead)",
        ));
    }
    Ok(parsed)
}

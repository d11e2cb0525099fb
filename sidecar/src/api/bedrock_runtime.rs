//! Bedrock Runtime's own API on localhost: `POST /model/{modelId}/converse` and
//! `/converse-stream`, in Bedrock's wire protocol (restJson1, and the
//! `application/vnd.amazon.eventstream` stream), so apps written for Bedrock (boto3, the AWS SDKs,
//! LangChain's `ChatBedrockConverse`) run unchanged with `endpoint_url=http://localhost:8090`.
//! Whatever they sign with is ignored: the sidecar signs with the pod's identity. Errors are
//! Bedrock's (`x-amzn-errortype`, `{"message"}`), so the SDKs raise their usual exceptions.

use std::{sync::Arc, time::Instant};

use aws_smithy_types::event_stream::{Header, HeaderValue as EsValue, Message as EsMessage};
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, Path, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{Body, check_sampling, claude_thinking, parse, truncated};
use crate::{
    bedrock::{
        Block, CachePoint, CacheTtl, DocumentFormat, Effort, ImageFormat, ModelAnswer,
        ModelRequest, OutputSchema, Tool, ToolChoice, Tools,
    },
    calls::{AppState, CallResult, Prepared, StreamEvent, format_cost},
    catalog::EndpointConfig,
    errors::ApiError,
};

/// The `{modelId}` of the path, decoded, or Bedrock's refusal when it cannot be.
pub(super) struct ModelId(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for ModelId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| ModelId(id))
            .map_err(|e| {
                bedrock_error(&ApiError::invalid(format!(
                    "invalid path: {}",
                    e.body_text()
                )))
            })
    }
}

/// A Converse request body. Fields the sidecar does not implement are refused by name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseBody {
    #[serde(default)]
    messages: Vec<MessageIn>,
    #[serde(default)]
    system: Vec<Map<String, Value>>,
    #[serde(default)]
    inference_config: Option<InferenceIn>,
    #[serde(default)]
    tool_config: Option<ToolConfigIn>,
    #[serde(default)]
    output_config: Option<Value>,
    #[serde(default)]
    additional_model_request_fields: Option<Map<String, Value>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// The reasoning `additionalModelRequestFields` ask for (the only fields taken there): Claude's
/// `thinking` (a budget, or adaptive with `output_config.effort`), Nova 2's `reasoningConfig` or
/// gpt-oss's `reasoning_effort`.
fn reasoning_asked(
    fields: &Map<String, Value>,
    request: &mut ModelRequest,
) -> Result<(), ApiError> {
    claude_thinking(
        fields.get("thinking"),
        fields.get("output_config"),
        "additionalModelRequestFields.",
        request,
    )?;
    for (name, value) in fields {
        let at = format!("additionalModelRequestFields.{name}");
        match name.as_str() {
            "thinking" | "output_config" => {}
            "reasoningConfig" => {
                let effort = value["maxReasoningEffort"].as_str().unwrap_or("medium");
                request.effort = Some(Effort::from_name(effort).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{at}.maxReasoningEffort must be low, medium or high"
                    ))
                })?);
            }
            "reasoning_effort" => {
                let effort = value.as_str().unwrap_or_default();
                request.effort = Some(Effort::from_name(effort).ok_or_else(|| {
                    ApiError::invalid(format!("{at} must be low, medium or high"))
                })?);
            }
            _ => return Err(unsupported(&at)),
        }
    }
    Ok(())
}

/// `outputConfig.textFormat`: the JSON Schema (as JSON text) the answer must follow.
fn output_schema(config: &Value) -> Result<OutputSchema, ApiError> {
    let format = &config["textFormat"];
    if format["type"] != "json_schema" {
        return Err(ApiError::invalid(
            "outputConfig.textFormat.type must be \"json_schema\"",
        ));
    }
    let definition = &format["structure"]["jsonSchema"];
    let text = text_field(
        &definition["schema"],
        "outputConfig.textFormat.structure.jsonSchema.schema",
    )?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| {
        ApiError::invalid(format!(
            "outputConfig.textFormat.structure.jsonSchema.schema is not JSON: {e}"
        ))
    })?;
    Ok(OutputSchema {
        name: definition["name"].as_str().unwrap_or("answer").to_owned(),
        description: definition["description"].as_str().map(str::to_owned),
        schema,
    })
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Vec<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceIn {
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfigIn {
    tools: Vec<Map<String, Value>>,
    #[serde(default)]
    tool_choice: Option<Map<String, Value>>,
}

/// Request fields accepted and not acted on: metadata for the caller's own logs.
const IGNORED: &[&str] = &["requestMetadata"];

pub(super) fn unsupported(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_parameter",
        format!(
            "{} is not supported by this sidecar's Bedrock route: remove it (see docs/sidecar.md)",
            truncated(field, 80)
        ),
    )
}

/// The one member of a union (a content block, a tool choice): its name and value.
fn member<'a>(union: &'a Map<String, Value>, at: &str) -> Result<(&'a str, &'a Value), ApiError> {
    let mut members = union.iter();
    match (members.next(), members.next()) {
        (Some((name, value)), None) => Ok((name.as_str(), value)),
        _ => Err(ApiError::invalid(format!(
            "{at} must have exactly one member set"
        ))),
    }
}

pub(super) fn text_field(value: &Value, at: &str) -> Result<String, ApiError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(format!("{at} must be a string")))
}

/// A content block of message `i`, as the sidecar models it.
fn block(union: &Map<String, Value>, at: &str) -> Result<Block, ApiError> {
    let (name, value) = member(union, at)?;
    match name {
        "text" => Ok(Block::Text(text_field(value, &format!("{at}.text"))?)),
        "toolUse" => Ok(Block::ToolUse {
            id: text_field(&value["toolUseId"], &format!("{at}.toolUse.toolUseId"))?,
            name: text_field(&value["name"], &format!("{at}.toolUse.name"))?,
            input: value.get("input").cloned().unwrap_or_else(|| json!({})),
        }),
        "toolResult" => {
            let mut text = String::new();
            for (k, part) in value["content"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let part_at = format!("{at}.toolResult.content[{k}]");
                let part = part
                    .as_object()
                    .ok_or_else(|| ApiError::invalid(format!("{part_at} must be an object")))?;
                match member(part, &part_at)? {
                    ("text", t) => text.push_str(&text_field(t, &format!("{part_at}.text"))?),
                    ("json", j) => text.push_str(&j.to_string()),
                    (other, _) => return Err(unsupported(&format!("{part_at}.{other}"))),
                }
            }
            Ok(Block::ToolResult {
                id: text_field(&value["toolUseId"], &format!("{at}.toolResult.toolUseId"))?,
                text,
                error: value["status"] == "error",
            })
        }
        "image" => {
            let format = value["format"].as_str().unwrap_or_default();
            let format = ImageFormat::from_name(format).ok_or_else(|| {
                ApiError::invalid(format!("{at}.image.format must be png, jpeg, gif or webp"))
            })?;
            Ok(Block::Image {
                format,
                bytes: source_bytes(value, &format!("{at}.image"))?,
            })
        }
        "cachePoint" => Ok(Block::CachePoint(cache_point(
            value,
            &format!("{at}.cachePoint"),
        )?)),
        "reasoningContent" => {
            let r = &value["reasoningText"];
            Ok(Block::Reasoning {
                text: text_field(
                    &r["text"],
                    &format!("{at}.reasoningContent.reasoningText.text"),
                )?,
                signature: r["signature"].as_str().unwrap_or_default().to_owned(),
            })
        }
        "document" => {
            let format = value["format"].as_str().unwrap_or_default();
            let format = DocumentFormat::from_name(format).ok_or_else(|| {
                unsupported(&format!(
                    "{at}.document.format {format:?} (pdf, txt, md, csv and html are)"
                ))
            })?;
            Ok(Block::Document {
                format,
                name: text_field(&value["name"], &format!("{at}.document.name"))?,
                bytes: source_bytes(value, &format!("{at}.document"))?,
            })
        }
        other => Err(unsupported(&format!("{at}.{other}"))),
    }
}

/// A `cachePoint` (`{"type": "default", "ttl": "5m" | "1h"}`).
fn cache_point(value: &Value, at: &str) -> Result<CachePoint, ApiError> {
    if value["type"] != "default" {
        return Err(ApiError::invalid(format!("{at}.type must be \"default\"")));
    }
    let ttl = match value.get("ttl").and_then(Value::as_str) {
        None => None,
        Some(name) => Some(
            CacheTtl::from_name(name)
                .ok_or_else(|| ApiError::invalid(format!("{at}.ttl must be \"5m\" or \"1h\"")))?,
        ),
    };
    Ok(CachePoint { ttl })
}

/// A media block's bytes: `source.bytes` (base64 in JSON); an S3 location is refused.
fn source_bytes(value: &Value, at: &str) -> Result<Vec<u8>, ApiError> {
    let data = value["source"]["bytes"]
        .as_str()
        .ok_or_else(|| unsupported(&format!("{at}.source other than bytes (an s3Location)")))?;
    super::media::base64(data, &format!("{at}.source.bytes"))
}

impl ConverseBody {
    fn into_request(self) -> Result<(ModelRequest, Option<u32>), ApiError> {
        for (name, value) in &self.other {
            let neutral = match name.as_str() {
                "performanceConfig" => value.get("latency").is_none_or(|l| l == "standard"),
                _ => value.is_null() || IGNORED.contains(&name.as_str()),
            };
            if !neutral {
                return Err(unsupported(name));
            }
        }
        let inference = self.inference_config.unwrap_or(InferenceIn {
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop_sequences: Vec::new(),
        });
        check_sampling(inference.temperature, inference.top_p, inference.max_tokens)?;
        let mut system = Vec::new();
        let mut system_cache = None;
        for (j, union) in self.system.iter().enumerate() {
            let at = format!("system[{j}]");
            match member(union, &at)? {
                ("text", t) => system.push(text_field(t, &format!("{at}.text"))?),
                ("cachePoint", point) => {
                    system_cache = Some(cache_point(point, &format!("{at}.cachePoint"))?);
                }
                (other, _) => return Err(unsupported(&format!("{at}.{other}"))),
            }
        }
        let mut request = ModelRequest {
            system: (!system.is_empty()).then(|| system.join("\n")),
            system_cache,
            temperature: inference.temperature,
            top_p: inference.top_p,
            stop_sequences: inference.stop_sequences,
            ..ModelRequest::default()
        };
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must hold at least one message"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            let role = super::role(&m.role, i)?;
            if m.content.is_empty() {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content must not be empty"
                )));
            }
            for (j, union) in m.content.iter().enumerate() {
                request.push(role, block(union, &format!("messages[{i}].content[{j}]"))?);
            }
        }
        request.tools = self.tool_config.as_ref().map(tools).transpose()?;
        request.output_schema = self.output_config.as_ref().map(output_schema).transpose()?;
        if let Some(fields) = &self.additional_model_request_fields {
            reasoning_asked(fields, &mut request)?;
        }
        Ok((request, inference.max_tokens))
    }
}

fn tools(config: &ToolConfigIn) -> Result<Tools, ApiError> {
    let mut tools = Vec::with_capacity(config.tools.len());
    let mut cache = None;
    for (i, union) in config.tools.iter().enumerate() {
        let at = format!("toolConfig.tools[{i}]");
        let spec = match member(union, &at)? {
            ("toolSpec", spec) => spec,
            ("cachePoint", point) => {
                cache = Some(cache_point(point, &format!("{at}.cachePoint"))?);
                continue;
            }
            (other, _) => return Err(unsupported(&format!("{at}.{other}"))),
        };
        tools.push(Tool {
            name: text_field(&spec["name"], &format!("{at}.toolSpec.name"))?,
            description: spec["description"].as_str().map(str::to_owned),
            schema: spec["inputSchema"]["json"].clone(),
            strict: spec["strict"] == true,
        });
    }
    let choice = match &config.tool_choice {
        None => ToolChoice::Auto,
        Some(union) => match member(union, "toolConfig.toolChoice")? {
            ("auto", _) => ToolChoice::Auto,
            ("any", _) => ToolChoice::Any,
            ("tool", named) => ToolChoice::Named(text_field(
                &named["name"],
                "toolConfig.toolChoice.tool.name",
            )?),
            (other, _) => return Err(unsupported(&format!("toolConfig.toolChoice.{other}"))),
        },
    };
    Ok(Tools {
        tools,
        choice,
        cache,
    })
}

/// Whether `name` is Anthropic's name for the Bedrock model `model_id`: `claude-haiku-4-5` or
/// `claude-haiku-4-5-20251001` for `anthropic.claude-haiku-4-5-20251001-v1:0`, as apps written
/// for Anthropic's API name their model.
fn is_anthropic_name_of(name: &str, model_id: &str) -> bool {
    let base = k8s_ai_api::model_id::base_model_id(model_id);
    name.starts_with("claude-")
        && base
            .strip_prefix("anthropic.")
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|after| after.starts_with('-') || after.starts_with(':'))
}

/// The endpoint `{modelId}` names: a ModelEndpoint's name, or the model id (or the inference
/// profile it is called through, or Anthropic's name for it) of exactly one endpoint this pod may
/// use.
pub(super) fn endpoint(state: &AppState, model_id: &str) -> Result<Arc<EndpointConfig>, ApiError> {
    let namespace = state.catalog.namespace().to_owned();
    let snapshot = state.catalog.snapshot();
    if snapshot.endpoints.contains_key(model_id) {
        return state.endpoint(&namespace, model_id);
    }
    let mut matching: Vec<&Arc<EndpointConfig>> = snapshot
        .endpoints
        .values()
        .filter(|e| state.catalog.allows(&e.name))
        .filter(|e| {
            e.spec.model_id == model_id
                || e.model_to_call == model_id
                || is_anthropic_name_of(model_id, &e.spec.model_id)
        })
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    match matching.as_slice() {
        [one] => Ok(Arc::clone(one)),
        [] => Err(ApiError::not_allowed(&format!(
            "modelId {:?} (neither a ModelEndpoint's name nor the model of one)",
            truncated(model_id, 120)
        ))),
        several => Err(ApiError::invalid(format!(
            "modelId {:?} is the model of several endpoints ({}): call one by its name",
            truncated(model_id, 120),
            several
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A Converse body for `{modelId}`, read and checked, its limits and budget reserved.
async fn prepare(state: &AppState, model_id: &str, body: &[u8]) -> Result<Prepared, ApiError> {
    let endpoint = endpoint(state, model_id)?;
    let (request, max_tokens) =
        parse::<ConverseBody>(body, state.settings.max_body_bytes)?.into_request()?;
    state.prepare(endpoint, request, max_tokens).await
}

pub(super) async fn converse(
    State(state): State<Arc<AppState>>,
    ModelId(model_id): ModelId,
    Body(body): Body,
) -> Response {
    let started = Instant::now();
    let outcome = async {
        let prepared = prepare(&state, &model_id, &body).await?;
        state.call(prepared).await
    };
    match outcome.await {
        Ok(result) => {
            let mut answer = Json(converse_answer(&result.answer, started)).into_response();
            cost_header(&mut answer, &result);
            answer
        }
        Err(e) if e.code == "guardrail_blocked" => {
            Json(blocked_answer(&e, started)).into_response()
        }
        Err(e) => bedrock_error(&e),
    }
}

fn cost_header(response: &mut Response, result: &CallResult) {
    if let Ok(cost) = HeaderValue::from_str(&format_cost(result.cost)) {
        response.headers_mut().insert("x-ai-sidecar-cost-usd", cost);
    }
}

fn usage(answer: &ModelAnswer) -> Value {
    let u = &answer.usage;
    let mut usage = json!({
        "inputTokens": u.input_tokens,
        "outputTokens": u.output_tokens,
        "totalTokens": u.input_tokens + u.output_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
    });
    if u.cache_read_input_tokens + u.cache_write_input_tokens > 0 {
        usage["cacheReadInputTokens"] = json!(u.cache_read_input_tokens);
        usage["cacheWriteInputTokens"] = json!(u.cache_write_input_tokens);
        let hour = u
            .cache_write_1h_input_tokens
            .min(u.cache_write_input_tokens);
        let details: Vec<Value> = [("5m", u.cache_write_input_tokens - hour), ("1h", hour)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(ttl, n)| json!({ "ttl": ttl, "inputTokens": n }))
            .collect();
        if !details.is_empty() {
            usage["cacheDetails"] = Value::Array(details);
        }
    }
    usage
}

pub(super) fn latency_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Converse's answer: the message's blocks (text, then tool calls), why it stopped, the usage.
fn converse_answer(answer: &ModelAnswer, started: Instant) -> Value {
    let mut content = Vec::new();
    if answer.thought() {
        let mut text = json!({ "text": answer.reasoning });
        if !answer.reasoning_signature.is_empty() {
            text["signature"] = json!(answer.reasoning_signature);
        }
        content.push(json!({ "reasoningContent": { "reasoningText": text } }));
    }
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({ "text": answer.text }));
    }
    for call in &answer.tool_calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        content.push(
            json!({ "toolUse": { "toolUseId": call.id, "name": call.name, "input": input } }),
        );
    }
    json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": answer.stop_reason,
        "usage": usage(answer),
        "metrics": { "latencyMs": latency_ms(started) },
    })
}

/// A guardrail's block, as Bedrock answers it: a 200 whose text is the blocked message and whose
/// stop reason says the guardrail intervened.
fn blocked_answer(e: &ApiError, started: Instant) -> Value {
    json!({
        "output": { "message": { "role": "assistant", "content": [ { "text": e.message } ] } },
        "stopReason": "guardrail_intervened",
        "usage": { "inputTokens": 0, "outputTokens": 0, "totalTokens": 0 },
        "metrics": { "latencyMs": latency_ms(started) },
    })
}

/// Bedrock's error type and HTTP status for one of the sidecar's refusals (or Bedrock's own).
fn error_type(e: &ApiError) -> (&'static str, StatusCode) {
    if let Some((code, _)) = &e.bedrock {
        let status = match code.as_str() {
            "ThrottlingException" | "ModelNotReadyException" => StatusCode::TOO_MANY_REQUESTS,
            "AccessDeniedException" => StatusCode::FORBIDDEN,
            "ResourceNotFoundException" => StatusCode::NOT_FOUND,
            "ModelTimeoutException" => StatusCode::REQUEST_TIMEOUT,
            "ModelErrorException" => StatusCode::FAILED_DEPENDENCY,
            "ServiceUnavailableException" => StatusCode::SERVICE_UNAVAILABLE,
            "InternalServerException" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        // The code itself is sent from `e.bedrock`; this name is only its fallback.
        return ("ValidationException", status);
    }
    match e.code {
        "budget_exceeded" => ("ServiceQuotaExceededException", StatusCode::BAD_REQUEST),
        _ if e.status == StatusCode::TOO_MANY_REQUESTS => {
            ("ThrottlingException", StatusCode::TOO_MANY_REQUESTS)
        }
        "endpoint_not_allowed" | "origin_not_allowed" => {
            ("AccessDeniedException", StatusCode::FORBIDDEN)
        }
        "endpoint_not_found" => ("ResourceNotFoundException", StatusCode::NOT_FOUND),
        "upstream_timeout" | "request_timeout" => {
            ("ModelTimeoutException", StatusCode::REQUEST_TIMEOUT)
        }
        _ if e.status == StatusCode::SERVICE_UNAVAILABLE => (
            "ServiceUnavailableException",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        _ if e.status.is_client_error() => ("ValidationException", StatusCode::BAD_REQUEST),
        _ => ("InternalServerException", StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// A refusal as Bedrock writes it: `x-amzn-errortype` and `{"message"}`. The sidecar's own
/// refusals keep their stable code at the start of the message (`budget_exceeded: ...`).
pub(super) fn bedrock_error(e: &ApiError) -> Response {
    let (fallback, status) = error_type(e);
    let (code, message) = match &e.bedrock {
        Some((code, message)) => (code.clone(), message.clone()),
        None => (fallback.to_owned(), format!("{}: {}", e.code, e.message)),
    };
    let mut response = (status, Json(json!({ "message": message }))).into_response();
    if let Ok(value) = HeaderValue::from_str(&code) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    if let Some(after) = e.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// CountTokens: `{"input": {"converse": {...}}}`, or `{"input": {"invokeModel": {"body"}}}` with
/// an Anthropic Messages body (base64, as the AWS SDKs send a blob), counted as Bedrock bills it
/// (free: no limit or budget is taken).
pub(super) async fn count_tokens(
    State(state): State<Arc<AppState>>,
    ModelId(model_id): ModelId,
    Body(body): Body,
) -> Response {
    let outcome = async {
        let endpoint = endpoint(&state, &model_id)?;
        let body: Value = parse(&body, state.settings.max_body_bytes)?;
        let input = &body["input"];
        if let Some(invoke) = input.get("invokeModel") {
            let encoded = invoke["body"].as_str().ok_or_else(|| {
                ApiError::invalid("input.invokeModel.body: the model's body (base64) is required")
            })?;
            let bytes = super::media::base64(encoded, "input.invokeModel.body")?;
            let request = super::anthropic::counted_invoke_body(&state, &bytes).await?;
            return state.count_tokens(endpoint, request).await;
        }
        let converse: ConverseBody = serde_json::from_value(input["converse"].clone())
            .map_err(|e| ApiError::invalid(format!("input.converse: {e}")))?;
        let (request, _) = converse.into_request()?;
        state.count_tokens(endpoint, request).await
    };
    match outcome.await {
        Ok(tokens) => Json(json!({ "inputTokens": tokens })).into_response(),
        Err(e) => bedrock_error(&e),
    }
}

pub(super) async fn converse_stream(
    State(state): State<Arc<AppState>>,
    ModelId(model_id): ModelId,
    Body(body): Body,
) -> Response {
    let started = Instant::now();
    let outcome = async {
        let prepared = prepare(&state, &model_id, &body).await?;
        state.call_streaming(prepared).await
    };
    match outcome.await {
        Ok(events) => event_stream(events, started),
        Err(e) if e.code == "guardrail_blocked" => {
            let mut frames = Frames::default();
            let mut bytes = Frames::start();
            bytes.extend(frames.blocked(&e, started));
            stream_response(stream::iter(bytes.into_iter().map(Ok)).boxed())
        }
        Err(e) => bedrock_error(&e),
    }
}

/// What a content block of the stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Text,
    Tool,
}

/// Writes ConverseStream's events, numbering content blocks as Bedrock does: reasoning, text and
/// each tool call in a block of its own, in order (only tool calls have a start event).
#[derive(Default)]
struct Frames {
    /// The block now open, if any.
    open: Option<(u32, Kind)>,
    next: u32,
}

impl Frames {
    fn start() -> Vec<Bytes> {
        vec![event("messageStart", &json!({ "role": "assistant" }))]
    }

    fn close(&mut self) -> Vec<Bytes> {
        self.open
            .take()
            .map(|(b, _)| event("contentBlockStop", &json!({ "contentBlockIndex": b })))
            .into_iter()
            .collect()
    }

    /// The block to write `kind` into: the open one if it holds that kind (tool calls never
    /// share one), else a new one after closing it.
    fn block(&mut self, kind: Kind) -> (Vec<Bytes>, u32) {
        match self.open {
            Some((b, open)) if open == kind && kind != Kind::Tool => (Vec::new(), b),
            _ => {
                let out = self.close();
                let b = self.next;
                self.next += 1;
                self.open = Some((b, kind));
                (out, b)
            }
        }
    }

    fn delta(&mut self, kind: Kind, delta: &Value) -> Vec<Bytes> {
        let (mut out, b) = self.block(kind);
        out.push(event(
            "contentBlockDelta",
            &json!({ "contentBlockIndex": b, "delta": delta }),
        ));
        out
    }

    fn take(&mut self, event_in: StreamEvent, started: Instant) -> Vec<Bytes> {
        match event_in {
            StreamEvent::Delta(text) => self.delta(Kind::Text, &json!({ "text": text })),
            StreamEvent::Reasoning(text) => self.delta(
                Kind::Reasoning,
                &json!({ "reasoningContent": { "text": text } }),
            ),
            StreamEvent::ReasoningSignature(signature) => self.delta(
                Kind::Reasoning,
                &json!({ "reasoningContent": { "signature": signature } }),
            ),
            StreamEvent::ToolCall { id, name, .. } => {
                let (mut out, b) = self.block(Kind::Tool);
                out.push(event(
                    "contentBlockStart",
                    &json!({ "contentBlockIndex": b, "start": { "toolUse": { "toolUseId": id, "name": name } } }),
                ));
                out
            }
            StreamEvent::ToolArguments { json: input, .. } => {
                let b = self.open.map_or(0, |(b, _)| b);
                vec![event(
                    "contentBlockDelta",
                    &json!({ "contentBlockIndex": b, "delta": { "toolUse": { "input": input } } }),
                )]
            }
            StreamEvent::Done(result) => {
                let mut out = self.close();
                out.push(event(
                    "messageStop",
                    &json!({ "stopReason": result.answer.stop_reason }),
                ));
                out.push(event(
                    "metadata",
                    &json!({ "usage": usage(&result.answer), "metrics": { "latencyMs": latency_ms(started) } }),
                ));
                out
            }
            StreamEvent::Error(e) if e.code == "guardrail_blocked" => self.blocked(&e, started),
            StreamEvent::Error(e) => vec![error_exception(&e)],
        }
    }

    /// A guardrail's block mid-answer: its message as text, and the stop Bedrock reports.
    fn blocked(&mut self, e: &ApiError, started: Instant) -> Vec<Bytes> {
        let mut out = self.delta(Kind::Text, &json!({ "text": e.message }));
        out.extend(self.close());
        out.push(event(
            "messageStop",
            &json!({ "stopReason": "guardrail_intervened" }),
        ));
        out.push(event(
            "metadata",
            &json!({ "usage": { "inputTokens": 0, "outputTokens": 0, "totalTokens": 0 }, "metrics": { "latencyMs": latency_ms(started) } }),
        ));
        out
    }
}

fn frame(headers: [(&'static str, String); 3], payload: &Value) -> Bytes {
    let mut message = EsMessage::new(Bytes::from(payload.to_string()));
    for (name, value) in headers {
        message = message.add_header(Header::new(name, EsValue::String(value.into())));
    }
    let mut buf = Vec::with_capacity(160);
    // Writing to a Vec fails only for frames over 16 MiB; an event never is one.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut buf);
    Bytes::from(buf)
}

pub(super) fn event(kind: &'static str, payload: &Value) -> Bytes {
    frame(
        [
            (":event-type", kind.to_owned()),
            (":content-type", "application/json".to_owned()),
            (":message-type", "event".to_owned()),
        ],
        payload,
    )
}

/// The exception frame that ends a stream with `e`: Bedrock's own, or ours named as Bedrock would.
pub(super) fn error_exception(e: &ApiError) -> Bytes {
    let (fallback, _) = error_type(e);
    match &e.bedrock {
        Some((code, message)) => exception(code, message),
        None => exception(fallback, &format!("{}: {}", e.code, e.message)),
    }
}

/// An exception that ends the stream, named as the stream's members are
/// (`throttlingException`, `modelStreamErrorException`, ...).
pub(super) fn exception(code: &str, message: &str) -> Bytes {
    let member = match code {
        "ThrottlingException"
        | "ValidationException"
        | "ServiceUnavailableException"
        | "InternalServerException"
        | "ModelStreamErrorException" => {
            let mut chars = code.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        _ => "modelStreamErrorException".to_owned(),
    };
    frame(
        [
            (":exception-type", member),
            (":content-type", "application/json".to_owned()),
            (":message-type", "exception".to_owned()),
        ],
        &json!({ "message": message }),
    )
}

fn event_stream(events: mpsc::Receiver<StreamEvent>, started: Instant) -> Response {
    let first = Frames::start();
    let rest = stream::unfold(
        (events, Frames::default()),
        move |(mut rx, mut frames)| async move {
            let event = rx.recv().await?;
            let bytes = frames.take(event, started);
            Some((stream::iter(bytes.into_iter().map(Ok)), (rx, frames)))
        },
    )
    .flatten();
    stream_response(stream::iter(first.into_iter().map(Ok)).chain(rest).boxed())
}

pub(super) fn stream_response(
    body: stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>>,
) -> Response {
    let mut response = axum::body::Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    response
}

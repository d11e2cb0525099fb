//! OpenAI's Chat Completions API (`/v1/chat/completions`, `/v1/models`): text, tool calls
//! (streamed as OpenAI's SDKs accumulate them), and every other field refused by name unless
//! ignoring it cannot change the answer.

use std::{
    convert::Infallible,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Body, check_sampling, media, parse, role, truncated};
use crate::{
    bedrock::{
        Block, Effort, ModelAnswer, ModelRequest, OutputSchema, Role, Tool, ToolChoice, Tools,
        closed, has_structured_outputs,
    },
    calls::{AppState, CallResult, StreamEvent},
    errors::ApiError,
};

/// An OpenAI chat message: content is a string or a list of text parts; an assistant's may
/// hold tool calls, a `tool` message answers one.
#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// The reasoning an earlier answer carried, echoed back; only its signed form (below) is used.
    #[serde(default)]
    #[allow(dead_code)] // accepted so an echoed answer is not refused
    reasoning_content: Option<Value>,
    /// Claude's signed thinking of an earlier answer (LiteLLM's `thinking_blocks`): Bedrock
    /// needs it back before that turn's tool calls while the model reasons.
    #[serde(default)]
    thinking_blocks: Option<Vec<Value>>,
    /// `name`, `audio`, ...: refused unless empty (SDKs echo `"refusal": null`).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// A tool call the model made, as the app sends it back in the history.
#[derive(Debug, Deserialize)]
struct ToolCallIn {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: FunctionCallIn,
}

#[derive(Debug, Deserialize)]
struct FunctionCallIn {
    name: String,
    #[serde(default)]
    arguments: String,
}

/// A tool the model may call: `{"type": "function", "function": {...}}`.
#[derive(Debug, Deserialize)]
struct ToolIn {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionIn,
    /// Anthropic's prompt caching on a tool, as LiteLLM takes it: the tools up to it are cached.
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct FunctionIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

fn function_type() -> String {
    "function".to_owned()
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
    #[serde(default)]
    tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// What `response_format` asks of the answer.
#[derive(Debug)]
enum AnswerFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(OutputSchema),
}

/// How the answer's JSON is had from Bedrock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The answer's text (plain, or constrained by `outputConfig`).
    Text,
    /// The arguments of one tool the model is made to call: the answer's text for the app.
    ForcedTool,
}

/// The name of the tool that carries a `json_object` answer.
const JSON_OBJECT_TOOL: &str = "json_object";

fn answer_format(value: Option<Value>) -> Result<AnswerFormat, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(AnswerFormat::Text);
    };
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(AnswerFormat::Text),
        Some("json_object") => Ok(AnswerFormat::JsonObject),
        Some("json_schema") => {
            let spec = &value["json_schema"];
            let name = spec["name"].as_str().unwrap_or_default();
            if !is_tool_name(name) {
                return Err(ApiError::invalid(
                    "response_format.json_schema.name must be 1 to 64 letters, digits, _ or -",
                ));
            }
            let schema = spec
                .get("schema")
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object" }));
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema must be a JSON Schema of type \"object\"",
                ));
            }
            Ok(AnswerFormat::JsonSchema(OutputSchema {
                name: name.to_owned(),
                description: spec["description"].as_str().map(str::to_owned),
                schema: closed(&schema),
            }))
        }
        _ => Err(ApiError::invalid(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// Fits the request to the endpoint's model: strict tools and schemas where Bedrock constrains
/// the model's output, a forced tool where it does not (the answer is then the tool's arguments).
fn shape(request: &mut ModelRequest, format: AnswerFormat, model: &str) -> Result<Via, ApiError> {
    let native = has_structured_outputs(model);
    if let Some(i) = request
        .tools
        .iter()
        .flat_map(|t| &t.tools)
        .position(|t| t.strict)
        .filter(|_| !native)
    {
        return Err(ApiError::invalid(format!(
            "tools[{i}].function.strict: true needs a model Bedrock constrains to a schema (Claude 4.5 and later); {model} is not one: remove strict"
        )));
    }
    let forced = match format {
        AnswerFormat::Text => return Ok(Via::Text),
        AnswerFormat::JsonSchema(schema) if native => {
            request.output_schema = Some(schema);
            return Ok(Via::Text);
        }
        AnswerFormat::JsonSchema(schema) => Tool {
            name: schema.name,
            description: schema.description,
            schema: schema.schema,
            strict: false,
        },
        AnswerFormat::JsonObject => Tool {
            name: JSON_OBJECT_TOOL.to_owned(),
            description: Some("Answer with a JSON object.".to_owned()),
            schema: json!({ "type": "object" }),
            strict: false,
        },
    };
    if request.tools.is_some() {
        return Err(ApiError::invalid(format!(
            "response_format with tools needs a model Bedrock constrains to a schema (Claude 4.5 and later); {model} is not one"
        )));
    }
    request.tools = Some(Tools {
        choice: ToolChoice::Named(forced.name.clone()),
        tools: vec![forced],
        cache: None,
    });
    Ok(Via::ForcedTool)
}

/// Request fields of OpenAI's Chat Completions we accept and do not act on: identifiers and
/// cache or storage hints, whose absence cannot change the answer (see docs/sidecar.md).
const IGNORED_FIELDS: &[&str] = &[
    "user",
    "safety_identifier",
    "metadata",
    "prompt_cache_key",
    "prompt_cache_retention",
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
            "modalities" => value == &json!(["text"]),
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

/// A user message's content: text, images (`image_url` with a data URL) and files (`file` with
/// `file_data`, a PDF or text document).
fn user_blocks(content: &Value, index: usize) -> Result<Vec<Block>, ApiError> {
    let Value::Array(parts) = content else {
        return Ok(vec![Block::Text(text_of(content, index)?)]);
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let at = format!("messages[{index}].content[{j}]");
        let point = super::cache_control(p.get("cache_control"), &at)?;
        let block = {
            match p["type"].as_str() {
                Some("text") => p["text"]
                    .as_str()
                    .map(|t| Block::Text(t.to_owned()))
                    .ok_or_else(|| ApiError::invalid(format!("{at}.text must be a string"))),
                Some("image_url") => {
                    let url = p["image_url"]["url"].as_str().ok_or_else(|| {
                        ApiError::invalid(format!("{at}.image_url.url must be a string"))
                    })?;
                    media::image_from_url(url, &format!("{at}.image_url.url"))
                }
                Some("file") => {
                    let file = &p["file"];
                    if file.get("file_id").is_some_and(|id| !id.is_null()) {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "unsupported_parameter",
                            format!(
                                "{at}.file.file_id is not supported by this sidecar's OpenAI route (there is no Files API): send file_data"
                            ),
                        ));
                    }
                    let data = file["file_data"].as_str().ok_or_else(|| {
                        ApiError::invalid(format!("{at}.file.file_data must be a data: URL"))
                    })?;
                    media::document_from_url(
                        data,
                        file["filename"].as_str(),
                        &format!("{at}.file.file_data"),
                    )
                }
                other => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_parameter",
                    format!(
                        "{at} of type {} is not supported by this sidecar's OpenAI route (see docs/sidecar.md)",
                        other.map_or_else(
                            || "(none)".to_owned(),
                            |t| format!("{:?}", truncated(t, 40))
                        )
                    ),
                )),
            }
        }?;
        blocks.push(block);
        blocks.extend(point.map(Block::CachePoint));
    }
    Ok(blocks)
}

/// What a chat request asks: the model (endpoint), the request, and how to answer.
struct ChatRequest {
    model: String,
    request: ModelRequest,
    format: AnswerFormat,
    max_tokens: Option<u32>,
    stream: bool,
    include_usage: bool,
}

impl ChatBody {
    fn into_request(self) -> Result<ChatRequest, ApiError> {
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
        let mut request = ModelRequest {
            // Bedrock's temperature runs 0..1 where OpenAI's runs 0..2.
            temperature: self.temperature.map(|t| t / 2.0),
            top_p: self.top_p,
            stop_sequences,
            ..ModelRequest::default()
        };
        let mut system = Vec::new();
        for (i, m) in self.messages.into_iter().enumerate() {
            add_message(&mut request, &mut system, i, m)?;
        }
        if request.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must hold at least one user message",
            ));
        }
        request.system = (!system.is_empty()).then(|| system.join("\n"));
        request.tools = tools(
            self.tools.unwrap_or_default(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
            &request,
        )?;
        request.effort = match self.reasoning_effort.as_deref() {
            None | Some("none") => None,
            Some(name) => Some(Effort::from_name(name).ok_or_else(|| {
                ApiError::invalid(format!(
                    "reasoning_effort must be \"none\", \"minimal\", \"low\", \"medium\" or \"high\", not {:?}",
                    truncated(name, 20)
                ))
            })?),
        };
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(ChatRequest {
            model: self.model,
            format: answer_format(self.response_format)?,
            request,
            max_tokens,
            stream: self.stream,
            include_usage,
        })
    }
}

/// Adds message `i` of the app's history to `request` (system texts to `system`).
fn add_message(
    request: &mut ModelRequest,
    system: &mut Vec<String>,
    i: usize,
    m: ChatMessage,
) -> Result<(), ApiError> {
    if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) && m.role != "assistant" {
        return Err(ApiError::invalid(format!(
            "messages[{i}].tool_calls: only assistant messages hold tool calls"
        )));
    }
    match m.role.as_str() {
        "system" | "developer" => {
            system.push(text_of(&m.content, i)?);
            for (j, part) in m.content.as_array().into_iter().flatten().enumerate() {
                let at = format!("messages[{i}].content[{j}]");
                if let Some(point) = super::cache_control(part.get("cache_control"), &at)? {
                    request.system_cache = Some(point);
                }
            }
        }
        "tool" => {
            let id = m.tool_call_id.filter(|id| !id.is_empty()).ok_or_else(|| {
                ApiError::invalid(format!(
                    "messages[{i}].tool_call_id is required in a tool message: the id of the call it answers"
                ))
            })?;
            let text = text_of(&m.content, i)?;
            request.push(
                Role::User,
                Block::ToolResult {
                    id,
                    text,
                    error: false,
                },
            );
        }
        "assistant" => {
            for (k, t) in m.thinking_blocks.iter().flatten().enumerate() {
                let (Some(text), Some(signature)) =
                    (t["thinking"].as_str(), t["signature"].as_str())
                else {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].thinking_blocks[{k}] needs its thinking and signature, as the answer gave them"
                    )));
                };
                request.push(
                    Role::Assistant,
                    Block::Reasoning {
                        text: text.to_owned(),
                        signature: signature.to_owned(),
                    },
                );
            }
            // An assistant turn with only tool calls has no text: Bedrock refuses blank text.
            let text = match &m.content {
                Value::Null => String::new(),
                content => text_of(content, i)?,
            };
            if !text.is_empty() || m.tool_calls.as_ref().is_none_or(Vec::is_empty) {
                request.push(Role::Assistant, Block::Text(text));
            }
            for (j, call) in m.tool_calls.into_iter().flatten().enumerate() {
                request.push(Role::Assistant, tool_use(call, i, j)?);
            }
        }
        other => {
            let role = role(other, i)?;
            for block in user_blocks(&m.content, i)? {
                request.push(role, block);
            }
        }
    }
    Ok(())
}

/// A tool call of the history as Bedrock takes it: its arguments parsed into a JSON object.
fn tool_use(call: ToolCallIn, i: usize, j: usize) -> Result<Block, ApiError> {
    let at = format!("messages[{i}].tool_calls[{j}]");
    if call.kind != "function" {
        return Err(ApiError::invalid(format!(
            "{at}.type must be \"function\", not {:?}",
            truncated(&call.kind, 64)
        )));
    }
    let arguments = call.function.arguments.trim();
    let input = if arguments.is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(arguments)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{at}.function.arguments must be a JSON object (as text), as the model wrote it"
                ))
            })?
    };
    Ok(Block::ToolUse {
        id: call.id,
        name: call.function.name,
        input,
    })
}

/// Tool `i` of the request, checked as Bedrock would check it, with a clearer message.
fn tool(i: usize, t: ToolIn) -> Result<Tool, ApiError> {
    if t.kind != "function" {
        return Err(ApiError::invalid(format!(
            "tools[{i}].type must be \"function\", not {:?}",
            truncated(&t.kind, 64)
        )));
    }
    if !is_tool_name(&t.function.name) {
        return Err(ApiError::invalid(format!(
            "tools[{i}].function.name must be 1 to 64 letters, digits, _ or -, not {:?}",
            truncated(&t.function.name, 80)
        )));
    }
    let schema = t
        .function
        .parameters
        .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(ApiError::invalid(format!(
            "tools[{i}].function.parameters must be a JSON Schema of type \"object\""
        )));
    }
    let strict = t.function.strict == Some(true);
    Ok(Tool {
        name: t.function.name,
        description: t.function.description.filter(|d| !d.is_empty()),
        // Strict decoding needs closed objects; OpenAI's strict schemas are written so already.
        schema: if strict { closed(&schema) } else { schema },
        strict,
    })
}

/// Whether `name` is a tool name both OpenAI and Bedrock accept: 1 to 64 of `a-zA-Z0-9_-`.
fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The request's tools and tool choice, as Bedrock's `toolConfig` takes them; `None` when the
/// model is offered no tool.
fn tools(
    offered: Vec<ToolIn>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    request: &ModelRequest,
) -> Result<Option<Tools>, ApiError> {
    if parallel == Some(false) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_parameter",
            "parallel_tool_calls: false is not supported by this sidecar's OpenAI route: Bedrock's \
             Converse API cannot forbid parallel calls; remove it (see docs/sidecar.md)",
        ));
    }
    let mut tools: Vec<Tool> = Vec::with_capacity(offered.len());
    let mut cache = None;
    for (i, t) in offered.into_iter().enumerate() {
        cache = super::cache_control(t.cache_control.as_ref(), &format!("tools[{i}]"))?.or(cache);
        let tool = tool(i, t)?;
        if tools.iter().any(|known| known.name == tool.name) {
            return Err(ApiError::invalid(format!(
                "tools[{i}].function.name {:?} is offered twice",
                tool.name
            )));
        }
        tools.push(tool);
    }
    let history_has_tools = request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .any(|b| matches!(b, Block::ToolUse { .. } | Block::ToolResult { .. }));
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => Some(ToolChoice::Auto),
        Some(Value::String(s)) if s == "required" => Some(ToolChoice::Any),
        Some(Value::String(s)) if s == "none" => {
            // Bedrock has no "none": the model is offered no tool, unless the history holds tool
            // calls, for which Bedrock requires the tools (documented in docs/sidecar.md).
            if !history_has_tools {
                return Ok(None);
            }
            Some(ToolChoice::Auto)
        }
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice must be \"auto\", \"none\", \"required\" or \
                         {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(format!(
                    "tool_choice names the function {:?}, which is not among tools",
                    truncated(name, 64)
                )));
            }
            Some(ToolChoice::Named(name.to_owned()))
        }
    };
    if tools.is_empty() {
        if choice.is_some() {
            return Err(ApiError::invalid(
                "tool_choice is only allowed when tools are specified",
            ));
        }
        if history_has_tools {
            return Err(ApiError::invalid(
                "messages hold tool calls or tool results, but tools is empty: Bedrock needs the \
                 tools of a conversation that used them; send them again",
            ));
        }
        return Ok(None);
    }
    Ok(Some(Tools {
        tools,
        choice: choice.unwrap_or(ToolChoice::Auto),
        cache,
    }))
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
    json!({
        "prompt_tokens": prompt, "completion_tokens": u.output_tokens, "total_tokens": prompt + u.output_tokens,
        // `cached_tokens`: read from the prompt cache (OpenAI's field); the writes, as LiteLLM names them.
        "prompt_tokens_details": { "cached_tokens": u.cache_read_input_tokens },
        "cache_creation_input_tokens": u.cache_write_input_tokens,
    })
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

pub(super) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Response {
    let outcome = async {
        let ChatRequest {
            model,
            mut request,
            format,
            max_tokens,
            stream,
            include_usage,
        } = {
            let mut body = parse::<ChatBody>(&body, state.settings.max_body_bytes)?;
            let contents = body.messages.iter_mut().map(|m| &mut m.content).collect();
            media::inline_image_urls(contents, media::ImageUrls::OpenAi, &state.images).await?;
            body.into_request()?
        };
        let namespace = state.catalog.namespace().to_owned();
        let endpoint = state.endpoint(&namespace, &model)?;
        let via = shape(&mut request, format, &endpoint.model_to_call)?;
        let prepared = state.prepare(endpoint, request, max_tokens).await?;
        let id = completion_id();
        let created = unix_now();
        if stream {
            let events = state.call_streaming(prepared).await?;
            return Ok(openai_stream(
                events,
                id,
                created,
                model,
                include_usage,
                via,
            ));
        }
        let mut result = state.call(prepared).await?;
        if via == Via::ForcedTool {
            answer_from_forced_tool(&mut result.answer);
        }
        Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [ { "index": 0, "message": assistant_message(&result.answer), "finish_reason": finish_reason(&result.answer.stop_reason) } ],
            "usage": openai_usage(&result),
        }))
        .into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

/// A forced tool's call as the answer's text, as the app asked for it (JSON, `finish_reason: stop`).
fn answer_from_forced_tool(answer: &mut ModelAnswer) {
    if let Some(call) = answer.tool_calls.drain(..).next() {
        answer.text = call.arguments;
    }
    if answer.stop_reason == "tool_use" {
        "end_turn".clone_into(&mut answer.stop_reason);
    }
}

/// The answer as an assistant message: its text (`null` when it only calls tools) and calls.
fn assistant_message(answer: &ModelAnswer) -> Value {
    let mut message = json!({ "role": "assistant", "content": answer.text });
    if answer.thought() {
        // Where the common clients read reasoning (DeepSeek's and LiteLLM's field), and Claude's
        // signed thinking to send back with a later turn (LiteLLM's `thinking_blocks`).
        message["reasoning_content"] = json!(answer.reasoning);
        if !answer.reasoning_signature.is_empty() {
            message["thinking_blocks"] = json!([{ "type": "thinking", "thinking": answer.reasoning, "signature": answer.reasoning_signature }]);
        }
    }
    if !answer.tool_calls.is_empty() {
        if answer.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = answer
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect();
    }
    message
}

fn openai_stream(
    events: mpsc::Receiver<StreamEvent>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    via: Via,
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
                StreamEvent::Reasoning(text) => vec![chunk(json!({ "reasoning_content": text }), None)],
                StreamEvent::ReasoningSignature(signature) => vec![chunk(
                    json!({ "thinking_blocks": [ { "type": "thinking", "thinking": "", "signature": signature } ] }),
                    None,
                )],
                // A call's first chunk names it; the next ones add to its arguments. `index` counts
                // the calls from 0 (not Bedrock's content blocks), as the SDKs' accumulators expect.
                // A forced tool's arguments are the answer's text.
                StreamEvent::ToolCall { .. } if via == Via::ForcedTool => vec![],
                StreamEvent::ToolArguments { json, .. } if via == Via::ForcedTool => {
                    vec![chunk(json!({ "content": json }), None)]
                }
                StreamEvent::ToolCall { index, id, name } => vec![chunk(
                    json!({ "tool_calls": [ { "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": "" } } ] }),
                    None,
                )],
                StreamEvent::ToolArguments { index, json } => vec![chunk(
                    json!({ "tool_calls": [ { "index": index, "function": { "arguments": json } } ] }),
                    None,
                )],
                StreamEvent::Done(mut result) => {
                    if via == Via::ForcedTool {
                        answer_from_forced_tool(&mut result.answer);
                    }
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

pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let snapshot = state.catalog.snapshot();
    let mut names: Vec<&String> = snapshot.endpoints.keys().collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|n| json!({ "id": n, "object": "model", "created": 0, "owned_by": format!("{}/{}", state.catalog.namespace(), n) }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

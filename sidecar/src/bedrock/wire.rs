//! Bedrock Runtime's JSON (restJson1) for Converse and ConverseStream: the request body the
//! sidecar sends, and the answers, stream events and errors it reads. Only the fields the sidecar
//! uses are read; serde skips the rest.

use std::collections::HashMap;

use http::StatusCode;
use k8s_ai_api::pricing::{GuardrailUnits, TokenUsage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Block, CachePoint, CacheTtl, Effort, ModelAnswer, ModelRequest, ReasoningStyle, Thinking,
    ToolCall, ToolChoice, Tools,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConverseBody<'a> {
    messages: Vec<MessageBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Vec<SystemBody<'a>>>,
    inference_config: InferenceBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guardrail_config: Option<GuardrailBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfigBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfigBody<'a>>,
    /// The model family's own settings: here, how it reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_model_request_fields: Option<Value>,
}

/// Structured outputs: `{"textFormat": {"type": "json_schema", "structure": {"jsonSchema": ...}}}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputConfigBody<'a> {
    text_format: TextFormatBody<'a>,
}

#[derive(Serialize)]
struct TextFormatBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    structure: StructureBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StructureBody<'a> {
    json_schema: JsonSchemaBody<'a>,
}

#[derive(Serialize)]
struct JsonSchemaBody<'a> {
    /// Bedrock takes the schema as JSON text, not as an object.
    schema: String,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    role: &'a str,
    content: Vec<BlockBody<'a>>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

/// A system block: the prompt's text, or a cache point after it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum SystemBody<'a> {
    Text(&'a str),
    CachePoint(CachePointBody),
}

#[derive(Serialize)]
struct CachePointBody {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'static str>,
}

impl From<CachePoint> for CachePointBody {
    fn from(p: CachePoint) -> Self {
        CachePointBody {
            kind: "default",
            ttl: p.ttl.map(CacheTtl::as_str),
        }
    }
}

/// A content block: one member set, named by its kind (`{"text": ...}`, `{"toolUse": {...}}`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum BlockBody<'a> {
    Text(&'a str),
    ToolUse(ToolUseBody<'a>),
    ToolResult(ToolResultBody<'a>),
    Image(ImageBody),
    Document(DocumentBody<'a>),
    CachePoint(CachePointBody),
    ReasoningContent(ReasoningBody<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningBody<'a> {
    reasoning_text: ReasoningTextBody<'a>,
}

#[derive(Serialize)]
struct ReasoningTextBody<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    signature: &'a str,
}

#[derive(Serialize)]
struct ImageBody {
    format: &'static str,
    source: SourceBody,
}

#[derive(Serialize)]
struct DocumentBody<'a> {
    format: &'static str,
    name: &'a str,
    source: SourceBody,
}

/// A blob, base64 in restJson1.
#[derive(Serialize)]
struct SourceBody {
    bytes: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseBody<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResultBody<'a> {
    tool_use_id: &'a str,
    content: [TextBlock<'a>; 1],
    /// Only sent for a failed tool: Bedrock accepts `status` for Claude and Nova models only.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfigBody<'a> {
    tools: Vec<ToolBody<'a>>,
    tool_choice: ToolChoiceBody<'a>,
}

/// An entry of `toolConfig.tools`: a tool, or a cache point after the tools.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolBody<'a> {
    ToolSpec(ToolSpecBody<'a>),
    CachePoint(CachePointBody),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpecBody<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: SchemaBody<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    strict: bool,
}

#[derive(Serialize)]
struct SchemaBody<'a> {
    json: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolChoiceBody<'a> {
    Auto(Empty),
    Any(Empty),
    Tool(NamedTool<'a>),
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct NamedTool<'a> {
    name: &'a str,
}

impl<'a> From<&'a Block> for BlockBody<'a> {
    fn from(b: &'a Block) -> Self {
        match b {
            Block::Text(text) => BlockBody::Text(text),
            Block::ToolUse { id, name, input } => BlockBody::ToolUse(ToolUseBody {
                tool_use_id: id,
                name,
                input,
            }),
            Block::ToolResult { id, text, error } => BlockBody::ToolResult(ToolResultBody {
                tool_use_id: id,
                content: [TextBlock { text }],
                status: error.then_some("error"),
            }),
            Block::Image { format, bytes } => BlockBody::Image(ImageBody {
                format: format.as_str(),
                source: SourceBody {
                    bytes: aws_smithy_types::base64::encode(bytes),
                },
            }),
            Block::CachePoint(point) => BlockBody::CachePoint((*point).into()),
            Block::Reasoning { text, signature } => BlockBody::ReasoningContent(ReasoningBody {
                reasoning_text: ReasoningTextBody { text, signature },
            }),
            Block::Document {
                format,
                name,
                bytes,
            } => BlockBody::Document(DocumentBody {
                format: format.as_str(),
                name,
                source: SourceBody {
                    bytes: aws_smithy_types::base64::encode(bytes),
                },
            }),
        }
    }
}

impl<'a> From<&'a Tools> for ToolConfigBody<'a> {
    fn from(t: &'a Tools) -> Self {
        ToolConfigBody {
            tools: t
                .tools
                .iter()
                .map(|tool| {
                    ToolBody::ToolSpec(ToolSpecBody {
                        name: &tool.name,
                        description: tool.description.as_deref(),
                        input_schema: SchemaBody { json: &tool.schema },
                        strict: tool.strict,
                    })
                })
                .chain(t.cache.map(|p| ToolBody::CachePoint(p.into())))
                .collect(),
            tool_choice: match &t.choice {
                ToolChoice::Auto => ToolChoiceBody::Auto(Empty {}),
                ToolChoice::Any => ToolChoiceBody::Any(Empty {}),
                ToolChoice::Named(name) => ToolChoiceBody::Tool(NamedTool { name }),
            },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceBody<'a> {
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GuardrailBody<'a> {
    guardrail_identifier: &'a str,
    guardrail_version: &'a str,
    /// The trace carries the text units Bedrock charges for the guardrail (priced per call).
    trace: &'static str,
    /// Streams only: Bedrock checks each chunk before sending it (its default, said explicitly);
    /// in async mode unchecked text reaches the app and is only flagged afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_processing_mode: Option<&'static str>,
}

impl<'a> ConverseBody<'a> {
    /// The body of a Converse call, or of a ConverseStream call when `stream`.
    pub(super) fn new(r: &'a ModelRequest, stream: bool) -> Self {
        ConverseBody {
            messages: r
                .messages
                .iter()
                .map(|m| MessageBody {
                    role: m.role.as_str(),
                    content: m.content.iter().map(BlockBody::from).collect(),
                })
                .collect(),
            system: r.system.as_deref().map(|text| {
                std::iter::once(SystemBody::Text(text))
                    .chain(r.system_cache.map(|p| SystemBody::CachePoint(p.into())))
                    .collect()
            }),
            inference_config: InferenceBody {
                // Bedrock's maxTokens is a 32-bit signed integer.
                max_tokens: r.max_tokens.min(i32::MAX.unsigned_abs()),
                temperature: r.temperature,
                top_p: r.top_p,
                stop_sequences: &r.stop_sequences,
            },
            guardrail_config: r.guardrail.as_ref().map(|(id, version)| GuardrailBody {
                guardrail_identifier: id,
                guardrail_version: version,
                trace: "enabled",
                stream_processing_mode: stream.then_some("sync"),
            }),
            tool_config: r.tools.as_ref().map(ToolConfigBody::from),
            additional_model_request_fields: reasoning_fields(r),
            output_config: r.output_schema.as_ref().map(|o| OutputConfigBody {
                text_format: TextFormatBody {
                    kind: "json_schema",
                    structure: StructureBody {
                        json_schema: JsonSchemaBody {
                            schema: o.schema.to_string(),
                            name: &o.name,
                            description: o.description.as_deref(),
                        },
                    },
                },
            }),
        }
    }
}

/// The model family's reasoning setting, if the request asks the model to reason.
fn reasoning_fields(r: &ModelRequest) -> Option<Value> {
    match r.thinking {
        Some(Thinking::Budget(budget)) => {
            return Some(
                serde_json::json!({ "thinking": { "type": "enabled", "budget_tokens": budget } }),
            );
        }
        Some(Thinking::Adaptive { summarized }) => {
            let mut thinking = serde_json::json!({ "type": "adaptive" });
            if let Some(summarized) = summarized {
                thinking["display"] = (if summarized { "summarized" } else { "omitted" }).into();
            }
            let effort = r.effort.unwrap_or(Effort::High).as_str();
            return Some(
                serde_json::json!({ "thinking": thinking, "output_config": { "effort": effort } }),
            );
        }
        // No thinking is what leaving it out asks for, on every model that takes `disabled`
        // (those that do not are refused it before the call).
        Some(Thinking::Disabled) | None => {}
    }
    let effort = r.effort?;
    Some(match r.reasoning_style? {
        ReasoningStyle::ClaudeThinking | ReasoningStyle::ClaudeAdaptive => return None,
        ReasoningStyle::NovaReasoning => serde_json::json!({
            "reasoningConfig": { "type": "enabled", "maxReasoningEffort": effort.as_str() }
        }),
        ReasoningStyle::ReasoningEffort => {
            serde_json::json!({ "reasoning_effort": effort.as_str() })
        }
    })
}

/// CountTokens' body: the conversation as Converse takes it (messages, system, tools), without
/// what only a call needs (inference, guardrail and output settings).
#[derive(Serialize)]
pub(super) struct CountTokensBody<'a> {
    input: CountInput<'a>,
}

#[derive(Serialize)]
struct CountInput<'a> {
    converse: ConverseTokensBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseTokensBody<'a> {
    messages: Vec<MessageBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Vec<SystemBody<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfigBody<'a>>,
}

impl<'a> CountTokensBody<'a> {
    pub(super) fn new(r: &'a ModelRequest) -> Self {
        let full = ConverseBody::new(r, false);
        CountTokensBody {
            input: CountInput {
                converse: ConverseTokensBody {
                    messages: full.messages,
                    system: full.system,
                    tool_config: full.tool_config,
                },
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CountTokensOutput {
    pub(super) input_tokens: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConverseOutput {
    #[serde(default)]
    output: Option<OutputBody>,
    #[serde(default)]
    stop_reason: String,
    #[serde(default)]
    usage: Option<UsageBody>,
    #[serde(default)]
    trace: Option<TraceBody>,
}

/// The guardrail's assessments in a Converse trace: only their text units are read.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TraceBody {
    #[serde(default)]
    guardrail: Option<GuardrailTraceBody>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GuardrailTraceBody {
    #[serde(default)]
    input_assessment: HashMap<String, AssessmentBody>,
    #[serde(default)]
    output_assessments: HashMap<String, Vec<AssessmentBody>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AssessmentBody {
    #[serde(default)]
    invocation_metrics: Option<InvocationMetricsBody>,
}

#[derive(Deserialize, Default)]
struct InvocationMetricsBody {
    #[serde(default)]
    usage: Option<GuardrailUsageBody>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_field_names)] // Bedrock's names
struct GuardrailUsageBody {
    #[serde(default)]
    topic_policy_units: u64,
    #[serde(default)]
    content_policy_units: u64,
    #[serde(default)]
    word_policy_units: u64,
    #[serde(default)]
    sensitive_information_policy_units: u64,
    #[serde(default)]
    sensitive_information_policy_free_units: u64,
    #[serde(default)]
    contextual_grounding_policy_units: u64,
}

impl GuardrailTraceBody {
    fn units(&self) -> GuardrailUnits {
        self.input_assessment
            .values()
            .chain(self.output_assessments.values().flatten())
            .filter_map(|a| a.invocation_metrics.as_ref()?.usage.as_ref())
            .fold(GuardrailUnits::default(), |sum, u| {
                sum.plus(GuardrailUnits {
                    content: u.content_policy_units,
                    topic: u.topic_policy_units,
                    word: u.word_policy_units,
                    sensitive_information: u.sensitive_information_policy_units,
                    sensitive_information_free: u.sensitive_information_policy_free_units,
                    contextual_grounding: u.contextual_grounding_policy_units,
                })
            })
    }
}

#[derive(Deserialize)]
struct OutputBody {
    #[serde(default)]
    message: Option<OutputMessage>,
}

#[derive(Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<OutputBlock>,
}

/// A content block; text and tool calls are read (reasoning blocks are skipped).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<OutputToolUse>,
    #[serde(default)]
    reasoning_content: Option<OutputReasoning>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputReasoning {
    #[serde(default)]
    reasoning_text: Option<OutputReasoningText>,
}

#[derive(Deserialize)]
struct OutputReasoningText {
    #[serde(default)]
    text: String,
    #[serde(default)]
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_field_names)] // Bedrock's names
struct UsageBody {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
    /// The tokens written, per time to live.
    #[serde(default)]
    cache_details: Vec<CacheDetailBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheDetailBody {
    #[serde(default)]
    ttl: String,
    #[serde(default)]
    input_tokens: u64,
}

impl UsageBody {
    pub(super) fn tokens(&self) -> TokenUsage {
        TokenUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens,
            cache_write_input_tokens: self.cache_write_input_tokens,
            cache_write_1h_input_tokens: self
                .cache_details
                .iter()
                .filter(|d| d.ttl == "1h")
                .map(|d| d.input_tokens)
                .sum(),
        }
    }
}

impl ConverseOutput {
    pub(super) fn into_answer(self) -> ModelAnswer {
        let blocks = self
            .output
            .and_then(|o| o.message)
            .map(|m| m.content)
            .unwrap_or_default();
        let (mut text, mut tool_calls) = (String::new(), Vec::new());
        let (mut reasoning, mut reasoning_signature) = (String::new(), String::new());
        for block in blocks {
            if let Some(r) = block.reasoning_content.and_then(|r| r.reasoning_text) {
                reasoning.push_str(&r.text);
                reasoning_signature = r.signature;
            }
            if let Some(t) = block.text {
                text.push_str(&t);
            }
            if let Some(call) = block.tool_use {
                tool_calls.push(ToolCall {
                    id: call.tool_use_id,
                    name: call.name,
                    arguments: call.input.to_string(),
                });
            }
        }
        let u = self.usage.unwrap_or_default();
        ModelAnswer {
            text,
            reasoning,
            reasoning_signature,
            tool_calls,
            stop_reason: self.stop_reason,
            guardrail_units: self
                .trace
                .and_then(|t| t.guardrail)
                .map(|g| g.units())
                .unwrap_or_default(),
            usage: u.tokens(),
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "Message")]
    message_upper: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "__type")]
    type_: Option<String>,
}

/// A ConverseStream event's payload; which one it is comes from the frame's `:event-type`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContentBlockDeltaEvent {
    #[serde(default)]
    pub(super) content_block_index: u32,
    #[serde(default)]
    pub(super) delta: DeltaBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeltaBody {
    #[serde(default)]
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) tool_use: Option<ToolUseDelta>,
    #[serde(default)]
    pub(super) reasoning_content: Option<ReasoningDelta>,
}

/// A piece of reasoning: text, or the signature that closes it.
#[derive(Deserialize)]
pub(super) struct ReasoningDelta {
    #[serde(default)]
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) signature: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ToolUseDelta {
    #[serde(default)]
    pub(super) input: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContentBlockStartEvent {
    #[serde(default)]
    pub(super) content_block_index: u32,
    #[serde(default)]
    pub(super) start: StartBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartBody {
    #[serde(default)]
    pub(super) tool_use: Option<ToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolUseStart {
    pub(super) tool_use_id: String,
    pub(super) name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MessageStopEvent {
    #[serde(default)]
    pub(super) stop_reason: String,
}

#[derive(Deserialize)]
pub(super) struct MetadataEvent {
    #[serde(default)]
    usage: Option<UsageBody>,
    #[serde(default)]
    trace: Option<TraceBody>,
}

impl MetadataEvent {
    pub(super) fn usage(&self) -> (TokenUsage, GuardrailUnits) {
        (
            self.usage
                .as_ref()
                .map(UsageBody::tokens)
                .unwrap_or_default(),
            self.trace
                .as_ref()
                .and_then(|t| t.guardrail.as_ref())
                .map(GuardrailTraceBody::units)
                .unwrap_or_default(),
        )
    }
}

/// restJson1's error code: the `x-amzn-errortype` header, else the body's `code` or `__type`,
/// without a namespace (`aws#`) or a trailing URI (`:http://...`).
pub(super) fn error_code(header: Option<&str>, body: &ErrorBody, status: StatusCode) -> String {
    let raw = header
        .or(body.code.as_deref())
        .or(body.type_.as_deref())
        .unwrap_or_default();
    let raw = raw.split(':').next().unwrap_or_default();
    let raw = raw.rsplit('#').next().unwrap_or_default();
    if raw.is_empty() {
        format!("Http{}", status.as_u16())
    } else {
        raw.to_owned()
    }
}

impl ErrorBody {
    pub(super) fn message(self) -> String {
        self.message.or(self.message_upper).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_lose_namespaces_and_uris() {
        let none = ErrorBody::default();
        let header =
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/");
        assert_eq!(
            error_code(header, &none, StatusCode::TOO_MANY_REQUESTS),
            "ThrottlingException"
        );
        let typed = ErrorBody {
            type_: Some("com.amazon.bedrock#ValidationException".into()),
            ..ErrorBody::default()
        };
        assert_eq!(
            error_code(None, &typed, StatusCode::BAD_REQUEST),
            "ValidationException"
        );
        assert_eq!(error_code(None, &none, StatusCode::BAD_GATEWAY), "Http502");
    }

    #[test]
    fn the_body_is_bedrocks_converse_shape() {
        let request = ModelRequest {
            system: Some("be brief".into()),
            messages: vec![super::super::Message {
                role: super::super::Role::User,
                content: vec![Block::Text("hi".into())],
            }],
            max_tokens: 64,
            temperature: Some(0.5),
            top_p: None,
            stop_sequences: vec![],
            guardrail: Some(("gr-1".into(), "2".into())),
            tools: None,
            output_schema: None,
            purpose: super::super::Purpose::Answer,
            system_cache: None,
            effort: None,
            thinking: None,
            reasoning_style: None,
        };
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "system": [{"text": "be brief"}],
                "inferenceConfig": {"maxTokens": 64, "temperature": 0.5},
                "guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "2", "trace": "enabled"}
            })
        );
    }

    #[test]
    fn a_stream_asks_bedrock_to_check_each_chunk_before_sending_it() {
        let request = ModelRequest {
            guardrail: Some(("gr-1".into(), "2".into())),
            ..ModelRequest::default()
        };
        let json = serde_json::to_value(ConverseBody::new(&request, true)).unwrap();
        assert_eq!(json["guardrailConfig"]["streamProcessingMode"], "sync");
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert!(
            json["guardrailConfig"]
                .get("streamProcessingMode")
                .is_none()
        );
    }

    #[test]
    fn tools_calls_and_results_take_bedrocks_shapes() {
        use super::super::{Role, Tool};
        let mut request = ModelRequest::default();
        request.push(Role::User, Block::Text("weather in Paris?".into()));
        request.push(
            Role::Assistant,
            Block::ToolUse {
                id: "t1".into(),
                name: "get_weather".into(),
                input: serde_json::json!({"city": "Paris"}),
            },
        );
        request.push(
            Role::User,
            Block::ToolResult {
                id: "t1".into(),
                text: "sunny".into(),
                error: false,
            },
        );
        request.tools = Some(Tools {
            tools: vec![Tool {
                name: "get_weather".into(),
                description: None,
                schema: serde_json::json!({"type": "object"}),
                strict: false,
            }],
            choice: ToolChoice::Named("get_weather".into()),
            cache: None,
        });
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert_eq!(
            json["messages"][1]["content"][0],
            serde_json::json!({"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}})
        );
        assert_eq!(
            json["messages"][2]["content"][0],
            serde_json::json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}})
        );
        assert_eq!(
            json["toolConfig"],
            serde_json::json!({
                "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"tool": {"name": "get_weather"}}
            })
        );
        request.tools.as_mut().unwrap().choice = ToolChoice::Auto;
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert_eq!(
            json["toolConfig"]["toolChoice"],
            serde_json::json!({"auto": {}})
        );
    }

    #[test]
    fn tool_calls_in_an_answer_are_read_with_their_arguments() {
        let out: ConverseOutput = serde_json::from_value(serde_json::json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30}
        }))
        .unwrap();
        let answer = out.into_answer();
        assert_eq!(answer.text, "Let me check.");
        assert_eq!(
            answer.tool_calls,
            [ToolCall {
                id: "tooluse_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
    }

    #[test]
    fn a_schema_for_the_answer_is_sent_as_json_text() {
        let request = ModelRequest {
            output_schema: Some(super::super::OutputSchema {
                name: "person".into(),
                description: None,
                schema: serde_json::json!({"type": "object", "additionalProperties": false}),
            }),
            ..ModelRequest::default()
        };
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert_eq!(
            json["outputConfig"],
            serde_json::json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                "schema": r#"{"additionalProperties":false,"type":"object"}"#, "name": "person"
            }}}})
        );
    }

    #[test]
    fn cache_points_and_their_details_take_bedrocks_shapes() {
        use super::super::Role;
        let hour = CachePoint {
            ttl: Some(CacheTtl::OneHour),
        };
        let mut request = ModelRequest {
            system: Some("be brief".into()),
            system_cache: Some(hour),
            ..ModelRequest::default()
        };
        request.push(Role::User, Block::Text("hi".into()));
        request.push(Role::User, Block::CachePoint(CachePoint::default()));
        let json = serde_json::to_value(ConverseBody::new(&request, false)).unwrap();
        assert_eq!(
            json["system"],
            serde_json::json!([{"text": "be brief"}, {"cachePoint": {"type": "default", "ttl": "1h"}}])
        );
        assert_eq!(
            json["messages"][0]["content"][1],
            serde_json::json!({"cachePoint": {"type": "default"}})
        );
        let out: ConverseOutput = serde_json::from_value(serde_json::json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 5, "outputTokens": 1, "totalTokens": 4506, "cacheReadInputTokens": 0,
                      "cacheWriteInputTokens": 4500, "cacheDetails": [{"ttl": "1h", "inputTokens": 4000}, {"ttl": "5m", "inputTokens": 500}]}
        }))
        .unwrap();
        let usage = out.into_answer().usage;
        assert_eq!(
            (
                usage.cache_write_input_tokens,
                usage.cache_write_1h_input_tokens
            ),
            (4500, 4000)
        );
    }
}

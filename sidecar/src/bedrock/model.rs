//! What the app asked the model and what it answered, normalised from any of the sidecar's APIs:
//! a conversation of text, tool calls and tool results, and the tools the model may call.

use k8s_ai_api::pricing::{GuardrailUnits, TokenUsage};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// A call the model made (in the history the app sends back).
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// What the app's tool answered to the call `id`.
    ToolResult {
        id: String,
        text: String,
        error: bool,
    },
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON Schema of its arguments (an object).
    pub schema: Value,
    /// Bedrock's strict tool use: the arguments follow the schema (constrained decoding).
    pub strict: bool,
}

/// A JSON Schema the answer's text must follow (Bedrock's structured outputs).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    pub name: String,
    pub description: Option<String>,
    pub schema: Value,
}

/// Whether Bedrock constrains this model's answers to a JSON Schema (Converse's
/// `outputConfig.textFormat`, strict tools): Claude 4.5 and later, as Bedrock documents it.
pub fn has_structured_outputs(model_id: &str) -> bool {
    const MODELS: &[&str] = &[
        "anthropic.claude-sonnet-4-5",
        "anthropic.claude-haiku-4-5",
        "anthropic.claude-opus-4-5",
        "anthropic.claude-opus-4-6",
        "anthropic.claude-sonnet-4-6",
    ];
    let base = k8s_ai_api::model_id::base_model_id(model_id);
    MODELS.iter().any(|m| base.starts_with(m))
}

/// `schema` with `additionalProperties: false` on every object that does not say otherwise:
/// constrained decoding needs closed objects (Anthropic refuses open ones), and OpenAI's strict
/// schemas are written so already.
pub fn closed(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), closed(v))).collect();
            if out.get("type").and_then(Value::as_str) == Some("object")
                && !out.contains_key("additionalProperties")
            {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(closed).collect()),
        other => other.clone(),
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// The model must call one of the tools.
    Any,
    /// The model must call this tool.
    Named(String),
}

/// The tools of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
}

/// What the app asked the model.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    pub system: Option<String>,
    /// Alternating turns, starting with the user's (see [`ModelRequest::push`]).
    pub messages: Vec<Message>,
    pub tools: Option<Tools>,
    /// The schema the answer's text must follow, if any.
    pub output_schema: Option<OutputSchema>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop_sequences: Vec<String>,
    /// The synced Bedrock guardrail (id, version), if any.
    pub guardrail: Option<(String, String)>,
}

/// Input tokens reserved once per request for framing (see `ModelRequest::worst_case_input_tokens`).
pub const FRAMING_BOUND_PER_REQUEST: u64 = 64;
/// Input tokens reserved per message and per system prompt for framing.
pub const FRAMING_BOUND_PER_MESSAGE: u64 = 16;
/// Input tokens reserved when a request has tools: the tool-use system prompt the model provider
/// adds (Anthropic's figure for Claude is 346 tokens with `auto`, 313 with `any` or a named tool),
/// rounded up, plus the framing of each tool's definition below.
pub const TOOL_PROMPT_BOUND: u64 = 512;
/// Input tokens reserved per tool definition, call and result for their framing.
pub const FRAMING_BOUND_PER_TOOL_BLOCK: u64 = 32;

impl ModelRequest {
    /// Adds `block` to the conversation: to the last message if it has the same role (Bedrock
    /// wants turns to alternate; the OpenAI API lets an app send two user messages in a row, or a
    /// tool result per message), else in a new message.
    pub fn push(&mut self, role: Role, block: Block) {
        match self.messages.last_mut() {
            Some(last) if last.role == role => last.content.push(block),
            _ => self.messages.push(Message {
                role,
                content: vec![block],
            }),
        }
    }

    /// The texts the model reads, mutable: the system prompt, text blocks and tool results (what
    /// a PII filter checks; tool calls are the model's own output, sent back).
    pub fn texts_mut(&mut self) -> impl Iterator<Item = &mut String> {
        self.system.iter_mut().chain(
            self.messages
                .iter_mut()
                .flat_map(|m| m.content.iter_mut())
                .filter_map(|b| match b {
                    Block::Text(t) | Block::ToolResult { text: t, .. } => Some(t),
                    Block::ToolUse { .. } => None,
                }),
        )
    }

    /// An upper bound of the input tokens Bedrock bills for this request: a token is at least one
    /// byte of text (or of a tool's JSON), and the framing around the texts (role markers; the
    /// original README's 47-byte prompt is billed 24 tokens, about 12 of them framing) is bounded
    /// by [`FRAMING_BOUND_PER_REQUEST`] plus [`FRAMING_BOUND_PER_MESSAGE`] per message and system
    /// prompt, several times what Claude bills; tools add [`TOOL_PROMPT_BOUND`] and
    /// [`FRAMING_BOUND_PER_TOOL_BLOCK`] per definition, call and result.
    pub fn worst_case_input_tokens(&self) -> u64 {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let messages = self.messages.len() + usize::from(self.system.is_some());
        let tool_blocks = self.tools.as_ref().map_or(0, |t| t.tools.len())
            + self
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter(|b| !matches!(b, Block::Text(_)))
                .count();
        n(self.input_text_len())
            .saturating_add(FRAMING_BOUND_PER_REQUEST)
            .saturating_add(FRAMING_BOUND_PER_MESSAGE.saturating_mul(n(messages)))
            .saturating_add(if self.tools.is_some() {
                TOOL_PROMPT_BOUND
            } else {
                0
            })
            .saturating_add(FRAMING_BOUND_PER_TOOL_BLOCK.saturating_mul(n(tool_blocks)))
    }

    /// Bytes of what the model reads: texts, tool calls' names and arguments, tool definitions.
    pub fn input_text_len(&self) -> usize {
        let json_len = |v: &Value| serde_json::to_string(v).map_or(0, |s| s.len());
        let blocks: usize = self
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|b| match b {
                Block::Text(t) => t.len(),
                Block::ToolUse { id, name, input } => id.len() + name.len() + json_len(input),
                Block::ToolResult { id, text, .. } => id.len() + text.len(),
            })
            .sum();
        let tools: usize = self
            .tools
            .iter()
            .flat_map(|t| &t.tools)
            .map(|t| {
                t.name.len() + t.description.as_ref().map_or(0, String::len) + json_len(&t.schema)
            })
            .sum();
        self.system.as_ref().map_or(0, String::len) + blocks + tools
    }
}

/// A call the model asked the app to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// The model's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelAnswer {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: String,
    pub usage: TokenUsage,
    /// Text units the Bedrock guardrail evaluated (from the trace), charged on top of tokens.
    pub guardrail_units: GuardrailUnits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_of_the_same_role_are_one_message() {
        let mut r = ModelRequest::default();
        r.push(Role::User, Block::Text("a".into()));
        r.push(Role::User, Block::Text("b".into()));
        r.push(Role::Assistant, Block::Text("c".into()));
        r.push(
            Role::User,
            Block::ToolResult {
                id: "t1".into(),
                text: "d".into(),
                error: false,
            },
        );
        let roles: Vec<(Role, usize)> = r
            .messages
            .iter()
            .map(|m| (m.role, m.content.len()))
            .collect();
        assert_eq!(
            roles,
            [(Role::User, 2), (Role::Assistant, 1), (Role::User, 1)]
        );
    }

    #[test]
    fn tools_are_reserved_for() {
        let mut r = ModelRequest::default();
        r.push(Role::User, Block::Text("weather?".into()));
        let plain = r.worst_case_input_tokens();
        r.tools = Some(Tools {
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("the weather in a city".into()),
                schema: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict: false,
            }],
            choice: ToolChoice::Auto,
        });
        let with_tools = r.worst_case_input_tokens();
        assert!(
            with_tools >= plain + TOOL_PROMPT_BOUND + FRAMING_BOUND_PER_TOOL_BLOCK + 80,
            "{with_tools}"
        );
    }

    #[test]
    fn schemas_are_closed_where_they_do_not_say_otherwise() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {}},
            "b": {"type": "object", "additionalProperties": true},
            "c": {"type": "array", "items": {"type": "object"}}
        }});
        let c = closed(&schema);
        assert_eq!(c["additionalProperties"], false);
        assert_eq!(c["properties"]["a"]["additionalProperties"], false);
        assert_eq!(c["properties"]["b"]["additionalProperties"], true);
        assert_eq!(c["properties"]["c"]["items"]["additionalProperties"], false);
        assert!(has_structured_outputs(
            "us.anthropic.claude-haiku-4-5-20251001-v1:0"
        ));
        assert!(!has_structured_outputs(
            "anthropic.claude-3-haiku-20240307-v1:0"
        ));
    }
}

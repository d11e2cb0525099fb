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
    /// An image: `png`, `jpeg`, `gif` or `webp`.
    Image {
        format: ImageFormat,
        bytes: Vec<u8>,
    },
    /// A document (`pdf`, `txt`, `md`, `csv`, `html`), named as Bedrock requires.
    Document {
        format: DocumentFormat,
        name: String,
        bytes: Vec<u8>,
    },
}

/// The image formats Bedrock's Converse takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl ImageFormat {
    /// From a media type (`image/png`).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Some(match media_type {
            "image/png" => ImageFormat::Png,
            "image/jpeg" | "image/jpg" => ImageFormat::Jpeg,
            "image/gif" => ImageFormat::Gif,
            "image/webp" => ImageFormat::Webp,
            _ => return None,
        })
    }

    /// From Converse's name (`png`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::from_media_type(&format!("image/{name}"))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Gif => "gif",
            ImageFormat::Webp => "webp",
        }
    }
}

/// The document formats the sidecar passes to Converse: those whose worst-case token count it
/// can bound (a PDF by its pages, text by its bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    Pdf,
    Txt,
    Md,
    Csv,
    Html,
}

impl DocumentFormat {
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Some(match media_type {
            "application/pdf" => DocumentFormat::Pdf,
            "text/plain" => DocumentFormat::Txt,
            "text/markdown" => DocumentFormat::Md,
            "text/csv" => DocumentFormat::Csv,
            "text/html" => DocumentFormat::Html,
            _ => return None,
        })
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pdf" => DocumentFormat::Pdf,
            "txt" => DocumentFormat::Txt,
            "md" => DocumentFormat::Md,
            "csv" => DocumentFormat::Csv,
            "html" => DocumentFormat::Html,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DocumentFormat::Pdf => "pdf",
            DocumentFormat::Txt => "txt",
            DocumentFormat::Md => "md",
            DocumentFormat::Csv => "csv",
            DocumentFormat::Html => "html",
        }
    }
}

/// Bedrock's limits on media in one Converse request (its documented quotas).
pub const MAX_IMAGE_BYTES: usize = 3_750_000;
pub const MAX_IMAGES: usize = 20;
pub const MAX_DOCUMENT_BYTES: usize = 4_500_000;
pub const MAX_DOCUMENTS: usize = 5;
/// Input tokens reserved per image: Claude bills about width × height / 750 and scales images
/// down to about 1,600 tokens; Nova's largest images cost a little more. Bound generously.
pub const IMAGE_TOKEN_BOUND: u64 = 4096;
/// Input tokens reserved per PDF page: its text, and the page as an image where the model reads
/// pages as images (Claude bills 1,500–3,000 a page).
pub const PDF_PAGE_TOKEN_BOUND: u64 = 4096;

/// The pages of a PDF, counted by its page objects (`/Type /Page`, not `/Pages`); at least one.
pub fn pdf_pages(bytes: &[u8]) -> u64 {
    let needle = b"/Type";
    let mut pages = 0u64;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let rest = &bytes[i + at + needle.len()..];
        let rest = rest.iter().skip_while(|b| b.is_ascii_whitespace()).copied();
        let word: Vec<u8> = rest.take(6).collect();
        if word.starts_with(b"/Page") && word.get(5).is_none_or(|b| *b != b's') {
            pages += 1;
        }
        i += at + needle.len();
    }
    pages.max(1)
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

/// What the model is asked to do with the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// Answer the conversation.
    #[default]
    Answer,
    /// Embed each text block of the user's message.
    Embed,
}

/// What the app asked the model.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    pub purpose: Purpose,
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
                    Block::ToolUse { .. } | Block::Image { .. } | Block::Document { .. } => None,
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
                .filter(|b| matches!(b, Block::ToolUse { .. } | Block::ToolResult { .. }))
                .count();
        let media: u64 = self
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|b| match b {
                Block::Image { .. } => IMAGE_TOKEN_BOUND,
                Block::Document {
                    format: DocumentFormat::Pdf,
                    bytes,
                    ..
                } => PDF_PAGE_TOKEN_BOUND.saturating_mul(pdf_pages(bytes)),
                // A text document's token is at least one byte of it.
                Block::Document { bytes, name, .. } => n(bytes.len() + name.len()),
                _ => 0,
            })
            .fold(0, u64::saturating_add);
        n(self.input_text_len())
            .saturating_add(FRAMING_BOUND_PER_REQUEST)
            .saturating_add(FRAMING_BOUND_PER_MESSAGE.saturating_mul(n(messages)))
            .saturating_add(if self.tools.is_some() {
                TOOL_PROMPT_BOUND
            } else {
                0
            })
            .saturating_add(FRAMING_BOUND_PER_TOOL_BLOCK.saturating_mul(n(tool_blocks)))
            .saturating_add(media)
    }

    /// Refuses media over Bedrock's limits before anything is sent, naming the limit.
    pub fn check_media(&self) -> Result<(), String> {
        let blocks = || self.messages.iter().flat_map(|m| &m.content);
        let images = blocks()
            .filter(|b| matches!(b, Block::Image { .. }))
            .count();
        let documents = blocks()
            .filter(|b| matches!(b, Block::Document { .. }))
            .count();
        if images > MAX_IMAGES {
            return Err(format!(
                "{images} images: Bedrock takes at most {MAX_IMAGES} in a request"
            ));
        }
        if documents > MAX_DOCUMENTS {
            return Err(format!(
                "{documents} documents: Bedrock takes at most {MAX_DOCUMENTS} in a request"
            ));
        }
        for b in blocks() {
            match b {
                Block::Image { bytes, .. } if bytes.len() > MAX_IMAGE_BYTES => {
                    return Err(format!(
                        "an image of {} bytes: Bedrock takes images of at most {MAX_IMAGE_BYTES} bytes",
                        bytes.len()
                    ));
                }
                Block::Document { bytes, .. } if bytes.len() > MAX_DOCUMENT_BYTES => {
                    return Err(format!(
                        "a document of {} bytes: Bedrock takes documents of at most {MAX_DOCUMENT_BYTES} bytes",
                        bytes.len()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
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
                // Counted by their own bounds in `worst_case_input_tokens`.
                Block::Image { .. } | Block::Document { .. } => 0,
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

    #[test]
    fn media_is_reserved_for_and_held_to_bedrocks_limits() {
        let mut r = ModelRequest::default();
        r.push(Role::User, Block::Text("what is this?".into()));
        let plain = r.worst_case_input_tokens();
        r.push(
            Role::User,
            Block::Image {
                format: ImageFormat::Png,
                bytes: vec![0; 10],
            },
        );
        let pdf = b"%PDF-1.7 1 0 obj <</Type /Pages /Count 2>> 2 0 obj <</Type /Page>> 3 0 obj <</Type/Page>>".to_vec();
        assert_eq!(pdf_pages(&pdf), 2);
        r.push(
            Role::User,
            Block::Document {
                format: DocumentFormat::Pdf,
                name: "report".into(),
                bytes: pdf,
            },
        );
        assert_eq!(
            r.worst_case_input_tokens(),
            plain + IMAGE_TOKEN_BOUND + 2 * PDF_PAGE_TOKEN_BOUND
        );
        assert!(r.check_media().is_ok());
        r.push(
            Role::User,
            Block::Image {
                format: ImageFormat::Png,
                bytes: vec![0; MAX_IMAGE_BYTES + 1],
            },
        );
        assert!(
            r.check_media()
                .unwrap_err()
                .contains("at most 3750000 bytes")
        );
    }
}

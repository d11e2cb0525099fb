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
    /// The prompt up to here is to be cached.
    CachePoint(CachePoint),
    /// The model's reasoning in an earlier turn, sent back with its signature (Claude needs it
    /// before the tool calls of the turn being answered).
    Reasoning {
        text: String,
        signature: String,
    },
}

/// How much the model reasons before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Low,
    Medium,
    High,
    /// Claude's adaptive thinking only (`output_config.effort: max`).
    Max,
}

impl Effort {
    /// The efforts every reasoning family takes (OpenAI's `reasoning_effort`, Nova 2, gpt-oss).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "minimal" | "low" => Some(Effort::Low),
            "medium" => Some(Effort::Medium),
            "high" => Some(Effort::High),
            _ => None,
        }
    }

    /// Claude's `output_config.effort`, which has `max` too.
    pub fn from_claude_name(name: &str) -> Option<Self> {
        match name {
            "max" => Some(Effort::Max),
            "minimal" => None,
            other => Self::from_name(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::Max => "max",
        }
    }

    /// The thinking tokens this effort is given on top of the answer's: Claude's budget for
    /// extended thinking (at least Anthropic's minimum of 1,024), its headroom for adaptive.
    pub fn thinking_budget(self) -> u32 {
        match self {
            Effort::Low => 1024,
            Effort::Medium => 4096,
            Effort::High => 16384,
            Effort::Max => 32768,
        }
    }
}

/// Claude's thinking as it is sent: the app's own `thinking`, or one made from an effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// Extended thinking with a budget (`thinking: {type: enabled, budget_tokens}`).
    Budget(u32),
    /// Adaptive thinking (`thinking: {type: adaptive}` with `output_config.effort`): Claude
    /// decides how much to think. `summarized: Some(true)` asks for the thinking's summary where
    /// the model omits it by default; `Some(false)` asks it omitted.
    Adaptive { summarized: Option<bool> },
    /// The app's own `thinking: {type: disabled}`: sent as no thinking, and refused up front on
    /// the models after Claude 4.6, which refuse it.
    Disabled,
}

/// How a model is told to reason, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningStyle {
    /// Claude's extended thinking: `thinking: {type: enabled, budget_tokens}`.
    ClaudeThinking,
    /// Claude 4.6 and later: adaptive thinking (`thinking: {type: adaptive}` and an effort);
    /// budgets are deprecated on 4.6 and refused on later models.
    ClaudeAdaptive,
    /// Nova 2's `reasoningConfig: {type: enabled, maxReasoningEffort}`.
    NovaReasoning,
    /// gpt-oss's `reasoning_effort`.
    ReasoningEffort,
}

/// Claude models with adaptive thinking, as Bedrock's "Adaptive thinking" page lists them.
const ADAPTIVE_THINKING: &[&str] = &[
    "anthropic.claude-opus-4-6",
    "anthropic.claude-sonnet-4-6",
    "anthropic.claude-opus-4-7",
    "anthropic.claude-opus-4-8",
    "anthropic.claude-opus-5",
    "anthropic.claude-sonnet-5",
    "anthropic.claude-mythos-",
    "anthropic.claude-fable-",
];

/// Whether this Claude takes adaptive thinking only (a budget or `disabled` is a 400) and leaves
/// its thinking out of the answer unless asked for a summary (`display: summarized`): the models
/// after Claude 4.6.
pub fn adaptive_thinking_only(model_id: &str) -> bool {
    let base = k8s_ai_api::model_id::base_model_id(model_id);
    reasoning_style(base) == Some(ReasoningStyle::ClaudeAdaptive)
        && !["anthropic.claude-opus-4-6", "anthropic.claude-sonnet-4-6"]
            .iter()
            .any(|p| base.starts_with(p))
}

/// How Bedrock lets this model's reasoning be asked for, if it does.
pub fn reasoning_style(model_id: &str) -> Option<ReasoningStyle> {
    let base = k8s_ai_api::model_id::base_model_id(model_id);
    if ADAPTIVE_THINKING.iter().any(|p| base.starts_with(p)) {
        return Some(ReasoningStyle::ClaudeAdaptive);
    }
    if [
        "anthropic.claude-3-7-",
        "anthropic.claude-sonnet-4",
        "anthropic.claude-opus-4",
        "anthropic.claude-haiku-4-5",
    ]
    .iter()
    .any(|p| base.starts_with(p))
    {
        Some(ReasoningStyle::ClaudeThinking)
    } else if base.starts_with("amazon.nova-2") {
        Some(ReasoningStyle::NovaReasoning)
    } else if base.starts_with("openai.gpt-oss") {
        Some(ReasoningStyle::ReasoningEffort)
    } else {
        None
    }
}

/// A point of the prompt up to which Bedrock caches it, and for how long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachePoint {
    /// `None`: Bedrock's default (five minutes).
    pub ttl: Option<CacheTtl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTtl {
    FiveMinutes,
    OneHour,
}

impl CacheTtl {
    /// From Bedrock's and Anthropic's names (`5m`, `1h`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "5m" => Some(CacheTtl::FiveMinutes),
            "1h" => Some(CacheTtl::OneHour),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheTtl::FiveMinutes => "5m",
            CacheTtl::OneHour => "1h",
        }
    }
}

/// Whether Bedrock caches prompts of this model: Claude 3.5 Haiku, 3.7 Sonnet, the Claude 4
/// family, Nova.
pub fn caches_prompts(model_id: &str) -> bool {
    let base = k8s_ai_api::model_id::base_model_id(model_id);
    [
        "anthropic.claude-3-5-haiku",
        "anthropic.claude-3-7-",
        "anthropic.claude-sonnet-4",
        "anthropic.claude-opus-4",
        "anthropic.claude-haiku-4",
        "amazon.nova-",
    ]
    .iter()
    .any(|p| base.starts_with(p))
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
    /// A cache point after the tool definitions.
    pub cache: Option<CachePoint>,
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
    /// A cache point after the system prompt.
    pub system_cache: Option<CachePoint>,
    /// Alternating turns, starting with the user's (see [`ModelRequest::push`]).
    pub messages: Vec<Message>,
    pub tools: Option<Tools>,
    /// The schema the answer's text must follow, if any.
    pub output_schema: Option<OutputSchema>,
    /// How much the model reasons first, if asked.
    pub effort: Option<Effort>,
    /// Claude's thinking: the app's own, or made from `effort` once the model and its token cap
    /// are known.
    pub thinking: Option<Thinking>,
    /// How the model is told to reason (set with `effort`, once the model is known).
    pub reasoning_style: Option<ReasoningStyle>,
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
                    Block::ToolUse { .. }
                    | Block::Image { .. }
                    | Block::Document { .. }
                    | Block::CachePoint(_)
                    | Block::Reasoning { .. } => None,
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

    /// The cache points of the request (tools, system, messages), placed by the app or the sidecar.
    pub fn cache_points(&self) -> impl Iterator<Item = CachePoint> + '_ {
        self.tools
            .iter()
            .filter_map(|t| t.cache)
            .chain(self.system_cache)
            .chain(
                self.messages
                    .iter()
                    .flat_map(|m| &m.content)
                    .filter_map(|b| match b {
                        Block::CachePoint(p) => Some(*p),
                        _ => None,
                    }),
            )
    }

    /// Places cache points where a conversation repeats itself, if the app placed none: after the
    /// tools, after the system prompt, and at the end of the history before the newest user turn.
    pub fn place_cache_points(&mut self) {
        if self.cache_points().next().is_some() {
            return;
        }
        let point = CachePoint::default();
        if let Some(tools) = self.tools.as_mut() {
            tools.cache = Some(point);
        }
        if self.system.is_some() {
            self.system_cache = Some(point);
        }
        // The newest user turn is new; what came before it is what the next call repeats.
        if let Some(before_last) = self.messages.len().checked_sub(2) {
            self.messages[before_last]
                .content
                .push(Block::CachePoint(point));
        }
    }

    /// Refuses a message with blank text before anything is sent: Bedrock refuses it (a
    /// ValidationException the app would get as a 502).
    pub fn check_blank_text(&self) -> Result<(), String> {
        for (i, m) in self.messages.iter().enumerate() {
            if m.content
                .iter()
                .any(|b| matches!(b, Block::Text(t) if t.trim().is_empty()))
            {
                return Err(format!(
                    "the {} turn {} has blank text, which Bedrock refuses: send some text or leave it out",
                    m.role.as_str(),
                    i + 1
                ));
            }
        }
        Ok(())
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
                Block::Image { .. } | Block::Document { .. } | Block::CachePoint(_) => 0,
                Block::Reasoning { text, signature } => text.len() + signature.len(),
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
    /// The model's reasoning before its answer (its thinking), and the signature that lets it be
    /// sent back in a later turn.
    pub reasoning: String,
    pub reasoning_signature: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: String,
    pub usage: TokenUsage,
    /// Text units the Bedrock guardrail evaluated (from the trace), charged on top of tokens.
    pub guardrail_units: GuardrailUnits,
}

impl ModelAnswer {
    /// Whether the model thought first: its thinking, or only the signature of thinking it left
    /// out (Claude's adaptive thinking omits the text unless asked), which a tool loop sends back.
    pub fn thought(&self) -> bool {
        !self.reasoning.is_empty() || !self.reasoning_signature.is_empty()
    }
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
            cache: None,
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

    #[test]
    fn automatic_cache_points_go_where_the_next_call_repeats_the_prompt() {
        let mut r = ModelRequest {
            system: Some("be brief".into()),
            ..ModelRequest::default()
        };
        r.push(Role::User, Block::Text("one".into()));
        r.push(Role::Assistant, Block::Text("two".into()));
        r.push(Role::User, Block::Text("three".into()));
        r.place_cache_points();
        assert_eq!(r.cache_points().count(), 2);
        assert!(r.system_cache.is_some());
        assert_eq!(
            r.messages[1].content.last(),
            Some(&Block::CachePoint(CachePoint::default()))
        );
        // Points the app placed are left alone.
        let mut own = ModelRequest::default();
        own.push(Role::User, Block::Text("a".into()));
        own.push(
            Role::User,
            Block::CachePoint(CachePoint {
                ttl: Some(CacheTtl::OneHour),
            }),
        );
        own.system = Some("s".into());
        own.place_cache_points();
        assert_eq!(own.cache_points().count(), 1);
    }
}

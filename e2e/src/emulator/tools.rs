//! Tool use in Converse: `toolConfig` and the `toolUse`/`toolResult` blocks of a conversation,
//! checked as strictly as Bedrock checks them (its and Anthropic's error messages, as users
//! report them), and the emulated model's deterministic tool calls.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Value, json};

use super::{error::AwsError, text::count_tokens};

/// Tokens of the tool-use system prompt the provider adds: Anthropic's figures for Claude (346
/// with `auto`, 313 with `any` or a named tool).
pub const TOOL_PROMPT_AUTO: u64 = 346;
pub const TOOL_PROMPT_FORCED: u64 = 313;

/// Which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Any,
    Named(String),
}

/// A request's `toolConfig`.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    /// (name, input schema) of each tool.
    pub tools: Vec<(String, Value)>,
    pub choice: Choice,
    /// Some tool asks for strict decoding (`toolSpec.strict`).
    pub strict: bool,
    /// The tool definitions as the model reads them (the start of the prompt).
    pub text: String,
    /// A `cachePoint` after the tools, and its TTL.
    pub cache_point: Option<super::cache::Ttl>,
    /// The tokens the tool definitions and the tool-use system prompt are billed.
    pub tokens: u64,
}

/// A call the model makes.
#[derive(Debug, Clone)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
}

impl ToolUse {
    pub fn output_tokens(&self) -> u64 {
        count_tokens(&self.name) + count_tokens(&self.input.to_string())
    }

    pub fn to_json(&self) -> Value {
        json!({ "toolUseId": self.id, "name": self.name, "input": self.input })
    }
}

fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `toolConfig`, if the request has one.
pub fn read_config(body: &Value) -> Result<Option<ToolConfig>, AwsError> {
    let config = &body["toolConfig"];
    if config.is_null() {
        return Ok(None);
    }
    let tools = config["tools"].as_array().filter(|t| !t.is_empty()).ok_or_else(|| {
        AwsError::validation("1 validation error detected: Value '[]' at 'toolConfig.tools' failed to satisfy constraint: Member must have length greater than or equal to 1")
    })?;
    let mut read = Vec::with_capacity(tools.len());
    let mut strict = false;
    let mut cache_point = None;
    for (i, tool) in tools.iter().enumerate() {
        if let Some(point) = tool.get("cachePoint") {
            cache_point = Some(super::cache::read_point(
                point,
                &format!("toolConfig.tools.{i}.cachePoint"),
            )?);
            continue;
        }
        let spec = &tool["toolSpec"];
        let name = spec["name"].as_str().unwrap_or_default();
        if !is_tool_name(name) {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value '{name}' at 'toolConfig.tools.{}.member.toolSpec.name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
                i + 1
            )));
        }
        let schema = &spec["inputSchema"]["json"];
        if schema["type"] != "object" {
            return Err(AwsError::validation(format!(
                "The value at toolConfig.tools.{i}.toolSpec.inputSchema.json.type must be one of the following: object."
            )));
        }
        if read
            .iter()
            .any(|(known, _): &(String, Value)| known == name)
        {
            return Err(AwsError::validation("tools: Tool names must be unique."));
        }
        if spec["strict"] == true {
            strict = true;
            check_closed(
                schema,
                &format!("toolConfig.tools.{i}.toolSpec.inputSchema.json"),
            )?;
        }
        read.push((name.to_owned(), schema.clone()));
    }
    let choice = &config["toolChoice"];
    let choice = if choice.is_null() || choice.get("auto").is_some() {
        Choice::Auto
    } else if choice.get("any").is_some() {
        Choice::Any
    } else if let Some(name) = choice["tool"]["name"].as_str() {
        if !read.iter().any(|(n, _)| n == name) {
            return Err(AwsError::validation(format!(
                "tool_choice: Tool '{name}' not found in provided tools"
            )));
        }
        Choice::Named(name.to_owned())
    } else {
        return Err(AwsError::validation(
            "1 validation error detected: Value at 'toolConfig.toolChoice' failed to satisfy constraint: Member must have exactly one member set",
        ));
    };
    let prompt = if choice == Choice::Auto {
        TOOL_PROMPT_AUTO
    } else {
        TOOL_PROMPT_FORCED
    };
    let tokens = prompt + count_tokens(&Value::Array(tools.clone()).to_string());
    Ok(Some(ToolConfig {
        tools: read,
        choice,
        strict,
        text: Value::Array(tools.clone()).to_string(),
        cache_point,
        tokens,
    }))
}

/// Whether Bedrock constrains this model's output to a schema (structured outputs): Claude 4.5
/// and later.
pub fn has_structured_outputs(base_model: &str) -> bool {
    [
        "anthropic.claude-sonnet-4-5",
        "anthropic.claude-haiku-4-5",
        "anthropic.claude-opus-4-5",
        "anthropic.claude-opus-4-6",
        "anthropic.claude-sonnet-4-6",
    ]
    .iter()
    .any(|m| base_model.starts_with(m))
}

/// Constrained decoding takes closed objects only: every object schema must say
/// `additionalProperties: false`, as Anthropic's structured outputs require.
pub fn check_closed(schema: &Value, at: &str) -> Result<(), AwsError> {
    match schema {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("object")
                && map.get("additionalProperties") != Some(&Value::Bool(false))
            {
                return Err(AwsError::validation(format!(
                    "{at}: For 'object' type, 'additionalProperties' must be explicitly set to false"
                )));
            }
            map.iter()
                .try_for_each(|(k, v)| check_closed(v, &format!("{at}.{k}")))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_closed(v, &format!("{at}.{i}"))),
        _ => Ok(()),
    }
}

/// Reads `outputConfig.textFormat`: the schema (sent as JSON text) the answer must follow.
pub fn read_output_schema(body: &Value) -> Result<Option<Value>, AwsError> {
    let config = &body["outputConfig"];
    if config.is_null() {
        return Ok(None);
    }
    let format = &config["textFormat"];
    if format["type"] != "json_schema" {
        return Err(AwsError::validation(
            "1 validation error detected: Value at 'outputConfig.textFormat.type' failed to satisfy constraint: Member must satisfy enum value set: [json_schema]",
        ));
    }
    let text = format["structure"]["jsonSchema"]["schema"].as_str().ok_or_else(|| {
        AwsError::validation("1 validation error detected: Value at 'outputConfig.textFormat.structure.jsonSchema.schema' failed to satisfy constraint: Member must not be null")
    })?;
    let schema: Value = serde_json::from_str(text).map_err(|e| {
        AwsError::validation(format!(
            "outputConfig.textFormat.structure.jsonSchema.schema is not valid JSON: {e}"
        ))
    })?;
    check_closed(
        &schema,
        "outputConfig.textFormat.structure.jsonSchema.schema",
    )?;
    Ok(Some(schema))
}

/// An answer that follows `schema`, for the user's words `text`.
pub fn structured_answer(schema: &Value, text: &str) -> String {
    example(schema, text, 0).to_string()
}

/// Bedrock lets only some models be forced to call a tool.
pub fn check_choice_supported(config: &ToolConfig, base_model: &str) -> Result<(), AwsError> {
    if config.strict && !has_structured_outputs(base_model) {
        return Err(AwsError::validation(
            "This model doesn't support the toolConfig.tools.toolSpec.strict field. Remove toolConfig.tools.toolSpec.strict and try again.",
        ));
    }
    let field = match config.choice {
        Choice::Auto => return Ok(()),
        Choice::Any => "any",
        Choice::Named(_) => "tool",
    };
    let forced_ok = base_model.starts_with("anthropic.")
        || base_model.starts_with("amazon.nova")
        || base_model.starts_with("mistral.mistral-large");
    if forced_ok {
        Ok(())
    } else {
        Err(AwsError::validation(format!(
            "This model doesn't support the toolConfig.toolChoice.{field} field. Remove toolConfig.toolChoice.{field} and try again."
        )))
    }
}

/// Checks the tool blocks of `messages` as Bedrock does: they need a `toolConfig`, calls are the
/// assistant's and results the user's, and every call is answered in the next turn by a result
/// with its id (and no other).
pub fn check_history(messages: &[Value], has_config: bool) -> Result<(), AwsError> {
    let ids = |m: &Value, kind: &str| -> Vec<String> {
        m["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b[kind]["toolUseId"].as_str().map(str::to_owned))
            .collect()
    };
    let mut called: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (uses, results) = (ids(m, "toolUse"), ids(m, "toolResult"));
        if (!uses.is_empty() || !results.is_empty()) && !has_config {
            return Err(AwsError::validation(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
            ));
        }
        let from_user = m["role"] == "user";
        if from_user && !uses.is_empty() {
            return Err(AwsError::validation(format!(
                "messages.{i}.content: toolUse blocks can only be in assistant messages"
            )));
        }
        if !from_user && !results.is_empty() {
            return Err(AwsError::validation(format!(
                "messages.{i}.content: toolResult blocks can only be in user messages"
            )));
        }
        if from_user {
            if results.len() > called.len() {
                return Err(AwsError::validation(format!(
                    "The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of previous turn."
                )));
            }
            if let Some(unknown) = results.iter().find(|r| !called.contains(r)) {
                return Err(AwsError::validation(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {unknown}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )));
            }
            let missing: Vec<&String> = called.iter().filter(|c| !results.contains(c)).collect();
            if !missing.is_empty() {
                return Err(AwsError::validation(format!(
                    "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            called.clear();
        } else {
            called = uses;
        }
    }
    Ok(())
}

/// The calls the emulated model makes for `text` (the user's last words): with `auto`, each tool
/// whose name the text mentions; with `any`, those or else the first tool; a named tool always.
/// Their string arguments are taken from `words` (the user's, or the model's fixed answer).
pub fn calls(config: &ToolConfig, text: &str, words: &str, seed: &str) -> Vec<ToolUse> {
    let lower = text.to_lowercase();
    let mentioned: Vec<&(String, Value)> = config
        .tools
        .iter()
        .filter(|(name, _)| lower.contains(&name.to_lowercase()))
        .collect();
    let chosen: Vec<&(String, Value)> = match &config.choice {
        Choice::Any if mentioned.is_empty() => config.tools.iter().take(1).collect(),
        Choice::Auto | Choice::Any => mentioned,
        Choice::Named(name) => config.tools.iter().filter(|(n, _)| n == name).collect(),
    };
    chosen
        .into_iter()
        .enumerate()
        .map(|(k, (name, schema))| ToolUse {
            id: tool_use_id(seed, k),
            name: name.clone(),
            input: example(schema, words, 0),
        })
        .collect()
}

/// Bedrock's ids look like `tooluse_` and 22 characters of base62.
fn tool_use_id(seed: &str, k: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::from("tooluse_");
    for i in 0..22 {
        let mut h = DefaultHasher::new();
        (seed, k, i).hash(&mut h);
        id.push(char::from(
            ALPHABET[usize::try_from(h.finish() % 62).unwrap_or(0)],
        ));
    }
    id
}

/// Arguments that satisfy `schema`: every required property (all of them when none is listed),
/// strings taken from the user's words, numbers at their minimum or 1, the first of an enum or a
/// union (`anyOf`, `oneOf`, a list of types), references (`$ref` to `#/$defs/...`) followed.
fn example(schema: &Value, text: &str, depth: usize) -> Value {
    Example { root: schema, text }.of(schema, depth)
}

struct Example<'a> {
    root: &'a Value,
    text: &'a str,
}

impl Example<'_> {
    fn of(&self, schema: &Value, depth: usize) -> Value {
        if depth > 8 {
            return Value::Null;
        }
        if let Some(path) = schema["$ref"].as_str() {
            let target = path
                .strip_prefix('#')
                .and_then(|p| self.root.pointer(p))
                .unwrap_or(&Value::Null);
            return self.of(target, depth + 1);
        }
        if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
            return first.clone();
        }
        if let Some(constant) = schema.get("const") {
            return constant.clone();
        }
        if let Some(first) = ["anyOf", "oneOf", "allOf"]
            .iter()
            .find_map(|k| schema[*k].as_array().and_then(|o| o.first()))
        {
            return self.of(first, depth + 1);
        }
        let kind = match &schema["type"] {
            Value::Array(kinds) => kinds.first().and_then(Value::as_str).unwrap_or("string"),
            kind => kind.as_str().unwrap_or("string"),
        };
        match kind {
            "object" => {
                let properties = schema["properties"].as_object();
                let required: Vec<&str> = schema["required"].as_array().map_or_else(
                    || {
                        properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default()
                    },
                    |r| r.iter().filter_map(Value::as_str).collect(),
                );
                let mut out = serde_json::Map::new();
                for name in required {
                    let property = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                    out.insert(name.to_owned(), self.of(property, depth + 1));
                }
                Value::Object(out)
            }
            "integer" => schema["minimum"].as_i64().map_or(json!(1), |m| json!(m)),
            "number" => schema["minimum"].as_f64().map_or(json!(1.5), |m| json!(m)),
            "boolean" => json!(true),
            "array" => json!([self.of(&schema["items"], depth + 1)]),
            "null" => Value::Null,
            _ => {
                let words: String = self.text.chars().take(40).collect();
                json!(words.trim())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // json! literals read better passed by value
    fn config(choice: Value) -> ToolConfig {
        read_config(&json!({ "toolConfig": {
            "tools": [
                { "toolSpec": { "name": "get_weather", "inputSchema": { "json": {
                    "type": "object",
                    "properties": { "city": { "type": "string" }, "unit": { "enum": ["c", "f"] }, "days": { "type": "integer", "minimum": 2 } },
                    "required": ["city", "unit", "days"] } } } },
                { "toolSpec": { "name": "get_time", "inputSchema": { "json": { "type": "object", "properties": {} } } } }
            ],
            "toolChoice": choice,
        } }))
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_model_calls_the_tools_it_is_asked_about_with_valid_arguments() {
        let auto = config(json!({ "auto": {} }));
        let calls = calls(
            &auto,
            "What is get_weather in Paris?",
            "What is get_weather in Paris?",
            "s",
        );
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].input["unit"], "c");
        assert_eq!(calls[0].input["days"], 2);
        assert!(calls[0].id.starts_with("tooluse_") && calls[0].id.len() == 30);
        assert!(super::calls(&auto, "hello", "hello", "s").is_empty());
        assert_eq!(
            super::calls(&config(json!({ "any": {} })), "hello", "hello", "s")[0].name,
            "get_weather"
        );
        let named = config(json!({ "tool": { "name": "get_time" } }));
        assert_eq!(
            super::calls(&named, "get_weather", "get_weather", "s")[0].name,
            "get_time"
        );
        assert!(auto.tokens > TOOL_PROMPT_AUTO);
    }

    #[test]
    fn bad_configs_and_histories_are_refused_as_bedrock_refuses_them() {
        let bad = |v: Value| {
            read_config(&json!({ "toolConfig": v }))
                .unwrap_err()
                .message
        };
        assert!(bad(json!({ "tools": [] })).contains("length greater than or equal to 1"));
        assert!(bad(json!({ "tools": [{ "toolSpec": { "name": "a b", "inputSchema": { "json": { "type": "object" } } } }] })).contains("regular expression"));
        assert!(bad(json!({ "tools": [{ "toolSpec": { "name": "a", "inputSchema": { "json": { "type": "string" } } } }] })).contains("must be one of the following: object"));
        let unknown = bad(
            json!({ "tools": [{ "toolSpec": { "name": "a", "inputSchema": { "json": { "type": "object" } } } }], "toolChoice": { "tool": { "name": "b" } } }),
        );
        assert!(unknown.contains("Tool 'b' not found"));
        assert!(
            check_choice_supported(
                &config(json!({ "any": {} })),
                "meta.llama3-8b-instruct-v1:0"
            )
            .is_err()
        );
        assert!(
            check_choice_supported(
                &config(json!({ "any": {} })),
                "anthropic.claude-haiku-4-5-20251001-v1:0"
            )
            .is_ok()
        );

        let call = json!({ "role": "assistant", "content": [{ "toolUse": { "toolUseId": "t1", "name": "get_time", "input": {} } }] });
        let user = |id: &str| json!({ "role": "user", "content": [{ "toolResult": { "toolUseId": id, "content": [{ "text": "12:00" }] } }] });
        let question = json!({ "role": "user", "content": [{ "text": "time?" }] });
        assert!(check_history(&[question.clone(), call.clone(), user("t1")], true).is_ok());
        let refused = |h: &[Value], config| check_history(h, config).unwrap_err().message;
        assert!(
            refused(&[question.clone(), call.clone(), user("t1")], false)
                .contains("toolConfig field must be defined")
        );
        assert!(
            refused(&[question.clone(), call.clone(), user("t2")], true)
                .contains("unexpected `tool_use_id`")
        );
        assert!(
            refused(&[question.clone(), call, question.clone()], true).contains(
                "Expected toolResult blocks at messages.2.content for the following Ids: t1"
            )
        );
        assert!(
            refused(&[question, user("t1")], true).contains("exceeds the number of toolUse blocks")
        );
    }

    #[test]
    fn structured_answers_follow_references_and_unions_and_open_objects_are_refused() {
        let schema = json!({
            "type": "object", "additionalProperties": false, "required": ["who", "age", "tags"],
            "properties": {
                "who": { "$ref": "#/$defs/Person" },
                "age": { "anyOf": [{ "type": "integer" }, { "type": "null" }] },
                "tags": { "type": "array", "items": { "type": "string" } }
            },
            "$defs": { "Person": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": { "name": { "type": "string" } } } }
        });
        let answer: Value = serde_json::from_str(&structured_answer(&schema, "Ada")).unwrap();
        assert_eq!(
            answer,
            json!({ "who": { "name": "Ada" }, "age": 1, "tags": ["Ada"] })
        );
        let body = |schema: &Value| json!({ "outputConfig": { "textFormat": { "type": "json_schema", "structure": { "jsonSchema": { "schema": schema.to_string() } } } } });
        assert!(read_output_schema(&body(&schema)).unwrap().is_some());
        let open = json!({ "type": "object", "properties": { "a": { "type": "object" } }, "additionalProperties": false });
        let refused = read_output_schema(&body(&open)).unwrap_err().message;
        assert!(
            refused.contains("'additionalProperties' must be explicitly set to false"),
            "{refused}"
        );
    }
}

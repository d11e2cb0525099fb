//! Reasoning as Bedrock asks for it in `additionalModelRequestFields`: Claude's extended
//! thinking (a token budget, with Anthropic's rules on it and on the conversation), Nova 2's
//! `reasoningConfig`, gpt-oss's `reasoning_effort`; and the emulated model's thinking.

use serde_json::Value;

use super::error::AwsError;

/// What a request asks.
#[derive(Debug, Clone)]
pub enum Asked {
    /// Claude's `thinking`, with its budget.
    Thinking { budget: u64 },
    /// Nova 2's `reasoningConfig`.
    NovaReasoning,
    /// gpt-oss's `reasoning_effort`.
    ReasoningEffort,
}

fn extraneous(key: &str) -> AwsError {
    AwsError::validation(format!(
        "Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again."
    ))
}

/// Reads `additionalModelRequestFields`, and checks the conversation's thinking blocks where
/// Claude needs them: the final assistant turn of a tool loop starts with its thinking.
pub fn read(body: &Value, messages: &[Value]) -> Result<Option<Asked>, AwsError> {
    let fields = &body["additionalModelRequestFields"];
    let asked = if let Some(thinking) = fields.get("thinking") {
        match thinking["type"].as_str() {
            Some("disabled") => None,
            Some("enabled") => {
                let budget = thinking["budget_tokens"].as_u64().unwrap_or(0);
                if budget < 1024 {
                    return Err(AwsError::validation(
                        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                    ));
                }
                Some(Asked::Thinking { budget })
            }
            _ => {
                return Err(AwsError::validation(
                    "thinking: Input tag does not match any of the expected tags: 'disabled', 'enabled'",
                ));
            }
        }
    } else if fields.get("reasoningConfig").is_some() {
        Some(Asked::NovaReasoning)
    } else if fields.get("reasoning_effort").is_some() {
        Some(Asked::ReasoningEffort)
    } else {
        None
    };
    if let (Some(Asked::Thinking { .. }), Some((i, last))) = (
        &asked,
        messages
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m["role"] == "assistant"),
    ) {
        let content = last["content"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let calls = content.iter().any(|b| b.get("toolUse").is_some());
        let answered = messages.get(i + 1).is_some_and(|m| {
            m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b.get("toolResult").is_some())
        });
        let thinks_first = content
            .first()
            .is_some_and(|b| b.get("reasoningContent").is_some());
        if calls && answered && !thinks_first {
            return Err(AwsError::validation(format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
            )));
        }
    }
    Ok(asked)
}

/// Checks what was asked against the model and the request, as Bedrock and Anthropic do.
pub fn check(
    asked: &Asked,
    base_model: &str,
    body: &Value,
    max_tokens: u32,
) -> Result<(), AwsError> {
    let claude_thinks = [
        "anthropic.claude-3-7-",
        "anthropic.claude-sonnet-4",
        "anthropic.claude-opus-4",
        "anthropic.claude-haiku-4-5",
    ]
    .iter()
    .any(|p| base_model.starts_with(p));
    match asked {
        Asked::Thinking { budget } => {
            if !claude_thinks {
                return Err(extraneous("thinking"));
            }
            if *budget >= u64::from(max_tokens) {
                return Err(AwsError::validation(format!(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size (max_tokens: {max_tokens}, budget_tokens: {budget})"
                )));
            }
            let config = &body["inferenceConfig"];
            if config["temperature"]
                .as_f64()
                .is_some_and(|t| (t - 1.0).abs() > f64::EPSILON)
            {
                return Err(AwsError::validation(
                    "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility",
                ));
            }
            if config["topP"].as_f64().is_some_and(|p| p < 0.95) {
                return Err(AwsError::validation(
                    "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility",
                ));
            }
            Ok(())
        }
        Asked::NovaReasoning if !base_model.starts_with("amazon.nova-2") => {
            Err(extraneous("reasoningConfig"))
        }
        Asked::ReasoningEffort if !base_model.starts_with("openai.gpt-oss") => {
            Err(extraneous("reasoning_effort"))
        }
        Asked::NovaReasoning | Asked::ReasoningEffort => Ok(()),
    }
}

/// The emulated model's thinking about `question`, and its signature.
pub fn think(question: &str, signature_seed: &str) -> (String, String) {
    let text = format!(
        "The user asks: {}. I will answer directly.",
        question.trim()
    );
    (text, aws_smithy_types::base64::encode(signature_seed))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";

    #[test]
    fn claudes_rules_on_thinking() {
        let body = |fields: Value| json!({ "additionalModelRequestFields": fields, "inferenceConfig": { "maxTokens": 4000 } });
        let asked = read(
            &body(json!({ "thinking": { "type": "enabled", "budget_tokens": 2000 } })),
            &[],
        )
        .unwrap()
        .unwrap();
        assert!(check(&asked, HAIKU, &body(json!({})), 4000).is_ok());
        assert!(
            check(&asked, HAIKU, &body(json!({})), 1500)
                .unwrap_err()
                .message
                .contains("greater than `thinking.budget_tokens`")
        );
        assert!(
            check(
                &asked,
                "meta.llama3-3-70b-instruct-v1:0",
                &body(json!({})),
                4000
            )
            .unwrap_err()
            .message
            .contains("extraneous key [thinking]")
        );
        let hot = json!({ "inferenceConfig": { "maxTokens": 4000, "temperature": 0.2 } });
        assert!(
            check(&asked, HAIKU, &hot, 4000)
                .unwrap_err()
                .message
                .contains("temperature")
        );
        assert!(
            read(
                &body(json!({ "thinking": { "type": "enabled", "budget_tokens": 10 } })),
                &[]
            )
            .is_err()
        );

        let call = json!({ "role": "assistant", "content": [{ "toolUse": { "toolUseId": "t", "name": "f", "input": {} } }] });
        let result = json!({ "role": "user", "content": [{ "toolResult": { "toolUseId": "t", "content": [{ "text": "ok" }] } }] });
        let question = json!({ "role": "user", "content": [{ "text": "q" }] });
        let thinking = body(json!({ "thinking": { "type": "enabled", "budget_tokens": 2000 } }));
        let refused = read(&thinking, &[question.clone(), call, result.clone()])
            .unwrap_err()
            .message;
        assert!(
            refused.contains("Expected `thinking` or `redacted_thinking`, but found `tool_use`"),
            "{refused}"
        );
        let thought = json!({ "role": "assistant", "content": [
            { "reasoningContent": { "reasoningText": { "text": "hm", "signature": "c2ln" } } },
            { "toolUse": { "toolUseId": "t", "name": "f", "input": {} } }] });
        assert!(read(&thinking, &[question, thought, result]).is_ok());
    }
}

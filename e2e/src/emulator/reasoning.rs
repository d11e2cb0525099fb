//! Reasoning as Bedrock asks for it in `additionalModelRequestFields`: Claude's extended
//! thinking (a token budget, with Anthropic's rules on it and on the conversation) and adaptive
//! thinking (`output_config.effort`; the only kind Claude after 4.6 takes), Nova 2's
//! `reasoningConfig`, gpt-oss's `reasoning_effort`; and the emulated model's thinking.

use serde_json::Value;

use super::error::AwsError;

/// What a request asks.
#[derive(Debug, Clone)]
pub enum Asked {
    /// Claude's `thinking`, with its budget.
    Thinking { budget: u64 },
    /// Claude's adaptive thinking; `display` as asked (`summarized` or `omitted`).
    Adaptive { display: Option<String> },
    /// Claude's `thinking: {type: disabled}`.
    Disabled,
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
    if let Some(config) = fields.get("output_config") {
        let effort = config.get("effort");
        if let Some(key) = config
            .as_object()
            .and_then(|c| c.keys().find(|k| *k != "effort"))
        {
            return Err(AwsError::validation(format!(
                "output_config.{key}: Extra inputs are not permitted"
            )));
        }
        if !effort
            .and_then(Value::as_str)
            .is_some_and(|e| ["low", "medium", "high", "max"].contains(&e))
        {
            return Err(AwsError::validation(
                "output_config.effort: Input should be 'low', 'medium', 'high' or 'max'",
            ));
        }
    }
    let asked = if let Some(thinking) = fields.get("thinking") {
        match thinking["type"].as_str() {
            Some("disabled") => Some(Asked::Disabled),
            Some("adaptive") => {
                let display = thinking
                    .get("display")
                    .map(|d| d.as_str().unwrap_or_default());
                if display.is_some_and(|d| d != "summarized" && d != "omitted") {
                    return Err(AwsError::validation(
                        "thinking.adaptive.display: Input should be 'summarized' or 'omitted'",
                    ));
                }
                Some(Asked::Adaptive {
                    display: display.map(str::to_owned),
                })
            }
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
                    "thinking: Input tag does not match any of the expected tags: 'adaptive', 'disabled', 'enabled'",
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
    if let (Some(Asked::Thinking { .. } | Asked::Adaptive { .. }), Some((i, last))) = (
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

/// Claude models with adaptive thinking (Bedrock's "Adaptive thinking" page).
const ADAPTIVE: &[&str] = &[
    "anthropic.claude-opus-4-6",
    "anthropic.claude-sonnet-4-6",
    "anthropic.claude-opus-4-7",
    "anthropic.claude-opus-4-8",
    "anthropic.claude-opus-5",
    "anthropic.claude-sonnet-5",
    "anthropic.claude-mythos-",
    "anthropic.claude-fable-",
];

/// Of those, the two that still take a budget (deprecated there) and show their thinking unless
/// told to omit it; the later ones take adaptive thinking only and omit it unless asked.
const ADAPTIVE_AND_BUDGET: &[&str] = &["anthropic.claude-opus-4-6", "anthropic.claude-sonnet-4-6"];

fn starts(model: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| model.starts_with(p))
}

const ADAPTIVE_ONLY: &str = "\"thinking.type.enabled\" is not supported for this model. Use \"thinking.type.adaptive\" and \"output_config.effort\" to control thinking behavior.";

impl Asked {
    /// Whether the answer carries the thinking's text (else only its signature).
    pub fn shows_thinking(&self, base_model: &str) -> bool {
        match self {
            Asked::Adaptive { display: Some(d) } => d == "summarized",
            Asked::Adaptive { display: None } => starts(base_model, ADAPTIVE_AND_BUDGET),
            _ => true,
        }
    }

    /// Whether the model thinks before it answers.
    pub fn thinks(&self) -> bool {
        !matches!(self, Asked::Disabled)
    }
}

/// Checks what was asked against the model and the request, as Bedrock and Anthropic do.
pub fn check(
    asked: Option<&Asked>,
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
    .any(|p| base_model.starts_with(p))
        || starts(base_model, ADAPTIVE);
    let adaptive = starts(base_model, ADAPTIVE);
    let adaptive_only = adaptive && !starts(base_model, ADAPTIVE_AND_BUDGET);
    if body["additionalModelRequestFields"]
        .get("output_config")
        .is_some()
    {
        if !adaptive && !base_model.starts_with("anthropic.claude-opus-4-5") {
            return Err(extraneous("output_config"));
        }
        let effort = &body["additionalModelRequestFields"]["output_config"]["effort"];
        if effort == "max" && !adaptive {
            return Err(AwsError::validation(
                "output_config.effort: 'max' is not supported for this model.",
            ));
        }
    }
    let Some(asked) = asked else {
        return Ok(());
    };
    match asked {
        Asked::Disabled if adaptive_only => Err(AwsError::validation(
            "\"thinking.type.disabled\" is not supported for this model. Use \"thinking.type.adaptive\" and \"output_config.effort\" to control thinking behavior.",
        )),
        Asked::Disabled if claude_thinks => Ok(()),
        Asked::Disabled => Err(extraneous("thinking")),
        Asked::Adaptive { .. } if !claude_thinks => Err(extraneous("thinking")),
        Asked::Adaptive { .. } if !adaptive => Err(AwsError::validation(
            "\"thinking.type.adaptive\" is not supported for this model. Use \"thinking.type.enabled\" with \"budget_tokens\" to control thinking behavior.",
        )),
        Asked::Thinking { .. } if adaptive_only => Err(AwsError::validation(ADAPTIVE_ONLY)),
        Asked::Thinking { budget } => {
            if !claude_thinks {
                return Err(extraneous("thinking"));
            }
            if *budget >= u64::from(max_tokens) {
                return Err(AwsError::validation(format!(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size (max_tokens: {max_tokens}, budget_tokens: {budget})"
                )));
            }
            sampling_with_thinking(body)
        }
        Asked::Adaptive { .. } => sampling_with_thinking(body),
        Asked::NovaReasoning if !base_model.starts_with("amazon.nova-2") => {
            Err(extraneous("reasoningConfig"))
        }
        Asked::ReasoningEffort if !base_model.starts_with("openai.gpt-oss") => {
            Err(extraneous("reasoning_effort"))
        }
        Asked::NovaReasoning | Asked::ReasoningEffort => Ok(()),
    }
}

/// Anthropic's sampling rules while Claude thinks.
fn sampling_with_thinking(body: &Value) -> Result<(), AwsError> {
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
        assert!(check(Some(&asked), HAIKU, &body(json!({})), 4000).is_ok());
        assert!(
            check(Some(&asked), HAIKU, &body(json!({})), 1500)
                .unwrap_err()
                .message
                .contains("greater than `thinking.budget_tokens`")
        );
        assert!(
            check(
                Some(&asked),
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
            check(Some(&asked), HAIKU, &hot, 4000)
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

    #[test]
    fn adaptive_thinking_where_claude_has_it_and_only_it_after_4_6() {
        const OPUS_4_6: &str = "anthropic.claude-opus-4-6-v1";
        const OPUS_4_7: &str = "anthropic.claude-opus-4-7";
        let body = |fields: Value| json!({ "additionalModelRequestFields": fields, "inferenceConfig": { "maxTokens": 4000 } });
        let adaptive =
            json!({ "thinking": { "type": "adaptive" }, "output_config": { "effort": "max" } });
        let budget = json!({ "thinking": { "type": "enabled", "budget_tokens": 2000 } });
        let checked = |fields: &Value, model: &str| {
            let request = body(fields.clone());
            let asked = read(&request, &[])?;
            check(asked.as_ref(), model, &request, 4000)
        };
        assert!(checked(&adaptive, OPUS_4_6).is_ok());
        assert!(checked(&adaptive, OPUS_4_7).is_ok());
        assert!(
            checked(&budget, OPUS_4_6).is_ok(),
            "deprecated on 4.6, not refused"
        );
        let refused = checked(&budget, OPUS_4_7).unwrap_err().message;
        assert!(
            refused.contains("\"thinking.type.enabled\" is not supported for this model"),
            "{refused}"
        );
        let refused = checked(
            &json!({ "thinking": { "type": "disabled" } }),
            "anthropic.claude-fable-5",
        )
        .unwrap_err()
        .message;
        assert!(refused.contains("thinking.type.disabled"), "{refused}");
        let refused = checked(&adaptive, HAIKU).unwrap_err().message;
        assert!(
            refused.contains("extraneous key [output_config]"),
            "{refused}"
        );
        let refused = checked(&json!({ "thinking": { "type": "adaptive" } }), HAIKU)
            .unwrap_err()
            .message;
        assert!(
            refused.contains("\"thinking.type.adaptive\" is not supported"),
            "{refused}"
        );
        assert!(
            read(
                &body(json!({ "output_config": { "effort": "extreme" } })),
                &[]
            )
            .is_err()
        );
        assert!(
            read(
                &body(json!({ "thinking": { "type": "adaptive", "display": "full" } })),
                &[]
            )
            .is_err()
        );

        let shown = |fields: Value, model: &str| {
            read(&body(fields), &[])
                .unwrap()
                .unwrap()
                .shows_thinking(model)
        };
        assert!(shown(
            json!({ "thinking": { "type": "adaptive" } }),
            OPUS_4_6
        ));
        assert!(!shown(
            json!({ "thinking": { "type": "adaptive" } }),
            OPUS_4_7
        ));
        assert!(shown(
            json!({ "thinking": { "type": "adaptive", "display": "summarized" } }),
            OPUS_4_7
        ));
    }
}

//! What a model call records in its span: OpenTelemetry's GenAI semantic conventions
//! (`gen_ai.*`) and ours (`k8s_ai.*`: the endpoint, the exact cost, the limits' decision, the
//! guardrail's action). Each function does nothing when the request has no span.
//!
//! No text of the conversation is recorded unless `--trace-message-content` is on, and then only
//! as the guardrail left it: masked input, an answer that passed the output checks.

use k8s_ai_api::pricing::TokenUsage;
use rust_decimal::Decimal;
use serde_json::{Value as Json, json};

use super::{Value, record};
use crate::{
    bedrock::{Block, ModelAnswer, ModelRequest, Purpose},
    catalog::EndpointConfig,
    errors::ApiError,
};

/// The request became a call to `endpoint`'s model: the span is named and will be exported.
pub fn started(endpoint: &EndpointConfig, request: &ModelRequest) {
    record(|span| {
        let operation = match request.purpose {
            Purpose::Answer => "chat",
            Purpose::Embed => "embeddings",
        };
        span.open(format!("{operation} {}", endpoint.model_to_call));
        span.set("gen_ai.operation.name", operation);
        span.set("gen_ai.provider.name", "aws.bedrock");
        span.set("gen_ai.request.model", endpoint.model_to_call.as_str());
        span.set("cloud.region", endpoint.spec.region.as_str());
        span.set("k8s_ai.endpoint", endpoint.name.as_str());
    });
}

/// The request as it leaves for Bedrock: its parameters, the Bedrock guardrail it names, and
/// (with message content on) its conversation, masked where the guardrail masked it.
pub fn sent(request: &ModelRequest) {
    record(|span| {
        if request.purpose == Purpose::Answer {
            span.set("gen_ai.request.max_tokens", u64::from(request.max_tokens));
        }
        if let Some(t) = request.temperature {
            span.set("gen_ai.request.temperature", decimal(t));
        }
        if let Some(p) = request.top_p {
            span.set("gen_ai.request.top_p", decimal(p));
        }
        if !request.stop_sequences.is_empty() {
            span.set(
                "gen_ai.request.stop_sequences",
                Value::Strs(request.stop_sequences.clone()),
            );
        }
        if let Some((id, version)) = &request.guardrail {
            span.set("aws.bedrock.guardrail.id", id.as_str());
            span.set("k8s_ai.guardrail.version", version.as_str());
        }
    });
    if records_message_content() {
        record(|span| {
            if let Some(system) = &request.system {
                let parts = json!([{ "type": "text", "content": system }]);
                span.set("gen_ai.system_instructions", parts.to_string());
            }
            span.set("gen_ai.input.messages", input_messages(request).to_string());
        });
    }
}

/// The local PII filter masked (`masked`) or blocked (`blocked`) text, of the prompt or the answer.
pub fn guardrail(action: &'static str) {
    record(|span| span.set("k8s_ai.guardrail.action", action));
}

/// The limits and the budget let the call through.
pub fn admitted() {
    record(|span| span.set("k8s_ai.limit.decision", "admitted"));
}

/// The call was refused or failed with `err`: its code is the span's `error.type`; a refusal by
/// a limit or the budget is the limits' decision.
pub fn failed(err: &ApiError) {
    record(|span| {
        span.set("error.type", err.code);
        span.fail(format!("{}: {}", err.code, err.message));
        let ours = err.code != "upstream_throttled";
        if err.status == axum::http::StatusCode::TOO_MANY_REQUESTS && ours {
            span.set("k8s_ai.limit.decision", err.code);
            if let Some(after) = err.retry_after {
                let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                span.set("k8s_ai.limit.retry_after_ms", ms);
            }
        }
    });
}

/// What Bedrock billed and what it cost, exactly (a decimal string of US dollars).
pub fn settled(usage: &TokenUsage, cost: Decimal) {
    record(|span| {
        // The conventions count cached tokens within the input tokens; Bedrock counts them apart.
        let input =
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_write_input_tokens;
        span.set("gen_ai.usage.input_tokens", input);
        if span.get("gen_ai.operation.name") != Some(&Value::from("embeddings")) {
            span.set("gen_ai.usage.output_tokens", usage.output_tokens);
        }
        if usage.cache_read_input_tokens > 0 {
            span.set(
                "gen_ai.usage.cache_read.input_tokens",
                usage.cache_read_input_tokens,
            );
        }
        if usage.cache_write_input_tokens > 0 {
            span.set(
                "gen_ai.usage.cache_creation.input_tokens",
                usage.cache_write_input_tokens,
            );
        }
        span.set("k8s_ai.cost_usd", crate::calls::format_cost(cost));
    });
}

/// The model's answer: why it stopped, and (with message content on, when the answer passed the
/// output checks) what it said.
pub fn answered(answer: &ModelAnswer, passed_checks: bool) {
    record(|span| {
        if !answer.stop_reason.is_empty() {
            span.set(
                "gen_ai.response.finish_reasons",
                Value::Strs(vec![answer.stop_reason.clone()]),
            );
        }
    });
    if passed_checks && records_message_content() {
        record(|span| {
            span.set(
                "gen_ai.output.messages",
                output_messages(answer).to_string(),
            );
        });
    }
}

/// An `f32` setting as the decimal it was written as (0.2, not 0.20000000298023224).
fn decimal(setting: f32) -> Value {
    Value::Float(setting.to_string().parse().unwrap_or(f64::from(setting)))
}

fn records_message_content() -> bool {
    super::current().is_some_and(|span| span.records_message_content())
}

/// `gen_ai.input.messages`: each turn's text, tool calls and tool results (media are left out).
fn input_messages(request: &ModelRequest) -> Json {
    let messages: Vec<Json> = request
        .messages
        .iter()
        .map(|message| {
            let parts: Vec<Json> = message
                .content
                .iter()
                .filter_map(|block| match block {
                    Block::Text(text) => Some(json!({ "type": "text", "content": text })),
                    Block::ToolUse { id, name, input } => Some(
                        json!({ "type": "tool_call", "id": id, "name": name, "arguments": input }),
                    ),
                    Block::ToolResult { id, text, .. } => {
                        Some(json!({ "type": "tool_call_response", "id": id, "response": text }))
                    }
                    _ => None,
                })
                .collect();
            json!({ "role": message.role.as_str(), "parts": parts })
        })
        .collect();
    Json::Array(messages)
}

/// `gen_ai.output.messages`: the answer's reasoning, text and tool calls, and why it stopped.
fn output_messages(answer: &ModelAnswer) -> Json {
    let mut parts = Vec::new();
    if !answer.reasoning.is_empty() {
        parts.push(json!({ "type": "reasoning", "content": answer.reasoning }));
    }
    if !answer.text.is_empty() {
        parts.push(json!({ "type": "text", "content": answer.text }));
    }
    for call in &answer.tool_calls {
        let arguments: Json =
            serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!(call.arguments));
        parts.push(
            json!({ "type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments }),
        );
    }
    json!([{ "role": "assistant", "parts": parts, "finish_reason": answer.stop_reason }])
}

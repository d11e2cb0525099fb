//! OpenAI's Embeddings API (`POST /v1/embeddings`) on Bedrock's embedding models: Titan Text
//! Embeddings (V2 and v1) and Cohere Embed 3, with the limits, budget, PII filter and exact cost
//! of every call.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Body, parse, truncated};
use crate::{
    bedrock::{Block, ModelRequest, Purpose, Role, embeddings::Family},
    calls::AppState,
    catalog::EndpointConfig,
    errors::ApiError,
};

/// The most inputs one request may embed (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

fn unsupported(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_parameter",
        format!(
            "{} is not supported by this sidecar's embeddings route: remove it (see docs/sidecar.md)",
            truncated(field, 80)
        ),
    )
}

/// The texts of `input`: a string or a list of strings, none empty.
fn texts(input: Value) -> Result<Vec<String>, ApiError> {
    let texts = match input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        Value::Array(_) => {
            return Err(unsupported(
                "input as token ids (Bedrock's embedding models take text)",
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "input must be a string or a list of strings",
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(format!(
            "input must hold 1 to {MAX_INPUTS} texts, not {}",
            texts.len()
        )));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid(format!("input[{i}] is empty")));
    }
    Ok(texts)
}

/// An embedding request of `texts`, one user turn each, for the same checks as a chat.
fn embedding_request(texts: Vec<String>) -> ModelRequest {
    let mut request = ModelRequest {
        purpose: Purpose::Embed,
        ..ModelRequest::default()
    };
    for text in texts {
        request.push(Role::User, Block::Text(text));
    }
    request
}

/// A vector as OpenAI sends it: floats, or their little-endian 32-bit bytes in base64 (what the
/// OpenAI SDKs ask for by default).
fn encoded(vector: &[f32], base64: bool) -> Value {
    if base64 {
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(aws_smithy_types::base64::encode(bytes))
    } else {
        json!(vector)
    }
}

pub(super) async fn embeddings(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let outcome = async {
        let body: EmbeddingsBody = parse(&body, state.settings.max_body_bytes)?;
        if let Some((name, _)) = body
            .other
            .iter()
            .find(|(name, value)| !value.is_null() && name.as_str() != "user")
        {
            return Err(unsupported(name));
        }
        let base64 = match body.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "encoding_format must be \"float\" or \"base64\", not {:?}",
                    truncated(other, 20)
                )));
            }
        };
        let texts = texts(body.input)?;
        let namespace = state.catalog.namespace().to_owned();
        let endpoint = state.endpoint(&namespace, &body.model)?;
        // A chat model's endpoint is refused by `prepare`, naming the route it serves.
        let family = Family::of(&endpoint.model_to_call);
        let dimensions = match (family, body.dimensions) {
            (Some(f), Some(d)) if !f.dimensions().contains(&d) => {
                return Err(ApiError::invalid(format!(
                    "dimensions: {} returns {:?}, not {d}",
                    endpoint.model_to_call,
                    f.dimensions()
                )));
            }
            (Some(_), Some(d)) => d,
            (Some(f), None) => f.dimensions()[0],
            (None, _) => 0,
        };
        let prepared = state
            .prepare(endpoint, embedding_request(texts), None)
            .await?;
        let Some(family) = family else {
            return Err(ApiError::invalid("not an embedding model"));
        };
        let embedded = state.embed(prepared, family, dimensions).await?;
        let data: Vec<Value> = embedded
            .vectors
            .iter()
            .enumerate()
            .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": encoded(v, base64) }))
            .collect();
        let mut response = Json(json!({
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": { "prompt_tokens": embedded.input_tokens, "total_tokens": embedded.input_tokens },
        }))
        .into_response();
        if let Ok(cost) =
            axum::http::HeaderValue::from_str(&crate::calls::format_cost(embedded.cost))
        {
            response.headers_mut().insert("x-ai-sidecar-cost-usd", cost);
        }
        Ok(response)
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

/// InvokeModel on an embedding endpoint, with the model's own body (Titan's `inputText`,
/// Cohere's `texts`, as LangChain's `BedrockEmbeddings` sends them): the texts pass the same
/// checks as on `/v1/embeddings`, the body goes on with the rest of its fields as the app wrote
/// them, and Bedrock's answer comes back as it sent it. Errors are Bedrock's shape.
pub(super) async fn invoke_native(
    state: &AppState,
    endpoint: Arc<EndpointConfig>,
    family: Family,
    body: &[u8],
) -> Response {
    let outcome = async {
        let fields: Map<String, Value> = parse(body, state.settings.max_body_bytes)?;
        let texts = family.native_texts(&fields).map_err(ApiError::invalid)?;
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(ApiError::invalid(format!("text {i} is empty")));
        }
        let prepared = state
            .prepare(endpoint, embedding_request(texts), None)
            .await?;
        state.embed_native(prepared, family, fields).await
    };
    match outcome.await {
        Ok((answer, input_tokens, cost)) => {
            let mut response = (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                answer,
            )
                .into_response();
            let headers = response.headers_mut();
            headers.insert(
                "x-amzn-bedrock-input-token-count",
                HeaderValue::from(input_tokens),
            );
            if let Ok(cost) = HeaderValue::from_str(&crate::calls::format_cost(cost)) {
                headers.insert("x-ai-sidecar-cost-usd", cost);
            }
            response
        }
        Err(e) => super::bedrock_runtime::bedrock_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_encodings() {
        assert_eq!(texts(json!("a")).unwrap(), ["a"]);
        assert_eq!(texts(json!(["a", "b"])).unwrap(), ["a", "b"]);
        assert!(
            texts(json!([1, 2]))
                .unwrap_err()
                .message
                .contains("token ids")
        );
        assert!(
            texts(json!(["a", " "]))
                .unwrap_err()
                .message
                .contains("input[1] is empty")
        );
        assert!(texts(json!([])).is_err());
        assert_eq!(encoded(&[1.0, -2.0], true), json!("AACAPwAAAMA="));
        assert_eq!(encoded(&[0.5], false), json!([0.5]));
    }
}

//! Embedding models through InvokeModel: Titan Text Embeddings (V2, v1) and Cohere Embed 3, their
//! bodies checked as strictly as Bedrock checks them (its "Malformed input request" messages),
//! answered with deterministic unit vectors and billed per input token.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Value, json};

use super::{error::AwsError, text::count_tokens};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TitanV2,
    TitanV1,
    Cohere,
}

/// The embedding family of a base model id, if it is one.
pub fn kind(base_model: &str) -> Option<Kind> {
    if base_model.starts_with("amazon.titan-embed-text-v2") {
        Some(Kind::TitanV2)
    } else if base_model.starts_with("amazon.titan-embed-text-v1") {
        Some(Kind::TitanV1)
    } else if base_model.starts_with("cohere.embed-") {
        Some(Kind::Cohere)
    } else {
        None
    }
}

/// What a body asks: the texts and the vectors' size.
#[derive(Debug)]
pub struct Request {
    pub texts: Vec<String>,
    dimensions: usize,
    /// Cohere: `embedding_types` was given, so the answer is by type.
    by_type: bool,
}

fn malformed(detail: impl std::fmt::Display) -> AwsError {
    AwsError::validation(format!(
        "Malformed input request: {detail}, please reformat your input and try again."
    ))
}

fn only(body: &Value, allowed: &[&str]) -> Result<(), AwsError> {
    let Some(map) = body.as_object() else {
        return Err(malformed("#: expected type: JSONObject"));
    };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(malformed(format!(
            "#: extraneous key [{k}] is not permitted"
        ))),
        None => Ok(()),
    }
}

/// Reads and checks a body of `kind`.
pub fn read(kind: Kind, body: &Value) -> Result<Request, AwsError> {
    match kind {
        Kind::TitanV2 | Kind::TitanV1 => {
            let allowed: &[&str] = if kind == Kind::TitanV2 {
                &["inputText", "dimensions", "normalize", "embeddingTypes"]
            } else {
                &["inputText"]
            };
            only(body, allowed)?;
            let text = body["inputText"]
                .as_str()
                .ok_or_else(|| malformed("#: required key [inputText] not found"))?;
            if text.is_empty() {
                return Err(malformed("#/inputText: expected minLength: 1, actual: 0"));
            }
            let tokens = count_tokens(text);
            if tokens > 8192 {
                return Err(AwsError::validation(format!(
                    "400 Bad Request: Too many input tokens. Max input tokens: 8192, request input token count: {tokens}"
                )));
            }
            let dimensions = match (kind, body.get("dimensions")) {
                (Kind::TitanV1, _) => 1536,
                (_, None) => 1024,
                (_, Some(d)) => match d.as_u64() {
                    Some(d @ (256 | 512 | 1024)) => usize::try_from(d).unwrap_or(1024),
                    _ => {
                        return Err(malformed(format!(
                            "#/dimensions: {d} is not a valid enum value"
                        )));
                    }
                },
            };
            Ok(Request {
                texts: vec![text.to_owned()],
                dimensions,
                by_type: false,
            })
        }
        Kind::Cohere => {
            only(
                body,
                &[
                    "texts",
                    "input_type",
                    "truncate",
                    "embedding_types",
                    "images",
                ],
            )?;
            let texts: Vec<String> = body["texts"]
                .as_array()
                .ok_or_else(|| malformed("#: required key [texts] not found"))?
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| malformed("#/texts: expected type: String"))?;
            if texts.is_empty() || texts.len() > 96 {
                return Err(malformed(format!(
                    "#/texts: expected between 1 and 96 items, found {}",
                    texts.len()
                )));
            }
            if let Some(i) = texts.iter().position(|t| t.chars().count() > 2048) {
                return Err(malformed(format!("#/texts/{i}: expected maxLength: 2048")));
            }
            let input_type = body["input_type"]
                .as_str()
                .ok_or_else(|| malformed("#: required key [input_type] not found"))?;
            if !matches!(
                input_type,
                "search_document" | "search_query" | "classification" | "clustering"
            ) {
                return Err(malformed(format!(
                    "#/input_type: {input_type} is not a valid enum value"
                )));
            }
            Ok(Request {
                texts,
                dimensions: 1024,
                by_type: body.get("embedding_types").is_some(),
            })
        }
    }
}

/// A unit vector of `dimensions` determined by `text`.
fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dimensions)
        .map(|i| {
            let mut h = DefaultHasher::new();
            (text, i).hash(&mut h);
            #[allow(clippy::cast_precision_loss)] // a value in [-1, 1); precision is irrelevant
            let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    #[allow(clippy::cast_possible_truncation)] // f32 is the models' own precision
    raw.iter().map(|x| (x / norm) as f32).collect()
}

/// The answer to `request` and the input tokens billed.
pub fn answer(kind: Kind, request: &Request) -> (Value, u64) {
    let tokens: u64 = request.texts.iter().map(|t| count_tokens(t)).sum();
    let vectors: Vec<Vec<f32>> = request
        .texts
        .iter()
        .map(|t| vector(t, request.dimensions))
        .collect();
    let body = match kind {
        Kind::TitanV2 => {
            json!({ "embedding": vectors[0], "embeddingsByType": { "float": vectors[0] }, "inputTextTokenCount": tokens })
        }
        Kind::TitanV1 => json!({ "embedding": vectors[0], "inputTextTokenCount": tokens }),
        Kind::Cohere if request.by_type => {
            json!({ "id": "emb-1", "texts": request.texts, "embeddings": { "float": vectors }, "response_type": "embeddings_by_type" })
        }
        Kind::Cohere => {
            json!({ "id": "emb-1", "texts": request.texts, "embeddings": vectors, "response_type": "embeddings_floats" })
        }
    };
    (body, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_and_vectors_are_unit_and_stable() {
        let r = read(
            Kind::TitanV2,
            &json!({ "inputText": "hello", "dimensions": 256 }),
        )
        .unwrap();
        let (body, tokens) = answer(Kind::TitanV2, &r);
        let v: Vec<f64> = body["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(v.len(), 256);
        assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
        assert_eq!(tokens, 2);
        assert_eq!(
            answer(Kind::TitanV2, &r).0,
            body,
            "the same text, the same vector"
        );
        assert!(
            read(
                Kind::TitanV2,
                &json!({ "inputText": "x", "dimensions": 300 })
            )
            .unwrap_err()
            .message
            .contains("not a valid enum value")
        );
        assert!(
            read(
                Kind::TitanV1,
                &json!({ "inputText": "x", "dimensions": 256 })
            )
            .unwrap_err()
            .message
            .contains("extraneous key [dimensions]")
        );
        assert!(
            read(Kind::Cohere, &json!({ "texts": ["a"] }))
                .unwrap_err()
                .message
                .contains("[input_type]")
        );
        let r = read(
            Kind::Cohere,
            &json!({ "texts": ["a", "b"], "input_type": "search_document" }),
        )
        .unwrap();
        assert_eq!(
            answer(Kind::Cohere, &r).0["embeddings"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}

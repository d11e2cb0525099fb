//! Embedding models through InvokeModel: each family's body and answer. Titan embeds one text a
//! call; Cohere up to 96.

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The embedding models the sidecar serves, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Titan Text Embeddings V2: 256, 512 or 1,024 dimensions.
    TitanV2,
    /// Titan Text Embeddings (v1): 1,536 dimensions.
    TitanV1,
    /// Cohere Embed 3 (English, Multilingual): 1,024 dimensions.
    Cohere,
}

/// Cohere takes at most this many texts a call.
pub const COHERE_BATCH: usize = 96;

impl Family {
    /// The family of the model `model_id` (a base id or a profile), if it is an embedding model.
    pub fn of(model_id: &str) -> Option<Self> {
        let base = k8s_ai_api::model_id::base_model_id(model_id);
        if base.starts_with("amazon.titan-embed-text-v2") {
            Some(Family::TitanV2)
        } else if base.starts_with("amazon.titan-embed-text-v1") {
            Some(Family::TitanV1)
        } else if base.starts_with("cohere.embed-english-v3")
            || base.starts_with("cohere.embed-multilingual-v3")
        {
            Some(Family::Cohere)
        } else {
            None
        }
    }

    /// The dimensions this family can return; the first is its default.
    pub fn dimensions(self) -> &'static [u32] {
        match self {
            Family::TitanV2 => &[1024, 512, 256],
            Family::TitanV1 => &[1536],
            Family::Cohere => &[1024],
        }
    }

    /// How many texts one call embeds.
    pub fn batch(self) -> usize {
        match self {
            Family::TitanV2 | Family::TitanV1 => 1,
            Family::Cohere => COHERE_BATCH,
        }
    }

    /// The InvokeModel body embedding `texts` (`batch()` of them at most) in `dimensions`.
    pub fn body(self, texts: &[String], dimensions: u32) -> Value {
        let first = texts.first().map_or("", String::as_str);
        match self {
            Family::TitanV2 => {
                json!({ "inputText": first, "dimensions": dimensions, "normalize": true })
            }
            Family::TitanV1 => json!({ "inputText": first }),
            // `search_document`: what a store of embeddings is built from, OpenAI's only kind.
            Family::Cohere => {
                json!({ "texts": texts, "input_type": "search_document", "truncate": "NONE" })
            }
        }
    }

    /// The texts of the family's own InvokeModel body (Titan's `inputText`, Cohere's `texts`),
    /// as LangChain's `BedrockEmbeddings` and boto3 apps send it.
    pub fn native_texts(self, body: &Map<String, Value>) -> Result<Vec<String>, String> {
        match self {
            Family::TitanV2 | Family::TitanV1 => match body.get("inputText") {
                Some(Value::String(text)) => Ok(vec![text.clone()]),
                _ => Err("inputText: a string is required (Titan's body)".to_owned()),
            },
            Family::Cohere => {
                let texts: Vec<String> = match body.get("texts") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|t| t.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or("texts: strings only")?,
                    _ => return Err("texts: a list of strings is required (Cohere's body)".into()),
                };
                if texts.is_empty() || texts.len() > COHERE_BATCH {
                    return Err(format!(
                        "texts: 1 to {COHERE_BATCH} texts a call, not {}",
                        texts.len()
                    ));
                }
                Ok(texts)
            }
        }
    }

    /// Puts `texts` where [`Family::native_texts`] found them.
    pub fn set_native_texts(self, body: &mut Map<String, Value>, mut texts: Vec<String>) {
        match self {
            Family::TitanV2 | Family::TitanV1 => {
                body.insert("inputText".into(), texts.pop().unwrap_or_default().into());
            }
            Family::Cohere => {
                body.insert("texts".into(), texts.into());
            }
        }
    }

    /// The input tokens an answer's body counts (Titan's does; Cohere's count comes in a header).
    pub fn counted_tokens(self, body: &[u8]) -> Option<u64> {
        match self {
            Family::TitanV2 | Family::TitanV1 => serde_json::from_slice::<TokenCount>(body)
                .ok()
                .map(|c| c.input_text_token_count),
            Family::Cohere => None,
        }
    }

    /// The vectors of an answer, and the input tokens its body counts (Titan's do; Cohere's
    /// count comes in a header).
    pub fn read(self, body: &[u8]) -> Result<(Vec<Vec<f32>>, Option<u64>), String> {
        match self {
            Family::TitanV2 | Family::TitanV1 => {
                let answer: TitanAnswer =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                Ok((vec![answer.embedding], answer.input_text_token_count))
            }
            Family::Cohere => {
                let answer: CohereAnswer =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let vectors = match answer.embeddings {
                    CohereEmbeddings::Floats(v) => v,
                    CohereEmbeddings::ByType { float } => float,
                };
                Ok((vectors, None))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenCount {
    input_text_token_count: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanAnswer {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: Option<u64>,
}

#[derive(Deserialize)]
struct CohereAnswer {
    embeddings: CohereEmbeddings,
}

/// `embeddings_floats` answers hold the vectors; `embeddings_by_type` ones hold them by type.
#[derive(Deserialize)]
#[serde(untagged)]
enum CohereEmbeddings {
    Floats(Vec<Vec<f32>>),
    ByType { float: Vec<Vec<f32>> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_bodies_and_answers() {
        assert_eq!(
            Family::of("amazon.titan-embed-text-v2:0"),
            Some(Family::TitanV2)
        );
        assert_eq!(
            Family::of("cohere.embed-multilingual-v3"),
            Some(Family::Cohere)
        );
        assert_eq!(Family::of("anthropic.claude-haiku-4-5-20251001-v1:0"), None);
        assert_eq!(
            Family::TitanV2.body(&["hi".into()], 256),
            json!({ "inputText": "hi", "dimensions": 256, "normalize": true })
        );
        let (v, n) = Family::TitanV2
            .read(br#"{"embedding":[0.5,0.25],"inputTextTokenCount":3}"#)
            .unwrap();
        assert_eq!((v, n), (vec![vec![0.5, 0.25]], Some(3)));
        let (v, _) = Family::Cohere.read(br#"{"id":"x","texts":["a"],"embeddings":{"float":[[1.0]]},"response_type":"embeddings_by_type"}"#).unwrap();
        assert_eq!(v, vec![vec![1.0]]);
        let (v, _) = Family::Cohere
            .read(br#"{"embeddings":[[1.0],[2.0]]}"#)
            .unwrap();
        assert_eq!(v.len(), 2);
    }
}

//! The original operator's API: `/invoke/{namespace}/{endpoint}` and
//! `/render/{namespace}/{template}`, their bodies and answers (plus our additions, such as
//! streaming), unchanged for apps written against its README.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Body, Names, check_sampling, parse, role};
use crate::{
    bedrock::{Block, ModelRequest, Role},
    calls::{AppState, CallResult, StreamEvent, format_cost},
    errors::ApiError,
};

/// A chat message of the seed's `/invoke` body.
#[derive(Debug, Deserialize)]
struct InvokeMessage {
    role: String,
    content: String,
}

/// The seed's `/invoke` body, plus our additions.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvokeBody {
    messages: Vec<InvokeMessage>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
}

impl InvokeBody {
    fn into_request(self) -> Result<(ModelRequest, Option<u32>, bool), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must hold at least one message"));
        }
        check_sampling(self.temperature, self.top_p, self.max_tokens)?;
        let mut request = ModelRequest {
            system: self.system.filter(|s| !s.is_empty()),
            temperature: self.temperature,
            top_p: self.top_p,
            stop_sequences: self.stop_sequences,
            ..ModelRequest::default()
        };
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = role(&m.role, i)?;
            if i == 0 && role != Role::User {
                return Err(ApiError::invalid("the first message must be from the user"));
            }
            request.push(role, Block::Text(m.content));
        }
        Ok((request, self.max_tokens, self.stream))
    }
}

/// The seed's answer shape.
fn seed_answer(result: &CallResult) -> Value {
    json!({
        "content": result.answer.text,
        "inputTokens": result.answer.usage.input_tokens + result.answer.usage.cache_read_input_tokens + result.answer.usage.cache_write_input_tokens,
        "outputTokens": result.answer.usage.output_tokens,
        "stopReason": result.answer.stop_reason,
        "costUSD": format_cost(result.cost),
    })
}

pub(super) async fn invoke(
    State(state): State<Arc<AppState>>,
    Names(namespace, name): Names,
    Body(body): Body,
) -> Response {
    let outcome = async {
        let endpoint = state.endpoint(&namespace, &name)?;
        let (request, max_tokens, streaming) =
            parse::<InvokeBody>(&body, state.settings.max_body_bytes)?.into_request()?;
        let prepared = state.prepare(endpoint, request, max_tokens).await?;
        if streaming {
            let events = state.call_streaming(prepared).await?;
            return Ok(seed_stream(events, Value::Null));
        }
        let result = state.call(prepared).await?;
        Ok(Json(seed_answer(&result)).into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

/// The seed-style stream: `delta` events, then `done` with the answer (plus `extra` fields), or `error`.
fn seed_stream(events: mpsc::Receiver<StreamEvent>, extra: Value) -> Response {
    sse(events, move |event| match event {
        StreamEvent::Delta(text) => Event::default()
            .event("delta")
            .json_data(json!({ "text": text })),
        StreamEvent::Done(result) => {
            let mut answer = seed_answer(&result);
            merge(&mut answer, &extra);
            Event::default().event("done").json_data(answer)
        }
        StreamEvent::Error(e) => Event::default()
            .event("error")
            .json_data(json!({ "error": { "code": e.code, "message": e.message } })),
        // The seed's API has no tools, so the model is never offered one.
        StreamEvent::ToolCall { .. } | StreamEvent::ToolArguments { .. } => {
            Ok(Event::default().comment("tool call"))
        }
        // The seed's API asks for no reasoning.
        StreamEvent::Reasoning(_) | StreamEvent::ReasoningSignature(_) => {
            Ok(Event::default().comment("reasoning"))
        }
    })
}

fn sse(
    events: mpsc::Receiver<StreamEvent>,
    to_event: impl Fn(StreamEvent) -> Result<Event, axum::Error> + Send + 'static,
) -> Response {
    let stream = stream::unfold(
        events,
        |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
    )
    .map(move |e| {
        Ok::<Event, Infallible>(
            to_event(e).unwrap_or_else(|_| Event::default().event("error").data("{}")),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `/render` body: the template's variables, and the invoke options.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenderBody {
    #[serde(default)]
    variables: serde_json::Map<String, Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stream: bool,
}

pub(super) async fn render(
    State(state): State<Arc<AppState>>,
    Names(namespace, name): Names,
    Body(body): Body,
) -> Response {
    let outcome = async {
        let body: RenderBody = parse(&body, state.settings.max_body_bytes)?;
        check_sampling(body.temperature, body.top_p, body.max_tokens)?;
        if namespace != state.catalog.namespace() {
            return Err(ApiError::not_allowed(&format!("namespace {namespace}")));
        }
        let template = state
            .catalog
            .snapshot()
            .templates
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "template_not_found",
                    format!(
                        "PromptTemplate {namespace}/{name} does not exist (or is not loaded yet)"
                    ),
                )
            })?;
        let compiled = template.compiled.as_ref().map_err(|e| {
            ApiError::unavailable("template_invalid", format!("PromptTemplate {name}: {e}"))
        })?;
        let rendered = compiled
            .render(&body.variables)
            .map_err(|e| ApiError::invalid(format!("PromptTemplate {name}: {e}")))?;
        let about = json!({ "template": template.name, "revision": template.revision });
        if body.dry_run {
            let mut answer =
                json!({ "systemPrompt": rendered.system_prompt, "prompt": rendered.prompt });
            merge(&mut answer, &about);
            return Ok(Json(answer).into_response());
        }
        let endpoint = state.endpoint(&namespace, &template.endpoint)?;
        let mut request = ModelRequest {
            system: rendered.system_prompt,
            temperature: body.temperature,
            top_p: body.top_p,
            ..ModelRequest::default()
        };
        request.push(Role::User, Block::Text(rendered.prompt));
        let prepared = state.prepare(endpoint, request, body.max_tokens).await?;
        if body.stream {
            let events = state.call_streaming(prepared).await?;
            return Ok(seed_stream(events, about));
        }
        let result = state.call(prepared).await?;
        let mut answer = seed_answer(&result);
        merge(&mut answer, &about);
        Ok(Json(answer).into_response())
    };
    outcome.await.unwrap_or_else(ApiError::into_response)
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        a.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

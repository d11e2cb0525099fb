//! The HTTP APIs: the data port (the seed's `/invoke` and `/render` in `seed.rs`, OpenAI's
//! `/v1/...` in `openai.rs`, Bedrock Runtime's `/model/...` in `bedrock_runtime.rs`,
//! Anthropic's Messages in `anthropic.rs`) and the admin port (`/healthz`, `/readyz`, `/metrics`), with what
//! they share: reading bodies, names in paths, refusing web pages.

mod anthropic;
mod bedrock_runtime;
mod embeddings;
mod media;
mod openai;
mod seed;

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use serde_json::Value;

use crate::{
    bedrock::{CachePoint, CacheTtl, Effort, ModelRequest, Role, Thinking},
    calls::AppState,
    errors::ApiError,
};

/// A `cache_control` (`{"type": "ephemeral", "ttl": "5m" | "1h"}`, Anthropic's, which LiteLLM
/// also takes on OpenAI's content parts) as a cache point.
fn cache_control(control: Option<&Value>, at: &str) -> Result<Option<CachePoint>, ApiError> {
    let Some(control) = control.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    if control["type"] != "ephemeral" {
        return Err(ApiError::invalid(format!(
            "{at}.cache_control.type must be \"ephemeral\""
        )));
    }
    let ttl = match control.get("ttl").and_then(Value::as_str) {
        None => None,
        Some(name) => Some(CacheTtl::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!("{at}.cache_control.ttl must be \"5m\" or \"1h\""))
        })?),
    };
    Ok(Some(CachePoint { ttl }))
}

/// Claude's `thinking` (Anthropic's Messages field, and Bedrock's in
/// `additionalModelRequestFields`) with `output_config`'s effort, as the request's thinking.
/// `at` names where they were, for errors.
fn claude_thinking(
    thinking: Option<&Value>,
    output_config: Option<&Value>,
    at: &str,
    request: &mut ModelRequest,
) -> Result<(), ApiError> {
    let effort = match output_config.filter(|c| !c.is_null()) {
        None => None,
        Some(config) => {
            let fields = config
                .as_object()
                .ok_or_else(|| ApiError::invalid(format!("{at}output_config must be an object")))?;
            if let Some(name) = fields.keys().find(|k| *k != "effort") {
                return Err(ApiError::invalid(format!(
                    "{at}output_config.{} is not supported by this sidecar: remove it (see docs/sidecar.md)",
                    truncated(name, 40)
                )));
            }
            fields
                .get("effort")
                .map(|e| {
                    e.as_str().and_then(Effort::from_claude_name).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{at}output_config.effort must be \"low\", \"medium\", \"high\" or \"max\""
                    ))
                })
                })
                .transpose()?
        }
    };
    let kind = thinking
        .filter(|t| !t.is_null())
        .map(|t| (t["type"].as_str(), t));
    match kind {
        None | Some((Some("disabled"), _)) if effort.is_some() => {
            return Err(ApiError::invalid(format!(
                "{at}output_config.effort without adaptive thinking is not supported by this sidecar: add thinking {{\"type\": \"adaptive\"}} or remove it"
            )));
        }
        None => {}
        Some((Some("disabled"), _)) => request.thinking = Some(Thinking::Disabled),
        Some((Some("enabled"), t)) => {
            if effort.is_some() {
                return Err(ApiError::invalid(format!(
                    "{at}output_config.effort goes with adaptive thinking, not with budget_tokens: use one of them"
                )));
            }
            let budget = t["budget_tokens"].as_u64().ok_or_else(|| {
                ApiError::invalid(format!("{at}thinking.budget_tokens: a number is required"))
            })?;
            request.effort = Some(Effort::High);
            request.thinking = Some(Thinking::Budget(u32::try_from(budget).unwrap_or(u32::MAX)));
        }
        Some((Some("adaptive"), t)) => {
            let summarized = match t.get("display").and_then(Value::as_str) {
                None => None,
                Some("summarized") => Some(true),
                Some("omitted") => Some(false),
                Some(_) => {
                    return Err(ApiError::invalid(format!(
                        "{at}thinking.display must be \"summarized\" or \"omitted\""
                    )));
                }
            };
            request.effort = Some(effort.unwrap_or(Effort::High));
            request.thinking = Some(Thinking::Adaptive { summarized });
        }
        Some((other, _)) => {
            return Err(ApiError::invalid(format!(
                "{at}thinking.type must be \"enabled\", \"adaptive\" or \"disabled\", not {}",
                other.map_or_else(
                    || "missing".to_owned(),
                    |k| format!("{:?}", truncated(k, 20))
                )
            )));
        }
    }
    Ok(())
}

type Shared = State<Arc<AppState>>;

/// The data API, for the app's containers.
pub fn data_router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    let routes = Router::new()
        .route("/invoke/{namespace}/{endpoint}", post(seed::invoke))
        .route("/render/{namespace}/{template}", post(seed::render))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route(
            "/model/{model_id}/converse",
            post(bedrock_runtime::converse),
        )
        .route(
            "/model/{model_id}/converse-stream",
            post(bedrock_runtime::converse_stream),
        )
        .route("/model/{model_id}/invoke", post(anthropic::invoke))
        .route(
            "/model/{model_id}/invoke-with-response-stream",
            post(anthropic::invoke_with_response_stream),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route(
            "/model/{model_id}/count-tokens",
            post(bedrock_runtime::count_tokens),
        );
    // A span per model call when traces are on (the routes only: a 404 is no call).
    let routes = match &state.tracer {
        Some(tracer) => routes.route_layer(middleware::from_fn_with_state(
            Arc::clone(tracer),
            crate::traces::trace_requests,
        )),
        None => routes,
    };
    routes
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: see docs/sidecar.md",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(refuse_web_pages))
        .with_state(state)
}

/// Refuses requests a web browser sends on behalf of a site (a cross-site form or fetch, or a page
/// that rebinds its DNS name to 127.0.0.1): browsers name the page's origin, other clients don't.
async fn refuse_web_pages(request: Request, next: Next) -> Response {
    match request.headers().get(header::ORIGIN) {
        Some(origin) if !is_loopback_origin(origin) => ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "requests from web pages are refused: the Origin header names a site other than \
             localhost (see docs/security.md)",
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match authority.strip_prefix("[::1]") {
        Some(rest) => return rest.is_empty() || rest.starts_with(':'),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let port_ok = authority[host.len()..]
        .strip_prefix(':')
        .is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    port_ok && (host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1")
}

/// A route's two path names (namespace and endpoint or template), or our JSON 400 when the path
/// cannot be decoded (invalid UTF-8 after percent-decoding).
pub struct Names(String, String);

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((namespace, name))| Names(namespace, name))
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
    }
}

/// The admin API, for the kubelet and Prometheus.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): Shared) -> Response {
    if !state.catalog.is_loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet",
        )
            .into_response();
    }
    let now = std::time::SystemTime::now();
    let snapshot = state.catalog.snapshot();
    let mut waiting: Vec<String> = snapshot
        .endpoints
        .values()
        .filter_map(|e| {
            let share = e.awaiting_first_share(now);
            let guardrail = e.awaiting_guardrail(now);
            match (share, guardrail) {
                (false, false) => None,
                (true, false) => Some(format!("the first share of {}", e.name)),
                (false, true) => Some(format!("the guardrail of {}", e.name)),
                (true, true) => Some(format!("the first share and guardrail of {}", e.name)),
            }
        })
        .collect();
    if waiting.is_empty() {
        return "ok".into_response();
    }
    waiting.sort_unstable();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("waiting for the operator: {}", waiting.join("; ")),
    )
        .into_response()
}

/// OpenMetrics when asked for (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): Shared, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let (content_type, body) = k8s_ai_api::exposition::negotiate(accept, state.metrics.render());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The request body, or our JSON error when it cannot be read (413 over the size limit).
pub struct Body(Bytes);

impl axum::extract::FromRequest<Arc<AppState>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let timeout = state.settings.client_read_timeout;
        let read = <Bytes as axum::extract::FromRequest<_>>::from_request(req, state);
        let Ok(read) = tokio::time::timeout(timeout, read).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body was not received within {} s (AI_SIDECAR_CLIENT_READ_TIMEOUT)",
                    timeout.as_secs_f64()
                ),
            ));
        };
        read.map(Body).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is over the size limit (AI_SIDECAR_MAX_BODY_BYTES)",
                )
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut: user text echoed in an error.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses a JSON body into `T`, or a 400 (413 when too large) naming what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {limit} bytes"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

fn role(name: &str, index: usize) -> Result<Role, ApiError> {
    match name {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(ApiError::invalid(format!(
            "messages[{index}].role must be \"user\" or \"assistant\", not {:?}",
            truncated(other, 64)
        ))),
    }
}

fn check_sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
) -> Result<(), ApiError> {
    if temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ApiError::invalid("temperature must be between 0 and 1"));
    }
    if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::invalid("topP must be between 0 and 1"));
    }
    if max_tokens == Some(0) {
        return Err(ApiError::invalid("maxTokens must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_origins_pass() {
        let pass = |o: &str| is_loopback_origin(&HeaderValue::from_str(o).unwrap());
        for ok in [
            "http://localhost",
            "http://LOCALHOST:3000",
            "https://127.0.0.1:8443",
            "http://[::1]",
            "http://[::1]:8090",
        ] {
            assert!(pass(ok), "{ok} should pass");
        }
        for refused in [
            "null",
            "file://",
            "http://attacker.example",
            "http://localhost.attacker.example",
            "http://127.0.0.1.attacker.example:80",
            "http://localhost:",
            "http://localhost:80x",
            "http://[::1].attacker.example",
            "http://user@localhost",
            "localhost",
        ] {
            assert!(!pass(refused), "{refused} should be refused");
        }
    }

    #[test]
    fn echoed_text_is_cut_at_a_character_boundary() {
        assert_eq!(truncated("ééé", 2), "éé…");
        assert_eq!(truncated("ab", 2), "ab");
    }
}

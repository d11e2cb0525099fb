//! One call to a model, from any of the sidecar's APIs: the checks before (endpoint allowed,
//! price known, guardrail, limits, budget, credentials), the call, and the accounting after.

use std::{sync::Arc, time::Instant};

use axum::http::StatusCode;
use k8s_ai_api::pricing::{GuardrailUnits, ModelPrice, TokenUsage};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::{
    bedrock::{
        Block, ConverseEvents, Effort, ModelAnswer, ModelRequest, Purpose, ReasoningStyle,
        StreamPart, Thinking, ToolCall, adaptive_thinking_only, caches_prompts, embeddings::Family,
        reasoning_style,
    },
    catalog::{Catalog, EndpointConfig, GuardrailConfig},
    errors::ApiError,
    limits::{Reservation, Tally},
    metrics::{CallLabels, Metrics, RejectLabels, TokenLabels},
    refusals::RefusalLog,
    settings::Settings,
    traces::gen_ai,
};

/// Everything a request handler needs.
pub struct AppState {
    pub settings: Settings,
    pub catalog: Arc<Catalog>,
    pub upstream: crate::bedrock::Upstream,
    pub tally: Tally,
    pub metrics: Metrics,
    /// Warn lines for refused and failed calls, rate-limited.
    pub refusals: Arc<RefusalLog>,
    /// The API server, in cluster mode (usage reports).
    pub kube: Option<kube::Client>,
    /// Images from the URLs the pod allows.
    pub images: crate::fetch::ImageFetcher,
    /// Spans of model calls, when OTLP export is set up.
    pub tracer: Option<Arc<crate::traces::Tracer>>,
}

/// The answer to a completed call.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub answer: ModelAnswer,
    pub cost: Decimal,
}

/// A streamed call's events.
#[derive(Debug)]
pub enum StreamEvent {
    Delta(String),
    /// The model starts tool call `index` (0-based, in the order the calls started).
    ToolCall {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the arguments (JSON text) of tool call `index`.
    ToolArguments {
        index: usize,
        json: String,
    },
    /// More of the model's reasoning (before its answer).
    Reasoning(String),
    /// The signature that closes the reasoning (Claude needs it back in a later turn).
    ReasoningSignature(String),
    Done(CallResult),
    Error(ApiError),
}

/// Refuses a chat request to an embedding model's endpoint and the other way round; an
/// embedding reserves no output tokens.
fn check_purpose(endpoint: &EndpointConfig, request: &mut ModelRequest) -> Result<(), ApiError> {
    let embeds = Family::of(&endpoint.model_to_call).is_some();
    match (request.purpose, embeds) {
        (Purpose::Answer, true) => Err(ApiError::invalid(format!(
            "ModelEndpoint {}'s model {} is an embedding model: call POST /v1/embeddings",
            endpoint.name, endpoint.model_to_call
        ))),
        (Purpose::Embed, false) => Err(ApiError::invalid(format!(
            "ModelEndpoint {}'s model {} is not an embedding model: /v1/embeddings serves Titan Text Embeddings and Cohere Embed 3 endpoints",
            endpoint.name, endpoint.model_to_call
        ))),
        (Purpose::Embed, true) => {
            request.max_tokens = 0;
            Ok(())
        }
        (Purpose::Answer, false) => Ok(()),
    }
}

/// The most `request` can cost: `input` tokens, every one a cache write at the dearest time to
/// live where the request has cache points (writes cost more than input), all its output tokens,
/// and the Bedrock guardrail's text units on all of that.
fn worst_case_cost(price: &ModelPrice, request: &ModelRequest, input: u64) -> Decimal {
    let guardrail = if request.guardrail.is_some() {
        let characters = u64::try_from(request.input_text_len()).unwrap_or(u64::MAX);
        GuardrailUnits::worst_case(characters, u64::from(request.max_tokens)).cost()
    } else {
        Decimal::ZERO
    };
    let hour = Some(crate::bedrock::CacheTtl::OneHour);
    let mut ttls = request.cache_points().map(|p| p.ttl);
    let (writes, hour_writes) = match ttls.next() {
        None => (0, 0),
        Some(first) if first == hour || ttls.any(|t| t == hour) => (input, input),
        Some(_) => (input, 0),
    };
    price
        .cost(&TokenUsage {
            input_tokens: input - writes,
            output_tokens: u64::from(request.max_tokens),
            cache_write_input_tokens: writes,
            cache_write_1h_input_tokens: hour_writes,
            ..TokenUsage::default()
        })
        .checked_add(guardrail)
        .unwrap_or(Decimal::MAX)
}

/// Fits a request for reasoning to the endpoint's model: how the family is told to reason, and
/// for Claude its thinking (adaptive where the model has it, else a budget) within the
/// endpoint's token cap, on top of the answer's tokens.
fn apply_reasoning(endpoint: &EndpointConfig, request: &mut ModelRequest) -> Result<(), ApiError> {
    let model = &endpoint.model_to_call;
    if adaptive_thinking_only(model)
        && matches!(
            request.thinking,
            Some(Thinking::Budget(_) | Thinking::Disabled)
        )
    {
        return Err(ApiError::invalid(format!(
            "thinking: {model} takes adaptive thinking only (Bedrock refuses a budget or disabled thinking on it): use thinking {{\"type\": \"adaptive\"}} with output_config.effort, or leave thinking out"
        )));
    }
    let Some(effort) = request.effort else {
        return Ok(());
    };
    let style = reasoning_style(model).ok_or_else(|| {
        ApiError::invalid(format!(
            "reasoning: {model} has no reasoning setting on Bedrock (Claude 3.7 and 4, Nova 2 and gpt-oss have): remove it"
        ))
    })?;
    request.reasoning_style = Some(style);
    if style == ReasoningStyle::ClaudeThinking
        && matches!(request.thinking, Some(Thinking::Adaptive { .. }))
    {
        return Err(ApiError::invalid(format!(
            "thinking.type adaptive: {model} has extended thinking only (adaptive thinking is Claude 4.6's and later's): use type enabled with budget_tokens"
        )));
    }
    if effort == Effort::Max && style != ReasoningStyle::ClaudeAdaptive {
        return Err(ApiError::invalid(format!(
            "effort max: {model} has no adaptive thinking, which max is an effort of: use low, medium or high"
        )));
    }
    if !matches!(
        style,
        ReasoningStyle::ClaudeThinking | ReasoningStyle::ClaudeAdaptive
    ) {
        return Ok(());
    }
    if request
        .temperature
        .is_some_and(|t| (t - 1.0).abs() > f32::EPSILON)
        || request.top_p.is_some_and(|p| p < 0.95)
    {
        return Err(ApiError::invalid(
            "reasoning with temperature or top_p: Claude thinks only at temperature 1 and top_p of 0.95 or more; remove them",
        ));
    }
    let cap = endpoint.spec.max_tokens;
    match request.thinking {
        // A budget the app set itself (Anthropic's and Bedrock's `thinking`) counts within its
        // max_tokens, as Anthropic counts it; a model without budgets refuses it upstream.
        Some(Thinking::Budget(budget)) => {
            if budget < 1024 || budget >= request.max_tokens {
                return Err(ApiError::invalid(format!(
                    "thinking.budget_tokens must be at least 1,024 and under max_tokens ({}, at most ModelEndpoint {}'s maxTokens of {cap})",
                    request.max_tokens, endpoint.name
                )));
            }
            return Ok(());
        }
        // So does adaptive thinking the app asked for itself.
        Some(Thinking::Adaptive { .. } | Thinking::Disabled) => return Ok(()),
        None => {}
    }
    let total = request
        .max_tokens
        .saturating_add(effort.thinking_budget())
        .min(cap);
    if style == ReasoningStyle::ClaudeAdaptive {
        // An effort from the OpenAI API wants the reasoning back: ask for its summary where the
        // model would leave it out.
        request.max_tokens = total;
        request.thinking = Some(Thinking::Adaptive {
            summarized: adaptive_thinking_only(model).then_some(true),
        });
        return Ok(());
    }
    // Claude's budget must be under max_tokens, and at least 1,024.
    let budget = effort.thinking_budget().min(total.saturating_sub(1));
    if budget < 1024 {
        return Err(ApiError::invalid(format!(
            "reasoning: ModelEndpoint {}'s maxTokens of {cap} leaves no room for Claude's thinking (at least 1,024 tokens, under maxTokens)",
            endpoint.name
        )));
    }
    request.max_tokens = total;
    request.thinking = Some(Thinking::Budget(budget));
    Ok(())
}

/// One embedding call's answer and Bedrock's count of its input tokens.
type EmbedCall = Result<(bytes::Bytes, u64), ApiError>;

/// The vectors of an embedding call, what Bedrock counted and what it cost.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: u64,
    pub cost: Decimal,
}

/// Embedding calls made at once for one request (Titan embeds one text a call).
const EMBED_CONCURRENCY: usize = 8;

/// A call that passed every check and holds its reservations.
pub struct Prepared {
    endpoint: Arc<EndpointConfig>,
    price: ModelPrice,
    request: ModelRequest,
    reservation: Reservation,
    started: Instant,
}

impl Prepared {
    /// The request's texts in order, as the guardrail left them (an embedding request's inputs).
    fn texts(&self) -> Vec<String> {
        self.request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Formats dollars with at least 6 decimals (the seed's `"0.000224"`), more when the exact value has them.
pub fn format_cost(cost: Decimal) -> String {
    let mut c = cost.normalize();
    if c.scale() < 6 {
        c.rescale(6);
    }
    c.to_string()
}

/// A rough count for text whose real count Bedrock never reported (a stream cut short).
fn estimated_tokens(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

impl AppState {
    fn reject(&self, endpoint: &EndpointConfig, err: ApiError) -> ApiError {
        let labels = RejectLabels {
            namespace: Arc::clone(&endpoint.metric_labels.namespace),
            endpoint: Arc::clone(&endpoint.metric_labels.endpoint),
            reason: err.code,
        };
        if err.status == StatusCode::TOO_MANY_REQUESTS && err.code != "budget_exceeded" {
            self.metrics.rate_limited.get_or_create(&labels).inc();
        } else {
            self.metrics.rejected.get_or_create(&labels).inc();
        }
        self.log_refusal(endpoint, &err);
        err
    }

    /// A warn line (rate-limited) for a call refused or failed; an app hanging up is not one.
    fn log_refusal(&self, endpoint: &EndpointConfig, err: &ApiError) {
        gen_ai::failed(err);
        if err.code != "client_closed" {
            self.refusals
                .record(err, &endpoint.metric_labels, &self.settings.pod_name);
        }
    }

    /// The endpoint `name` of `namespace`, if this pod may use it.
    pub fn endpoint(&self, namespace: &str, name: &str) -> Result<Arc<EndpointConfig>, ApiError> {
        if namespace != self.catalog.namespace() || !self.catalog.allows(name) {
            return Err(ApiError::not_allowed(&format!(
                "ModelEndpoint {namespace}/{name}"
            )));
        }
        self.catalog
            .snapshot()
            .endpoints
            .get(name)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "endpoint_not_found",
                    format!(
                        "ModelEndpoint {namespace}/{name} does not exist (or is not loaded yet)"
                    ),
                )
            })
    }

    /// The endpoint's guardrail on what the app sends: the local PII filter masks or blocks
    /// (`guardrail_blocked`), and the synced Bedrock guardrail is named for the call.
    fn guard_input(
        &self,
        endpoint: &EndpointConfig,
        request: &mut ModelRequest,
    ) -> Result<(), ApiError> {
        let Some(guardrail) = &endpoint.guardrail else {
            return Ok(());
        };
        if let Some(problem) = &guardrail.problem {
            return Err(self.reject(
                endpoint,
                ApiError::unavailable("guardrail_unavailable", problem.clone()),
            ));
        }
        if let Some(pii) = &guardrail.pii {
            for text in request.texts_mut() {
                match pii.apply(text) {
                    Ok(std::borrow::Cow::Borrowed(_)) => {}
                    Ok(std::borrow::Cow::Owned(masked)) => {
                        gen_ai::guardrail("masked");
                        *text = masked;
                    }
                    Err(blocked) => {
                        gen_ai::guardrail("blocked");
                        self.tally.reject(endpoint, "guardrail_blocked");
                        let message = format!(
                            "{} (sensitive information: {})",
                            guardrail.blocked_input_message, blocked.entity
                        );
                        return Err(self.reject(
                            endpoint,
                            ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "guardrail_blocked",
                                message,
                            ),
                        ));
                    }
                }
            }
        }
        request.guardrail.clone_from(&guardrail.bedrock);
        Ok(())
    }

    /// Bedrock's count of the input tokens `request` would be billed (CountTokens, which is free:
    /// no limit or budget is taken). The guardrail's input checks apply: the text leaves the pod.
    pub async fn count_tokens(
        &self,
        endpoint: Arc<EndpointConfig>,
        mut request: ModelRequest,
    ) -> Result<u64, ApiError> {
        self.guard_input(&endpoint, &mut request)?;
        let spec = &endpoint.spec;
        self.upstream
            .count_tokens(
                &spec.region,
                spec.irsa_role_arn.as_deref(),
                &endpoint.model_to_call,
                &request,
                self.settings.upstream_timeout,
            )
            .await
    }

    /// Every check before a call; on success the call's limits and budget are reserved.
    pub async fn prepare(
        &self,
        endpoint: Arc<EndpointConfig>,
        mut request: ModelRequest,
        asked_max_tokens: Option<u32>,
    ) -> Result<Prepared, ApiError> {
        gen_ai::started(&endpoint, &request);
        let price = endpoint.price.clone().map_err(|e| {
            self.reject(
                &endpoint,
                ApiError::unavailable("price_unknown", e.to_string()),
            )
        })?;
        request.max_tokens = asked_max_tokens
            .unwrap_or(endpoint.spec.max_tokens)
            .clamp(1, endpoint.spec.max_tokens);
        request.check_media().map_err(ApiError::invalid)?;
        request.check_blank_text().map_err(ApiError::invalid)?;
        check_purpose(&endpoint, &mut request)?;
        apply_reasoning(&endpoint, &mut request)?;
        if self.settings.prompt_cache == crate::settings::PromptCache::Auto
            && request.purpose == Purpose::Answer
            && caches_prompts(&endpoint.model_to_call)
        {
            request.place_cache_points();
        }
        self.guard_input(&endpoint, &mut request)?;
        gen_ai::sent(&request);
        // Credentials first, within the request's deadline and holding no reservation: a request
        // that waits on STS never keeps another from its share of the limits or the budget.
        let started = Instant::now();
        let deadline = self.settings.upstream_timeout;
        tokio::time::timeout(
            deadline,
            self.upstream
                .check_credentials(endpoint.spec.irsa_role_arn.as_deref()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::unavailable(
                "credentials_unavailable",
                format!("no AWS credentials within the request's deadline of {deadline:?}"),
            ))
        })
        .map_err(|e| self.reject(&endpoint, e))?;
        let worst_case_input = request.worst_case_input_tokens();
        let worst_case = worst_case_cost(&price, &request, worst_case_input);
        let reservation = self
            .tally
            .admit(
                &endpoint,
                worst_case_input + u64::from(request.max_tokens),
                worst_case,
            )
            .map_err(|e| self.reject(&endpoint, e))?;
        gen_ai::admitted();
        Ok(Prepared {
            endpoint,
            price,
            request,
            reservation,
            started,
        })
    }

    /// Accounts for a finished call: ledger, metrics; returns the exact cost (tokens, and the
    /// Bedrock guardrail's text units).
    fn account(
        &self,
        prepared: Prepared,
        usage: &TokenUsage,
        guardrail_units: GuardrailUnits,
        outcome: &'static str,
    ) -> Decimal {
        let Prepared {
            endpoint,
            price,
            reservation,
            started,
            ..
        } = prepared;
        let cost = price
            .cost(usage)
            .checked_add(guardrail_units.cost())
            .unwrap_or(Decimal::MAX);
        reservation.settle(
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_write_input_tokens,
            usage.output_tokens,
            cost,
        );
        gen_ai::settled(usage, cost);
        let labels = CallLabels {
            endpoint: endpoint.metric_labels.clone(),
            outcome,
        };
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics.invocations.get_or_create(&labels).inc();
        self.metrics
            .cost
            .get_or_create(&labels.endpoint)
            .inc_by(decimal_to_f64(cost));
        for (direction, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_write_input_tokens),
        ] {
            if n > 0 {
                let l = TokenLabels {
                    endpoint: labels.endpoint.clone(),
                    direction,
                };
                self.metrics.tokens.get_or_create(&l).inc_by(n);
            }
        }
        cost
    }

    #[allow(clippy::needless_pass_by_value)] // taking it drops it: that is what gives the reservations back
    fn failed(&self, prepared: Prepared, err: ApiError) -> ApiError {
        let labels = CallLabels {
            endpoint: prepared.endpoint.metric_labels.clone(),
            outcome: err.code,
        };
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(prepared.started.elapsed().as_secs_f64());
        self.metrics.invocations.get_or_create(&labels).inc();
        if err.code == "upstream_throttled" {
            let l = RejectLabels {
                namespace: labels.endpoint.namespace,
                endpoint: labels.endpoint.endpoint,
                reason: err.code,
            };
            self.metrics.rate_limited.get_or_create(&l).inc();
        }
        self.log_refusal(&prepared.endpoint, &err);
        // Dropping `prepared` gives back its reservations: Bedrock charged nothing for a failed call.
        err
    }

    /// The answer after the call: an intervention by the guardrail (Bedrock's or ours on the
    /// output) is a 422, with the tokens still charged.
    fn check_output(endpoint: &EndpointConfig, answer: &mut ModelAnswer) -> Result<(), ApiError> {
        let Some(guardrail) = &endpoint.guardrail else {
            return Ok(());
        };
        if answer.stop_reason == "guardrail_intervened" {
            gen_ai::guardrail("blocked");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "guardrail_blocked",
                answer.text.clone(),
            ));
        }
        if let Some(pii) = &guardrail.pii {
            match pii.apply(&answer.text) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(std::borrow::Cow::Owned(masked)) => {
                    gen_ai::guardrail("masked");
                    answer.text = masked;
                }
                Err(blocked) => {
                    gen_ai::guardrail("blocked");
                    return Err(output_blocked(guardrail, &blocked));
                }
            }
            for call in &mut answer.tool_calls {
                if let Some(masked) = filtered_arguments(pii, guardrail, &call.arguments)? {
                    call.arguments = masked;
                }
            }
        }
        Ok(())
    }

    /// Embeds the text blocks of a prepared embedding request in `dimensions`, in order: one
    /// InvokeModel a text for Titan, 96 for Cohere, a few at once. Tokens Bedrock counted are
    /// charged even when another call of the request failed.
    pub async fn embed(
        &self,
        prepared: Prepared,
        family: Family,
        dimensions: u32,
    ) -> Result<Embedded, ApiError> {
        let texts = prepared.texts();
        let bodies = texts
            .chunks(family.batch())
            .map(|batch| {
                let body = bytes::Bytes::from(family.body(batch, dimensions).to_string());
                (body, batch.iter().map(String::len).sum())
            })
            .collect();
        let (answers, input_tokens, cost) = self.embed_calls(prepared, family, bodies).await?;
        let mut vectors = Vec::new();
        for answer in answers {
            let (v, _) = family.read(&answer).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("Bedrock's embedding could not be read: {e}"),
                )
            })?;
            vectors.extend(v);
        }
        Ok(Embedded {
            vectors,
            input_tokens,
            cost,
        })
    }

    /// One InvokeModel with the app's own embedding body (`fields`), its texts replaced by the
    /// prepared ones (masked, where the guardrail masks): Bedrock's answer as it sent it, and
    /// what it counted and cost.
    pub async fn embed_native(
        &self,
        prepared: Prepared,
        family: Family,
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(bytes::Bytes, u64, Decimal), ApiError> {
        let texts = prepared.texts();
        let size = texts.iter().map(String::len).sum();
        family.set_native_texts(&mut fields, texts);
        let body = bytes::Bytes::from(serde_json::Value::Object(fields).to_string());
        let (mut answers, tokens, cost) = self
            .embed_calls(prepared, family, vec![(body, size)])
            .await?;
        Ok((answers.pop().unwrap_or_default(), tokens, cost))
    }

    /// Sends embedding `bodies` (each with its texts' size, for an estimate Bedrock never needed
    /// so far), a few at once, and charges what Bedrock counted: the answers' bodies in order.
    async fn embed_calls(
        &self,
        prepared: Prepared,
        family: Family,
        bodies: Vec<(bytes::Bytes, usize)>,
    ) -> Result<(Vec<bytes::Bytes>, u64, Decimal), ApiError> {
        use futures_util::StreamExt;
        let endpoint = Arc::clone(&prepared.endpoint);
        let (spec, model) = (&endpoint.spec, endpoint.model_to_call.as_str());
        let deadline = self
            .settings
            .upstream_timeout
            .saturating_sub(prepared.started.elapsed());
        self.metrics.in_flight.inc();
        let results: Vec<EmbedCall> = futures_util::stream::iter(bodies)
            .map(|(body, size)| async move {
                let invoked = self
                    .upstream
                    .invoke(
                        &spec.region,
                        spec.irsa_role_arn.as_deref(),
                        model,
                        body,
                        deadline,
                    )
                    .await?;
                // Bedrock's count, else (never seen) at least a token per 4 bytes.
                let tokens = family
                    .counted_tokens(&invoked.body)
                    .or(invoked.input_tokens)
                    .unwrap_or_else(|| estimated_tokens(size));
                Ok((invoked.body, tokens))
            })
            .buffered(EMBED_CONCURRENCY)
            .collect()
            .await;
        self.metrics.in_flight.dec();
        let (mut answers, mut input_tokens, mut failure) = (Vec::new(), 0u64, None);
        for result in results {
            match result {
                Ok((answer, tokens)) => {
                    answers.push(answer);
                    input_tokens += tokens;
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if input_tokens == 0
            && let Some(e) = failure
        {
            return Err(self.failed(prepared, e));
        }
        let usage = TokenUsage {
            input_tokens,
            ..TokenUsage::default()
        };
        let outcome = failure.as_ref().map_or("success", |e| e.code);
        if let Some(e) = &failure {
            gen_ai::failed(e);
        }
        let cost = self.account(prepared, &usage, GuardrailUnits::default(), outcome);
        match failure {
            Some(e) => Err(e),
            None => Ok((answers, input_tokens, cost)),
        }
    }

    /// Calls the model and waits for the whole answer.
    pub async fn call(&self, prepared: Prepared) -> Result<CallResult, ApiError> {
        self.metrics.in_flight.inc();
        let spec = &prepared.endpoint.spec;
        let result = self
            .upstream
            .converse(
                &spec.region,
                spec.irsa_role_arn.as_deref(),
                &prepared.endpoint.model_to_call,
                &prepared.request,
                // What is left of the request's deadline after waiting for credentials.
                self.settings
                    .upstream_timeout
                    .saturating_sub(prepared.started.elapsed()),
            )
            .await;
        self.metrics.in_flight.dec();
        self.metrics
            .credential_refreshes
            .set(i64::try_from(self.upstream.roles().refreshes()).unwrap_or(i64::MAX));
        match result {
            Ok(mut answer) => {
                let endpoint = Arc::clone(&prepared.endpoint);
                let checked = Self::check_output(&endpoint, &mut answer);
                if let Err(e) = &checked {
                    self.log_refusal(&endpoint, e);
                }
                gen_ai::answered(&answer, checked.is_ok());
                let outcome = checked.as_ref().err().map_or("success", |e| e.code);
                let cost = self.account(prepared, &answer.usage, answer.guardrail_units, outcome);
                checked.map(|()| CallResult { answer, cost })
            }
            Err(e) => Err(self.failed(prepared, e)),
        }
    }

    /// Calls the model with ConverseStream; events arrive on the returned channel. If the app
    /// goes away, the upstream stream is dropped (cancelled) and what was used is still charged.
    pub async fn call_streaming(
        self: &Arc<Self>,
        prepared: Prepared,
    ) -> Result<mpsc::Receiver<StreamEvent>, ApiError> {
        let spec = &prepared.endpoint.spec;
        let stream = self
            .upstream
            .converse_stream(
                &spec.region,
                spec.irsa_role_arn.as_deref(),
                &prepared.endpoint.model_to_call,
                &prepared.request,
                self.settings
                    .upstream_timeout
                    .saturating_sub(prepared.started.elapsed()),
            )
            .await;
        let stream = match stream {
            Ok(s) => s,
            Err(e) => return Err(self.failed(prepared, e)),
        };
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::clone(self);
        // The pump outlives the handler: it carries the request's span and ends it.
        let span = crate::traces::current();
        tokio::spawn(crate::traces::within(span, async move {
            state.pump(prepared, stream, tx).await;
        }));
        Ok(rx)
    }

    async fn pump(
        &self,
        prepared: Prepared,
        mut stream: ConverseEvents,
        tx: mpsc::Sender<StreamEvent>,
    ) {
        self.metrics.in_flight.inc();
        let mut received = Received::new(stream_filter(&prepared.endpoint));
        let (mut first, mut failure) = (true, None);
        // A stream silent for a whole upstream timeout is over: Bedrock sends a token, a metadata
        // or a stop event long before that, and a stalled connection would otherwise hang forever.
        let silence = self.settings.upstream_timeout;
        loop {
            let Ok(next) = tokio::time::timeout(silence, stream.next()).await else {
                failure = Some(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "Bedrock's stream sent nothing for {} s (AI_SIDECAR_UPSTREAM_TIMEOUT)",
                        silence.as_secs_f64()
                    ),
                ));
                break;
            };
            let part = match next {
                Ok(Some(part)) => part,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if first
                && matches!(
                    part,
                    StreamPart::Text(_) | StreamPart::ToolStart { .. } | StreamPart::Reasoning(_)
                )
            {
                first = false;
                self.metrics
                    .time_to_first_token
                    .get_or_create(&prepared.endpoint.metric_labels)
                    .observe(prepared.started.elapsed().as_secs_f64());
            }
            let sent = match received.take(part) {
                Ok(events) => forward(&tx, events).await,
                Err(blocked) => Err(blocked),
            };
            if let Err(e) = sent {
                failure = Some(e);
                break;
            }
        }
        drop(stream); // cancels the upstream stream if we stopped early
        let Received {
            pii,
            pending,
            text,
            reasoning,
            reasoning_signature,
            tool_calls,
            stop_reason,
            reported,
            ..
        } = received;
        // The stream is over: what was held back leaves, filtered, before the closing event.
        match held_back_release(pii, &pending, failure.as_ref()) {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => {
                let _ = tx.send(StreamEvent::Delta(rest)).await;
            }
            Err(blocked) => failure = Some(blocked),
        }
        self.metrics.in_flight.dec();
        // What was used is charged even when the stream broke: Bedrock's count if it came, else an estimate.
        let received = text.len()
            + reasoning.len()
            + tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>();
        let (usage, guardrail_units) =
            reported.unwrap_or_else(|| estimated_use(&prepared.request, received));
        let mut answer = ModelAnswer {
            text,
            reasoning,
            reasoning_signature,
            tool_calls,
            stop_reason,
            usage,
            guardrail_units,
        };
        let endpoint = Arc::clone(&prepared.endpoint);
        let checked = match failure {
            Some(e) => Err(e),
            None => Self::check_output(&endpoint, &mut answer),
        };
        if let Err(e) = &checked {
            self.log_refusal(&endpoint, e);
        }
        gen_ai::answered(&answer, checked.is_ok());
        let outcome = checked.as_ref().err().map_or("success", |e| e.code);
        let usage = answer.usage;
        let cost = self.account(prepared, &usage, answer.guardrail_units, outcome);
        let event = match checked {
            Ok(()) => StreamEvent::Done(CallResult { answer, cost }),
            Err(e) => StreamEvent::Error(e),
        };
        let _ = tx.send(event).await;
    }
}

/// What a stream has received so far, and what of it the PII filter still holds back.
struct Received<'a> {
    pii: Option<(&'a crate::pii::PiiFilter, &'a GuardrailConfig)>,
    /// With a PII filter, text leaves only once the filter has seen it with what follows it (see
    /// `PiiFilter::releasable`): what was received and not yet released.
    pending: String,
    text: String,
    reasoning: String,
    reasoning_signature: String,
    tool_calls: Vec<ToolCall>,
    /// The content block of each tool call (Bedrock numbers text blocks too).
    tool_blocks: Vec<u32>,
    /// With a PII filter, a call's arguments leave whole, filtered, once the next call starts or
    /// the answer ends (a masked string cannot be cut into deltas): the calls sent so far.
    arguments_sent: usize,
    stop_reason: String,
    /// Bedrock's count of tokens and guardrail units, from the metadata event.
    reported: Option<(TokenUsage, GuardrailUnits)>,
}

impl<'a> Received<'a> {
    fn new(pii: Option<(&'a crate::pii::PiiFilter, &'a GuardrailConfig)>) -> Self {
        Received {
            pii,
            pending: String::new(),
            text: String::new(),
            reasoning: String::new(),
            reasoning_signature: String::new(),
            tool_calls: Vec::new(),
            tool_blocks: Vec::new(),
            arguments_sent: 0,
            stop_reason: String::new(),
            reported: None,
        }
    }

    /// The events `part` sends to the app now; a refusal by the PII filter ends the stream.
    fn take(&mut self, part: StreamPart) -> Result<Vec<StreamEvent>, ApiError> {
        Ok(match part {
            StreamPart::Text(delta) => {
                self.text.push_str(&delta);
                let delta = filtered(self.pii, &mut self.pending, delta)?;
                if delta.is_empty() {
                    vec![]
                } else {
                    vec![StreamEvent::Delta(delta)]
                }
            }
            StreamPart::ToolStart { block, id, name } => {
                // The previous call's arguments, then text held back by the PII filter, leave
                // before the call that follows them.
                let mut events = self.filtered_arguments()?;
                let rest = held_back_release(self.pii, &self.pending, None)?;
                self.pending.clear();
                let index = self.tool_calls.len();
                self.tool_blocks.push(block);
                self.tool_calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
                if !rest.is_empty() {
                    events.push(StreamEvent::Delta(rest));
                }
                events.push(StreamEvent::ToolCall { index, id, name });
                events
            }
            StreamPart::ToolInput { block, json } => {
                match self.tool_blocks.iter().position(|b| *b == block) {
                    Some(index) => {
                        self.tool_calls[index].arguments.push_str(&json);
                        if self.pii.is_some() {
                            vec![]
                        } else {
                            vec![StreamEvent::ToolArguments { index, json }]
                        }
                    }
                    None => vec![],
                }
            }
            // Reasoning goes out as it comes: the PII filter reads the answer, not the thinking.
            StreamPart::Reasoning(text) => {
                self.reasoning.push_str(&text);
                vec![StreamEvent::Reasoning(text)]
            }
            StreamPart::ReasoningSignature(signature) => {
                self.reasoning_signature.push_str(&signature);
                vec![StreamEvent::ReasoningSignature(signature)]
            }
            StreamPart::Stop(reason) => {
                self.stop_reason = reason;
                self.filtered_arguments()?
            }
            StreamPart::Usage(tokens, units) => {
                self.reported = Some((tokens, units));
                vec![]
            }
            StreamPart::Other => vec![],
        })
    }
}

impl Received<'_> {
    /// With a PII filter, the arguments of the calls not sent yet, filtered whole.
    fn filtered_arguments(&mut self) -> Result<Vec<StreamEvent>, ApiError> {
        let Some((filter, guardrail)) = self.pii else {
            return Ok(vec![]);
        };
        let mut events = Vec::new();
        for index in self.arguments_sent..self.tool_calls.len() {
            let arguments = &self.tool_calls[index].arguments;
            let json = filtered_arguments(filter, guardrail, arguments)?
                .unwrap_or_else(|| arguments.clone());
            if !json.is_empty() {
                events.push(StreamEvent::ToolArguments { index, json });
            }
        }
        self.arguments_sent = self.tool_calls.len();
        Ok(events)
    }
}

/// Sends `events` to the app; an app that went away ends the stream.
async fn forward(tx: &mpsc::Sender<StreamEvent>, events: Vec<StreamEvent>) -> Result<(), ApiError> {
    for event in events {
        tx.send(event).await.map_err(|_| {
            ApiError::new(
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_closed",
                "the app closed the connection",
            )
        })?;
    }
    Ok(())
}

/// What a stream that ended without Bedrock's count (its metadata event) is charged: tokens
/// estimated from what was sent and received, and every priced policy of a Bedrock guardrail on
/// those characters.
fn estimated_use(request: &ModelRequest, received: usize) -> (TokenUsage, GuardrailUnits) {
    let tokens = TokenUsage {
        input_tokens: estimated_tokens(request.input_text_len()),
        output_tokens: estimated_tokens(received),
        ..TokenUsage::default()
    };
    if request.guardrail.is_none() {
        return (tokens, GuardrailUnits::default());
    }
    let units = request.input_text_len().div_ceil(1000) + received.div_ceil(1000);
    let units = u64::try_from(units).unwrap_or(u64::MAX);
    let units = GuardrailUnits {
        content: units,
        topic: units,
        sensitive_information: units,
        ..GuardrailUnits::default()
    };
    (tokens, units)
}

/// The endpoint's local PII filter, with its guardrail (for the refusal's message).
fn stream_filter(endpoint: &EndpointConfig) -> Option<(&crate::pii::PiiFilter, &GuardrailConfig)> {
    let guardrail = endpoint.guardrail.as_deref()?;
    Some((guardrail.pii.as_ref()?, guardrail))
}

/// What of a stream's `delta` may leave now: all of it without a PII filter, else what the filter
/// releases of the text held back so far (`pending`) with it.
fn filtered(
    pii: Option<(&crate::pii::PiiFilter, &GuardrailConfig)>,
    pending: &mut String,
    delta: String,
) -> Result<String, ApiError> {
    let Some((filter, guardrail)) = pii else {
        return Ok(delta);
    };
    pending.push_str(&delta);
    let (release, used) = filter
        .releasable(pending, crate::pii::STREAM_HOLD_BACK)
        .map_err(|blocked| output_blocked(guardrail, &blocked))?;
    pending.drain(..used);
    Ok(release)
}

/// What of the held-back text leaves when a stream ends: all of it, filtered, after a clean end;
/// after a broken one, up to its last whitespace (what follows may be the first part of an entity
/// that never arrived whole); nothing after a refusal, or when the app is gone.
fn held_back_release(
    pii: Option<(&crate::pii::PiiFilter, &GuardrailConfig)>,
    pending: &str,
    failure: Option<&ApiError>,
) -> Result<String, ApiError> {
    let Some((filter, guardrail)) = pii else {
        return Ok(String::new());
    };
    let whole = match failure {
        None => pending,
        Some(e) if e.code == "guardrail_blocked" || e.code == "client_closed" => {
            return Ok(String::new());
        }
        Some(_) => pending
            .rfind(char::is_whitespace)
            .map_or("", |i| &pending[..=i]),
    };
    filter
        .releasable(whole, 0)
        .map(|(rest, _)| rest)
        .map_err(|blocked| output_blocked(guardrail, &blocked))
}

/// A tool call's arguments through the PII filter: each string in the JSON masked as the answer's
/// text is (arguments that are not JSON, as text), or the call refused. `None`: nothing to mask.
fn filtered_arguments(
    filter: &crate::pii::PiiFilter,
    guardrail: &GuardrailConfig,
    arguments: &str,
) -> Result<Option<String>, ApiError> {
    fn mask(
        filter: &crate::pii::PiiFilter,
        value: &mut serde_json::Value,
    ) -> Result<bool, crate::pii::Blocked> {
        Ok(match value {
            serde_json::Value::String(text) => match filter.apply(text)? {
                std::borrow::Cow::Borrowed(_) => false,
                std::borrow::Cow::Owned(masked) => {
                    *text = masked;
                    true
                }
            },
            serde_json::Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= mask(filter, item)?;
                }
                changed
            }
            serde_json::Value::Object(fields) => {
                let mut changed = false;
                for item in fields.values_mut() {
                    changed |= mask(filter, item)?;
                }
                changed
            }
            _ => false,
        })
    }
    let blocked = |b: crate::pii::Blocked| output_blocked(guardrail, &b);
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(mut value) => Ok(mask(filter, &mut value)
            .map_err(blocked)?
            .then(|| value.to_string())),
        Err(_) => match filter.apply(arguments).map_err(blocked)? {
            std::borrow::Cow::Borrowed(_) => Ok(None),
            std::borrow::Cow::Owned(masked) => Ok(Some(masked)),
        },
    }
}

/// The refusal of an answer in which the local PII filter found a `BLOCK` entity.
fn output_blocked(guardrail: &GuardrailConfig, blocked: &crate::pii::Blocked) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "guardrail_blocked",
        format!(
            "{} (sensitive information: {})",
            guardrail.blocked_output_message, blocked.entity
        ),
    )
}

fn decimal_to_f64(d: Decimal) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    d.to_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_shown_like_the_seed() {
        assert_eq!(format_cost(Decimal::new(279, 6)), "0.000279");
        assert_eq!(format_cost(Decimal::ZERO), "0.000000");
        assert_eq!(format_cost(Decimal::new(875, 8)), "0.00000875");
        assert_eq!(format_cost(Decimal::new(12, 1)), "1.200000");
    }
}

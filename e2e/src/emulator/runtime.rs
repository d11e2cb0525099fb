//! Bedrock Runtime: `Converse`, `ConverseStream` (AWS event-stream framing), `InvokeModel` with
//! the Anthropic Messages body, and `ApplyGuardrail`.

use std::time::{Duration, Instant};

use aws_smithy_types::event_stream::{Header, HeaderValue as EsValue, Message};
use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use k8s_ai_api::model_id::{self, Route};

use super::{
    Caller, Emulator, Record, cache,
    config::{Config, Faults, OutputMode, glob_match},
    embeddings,
    error::AwsError,
    guardrails::{Assessment, Policy, Source},
    media, random_token, reasoning,
    text::{self, count_tokens},
    tools::{self, ToolConfig, ToolUse},
};

/// The base model id behind a model id, inference profile id or ARN.
pub fn base_model_id(model_id: &str) -> &str {
    k8s_ai_api::model_id::base_model_id(model_id)
}

/// What a request asked the model, normalised from Converse or Anthropic Messages bodies.
struct Prompt {
    /// Text blocks in order: system first, then every message's text.
    texts: Vec<String>,
    last_user_text: String,
    max_tokens: u32,
    stop_sequences: Vec<String>,
    /// The text before each `cachePoint` (tools, system, messages, in order), and its TTL.
    cache_points: Vec<(String, cache::Ttl)>,
    /// The base model called (set once the model is known).
    model: String,
    /// The framing tokens billed around the texts (`text::framing_tokens`).
    framing: u64,
    tools: Option<ToolConfig>,
    /// The last user turn answers tool calls (the model answers from the results).
    answers_tools: bool,
    /// The schema the answer must follow (`outputConfig.textFormat`), if any.
    output_schema: Option<Value>,
    has_images: bool,
    /// How the model is asked to reason (`additionalModelRequestFields`), if it is.
    reasoning: Option<reasoning::Asked>,
}

/// The guardrail a request names.
struct GuardrailUse {
    id: String,
    policy: Policy,
    trace: bool,
}

/// The outcome of one model call.
struct Outcome {
    text: String,
    stop: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    cache: cache::CacheUse,
    trace: Option<Value>,
    /// The guardrail's text units, input and output summed (recorded for tests to price).
    guardrail_usage: Option<Value>,
    tool_uses: Vec<ToolUse>,
    /// The model's reasoning before its answer, and its signature.
    reasoning: Option<(String, String)>,
}

/// An assessment as a Converse trace shows it: what the policies found, and what was charged.
fn traced(assessment: Option<&Assessment>, usage: &Value) -> Value {
    let mut traced = assessment.map_or(json!({}), Assessment::to_json);
    traced["invocationMetrics"] = json!({ "guardrailProcessingLatency": 1, "usage": usage });
    traced
}

/// Two `usage` objects of text units added up, field by field.
fn add_usage(a: &Value, b: &Value) -> Value {
    let mut sum = a.clone();
    if let (Some(sum), Some(b)) = (sum.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            let total = sum.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
            sum.insert(k.clone(), json!(total));
        }
    }
    sum
}

impl Outcome {
    /// A call that bills `input_tokens` and produces no text (an embedding; a count, at 0).
    fn input_only(input_tokens: u64) -> Self {
        Outcome {
            text: String::new(),
            stop: "end_turn",
            input_tokens,
            output_tokens: 0,
            cache: cache::CacheUse::default(),
            trace: None,
            guardrail_usage: None,
            tool_uses: Vec::new(),
            reasoning: None,
        }
    }

    fn usage(&self) -> Value {
        let mut usage = json!({
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens + self.cache.read + self.cache.write(),
        });
        if self.cache.read + self.cache.write() > 0 {
            usage["cacheReadInputTokens"] = json!(self.cache.read);
            usage["cacheWriteInputTokens"] = json!(self.cache.write());
            usage["cacheDetails"] = self.cache.details();
        }
        usage
    }
}

fn parse_json(body: &[u8]) -> Result<Value, AwsError> {
    serde_json::from_slice(body).map_err(|e| {
        AwsError::validation(format!(
            "Malformed input request: {e}, please reformat your input and try again."
        ))
    })
}

fn converse_prompt(body: &Value) -> Result<Prompt, AwsError> {
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or_else(|| {
        AwsError::validation("1 validation error detected: Value at 'messages' failed to satisfy constraint: Member must not be null")
    })?;
    let tools = tools::read_config(body)?;
    let output_schema = tools::read_output_schema(body)?;
    tools::check_history(messages, tools.is_some())?;
    let mut texts = Vec::new();
    let mut cache_points = Vec::new();
    // The prompt as the model reads it, in order: tools, system, messages.
    let mut seen = String::new();
    if let Some(config) = &tools {
        seen.push_str(&config.text);
        if let Some(ttl) = config.cache_point {
            cache_points.push((seen.clone(), ttl));
        }
    }
    let (mut media_tokens, mut images, mut documents) = (0u64, 0usize, 0usize);
    // Every block's text as the model reads it: texts, tool calls (name and input), tool results.
    let mut take_blocks = |blocks: &Value,
                           at: &str,
                           texts: &mut Vec<String>|
     -> Result<String, AwsError> {
        let mut own = String::new();
        for (j, block) in blocks.as_array().into_iter().flatten().enumerate() {
            let read = if let Some(t) = block["text"].as_str() {
                if t.trim().is_empty() {
                    return Err(AwsError::validation(format!(
                        "The text field in the ContentBlock object at {at}.content.{j} is blank. Add text to the text field, and try again."
                    )));
                }
                t.to_owned()
            } else if let Some(call) = block.get("toolUse") {
                format!(
                    "{}{}",
                    call["name"].as_str().unwrap_or_default(),
                    call["input"]
                )
            } else if let Some(image) = block.get("image") {
                media_tokens += media::image_tokens(image, &format!("{at}.content.{j}.image"))?;
                images += 1;
                continue;
            } else if let Some(document) = block.get("document") {
                media_tokens +=
                    media::document_tokens(document, &format!("{at}.content.{j}.document"))?;
                documents += 1;
                continue;
            } else if let Some(result) = block.get("toolResult") {
                result["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        c["text"]
                            .as_str()
                            .map_or_else(|| c["json"].to_string(), str::to_owned)
                    })
                    .collect()
            } else {
                if let Some(point) = block.get("cachePoint") {
                    let ttl = cache::read_point(point, &format!("{at}.content.{j}.cachePoint"))?;
                    cache_points.push((seen.clone(), ttl));
                }
                continue;
            };
            seen.push_str(&read);
            own.push_str(&read);
            texts.push(read);
        }
        Ok(own)
    };
    let system = !take_blocks(&body["system"], "system", &mut texts)?.is_empty();
    let mut last_user_text = String::new();
    let mut answers_tools = false;
    let mut previous_role = "";
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            )));
        }
        if i == 0 && role != "user" {
            return Err(AwsError::validation(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ));
        }
        if role == previous_role {
            return Err(AwsError::validation(
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.",
            ));
        }
        previous_role = role;
        if !m["content"].is_array() {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value at 'messages.{}.member.content' failed to satisfy constraint: Member must not be null",
                i + 1
            )));
        }
        let own = take_blocks(&m["content"], &format!("messages.{i}"), &mut texts)?;
        if role == "user" {
            last_user_text = own;
            answers_tools = m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b.get("toolResult").is_some());
        }
    }
    media::check_counts(images, documents)?;
    let reasoning = reasoning::read(body, messages)?;
    let config = &body["inferenceConfig"];
    let max_tokens = match config["maxTokens"].as_i64() {
        Some(n) if n < 1 => {
            return Err(AwsError::validation(
                "The maximum tokens you requested must be at least 1.",
            ));
        }
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => 4096,
    };
    let stop_sequences = config["stopSequences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    Ok(Prompt {
        texts,
        last_user_text,
        max_tokens,
        stop_sequences,
        cache_points,
        model: String::new(),
        framing: text::framing_tokens(messages.len(), system)
            + media_tokens
            + tools.as_ref().map_or(0, |t| t.tokens)
            + output_schema
                .as_ref()
                .map_or(0, |s| count_tokens(&s.to_string())),
        tools,
        answers_tools,
        output_schema,
        has_images: images > 0,
        reasoning,
    })
}

/// Anthropic Messages (`anthropic_version`, `max_tokens`, `messages` with string or block content).
fn anthropic_prompt(body: &Value) -> Result<Prompt, AwsError> {
    if body["anthropic_version"].as_str().is_none() {
        return Err(AwsError::validation(
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
        ));
    }
    let max_tokens = body["max_tokens"].as_u64().filter(|n| *n >= 1).ok_or_else(|| {
        AwsError::validation("Malformed input request: #: required key [max_tokens] not found, please reformat your input and try again.")
    })?;
    let text_of = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
            _ => String::new(),
        }
    };
    let mut texts = vec![text_of(&body["system"])];
    let system = !texts[0].is_empty();
    let mut last_user_text = String::new();
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or_else(|| {
        AwsError::validation("Malformed input request: #: required key [messages] not found, please reformat your input and try again.")
    })?;
    for m in messages {
        let t = text_of(&m["content"]);
        if m["role"] == "user" {
            last_user_text.clone_from(&t);
        }
        texts.push(t);
    }
    let stop_sequences = body["stop_sequences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    Ok(Prompt {
        texts,
        last_user_text,
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        stop_sequences,
        cache_points: Vec::new(),
        model: String::new(),
        framing: text::framing_tokens(messages.len(), system),
        tools: None,
        answers_tools: false,
        output_schema: None,
        has_images: false,
        reasoning: None,
    })
}

/// Deterministic fraction in [0, 1) for call `n`.
fn golden(n: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // only the fractional part matters
    let x = n as f64 * 0.618_033_988_749_895;
    x.fract()
}

fn injected_fault(faults: &Faults, n: u64) -> Option<AwsError> {
    let throttled = faults
        .throttle_every_n
        .is_some_and(|every| every > 0 && n.is_multiple_of(every))
        || faults.throttle_fraction.is_some_and(|f| golden(n) < f);
    if throttled {
        return Some(AwsError::throttling());
    }
    if faults
        .error_every_n
        .is_some_and(|every| every > 0 && n.is_multiple_of(every))
    {
        return Some(match faults.error_status {
            Some(503) => AwsError::unavailable(),
            Some(408) => AwsError::model_timeout(),
            _ => AwsError::internal(),
        });
    }
    None
}

/// The base id of the model `model_id` reaches from `region`, as strictly as Bedrock checks it:
/// the model must be in the region's catalogue, a bare id must allow on-demand calls, a profile
/// must be one the region offers for the model, an ARN must name the caller's region.
fn served_model<'a>(config: &Config, region: &str, model_id: &'a str) -> Result<&'a str, AwsError> {
    let invalid = || AwsError::validation("The provided model identifier is invalid.");
    let called = model_id::parse(model_id).ok_or_else(invalid)?;
    if called.arn_region.is_some_and(|r| r != region) {
        return Err(invalid());
    }
    let model = config
        .catalogue
        .get(region)
        .and_then(|models| models.iter().find(|m| m.model_id == called.base))
        .ok_or_else(invalid)?;
    let prefix = match called.route {
        Route::InRegion if model.on_demand() => return Ok(called.base),
        Route::InRegion => {
            // Bedrock's words, with its typographic apostrophe.
            return Err(AwsError::validation(format!(
                "Invocation of model ID {} with on-demand throughput isn’t supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
                called.base
            )));
        }
        Route::Geographic(prefix) => prefix,
        Route::Global => model_id::GLOBAL_PREFIX,
    };
    if model.profile_prefixes(region).iter().any(|p| p == prefix) {
        Ok(called.base)
    } else {
        Err(invalid())
    }
}

impl Emulator {
    /// Everything before the model runs: signature, model, permission, faults, guardrail lookup.
    fn admit(
        &self,
        caller: &Caller,
        model_id: &str,
        guardrail_config: &Value,
    ) -> Result<Option<GuardrailUse>, AwsError> {
        let config = self.config();
        let base = served_model(&config, &caller.region, model_id)?;
        if !caller
            .principal
            .allowed_models()
            .iter()
            .any(|p| glob_match(p, base))
        {
            return Err(AwsError::access_denied(format!(
                "User: {} is not authorized to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:{}::foundation-model/{base} because no identity-based policy allows the bedrock:InvokeModel action",
                caller.principal.arn(),
                caller.region
            )));
        }
        if let Some(fault) = injected_fault(&config.faults, self.next_runtime_call()) {
            return Err(fault);
        }
        let Some(identifier) = guardrail_config["guardrailIdentifier"].as_str() else {
            return Ok(None);
        };
        let version = guardrail_config["guardrailVersion"]
            .as_str()
            .unwrap_or("DRAFT");
        let store = self.0.guardrails.lock().map_err(|_| AwsError::internal())?;
        let (id, policy) = store
            .find(identifier)
            .and_then(|g| Some((g.id.clone(), g.at(version)?.clone())))
            .ok_or_else(|| {
                AwsError::validation(
                    "The guardrail identifier or version provided in the request does not exist.",
                )
            })?;
        Ok(Some(GuardrailUse {
            id,
            policy,
            trace: guardrail_config["trace"] == "enabled",
        }))
    }

    /// Runs the model on `prompt`, with the guardrail on its input and output.
    fn run_model(&self, prompt: &Prompt, guardrail: Option<&GuardrailUse>) -> Outcome {
        let mut input_assessment: Option<Assessment> = None;
        let mut last_user_text = prompt.last_user_text.clone();
        let input_usage = guardrail.map(|g| g.policy.usage(&prompt.texts.concat()));
        if let Some(g) = guardrail {
            let assessed = g.policy.assess(&prompt.texts.concat(), Source::Input);
            if assessed.intervened() {
                last_user_text = g.policy.assess(&last_user_text, Source::Input).text;
            }
            if assessed.blocked {
                let usage = input_usage.clone().unwrap_or_default();
                let trace = g.trace.then(|| json!({ "guardrail": { "inputAssessment": { g.id.clone(): traced(Some(&assessed), &usage) } } }));
                return Outcome {
                    text: g.policy.blocked_message(Source::Input),
                    stop: "guardrail_intervened",
                    input_tokens: 0,
                    output_tokens: 0,
                    cache: cache::CacheUse::default(),
                    trace,
                    guardrail_usage: Some(usage),
                    tool_uses: Vec::new(),
                    reasoning: None,
                };
            }
            input_assessment = Some(assessed);
        }
        let all_input: u64 =
            prompt.texts.iter().map(|t| count_tokens(t)).sum::<u64>() + prompt.framing;
        let cache = self.0.prompt_cache.lock().map_or_else(
            |_| cache::CacheUse::default(),
            |mut store| {
                store.run(
                    &prompt.model,
                    &prompt.cache_points,
                    all_input,
                    Instant::now(),
                )
            },
        );
        let tool_uses = match &prompt.tools {
            Some(config) if !prompt.answers_tools => {
                // A model told what to say (a fixed answer) says it in its arguments too.
                let words = match &self.config().output {
                    OutputMode::Fixed { text } => text.clone(),
                    _ => last_user_text.clone(),
                };
                tools::calls(config, &last_user_text, &words, &random_token(16))
            }
            _ => Vec::new(),
        };
        let (mut answer, stop) = if let Some(schema) = prompt
            .output_schema
            .as_ref()
            .filter(|_| tool_uses.is_empty())
        {
            (
                tools::structured_answer(schema, &last_user_text),
                "end_turn",
            )
        } else if tool_uses.is_empty() {
            let (answer, stop) = text::answer(
                &self.config().output,
                &last_user_text,
                prompt.max_tokens,
                &prompt.stop_sequences,
            );
            (answer, stop.as_str())
        } else {
            // Claude says what it is about to do when it chooses a tool itself, not when forced.
            let names: Vec<&str> = tool_uses.iter().map(|t| t.name.as_str()).collect();
            let text = match prompt.tools.as_ref().map(|t| &t.choice) {
                Some(tools::Choice::Auto) => format!("Calling {}.", names.join(" and ")),
                _ => String::new(),
            };
            (text, "tool_use")
        };
        let mut reasoning = prompt
            .reasoning
            .as_ref()
            .filter(|asked| asked.thinks())
            .map(|_| reasoning::think(&last_user_text, &random_token(32)));
        // Thinking is billed whole, shown or not.
        let output_tokens = count_tokens(&answer)
            + tool_uses.iter().map(ToolUse::output_tokens).sum::<u64>()
            + reasoning.as_ref().map_or(0, |(text, _)| count_tokens(text));
        if let (Some((text, _)), Some(asked)) = (&mut reasoning, &prompt.reasoning)
            && !asked.shows_thinking(&prompt.model)
        {
            text.clear();
        }
        // A masked input is an intervention too (ApplyGuardrail reports GUARDRAIL_INTERVENED for it).
        let input_masked = input_assessment
            .as_ref()
            .is_some_and(Assessment::intervened);
        let mut stop = if input_masked {
            "guardrail_intervened"
        } else {
            stop
        };
        let mut output_assessment = None;
        let output_usage = guardrail.map(|g| g.policy.usage(&answer));
        if let Some(g) = guardrail {
            let assessed = g.policy.assess(&answer, Source::Output);
            if assessed.blocked {
                answer = g.policy.blocked_message(Source::Output);
                stop = "guardrail_intervened";
            } else if assessed.intervened() {
                answer.clone_from(&assessed.text);
                stop = "guardrail_intervened";
            }
            output_assessment = Some(assessed);
        }
        let (input_usage, output_usage) = (
            input_usage.unwrap_or_default(),
            output_usage.unwrap_or_default(),
        );
        let trace = guardrail.filter(|g| g.trace).map(|g| {
            json!({ "guardrail": {
                "inputAssessment": { g.id.clone(): traced(input_assessment.as_ref(), &input_usage) },
                "outputAssessments": { g.id.clone(): [traced(output_assessment.as_ref(), &output_usage)] },
            } })
        });
        let guardrail_usage = guardrail.map(|_| add_usage(&input_usage, &output_usage));
        Outcome {
            text: answer,
            stop,
            input_tokens: all_input - cache.read - cache.write(),
            output_tokens,
            cache,
            trace,
            guardrail_usage,
            tool_uses,
            reasoning,
        }
    }

    /// Sleeps for the configured model latency; no timer at all when it is zero (a zero-length
    /// tokio sleep still waits for the next millisecond tick).
    async fn simulate_latency(&self, output_tokens: u64) {
        let latency = self.model_latency(output_tokens);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    fn model_latency(&self, output_tokens: u64) -> Duration {
        let config = self.config();
        let latency = &config.latency;
        Duration::from_millis(latency.fixed_ms + latency.per_output_token_ms * output_tokens)
    }

    fn record_call(
        &self,
        operation: &str,
        model_id: &str,
        caller: Option<&Caller>,
        result: Result<&Outcome, &AwsError>,
        guardrail: Option<&str>,
    ) {
        let (input_tokens, output_tokens) = result.map_or((0, 0), |o| {
            (
                o.input_tokens + o.cache.read + o.cache.write(),
                o.output_tokens,
            )
        });
        self.record(Record {
            service: "bedrock-runtime",
            operation: operation.to_owned(),
            model_id: Some(model_id.to_owned()),
            region: caller.map(|c| c.region.clone()),
            principal: caller.map(|c| c.principal.arn()),
            error: result.err().map(|e| e.code),
            input_tokens,
            output_tokens,
            guardrail: guardrail.map(str::to_owned),
            guardrail_usage: result.ok().and_then(|o| o.guardrail_usage.clone()),
            ..Record::default()
        });
    }
}

/// A runtime request that passed signature, body, model, permission, fault and guardrail checks.
struct Accepted {
    caller: Caller,
    prompt: Prompt,
    guardrail: Option<GuardrailUse>,
}

impl Emulator {
    /// Everything before the model runs, for `operation`; a refusal is recorded and answered.
    #[allow(clippy::result_large_err)] // the Err is the finished HTTP answer
    fn accept(
        &self,
        operation: &str,
        model_id: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        read: impl FnOnce(&Value) -> Result<(Prompt, Value), AwsError>,
    ) -> Result<Accepted, Response> {
        let caller = self
            .authenticate_bedrock(headers, body, "POST", uri)
            .map_err(|e| {
                self.record_call(operation, model_id, None, Err(&e), None);
                e.into_response()
            })?;
        let accepted = parse_json(body).and_then(|request| {
            let (mut prompt, guardrail_config) = read(&request)?;
            let guardrail = self.admit(&caller, model_id, &guardrail_config)?;
            base_model_id(model_id).clone_into(&mut prompt.model);
            cache::check_points(&prompt.cache_points, &prompt.model)?;
            if let Some(tools) = &prompt.tools {
                tools::check_choice_supported(tools, base_model_id(model_id))?;
            }
            reasoning::check(
                prompt.reasoning.as_ref(),
                base_model_id(model_id),
                &request,
                prompt.max_tokens,
            )?;
            if prompt.has_images && !media::reads_images(base_model_id(model_id)) {
                return Err(AwsError::validation(
                    "This model doesn't support the image content block that you provided. Try again with a model that supports images.",
                ));
            }
            if prompt.output_schema.is_some() && !tools::has_structured_outputs(base_model_id(model_id)) {
                return Err(AwsError::validation(
                    "This model doesn't support the outputConfig.textFormat field. Remove outputConfig.textFormat and try again.",
                ));
            }
            Ok((prompt, guardrail))
        });
        match accepted {
            Ok((prompt, guardrail)) => Ok(Accepted {
                caller,
                prompt,
                guardrail,
            }),
            Err(e) => {
                self.record_call(operation, model_id, Some(&caller), Err(&e), None);
                Err(e.into_response())
            }
        }
    }
}

/// When a model call is recorded: a whole answer once the model's latency has passed (its
/// record's time is when it answered), a stream as it starts.
#[derive(Clone, Copy, PartialEq)]
enum Answered {
    Whole,
    Streamed,
}

impl Emulator {
    /// A model call of `operation`: accepted (a refusal recorded and answered), run, recorded.
    #[allow(clippy::result_large_err)] // the Err is the finished HTTP answer
    async fn serve_model(
        &self,
        (operation, model_id): (&str, &str),
        request: (&Uri, &HeaderMap, &[u8]),
        read: impl FnOnce(&Value) -> Result<(Prompt, Value), AwsError>,
        answered: Answered,
    ) -> Result<Outcome, Response> {
        let (uri, headers, body) = request;
        let Accepted {
            caller,
            prompt,
            guardrail,
        } = self.accept(operation, model_id, uri, headers, body, read)?;
        let outcome = self.run_model(&prompt, guardrail.as_ref());
        if answered == Answered::Whole {
            self.simulate_latency(outcome.output_tokens).await;
        }
        self.record_call(
            operation,
            model_id,
            Some(&caller),
            Ok(&outcome),
            guardrail.as_ref().map(|g| g.id.as_str()),
        );
        Ok(outcome)
    }
}

pub async fn converse(
    State(emulator): State<Emulator>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _in_flight = emulator.call_in_flight();
    let outcome = match emulator
        .serve_model(
            ("Converse", &model_id),
            (&uri, &headers, &body),
            |r| Ok((converse_prompt(r)?, r["guardrailConfig"].clone())),
            Answered::Whole,
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(answer) => return answer,
    };
    let mut content = Vec::new();
    if let Some((text, signature)) = &outcome.reasoning {
        content.push(json!({ "reasoningContent": { "reasoningText": { "text": text, "signature": signature } } }));
    }
    if !outcome.text.is_empty() || outcome.tool_uses.is_empty() {
        content.push(json!({ "text": outcome.text }));
    }
    content.extend(
        outcome
            .tool_uses
            .iter()
            .map(|t| json!({ "toolUse": t.to_json() })),
    );
    let mut answer = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": outcome.stop,
        "usage": outcome.usage(),
        "metrics": { "latencyMs": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) },
    });
    if let Some(trace) = &outcome.trace {
        answer["trace"] = trace.clone();
    }
    Json(answer).into_response()
}

/// One event-stream frame.
fn frame(
    message_type: &'static str,
    type_header: (&'static str, &'static str),
    payload: &Value,
) -> Bytes {
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            type_header.0,
            EsValue::String(type_header.1.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            EsValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            EsValue::String(message_type.into()),
        ));
    let mut buf = Vec::with_capacity(128);
    // Writing to a Vec only fails on frames over 16 MiB, which these never are.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut buf);
    Bytes::from(buf)
}

fn event(event_type: &'static str, payload: &Value) -> Bytes {
    frame("event", (":event-type", event_type), payload)
}

/// What the stream writer does at each step.
enum Step {
    Send(Bytes),
    Wait(Duration),
    Stall,
    Drop,
    End,
}

pub async fn converse_stream(
    State(emulator): State<Emulator>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let in_flight = emulator.call_in_flight();
    let outcome = match emulator
        .serve_model(
            ("ConverseStream", &model_id),
            (&uri, &headers, &body),
            |r| Ok((converse_prompt(r)?, r["guardrailConfig"].clone())),
            Answered::Streamed,
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(answer) => return answer,
    };

    let config = emulator.config();
    let faults = &config.faults;
    let per_token = Duration::from_millis(config.latency.per_output_token_ms);
    let mut steps = vec![
        Step::Wait(Duration::from_millis(config.latency.fixed_ms)),
        Step::Send(event("messageStart", &json!({ "role": "assistant" }))),
    ];
    // Reasoning comes first, in a block of its own closed by its signature.
    let text_block = u32::from(outcome.reasoning.is_some());
    if let Some((thinking, signature)) = &outcome.reasoning {
        for piece in text::chunks(thinking).chunks(4) {
            steps.push(Step::Send(event(
                "contentBlockDelta",
                &json!({ "contentBlockIndex": 0, "delta": { "reasoningContent": { "text": piece.concat() } } }),
            )));
        }
        steps.push(Step::Send(event(
            "contentBlockDelta",
            &json!({ "contentBlockIndex": 0, "delta": { "reasoningContent": { "signature": signature } } }),
        )));
        steps.push(Step::Send(event(
            "contentBlockStop",
            &json!({ "contentBlockIndex": 0 }),
        )));
    }
    for (i, chunk) in text::chunks(&outcome.text).into_iter().enumerate() {
        let sent = u32::try_from(i).unwrap_or(u32::MAX);
        if faults.stream_stall_after_tokens == Some(sent) {
            steps.push(Step::Stall);
            break;
        }
        if faults.stream_drop_after_tokens == Some(sent) {
            // Let what was sent reach the client first, as when a real connection dies mid-answer.
            steps.push(Step::Wait(Duration::from_millis(20)));
            steps.push(Step::Drop);
            break;
        }
        if faults.stream_error_after_tokens == Some(sent) {
            let payload = json!({ "message": "The model stream was interrupted.", "originalStatusCode": 500, "originalMessage": "stream error" });
            steps.push(Step::Send(frame(
                "exception",
                (":exception-type", "modelStreamErrorException"),
                &payload,
            )));
            // As Bedrock does: the exception is the stream's last message; the response ends cleanly.
            steps.push(Step::End);
            break;
        }
        if !per_token.is_zero() {
            steps.push(Step::Wait(per_token));
        }
        steps.push(Step::Send(event(
            "contentBlockDelta",
            &json!({ "contentBlockIndex": text_block, "delta": { "text": chunk } }),
        )));
    }
    if !matches!(steps.last(), Some(Step::Stall | Step::Drop | Step::End)) {
        let mut block = text_block;
        if !outcome.text.is_empty() || outcome.tool_uses.is_empty() {
            steps.push(Step::Send(event(
                "contentBlockStop",
                &json!({ "contentBlockIndex": text_block }),
            )));
            block += 1;
        }
        // Each tool call is a block of its own: a start naming it, its input as JSON text in
        // pieces, a stop.
        for tool in &outcome.tool_uses {
            steps.push(Step::Send(event(
                "contentBlockStart",
                &json!({ "contentBlockIndex": block, "start": { "toolUse": { "toolUseId": tool.id, "name": tool.name } } }),
            )));
            let input = tool.input.to_string();
            for piece in text::chunks(&input).chunks(4) {
                steps.push(Step::Send(event(
                    "contentBlockDelta",
                    &json!({ "contentBlockIndex": block, "delta": { "toolUse": { "input": piece.concat() } } }),
                )));
            }
            steps.push(Step::Send(event(
                "contentBlockStop",
                &json!({ "contentBlockIndex": block }),
            )));
            block += 1;
        }
        steps.push(Step::Send(event(
            "messageStop",
            &json!({ "stopReason": outcome.stop }),
        )));
        let latency_ms = emulator.model_latency(outcome.output_tokens).as_millis();
        let mut metadata = json!({ "usage": outcome.usage(), "metrics": { "latencyMs": u64::try_from(latency_ms).unwrap_or(u64::MAX) } });
        if let Some(trace) = &outcome.trace {
            metadata["trace"] = trace.clone();
        }
        steps.push(Step::Send(event("metadata", &metadata)));
    }
    event_stream(steps, in_flight)
}

/// An event-stream response that plays `steps`; the call counts as in flight until its last
/// event is sent (or the client goes away).
fn event_stream(steps: Vec<Step>, in_flight: super::InFlightCall) -> Response {
    let stream = futures_util::stream::unfold(
        (steps.into_iter(), in_flight),
        |(mut steps, in_flight)| async move {
            loop {
                match steps.next()? {
                    Step::Wait(d) => {
                        if !d.is_zero() {
                            tokio::time::sleep(d).await;
                        }
                    }
                    Step::Send(bytes) => {
                        return Some((Ok::<Bytes, std::io::Error>(bytes), (steps, in_flight)));
                    }
                    Step::Stall => {
                        futures_util::future::pending::<()>().await;
                    }
                    Step::End => return None,
                    Step::Drop => {
                        return Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "injected stream drop",
                            )),
                            (steps, in_flight),
                        ));
                    }
                }
            }
        },
    );
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    response
}

/// InvokeModelWithResponseStream: the Anthropic Messages stream events, each as Bedrock wraps
/// them (`chunk` events whose `bytes` are the event's JSON, base64), the last one carrying
/// `amazon-bedrock-invocationMetrics`.
pub async fn invoke_model_with_response_stream(
    State(emulator): State<Emulator>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let in_flight = emulator.call_in_flight();
    let read = |request: &Value| invoke_request(&model_id, &headers, request);
    let outcome = match emulator
        .serve_model(
            ("InvokeModelWithResponseStream", &model_id),
            (&uri, &headers, &body),
            read,
            Answered::Streamed,
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(answer) => return answer,
    };
    let config = emulator.config();
    let per_token = Duration::from_millis(config.latency.per_output_token_ms);
    let chunk = |anthropic_event: &Value| {
        let bytes = aws_smithy_types::base64::encode(anthropic_event.to_string());
        Step::Send(event("chunk", &json!({ "bytes": bytes })))
    };
    let mut steps = vec![
        Step::Wait(Duration::from_millis(config.latency.fixed_ms)),
        chunk(&json!({ "type": "message_start", "message": {
            "id": format!("msg_bdrk_{}", random_token(24)), "type": "message", "role": "assistant",
            "model": base_model_id(&model_id), "content": [], "stop_reason": Value::Null,
            "stop_sequence": Value::Null,
            "usage": { "input_tokens": outcome.input_tokens, "output_tokens": 1 },
        } })),
        chunk(
            &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
    ];
    for piece in text::chunks(&outcome.text) {
        if !per_token.is_zero() {
            steps.push(Step::Wait(per_token));
        }
        steps.push(chunk(&json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": piece } })));
    }
    let latency_ms = u64::try_from(emulator.model_latency(outcome.output_tokens).as_millis())
        .unwrap_or(u64::MAX);
    steps.push(chunk(&json!({ "type": "content_block_stop", "index": 0 })));
    steps.push(chunk(&json!({ "type": "message_delta",
        "delta": { "stop_reason": anthropic_stop_reason(&outcome), "stop_sequence": Value::Null },
        "usage": { "output_tokens": outcome.output_tokens } })));
    steps.push(chunk(
        &json!({ "type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": outcome.input_tokens, "outputTokenCount": outcome.output_tokens,
        "invocationLatency": latency_ms, "firstByteLatency": config.latency.fixed_ms,
    } }),
    ));
    event_stream(steps, in_flight)
}

/// An InvokeModel body (Anthropic Messages only) and the guardrail its headers name.
fn invoke_request(
    model_id: &str,
    headers: &HeaderMap,
    request: &Value,
) -> Result<(Prompt, Value), AwsError> {
    if !base_model_id(model_id).starts_with("anthropic.") {
        return Err(AwsError::validation(
            "This emulator's InvokeModel accepts Anthropic Messages bodies only; use Converse for other models.",
        ));
    }
    let prompt = anthropic_prompt(request)?;
    // InvokeModel names its guardrail in headers, not in the body.
    let guardrail_config = match (
        headers.get("x-amzn-bedrock-guardrailidentifier"),
        headers.get("x-amzn-bedrock-guardrailversion"),
    ) {
        (Some(id), version) => json!({
            "guardrailIdentifier": id.to_str().unwrap_or_default(),
            "guardrailVersion": version.and_then(|v| v.to_str().ok()).unwrap_or("DRAFT"),
        }),
        _ => Value::Null,
    };
    Ok((prompt, guardrail_config))
}

/// The Anthropic Messages stop reason of an outcome.
fn anthropic_stop_reason(outcome: &Outcome) -> &'static str {
    match outcome.stop {
        "end_turn" => "end_turn",
        "max_tokens" => "max_tokens",
        "stop_sequence" => "stop_sequence",
        _ => "guardrail_intervened",
    }
}

pub async fn invoke_model(
    State(emulator): State<Emulator>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _in_flight = emulator.call_in_flight();
    if let Some(kind) = embeddings::kind(base_model_id(&model_id)) {
        return emulator
            .embed(kind, &model_id, (&uri, &headers, &body))
            .await;
    }
    let read = |request: &Value| invoke_request(&model_id, &headers, request);
    let outcome = match emulator
        .serve_model(
            ("InvokeModel", &model_id),
            (&uri, &headers, &body),
            read,
            Answered::Whole,
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(answer) => return answer,
    };
    let stop_reason = anthropic_stop_reason(&outcome);
    let answer = json!({
        "id": format!("msg_bdrk_{}", random_token(24)),
        "type": "message",
        "role": "assistant",
        "model": base_model_id(&model_id),
        "content": [ { "type": "text", "text": outcome.text } ],
        "stop_reason": stop_reason,
        "stop_sequence": Value::Null,
        "usage": { "input_tokens": outcome.input_tokens, "output_tokens": outcome.output_tokens },
    });
    let mut response = Json(answer).into_response();
    let h = response.headers_mut();
    for (name, value) in [
        ("x-amzn-bedrock-input-token-count", outcome.input_tokens),
        ("x-amzn-bedrock-output-token-count", outcome.output_tokens),
        (
            "x-amzn-bedrock-invocation-latency",
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ),
    ] {
        h.insert(name, HeaderValue::from(value));
    }
    response
}

impl Emulator {
    /// InvokeModel on an embedding model: accepted as every model call is, answered with
    /// vectors, billed per input token (`x-amzn-bedrock-input-token-count`, as Bedrock sends it).
    async fn embed(
        &self,
        kind: embeddings::Kind,
        model_id: &str,
        (uri, headers, body): (&Uri, &HeaderMap, &[u8]),
    ) -> Response {
        let mut asked = None;
        let read = |request: &Value| {
            let r = embeddings::read(kind, request)?;
            let prompt = Prompt {
                texts: r.texts.clone(),
                last_user_text: String::new(),
                max_tokens: 0,
                stop_sequences: Vec::new(),
                cache_points: Vec::new(),
                model: String::new(),
                framing: 0,
                tools: None,
                answers_tools: false,
                output_schema: None,
                has_images: false,
                reasoning: None,
            };
            asked = Some(r);
            Ok((prompt, Value::Null))
        };
        let accepted = match self.accept("InvokeModel", model_id, uri, headers, body, read) {
            Ok(accepted) => accepted,
            Err(answer) => return answer,
        };
        let Some(asked) = asked else {
            return AwsError::internal().into_response();
        };
        let (answer, tokens) = embeddings::answer(kind, &asked);
        self.simulate_latency(0).await;
        let outcome = Outcome::input_only(tokens);
        self.record_call(
            "InvokeModel",
            model_id,
            Some(&accepted.caller),
            Ok(&outcome),
            None,
        );
        let mut response = Json(answer).into_response();
        response.headers_mut().insert(
            "x-amzn-bedrock-input-token-count",
            HeaderValue::from(tokens),
        );
        response
    }
}

/// CountTokens: the input tokens a Converse input (or an Anthropic InvokeModel body) would be
/// billed, caching aside; free, and recorded with no tokens billed.
pub async fn count_tokens_route(
    State(emulator): State<Emulator>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let read = |request: &Value| {
        if !base_model_id(&model_id).starts_with("anthropic.") {
            return Err(AwsError::validation(
                "The provided model doesn't support counting tokens.",
            ));
        }
        let input = &request["input"];
        let prompt = if let Some(converse) = input.get("converse") {
            let mut converse = converse.clone();
            // A count needs no answer: any maxTokens is fine.
            converse["inferenceConfig"] = json!({ "maxTokens": 1 });
            converse_prompt(&converse)?
        } else if let Some(body) = input["invokeModel"]["body"].as_str() {
            anthropic_prompt(&parse_json(body.as_bytes())?)?
        } else {
            return Err(AwsError::validation(
                "1 validation error detected: Value at 'input' failed to satisfy constraint: Member must have exactly one member set",
            ));
        };
        Ok((prompt, Value::Null))
    };
    let accepted = match emulator.accept("CountTokens", &model_id, &uri, &headers, &body, read) {
        Ok(accepted) => accepted,
        Err(answer) => return answer,
    };
    let prompt = &accepted.prompt;
    let tokens = prompt.texts.iter().map(|t| count_tokens(t)).sum::<u64>() + prompt.framing;
    let free = Outcome::input_only(0);
    emulator.record_call(
        "CountTokens",
        &model_id,
        Some(&accepted.caller),
        Ok(&free),
        None,
    );
    Json(json!({ "inputTokens": tokens })).into_response()
}

pub async fn apply_guardrail(
    State(emulator): State<Emulator>,
    Path((id, version)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "POST", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let request = parse_json(&body)?;
        let source = match request["source"].as_str() {
            Some("INPUT") => Source::Input,
            Some("OUTPUT") => Source::Output,
            _ => return Err(AwsError::validation("1 validation error detected: Value at 'source' failed to satisfy constraint: Member must satisfy enum value set: [INPUT, OUTPUT]")),
        };
        let policy = {
            let store = emulator.0.guardrails.lock().map_err(|_| AwsError::internal())?;
            store.find(&id).and_then(|g| g.at(&version).cloned()).ok_or_else(|| {
                AwsError::not_found("The guardrail identifier or version provided in the request does not exist.")
            })?
        };
        let text: String = request["content"].as_array().into_iter().flatten().filter_map(|b| b["text"]["text"].as_str()).collect::<Vec<_>>().join("\n");
        let assessed = policy.assess(&text, source);
        let output = if assessed.blocked { policy.blocked_message(source) } else { assessed.text.clone() };
        Ok(json!({
            "usage": policy.usage(&text),
            "action": if assessed.intervened() { "GUARDRAIL_INTERVENED" } else { "NONE" },
            "outputs": if assessed.intervened() { json!([ { "text": output } ]) } else { json!([]) },
            "assessments": [ assessed.to_json() ],
        }))
    });
    emulator.record(Record {
        service: "bedrock-runtime",
        operation: "ApplyGuardrail".to_owned(),
        region: caller.as_ref().ok().map(|c| c.region.clone()),
        principal: caller.as_ref().ok().map(|c| c.principal.arn()),
        error: result.as_ref().err().map(|e| e.code),
        guardrail: Some(id),
        ..Record::default()
    });
    match result {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_ids_and_arns_resolve_to_the_base_model() {
        assert_eq!(
            base_model_id("us.anthropic.claude-haiku-4-5-20251001-v1:0"),
            "anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        assert_eq!(
            base_model_id("global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            base_model_id("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"),
            "amazon.nova-pro-v1:0"
        );
        assert_eq!(
            base_model_id("amazon.nova-pro-v1:0"),
            "amazon.nova-pro-v1:0"
        );
    }

    #[test]
    fn faults_are_deterministic() {
        let every = Faults {
            throttle_every_n: Some(3),
            ..Faults::default()
        };
        let hits: Vec<u64> = (1..=9)
            .filter(|n| injected_fault(&every, *n).is_some())
            .collect();
        assert_eq!(hits, [3, 6, 9]);
        let half = Faults {
            throttle_fraction: Some(0.5),
            ..Faults::default()
        };
        let n = (1..=1000)
            .filter(|n| injected_fault(&half, *n).is_some())
            .count();
        assert!((450..=550).contains(&n), "{n}");
        let errors = Faults {
            error_every_n: Some(1),
            error_status: Some(503),
            ..Faults::default()
        };
        assert_eq!(
            injected_fault(&errors, 1).unwrap().code,
            "ServiceUnavailableException"
        );
    }
}

//! The built-in price table: AWS Bedrock on-demand prices of text models, in US dollars per
//! million tokens, as exact decimals.
//!
//! # Resolving a model id
//!
//! [`builtin_price`] accepts what a `ModelEndpoint`'s `modelId` may hold:
//! - a base model id, `anthropic.claude-haiku-4-5-20251001-v1:0`;
//! - a cross-region inference profile id, the base id behind a `us.`, `eu.`, `apac.`, `jp.`, `au.`,
//!   `ca.`, `us-gov.` (geographic) or `global.` prefix;
//! - a foundation-model or inference-profile ARN,
//!   `arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-…` or
//!   `arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-…`.
//!
//! Application inference profiles and provisioned models have opaque ARNs and no on-demand price:
//! they need the endpoint's own `pricing`.
//!
//! # What a price depends on
//!
//! - **The source region.** Bedrock bills a call at the price of the region the request is made in,
//!   whichever region serves it ("the price is calculated basis the region you made the request in",
//!   aws.amazon.com/bedrock/pricing). Most models cost the same everywhere; where a source gives a
//!   different price for a region, the row carries a per-region override, matched exactly
//!   (`ap-south-1`) or by prefix (`eu-*`), first match wins, and it is final.
//! - **Global versus geographic profiles.** For Claude Sonnet 4.5, Haiku 4.5, Opus 4.5 and later
//!   (and Nova 2 Lite), a geographic profile (`us.`, `eu.`, `jp.`, …) costs 10% more than the
//!   `global.` one: "Global cross-Region inference … offers approximately 10% savings on both input
//!   and output token pricing compared to geographic cross-Region inference" (AWS Bedrock user guide,
//!   global-cross-region-inference; LiteLLM's table has `us.`/`eu.`/`au.`/`jp.`/`apac.` entries at
//!   exactly 1.1× the `global.` ones). Rows marked `geo_premium` get that 10% on geographic profile
//!   ids. The bare model id and `global.` get the list price (Anthropic's published price).
//!
//! # Sources (all read 2026-11-25)
//!
//! - `[anthropic]`: Anthropic's price page (claude.com/pricing), which Bedrock's Claude prices
//!   follow: Haiku 4.5 $1/$5, Haiku 3.5 $0.80/$4, Sonnet 4 and 4.5 $3/$15 (over 200k input tokens
//!   $6/$22.50), Opus 4 and 4.1 $15/$75, Opus 4.5 $5/$25.
//! - `[aws-2025-07]`: a copy of aws.amazon.com/bedrock/pricing (us-east-1) dated 2025-07-20, in
//!   github.com/convo-lang/convo-lang `packages/convo-lang-bedrock/bedrock-pricing.md`. The AWS page
//!   itself renders its prices client-side; stored copies of it hold no numbers.
//! - `[pricelist]`: the AWS Price List Bulk API (offer AmazonBedrock, us-east-1, published
//!   2026-09-01) as transcribed in github.com/api-evangelist/amazon-nova
//!   `plans/amazon-nova-plans-pricing.yml`.
//! - `[litellm]`: github.com/BerriAI/litellm `model_prices_and_context_window.json` (commit
//!   00035b69f416), including its `bedrock/<region>/…` and profile-prefixed entries.
//! - `[regions]`: github.com/Aditya-Poddar/bedrock-pricing `js/config/pricing-data.js`, a per-region
//!   copy of the AWS pricing page (us-east-1, us-west-2, ap-south-1, eu-west-2, sa-east-1,
//!   ca-central-1, ap-southeast-2, ap-northeast-1, ap-southeast-1, eu-west-3, eu-central-1).
//! - `[derived]`: a cache-read price not printed for that region, computed with the rule the AWS page
//!   states for Nova: cache reads cost 25% of the input price (75% less).
//!
//! - **The prompt's length.** Claude Sonnet 4 and 4.5 charge $6/$22.50 (cache $0.60/$7.50) for
//!   every token of a call whose input, cached tokens included, passes 200k tokens.
//!
//! Prices not modelled: batch (50% off), flex/priority tiers, latency-optimised inference and the
//! 1-hour cache-write rate. The table prices those calls at the standard on-demand rate.

use std::fmt;

use rust_decimal::Decimal;

use crate::model_endpoint::Pricing;
use crate::model_id::{self, Route};
use crate::{ModelEndpointSpec, Money};

/// US dollars per million tokens of one model: what a call costs, by kind of token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelPrice {
    /// Dollars per million input tokens not read from or written to the prompt cache.
    pub input_per_million: Decimal,
    /// Dollars per million output tokens (reasoning tokens included: Bedrock bills them as output).
    pub output_per_million: Decimal,
    /// Dollars per million input tokens read from the prompt cache; `None`: the input price.
    pub cache_read_per_million: Option<Decimal>,
    /// Dollars per million input tokens written to the prompt cache; `None`: the input price.
    pub cache_write_per_million: Option<Decimal>,
    /// The rates of calls whose prompt is longer than a threshold, where the model has such a tier.
    pub long_context: Option<LongContext>,
}

/// A long-context tier: a call whose input tokens (cached ones included) pass `above_input_tokens`
/// is charged these rates for all of its tokens (Anthropic's 1M-context rule for Claude Sonnet 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub input_per_million: Decimal,
    pub output_per_million: Decimal,
    pub cache_read_per_million: Decimal,
    pub cache_write_per_million: Decimal,
}

/// The tokens one call used, as Bedrock's Converse `usage` reports them: `input_tokens` excludes
/// the tokens read from or written to the prompt cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// Every token written to the cache, whatever its time to live.
    pub cache_write_input_tokens: u64,
    /// Of `cache_write_input_tokens`, those written for an hour (`cacheDetails` with
    /// `ttl: "1h"`), which cost more than the five-minute ones.
    pub cache_write_1h_input_tokens: u64,
}

/// What an hour-long cache write costs, as a multiple of the input price: Anthropic bills 1-hour
/// writes at twice the base input price (five-minute writes at 1.25 times).
const CACHE_WRITE_1H_FACTOR: Decimal = Decimal::from_parts(2, 0, 0, false, 0);

impl ModelPrice {
    /// The exact cost in US dollars of `usage`: each kind of token times its price, over one
    /// million. Nothing is rounded; the caller rounds for display. Cache tokens are charged at the
    /// cache prices, or at the input price where the model has none.
    ///
    /// Prices are non-negative. A cost that does not fit a `Decimal` (about 7.9e28 dollars, far
    /// beyond any bill; only absurd prices or token counts reach it) comes out as `Decimal::MAX`:
    /// too high, never too low.
    pub fn cost(&self, usage: &TokenUsage) -> Decimal {
        let prompt_tokens = usage
            .input_tokens
            .saturating_add(usage.cache_read_input_tokens)
            .saturating_add(usage.cache_write_input_tokens);
        let hour_writes = usage
            .cache_write_1h_input_tokens
            .min(usage.cache_write_input_tokens);
        let five_minute_writes = usage.cache_write_input_tokens - hour_writes;
        // An hour-long write costs twice the input price where the model prices writes at all
        // (Anthropic's rule); a model without a write price charges writes as input.
        let hour = |input: Decimal, has_write_price: bool| {
            if has_write_price {
                input
                    .checked_mul(CACHE_WRITE_1H_FACTOR)
                    .unwrap_or(Decimal::MAX)
            } else {
                input
            }
        };
        if let Some(long) = self
            .long_context
            .filter(|long| prompt_tokens > long.above_input_tokens)
        {
            return exact_cost([
                (usage.input_tokens, long.input_per_million),
                (usage.output_tokens, long.output_per_million),
                (usage.cache_read_input_tokens, long.cache_read_per_million),
                (five_minute_writes, long.cache_write_per_million),
                (hour_writes, hour(long.input_per_million, true)),
            ])
            .map_or(Decimal::MAX, |cost| cost.normalize());
        }
        let read = self
            .cache_read_per_million
            .unwrap_or(self.input_per_million);
        let write = self
            .cache_write_per_million
            .unwrap_or(self.input_per_million);
        exact_cost([
            (usage.input_tokens, self.input_per_million),
            (usage.output_tokens, self.output_per_million),
            (usage.cache_read_input_tokens, read),
            (five_minute_writes, write),
            (
                hour_writes,
                hour(
                    self.input_per_million,
                    self.cache_write_per_million.is_some(),
                ),
            ),
        ])
        .map_or(Decimal::MAX, |cost| cost.normalize())
    }

    /// This price with a multiplier applied to every rate (exact for the table's prices).
    fn times(self, factor: Decimal) -> ModelPrice {
        let scale = |rate: Decimal| rate.checked_mul(factor).map_or(rate, |r| r.normalize());
        ModelPrice {
            input_per_million: scale(self.input_per_million),
            output_per_million: scale(self.output_per_million),
            cache_read_per_million: self.cache_read_per_million.map(scale),
            cache_write_per_million: self.cache_write_per_million.map(scale),
            long_context: self.long_context.map(|long| LongContext {
                above_input_tokens: long.above_input_tokens,
                input_per_million: scale(long.input_per_million),
                output_per_million: scale(long.output_per_million),
                cache_read_per_million: scale(long.cache_read_per_million),
                cache_write_per_million: scale(long.cache_write_per_million),
            }),
        }
    }
}

impl From<&Pricing> for ModelPrice {
    fn from(pricing: &Pricing) -> Self {
        ModelPrice {
            input_per_million: pricing.input_per_million_tokens.amount(),
            output_per_million: pricing.output_per_million_tokens.amount(),
            cache_read_per_million: pricing.cache_read_per_million_tokens.map(Money::amount),
            cache_write_per_million: pricing.cache_write_per_million_tokens.map(Money::amount),
            long_context: None,
        }
    }
}

/// Σ tokens × price / 1e6, computed on integers so that nothing is ever rounded. `None` when a
/// price is negative or the result does not fit a `Decimal`.
fn exact_cost<const N: usize>(terms: [(u64, Decimal); N]) -> Option<Decimal> {
    let scale = terms.iter().map(|(_, price)| price.scale()).max()?;
    let mut micro_dollars: u128 = 0;
    for (tokens, price) in terms {
        let mantissa = u128::try_from(price.mantissa()).ok()?;
        let aligned = mantissa.checked_mul(10u128.checked_pow(scale - price.scale())?)?;
        micro_dollars = micro_dollars.checked_add(u128::from(tokens).checked_mul(aligned)?)?;
    }
    // Dividing by one million is adding six to the scale.
    Decimal::try_from_i128_with_scale(i128::try_from(micro_dollars).ok()?, scale.checked_add(6)?)
        .ok()
}

/// Text units of Bedrock Guardrails' policies evaluated for one call (input and output together),
/// as Bedrock reports them (`usage` of ApplyGuardrail, `invocationMetrics.usage` of each
/// assessment in a Converse trace). A text unit is up to 1,000 characters, per policy evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuardrailUnits {
    pub content: u64,
    pub topic: u64,
    pub word: u64,
    pub sensitive_information: u64,
    pub sensitive_information_free: u64,
    pub contextual_grounding: u64,
}

/// Bedrock Guardrails' on-demand prices, US dollars per 1,000 text units (AWS price page since
/// the December 2024 reduction): content filters and denied topics $0.15, sensitive information
/// filters $0.10 (custom regexes free), contextual grounding $0.10; word filters free.
pub const GUARDRAIL_CONTENT_PER_THOUSAND: Decimal = Decimal::from_parts(15, 0, 0, false, 2);
pub const GUARDRAIL_TOPIC_PER_THOUSAND: Decimal = Decimal::from_parts(15, 0, 0, false, 2);
pub const GUARDRAIL_SENSITIVE_INFORMATION_PER_THOUSAND: Decimal =
    Decimal::from_parts(10, 0, 0, false, 2);
pub const GUARDRAIL_CONTEXTUAL_GROUNDING_PER_THOUSAND: Decimal =
    Decimal::from_parts(10, 0, 0, false, 2);

/// Characters per output token assumed for a worst case of a guardrail's output assessment: far
/// more than any tokenizer's average (about 4), so a call's reservation is an upper bound.
pub const GUARDRAIL_CHARACTERS_PER_TOKEN_BOUND: u64 = 16;

impl GuardrailUnits {
    /// Adds `other`'s units to these.
    #[must_use]
    pub fn plus(self, other: GuardrailUnits) -> GuardrailUnits {
        GuardrailUnits {
            content: self.content.saturating_add(other.content),
            topic: self.topic.saturating_add(other.topic),
            word: self.word.saturating_add(other.word),
            sensitive_information: self
                .sensitive_information
                .saturating_add(other.sensitive_information),
            sensitive_information_free: self
                .sensitive_information_free
                .saturating_add(other.sensitive_information_free),
            contextual_grounding: self
                .contextual_grounding
                .saturating_add(other.contextual_grounding),
        }
    }

    /// What these units cost, exactly (`Decimal::MAX` if absurdly many: too high, never low).
    pub fn cost(&self) -> Decimal {
        let per_unit = |per_thousand: Decimal| per_thousand / Decimal::ONE_THOUSAND;
        [
            (self.content, GUARDRAIL_CONTENT_PER_THOUSAND),
            (self.topic, GUARDRAIL_TOPIC_PER_THOUSAND),
            (
                self.sensitive_information,
                GUARDRAIL_SENSITIVE_INFORMATION_PER_THOUSAND,
            ),
            (
                self.contextual_grounding,
                GUARDRAIL_CONTEXTUAL_GROUNDING_PER_THOUSAND,
            ),
        ]
        .into_iter()
        .try_fold(Decimal::ZERO, |sum, (units, price)| {
            sum.checked_add(Decimal::from(units).checked_mul(per_unit(price))?)
        })
        .map_or(Decimal::MAX, |cost| cost.normalize())
    }

    /// The most a guardrail can charge for a call whose input has `input_characters` and whose
    /// output is at most `max_output_tokens`: every priced policy evaluated on both, the output
    /// at [`GUARDRAIL_CHARACTERS_PER_TOKEN_BOUND`], plus one unit per policy and direction for
    /// the rounding up (and for a stream's chunks, one more per 1,000 characters).
    pub fn worst_case(input_characters: u64, max_output_tokens: u64) -> GuardrailUnits {
        let output_characters =
            max_output_tokens.saturating_mul(GUARDRAIL_CHARACTERS_PER_TOKEN_BOUND);
        let units = input_characters.div_ceil(1000).saturating_add(1)
            + output_characters
                .div_ceil(1000)
                .saturating_mul(2)
                .saturating_add(1);
        GuardrailUnits {
            content: units,
            topic: units,
            sensitive_information: units,
            contextual_grounding: units,
            ..GuardrailUnits::default()
        }
    }
}

/// The built-in on-demand price of `model_id` (a base model id, an inference profile id or an
/// ARN, see the module docs) when called from `region`; `None` when the table does not know it.
pub fn builtin_price(model_id: &str, region: &str) -> Option<ModelPrice> {
    let called = model_id::parse(model_id)?;
    let row = TABLE.iter().find(|row| row.id == called.base)?;
    if let Some(regional) = row.regional.iter().find(|r| {
        r.regions
            .iter()
            .any(|pattern| region_matches(pattern, region))
    }) {
        return Some(regional.price);
    }
    Some(
        if row.geo_premium && matches!(called.route, Route::Geographic(_)) {
            row.price.times(GEO_PREMIUM)
        } else {
            row.price
        },
    )
}

/// The price of calls through `spec` that call `called_model_id` (the id the operator resolved,
/// which may be an inference profile of the spec's model): the spec's `pricing` override when set,
/// else the built-in table's price of that id.
pub fn price_for(
    spec: &ModelEndpointSpec,
    called_model_id: &str,
) -> Result<ModelPrice, UnknownPrice> {
    if let Some(pricing) = &spec.pricing {
        return Ok(ModelPrice::from(pricing));
    }
    builtin_price(called_model_id, &spec.region).ok_or_else(|| UnknownPrice {
        model_id: called_model_id.to_owned(),
        region: spec.region.clone(),
    })
}

/// The base model ids of the table with their provider's name, in table order.
pub fn builtin_models() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE.iter().map(|row| (row.id, row.provider))
}

/// No built-in price for a model in a region, and no `pricing` override on the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPrice {
    model_id: String,
    region: String,
}

impl UnknownPrice {
    /// The model id, profile id or ARN the endpoint names.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The region the endpoint calls Bedrock in.
    pub fn region(&self) -> &str {
        &self.region
    }
}

impl fmt::Display for UnknownPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no built-in on-demand price for model {:?} in region {:?}: set spec.pricing",
            self.model_id, self.region
        )
    }
}

impl std::error::Error for UnknownPrice {}

/// `eu-*` matches every region starting with `eu-`; anything else matches exactly.
fn region_matches(pattern: &str, region: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => region.starts_with(prefix),
        None => pattern == region,
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

/// Geographic profiles of `geo_premium` models cost 10% more than the global profile.
const GEO_PREMIUM: Decimal = usd("1.1");

struct Row {
    /// The base model id, as in `ListFoundationModels`.
    id: &'static str,
    /// The model provider's name, as Bedrock's console shows it.
    provider: &'static str,
    /// The price in every region without an override.
    price: ModelPrice,
    /// Whether geographic profile ids cost 10% more than this price (see the module docs).
    geo_premium: bool,
    /// Prices of regions that differ, first match wins.
    regional: &'static [Regional],
}

struct Regional {
    /// Region names, or prefixes ending in `*` (`eu-*`).
    regions: &'static [&'static str],
    price: ModelPrice,
}

const ANTHROPIC: &str = "Anthropic";
const AMAZON: &str = "Amazon";
const META: &str = "Meta";
const MISTRAL: &str = "Mistral AI";
const COHERE: &str = "Cohere";
const AI21: &str = "AI21 Labs";
const DEEPSEEK: &str = "DeepSeek";
const OPENAI: &str = "OpenAI";

/// Parses a dollar literal such as `"0.00875"` at compile time; a malformed literal fails the build.
#[allow(clippy::cast_possible_truncation)] // splits the mantissa into its 32-bit limbs on purpose
const fn usd(literal: &str) -> Decimal {
    let bytes = literal.as_bytes();
    assert!(!bytes.is_empty(), "empty price literal");
    let mut mantissa: u64 = 0;
    let mut scale: u32 = 0;
    let mut seen_point = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'.' {
            assert!(!seen_point, "price literal with two decimal points");
            seen_point = true;
        } else {
            assert!(byte.is_ascii_digit(), "price literal with a non-digit");
            mantissa = mantissa * 10 + (byte - b'0') as u64;
            if seen_point {
                scale += 1;
            }
        }
        i += 1;
    }
    Decimal::from_parts(mantissa as u32, (mantissa >> 32) as u32, 0, false, scale)
}

/// Input and output prices; cache tokens (if the model ever reports any) at the input price.
const fn rates(input: &str, output: &str) -> ModelPrice {
    ModelPrice {
        input_per_million: usd(input),
        output_per_million: usd(output),
        cache_read_per_million: None,
        cache_write_per_million: None,
        long_context: None,
    }
}

/// Prices with a cache-read rate; cache writes at the input price (Nova: no write surcharge).
const fn cache_read(input: &str, output: &str, read: &str) -> ModelPrice {
    ModelPrice {
        cache_read_per_million: Some(usd(read)),
        ..rates(input, output)
    }
}

/// Prices with cache-read and cache-write (5-minute) rates.
const fn cached(input: &str, output: &str, read: &str, write: &str) -> ModelPrice {
    ModelPrice {
        cache_read_per_million: Some(usd(read)),
        cache_write_per_million: Some(usd(write)),
        ..rates(input, output)
    }
}

const fn row(id: &'static str, provider: &'static str, price: ModelPrice) -> Row {
    Row {
        id,
        provider,
        price,
        geo_premium: false,
        regional: &[],
    }
}

/// Claude Sonnet 4 and 4.5 past 200k input tokens: $6 / $22.50, cache $0.60 / $7.50 ([anthropic]
/// "long context pricing"; [litellm] `*_above_200k_tokens`; read 2026-11-25).
const SONNET_LONG_CONTEXT: LongContext = LongContext {
    above_input_tokens: 200_000,
    input_per_million: usd("6"),
    output_per_million: usd("22.50"),
    cache_read_per_million: usd("0.60"),
    cache_write_per_million: usd("7.50"),
};

/// Standard Sonnet 4 rates with the long-context tier above.
const fn sonnet_with_long_context() -> ModelPrice {
    ModelPrice {
        long_context: Some(SONNET_LONG_CONTEXT),
        ..cached("3", "15", "0.30", "3.75")
    }
}

/// A row whose geographic profiles cost 10% more than its global/list price.
const fn premium_row(id: &'static str, provider: &'static str, price: ModelPrice) -> Row {
    Row {
        geo_premium: true,
        ..row(id, provider, price)
    }
}

const fn regional_row(
    id: &'static str,
    provider: &'static str,
    price: ModelPrice,
    regional: &'static [Regional],
) -> Row {
    Row {
        regional,
        ..row(id, provider, price)
    }
}

/// AWS GovCloud (US) regions.
const GOVCLOUD: &[&str] = &["us-gov-*"];

#[rustfmt::skip]
static TABLE: &[Row] = &[
    // ---- Anthropic ------------------------------------------------------------------------
    // Cache columns: read (hit) / write (5-minute). Claude prices are the same in every commercial
    // region ([regions] lists the same prices in us-east-1, us-west-2, ap-south-1, ap-northeast-1,
    // ap-southeast-1, eu-central-1 …); GovCloud charges 20% more ([litellm] bedrock/us-gov-*).

    // Claude 3 Haiku: $0.25 / $1.25; no prompt caching on Bedrock. [aws-2025-07], [litellm];
    // read 2026-11-25. [litellm] lists cache rates, but the AWS page has "N/A" for this model.
    // GovCloud $0.30 / $1.50 [litellm] bedrock/us-gov-{east,west}-1; read 2026-11-25.
    regional_row("anthropic.claude-3-haiku-20240307-v1:0", ANTHROPIC, rates("0.25", "1.25"),
        &[Regional { regions: GOVCLOUD, price: rates("0.30", "1.50") }]),
    // Claude 3.5 Haiku: $0.80 / $4, cache $0.08 / $1. [anthropic], [aws-2025-07], [litellm];
    // read 2026-11-25.
    row("anthropic.claude-3-5-haiku-20241022-v1:0", ANTHROPIC, cached("0.80", "4", "0.08", "1")),
    // Claude 3.5 Sonnet (v1): $3 / $15, no caching. [aws-2025-07], [litellm]; read 2026-11-25.
    // Disagreement: clauder-navi.com/en/bedrock-claude-cost (2026) says Claude 3.5 Sonnet now costs
    // $6 / $30 on Bedrock (legacy pricing); kept $3 / $15, which two sources give.
    // GovCloud $3.60 / $18 [litellm]; read 2026-11-25.
    regional_row("anthropic.claude-3-5-sonnet-20240620-v1:0", ANTHROPIC, rates("3", "15"),
        &[Regional { regions: GOVCLOUD, price: rates("3.60", "18") }]),
    // Claude 3.5 Sonnet v2: $3 / $15, cache $0.30 / $3.75. [aws-2025-07], [litellm]; read
    // 2026-11-25. Same $6 / $30 disagreement as v1.
    row("anthropic.claude-3-5-sonnet-20241022-v2:0", ANTHROPIC, cached("3", "15", "0.30", "3.75")),
    // Claude 3.7 Sonnet: $3 / $15, cache $0.30 / $3.75. [aws-2025-07], [litellm]; read 2026-11-25.
    // GovCloud $3.60 / $18, cache $0.36 / $4.50 [litellm]; read 2026-11-25.
    regional_row("anthropic.claude-3-7-sonnet-20250219-v1:0", ANTHROPIC,
        cached("3", "15", "0.30", "3.75"),
        &[Regional { regions: GOVCLOUD, price: cached("3.60", "18", "0.36", "4.50") }]),
    // Claude Sonnet 4: $3 / $15, cache $0.30 / $3.75. [anthropic], [aws-2025-07], [litellm];
    // read 2026-11-25.
    // Long context (> 200k input tokens): see SONNET_LONG_CONTEXT.
    row("anthropic.claude-sonnet-4-20250514-v1:0", ANTHROPIC, sonnet_with_long_context()),
    // Claude Sonnet 4.5: $3 / $15, cache $0.30 / $3.75 (global; geographic +10%). [anthropic],
    // [litellm], [regions]; read 2026-11-25. GovCloud $3.60 / $18, cache $0.36 / $4.50 [litellm];
    // read 2026-11-25.
    Row {
        geo_premium: true,
        ..regional_row("anthropic.claude-sonnet-4-5-20250929-v1:0", ANTHROPIC,
            sonnet_with_long_context(),
            &[Regional { regions: GOVCLOUD, price: cached("3.60", "18", "0.36", "4.50") }])
    },
    // Claude Sonnet 4.6: $3 / $15, cache $0.30 / $3.75 (global; geographic +10%). [litellm];
    // read 2026-11-25.
    premium_row("anthropic.claude-sonnet-4-6", ANTHROPIC, cached("3", "15", "0.30", "3.75")),
    // Claude Sonnet 5: $2 / $10, cache $0.20 / $2.50 (global; geographic +10%). [litellm];
    // read 2026-11-25. (Anthropic kept its introductory $2 / $10 as the standard price.)
    premium_row("anthropic.claude-sonnet-5", ANTHROPIC, cached("2", "10", "0.20", "2.50")),
    // Claude Haiku 4.5: $1 / $5, cache $0.10 / $1.25 (global; geographic +10%). [anthropic],
    // [litellm], [regions]; read 2026-11-25. (Not $0.80 / $4: that is Haiku 3.5.)
    premium_row("anthropic.claude-haiku-4-5-20251001-v1:0", ANTHROPIC,
        cached("1", "5", "0.10", "1.25")),
    // Claude Opus 4: $15 / $75, cache $1.50 / $18.75. [anthropic], [aws-2025-07], [litellm];
    // read 2026-11-25.
    row("anthropic.claude-opus-4-20250514-v1:0", ANTHROPIC, cached("15", "75", "1.50", "18.75")),
    // Claude Opus 4.1: $15 / $75, cache $1.50 / $18.75. [anthropic], [litellm], [regions];
    // read 2026-11-25.
    row("anthropic.claude-opus-4-1-20250805-v1:0", ANTHROPIC,
        cached("15", "75", "1.50", "18.75")),
    // Claude Opus 4.5: $5 / $25, cache $0.50 / $6.25 (global; geographic +10%). [anthropic],
    // [litellm], [regions]; read 2026-11-25.
    premium_row("anthropic.claude-opus-4-5-20251101-v1:0", ANTHROPIC,
        cached("5", "25", "0.50", "6.25")),
    // Claude Opus 4.6, 4.7, 4.8: $5 / $25, cache $0.50 / $6.25 (global; geographic +10%).
    // [litellm]; read 2026-11-25.
    premium_row("anthropic.claude-opus-4-6-v1", ANTHROPIC, cached("5", "25", "0.50", "6.25")),
    premium_row("anthropic.claude-opus-4-7", ANTHROPIC, cached("5", "25", "0.50", "6.25")),
    premium_row("anthropic.claude-opus-4-8", ANTHROPIC, cached("5", "25", "0.50", "6.25")),
    // Claude Fable 5: $10 / $50, cache $1 / $12.50 (global; geographic +10%). [litellm];
    // read 2026-11-25.
    premium_row("anthropic.claude-fable-5", ANTHROPIC, cached("10", "50", "1", "12.50")),

    // ---- Amazon Nova ----------------------------------------------------------------------
    // Cache reads only: the AWS page prints no cache-write price for Nova (writes at the input
    // price). Regional prices: EU from [litellm] `eu.amazon.nova-*` (source regions in the EU),
    // APAC from [litellm] `apac.amazon.nova-*`, Mumbai from [regions] ap-south-1, GovCloud from
    // [litellm] bedrock/us-gov-*; their cache-read rates are [derived]. Which APAC regions the
    // `apac.` price covers is not stated; it is applied to every `ap-*` region but Mumbai.

    // Nova Micro: $0.035 / $0.14, cache read $0.00875. [aws-2025-07], [pricelist], [litellm];
    // read 2026-11-25. EU $0.046 / $0.184, Mumbai $0.041 / $0.164, APAC $0.037 / $0.148;
    // read 2026-11-25.
    regional_row("amazon.nova-micro-v1:0", AMAZON, cache_read("0.035", "0.14", "0.00875"), &[
        Regional { regions: &["eu-*"], price: cache_read("0.046", "0.184", "0.0115") },
        Regional { regions: &["ap-south-1"], price: cache_read("0.041", "0.164", "0.01025") },
        Regional { regions: &["ap-*"], price: cache_read("0.037", "0.148", "0.00925") },
    ]),
    // Nova Lite: $0.06 / $0.24, cache read $0.015. [aws-2025-07], [pricelist], [litellm];
    // read 2026-11-25. EU $0.078 / $0.312, Mumbai $0.071 / $0.284, APAC $0.063 / $0.252;
    // read 2026-11-25.
    regional_row("amazon.nova-lite-v1:0", AMAZON, cache_read("0.06", "0.24", "0.015"), &[
        Regional { regions: &["eu-*"], price: cache_read("0.078", "0.312", "0.0195") },
        Regional { regions: &["ap-south-1"], price: cache_read("0.071", "0.284", "0.01775") },
        Regional { regions: &["ap-*"], price: cache_read("0.063", "0.252", "0.01575") },
    ]),
    // Nova Pro: $0.80 / $3.20, cache read $0.20. [aws-2025-07], [pricelist], [litellm];
    // read 2026-11-25. EU $1.05 / $4.20, Mumbai $0.94 / $3.76, APAC $0.84 / $3.36, GovCloud
    // $0.96 / $3.84; read 2026-11-25.
    regional_row("amazon.nova-pro-v1:0", AMAZON, cache_read("0.80", "3.20", "0.20"), &[
        Regional { regions: &["eu-*"], price: cache_read("1.05", "4.20", "0.2625") },
        Regional { regions: &["ap-south-1"], price: cache_read("0.94", "3.76", "0.235") },
        Regional { regions: &["ap-*"], price: cache_read("0.84", "3.36", "0.21") },
        Regional { regions: GOVCLOUD, price: cache_read("0.96", "3.84", "0.24") },
    ]),
    // Nova Premier: $2.50 / $12.50, cache read $0.625. [aws-2025-07], [pricelist], [litellm];
    // read 2026-11-25. [pricelist] marks it Legacy, end of life 2026-09-14.
    row("amazon.nova-premier-v1:0", AMAZON, cache_read("2.50", "12.50", "0.625")),
    // Nova 2 Lite: $0.30 / $2.50, cache read $0.075 (global; geographic +10%). [litellm],
    // [regions] us-east-1; read 2026-11-25. Disagreement: [pricelist] gives $0.33 / $2.75 for
    // us-east-1, which is [litellm]'s geographic (`us.`) price; kept $0.30 for the bare id.
    premium_row("amazon.nova-2-lite-v1:0", AMAZON, cache_read("0.30", "2.50", "0.075")),

    // ---- Meta Llama -----------------------------------------------------------------------
    // Llama 3 8B: $0.30 / $0.60. [aws-2025-07], [litellm]; read 2026-11-25. Regions [litellm]
    // bedrock/<region>, agreeing with [regions]; read 2026-11-25. ([litellm]'s GovCloud output
    // price, $2.65, looks like a copy of the 70B input price; not used.)
    regional_row("meta.llama3-8b-instruct-v1:0", META, rates("0.30", "0.60"), &[
        Regional { regions: &["ca-central-1"], price: rates("0.35", "0.69") },
        Regional { regions: &["eu-west-1"], price: rates("0.32", "0.65") },
        Regional { regions: &["eu-west-2"], price: rates("0.39", "0.78") },
        Regional { regions: &["ap-south-1"], price: rates("0.36", "0.72") },
        Regional { regions: &["sa-east-1"], price: rates("0.50", "1.01") },
    ]),
    // Llama 3 70B: $2.65 / $3.50. [aws-2025-07], [litellm]; read 2026-11-25. Regions as 8B.
    regional_row("meta.llama3-70b-instruct-v1:0", META, rates("2.65", "3.50"), &[
        Regional { regions: &["ca-central-1"], price: rates("3.05", "4.03") },
        Regional { regions: &["eu-west-1"], price: rates("2.86", "3.78") },
        Regional { regions: &["eu-west-2"], price: rates("3.45", "4.55") },
        Regional { regions: &["ap-south-1"], price: rates("3.18", "4.20") },
        Regional { regions: &["sa-east-1"], price: rates("4.45", "5.88") },
    ]),
    // Llama 3.1 8B: $0.22 / $0.22. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("meta.llama3-1-8b-instruct-v1:0", META, rates("0.22", "0.22")),
    // Llama 3.1 70B: $0.72 / $0.72. [aws-2025-07]; read 2026-11-25. Disagreement: [litellm] and
    // [regions] us-west-2 give the launch price $0.99 / $0.99; kept the later AWS-page price.
    row("meta.llama3-1-70b-instruct-v1:0", META, rates("0.72", "0.72")),
    // Llama 3.1 405B: $2.40 / $2.40. [aws-2025-07]; read 2026-11-25. Disagreement: [litellm] and
    // [regions] us-west-2 give the launch price $5.32 / $16; kept the later AWS-page price.
    row("meta.llama3-1-405b-instruct-v1:0", META, rates("2.40", "2.40")),
    // Llama 3.2 1B: $0.10 / $0.10. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    // eu-west-3 and eu-central-1 $0.13 / $0.13 [regions]; read 2026-11-25.
    regional_row("meta.llama3-2-1b-instruct-v1:0", META, rates("0.10", "0.10"), &[
        Regional { regions: &["eu-west-3", "eu-central-1"], price: rates("0.13", "0.13") },
    ]),
    // Llama 3.2 3B: $0.15 / $0.15. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    // eu-west-3 $0.20 / $0.20, eu-central-1 $0.19 / $0.19 [regions]; read 2026-11-25.
    regional_row("meta.llama3-2-3b-instruct-v1:0", META, rates("0.15", "0.15"), &[
        Regional { regions: &["eu-west-3"], price: rates("0.20", "0.20") },
        Regional { regions: &["eu-central-1"], price: rates("0.19", "0.19") },
    ]),
    // Llama 3.2 11B: $0.16 / $0.16. [aws-2025-07]; read 2026-11-25. Disagreement: [litellm] and
    // [regions] give the launch price $0.35 / $0.35; kept the later AWS-page price.
    row("meta.llama3-2-11b-instruct-v1:0", META, rates("0.16", "0.16")),
    // Llama 3.2 90B: $0.72 / $0.72. [aws-2025-07]; read 2026-11-25. Disagreement: [litellm] and
    // [regions] give the launch price $2 / $2; kept the later AWS-page price.
    row("meta.llama3-2-90b-instruct-v1:0", META, rates("0.72", "0.72")),
    // Llama 3.3 70B: $0.72 / $0.72. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("meta.llama3-3-70b-instruct-v1:0", META, rates("0.72", "0.72")),
    // Llama 4 Maverick 17B: $0.24 / $0.97. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("meta.llama4-maverick-17b-instruct-v1:0", META, rates("0.24", "0.97")),
    // Llama 4 Scout 17B: $0.17 / $0.66. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("meta.llama4-scout-17b-instruct-v1:0", META, rates("0.17", "0.66")),

    // ---- Mistral AI -----------------------------------------------------------------------
    // Regional prices from [regions]; for eu-west-3 also [litellm] bedrock/eu-west-3, which agrees
    // for 7B and Mixtral; read 2026-11-25.

    // Mistral 7B Instruct: $0.15 / $0.20. [litellm], [regions]; read 2026-11-25.
    regional_row("mistral.mistral-7b-instruct-v0:2", MISTRAL, rates("0.15", "0.20"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.18", "0.24") },
        Regional { regions: &["ca-central-1"], price: rates("0.17", "0.23") },
        Regional { regions: &["sa-east-1"], price: rates("0.25", "0.34") },
        Regional { regions: &["eu-west-2", "eu-west-3", "ap-southeast-2"],
            price: rates("0.20", "0.26") },
    ]),
    // Mixtral 8x7B Instruct: $0.45 / $0.70. [litellm], [regions]; read 2026-11-25.
    regional_row("mistral.mixtral-8x7b-instruct-v0:1", MISTRAL, rates("0.45", "0.70"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.54", "0.84") },
        Regional { regions: &["ca-central-1"], price: rates("0.52", "0.81") },
        Regional { regions: &["sa-east-1"], price: rates("0.76", "1.18") },
        Regional { regions: &["eu-west-2", "eu-west-3", "ap-southeast-2"],
            price: rates("0.59", "0.91") },
    ]),
    // Mistral Small (24.02): $1 / $3. [litellm], [regions]; read 2026-11-25.
    row("mistral.mistral-small-2402-v1:0", MISTRAL, rates("1", "3")),
    // Mistral Large (24.02): $4 / $12. [regions]; read 2026-11-25. Disagreement: [litellm] gives
    // $8 / $24 (and $10.40 / $31.20 in eu-west-3); kept [regions], whose regional prices are a
    // steady multiple of $4 / $12. [regions] lists $5.20 / $15.60 for us-west-2 too; not used (the
    // two other sources have one price for both US regions). The ap-south-1 price is labelled
    // "Mistral Large (24.07)" in [regions], but 24.07 is $2 / $6 and 1.2 × $4 / $12 fits; assumed
    // to be 24.02.
    regional_row("mistral.mistral-large-2402-v1:0", MISTRAL, rates("4", "12"), &[
        Regional { regions: &["ap-south-1"], price: rates("4.80", "14.40") },
        Regional { regions: &["ca-central-1"], price: rates("4.60", "13.80") },
        Regional { regions: &["sa-east-1"], price: rates("6.70", "20.20") },
        Regional { regions: &["eu-west-2", "eu-west-3", "ap-southeast-2"],
            price: rates("5.20", "15.60") },
    ]),
    // Mistral Large 2 (24.07): $2 / $6. [regions] us-west-2; read 2026-11-25. Disagreement:
    // [litellm] gives $3 / $9; kept [regions] (also lava.so's Bedrock list: $2 / $6).
    row("mistral.mistral-large-2407-v1:0", MISTRAL, rates("2", "6")),
    // Pixtral Large (25.02): $2 / $6. [aws-2025-07], [regions]; read 2026-11-25.
    row("mistral.pixtral-large-2502-v1:0", MISTRAL, rates("2", "6")),
    // Mistral Large 3: $0.50 / $1.50; Mumbai $0.59 / $1.76. [litellm], [regions]; read 2026-11-25.
    regional_row("mistral.mistral-large-3-675b-instruct", MISTRAL, rates("0.50", "1.50"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.59", "1.76") },
    ]),
    // Ministral 3B / 8B / 14B 3.0: $0.10, $0.15, $0.20 (input = output); Mumbai $0.12, $0.18,
    // $0.24. [litellm], [regions]; read 2026-11-25.
    regional_row("mistral.ministral-3-3b-instruct", MISTRAL, rates("0.10", "0.10"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.12", "0.12") },
    ]),
    regional_row("mistral.ministral-3-8b-instruct", MISTRAL, rates("0.15", "0.15"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.18", "0.18") },
    ]),
    regional_row("mistral.ministral-3-14b-instruct", MISTRAL, rates("0.20", "0.20"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.24", "0.24") },
    ]),
    // Magistral Small 1.2: $0.50 / $1.50; Mumbai $0.59 / $1.76. [litellm], [regions];
    // read 2026-11-25.
    regional_row("mistral.magistral-small-2509", MISTRAL, rates("0.50", "1.50"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.59", "1.76") },
    ]),

    // ---- Cohere ---------------------------------------------------------------------------
    // Command R: $0.50 / $1.50. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("cohere.command-r-v1:0", COHERE, rates("0.50", "1.50")),
    // Command R+: $3 / $15. [aws-2025-07], [litellm], [regions]; read 2026-11-25. (Some blogs
    // quote $2.50 / $10, Cohere's own API price for the 08-2024 model; not Bedrock's.)
    row("cohere.command-r-plus-v1:0", COHERE, rates("3", "15")),

    // ---- Embeddings (input tokens only) ---------------------------------------------------
    // Titan Text Embeddings V2: $0.02 per million input tokens ($0.00002 per 1,000). [litellm];
    // read 2026-12-06.
    row("amazon.titan-embed-text-v2:0", AMAZON, rates("0.02", "0")),
    // Titan Text Embeddings (v1): $0.10 per million ($0.0001 per 1,000). [litellm]; read 2026-12-06.
    row("amazon.titan-embed-text-v1", AMAZON, rates("0.10", "0")),
    // Cohere Embed 3, English and Multilingual: $0.10 per million ($0.0001 per 1,000). [litellm];
    // read 2026-12-06.
    row("cohere.embed-english-v3", COHERE, rates("0.10", "0")),
    row("cohere.embed-multilingual-v3", COHERE, rates("0.10", "0")),

    // ---- AI21 Labs ------------------------------------------------------------------------
    // Jamba 1.5 Large: $2 / $8. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("ai21.jamba-1-5-large-v1:0", AI21, rates("2", "8")),
    // Jamba 1.5 Mini: $0.20 / $0.40. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("ai21.jamba-1-5-mini-v1:0", AI21, rates("0.20", "0.40")),
    // Jamba-Instruct: $0.50 / $0.70. [aws-2025-07], [litellm], [regions]; read 2026-11-25.
    row("ai21.jamba-instruct-v1:0", AI21, rates("0.50", "0.70")),

    // ---- DeepSeek -------------------------------------------------------------------------
    // DeepSeek-R1: $1.35 / $5.40. [aws-2025-07], [regions]; read 2026-11-25.
    row("deepseek.r1-v1:0", DEEPSEEK, rates("1.35", "5.40")),
    // DeepSeek-V3.1: $0.58 / $1.68. [litellm], [regions] us-west-2; read 2026-11-25.
    // Mumbai $0.682424 / $1.976678 [regions] ap-south-1 (sic); read 2026-11-25.
    regional_row("deepseek.v3-v1:0", DEEPSEEK, rates("0.58", "1.68"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.682424", "1.976678") },
    ]),
    // DeepSeek-V3.2: $0.62 / $1.85; $0.74 / $2.22 in the regions below. [litellm]
    // bedrock/<region>; read 2026-11-25.
    regional_row("deepseek.v3.2", DEEPSEEK, rates("0.62", "1.85"), &[
        Regional {
            regions: &["ap-northeast-1", "ap-south-1", "ap-southeast-3", "eu-north-1", "sa-east-1"],
            price: rates("0.74", "2.22"),
        },
    ]),

    // ---- OpenAI (open-weight) -------------------------------------------------------------
    // gpt-oss-20b: $0.07 / $0.30; Mumbai $0.08 / $0.35. [litellm], [regions]; read 2026-11-25.
    regional_row("openai.gpt-oss-20b-1:0", OPENAI, rates("0.07", "0.30"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.08", "0.35") },
    ]),
    // gpt-oss-120b: $0.15 / $0.60; Mumbai $0.18 / $0.71. [litellm], [regions]; read 2026-11-25.
    regional_row("openai.gpt-oss-120b-1:0", OPENAI, rates("0.15", "0.60"), &[
        Regional { regions: &["ap-south-1"], price: rates("0.18", "0.71") },
    ]),
];

#[cfg(test)]
mod tests {

    #[test]
    fn guardrail_units_are_priced_per_thousand_by_policy() {
        let units = GuardrailUnits {
            content: 2,
            topic: 2,
            word: 2,
            sensitive_information: 2,
            sensitive_information_free: 2,
            contextual_grounding: 0,
        };
        // 2 × ($0.15 + $0.15 + $0.10) / 1,000; words and regexes are free.
        assert_eq!(units.cost(), "0.0008".parse::<Decimal>().unwrap());
        assert_eq!(GuardrailUnits::default().cost(), Decimal::ZERO);
        let worst = GuardrailUnits::worst_case(1_500, 100);
        assert!(worst.cost() > units.cost());
        assert_eq!(
            worst.content,
            3 + 2 * 2 + 1,
            "2 input units +1, 1.6k output chars: 2 units ×2 +1"
        );
    }

    use std::collections::HashSet;

    use super::*;

    const HAIKU_4_5: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";
    const SONNET_4: &str = "anthropic.claude-sonnet-4-20250514-v1:0";

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn spec(model_id: &str, region: &str, pricing: Option<Pricing>) -> ModelEndpointSpec {
        serde_json::from_value::<ModelEndpointSpec>(serde_json::json!({
            "modelId": model_id,
            "region": region,
        }))
        .map(|spec| ModelEndpointSpec { pricing, ..spec })
        .unwrap()
    }

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cache_read,
            cache_write_input_tokens: cache_write,
            cache_write_1h_input_tokens: 0,
        }
    }

    #[test]
    fn the_seed_call_costs_exactly_0_000279() {
        // The seed's call: Claude Haiku 4.5 in us-east-1, 24 input and 51 output tokens.
        // 24 × $1 + 51 × $5 = $279 per million calls like it = $0.000279.
        let price = builtin_price(HAIKU_4_5, "us-east-1").unwrap();
        assert_eq!(price.input_per_million, dec("1"));
        assert_eq!(price.output_per_million, dec("5"));
        let cost = price.cost(&usage(24, 51, 0, 0));
        assert_eq!(cost, dec("0.000279"));
        assert_eq!(cost.to_string(), "0.000279");
        // The same through the endpoint, as the seed's ModelEndpoint declares it.
        let cost = price_for(&spec(HAIKU_4_5, "us-east-1", None), HAIKU_4_5)
            .unwrap()
            .cost(&usage(24, 51, 0, 0));
        assert_eq!(cost.to_string(), "0.000279");
    }

    #[test]
    fn profile_ids_resolve_to_the_base_models_price() {
        let base = builtin_price(SONNET_4, "us-east-1").unwrap();
        for prefix in ["us.", "eu.", "apac.", "jp.", "au.", "global.", "us-gov."] {
            let id = format!("{prefix}{SONNET_4}");
            assert_eq!(builtin_price(&id, "us-east-1"), Some(base), "{id}");
        }
        let llama = "meta.llama3-3-70b-instruct-v1:0";
        assert_eq!(
            builtin_price(&format!("us.{llama}"), "us-east-2"),
            builtin_price(llama, "us-east-2")
        );
        assert_eq!(
            builtin_price(&format!("us.{llama}"), "us-east-2")
                .unwrap()
                .input_per_million,
            dec("0.72")
        );
    }

    #[test]
    fn geographic_profiles_of_claude_4_5_cost_ten_percent_more_than_global() {
        let list = builtin_price(HAIKU_4_5, "us-east-1").unwrap();
        assert_eq!(
            builtin_price(&format!("global.{HAIKU_4_5}"), "us-east-1"),
            Some(list)
        );
        let geo = ModelPrice {
            input_per_million: dec("1.1"),
            output_per_million: dec("5.5"),
            cache_read_per_million: Some(dec("0.11")),
            cache_write_per_million: Some(dec("1.375")),
            long_context: None,
        };
        for prefix in ["us.", "eu.", "apac.", "jp.", "au."] {
            let id = format!("{prefix}{HAIKU_4_5}");
            assert_eq!(builtin_price(&id, "us-east-1"), Some(geo), "{id}");
        }
        // 24 × $1.10 + 51 × $5.50 = $306.90 per million.
        let cost = builtin_price(&format!("us.{HAIKU_4_5}"), "us-east-1")
            .unwrap()
            .cost(&usage(24, 51, 0, 0));
        assert_eq!(cost.to_string(), "0.0003069");
    }

    #[test]
    fn arns_resolve() {
        let base = builtin_price(HAIKU_4_5, "us-east-1");
        for arn in [
            format!("arn:aws:bedrock:us-east-1::foundation-model/{HAIKU_4_5}"),
            format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.{HAIKU_4_5}"),
        ] {
            assert_eq!(builtin_price(&arn, "us-east-1"), base, "{arn}");
        }
        let geo =
            format!("arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.{HAIKU_4_5}");
        assert_eq!(
            builtin_price(&geo, "us-west-2").unwrap().input_per_million,
            dec("1.1")
        );
        let gov = "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:inference-profile/us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(
            builtin_price(gov, "us-gov-west-1")
                .unwrap()
                .input_per_million,
            dec("3.6")
        );
        for opaque in [
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a1b2c3d4e5f6",
            "arn:aws:s3:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1",
            "arn:aws:bedrock:us-east-1::foundation-model/",
            "us.",
            "",
        ] {
            assert_eq!(builtin_price(opaque, "us-east-1"), None, "{opaque}");
        }
    }

    #[test]
    fn an_unknown_model_is_an_error_that_names_it() {
        let err = price_for(
            &spec("acme.unknown-model-v1:0", "eu-west-1", None),
            "acme.unknown-model-v1:0",
        )
        .unwrap_err();
        assert_eq!(err.model_id(), "acme.unknown-model-v1:0");
        assert_eq!(err.region(), "eu-west-1");
        let message = err.to_string();
        assert!(message.contains("acme.unknown-model-v1:0"), "{message}");
        assert!(message.contains("eu-west-1"), "{message}");
        let _: &dyn std::error::Error = &err;
        // Close misses are unknown too: no fuzzy matching of ids.
        assert_eq!(
            builtin_price("anthropic.claude-haiku-4-5", "us-east-1"),
            None
        );
        assert_eq!(
            builtin_price("xx.anthropic.claude-3-haiku-20240307-v1:0", "us-east-1"),
            None
        );
    }

    #[test]
    fn the_endpoints_pricing_overrides_the_table() {
        let pricing = Pricing {
            input_per_million_tokens: money("0.5"),
            output_per_million_tokens: money("2.25"),
            cache_read_per_million_tokens: None,
            cache_write_per_million_tokens: Some(money("0.75")),
        };
        let expect = ModelPrice {
            input_per_million: dec("0.5"),
            output_per_million: dec("2.25"),
            cache_read_per_million: None,
            cache_write_per_million: Some(dec("0.75")),
            long_context: None,
        };
        assert_eq!(
            price_for(
                &spec(HAIKU_4_5, "us-east-1", Some(pricing.clone())),
                HAIKU_4_5
            ),
            Ok(expect)
        );
        // It also prices models the table does not know.
        assert_eq!(
            price_for(
                &spec("acme.unknown-model-v1:0", "us-east-1", Some(pricing)),
                "acme.unknown-model-v1:0"
            ),
            Ok(expect)
        );
        // Cache reads fall back to the input price, writes use their own.
        assert_eq!(expect.cost(&usage(0, 0, 1_000_000, 1_000_000)), dec("1.25"));
    }

    #[test]
    fn cache_tokens_are_priced_at_the_cache_rates() {
        // Claude Sonnet 4: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
        let price = builtin_price(SONNET_4, "us-east-1").unwrap();
        // 100 × 3 + 200 × 15 + 10 000 × 0.30 + 4 000 × 3.75 = 300 + 3000 + 3000 + 15000 = 21300.
        assert_eq!(price.cost(&usage(100, 200, 10_000, 4_000)), dec("0.0213"));
        // Nova Micro: cache read $0.00875, no cache-write price: writes at the input price $0.035.
        let nova = builtin_price("amazon.nova-micro-v1:0", "us-east-1").unwrap();
        assert_eq!(nova.cache_write_per_million, None);
        assert_eq!(nova.cost(&usage(0, 0, 1_000, 1_000)), dec("0.00004375"));
        // A model without cache prices charges cache tokens as input.
        let llama = builtin_price("meta.llama3-3-70b-instruct-v1:0", "us-east-1").unwrap();
        assert_eq!(
            llama.cost(&usage(0, 0, 500_000, 500_000)),
            llama.cost(&usage(1_000_000, 0, 0, 0))
        );
        assert_eq!(llama.cost(&usage(1_000_000, 0, 0, 0)), dec("0.72"));
    }

    #[test]
    fn hour_long_cache_writes_cost_twice_the_input_price() {
        // Claude Sonnet 4: $3 in; five-minute writes $3.75, hour-long ones $6.
        let price = builtin_price(SONNET_4, "us-east-1").unwrap();
        let mixed = TokenUsage {
            cache_write_input_tokens: 3_000,
            cache_write_1h_input_tokens: 1_000,
            ..TokenUsage::default()
        };
        // 2 000 × 3.75 + 1 000 × 6 = 13 500 micro-dollars.
        assert_eq!(price.cost(&mixed), dec("0.0135"));
        // Nova prices no writes: an hour-long write is charged as input, like any other.
        let nova = builtin_price("amazon.nova-micro-v1:0", "us-east-1").unwrap();
        let hour = TokenUsage {
            cache_write_input_tokens: 1_000,
            cache_write_1h_input_tokens: 1_000,
            ..TokenUsage::default()
        };
        assert_eq!(nova.cost(&hour), nova.cost(&usage(1_000, 0, 0, 0)));
    }

    #[test]
    fn sums_are_exact() {
        // One input token of Nova Micro costs $0.000000035; a thousand of them, added one call at a
        // time, cost exactly $0.000035 — no float drift.
        let nova = builtin_price("amazon.nova-micro-v1:0", "us-east-1").unwrap();
        let one = nova.cost(&usage(1, 0, 0, 0));
        assert_eq!(one, dec("0.000000035"));
        let total: Decimal = (0..1_000).map(|_| one).sum();
        assert_eq!(total, dec("0.000035"));
        assert_eq!(total, nova.cost(&usage(1_000, 0, 0, 0)));
        // 0.1 + 0.2 is 0.3 here.
        let price = rates("0.1", "0.2");
        assert_eq!(price.cost(&usage(1_000_000, 1_000_000, 0, 0)), dec("0.3"));
        // Zero usage costs zero.
        assert_eq!(price.cost(&TokenUsage::default()), Decimal::ZERO);
        // The biggest counts stay exact: u64::MAX tokens of Claude Opus 4 output at $75.
        let opus = builtin_price("anthropic.claude-opus-4-20250514-v1:0", "us-east-1").unwrap();
        let huge = opus.cost(&usage(0, u64::MAX, 0, 0));
        assert_eq!(huge, Decimal::from(u64::MAX) * dec("75") / dec("1000000"));
        assert_eq!(huge.to_string(), "1383505805528216.371125");
    }

    #[test]
    fn the_price_follows_the_id_called_not_the_id_written() {
        let endpoint = spec(HAIKU_4_5, "us-east-1", None);
        let geo = price_for(&endpoint, &format!("us.{HAIKU_4_5}")).unwrap();
        let global = price_for(&endpoint, &format!("global.{HAIKU_4_5}")).unwrap();
        assert_eq!(geo.input_per_million, dec("1.1"));
        assert_eq!(global.input_per_million, dec("1"));
    }

    #[test]
    fn claude_sonnet_4_charges_its_long_context_rates_past_200k_input_tokens() {
        let sonnet = builtin_price(SONNET_4, "us-east-1").unwrap();
        // 200,000 tokens in (cache included) is still standard: 150k × $3 + 50k × $0.30 + 1k × $15.
        let at_threshold = sonnet.cost(&usage(150_000, 1_000, 50_000, 0));
        assert_eq!(at_threshold, dec("0.48"));
        // One more token, and every token is charged the long-context rates:
        // 150,001 × $6 + 1,000 × $22.50 + 50,000 × $0.60 = $0.952506.
        let past = sonnet.cost(&usage(150_001, 1_000, 50_000, 0));
        assert_eq!(past, dec("0.952506"));
        // A geographic profile of Sonnet 4.5 adds its 10% to the long-context rates too.
        let sonnet_4_5 = "anthropic.claude-sonnet-4-5-20250929-v1:0";
        let geo = builtin_price(&format!("us.{sonnet_4_5}"), "us-east-1").unwrap();
        assert_eq!(geo.cost(&usage(300_000, 0, 0, 0)), dec("1.98"));
        // Models without the tier keep their rates however long the prompt.
        let haiku = builtin_price(HAIKU_4_5, "us-east-1").unwrap();
        assert_eq!(haiku.cost(&usage(1_000_000, 0, 0, 0)), dec("1"));
    }

    #[test]
    fn a_cost_too_big_for_a_decimal_saturates_instead_of_wrapping() {
        let absurd = ModelPrice {
            input_per_million: money("999999999999.999999").amount(),
            ..rates("1", "1")
        };
        assert_eq!(absurd.cost(&usage(u64::MAX, 0, 0, 0)), Decimal::MAX);
        let negative = ModelPrice {
            input_per_million: dec("-1"),
            ..rates("1", "1")
        };
        assert_eq!(negative.cost(&usage(1, 0, 0, 0)), Decimal::MAX);
    }

    #[test]
    fn regional_prices_follow_the_source_region() {
        let pro = |region: &str| builtin_price("amazon.nova-pro-v1:0", region).unwrap();
        assert_eq!(pro("us-east-1").input_per_million, dec("0.80"));
        assert_eq!(pro("us-west-2").input_per_million, dec("0.80"));
        assert_eq!(pro("eu-central-1").input_per_million, dec("1.05"));
        assert_eq!(pro("eu-west-3").output_per_million, dec("4.20"));
        assert_eq!(pro("ap-south-1").input_per_million, dec("0.94"));
        assert_eq!(pro("ap-northeast-1").input_per_million, dec("0.84"));
        assert_eq!(pro("us-gov-west-1").input_per_million, dec("0.96"));
        // The profile prefix does not choose the price; the source region does.
        assert_eq!(
            builtin_price("eu.amazon.nova-pro-v1:0", "eu-west-1"),
            Some(pro("eu-west-1"))
        );
        assert_eq!(
            builtin_price("apac.amazon.nova-pro-v1:0", "ap-south-1"),
            Some(pro("ap-south-1"))
        );
        // A regional price is final: no geographic premium on top of GovCloud's.
        let gov = builtin_price(
            "us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us-gov-east-1",
        )
        .unwrap();
        assert_eq!(gov, cached("3.60", "18", "0.36", "4.50"));
        let mistral =
            |region: &str| builtin_price("mistral.mistral-large-2402-v1:0", region).unwrap();
        assert_eq!(mistral("us-east-1").input_per_million, dec("4"));
        assert_eq!(mistral("eu-west-3").input_per_million, dec("5.2"));
    }

    #[test]
    fn the_table_is_well_formed() {
        let mut ids = HashSet::new();
        for row in TABLE {
            assert!(ids.insert(row.id), "{} appears twice", row.id);
            assert_eq!(
                model_id::parse(row.id).map(|m| (m.base, m.route)),
                Some((row.id, Route::InRegion)),
                "{} is not a base id",
                row.id
            );
            assert!(!row.provider.is_empty());
            for price in std::iter::once(&row.price).chain(row.regional.iter().map(|r| &r.price)) {
                assert!(price.input_per_million > Decimal::ZERO, "{}", row.id);
                // Embedding models bill input tokens only.
                let embedding = row.id.contains(".titan-embed-") || row.id.contains(".embed-");
                assert_eq!(
                    price.output_per_million > Decimal::ZERO,
                    !embedding,
                    "{}",
                    row.id
                );
                if let Some(read) = price.cache_read_per_million {
                    assert!(
                        read < price.input_per_million,
                        "{}: cache reads are discounted",
                        row.id
                    );
                }
                if let Some(write) = price.cache_write_per_million {
                    assert!(
                        write >= price.input_per_million,
                        "{}: cache writes are not",
                        row.id
                    );
                }
            }
            for regional in row.regional {
                assert!(!regional.regions.is_empty(), "{}", row.id);
                for pattern in regional.regions {
                    let name = pattern.strip_suffix('*').unwrap_or(pattern);
                    assert!(
                        !name.contains('*') && name.len() >= 3,
                        "{}: {pattern}",
                        row.id
                    );
                }
            }
            assert!(builtin_price(row.id, "us-east-1").is_some());
        }
        assert_eq!(builtin_models().count(), TABLE.len());
        assert!(TABLE.len() >= 50, "{} models", TABLE.len());
        let models: Vec<_> = builtin_models().collect();
        assert!(models.contains(&(HAIKU_4_5, "Anthropic")));
        assert!(models.contains(&("openai.gpt-oss-120b-1:0", "OpenAI")));
    }

    #[test]
    fn the_families_of_the_brief_are_all_there() {
        for id in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            HAIKU_4_5,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "anthropic.claude-3-7-sonnet-20250219-v1:0",
            SONNET_4,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-opus-4-20250514-v1:0",
            "anthropic.claude-opus-4-1-20250805-v1:0",
            "anthropic.claude-opus-4-5-20251101-v1:0",
            "amazon.nova-micro-v1:0",
            "amazon.nova-lite-v1:0",
            "amazon.nova-pro-v1:0",
            "amazon.nova-premier-v1:0",
            "meta.llama3-1-8b-instruct-v1:0",
            "meta.llama3-1-70b-instruct-v1:0",
            "meta.llama3-1-405b-instruct-v1:0",
            "meta.llama3-2-1b-instruct-v1:0",
            "meta.llama3-2-3b-instruct-v1:0",
            "meta.llama3-2-11b-instruct-v1:0",
            "meta.llama3-2-90b-instruct-v1:0",
            "meta.llama3-3-70b-instruct-v1:0",
            "meta.llama4-maverick-17b-instruct-v1:0",
            "meta.llama4-scout-17b-instruct-v1:0",
            "mistral.mistral-7b-instruct-v0:2",
            "mistral.mixtral-8x7b-instruct-v0:1",
            "mistral.mistral-large-2402-v1:0",
            "mistral.mistral-large-2407-v1:0",
            "cohere.command-r-v1:0",
            "cohere.command-r-plus-v1:0",
            "ai21.jamba-1-5-large-v1:0",
            "ai21.jamba-1-5-mini-v1:0",
            "deepseek.r1-v1:0",
            "openai.gpt-oss-20b-1:0",
            "openai.gpt-oss-120b-1:0",
        ] {
            assert!(builtin_price(id, "us-east-1").is_some(), "{id} is missing");
        }
        // The prices NOTES.md gives from Anthropic's page.
        for (id, input, output) in [
            (HAIKU_4_5, "1", "5"),
            ("anthropic.claude-3-5-haiku-20241022-v1:0", "0.8", "4"),
            (SONNET_4, "3", "15"),
            ("anthropic.claude-sonnet-4-5-20250929-v1:0", "3", "15"),
            ("anthropic.claude-opus-4-20250514-v1:0", "15", "75"),
            ("anthropic.claude-opus-4-1-20250805-v1:0", "15", "75"),
            ("anthropic.claude-opus-4-5-20251101-v1:0", "5", "25"),
        ] {
            let price = builtin_price(id, "us-east-1").unwrap();
            assert_eq!(
                (price.input_per_million, price.output_per_million),
                (dec(input), dec(output)),
                "{id}"
            );
        }
    }

    #[test]
    fn price_literals_parse_exactly() {
        for s in [
            "0", "1", "0.00875", "0.682424", "18.75", "1976.678", "12.50",
        ] {
            assert_eq!(usd(s), dec(s), "{s}");
            assert_eq!(usd(s).to_string(), s);
        }
        assert_eq!(GEO_PREMIUM, dec("1.1"));
    }
}

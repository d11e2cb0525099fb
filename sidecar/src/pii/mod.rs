//! Local PII filter: applies a `GuardrailPolicy`'s `sensitiveInformationPolicy` to a prompt before
//! it leaves the pod, and to the model's answer, without a network call.
//!
//! `BLOCK` refuses the text naming the entity type; `ANONYMIZE` replaces each match with `{TYPE}`
//! (or `{name}` for a custom regex), as Bedrock Guardrails do. Only the types in
//! [`detected_types`] are detected here; the others are accepted in a policy and left to the
//! Bedrock guardrail itself.
//!
//! Every built-in detector is a `regex` (linear time, compiled once) followed by a check of the
//! match and a bounded look at the bytes around it, so its work per KiB of text is bounded.
//!
//! This module is the filter (policy compilation, `apply`, masking); `detect` holds the built-in
//! detectors, `stream` what a stream releases and what it holds back.

use std::borrow::Cow;
use std::fmt;

use k8s_ai_api::guardrail_policy::{PiiAction, PiiEntityType, SensitiveInformationPolicy};
use regex::{Regex, RegexBuilder};

mod detect;
mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use detect::{Builtin, PATTERNS, Patterns};
pub use stream::STREAM_HOLD_BACK;

/// Compiled-program limit for a custom pattern, so a policy cannot make the sidecar build a huge
/// automaton (e.g. `\w{1000}{1000}`).
const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache limit for a custom pattern; past it the regex crate falls back to a slower but
/// still linear engine instead of growing memory.
const CUSTOM_REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;

/// The entity types with a local detector, in the order of `PiiEntityType`.
static DETECTED: [PiiEntityType; 8] = [
    PiiEntityType::AwsAccessKey,
    PiiEntityType::AwsSecretKey,
    PiiEntityType::CreditDebitCardNumber,
    PiiEntityType::Email,
    PiiEntityType::IpAddress,
    PiiEntityType::Phone,
    PiiEntityType::Url,
    PiiEntityType::UsSocialSecurityNumber,
];

/// The PII entity types this module detects; rules for other types are accepted and ignored
/// locally (the Bedrock guardrail still applies them).
#[must_use]
pub fn detected_types() -> &'static [PiiEntityType] {
    &DETECTED
}

/// Why a policy could not be compiled into a filter.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    /// A custom regex does not compile, or compiles past the size limit.
    #[error("sensitive information regex {name:?} is invalid: {source}")]
    InvalidRegex {
        /// The rule's name.
        name: String,
        /// What the regex crate said.
        #[source]
        source: regex::Error,
    },
    /// A custom regex name is not 1-100 characters of `A-Z a-z 0-9 _ -` (it is shown as `{name}`).
    #[error(
        "sensitive information regex name {0:?} must be 1-100 characters of A-Z, a-z, 0-9, _ or -"
    )]
    InvalidName(String),
    /// A built-in detector failed to compile: a bug, caught by the tests.
    #[error("built-in PII detectors failed to compile: {0}")]
    Builtin(#[source] regex::Error),
}

/// The text was refused because it contains an entity whose rule is `BLOCK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The PII type as Bedrock spells it (e.g. `AWS_ACCESS_KEY`), or the custom regex's name.
    pub entity: String,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "blocked by the sensitive information policy: {}",
            self.entity
        )
    }
}

impl std::error::Error for Blocked {}

/// A compiled `sensitiveInformationPolicy`: build it once per policy and share it (it is
/// `Send + Sync`; applying it takes `&self`).
#[derive(Debug)]
pub struct PiiFilter {
    rules: Vec<Rule>,
}

/// One entity type or custom regex with its action.
#[derive(Debug)]
struct Rule {
    /// Reported when blocked, and inside the mask.
    entity: String,
    /// `{entity}`, precomputed.
    mask: String,
    action: PiiAction,
    detector: Detector,
}

#[derive(Debug)]
enum Detector {
    Builtin(Builtin, &'static Patterns),
    Custom(Regex),
}

/// A match of one rule, as byte offsets into the text.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    rule: usize,
}

impl PiiFilter {
    /// Compiles the policy. Rules for types without a local detector are skipped; when a type is
    /// listed twice the stricter action (`BLOCK`) is kept.
    ///
    /// # Errors
    ///
    /// A custom regex that does not compile or is too large, or a custom regex name that cannot
    /// be used as a mask.
    pub fn new(policy: &SensitiveInformationPolicy) -> Result<Self, PiiError> {
        let mut rules: Vec<Rule> = Vec::new();
        for entity in &policy.pii_entities {
            let Some(builtin) = Builtin::of(entity.type_) else {
                continue;
            };
            if let Some(existing) = rules
                .iter_mut()
                .find(|r| matches!(r.detector, Detector::Builtin(b, _) if b == builtin))
            {
                if entity.action == PiiAction::Block {
                    existing.action = PiiAction::Block;
                }
                continue;
            }
            let patterns = match &*PATTERNS {
                Ok(p) => p,
                Err(e) => return Err(PiiError::Builtin(e.clone())),
            };
            rules.push(Rule::new(
                builtin.entity().to_owned(),
                entity.action,
                Detector::Builtin(builtin, patterns),
            ));
        }
        for custom in &policy.regexes {
            let name = &custom.name;
            if name.is_empty()
                || name.len() > 100
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(PiiError::InvalidName(name.clone()));
            }
            let regex = RegexBuilder::new(&custom.pattern)
                .size_limit(CUSTOM_REGEX_SIZE_LIMIT)
                .dfa_size_limit(CUSTOM_REGEX_DFA_SIZE_LIMIT)
                .build()
                .map_err(|source| PiiError::InvalidRegex {
                    name: name.clone(),
                    source,
                })?;
            rules.push(Rule::new(
                name.clone(),
                custom.action,
                Detector::Custom(regex),
            ));
        }
        Ok(Self { rules })
    }

    /// True when nothing would ever be blocked or masked (no rule with a local detector).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the policy: `Err` when a `BLOCK` rule matches anywhere (the earliest such match
    /// names the entity), else the text with every `ANONYMIZE` match replaced by `{TYPE}`.
    /// Borrowed when nothing matched.
    ///
    /// # Errors
    ///
    /// [`Blocked`] when a `BLOCK` rule matches.
    pub fn apply<'a>(&self, text: &'a str) -> Result<Cow<'a, str>, Blocked> {
        if self.rules.is_empty() || text.is_empty() {
            return Ok(Cow::Borrowed(text));
        }
        let hits = self.anonymize_hits(text)?;
        if hits.is_empty() {
            return Ok(Cow::Borrowed(text));
        }
        Ok(Cow::Owned(self.settle(self.mask(text, &hits, text.len()))))
    }

    /// `masked` with the entities its masks completed masked too: a mask's brace can end an
    /// entity the masked text's first character had continued (`i@e.cx_@e.com` masks to
    /// `i@e.cx{EMAIL}`, and `i@e.cx` is an address there). Masks never match, so a few passes
    /// reach the fixed point.
    fn settle(&self, mut masked: String) -> String {
        for _ in 0..4 {
            match self.anonymize_hits(&masked) {
                Ok(hits) if !hits.is_empty() => masked = self.mask(&masked, &hits, masked.len()),
                _ => break,
            }
        }
        masked
    }

    /// The `ANONYMIZE` matches to mask in `text`, in order, none overlapping; `Err` when a
    /// `BLOCK` rule matches anywhere (it wins over `ANONYMIZE` whatever the overlap).
    fn anonymize_hits(&self, text: &str) -> Result<Vec<Hit>, Blocked> {
        let mut first_block: Option<Hit> = None;
        let mut hits = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.action != PiiAction::Block {
                continue;
            }
            hits.clear();
            rule.find(text, i, &mut hits);
            if let Some(h) = hits.iter().min_by_key(|h| h.start)
                && first_block.is_none_or(|f| h.start < f.start)
            {
                first_block = Some(*h);
            }
        }
        if let Some(hit) = first_block {
            let entity = self
                .rules
                .get(hit.rule)
                .map_or_else(String::new, |r| r.entity.clone());
            return Err(Blocked { entity });
        }

        hits.clear();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.action == PiiAction::Anonymize {
                rule.find(text, i, &mut hits);
            }
        }
        // Leftmost first, the longest of those starting together, then policy order; a hit that
        // overlaps an earlier kept one is dropped, so masks never nest or cut each other.
        hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end), h.rule));
        let mut kept: Vec<Hit> = Vec::with_capacity(hits.len());
        for hit in hits {
            if kept.last().is_none_or(|k| hit.start >= k.end) {
                kept.push(hit);
            }
        }
        Ok(kept)
    }

    /// `text[..upto]` with the `hits` that end by `upto` replaced by their masks.
    fn mask(&self, text: &str, hits: &[Hit], upto: usize) -> String {
        let mut out = String::with_capacity(upto);
        let mut pos = 0;
        for hit in hits.iter().filter(|h| h.end <= upto) {
            let (Some(before), Some(rule)) = (text.get(pos..hit.start), self.rules.get(hit.rule))
            else {
                continue;
            };
            out.push_str(before);
            out.push_str(&rule.mask);
            pos = hit.end;
        }
        out.push_str(text.get(pos..upto).unwrap_or_default());
        out
    }
}

impl Rule {
    fn new(entity: String, action: PiiAction, detector: Detector) -> Self {
        let mask = format!("{{{entity}}}");
        Self {
            entity,
            mask,
            action,
            detector,
        }
    }

    /// Appends this rule's non-empty matches in `text` to `hits`.
    fn find(&self, text: &str, rule: usize, hits: &mut Vec<Hit>) {
        let mut push = |start: usize, end: usize| {
            if start < end {
                hits.push(Hit { start, end, rule });
            }
        };
        match &self.detector {
            Detector::Builtin(builtin, patterns) => builtin.find(patterns, text, &mut push),
            Detector::Custom(regex) => {
                // The regex crate bounds one search at O(m * n) but iterating at O(m * n^2): a
                // pattern whose preferred alternative needs a long look-ahead before failing
                // (`[a-z]*@|[a-z]` on a run of letters) goes quadratic. Text size is bounded
                // upstream (413); the built-in patterns are measured linear in the tests.
                for m in regex.find_iter(text) {
                    push(m.start(), m.end());
                }
            }
        }
    }
}

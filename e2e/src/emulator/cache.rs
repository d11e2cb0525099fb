//! Prompt caching as Bedrock runs it for Claude and Nova: cache points (`cachePoint` blocks in the
//! tools, the system prompt and the messages) with a time to live of five minutes or an hour, a
//! minimum prefix below which nothing is cached, reads of the longest live prefix, and writes of
//! what follows it, reported per time to live (`cacheDetails`).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{error::AwsError, text::count_tokens};

/// A cache point's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ttl {
    FiveMinutes,
    OneHour,
}

impl Ttl {
    fn duration(self) -> Duration {
        match self {
            Ttl::FiveMinutes => Duration::from_secs(300),
            Ttl::OneHour => Duration::from_secs(3600),
        }
    }
}

/// The most cache points a request may have (Anthropic's limit, which Bedrock enforces).
const MAX_POINTS: usize = 4;

/// A `cachePoint` block's time to live, checked.
pub fn read_point(point: &Value, at: &str) -> Result<Ttl, AwsError> {
    if point["type"] != "default" {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value at '{at}.type' failed to satisfy constraint: Member must satisfy enum value set: [default]"
        )));
    }
    match point.get("ttl").and_then(Value::as_str) {
        None | Some("5m") => Ok(Ttl::FiveMinutes),
        Some("1h") => Ok(Ttl::OneHour),
        Some(other) => Err(AwsError::validation(format!(
            "1 validation error detected: Value '{other}' at '{at}.ttl' failed to satisfy constraint: Member must satisfy enum value set: [5m, 1h]"
        ))),
    }
}

/// The cache points of a request in order (tools, system, messages): the text before each, and
/// its time to live. Checks Bedrock's rules: at most four, and no point outliving one before it.
pub fn check_points(points: &[(String, Ttl)], base_model: &str) -> Result<(), AwsError> {
    if points.len() > MAX_POINTS {
        return Err(AwsError::validation(format!(
            "A maximum of {MAX_POINTS} blocks with cache_control may be provided. Found {}.",
            points.len()
        )));
    }
    if points.iter().any(|(_, ttl)| *ttl == Ttl::OneHour) && !has_hour_ttl(base_model) {
        return Err(AwsError::validation(
            "This model doesn't support a cachePoint ttl of 1h. Remove the ttl (5 minutes) and try again.",
        ));
    }
    if points.windows(2).any(|w| w[1].1 > w[0].1) {
        return Err(AwsError::validation(
            "Cache point TTLs must not increase from toolConfig to system to messages: a cache point with ttl 1h cannot follow one with ttl 5m.",
        ));
    }
    Ok(())
}

/// Whether Bedrock caches prompts of this model (Claude 3.5 Haiku, 3.7 Sonnet and the Claude 4
/// family, Nova); other models' cache points change nothing.
fn caches(base_model: &str) -> bool {
    [
        "anthropic.claude-3-5-haiku",
        "anthropic.claude-3-7-",
        "anthropic.claude-sonnet-4",
        "anthropic.claude-opus-4",
        "anthropic.claude-haiku-4",
        "amazon.nova-",
    ]
    .iter()
    .any(|p| base_model.starts_with(p))
}

/// The hour-long time to live: Claude Haiku, Sonnet and Opus 4.5 and later.
fn has_hour_ttl(base_model: &str) -> bool {
    [
        "anthropic.claude-haiku-4-5",
        "anthropic.claude-sonnet-4-5",
        "anthropic.claude-sonnet-4-6",
        "anthropic.claude-opus-4-5",
        "anthropic.claude-opus-4-6",
    ]
    .iter()
    .any(|p| base_model.starts_with(p))
}

/// The shortest prefix a model caches, in tokens (Anthropic's minimums: 4,096 for Haiku 4.5 and
/// Opus 4.5, 2,048 for the older Haiku, 1,024 for the others; Nova's 1,000).
fn minimum(base_model: &str) -> u64 {
    if base_model.starts_with("anthropic.claude-haiku-4-5")
        || base_model.starts_with("anthropic.claude-opus-4-5")
    {
        4096
    } else if base_model.starts_with("anthropic.claude-3-5-haiku") {
        2048
    } else if base_model.starts_with("amazon.nova-") {
        1000
    } else {
        1024
    }
}

/// What a call read from and wrote to the cache, in tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUse {
    pub read: u64,
    pub write_5m: u64,
    pub write_1h: u64,
}

impl CacheUse {
    pub fn write(&self) -> u64 {
        self.write_5m + self.write_1h
    }

    /// Bedrock's `cacheDetails`: the tokens written, per time to live.
    pub fn details(&self) -> Value {
        let mut details = Vec::new();
        if self.write_5m > 0 {
            details.push(json!({ "ttl": "5m", "inputTokens": self.write_5m }));
        }
        if self.write_1h > 0 {
            details.push(json!({ "ttl": "1h", "inputTokens": self.write_1h }));
        }
        Value::Array(details)
    }
}

/// The live cached prefixes: each prefix's hash (with its model) and when it expires.
#[derive(Debug, Default)]
pub struct Store(HashMap<u64, Instant>);

impl Store {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Runs `points` (at most `total` input tokens in all) for `base_model` at `now`: the longest
    /// live prefix is read (its life renewed), each longer prefix is written for its time to live.
    pub fn run(
        &mut self,
        base_model: &str,
        points: &[(String, Ttl)],
        total: u64,
        now: Instant,
    ) -> CacheUse {
        if !caches(base_model) {
            return CacheUse::default();
        }
        let min = minimum(base_model);
        let key = |prefix: &str| {
            let mut h = DefaultHasher::new();
            (base_model, prefix).hash(&mut h);
            h.finish()
        };
        let sized: Vec<(u64, u64, Ttl)> = points
            .iter()
            .map(|(prefix, ttl)| (key(prefix), count_tokens(prefix).min(total), *ttl))
            .filter(|(_, tokens, _)| *tokens >= min)
            .collect();
        let hit = sized
            .iter()
            .rposition(|(k, _, _)| self.0.get(k).is_some_and(|expires| *expires > now));
        let mut used = CacheUse::default();
        let mut covered = 0;
        if let Some(i) = hit {
            let (k, tokens, ttl) = sized[i];
            used.read = tokens;
            covered = tokens;
            self.0.insert(k, now + ttl.duration());
        }
        for (k, tokens, ttl) in sized.iter().skip(hit.map_or(0, |i| i + 1)) {
            if *tokens <= covered {
                continue;
            }
            let written = tokens - covered;
            match ttl {
                Ttl::FiveMinutes => used.write_5m += written,
                Ttl::OneHour => used.write_1h += written,
            }
            covered = *tokens;
            self.0.insert(*k, now + ttl.duration());
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";
    const SONNET: &str = "anthropic.claude-sonnet-4-20250514-v1:0";

    #[test]
    fn a_prefix_is_written_then_read_until_it_expires() {
        let mut store = Store::default();
        let long = "x".repeat(4 * 5000); // 5,000 tokens
        let points = vec![(long.clone(), Ttl::FiveMinutes)];
        let now = Instant::now();
        assert_eq!(
            store.run(HAIKU, &points, 6000, now),
            CacheUse {
                read: 0,
                write_5m: 5000,
                write_1h: 0
            }
        );
        assert_eq!(
            store.run(HAIKU, &points, 6000, now + Duration::from_secs(200)),
            CacheUse {
                read: 5000,
                ..CacheUse::default()
            }
        );
        // Read at 200 s renewed it: still there at 450 s, gone 301 s after that.
        assert_eq!(
            store
                .run(HAIKU, &points, 6000, now + Duration::from_secs(450))
                .read,
            5000
        );
        assert_eq!(
            store
                .run(HAIKU, &points, 6000, now + Duration::from_secs(900))
                .write_5m,
            5000
        );
    }

    #[test]
    fn longer_prefixes_write_only_what_follows_the_cached_one_and_short_ones_nothing() {
        let mut store = Store::default();
        let tools = "t".repeat(4 * 2000);
        let system = format!("{tools}{}", "s".repeat(4 * 1000));
        let now = Instant::now();
        store.run(SONNET, &[(tools.clone(), Ttl::OneHour)], 9000, now);
        let used = store.run(
            SONNET,
            &[
                (tools.clone(), Ttl::OneHour),
                (system.clone(), Ttl::FiveMinutes),
            ],
            9000,
            now,
        );
        assert_eq!(
            used,
            CacheUse {
                read: 2000,
                write_5m: 1000,
                write_1h: 0
            }
        );
        assert_eq!(
            Store::default().run(SONNET, &[("short".into(), Ttl::FiveMinutes)], 10, now),
            CacheUse::default()
        );
        assert_eq!(
            Store::default().run(
                "meta.llama3-3-70b-instruct-v1:0",
                &[(tools, Ttl::FiveMinutes)],
                9000,
                now
            ),
            CacheUse::default()
        );
    }

    #[test]
    fn bedrocks_rules_on_points() {
        let p = |ttl| ("p".to_owned(), ttl);
        assert!(check_points(&[p(Ttl::OneHour), p(Ttl::FiveMinutes)], HAIKU).is_ok());
        assert!(
            check_points(&[p(Ttl::FiveMinutes), p(Ttl::OneHour)], HAIKU)
                .unwrap_err()
                .message
                .contains("must not increase")
        );
        assert!(
            check_points(&[p(Ttl::OneHour)], SONNET)
                .unwrap_err()
                .message
                .contains("ttl of 1h")
        );
        assert!(
            check_points(&vec![p(Ttl::FiveMinutes); 5], HAIKU)
                .unwrap_err()
                .message
                .contains("maximum of 4")
        );
        assert!(read_point(&json!({ "type": "default", "ttl": "2h" }), "m").is_err());
    }
}

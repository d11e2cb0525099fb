//! The sidecar's settings: flags with environment fallbacks, as the webhook injects them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Bedrock through localhost for one pod: signs in with the pod's own identity (IRSA), applies
/// guardrails, rate limits and budgets, calls Bedrock and accounts for every token's cost.
///
/// The data port binds loopback only, so only containers of this pod can spend its budget.
/// Every option can be set from the environment variable shown; the operator's webhook sets them.
/// The standard AWS variables apply as well: AWS_REGION, AWS_ENDPOINT_URL,
/// AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_ENDPOINT_URL_STS, AWS_USE_FIPS_ENDPOINT,
/// AWS_MAX_ATTEMPTS (retries of a throttled or failed call; default 3 attempts),
/// AWS_BEARER_TOKEN_BEDROCK (a Bedrock API key, used instead of any role; HTTPS only),
/// AWS_ACCESS_KEY_ID, AWS_PROFILE, ...
/// Whether the sidecar places cache points itself.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCache {
    Off,
    Auto,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "ai-sidecar", version, about, long_about)]
pub struct Settings {
    /// The pod's name (the downward API's metadata.name).
    #[arg(long, env = "AI_SIDECAR_POD_NAME", default_value = "")]
    pub pod_name: String,

    /// The pod's UID (the downward API's metadata.uid): the sidecar uses and takes over only
    /// ledgers of this pod, never those of an earlier pod of the same name.
    #[arg(long, env = "AI_SIDECAR_POD_UID", default_value = "")]
    pub pod_uid: String,

    /// The pod's namespace: the only namespace whose endpoints and templates this sidecar serves.
    #[arg(long, env = "AI_SIDECAR_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// The ModelEndpoints (of the pod's namespace) this pod may use, comma-separated, from the
    /// pod's `ai.kernelpanic09.io/endpoints` annotation. Empty with --standalone: every endpoint
    /// in the config file.
    #[arg(
        long,
        env = "AI_SIDECAR_ENDPOINTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub endpoints: Vec<String>,

    /// Address of the data API. Keep it on loopback: anyone who reaches it spends the budget.
    #[arg(long, env = "AI_SIDECAR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Address of the admin API (/healthz, /readyz, /metrics), reachable by the kubelet. `[::]`
    /// is every address, IPv4 and IPv6 (0.0.0.0 where the host has no IPv6).
    #[arg(long, env = "AI_SIDECAR_ADMIN_LISTEN", default_value = "[::]:8091")]
    pub admin_listen: SocketAddr,

    /// The projected service-account token (audience sts.amazonaws.com) used for
    /// AssumeRoleWithWebIdentity. Re-read on every refresh: the kubelet rotates it.
    #[arg(
        long,
        env = "AI_SIDECAR_TOKEN_FILE",
        default_value = "/var/run/secrets/ai.kernelpanic09.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// Read ModelEndpoints, PromptTemplates and GuardrailPolicies from --config instead of the
    /// API server (local development, benchmarks). Credentials then come from the default AWS
    /// chain, or from the web-identity token file for endpoints with an irsaRoleArn.
    #[arg(long, env = "AI_SIDECAR_STANDALONE", requires = "config")]
    pub standalone: bool,

    /// A multi-document YAML file of ModelEndpoint, PromptTemplate and GuardrailPolicy objects,
    /// the same manifests one applies to a cluster.
    #[arg(long, env = "AI_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Deadline for one call to Bedrock, retries included; a stream's longest silence between events.
    #[arg(long, env = "AI_SIDECAR_UPSTREAM_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Cache points the sidecar adds to requests whose app placed none, for models Bedrock caches
    /// prompts of (Claude 3.5 Haiku and later, Nova): `off`, or `auto` (after the tools, the
    /// system prompt and the conversation before its newest turn). A cache write costs more than
    /// input (1.25 times for five minutes), a read a tenth of it: worth it where prompts repeat.
    #[arg(
        long,
        env = "AI_SIDECAR_PROMPT_CACHE",
        default_value = "off",
        value_enum
    )]
    pub prompt_cache: PromptCache,

    /// URL prefixes images may be fetched from (`https://host[:port]/path/`, comma-separated),
    /// for OpenAI's `image_url` and Anthropic's `url` image sources. Empty (the default): only
    /// inline images (data: URLs, base64), since a URL fetched from the pod could reach anything
    /// the pod can. Redirects are not followed.
    #[arg(long, env = "AI_SIDECAR_IMAGE_URL_ALLOW", default_value = "")]
    pub image_url_allow: String,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "AI_SIDECAR_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a client may take to send its request headers, and then its body. Clients are in the
    /// pod, on loopback: a request still half-sent after this is dropped (408 for a body).
    #[arg(long, env = "AI_SIDECAR_CLIENT_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub client_read_timeout: Duration,

    /// Most calls in flight to Bedrock at once from this pod, whatever the endpoints' limits.
    #[arg(long, env = "AI_SIDECAR_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Refresh temporary credentials this long before they expire.
    #[arg(long, env = "AI_SIDECAR_CREDENTIAL_REFRESH_BEFORE", default_value = "5m", value_parser = parse_duration)]
    pub credential_refresh_before: Duration,

    /// How often usage counters are written to the pod's ModelUsage ledgers (cluster mode).
    #[arg(long, env = "AI_SIDECAR_REPORT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// Threads serving requests. One (the default) runs everything on a single thread, as a
    /// sidecar of one pod needs: the least memory and the lowest added latency (throughput on one
    /// core: docs/benchmarks.md). More spread the load over that many cores (give the container
    /// the CPU).
    #[arg(long, env = "AI_SIDECAR_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,

    /// Grace period for in-flight requests on SIGTERM.
    #[arg(long, env = "AI_SIDECAR_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `json` (default) or `text`.
    #[arg(long, env = "AI_SIDECAR_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `ai_sidecar=debug`.
    #[arg(long, env = "AI_SIDECAR_LOG", default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub traces: crate::traces::TraceSettings,
}

impl Settings {
    /// The endpoint names this pod may use, trimmed, empties dropped.
    pub fn allowed_endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, "s"), |i| value.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {value:?}: expected e.g. 30s, 5m, 250ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {value:?}: use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn endpoints_from_the_annotation_format() {
        let s = Settings::parse_from(["ai-sidecar", "--endpoints", "claude-haiku, nova-pro,,"]);
        assert_eq!(s.allowed_endpoints(), ["claude-haiku", "nova-pro"]);
        assert!(s.listen.ip().is_loopback());
    }
}

//! The OpenTelemetry settings, from the standard `OTEL_*` variables (and their flags): where spans
//! go, with which headers, which calls are sampled, and the resource that names this sidecar.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Uri};

use super::Value;

/// Traces: off unless an OTLP endpoint is set.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Traces (OpenTelemetry; off unless an OTLP endpoint is set)")]
pub struct TraceSettings {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry Collector's port 4318): spans of model
    /// calls are sent to <URL>/v1/traces as OTLP JSON. Unset: no traces. A collector on the node
    /// is `http://$(AI_SIDECAR_NODE_IP):4318` (the webhook sets AI_SIDECAR_NODE_IP).
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// The URL spans are sent to, as is (instead of --otlp-endpoint followed by /v1/traces).
    #[arg(
        long = "otlp-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub traces_endpoint: Option<String>,

    /// Headers sent with every export, `key=value` comma-separated, values percent-encoded (a
    /// tracing backend's API key, say). Never logged.
    #[arg(
        long = "otlp-headers",
        env = "OTEL_EXPORTER_OTLP_HEADERS",
        hide_env_values = true,
        default_value = ""
    )]
    pub headers: String,

    /// The OTLP transport: only `http/json` (every OpenTelemetry Collector, Jaeger and Tempo
    /// take it on their OTLP/HTTP port); `grpc` and `http/protobuf` are refused at start.
    #[arg(
        long = "otlp-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/json"
    )]
    pub protocol: String,

    /// Longest one export may take, in milliseconds, retries included.
    #[arg(
        long = "otlp-timeout",
        env = "OTEL_EXPORTER_OTLP_TIMEOUT",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,

    /// How long finished spans wait to be sent together, in milliseconds (a batch is sent early
    /// once it holds 512 spans).
    #[arg(
        long = "trace-batch-delay",
        env = "OTEL_BSP_SCHEDULE_DELAY",
        default_value_t = 5_000
    )]
    pub batch_delay_ms: u64,

    /// Which calls are traced: `parentbased_always_on` (every call, unless the app's
    /// `traceparent` says its trace is not sampled), `parentbased_traceidratio`,
    /// `parentbased_always_off`, `always_on`, `always_off` or `traceidratio`.
    #[arg(
        long = "trace-sampler",
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub sampler: String,

    /// The share of traces the `*traceidratio` samplers keep, from 0 to 1 (default 1).
    #[arg(long = "trace-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG")]
    pub sampler_arg: Option<String>,

    /// `service.name` of the spans (default `ai-sidecar`, unless OTEL_RESOURCE_ATTRIBUTES names one).
    #[arg(long = "service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// More attributes of the spans' resource, `key=value` comma-separated, values
    /// percent-encoded. The pod's name, UID and namespace are added as k8s.pod.name,
    /// k8s.pod.uid and k8s.namespace.name unless given here.
    #[arg(
        long = "resource-attributes",
        env = "OTEL_RESOURCE_ATTRIBUTES",
        default_value = ""
    )]
    pub resource_attributes: String,

    /// Record the conversation in spans (gen_ai.system_instructions, gen_ai.input.messages,
    /// gen_ai.output.messages), as the guardrail left it (masked). Off by default: spans then
    /// hold no text of prompts or answers. Refused over plain HTTP to anything but loopback.
    #[arg(
        long = "trace-message-content",
        env = "AI_SIDECAR_TRACE_MESSAGE_CONTENT"
    )]
    pub message_content: bool,

    /// Turns traces off whatever else is set (OpenTelemetry's switch).
    #[arg(long = "otel-sdk-disabled", env = "OTEL_SDK_DISABLED")]
    pub disabled: bool,
}

/// Why the trace settings cannot be used: the sidecar does not start (a platform team that set
/// them wants traces, and learns at once rather than from a silent gap).
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    #[error("{var} {url:?} is not an http:// or https:// URL with a host")]
    Url { var: &'static str, url: String },
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0}: the sidecar sends OTLP over HTTP as JSON; set http/json and point OTEL_EXPORTER_OTLP_ENDPOINT at the receiver's OTLP/HTTP port (4318 on a Collector)"
    )]
    Protocol(String),
    #[error("OTEL_EXPORTER_OTLP_HEADERS: {0}")]
    Header(String),
    #[error(
        "OTEL_TRACES_SAMPLER={0} is not one of parentbased_always_on, parentbased_always_off, parentbased_traceidratio, always_on, always_off, traceidratio"
    )]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, not {0:?}")]
    SamplerArg(String),
    #[error("OTEL_RESOURCE_ATTRIBUTES: {0}")]
    Resource(String),
    #[error(
        "AI_SIDECAR_TRACE_MESSAGE_CONTENT would send prompts and answers to {0} over plain HTTP across the network: use an https:// endpoint, or a collector on loopback"
    )]
    ContentInClear(String),
    #[error("OTEL_EXPORTER_OTLP_TIMEOUT and OTEL_BSP_SCHEDULE_DELAY must be above 0 ms")]
    ZeroDuration,
}

/// Which traces are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Traces whose id falls under this share of ids (1: all, 0: none).
    Ratio(f64),
    /// The parent's decision when the app sent a `traceparent`, else the ratio.
    ParentBased(f64),
}

impl Sampler {
    fn parse(name: &str, arg: Option<&str>) -> Result<Self, TraceConfigError> {
        let ratio = || -> Result<f64, TraceConfigError> {
            let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0);
            };
            arg.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| TraceConfigError::SamplerArg(arg.to_owned()))
        };
        Ok(match name.trim() {
            "always_on" => Sampler::Ratio(1.0),
            "always_off" => Sampler::Ratio(0.0),
            "traceidratio" => Sampler::Ratio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(1.0),
            "parentbased_always_off" => Sampler::ParentBased(0.0),
            "parentbased_traceidratio" => Sampler::ParentBased(ratio()?),
            other => return Err(TraceConfigError::Sampler(other.to_owned())),
        })
    }

    /// Whether a call in trace `trace_id` is recorded; `parent_sampled` is the app's
    /// `traceparent` flag, if it sent one.
    pub fn samples(self, trace_id: u128, parent_sampled: Option<bool>) -> bool {
        let ratio = match (self, parent_sampled) {
            (Sampler::ParentBased(_), Some(sampled)) => return sampled,
            (Sampler::Ratio(r) | Sampler::ParentBased(r), _) => r,
        };
        // A W3C trace id's low bits are random: 32 of them, as a share of 2^32, say yes or no.
        let low = u32::try_from(trace_id & 0xffff_ffff).unwrap_or(u32::MAX);
        ratio >= 1.0 || f64::from(low) < ratio * 4_294_967_296.0
    }
}

/// The settings, checked.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// Where spans are POSTed.
    pub url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub batch_delay: Duration,
    pub sampler: Sampler,
    pub resource: Vec<(String, Value)>,
    pub message_content: bool,
}

/// What names this pod in the resource when the settings do not.
pub struct PodIdentity<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub namespace: &'a str,
}

impl TraceSettings {
    /// The checked configuration, `None` when traces are off.
    pub fn config(&self, pod: &PodIdentity<'_>) -> Result<Option<TraceConfig>, TraceConfigError> {
        let url = match (
            set(self.traces_endpoint.as_deref()),
            set(self.endpoint.as_deref()),
        ) {
            _ if self.disabled => return Ok(None),
            (None, None) => return Ok(None),
            (Some(url), _) => parse_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?,
            (None, Some(base)) => {
                let base = parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
                let mut parts = base.into_parts();
                parts.path_and_query = path.parse().ok();
                Uri::from_parts(parts).map_err(|_| TraceConfigError::Url {
                    var: "OTEL_EXPORTER_OTLP_ENDPOINT",
                    url: path,
                })?
            }
        };
        let protocol = self.protocol.trim();
        if protocol != "http/json" {
            return Err(TraceConfigError::Protocol(protocol.to_owned()));
        }
        if self.timeout_ms == 0 || self.batch_delay_ms == 0 {
            return Err(TraceConfigError::ZeroDuration);
        }
        if self.message_content && !private_route(&url) {
            return Err(TraceConfigError::ContentInClear(shown(&url)));
        }
        let headers = pairs(&self.headers)
            .map(|pair| {
                let (key, value) = pair.map_err(TraceConfigError::Header)?;
                let name = HeaderName::try_from(key.as_str()).map_err(|_| {
                    TraceConfigError::Header(format!("{key:?} is not a header name"))
                })?;
                let value = HeaderValue::try_from(value).map_err(|_| {
                    TraceConfigError::Header(format!("the value of {key} is not a header value"))
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(TraceConfig {
            url,
            headers,
            timeout: Duration::from_millis(self.timeout_ms),
            batch_delay: Duration::from_millis(self.batch_delay_ms),
            sampler: Sampler::parse(&self.sampler, self.sampler_arg.as_deref())?,
            resource: self.resource(pod)?,
            message_content: self.message_content,
        }))
    }

    /// service.name first (OTEL_SERVICE_NAME wins), the settings' attributes, then the pod's.
    fn resource(&self, pod: &PodIdentity<'_>) -> Result<Vec<(String, Value)>, TraceConfigError> {
        let mut given: Vec<(String, String)> = pairs(&self.resource_attributes)
            .collect::<Result<_, _>>()
            .map_err(TraceConfigError::Resource)?;
        let named = given.iter().position(|(k, _)| k == "service.name");
        let service = match (&self.service_name, named) {
            (Some(name), _) if !name.trim().is_empty() => name.trim().to_owned(),
            (_, Some(i)) => given[i].1.clone(),
            _ => "ai-sidecar".to_owned(),
        };
        given.retain(|(k, _)| k != "service.name");
        let mut resource = vec![
            ("service.name".to_owned(), Value::from(service)),
            (
                "service.version".to_owned(),
                Value::from(env!("CARGO_PKG_VERSION")),
            ),
        ];
        for (key, value) in [
            ("k8s.pod.name", pod.name),
            ("k8s.pod.uid", pod.uid),
            ("k8s.namespace.name", pod.namespace),
        ] {
            if !value.is_empty() && !given.iter().any(|(k, _)| k == key) {
                resource.push((key.to_owned(), Value::from(value)));
            }
        }
        resource.extend(given.into_iter().map(|(k, v)| (k, Value::Str(v))));
        Ok(resource)
    }
}

/// A variable's value when set to something other than blanks.
fn set(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn parse_url(var: &'static str, url: &str) -> Result<Uri, TraceConfigError> {
    let bad = || TraceConfigError::Url {
        var,
        url: url.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(uri)
}

/// Whether what is sent to `url` crosses no network in the clear: HTTPS, or a loopback host.
fn private_route(url: &Uri) -> bool {
    if url.scheme_str() == Some("https") {
        return true;
    }
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `url` without any user name or password, for logs and errors.
pub fn shown(url: &Uri) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme_str().unwrap_or("http"),
        url.host().unwrap_or_default(),
        url.path()
    )
}

/// The `key=value` pairs of a comma-separated W3C-baggage-like list, values percent-decoded.
fn pairs(list: &str) -> impl Iterator<Item = Result<(String, String), String>> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(index, pair)| {
            // Not echoed: a malformed header entry may well be a credential.
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("entry {} is not key=value", index + 1))?;
            let key = key.trim();
            if key.is_empty() {
                return Err("an entry has no key".to_owned());
            }
            let value = percent_decoded(value.trim())
                .ok_or_else(|| format!("the value of {key} is not valid percent-encoded UTF-8"))?;
            Ok((key.to_owned(), value))
        })
}

fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: PodIdentity<'static> = PodIdentity {
        name: "app-1",
        uid: "u-1",
        namespace: "team-a",
    };

    fn settings(endpoint: &str) -> TraceSettings {
        TraceSettings {
            endpoint: Some(endpoint.to_owned()),
            protocol: "http/json".to_owned(),
            timeout_ms: 10_000,
            batch_delay_ms: 5_000,
            sampler: "parentbased_always_on".to_owned(),
            ..TraceSettings::default()
        }
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_when_disabled() {
        let pod = &POD;
        assert!(TraceSettings::default().config(pod).unwrap().is_none());
        let mut s = settings("http://collector:4318");
        s.disabled = true;
        assert!(s.config(pod).unwrap().is_none());
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_kept() {
        let c = settings("http://collector:4318/")
            .config(&POD)
            .unwrap()
            .unwrap();
        assert_eq!(c.url.to_string(), "http://collector:4318/v1/traces");
        let c = settings("https://otlp.example/prefix")
            .config(&POD)
            .unwrap()
            .unwrap();
        assert_eq!(c.url.to_string(), "https://otlp.example/prefix/v1/traces");
        let mut s = settings("http://ignored:4318");
        s.traces_endpoint = Some("http://collector:4318/custom".to_owned());
        assert_eq!(
            s.config(&POD).unwrap().unwrap().url.to_string(),
            "http://collector:4318/custom"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_fix() {
        let err = |s: TraceSettings| s.config(&POD).unwrap_err().to_string();
        assert!(err(settings("collector:4318")).contains("not an http:// or https:// URL"));
        let mut s = settings("http://collector:4317");
        s.protocol = "grpc".to_owned();
        assert!(err(s).contains("4318"));
        let mut s = settings("http://collector:4318");
        s.headers = "x-team=ml,Authorization: Bearer secret-token".to_owned();
        let message = err(s);
        assert!(message.contains("entry 2 is not key=value"), "{message}");
        assert!(
            !message.contains("secret-token"),
            "a credential is never echoed"
        );
        let mut s = settings("http://collector:4318");
        s.sampler = "sometimes".to_owned();
        assert!(err(s).contains("sometimes"));
        let mut s = settings("http://collector:4318");
        s.sampler = "traceidratio".to_owned();
        s.sampler_arg = Some("2".to_owned());
        assert!(err(s).contains("from 0 to 1"));
    }

    #[test]
    fn message_content_needs_tls_or_loopback() {
        for (url, allowed) in [
            ("http://collector:4318", false),
            ("http://10.0.0.5:4318", false),
            ("https://collector:4318", true),
            ("http://127.0.0.1:4318", true),
            ("http://[::1]:4318", true),
            ("http://localhost:4318", true),
        ] {
            let mut s = settings(url);
            s.message_content = true;
            assert_eq!(s.config(&POD).is_ok(), allowed, "{url}");
        }
    }

    #[test]
    fn headers_are_percent_decoded() {
        let mut s = settings("https://otlp.example");
        s.headers = "x-api-key=a%3Db%20c, x-team = ml".to_owned();
        let c = s.config(&POD).unwrap().unwrap();
        assert_eq!(c.headers[0].0.as_str(), "x-api-key");
        assert_eq!(c.headers[0].1, "a=b c");
        assert_eq!(c.headers[1].1, "ml");
        s.headers = "x=%zz".to_owned();
        assert!(s.config(&POD).is_err());
    }

    #[test]
    fn the_resource_names_the_service_and_the_pod() {
        let mut s = settings("http://collector:4318");
        s.resource_attributes =
            "service.name=from-attributes,deployment.environment.name=prod,k8s.pod.name=given"
                .to_owned();
        let resource = s.config(&POD).unwrap().unwrap().resource;
        let get = |k: &str| {
            resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("service.name"), Some(Value::from("from-attributes")));
        assert_eq!(get("k8s.pod.name"), Some(Value::from("given")));
        assert_eq!(get("k8s.namespace.name"), Some(Value::from("team-a")));
        assert_eq!(
            get("deployment.environment.name"),
            Some(Value::from("prod"))
        );
        s.service_name = Some("billing-agent".to_owned());
        let resource = s.config(&POD).unwrap().unwrap().resource;
        assert_eq!(
            resource[0],
            ("service.name".to_owned(), Value::from("billing-agent"))
        );
        assert_eq!(
            resource.iter().filter(|(k, _)| k == "service.name").count(),
            1
        );
    }

    #[test]
    fn samplers_follow_the_parent_or_the_ratio() {
        let never = Sampler::parse("traceidratio", Some("0")).unwrap();
        let half = Sampler::parse("parentbased_traceidratio", Some("0.5")).unwrap();
        assert!(!never.samples(u128::MAX, None));
        assert!(!never.samples(1, Some(true)), "not parent-based");
        assert!(half.samples(u128::MAX, Some(true)));
        assert!(!half.samples(0, Some(false)));
        assert!(half.samples(1, None), "a low id is under the share");
        assert!(!half.samples(u128::from(u64::MAX), None));
        let all = Sampler::parse("parentbased_always_on", None).unwrap();
        assert!(all.samples(u128::from(u64::MAX), None));
    }
}

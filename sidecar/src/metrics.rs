//! Prometheus metrics on the admin port, with the original operator's names.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The endpoint a metric is about. Each endpoint's configuration holds its own, built once, so
/// labelling a call copies three pointers rather than allocating three strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: Arc<str>,
    pub endpoint: Arc<str>,
    pub model: Arc<str>,
}

/// Labels of a call to a model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    #[prometheus(flatten)]
    pub endpoint: EndpointLabels,
    /// `success`, or the error code answered.
    pub outcome: &'static str,
}

/// Labels of token counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    #[prometheus(flatten)]
    pub endpoint: EndpointLabels,
    /// `input`, `output`, `cache_read` or `cache_write`.
    pub direction: &'static str,
}

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub namespace: Arc<str>,
    pub endpoint: Arc<str>,
    /// The error code answered.
    pub reason: &'static str,
}

/// Labels of the trace spans counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceSpanLabels {
    /// `exported`, `rejected` (by the receiver), `queue_full` or `export_failed`.
    pub outcome: &'static str,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// Every metric of the sidecar.
pub struct Metrics {
    registry: Registry,
    pub duration: Family<CallLabels, Histogram>,
    pub invocations: Family<CallLabels, Counter>,
    pub time_to_first_token: Family<EndpointLabels, Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    /// US dollars; a float only here, for Prometheus. Accounting itself is exact decimals.
    pub cost: Family<EndpointLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub rate_limited: Family<RejectLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub credential_refreshes: Gauge,
    pub in_flight: Gauge,
    /// Spans of model calls by what became of them (traces on only).
    pub trace_spans: Family<TraceSpanLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let duration = Family::<CallLabels, Histogram>::new_with_constructor(latency_buckets);
        let time_to_first_token =
            Family::<EndpointLabels, Histogram>::new_with_constructor(latency_buckets);
        let mut m = Metrics {
            duration,
            invocations: Family::default(),
            time_to_first_token,
            tokens: Family::default(),
            cost: Family::default(),
            rate_limited: Family::default(),
            rejected: Family::default(),
            credential_refreshes: Gauge::default(),
            in_flight: Gauge::default(),
            trace_spans: Family::default(),
            registry: Registry::default(),
        };
        let sub = m.registry.sub_registry_with_prefix("k8s_ai_operator");
        sub.register(
            "bedrock_invocation_duration_seconds",
            "Time to answer a call through Bedrock, by outcome",
            m.duration.clone(),
        );
        sub.register(
            "bedrock_invocations",
            "Calls through the sidecar, by outcome",
            m.invocations.clone(),
        );
        sub.register(
            "bedrock_time_to_first_token_seconds",
            "Time from request to the first streamed token",
            m.time_to_first_token.clone(),
        );
        sub.register(
            "bedrock_tokens",
            "Tokens billed by Bedrock",
            m.tokens.clone(),
        );
        sub.register(
            "bedrock_invocation_cost_dollars",
            "US dollars spent on Bedrock calls",
            m.cost.clone(),
        );
        sub.register(
            "proxy_rate_limited",
            "Requests refused by a rate or concurrency limit",
            m.rate_limited.clone(),
        );
        sub.register(
            "proxy_rejected",
            "Requests refused before reaching the model (budget, guardrail, ...)",
            m.rejected.clone(),
        );
        sub.register(
            "sidecar_credential_refreshes",
            "STS calls made to obtain temporary credentials",
            m.credential_refreshes.clone(),
        );
        sub.register(
            "sidecar_in_flight_requests",
            "Calls to Bedrock in flight",
            m.in_flight.clone(),
        );
        sub.register(
            "sidecar_trace_spans",
            "Spans of model calls, by what became of them: exported, rejected, queue_full, export_failed",
            m.trace_spans.clone(),
        );
        m
    }
}

impl Metrics {
    /// The OpenMetrics exposition (what Prometheus asks for).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The classic Prometheus text format 0.0.4, for clients that do not ask for OpenMetrics
    /// (`curl`, `promtool check metrics`): counters are named with `_total` in HELP and TYPE too.
    pub fn render_text(&self) -> String {
        k8s_ai_api::exposition::openmetrics_to_text(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_total_suffix_in_the_text_format() {
        let m = Metrics::default();
        m.credential_refreshes.set(1);
        let labels = RejectLabels {
            namespace: "ns".into(),
            endpoint: "e".into(),
            reason: "rate_limited",
        };
        m.rate_limited.get_or_create(&labels).inc();
        let text = m.render_text();
        assert!(
            text.contains("# TYPE k8s_ai_operator_proxy_rate_limited_total counter"),
            "{text}"
        );
        assert!(text.contains("k8s_ai_operator_proxy_rate_limited_total{namespace=\"ns\",endpoint=\"e\",reason=\"rate_limited\"} 1"), "{text}");
        // The endpoint's labels come first, in their order, flattened into each metric's own.
        let endpoint = EndpointLabels {
            namespace: "ns".into(),
            endpoint: "e".into(),
            model: "m".into(),
        };
        m.tokens
            .get_or_create(&TokenLabels {
                endpoint: endpoint.clone(),
                direction: "input",
            })
            .inc_by(3);
        m.invocations
            .get_or_create(&CallLabels {
                endpoint,
                outcome: "success",
            })
            .inc();
        let text = m.render_text();
        assert!(text.contains("k8s_ai_operator_bedrock_tokens_total{namespace=\"ns\",endpoint=\"e\",model=\"m\",direction=\"input\"} 3"), "{text}");
        assert!(text.contains("k8s_ai_operator_bedrock_invocations_total{namespace=\"ns\",endpoint=\"e\",model=\"m\",outcome=\"success\"} 1"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(m.render().ends_with("# EOF\n"));
    }
}

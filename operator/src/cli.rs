//! The operator's command line: subcommands and flags, each with its environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Makes AWS Bedrock model access a Kubernetes resource: ModelEndpoint, PromptTemplate,
/// GuardrailPolicy and the ModelUsage ledger (`ai.kernelpanic09.io/v1alpha1`).
///
/// Without a subcommand it runs (`run`): the controllers (on the replica holding the leader
/// Lease), the sidecar-injecting admission webhook (on every replica) and metrics and probes.
#[derive(Parser, Debug)]
#[command(
    name = "k8s-ai-operator",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream, ready for
    /// `kubectl apply -f -`. `manifests/crds/` holds this output.
    Crdgen,
    /// Run the operator (the default): the controllers on the leader — ModelEndpoint (assumes the
    /// endpoint's role, checks the model in its region, resolves the guardrail and the price,
    /// publishes conditions and `available`), PromptTemplate (compiles each template with the
    /// sidecar's engine), GuardrailPolicy (one Bedrock guardrail per policy, versioned, deleted
    /// with it), the ledgers and the sidecars' RBAC — and on every replica the admission webhook
    /// and `:8080` (`/metrics`, `/healthz`, `/readyz`). Uses the kubeconfig or in-cluster identity
    /// and the default AWS credential chain (AWS_REGION, AWS_ENDPOINT_URL, ... apply).
    Run(RunArgs),
    /// Serve only the admission webhook and `:8080`, without controllers (local development,
    /// benchmarks). A cluster connection is optional with `--cert-mode files`.
    Webhook(ServeArgs),
}

/// Settings of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Elect one leader among replicas with a coordination.k8s.io Lease; only it runs controllers.
    #[arg(long, env = "AI_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease (in --namespace).
    #[arg(
        long,
        env = "AI_OPERATOR_LEASE_NAME",
        default_value = "k8s-ai-operator"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod's name, from the downward API).
    #[arg(long, env = "AI_OPERATOR_POD_NAME", default_value = "")]
    pub identity: String,
}

/// Settings shared by `run` and `webhook`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The operator's own namespace: its Lease and its webhook certificate Secret live there.
    #[arg(
        long,
        env = "AI_OPERATOR_NAMESPACE",
        default_value = "ai-operator-system",
        visible_alias = "lease-namespace"
    )]
    pub namespace: String,
    /// Address of the admission webhook (TLS, POST /mutate). `[::]` is every address, IPv4 and
    /// IPv6 (0.0.0.0 where the host has no IPv6).
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_LISTEN",
        default_value = "[::]:8443",
        visible_alias = "listen"
    )]
    pub webhook_listen: SocketAddr,
    /// Address of /metrics (Prometheus), /healthz and /readyz (plain HTTP), IPv4 and IPv6 as above.
    #[arg(long, env = "AI_OPERATOR_METRICS_LISTEN", default_value = "[::]:8080")]
    pub metrics_listen: SocketAddr,
    /// Log format: `json` (one object per line, for log pipelines) or `text`.
    #[arg(long, env = "AI_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `debug`, `info,kube=debug`).
    #[arg(long, env = "AI_OPERATOR_LOG", default_value = "info")]
    pub log: String,
    /// After SIGTERM, keep serving the webhook this long (with /readyz failing) so the Service
    /// stops routing to this replica before it exits; no admission request is cut off.
    #[arg(long, env = "AI_OPERATOR_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub certs: CertArgs,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    /// The operator makes a CA and a serving certificate, keeps them in a Secret shared by every
    /// replica, keeps the MutatingWebhookConfiguration's caBundle in step, and rotates them.
    SelfManaged,
    /// Serve --tls-cert-file/--tls-key-file (e.g. a cert-manager Secret mounted as files),
    /// re-read when they change; the caBundle is someone else's job (cert-manager's CA injector).
    Files,
}

/// Where the webhook's serving certificate comes from.
#[derive(Args, Debug)]
pub struct CertArgs {
    /// `self-managed` or `files` (see docs/webhook.md).
    #[arg(long, env = "AI_OPERATOR_CERT_MODE", value_enum, default_value_t = CertMode::SelfManaged)]
    pub cert_mode: CertMode,
    /// PEM certificate chain to serve in `files` mode (e.g. cert-manager's tls.crt).
    #[arg(
        long,
        env = "AI_OPERATOR_TLS_CERT_FILE",
        required_if_eq("cert_mode", "files")
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (tls.key).
    #[arg(
        long,
        env = "AI_OPERATOR_TLS_KEY_FILE",
        required_if_eq("cert_mode", "files")
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Secret (in --namespace) holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "AI_OPERATOR_CERT_SECRET",
        default_value = "k8s-ai-operator-webhook-tls"
    )]
    pub cert_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the self-managed mode keeps.
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "k8s-ai-operator"
    )]
    pub webhook_configuration: String,
    /// The webhook's Service: the certificate is for <service>.<namespace>.svc (and .cluster.local).
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_SERVICE",
        default_value = "k8s-ai-operator-webhook"
    )]
    pub webhook_service: String,
    /// More names (or IP addresses) for the certificate, comma-separated (e.g. 127.0.0.1 when
    /// the API server calls the webhook by URL).
    #[arg(long, env = "AI_OPERATOR_CERT_EXTRA_NAMES", value_delimiter = ',')]
    pub cert_extra_names: Vec<String>,
    /// Lifetime of the self-managed CA (units s, m, h, d).
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    pub cert_ca_lifetime: Duration,
    /// Replace the CA when less than this is left.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub cert_ca_renew_before: Duration,
    /// Lifetime of a serving certificate.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub cert_serving_lifetime: Duration,
    /// Renew the serving certificate when less than this is left.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub cert_serving_renew_before: Duration,
    /// How often each replica checks the Secret (a CA replacement waits 3 of these per step).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub cert_check_interval: Duration,
}

/// What the webhook injects.
#[derive(Args, Debug)]
pub struct SidecarArgs {
    /// The sidecar image to inject.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_IMAGE", default_value = concat!("ghcr.io/kernelpanic09/ai-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Inject a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+);
    /// `false` injects a plain container for older clusters.
    #[arg(long, env = "AI_OPERATOR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// CPU request of the injected sidecar (a pod may override it by annotation).
    #[arg(long, env = "AI_OPERATOR_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(
        long,
        env = "AI_OPERATOR_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    pub sidecar_memory_request: String,
    /// Memory limit of the injected sidecar.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,
    /// Environment passed to every injected sidecar, KEY=VALUE, repeatable. The operator's own
    /// AWS endpoint settings (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS,
    /// AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_USE_FIPS_ENDPOINT) are passed on too, unless set here.
    #[arg(long = "sidecar-env", value_parser = parse_key_value)]
    pub sidecar_env: Vec<(String, String)>,
    /// Lifetime of the service-account token the sidecar gives STS (audience sts.amazonaws.com);
    /// the kubelet renews it at 80 % of that. At least 10m, the shortest the API server issues.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_TOKEN_LIFETIME", default_value = "24h", value_parser = parse_token_lifetime)]
    pub sidecar_token_lifetime: Duration,
}

/// A token lifetime the API server will issue: 10 minutes or more.
fn parse_token_lifetime(s: &str) -> Result<Duration, String> {
    let lifetime = parse_duration(s)?;
    if lifetime < Duration::from_secs(600) {
        return Err(format!(
            "{s} is shorter than 10m, the shortest service-account token the API server issues"
        ));
    }
    Ok(lifetime)
}

/// Parses `90d`, `12h`, `30m`, `45s` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration like 90d, 12h, 30m or 45s, got {s:?}"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(n * factor))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

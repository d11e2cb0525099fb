//! `k8s-ai-operator`: the operator binary.
//!
//! Subcommands: `run` (the default) runs the operator, `crdgen` prints the CRDs, `webhook` serves
//! only the sidecar-injecting admission webhook (see docs/operator.md).

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use k8s_ai_api::model_endpoint::ModelEndpoint;
use k8s_ai_operator::{
    admin::{Health, admin_server},
    certs::{self, SelfManaged},
    leader::{LeadError, Leadership, lead},
    metrics::Metrics,
    webhook::{inject::InjectSettings, server},
};
use kube::{
    Api,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, reflector},
        watcher,
    },
};
use webhook_certs::{Lifetimes, ReloadableCert};

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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
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
struct RunArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Elect one leader among replicas with a coordination.k8s.io Lease; only it runs controllers.
    #[arg(long, env = "AI_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease (in --namespace).
    #[arg(
        long,
        env = "AI_OPERATOR_LEASE_NAME",
        default_value = "k8s-ai-operator"
    )]
    lease_name: String,
    /// This replica's identity in the Lease (the pod's name, from the downward API).
    #[arg(long, env = "AI_OPERATOR_POD_NAME", default_value = "")]
    identity: String,
}

/// Settings shared by `run` and `webhook`.
#[derive(Args, Debug)]
struct ServeArgs {
    /// The operator's own namespace: its Lease and its webhook certificate Secret live there.
    #[arg(
        long,
        env = "AI_OPERATOR_NAMESPACE",
        default_value = "ai-operator-system",
        visible_alias = "lease-namespace"
    )]
    namespace: String,
    /// Address of the admission webhook (TLS, POST /mutate). `[::]` is every address, IPv4 and
    /// IPv6 (0.0.0.0 where the host has no IPv6).
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_LISTEN",
        default_value = "[::]:8443",
        visible_alias = "listen"
    )]
    webhook_listen: SocketAddr,
    /// Address of /metrics (Prometheus), /healthz and /readyz (plain HTTP), IPv4 and IPv6 as above.
    #[arg(long, env = "AI_OPERATOR_METRICS_LISTEN", default_value = "[::]:8080")]
    metrics_listen: SocketAddr,
    /// Log format: `json` (one object per line, for log pipelines) or `text`.
    #[arg(long, env = "AI_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `debug`, `info,kube=debug`).
    #[arg(long, env = "AI_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// After SIGTERM, keep serving the webhook this long (with /readyz failing) so the Service
    /// stops routing to this replica before it exits; no admission request is cut off.
    #[arg(long, env = "AI_OPERATOR_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    certs: CertArgs,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CertMode {
    /// The operator makes a CA and a serving certificate, keeps them in a Secret shared by every
    /// replica, keeps the MutatingWebhookConfiguration's caBundle in step, and rotates them.
    SelfManaged,
    /// Serve --tls-cert-file/--tls-key-file (e.g. a cert-manager Secret mounted as files),
    /// re-read when they change; the caBundle is someone else's job (cert-manager's CA injector).
    Files,
}

/// Where the webhook's serving certificate comes from.
#[derive(Args, Debug)]
struct CertArgs {
    /// `self-managed` or `files` (see docs/webhook.md).
    #[arg(long, env = "AI_OPERATOR_CERT_MODE", value_enum, default_value_t = CertMode::SelfManaged)]
    cert_mode: CertMode,
    /// PEM certificate chain to serve in `files` mode (e.g. cert-manager's tls.crt).
    #[arg(
        long,
        env = "AI_OPERATOR_TLS_CERT_FILE",
        required_if_eq("cert_mode", "files")
    )]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (tls.key).
    #[arg(
        long,
        env = "AI_OPERATOR_TLS_KEY_FILE",
        required_if_eq("cert_mode", "files")
    )]
    tls_key_file: Option<PathBuf>,
    /// Secret (in --namespace) holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "AI_OPERATOR_CERT_SECRET",
        default_value = "k8s-ai-operator-webhook-tls"
    )]
    cert_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the self-managed mode keeps.
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "k8s-ai-operator"
    )]
    webhook_configuration: String,
    /// The webhook's Service: the certificate is for <service>.<namespace>.svc (and .cluster.local).
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_SERVICE",
        default_value = "k8s-ai-operator-webhook"
    )]
    webhook_service: String,
    /// More names (or IP addresses) for the certificate, comma-separated (e.g. 127.0.0.1 when
    /// the API server calls the webhook by URL).
    #[arg(long, env = "AI_OPERATOR_CERT_EXTRA_NAMES", value_delimiter = ',')]
    cert_extra_names: Vec<String>,
    /// Lifetime of the self-managed CA (units s, m, h, d).
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    cert_ca_lifetime: Duration,
    /// Replace the CA when less than this is left.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    cert_ca_renew_before: Duration,
    /// Lifetime of a serving certificate.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    cert_serving_lifetime: Duration,
    /// Renew the serving certificate when less than this is left.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    cert_serving_renew_before: Duration,
    /// How often each replica checks the Secret (a CA replacement waits 3 of these per step).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    cert_check_interval: Duration,
}

/// What the webhook injects.
#[derive(Args, Debug)]
struct SidecarArgs {
    /// The sidecar image to inject.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_IMAGE", default_value = concat!("ghcr.io/kernelpanic09/ai-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// Inject a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+);
    /// `false` injects a plain container for older clusters.
    #[arg(long, env = "AI_OPERATOR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecar: bool,
    /// CPU request of the injected sidecar (a pod may override it by annotation).
    #[arg(long, env = "AI_OPERATOR_SIDECAR_CPU_REQUEST", default_value = "10m")]
    sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(
        long,
        env = "AI_OPERATOR_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    sidecar_memory_request: String,
    /// Memory limit of the injected sidecar.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    sidecar_memory_limit: String,
    /// Environment passed to every injected sidecar, KEY=VALUE, repeatable. The operator's own
    /// AWS endpoint settings (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS,
    /// AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_USE_FIPS_ENDPOINT) are passed on too, unless set here.
    #[arg(long = "sidecar-env", value_parser = parse_key_value)]
    sidecar_env: Vec<(String, String)>,
    /// Lifetime of the service-account token the sidecar gives STS (audience sts.amazonaws.com);
    /// the kubelet renews it at 80 % of that. At least 10m, the shortest the API server issues.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_TOKEN_LIFETIME", default_value = "24h", value_parser = parse_token_lifetime)]
    sidecar_token_lifetime: Duration,
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

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot reach the Kubernetes API server")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Lead(#[from] LeadError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot read the TLS certificate or key")]
    TlsFiles(#[source] std::io::Error),
    #[error("cannot use the TLS certificate")]
    Tls(#[from] webhook_certs::CertError),
    #[error("cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("failed to render the CRDs as YAML")]
    Yaml(#[from] serde_yaml::Error),
    #[error("failed to write to standard output")]
    Stdout(#[from] std::io::Error),
    #[error("invalid --log filter {0:?}")]
    LogFilter(String, #[source] tracing_subscriber::filter::ParseError),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crdgen) => crdgen(&mut std::io::stdout().lock()),
        Some(Command::Webhook(args)) => block_on(Box::pin(serve(args, None))),
        Some(Command::Run(args)) => block_on(run(args)),
        None => block_on(run(cli.run)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprint!("k8s-ai-operator: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprint!(": {cause}");
                source = cause.source();
            }
            eprintln!();
            std::process::ExitCode::FAILURE
        }
    }
}

fn block_on(work: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
    tokio::runtime::Runtime::new()
        .map_err(Error::Runtime)?
        .block_on(work)
}

/// Writes every CRD as one YAML document, separated by `---`.
fn crdgen(out: &mut impl Write) -> Result<(), Error> {
    for crd in k8s_ai_api::crds() {
        writeln!(out, "---")?;
        out.write_all(serde_yaml::to_string(&crd)?.as_bytes())?;
    }
    Ok(())
}

fn init_logging(args: &ServeArgs) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&args.log)
        .map_err(|e| Error::LogFilter(args.log.clone(), e))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), Error> {
    let identity = if args.identity.is_empty() {
        format!("k8s-ai-operator-{}", std::process::id())
    } else {
        args.identity
    };
    let leadership = Leadership {
        enabled: args.leader_election,
        lease_name: args.lease_name,
        identity,
    };
    Box::pin(serve(args.serve, Some(leadership))).await
}

/// Serves the webhook and `:8080` on this replica, and runs the controllers when `leadership`
/// says so (and this replica leads), until SIGTERM.
async fn serve(args: ServeArgs, leadership: Option<Leadership>) -> Result<(), Error> {
    init_logging(&args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let client = match kube::Client::try_default().await {
        Ok(client) => Some(client),
        // Only the files-mode webhook can do without a cluster.
        Err(e) if leadership.is_none() && args.certs.cert_mode == CertMode::Files => {
            tracing::warn!(error = %e, "no Kubernetes API server: the webhook cannot tell whether endpoints exist");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let endpoints = client.as_ref().map(|c| watch_endpoints(c.clone()));
    let admin = admin_server(
        args.metrics_listen,
        Arc::clone(&metrics),
        Arc::clone(&health),
        endpoints.clone(),
    )
    .map_err(|e| Error::Listen(args.metrics_listen, e))?;
    tokio::spawn(admin);

    let serving = serving_certificate(&args, client.as_ref(), &metrics).await?;
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(serving as Arc<dyn rustls::server::ResolvesServerCert>);
    let listener = k8s_ai_operator::listen::bind(args.webhook_listen)
        .map_err(|e| Error::Listen(args.webhook_listen, e))?;
    tracing::info!(listen = %args.webhook_listen, "admission webhook listening (TLS)");
    let webhook = Arc::new(server::Webhook {
        settings: inject_settings(args.sidecar),
        metrics: Arc::clone(&metrics),
        endpoints: endpoints.clone(),
    });
    tokio::spawn(server::serve_tls(
        listener,
        Arc::new(tls),
        server::router(webhook),
    ));
    health.webhook_serving.store(true, Ordering::Relaxed);

    let outcome = if let (Some(leadership), Some(client)) = (leadership, client) {
        tokio::select! {
            result = lead(client, &args.namespace, leadership, Arc::clone(&metrics)) => result.map_err(Error::from),
            () = shutdown_signal() => Ok(()),
        }
    } else {
        shutdown_signal().await;
        Ok(())
    };
    // The controllers have stopped (and the Lease's task releases it once its channel is gone).
    metrics.leader.set(0);
    // Drain: fail /readyz so the Service stops sending us admission requests, keep serving those
    // already routed here, then exit.
    health.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(grace = ?args.shutdown_grace, "shutting down");
    tokio::time::sleep(args.shutdown_grace).await;
    outcome
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// A cache of every ModelEndpoint (for the webhook's checks and the availability metric).
fn watch_endpoints(client: kube::Client) -> Store<ModelEndpoint> {
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            Api::<ModelEndpoint>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "ModelEndpoint watch interrupted; retrying");
            }
        }
    });
    reader
}

fn inject_settings(args: SidecarArgs) -> InjectSettings {
    let mut aws_env = args.sidecar_env;
    for key in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        "AWS_USE_FIPS_ENDPOINT",
    ] {
        if let Ok(value) = std::env::var(key)
            && !aws_env.iter().any(|(k, _)| k == key)
        {
            aws_env.push((key.to_owned(), value));
        }
    }
    InjectSettings {
        image: args.sidecar_image,
        native_sidecar: args.native_sidecar,
        cpu_request: args.sidecar_cpu_request,
        memory_request: args.sidecar_memory_request,
        memory_limit: args.sidecar_memory_limit,
        aws_env,
        sts_token_lifetime_seconds: i64::try_from(args.sidecar_token_lifetime.as_secs())
            .unwrap_or(i64::MAX),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The certificate the webhook serves, kept current in the background.
async fn serving_certificate(
    args: &ServeArgs,
    client: Option<&kube::Client>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<ReloadableCert>, Error> {
    let certs = &args.certs;
    match (
        certs.cert_mode,
        client,
        &certs.tls_cert_file,
        &certs.tls_key_file,
    ) {
        (CertMode::Files, _, Some(cert_file), Some(key_file)) => {
            let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(Error::TlsFiles);
            let cert = Arc::new(ReloadableCert::new(&read(cert_file)?, &read(key_file)?)?);
            tokio::spawn(certs::reload_on_change(
                Arc::clone(&cert),
                cert_file.clone(),
                key_file.clone(),
            ));
            Ok(cert)
        }
        (CertMode::SelfManaged, Some(client), _, _) => {
            let svc = format!("{}.{}.svc", certs.webhook_service, args.namespace);
            let mut dns_names = vec![svc.clone(), format!("{svc}.cluster.local")];
            dns_names.extend(
                certs
                    .cert_extra_names
                    .iter()
                    .filter(|n| !n.is_empty())
                    .cloned(),
            );
            let manager = SelfManaged {
                client: client.clone(),
                namespace: args.namespace.clone(),
                secret_name: certs.cert_secret.clone(),
                webhook_configuration: certs.webhook_configuration.clone(),
                dns_names,
                lifetimes: Lifetimes {
                    ca: certs.cert_ca_lifetime,
                    ca_renew_before: certs.cert_ca_renew_before,
                    serving: certs.cert_serving_lifetime,
                    renew_before: certs.cert_serving_renew_before,
                },
                check_every: certs.cert_check_interval,
            };
            // Nothing to serve without it: retry until the API server answers.
            let bundle = loop {
                match manager.reconcile(metrics).await {
                    Ok(bundle) => break bundle,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up the webhook certificate yet; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            };
            certs::set_expiry(metrics, &bundle);
            let cert = Arc::new(ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem)?);
            tokio::spawn(manager.run(Arc::clone(&cert), bundle, Arc::clone(metrics)));
            Ok(cert)
        }
        // clap requires the files in files mode, and a client exists in self-managed mode.
        _ => Err(Error::TlsFiles(std::io::Error::other(
            "no certificate source: use --cert-mode files with --tls-cert-file and --tls-key-file",
        ))),
    }
}

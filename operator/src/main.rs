//! `k8s-ai-operator`: the operator binary.
//!
//! Subcommands: `crdgen` prints the CRDs, `webhook` serves the sidecar-injecting admission
//! webhook, `run` runs the controllers built so far (see docs/operator.md for what is missing).

use std::{io::Write, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use k8s_ai_operator::webhook::{inject::InjectSettings, server};
use webhook_certs::ReloadableCert;

/// Makes AWS Bedrock model access a Kubernetes resource: ModelEndpoint, PromptTemplate,
/// GuardrailPolicy and the ModelUsage ledger (`ai.kernelpanic09.io/v1alpha1`).
#[derive(Parser, Debug)]
#[command(name = "k8s-ai-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream, ready for
    /// `kubectl apply -f -`. `manifests/crds/` holds this output.
    Crdgen,
    /// Serve only the mutating admission webhook that injects the AI sidecar into pods annotated
    /// `ai.kernelpanic09.io/inject: "true"`, over TLS, on POST /mutate. The controllers are not
    /// part of this command (they are not built yet).
    Webhook(Box<WebhookArgs>),
    /// Run the controllers, with the kubeconfig or in-cluster identity and the default AWS
    /// credential chain (AWS_ENDPOINT_URL etc. apply). Built so far: ModelEndpoint (assumes the
    /// endpoint's role, checks the model in its region, resolves the guardrail and the price,
    /// publishes the conditions and `available`), PromptTemplate (compiles each template with the
    /// sidecar's engine, checks its ModelEndpoint, publishes `Valid`) and GuardrailPolicy (syncs a
    /// Bedrock guardrail per policy in the operator's region, new version on change or drift,
    /// deleted with the policy) and the ledgers of injected pods. With leader election (default),
    /// only the replica holding the Lease runs them; a replica that loses it exits.
    Run(RunArgs),
}

/// Settings of the controllers.
#[derive(Args, Debug)]
struct RunArgs {
    /// Elect one leader among replicas with a coordination.k8s.io Lease; only it runs controllers.
    #[arg(long, env = "AI_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(
        long,
        env = "AI_OPERATOR_NAMESPACE",
        default_value = "ai-operator-system"
    )]
    lease_namespace: String,
    /// Name of the Lease.
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

/// Settings of the webhook server and of the sidecar it injects.
#[derive(Args, Debug)]
struct WebhookArgs {
    /// Address to serve the webhook on.
    #[arg(
        long,
        env = "AI_OPERATOR_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// PEM certificate chain to serve (e.g. cert-manager's tls.crt); re-read when it changes.
    #[arg(long, env = "AI_OPERATOR_TLS_CERT_FILE")]
    tls_cert_file: PathBuf,
    /// PEM private key of that certificate (tls.key); re-read when it changes.
    #[arg(long, env = "AI_OPERATOR_TLS_KEY_FILE")]
    tls_key_file: PathBuf,
    /// The sidecar image to inject.
    #[arg(long, env = "AI_OPERATOR_SIDECAR_IMAGE", default_value = concat!("ghcr.io/kernelpanic09/ai-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// Inject a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+);
    /// `false` injects a plain container for older clusters.
    #[arg(long, env = "AI_OPERATOR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecar: bool,
    /// CPU request of the injected sidecar.
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
    /// Environment passed to every injected sidecar, KEY=VALUE, repeatable: AWS endpoint
    /// overrides such as AWS_ENDPOINT_URL=https://bedrock.internal or AWS_REGION.
    #[arg(long = "sidecar-env", value_parser = parse_key_value)]
    sidecar_env: Vec<(String, String)>,
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
    #[error("leader election failed")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the leader Lease; exiting so that the new leader alone runs the controllers")]
    LostLeadership,
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen => crdgen(&mut std::io::stdout().lock()),
        Command::Webhook(args) => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(webhook(*args)),
            Err(e) => Err(Error::Runtime(e)),
        },
        Command::Run(args) => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run_controllers(args)),
            Err(e) => Err(Error::Runtime(e)),
        },
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

/// Writes every CRD as one YAML document, separated by `---`.
fn crdgen(out: &mut impl Write) -> Result<(), Error> {
    for crd in k8s_ai_api::crds() {
        writeln!(out, "---")?;
        out.write_all(serde_yaml::to_string(&crd)?.as_bytes())?;
    }
    Ok(())
}

/// Serves the injecting webhook until the process is stopped.
async fn webhook(args: WebhookArgs) -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(Error::TlsFiles);
    let cert = Arc::new(ReloadableCert::new(
        &read(&args.tls_cert_file)?,
        &read(&args.tls_key_file)?,
    )?);
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
    let settings = Arc::new(InjectSettings {
        image: args.sidecar_image,
        native_sidecar: args.native_sidecar,
        cpu_request: args.sidecar_cpu_request,
        memory_request: args.sidecar_memory_request,
        memory_limit: args.sidecar_memory_limit,
        aws_env: args.sidecar_env,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Listen(args.listen, e))?;
    tracing::info!(listen = %args.listen, "admission webhook listening (TLS)");
    tokio::spawn(reload_on_change(
        cert,
        args.tls_cert_file,
        args.tls_key_file,
    ));
    server::serve_tls(listener, Arc::new(tls), server::router(settings)).await;
    Ok(())
}

/// Re-reads the certificate files when they change (cert-manager renews them in place).
async fn reload_on_change(cert: Arc<ReloadableCert>, cert_file: PathBuf, key_file: PathBuf) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (modified(&cert_file), modified(&key_file));
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = (modified(&cert_file), modified(&key_file));
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = std::fs::read_to_string(&cert_file)
            .and_then(|c| Ok((c, std::fs::read_to_string(&key_file)?)));
        match loaded
            .map_err(Error::TlsFiles)
            .and_then(|(c, k)| cert.replace(&c, &k).map_err(Error::from))
        {
            Ok(()) => tracing::info!("reloaded the webhook's TLS certificate"),
            Err(e) => tracing::warn!(error = %e, "kept the previous TLS certificate"),
        }
    }
}

/// Runs the controllers built so far until SIGTERM, once this replica leads (when elected).
async fn run_controllers(args: RunArgs) -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let identity = if args.identity.is_empty() {
        format!("k8s-ai-operator-{}", std::process::id())
    } else {
        args.identity.clone()
    };
    let reporter = kube::runtime::events::Reporter {
        controller: "k8s-ai-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(k8s_ai_operator::controllers::Context {
        client: client.clone(),
        recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
        aws,
        aws_checks: std::sync::Mutex::default(),
    });
    let controllers = async move {
        tracing::info!(
            "controllers starting: GuardrailPolicy, ModelEndpoint, PromptTemplate, ledger"
        );
        tokio::join!(
            k8s_ai_operator::controllers::ledger::run(Arc::clone(&ctx)),
            k8s_ai_operator::controllers::guardrail_policy::run(Arc::clone(&ctx)),
            k8s_ai_operator::controllers::model_endpoint::run(Arc::clone(&ctx)),
            k8s_ai_operator::controllers::prompt_template::run(ctx),
        );
    };
    if !args.leader_election {
        controllers.await;
        return Ok(());
    }
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leading, _task) = manager.watch().await;
    tracing::info!(lease = %args.lease_name, %identity, "waiting to lead");
    let _ = leading.wait_for(|l| *l).await;
    tracing::info!(%identity, "leading");
    tokio::select! {
        () = controllers => Ok(()),
        _ = leading.wait_for(|l| !*l) => Err(Error::LostLeadership),
    }
}

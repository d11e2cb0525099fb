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

use clap::Parser;
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

mod cli;

use cli::{CertMode, Cli, Command, LogFormat, RunArgs, ServeArgs, SidecarArgs};

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
    let sidecar_image = args.sidecar.sidecar_image.clone();
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
            result = lead(client, &args.namespace, leadership, Arc::clone(&metrics), sidecar_image) => result.map_err(Error::from),
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

//! `bedrock-emulator`: AWS Bedrock (runtime and control plane) and STS on one local port, for
//! tests, demos and benchmarks. See `e2e/README.md`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use axum::serve::ListenerExt;
use clap::Parser;
use e2e::emulator::{
    Emulator,
    config::{Config, TEST_ACCESS_KEY_ID, TEST_ROLE_ARN, TEST_SECRET_ACCESS_KEY},
};

/// Emulates AWS Bedrock Runtime (Converse, ConverseStream, InvokeModel, ApplyGuardrail), the
/// Bedrock control plane (guardrails, foundation models) and STS (AssumeRoleWithWebIdentity,
/// AssumeRole, GetCallerIdentity) with their real wire protocols and SigV4 verification.
///
/// Point an AWS SDK at it with `AWS_ENDPOINT_URL=http://ADDR` (all three services share the
/// port). Without `--config`, it serves every model of the built-in price table in six regions,
/// accepts the static test credentials below, and lets them assume the role below.
#[derive(Parser, Debug)]
#[command(name = "bedrock-emulator", version, about, long_about,
    after_help = format!("Static test credentials: AWS_ACCESS_KEY_ID={TEST_ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY={TEST_SECRET_ACCESS_KEY}\nTest role: {TEST_ROLE_ARN}\nAdmin API: GET /_emulator/requests, GET /_emulator/credentials, GET|PUT /_emulator/config, POST /_emulator/reset"))]
struct Cli {
    /// Address to listen on (loopback by default: the emulator has no real security).
    #[arg(
        long,
        env = "BEDROCK_EMULATOR_LISTEN",
        default_value = "127.0.0.1:4566"
    )]
    listen: SocketAddr,
    /// YAML configuration: catalogue, users, roles and trust, OIDC issuer, output, latency, faults.
    #[arg(long, env = "BEDROCK_EMULATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = match &cli.config {
        None => Config::default(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_yaml::from_str::<Config>(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bedrock-emulator: cannot use {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    if cli.print_config {
        match serde_yaml::to_string(&config) {
            Ok(y) => print!("{y}"),
            Err(e) => {
                eprintln!("bedrock-emulator: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bedrock-emulator: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let emulator = Emulator::new(config);
    emulator.prefetch_jwks().await;
    let addr = listener
        .local_addr()
        .map_or_else(|_| cli.listen.to_string(), |a| a.to_string());
    println!("bedrock-emulator listening on http://{addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        tokio::select! {
            () = shutdown => {}
            () = async { match term.as_mut() { Ok(t) => { t.recv().await; } Err(_) => futures_util::future::pending::<()>().await } } => {}
        }
    };
    // Small request/response exchanges: never wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    match axum::serve(listener, emulator.router())
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bedrock-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

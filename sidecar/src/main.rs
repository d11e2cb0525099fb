//! `ai-sidecar`: see `ai-sidecar --help` and docs/sidecar.md.

use std::process::ExitCode;

use ai_sidecar::{Listeners, build_state, serve, settings::Settings};
use clap::Parser;

// See Cargo.toml: musl's allocator maps and unmaps memory on every call; mimalloc reuses it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings = Settings::parse();
    let runtime = match runtime(settings.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ai-sidecar: cannot start the runtime's threads and event loop: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(settings))
}

/// One thread: no hand-offs between threads on a request's path (the pod's app, us and Bedrock
/// take turns anyway); more: a worker per thread.
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(threads));
        b
    };
    builder.enable_all().build()
}

async fn run(settings: Settings) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},aws_smithy_runtime=warn,aws_config=warn,hyper=warn,kube=warn",
        settings.log
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if settings.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let grace = settings.shutdown_grace;
    let started = std::time::Instant::now();
    let listeners = match Listeners::bind(&settings) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let state = match build_state(settings).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    tracing::info!(
        data = %listeners.data.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        admin = %listeners.admin.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        startup_ms = started.elapsed().as_millis(),
        "ai-sidecar listening"
    );
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: finishing in-flight requests"
        );
        let _ = stopping_tx.send(());
    };
    let serving = serve(state, listeners, shutdown);
    tokio::pin!(serving);
    // Drain within the grace period: after it, exit anyway (the kubelet would kill us next).
    let grace_over = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = &mut serving => ExitCode::SUCCESS,
        () = grace_over => {
            tracing::warn!("grace period over with requests still in flight; exiting");
            ExitCode::SUCCESS
        }
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut message = format!("ai-sidecar: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("{message}");
    ExitCode::from(2)
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

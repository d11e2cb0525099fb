//! `ai-sidecar`: Bedrock through localhost for one pod. Not built yet: this placeholder refuses
//! to start rather than pretend to serve.

use clap::Parser;

/// The k8s-ai-operator sidecar (not implemented yet: it exits with an error).
#[derive(Parser, Debug)]
#[command(name = "ai-sidecar", version, about)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("ai-sidecar: not implemented yet");
    std::process::ExitCode::from(2)
}

//! `k8s-ai-operator`: the operator binary.
//!
//! Today it prints the CRDs (`crdgen`); the controllers and the admission webhook (`run`) come
//! with their own issue.

use std::io::Write;

use clap::{Parser, Subcommand};

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
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("failed to render the CRDs as YAML")]
    Yaml(#[from] serde_yaml::Error),
    #[error("failed to write to standard output")]
    Stdout(#[from] std::io::Error),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen => crdgen(&mut std::io::stdout().lock()),
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

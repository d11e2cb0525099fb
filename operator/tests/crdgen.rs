//! `manifests/crds/crds.yaml` is exactly what `k8s-ai-operator crdgen` prints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use std::process::Command;

#[test]
fn committed_crds_match_crdgen() {
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds/crds.yaml");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        generated == committed,
        "manifests/crds/crds.yaml is out of date: run `make crds` and commit the result"
    );
    for kind in [
        "GuardrailPolicy",
        "ModelEndpoint",
        "PromptTemplate",
        "ModelUsage",
    ] {
        assert!(
            generated.contains(&format!("kind: {kind}\n")),
            "crdgen lacks {kind}"
        );
    }
}

#[test]
fn help_explains_the_subcommands() {
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        help.contains("crdgen") && help.contains("CustomResourceDefinitions"),
        "{help}"
    );
    assert!(help.contains("webhook"), "{help}");
}

#[test]
fn a_sidecar_token_lifetime_the_api_server_would_refuse_is_refused_at_startup() {
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
        .args(["run", "--sidecar-token-lifetime", "5m"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "5m is shorter than 10m, the shortest service-account token the API server issues"
        ),
        "{stderr}"
    );
}

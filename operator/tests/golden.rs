//! Golden files for the injecting webhook: every directory under `tests/golden/` is one case, an
//! AdmissionReview request in and the webhook's response, patch and patched pod out.
//!
//! A case directory holds `request.json` and optionally `settings.json` (fields of InjectSettings
//! that differ from the operator's defaults) and `endpoints.json` (the `namespace/name` of every
//! ModelEndpoint that exists; without it the lookup answers Unknown). The expected outputs are
//! `response.json`, and when the pod is patched `patch.json` and `patched-pod.json`.
//! `UPDATE_GOLDEN=1 cargo test -p k8s-ai-operator --test golden` rewrites them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_ai_operator::webhook::{
    admission::{self, EndpointLookup},
    inject::InjectSettings,
};
use k8s_openapi::{ByteString, api::core::v1::Pod};
use kube::core::{DynamicObject, admission::AdmissionReview};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// The operator's flag defaults (see `k8s-ai-operator webhook --help`), with a fixed version.
fn default_settings() -> InjectSettings {
    InjectSettings {
        image: "ghcr.io/kernelpanic09/ai-sidecar:0.1.0".into(),
        native_sidecar: true,
        cpu_request: "10m".into(),
        memory_request: "32Mi".into(),
        memory_limit: "64Mi".into(),
        aws_env: Vec::new(),
        sts_token_lifetime_seconds: 86_400,
        version: "0.1.0".into(),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
    )
}

fn settings(case: &Path) -> InjectSettings {
    let mut settings = default_settings();
    let Some(Value::Object(fields)) = read_json(&case.join("settings.json")) else {
        return settings;
    };
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    for (key, value) in fields {
        match key.as_str() {
            "image" => settings.image = text(&value),
            "native_sidecar" => settings.native_sidecar = value.as_bool().unwrap(),
            "cpu_request" => settings.cpu_request = text(&value),
            "memory_request" => settings.memory_request = text(&value),
            "memory_limit" => settings.memory_limit = text(&value),
            "aws_env" => settings.aws_env = serde_json::from_value(value).unwrap(),
            "version" => settings.version = text(&value),
            other => panic!("{}: unknown setting {other:?}", case.display()),
        }
    }
    settings
}

/// The ModelEndpoints the case says exist, or `None` for a caller without a cache.
fn known_endpoints(case: &Path) -> Option<Vec<String>> {
    read_json(&case.join("endpoints.json")).map(|v| serde_json::from_value(v).unwrap())
}

fn run(
    request: &Value,
    settings: &InjectSettings,
    known: Option<&Vec<String>>,
) -> AdmissionReview<DynamicObject> {
    let lookup = |namespace: &str, name: &str| match known {
        None => EndpointLookup::Unknown,
        Some(known) if known.contains(&format!("{namespace}/{name}")) => EndpointLookup::Exists,
        Some(_) => EndpointLookup::Missing,
    };
    admission::review(
        serde_json::from_value(request.clone()).unwrap(),
        settings,
        &lookup,
    )
}

/// kube sends the patch as a JSON array of bytes, which the API server accepts like the base64
/// string Kubernetes' own clients send; the file shows base64 so it stays readable.
fn response_json(review: &AdmissionReview<DynamicObject>) -> Value {
    let mut json = serde_json::to_value(review).unwrap();
    if let Some(patch) = review.response.as_ref().and_then(|r| r.patch.clone()) {
        json["response"]["patch"] = serde_json::to_value(ByteString(patch)).unwrap();
    }
    json
}

/// Compares `actual` with the file (absent when `actual` is `None`), or rewrites it when updating.
fn check(path: &Path, actual: Option<&Value>, update: bool, failures: &mut Vec<String>) {
    let expected = read_json(path);
    if expected.as_ref() == actual {
        return;
    }
    if update {
        if let Some(value) = actual {
            fs::write(path, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
            println!("updated {}", path.display());
        } else {
            fs::remove_file(path).unwrap();
            println!("removed {}", path.display());
        }
        return;
    }
    failures.push(match actual {
        Some(value) => format!(
            "{} differs; the webhook now gives:\n{}",
            path.display(),
            serde_json::to_string_pretty(value).unwrap()
        ),
        None => format!("{} exists but the webhook gives no patch", path.display()),
    });
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(GOLDEN)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_case_matches_its_golden_files_and_reinvocation_changes_nothing() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let cases = cases();
    assert!(cases.len() >= 13, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let request = read_json(&case.join("request.json"))
            .unwrap_or_else(|| panic!("{name}: no request.json"));
        let settings = settings(case);
        let known = known_endpoints(case);
        let review = run(&request, &settings, known.as_ref());
        let response = review.response.as_ref().unwrap();
        assert_eq!(
            Some(&Value::String(response.uid.clone())),
            request.pointer("/request/uid"),
            "{name}: the response answers another request"
        );
        check(
            &case.join("response.json"),
            Some(&response_json(&review)),
            update,
            &mut failures,
        );

        let patch: Option<Value> = response
            .patch
            .as_ref()
            .map(|bytes| serde_json::from_slice(bytes).unwrap());
        // The API server applies the patch to the object it sent, not to our typed reading of it.
        let patched_pod = patch.as_ref().map(|patch| {
            let mut pod = request["request"]["object"].clone();
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
            json_patch::patch(&mut pod, &ops)
                .unwrap_or_else(|e| panic!("{name}: the patch does not apply: {e}"));
            serde_json::from_value::<Pod>(pod.clone())
                .unwrap_or_else(|e| panic!("{name}: the patched pod is not a Pod: {e}"));
            pod
        });
        check(
            &case.join("patch.json"),
            patch.as_ref(),
            update,
            &mut failures,
        );
        check(
            &case.join("patched-pod.json"),
            patched_pod.as_ref(),
            update,
            &mut failures,
        );

        // Reinvocation (reinvocationPolicy: IfNeeded) sees the patched pod: it must be left alone.
        if let Some(pod) = patched_pod {
            let mut again = request.clone();
            again["request"]["object"] = pod;
            let second = run(&again, &settings, known.as_ref());
            let second = second.response.unwrap();
            assert!(
                second.allowed && second.patch.is_none() && second.warnings.is_none(),
                "{name}: reinvocation on the patched pod answered {second:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) differ (UPDATE_GOLDEN=1 rewrites them; review the diff):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

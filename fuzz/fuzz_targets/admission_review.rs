//! AdmissionReview decoding and patch building: arbitrary bytes as the body the API server posts
//! to the webhook. Never a panic; whatever is admitted with a patch, reviewed again, needs no patch.
#![no_main]

use k8s_ai_operator::webhook::{
    admission::{EndpointLookup, review},
    inject::InjectSettings,
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use libfuzzer_sys::fuzz_target;

fn settings() -> InjectSettings {
    InjectSettings {
        image: "ghcr.io/kernelpanic09/ai-sidecar:fuzz".into(),
        native_sidecar: true,
        cpu_request: "10m".into(),
        memory_request: "32Mi".into(),
        memory_limit: "64Mi".into(),
        aws_env: vec![],
        sts_token_lifetime_seconds: 86_400,
        version: "fuzz".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<AdmissionReview<Pod>>(data) else { return };
    let Ok(mut raw) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let lookup = |_: &str, _: &str| EndpointLookup::Exists;
    let answer = review(input, &settings(), &lookup);
    // The answer always serialises (the API server must be able to read it).
    serde_json::to_vec(&answer).expect("an AdmissionReview serialises");
    let Some(patch) = answer.response.and_then(|r| r.patch) else { return };
    // The API server applies the patch to the pod it sent; the patched pod, reviewed again, is left alone.
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
    json_patch::patch(&mut raw["request"]["object"], &patch).expect("the patch applies to its pod");
    let again: AdmissionReview<Pod> = serde_json::from_value(raw).expect("the patched pod is a pod");
    let second = review(again, &settings(), &lookup);
    let repatched = second.response.and_then(|r| r.patch);
    assert!(repatched.is_none(), "an injected pod was patched again: {:?}", repatched.map(String::from_utf8));
});

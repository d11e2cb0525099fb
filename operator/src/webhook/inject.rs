//! Sidecar injection: a pure function from a Pod (as the API server sends it for admission) to
//! the minimal RFC 6902 patch that adds the sidecar, or a denial saying what to fix.
//!
//! Idempotent: a marker annotation records the injected version, and a pod that has it (or a
//! container named like ours) is left alone, so reinvocation never injects twice.

use k8s_ai_api::{ENDPOINTS_ANNOTATION, INJECT_ANNOTATION};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The annotation recording that (and which version of) the sidecar was injected.
pub const INJECTED_ANNOTATION: &str = "ai.kernelpanic09.io/injected";
/// The label on injected pods, so the ledger controller can watch just them (selectors see labels only).
pub const INJECTED_LABEL: &str = "ai.kernelpanic09.io/sidecar";
/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "ai-sidecar";
/// Our projected token volume (not EKS's `aws-iam-token`, so the two webhooks never collide).
pub const TOKEN_VOLUME: &str = "ai-sidecar-sts-token";
/// Where the sidecar reads the token.
pub const TOKEN_DIR: &str = "/var/run/secrets/ai.kernelpanic09.io/serviceaccount";
/// The sidecar's admin port (probes, metrics).
pub const ADMIN_PORT: i32 = 8091;

/// What the operator injects, from its flags.
#[derive(Debug, Clone)]
pub struct InjectSettings {
    pub image: String,
    /// Native sidecar (`initContainers` with `restartPolicy: Always`, Kubernetes ≥ 1.29), else a plain container.
    pub native_sidecar: bool,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// AWS settings passed on to the sidecar (e.g. `AWS_ENDPOINT_URL` for tests and private endpoints).
    pub aws_env: Vec<(String, String)>,
    /// Recorded in the marker annotation.
    pub version: String,
}

/// Why a pod that asked for the sidecar cannot have it: the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denial(pub String);

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The endpoints a pod asks for, validated.
pub fn requested_endpoints(pod: &Pod) -> Result<Vec<String>, Denial> {
    let raw = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINTS_ANNOTATION))
        .map(String::as_str)
        .unwrap_or_default();
    let names: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(Denial(format!(
            "the pod asks for the AI sidecar ({INJECT_ANNOTATION}: \"true\") but names no endpoint: set {ENDPOINTS_ANNOTATION} to the ModelEndpoints it may use, e.g. \"claude-haiku,nova-pro\""
        )));
    }
    if let Some(bad) = names.iter().find(|n| !is_dns_label(n)) {
        return Err(Denial(format!(
            "{ENDPOINTS_ANNOTATION}: {bad:?} is not a ModelEndpoint name (lowercase letters, digits and '-', at most 63)"
        )));
    }
    Ok(names)
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn sidecar_container(settings: &InjectSettings, endpoints: &[String]) -> Value {
    let from_field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut env = vec![
        from_field("AI_SIDECAR_POD_NAME", "metadata.name"),
        from_field("AI_SIDECAR_NAMESPACE", "metadata.namespace"),
    ];
    env.push(json!({ "name": "AI_SIDECAR_ENDPOINTS", "value": endpoints.join(",") }));
    env.push(json!({ "name": "AI_SIDECAR_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token") }));
    env.extend(
        settings
            .aws_env
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v })),
    );
    let mut container = json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "env": env,
        "ports": [ { "name": "ai-admin", "containerPort": ADMIN_PORT, "protocol": "TCP" } ],
        "startupProbe": { "httpGet": { "path": "/readyz", "port": ADMIN_PORT }, "periodSeconds": 1, "failureThreshold": 60 },
        "readinessProbe": { "httpGet": { "path": "/readyz", "port": ADMIN_PORT }, "periodSeconds": 10 },
        "livenessProbe": { "httpGet": { "path": "/healthz", "port": ADMIN_PORT }, "periodSeconds": 10 },
        "resources": {
            "requests": { "cpu": settings.cpu_request, "memory": settings.memory_request },
            "limits": { "memory": settings.memory_limit },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [ { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true } ],
    });
    if settings.native_sidecar {
        container["restartPolicy"] = json!("Always");
    }
    container
}

/// The patch that injects the sidecar into `pod`, `None` when the pod did not opt in or already
/// has it, or a denial when it opted in wrongly.
pub fn patch_for(
    pod: &Pod,
    settings: &InjectSettings,
) -> Result<Option<json_patch::Patch>, Denial> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(INJECT_ANNOTATION).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let already = annotations.contains_key(INJECTED_ANNOTATION)
        || spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_NAME);
    if already {
        return Ok(None);
    }
    let endpoints = requested_endpoints(pod)?;
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == TOKEN_VOLUME)
    {
        return Err(Denial(format!(
            "the pod already has a volume named {TOKEN_VOLUME}, which the AI sidecar needs: rename it"
        )));
    }
    let container = sidecar_container(settings, &endpoints);
    let volume = json!({
        "name": TOKEN_VOLUME,
        "projected": { "sources": [ { "serviceAccountToken": { "audience": "sts.amazonaws.com", "expirationSeconds": 86_400, "path": "token" } } ] },
    });
    let mut ops = Vec::new();
    // Native sidecars go first among init containers: ready before the others and the app start.
    match (
        settings.native_sidecar,
        spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()),
    ) {
        (true, true) => {
            ops.push(json!({ "op": "add", "path": "/spec/initContainers/0", "value": container }));
        }
        (true, false) => {
            ops.push(json!({ "op": "add", "path": "/spec/initContainers", "value": [container] }));
        }
        (false, _) => {
            ops.push(json!({ "op": "add", "path": "/spec/containers/-", "value": container }));
        }
    }
    if spec.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        ops.push(json!({ "op": "add", "path": "/spec/volumes/-", "value": volume }));
    } else {
        ops.push(json!({ "op": "add", "path": "/spec/volumes", "value": [volume] }));
    }
    // Pods always have annotations here (the opt-in is one), so adding a key is enough.
    ops.push(json!({ "op": "add", "path": format!("/metadata/annotations/{}", pointer_key(INJECTED_ANNOTATION)), "value": settings.version }));
    let label = json!({ "op": "add", "path": format!("/metadata/labels/{}", pointer_key(INJECTED_LABEL)), "value": "injected" });
    match &pod.metadata.labels {
        Some(labels) if !labels.is_empty() => ops.push(label),
        _ => ops.push(json!({ "op": "add", "path": "/metadata/labels", "value": { INJECTED_LABEL: "injected" } })),
    }
    serde_json::from_value(Value::Array(ops))
        .map(Some)
        .map_err(|e| Denial(format!("internal error building the patch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: "ghcr.io/kernelpanic09/ai-sidecar:0.1.0".into(),
            native_sidecar: true,
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "64Mi".into(),
            aws_env: vec![("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:4566".into())],
            version: "0.1.0".into(),
        }
    }

    fn pod(annotations: &Value, extra_spec: &Value) -> Pod {
        let mut spec = json!({ "containers": [ { "name": "app", "image": "app:1" } ] });
        spec.as_object_mut()
            .unwrap()
            .extend(extra_spec.as_object().unwrap().clone());
        serde_json::from_value(json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "annotations": annotations }, "spec": spec })).unwrap()
    }

    fn apply(p: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn opted_in_pods_get_a_native_sidecar_token_volume_and_marker() {
        let p = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku, nova-pro" }),
            &json!({}),
        );
        let patch = patch_for(&p, &settings()).unwrap().unwrap();
        let out = apply(&p, &patch);
        let spec = out.spec.as_ref().unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let env: Vec<(String, Option<String>)> = sidecar
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert!(env.contains(&(
            "AI_SIDECAR_ENDPOINTS".into(),
            Some("claude-haiku,nova-pro".into())
        )));
        assert!(env.contains(&(
            "AWS_ENDPOINT_URL".into(),
            Some("http://127.0.0.1:4566".into())
        )));
        let sc = sidecar.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        let volume = &spec.volumes.as_ref().unwrap()[0];
        let token = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some("sts.amazonaws.com"));
        assert_eq!(
            out.metadata.annotations.unwrap()[INJECTED_ANNOTATION],
            "0.1.0"
        );
        assert_eq!(out.metadata.labels.unwrap()[INJECTED_LABEL], "injected");
        assert_eq!(
            spec.containers.len(),
            1,
            "the app's containers are untouched"
        );
        // A second pass (reinvocation) changes nothing.
        assert!(
            patch_for(&apply(&p, &patch), &settings())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn existing_init_containers_and_volumes_are_kept() {
        let extra = json!({ "initContainers": [ { "name": "migrate", "image": "m:1" } ], "volumes": [ { "name": "data", "emptyDir": {} } ] });
        let p = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" }),
            &extra,
        );
        let out = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        let spec = out.spec.unwrap();
        let inits: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            inits,
            [SIDECAR_NAME, "migrate"],
            "the native sidecar starts first"
        );
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data", TOKEN_VOLUME]);
    }

    #[test]
    fn without_native_sidecars_it_is_a_plain_container() {
        let p = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" }),
            &json!({}),
        );
        let out = apply(
            &p,
            &patch_for(
                &p,
                &InjectSettings {
                    native_sidecar: false,
                    ..settings()
                },
            )
            .unwrap()
            .unwrap(),
        );
        let spec = out.spec.unwrap();
        assert_eq!(
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["app", SIDECAR_NAME]
        );
        assert!(spec.containers[1].restart_policy.is_none());
    }

    #[test]
    fn pods_that_did_not_opt_in_are_untouched() {
        assert!(
            patch_for(&pod(&json!({}), &json!({})), &settings())
                .unwrap()
                .is_none()
        );
        assert!(
            patch_for(
                &pod(
                    &json!({ INJECT_ANNOTATION: "false", ENDPOINTS_ANNOTATION: "x" }),
                    &json!({})
                ),
                &settings()
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn bad_opt_ins_are_denied_with_what_to_fix() {
        let err = patch_for(
            &pod(&json!({ INJECT_ANNOTATION: "true" }), &json!({})),
            &settings(),
        )
        .unwrap_err();
        assert!(
            err.0.contains(ENDPOINTS_ANNOTATION) && err.0.contains("e.g."),
            "{err}"
        );
        let err = patch_for(
            &pod(
                &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "Claude_Haiku" }),
                &json!({}),
            ),
            &settings(),
        )
        .unwrap_err();
        assert!(err.0.contains("Claude_Haiku"), "{err}");
        let clash = json!({ "volumes": [ { "name": TOKEN_VOLUME, "emptyDir": {} } ] });
        let err = patch_for(
            &pod(
                &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "a" }),
                &clash,
            ),
            &settings(),
        )
        .unwrap_err();
        assert!(err.0.contains("rename"), "{err}");
    }
}

//! Sidecar injection: a pure function from a Pod (as the API server sends it for admission) to
//! the minimal RFC 6902 patch that adds the sidecar, or a denial saying what to fix.
//!
//! Idempotent: a marker annotation records the injected version, and a pod that has it (or a
//! container named like ours) is left alone, so reinvocation never injects twice.

use std::str::FromStr;

use k8s_ai_api::{ENDPOINTS_ANNOTATION, INJECT_ANNOTATION};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// The annotation recording that (and which version of) the sidecar was injected.
pub const INJECTED_ANNOTATION: &str = "ai.kernelpanic09.io/injected";
/// Per-pod override of the sidecar's CPU request (`--sidecar-cpu-request`).
pub const CPU_REQUEST_ANNOTATION: &str = "ai.kernelpanic09.io/sidecar-cpu-request";
/// Per-pod override of the sidecar's memory request (`--sidecar-memory-request`).
pub const MEMORY_REQUEST_ANNOTATION: &str = "ai.kernelpanic09.io/sidecar-memory-request";
/// Per-pod override of the sidecar's memory limit (`--sidecar-memory-limit`).
pub const MEMORY_LIMIT_ANNOTATION: &str = "ai.kernelpanic09.io/sidecar-memory-limit";
/// The label on injected pods, so the ledger controller can watch just them (selectors see labels only).
pub const INJECTED_LABEL: &str = "ai.kernelpanic09.io/sidecar";
/// `"true"`: the app's containers get [`ROUTED_ENV`] pointing at the sidecar, so an unchanged
/// Bedrock app (boto3, the AWS SDKs, LangChain's Bedrock classes, `AnthropicBedrock`) calls
/// through it.
pub const ROUTE_BEDROCK_ANNOTATION: &str = "ai.kernelpanic09.io/route-bedrock-sdk";
/// `"auto"`: the sidecar places prompt-cache points where the app placed none
/// (`AI_SIDECAR_PROMPT_CACHE`); `"off"` or absent: it does not.
pub const PROMPT_CACHE_ANNOTATION: &str = "ai.kernelpanic09.io/prompt-cache";
/// Comma-separated URL prefixes (`https://host[:port]/path/`) the sidecar may fetch images from
/// (`AI_SIDECAR_IMAGE_URL_ALLOW`); absent: it fetches none.
pub const IMAGE_URL_ALLOW_ANNOTATION: &str = "ai.kernelpanic09.io/image-url-allow";
/// The AWS SDKs' endpoint setting for Bedrock Runtime only (other services keep theirs).
pub const BEDROCK_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME";
/// The variables set by [`ROUTE_BEDROCK_ANNOTATION`]: the AWS SDKs' and the Anthropic SDKs'
/// Bedrock client's (`AnthropicBedrock`) base URL.
pub const ROUTED_ENV: [&str; 2] = [BEDROCK_ENDPOINT_ENV, "ANTHROPIC_BEDROCK_BASE_URL"];
/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "ai-sidecar";
/// Our projected token volume (not EKS's `aws-iam-token`, so the two webhooks never collide).
pub const TOKEN_VOLUME: &str = "ai-sidecar-sts-token";
/// Where the sidecar reads the token.
pub const TOKEN_DIR: &str = "/var/run/secrets/ai.kernelpanic09.io/serviceaccount";
/// The sidecar's own Kubernetes API credentials, for pods that get none automounted.
pub const KUBE_API_VOLUME: &str = "ai-sidecar-kube-api";
/// Where in-cluster clients (`kube::Client::try_default`) read the token, CA and namespace.
pub const KUBE_API_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The sidecar's admin port (probes, metrics).
pub const ADMIN_PORT: i32 = 8091;
/// The sidecar's data port on the pod's loopback (its `--listen` default).
pub const DATA_PORT: i32 = 8090;
/// The name prefix of the token volume the ServiceAccount admission plugin adds.
const AUTOMOUNT_VOLUME_PREFIX: &str = "kube-api-access-";

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
    /// Lifetime of the sidecar's projected STS token (`expirationSeconds`); the kubelet renews it
    /// at 80 % of that.
    pub sts_token_lifetime_seconds: i64,
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

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether the pod asks for the sidecar: `"true"` yes, absent or `"false"` no, anything else is a
/// typo the owner should hear about rather than a pod silently started without its sidecar.
fn opted_in(pod: &Pod) -> Result<bool, Denial> {
    match annotation(pod, INJECT_ANNOTATION) {
        Some("true") => Ok(true),
        None | Some("false") => Ok(false),
        Some(other) => Err(Denial(format!(
            "{INJECT_ANNOTATION}: {other:?} is neither \"true\" nor \"false\": set \"true\" to have the AI sidecar injected, or remove the annotation"
        ))),
    }
}

/// Whether the app's Bedrock SDKs are pointed at the sidecar: `"true"` or `"false"` (the default).
fn routes_bedrock(pod: &Pod) -> Result<bool, Denial> {
    match annotation(pod, ROUTE_BEDROCK_ANNOTATION) {
        Some("true") => Ok(true),
        None | Some("false") => Ok(false),
        Some(other) => Err(Denial(format!(
            "{ROUTE_BEDROCK_ANNOTATION}: {other:?} is neither \"true\" nor \"false\": set \"true\" to point the app's AWS SDKs for Bedrock Runtime at the sidecar, or remove the annotation"
        ))),
    }
}

/// The sidecar's prompt-cache setting the pod asks for, checked.
fn prompt_cache(pod: &Pod) -> Result<&'static str, Denial> {
    match annotation(pod, PROMPT_CACHE_ANNOTATION) {
        None | Some("off") => Ok("off"),
        Some("auto") => Ok("auto"),
        Some(other) => Err(Denial(format!(
            "{PROMPT_CACHE_ANNOTATION}: {other:?} is neither \"auto\" nor \"off\": set \"auto\" to have the sidecar place prompt-cache points, or remove the annotation"
        ))),
    }
}

/// The image URL prefixes the pod allows, checked as the sidecar checks them at start (so a typo
/// is a denial naming it, not a sidecar that does not start).
fn image_url_allow(pod: &Pod) -> Result<Option<String>, Denial> {
    let Some(list) = annotation(pod, IMAGE_URL_ALLOW_ANNOTATION) else {
        return Ok(None);
    };
    let mut entries = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if let Err(why) = k8s_ai_api::image_url::parse_prefix(entry) {
            return Err(Denial(format!(
                "{IMAGE_URL_ALLOW_ANNOTATION}: {entry:?} is not a URL prefix ({why}): write https://host[:port]/path/ (ending in /, no credentials, query or dot segments), comma-separated"
            )));
        }
        entries.push(entry);
    }
    Ok((!entries.is_empty()).then(|| entries.join(",")))
}

/// Sets each of [`ROUTED_ENV`] on each app container that does not set it itself (an explicit
/// value is the owner's choice and is kept).
fn route_bedrock_ops(spec: &PodSpec) -> Vec<Value> {
    let url = format!("http://localhost:{DATA_PORT}");
    let mut ops = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let own = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
        let added: Vec<Value> = ROUTED_ENV
            .iter()
            .filter(|name| !own(name))
            .map(|name| json!({ "name": name, "value": url }))
            .collect();
        if c.env.as_ref().is_some_and(|env| !env.is_empty()) {
            ops.extend(added.into_iter().map(
                |value| json!({ "op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": value }),
            ));
        } else if !added.is_empty() {
            ops.push(
                json!({ "op": "add", "path": format!("/spec/containers/{i}/env"), "value": added }),
            );
        }
    }
    ops
}

/// The endpoints a pod asks for, validated.
pub fn requested_endpoints(pod: &Pod) -> Result<Vec<String>, Denial> {
    let raw = annotation(pod, ENDPOINTS_ANNOTATION).unwrap_or_default();
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

/// The value of a Kubernetes quantity (`250m`, `64Mi`, `1.5G`, `5e3`), `None` when `text` is not one.
fn quantity(text: &str) -> Option<Decimal> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let split = unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    // Quantities allow "1." and ".5": a leading 0 and no trailing dot make them plain decimals.
    let number = Decimal::from_str(&format!("0{}", number.trim_end_matches('.'))).ok()?;
    let binary = |power: u32| Some(Decimal::from(1_i64 << (10 * power)));
    let decimal = |exponent: i32| {
        let power = exponent.unsigned_abs();
        if exponent < 0 {
            Decimal::try_from_i128_with_scale(1, power).ok()
        } else {
            Decimal::try_from_i128_with_scale(10_i128.checked_pow(power)?, 0).ok()
        }
    };
    let multiplier = match suffix {
        "" => decimal(0),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).filter(|e| !e.is_empty())?;
            decimal(exponent.parse().ok()?)
        }
    }?;
    let value = number.checked_mul(multiplier)?;
    Some(if negative { -value } else { value })
}

/// One of the sidecar's resource figures: the operator's default or the pod's override.
struct Figure {
    value: String,
    amount: Decimal,
    /// Where the value came from, for messages.
    source: String,
}

fn figure(pod: &Pod, key: &str, default: &str, example: &str) -> Result<Figure, Denial> {
    let (value, source) = match annotation(pod, key) {
        Some(v) => (v, format!("from {key}")),
        None => (default, "the operator's default".to_owned()),
    };
    match quantity(value) {
        Some(amount) if !amount.is_sign_negative() => Ok(Figure {
            value: value.to_owned(),
            amount,
            source,
        }),
        _ => Err(Denial(format!(
            "{key}: {value:?} is not a Kubernetes resource quantity: use e.g. {example:?}"
        ))),
    }
}

/// The sidecar's requests and limit, with the pod's overrides applied and checked.
struct Resources {
    cpu_request: Figure,
    memory_request: Figure,
    memory_limit: Figure,
}

fn resources(pod: &Pod, settings: &InjectSettings) -> Result<Resources, Denial> {
    let resources = Resources {
        cpu_request: figure(pod, CPU_REQUEST_ANNOTATION, &settings.cpu_request, "50m")?,
        memory_request: figure(
            pod,
            MEMORY_REQUEST_ANNOTATION,
            &settings.memory_request,
            "64Mi",
        )?,
        memory_limit: figure(
            pod,
            MEMORY_LIMIT_ANNOTATION,
            &settings.memory_limit,
            "128Mi",
        )?,
    };
    let (request, limit) = (&resources.memory_request, &resources.memory_limit);
    if request.amount > limit.amount {
        return Err(Denial(format!(
            "the AI sidecar's memory request {} ({}) exceeds its memory limit {} ({}): set {MEMORY_LIMIT_ANNOTATION} to at least {} or lower {MEMORY_REQUEST_ANNOTATION}",
            request.value, request.source, limit.value, limit.source, request.value
        )));
    }
    Ok(resources)
}

/// Refusals that do not depend on the annotations' contents: where the sidecar cannot work.
fn check_pod(spec: &PodSpec, settings: &InjectSettings) -> Result<(), Denial> {
    if spec.host_network == Some(true) {
        return Err(Denial(format!(
            "the AI sidecar cannot run in a hostNetwork pod: its data port 127.0.0.1:{DATA_PORT} would be on the node's loopback, where every host-network process could spend this pod's budget, and two such pods on one node would collide on it: remove hostNetwork: true, or the {INJECT_ANNOTATION} annotation"
        )));
    }
    let restart = spec.restart_policy.as_deref().unwrap_or("Always");
    if !settings.native_sidecar && restart != "Always" {
        return Err(Denial(format!(
            "the AI sidecar is injected as a plain container here (the operator runs with --native-sidecar=false) and never exits, so this pod (restartPolicy: {restart}, e.g. a Job's) would never complete: run the operator with --native-sidecar=true (Kubernetes 1.29 or later), or remove the {INJECT_ANNOTATION} annotation"
        )));
    }
    // A declared port is all we can see; a hostPort maps the node's port, not the pod's, so it cannot clash.
    let declared = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten().map(move |p| (c, p.container_port)));
    for (container, port) in declared {
        if port == DATA_PORT || port == ADMIN_PORT {
            return Err(Denial(format!(
                "container {} declares containerPort {port}, a port the AI sidecar listens on in the pod's network, which all its containers share ({DATA_PORT}: its data API on 127.0.0.1, {ADMIN_PORT}: health and metrics), so the app or the sidecar could not listen: move the app to another port, or remove the {INJECT_ANNOTATION} annotation",
                container.name
            )));
        }
    }
    if let Some(clash) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME || v.name == KUBE_API_VOLUME)
    {
        return Err(Denial(format!(
            "the pod already has a volume named {}, a name the AI sidecar reserves for its own: rename it",
            clash.name
        )));
    }
    Ok(())
}

/// The volume that gives the sidecar Kubernetes API credentials: the ServiceAccount admission
/// plugin's when the pod has it, else `None` (the sidecar gets its own).
fn automounted_api_volume(spec: &PodSpec) -> Option<&str> {
    if spec.automount_service_account_token == Some(false) {
        return None;
    }
    spec.volumes
        .iter()
        .flatten()
        .find(|v| {
            v.name.starts_with(AUTOMOUNT_VOLUME_PREFIX)
                && v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| s.service_account_token.is_some())
        })
        .map(|v| v.name.as_str())
}

/// Escapes a key for a JSON pointer (RFC 6901).
/// The variables EKS Pod Identity gives a container: the agent's URL and the token file.
const POD_IDENTITY_ENV: [&str; 2] = [
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// EKS Pod Identity as EKS's webhook gave it to the pod's first container that has it: its two
/// variables and the mount holding the token file. EKS's webhook (`pod-identity-webhook`) runs
/// after this one and gives it to the sidecar too; when it ran first, the sidecar gets it here.
fn pod_identity(spec: &PodSpec) -> Option<(Vec<Value>, Value)> {
    spec.containers.iter().find_map(|c| {
        let env = c.env.as_ref()?;
        let vars: Vec<_> = POD_IDENTITY_ENV
            .iter()
            .map(|name| env.iter().find(|e| e.name == *name && e.value.is_some()))
            .collect::<Option<_>>()?;
        let token_file = vars[1].value.as_deref()?;
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| token_file.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/'))))
            .max_by_key(|m| m.mount_path.len())?;
        Some((
            vars.iter()
                .map(|e| json!({ "name": e.name, "value": e.value }))
                .collect(),
            json!({ "name": mount.name, "mountPath": mount.mount_path, "readOnly": true }),
        ))
    })
}

fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn sidecar_container(
    settings: &InjectSettings,
    endpoints: &[String],
    resources: &Resources,
    api_volume: &str,
) -> Value {
    let from_field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut env = vec![
        from_field("AI_SIDECAR_POD_NAME", "metadata.name"),
        from_field("AI_SIDECAR_POD_UID", "metadata.uid"),
        from_field("AI_SIDECAR_NAMESPACE", "metadata.namespace"),
        // Before the operator-wide variables, which may name it: a collector on the node is
        // OTEL_EXPORTER_OTLP_ENDPOINT=http://$(AI_SIDECAR_NODE_IP):4318.
        from_field("AI_SIDECAR_NODE_IP", "status.hostIP"),
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
            "requests": { "cpu": resources.cpu_request.value, "memory": resources.memory_request.value },
            "limits": { "memory": resources.memory_limit.value },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [
            { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true },
            { "name": api_volume, "mountPath": KUBE_API_DIR, "readOnly": true },
        ],
    });
    if settings.native_sidecar {
        container["restartPolicy"] = json!("Always");
    }
    container
}

/// The sidecar's own API credentials, the same three files the ServiceAccount admission plugin
/// projects, so the app keeps no token while the sidecar can still read its ModelEndpoints.
fn kube_api_volume() -> Value {
    json!({
        "name": KUBE_API_VOLUME,
        "projected": { "sources": [
            { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
            { "configMap": { "name": "kube-root-ca.crt", "items": [ { "key": "ca.crt", "path": "ca.crt" } ] } },
            { "downwardAPI": { "items": [ { "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } } ] } },
        ] },
    })
}

/// The patch that injects the sidecar into `pod`, `None` when the pod did not opt in or already
/// has it, or a denial when it opted in wrongly.
pub fn patch_for(
    pod: &Pod,
    settings: &InjectSettings,
) -> Result<Option<json_patch::Patch>, Denial> {
    if !opted_in(pod)? {
        return Ok(None);
    }
    // The API server always sends a spec; without one no patch path would exist (found by fuzzing).
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Denial(
            "the pod has no spec: the AI sidecar is injected into spec.initContainers".to_owned(),
        ));
    };
    let already = annotation(pod, INJECTED_ANNOTATION).is_some()
        || spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_NAME);
    if already {
        return Ok(None);
    }
    check_pod(spec, settings)?;
    let endpoints = requested_endpoints(pod)?;
    let resources = resources(pod, settings)?;
    let route_bedrock = routes_bedrock(pod)?;
    let prompt_cache = prompt_cache(pod)?;
    let image_url_allow = image_url_allow(pod)?;
    let automounted = automounted_api_volume(spec);
    let mut container = sidecar_container(
        settings,
        &endpoints,
        &resources,
        automounted.unwrap_or(KUBE_API_VOLUME),
    );
    if prompt_cache != "off"
        && let Some(env) = container["env"].as_array_mut()
    {
        env.push(json!({ "name": "AI_SIDECAR_PROMPT_CACHE", "value": prompt_cache }));
    }
    if let Some(list) = image_url_allow
        && let Some(env) = container["env"].as_array_mut()
    {
        env.push(json!({ "name": "AI_SIDECAR_IMAGE_URL_ALLOW", "value": list }));
    }
    if let Some((vars, mount)) = pod_identity(spec) {
        if let Some(env) = container["env"].as_array_mut() {
            env.extend(vars);
        }
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.push(mount);
        }
    }
    let mut volumes = vec![json!({
        "name": TOKEN_VOLUME,
        "projected": { "sources": [ { "serviceAccountToken": { "audience": "sts.amazonaws.com", "expirationSeconds": settings.sts_token_lifetime_seconds, "path": "token" } } ] },
    })];
    if automounted.is_none() {
        volumes.push(kube_api_volume());
    }
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
        ops.extend(
            volumes
                .into_iter()
                .map(|v| json!({ "op": "add", "path": "/spec/volumes/-", "value": v })),
        );
    } else {
        ops.push(json!({ "op": "add", "path": "/spec/volumes", "value": volumes }));
    }
    if route_bedrock {
        ops.extend(route_bedrock_ops(spec));
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
            sts_token_lifetime_seconds: 86_400,
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

    #[test]
    fn an_opted_in_pod_without_a_spec_is_denied_not_patched() {
        // Found by fuzz/fuzz_targets/admission_review.rs: the patch pointed into a missing spec.
        let mut p = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" }),
            &json!({}),
        );
        p.spec = None;
        let denial = patch_for(&p, &settings()).unwrap_err();
        assert!(denial.0.contains("no spec"), "{}", denial.0);
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
        assert_eq!(volumes, ["data", TOKEN_VOLUME, KUBE_API_VOLUME]);
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

    #[test]
    fn quantities_are_parsed_like_kubernetes_does() {
        let dec = |s: &str| Decimal::from_str(s).unwrap();
        for (text, value) in [
            ("0", "0"),
            ("250m", "0.25"),
            ("1.5", "1.5"),
            ("1.", "1"),
            (".5", "0.5"),
            ("+2k", "2000"),
            ("64Mi", "67108864"),
            ("1Gi", "1073741824"),
            ("1Ei", "1152921504606846976"),
            ("2G", "2000000000"),
            ("1E", "1000000000000000000"),
            ("5e3", "5000"),
            ("5E-3", "0.005"),
            ("-1", "-1"),
        ] {
            assert_eq!(quantity(text), Some(dec(value)), "{text}");
        }
        for text in [
            "", "Mi", "64MB", "64mi", "1.2.3", "1e", "1e1.5", " 64Mi", "64Mi ", "1e40", "+-1",
            "0x10",
        ] {
            assert_eq!(quantity(text), None, "{text:?}");
        }
    }

    #[test]
    fn resource_overrides_replace_the_defaults_and_are_checked() {
        let base = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "a" });
        let with = |extra: &Value| {
            let mut annotations = base.clone();
            annotations
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            pod(&annotations, &json!({}))
        };
        let p = with(&json!({ CPU_REQUEST_ANNOTATION: "50m", MEMORY_LIMIT_ANNOTATION: "1Gi" }));
        let out = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        let resources =
            serde_json::to_value(&out.spec.unwrap().init_containers.unwrap()[0].resources).unwrap();
        assert_eq!(
            resources,
            json!({ "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "memory": "1Gi" } })
        );

        let err = patch_for(
            &with(&json!({ MEMORY_REQUEST_ANNOTATION: "lots" })),
            &settings(),
        )
        .unwrap_err();
        assert!(
            err.0.contains(MEMORY_REQUEST_ANNOTATION) && err.0.contains("\"64Mi\""),
            "{err}"
        );
        let err = patch_for(
            &with(&json!({ CPU_REQUEST_ANNOTATION: "-10m" })),
            &settings(),
        )
        .unwrap_err();
        assert!(err.0.contains(CPU_REQUEST_ANNOTATION), "{err}");
        // 100Mi over the default 64Mi limit, and 0.1Gi over 100M: compared by value, not text.
        let err = patch_for(
            &with(&json!({ MEMORY_REQUEST_ANNOTATION: "100Mi" })),
            &settings(),
        )
        .unwrap_err();
        assert!(
            err.0.contains(MEMORY_LIMIT_ANNOTATION) && err.0.contains("the operator's default"),
            "{err}"
        );
        assert!(
            patch_for(
                &with(
                    &json!({ MEMORY_REQUEST_ANNOTATION: "0.1Gi", MEMORY_LIMIT_ANNOTATION: "100M" })
                ),
                &settings()
            )
            .is_err()
        );
        assert!(
            patch_for(
                &with(
                    &json!({ MEMORY_REQUEST_ANNOTATION: "100M", MEMORY_LIMIT_ANNOTATION: "0.1Gi" })
                ),
                &settings()
            )
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn the_sidecar_reuses_the_automounted_api_token_or_gets_its_own() {
        let annotations = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "a" });
        let automounted = json!({ "volumes": [ { "name": "kube-api-access-abcde", "projected": { "sources": [ { "serviceAccountToken": { "path": "token" } } ] } } ] });
        let mounts_of = |extra: &Value| {
            let p = pod(&annotations, extra);
            let out = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
            let spec = out.spec.unwrap();
            let api_mount = spec.init_containers.unwrap()[0]
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == KUBE_API_DIR)
                .map(|m| m.name.clone());
            let volumes: Vec<String> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.clone())
                .collect();
            (api_mount, volumes)
        };
        assert_eq!(
            mounts_of(&automounted),
            (
                Some("kube-api-access-abcde".to_owned()),
                vec!["kube-api-access-abcde".to_owned(), TOKEN_VOLUME.to_owned()]
            )
        );
        let mut opted_out = automounted.clone();
        opted_out["automountServiceAccountToken"] = json!(false);
        assert_eq!(mounts_of(&opted_out).0.as_deref(), Some(KUBE_API_VOLUME));
        assert_eq!(
            mounts_of(&json!({})),
            (
                Some(KUBE_API_VOLUME.to_owned()),
                vec![TOKEN_VOLUME.to_owned(), KUBE_API_VOLUME.to_owned()]
            )
        );
    }

    #[test]
    fn pods_where_the_sidecar_cannot_work_are_denied() {
        let annotations = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "a" });
        let err = patch_for(
            &pod(&annotations, &json!({ "hostNetwork": true })),
            &settings(),
        )
        .unwrap_err();
        assert!(err.0.contains("hostNetwork"), "{err}");
        let job = pod(&annotations, &json!({ "restartPolicy": "Never" }));
        assert!(patch_for(&job, &settings()).unwrap().is_some());
        let plain = InjectSettings {
            native_sidecar: false,
            ..settings()
        };
        let err = patch_for(&job, &plain).unwrap_err();
        assert!(err.0.contains("--native-sidecar=true"), "{err}");
        let err = patch_for(
            &pod(
                &json!({ INJECT_ANNOTATION: "yes", ENDPOINTS_ANNOTATION: "a" }),
                &json!({}),
            ),
            &settings(),
        )
        .unwrap_err();
        assert!(err.0.contains("\"yes\""), "{err}");
        for (port, spec) in [
            (
                8090,
                json!({ "containers": [ { "name": "app", "ports": [ { "containerPort": 8090 } ] } ] }),
            ),
            (
                8091,
                json!({ "containers": [ { "name": "app" } ], "initContainers": [ { "name": "setup", "ports": [ { "containerPort": 8091, "hostPort": 9000 } ] } ] }),
            ),
        ] {
            let err = patch_for(&pod(&annotations, &spec), &settings()).unwrap_err();
            assert!(err.0.contains(&format!("containerPort {port}")), "{err}");
            assert!(err.0.contains("move the app to another port"), "{err}");
        }
        let host_port_only = json!({ "containers": [ { "name": "app", "ports": [ { "containerPort": 8080, "hostPort": 8090 } ] } ] });
        assert!(
            patch_for(&pod(&annotations, &host_port_only), &settings())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bedrock_sdks_are_pointed_at_the_sidecar_when_asked() {
        let annotations = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku", ROUTE_BEDROCK_ANNOTATION: "true" });
        let p = pod(
            &annotations,
            &json!({ "containers": [
                { "name": "app", "image": "app", "env": [ { "name": "A", "value": "1" } ] },
                { "name": "worker", "image": "app" },
                { "name": "own", "image": "app", "env": [ { "name": BEDROCK_ENDPOINT_ENV, "value": "https://vpce.example" } ] },
            ] }),
        );
        let patched = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        let endpoint = |c: usize| -> Vec<String> {
            patched.spec.as_ref().unwrap().containers[c]
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == BEDROCK_ENDPOINT_ENV)
                .filter_map(|e| e.value.clone())
                .collect()
        };
        assert_eq!(endpoint(0), ["http://localhost:8090"]);
        assert_eq!(endpoint(1), ["http://localhost:8090"]);
        assert_eq!(
            endpoint(2),
            ["https://vpce.example"],
            "the owner's own value is kept"
        );
        for c in 0..3 {
            let anthropic: Vec<_> = patched.spec.as_ref().unwrap().containers[c]
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == "ANTHROPIC_BEDROCK_BASE_URL")
                .collect();
            assert_eq!(anthropic.len(), 1, "container {c}");
        }
        let a = patched.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap();
        assert_eq!(a[0].name, "A", "the app's variables are kept");

        let without = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" });
        let p = pod(
            &without,
            &json!({ "containers": [ { "name": "app", "image": "app" } ] }),
        );
        let patched = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        assert!(
            patched.spec.unwrap().containers[0].env.is_none(),
            "off by default"
        );

        let typo = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku", ROUTE_BEDROCK_ANNOTATION: "yes" });
        let p = pod(
            &typo,
            &json!({ "containers": [ { "name": "app", "image": "app" } ] }),
        );
        assert!(
            patch_for(&p, &settings())
                .unwrap_err()
                .0
                .contains(ROUTE_BEDROCK_ANNOTATION)
        );
    }

    #[test]
    fn prompt_caching_is_passed_to_the_sidecar_when_asked() {
        let asked = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku", PROMPT_CACHE_ANNOTATION: "auto" });
        let p = pod(
            &asked,
            &json!({ "containers": [ { "name": "app", "image": "app" } ] }),
        );
        let patched = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        let sidecar = &patched.spec.unwrap().init_containers.unwrap()[0];
        assert!(
            sidecar
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "AI_SIDECAR_PROMPT_CACHE" && e.value.as_deref() == Some("auto"))
        );
        let typo = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku", PROMPT_CACHE_ANNOTATION: "on" });
        let p = pod(
            &typo,
            &json!({ "containers": [ { "name": "app", "image": "app" } ] }),
        );
        assert!(
            patch_for(&p, &settings())
                .unwrap_err()
                .0
                .contains(PROMPT_CACHE_ANNOTATION)
        );
    }

    #[test]
    fn eks_pod_identity_given_to_the_app_reaches_the_sidecar() {
        let token_dir = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount";
        let with_identity = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" }),
            &json!({
                "containers": [{
                    "name": "app", "image": "app",
                    "env": [
                        {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
                        {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": format!("{token_dir}/eks-pod-identity-token")},
                    ],
                    "volumeMounts": [
                        {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                        {"name": "eks-pod-identity-token", "mountPath": token_dir},
                    ],
                }],
                "volumes": [{"name": "eks-pod-identity-token", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "pods.eks.amazonaws.com", "path": "eks-pod-identity-token"}}]}}],
            }),
        );
        let patch = patch_for(&with_identity, &settings()).unwrap().unwrap();
        let out = apply(&with_identity, &patch);
        let sidecar = &out.spec.unwrap().init_containers.unwrap()[0];
        let env: std::collections::BTreeMap<_, _> = sidecar
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
            "http://169.254.170.23/v1/credentials"
        );
        assert_eq!(
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
            format!("{token_dir}/eks-pod-identity-token")
        );
        let mount = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "eks-pod-identity-token")
            .expect("the token's volume is mounted");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (token_dir, Some(true))
        );

        // Without it (or with half of it), the sidecar gets none.
        let plain = pod(
            &json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku" }),
            &json!({"containers": [{"name": "app", "image": "app", "env": [
                {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"}]}]}),
        );
        let out = apply(&plain, &patch_for(&plain, &settings()).unwrap().unwrap());
        let sidecar = &out.spec.unwrap().init_containers.unwrap()[0];
        assert!(
            !sidecar
                .env
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("AWS_CONTAINER_"))
        );
    }

    #[test]
    fn image_url_prefixes_reach_the_sidecar_and_bad_ones_are_denied() {
        let containers = json!({ "containers": [ { "name": "app", "image": "app" } ] });
        let asked = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku",
            IMAGE_URL_ALLOW_ANNOTATION: "https://assets.example.com/public/, http://images.internal:8080/" });
        let p = pod(&asked, &containers);
        let patched = apply(&p, &patch_for(&p, &settings()).unwrap().unwrap());
        let sidecar = &patched.spec.unwrap().init_containers.unwrap()[0];
        assert!(
            sidecar
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "AI_SIDECAR_IMAGE_URL_ALLOW"
                    && e.value.as_deref()
                        == Some("https://assets.example.com/public/,http://images.internal:8080/"))
        );
        for bad in [
            "assets.example.com/",
            "https://host/no-slash",
            "https://u@host/",
            "https://host/a/../",
            "ftp://host/",
        ] {
            let asked = json!({ INJECT_ANNOTATION: "true", ENDPOINTS_ANNOTATION: "claude-haiku", IMAGE_URL_ALLOW_ANNOTATION: bad });
            let p = pod(&asked, &containers);
            let denial = patch_for(&p, &settings()).unwrap_err().0;
            assert!(
                denial.contains(IMAGE_URL_ALLOW_ANNOTATION),
                "{bad}: {denial}"
            );
        }
    }
}

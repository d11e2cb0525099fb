//! One AdmissionReview in, one out: the injection decision for a pod (a patch, a denial, or an
//! admission with warnings), without I/O, so the server and the golden tests run the same code.

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};

use super::inject::{InjectSettings, patch_for, requested_endpoints};

/// What the caller knows of a ModelEndpoint the pod names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointLookup {
    Exists,
    /// Not there (yet): the pod is admitted with a warning.
    Missing,
    /// The caller cannot tell (no cache yet): no warning.
    Unknown,
}

/// The webhook's answer to `review`. `endpoints(namespace, name)` says whether a ModelEndpoint exists.
pub fn review(
    review: AdmissionReview<Pod>,
    settings: &InjectSettings,
    endpoints: &dyn Fn(&str, &str) -> EndpointLookup,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                .into_review();
        }
    };
    respond(&request, settings, endpoints).into_review()
}

fn respond(
    request: &AdmissionRequest<Pod>,
    settings: &InjectSettings,
    endpoints: &dyn Fn(&str, &str) -> EndpointLookup,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    // A pod's containers and volumes are immutable once created: injection happens at CREATE only.
    if request.operation != Operation::Create {
        return response;
    }
    let Some(pod) = request.object.as_ref() else {
        return response;
    };
    let patch = match patch_for(pod, settings) {
        Ok(Some(patch)) => patch,
        Ok(None) => return response,
        Err(denial) => return response.deny(denial),
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default();
    let warnings = missing_endpoint_warnings(pod, namespace, endpoints);
    match response.clone().with_patch(patch) {
        Ok(mut patched) => {
            patched.warnings = (!warnings.is_empty()).then_some(warnings);
            patched
        }
        Err(e) => response.deny(format!("internal error encoding the patch: {e}")),
    }
}

/// One warning per named endpoint that does not exist: the pod still starts, since the order in
/// which a `kubectl apply` creates a Deployment and its ModelEndpoints must not matter.
fn missing_endpoint_warnings(
    pod: &Pod,
    namespace: &str,
    endpoints: &dyn Fn(&str, &str) -> EndpointLookup,
) -> Vec<String> {
    requested_endpoints(pod)
        .unwrap_or_default()
        .iter()
        .filter(|name| endpoints(namespace, name) == EndpointLookup::Missing)
        .map(|name| {
            format!(
                "ModelEndpoint {name:?} does not exist in namespace {namespace:?}: the AI sidecar answers 404 for it until it is created"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: "sidecar:1".into(),
            native_sidecar: true,
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "64Mi".into(),
            aws_env: Vec::new(),
            sts_token_lifetime_seconds: 86_400,
            version: "0.1.0".into(),
        }
    }

    fn request(operation: &str, annotations: &serde_json::Value) -> AdmissionReview<Pod> {
        let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "namespace": "ns", "annotations": annotations }, "spec": { "containers": [ { "name": "app", "image": "app:1" } ] } });
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "ns",
                "operation": operation,
                "userInfo": {},
                "object": pod,
                "oldObject": if operation == "UPDATE" { pod.clone() } else { serde_json::Value::Null },
            },
        }))
        .unwrap()
    }

    fn response(review: AdmissionReview<DynamicObject>) -> AdmissionResponse {
        review.response.unwrap()
    }

    const OPTED_IN: &str =
        r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "a, b"}"#;

    #[test]
    fn missing_endpoints_are_warned_about_unknown_and_existing_ones_are_not() {
        let opted_in: serde_json::Value = serde_json::from_str(OPTED_IN).unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let lookup = |namespace: &str, name: &str| {
            asked.borrow_mut().push(format!("{namespace}/{name}"));
            if name == "a" {
                EndpointLookup::Exists
            } else {
                EndpointLookup::Missing
            }
        };
        let out = response(review(request("CREATE", &opted_in), &settings(), &lookup));
        assert!(out.allowed && out.patch.is_some());
        assert_eq!(asked.into_inner(), ["ns/a", "ns/b"]);
        let warnings = out.warnings.unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("\"b\"")
                && warnings[0].contains("\"ns\"")
                && warnings[0].contains("404"),
            "{warnings:?}"
        );

        let out = response(review(
            request("CREATE", &opted_in),
            &settings(),
            &|_, _| EndpointLookup::Unknown,
        ));
        assert!(out.allowed && out.patch.is_some() && out.warnings.is_none());
    }

    #[test]
    fn only_creations_are_mutated_and_denials_carry_the_message() {
        let opted_in: serde_json::Value = serde_json::from_str(OPTED_IN).unwrap();
        let out = response(review(
            request("UPDATE", &opted_in),
            &settings(),
            &|_, _| EndpointLookup::Unknown,
        ));
        assert!(out.allowed && out.patch.is_none());
        let out = response(review(
            request("CREATE", &json!({ "ai.kernelpanic09.io/inject": "true" })),
            &settings(),
            &|_, _| EndpointLookup::Missing,
        ));
        assert!(!out.allowed && out.patch.is_none() && out.warnings.is_none());
        assert!(out.result.message.contains("ai.kernelpanic09.io/endpoints"));
        assert_eq!(out.uid, "u-1");
    }

    #[test]
    fn a_review_without_a_request_is_invalid() {
        let empty: AdmissionReview<Pod> = serde_json::from_value(
            json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview" }),
        )
        .unwrap();
        let out = response(review(empty, &settings(), &|_, _| EndpointLookup::Unknown));
        assert!(!out.allowed);
    }
}

//! The custom resources of k8s-ai-operator (`ai.kernelpanic09.io/v1alpha1`) and the constants
//! shared by the operator and the sidecar. Depends on no controller or server code.

// kube's `printcolumn(name = .., type_ = ..)` repeats the same keys once per column by design.
#![allow(clippy::duplicated_attributes)]

pub mod exposition;
pub mod guardrail_policy;
pub mod image_url;
pub mod model_endpoint;
pub mod model_id;
pub mod model_usage;
mod money;
pub mod pricing;
pub mod prompt_template;
pub mod template;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

pub use guardrail_policy::{GuardrailPolicy, GuardrailPolicySpec, GuardrailPolicyStatus};
pub use model_endpoint::{ModelEndpoint, ModelEndpointSpec, ModelEndpointStatus};
pub use model_usage::{ModelUsage, ModelUsageSpec, ModelUsageStatus};
pub use money::{InvalidMoney, MONEY_MAX_SCALE, MONEY_PATTERN, Money};
pub use prompt_template::{PromptTemplate, PromptTemplateSpec, PromptTemplateStatus};

/// The API group of every kind here.
pub const GROUP: &str = "ai.kernelpanic09.io";
/// The API version of every kind here.
pub const VERSION: &str = "v1alpha1";

/// The label of every object the install creates: `kubectl get crd -l app.kubernetes.io/part-of=k8s-ai-operator`.
pub const PART_OF_LABEL: (&str, &str) = ("app.kubernetes.io/part-of", "k8s-ai-operator");

/// Annotation a pod sets to `"true"` to have the sidecar injected.
pub const INJECT_ANNOTATION: &str = "ai.kernelpanic09.io/inject";
/// Annotation listing the ModelEndpoints (of the pod's namespace) the pod may use, comma-separated.
pub const ENDPOINTS_ANNOTATION: &str = "ai.kernelpanic09.io/endpoints";

/// Every CRD of the API, in a stable order (the order `crdgen` prints them), with integer formats
/// the API server knows, labelled as part of the install. Install these rather than `Kind::crd()`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        GuardrailPolicy::crd(),
        ModelEndpoint::crd(),
        PromptTemplate::crd(),
        ModelUsage::crd(),
    ];
    for crd in &mut crds {
        // The label every object of the install has: Helm installs the CRDs as they are generated
        // (a chart's crds/ are not templated), kustomize would add it.
        crd.metadata.labels = Some(
            [(PART_OF_LABEL.0.to_owned(), PART_OF_LABEL.1.to_owned())]
                .into_iter()
                .collect(),
        );
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                kubernetes_integer_formats(schema);
            }
        }
    }
    crds
}

/// schemars describes Rust's unsigned integers as `uint32`/`uint64`, formats the API server does
/// not know (it warns on every apply). Say `int64` with a minimum of 0 instead.
fn kubernetes_integer_formats(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("integer")
        && schema
            .format
            .as_deref()
            .is_some_and(|f| f.starts_with("uint"))
    {
        schema.format = Some("int64".to_owned());
        if schema.minimum.is_none() {
            schema.minimum = Some(0.0);
        }
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        kubernetes_integer_formats(child);
    }
}

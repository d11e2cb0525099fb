//! `PromptTemplate`: a versioned, parameterised prompt bound to a `ModelEndpoint`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model_endpoint::DNS_SUBDOMAIN_PATTERN;

/// Template variable names: identifiers, as used in `{{.Name}}`.
pub const VARIABLE_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
/// Most variables a template may declare.
pub const MAX_VARIABLES: usize = 64;
/// Largest template or system prompt, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 65_536;

/// A reusable prompt with named variables, rendered by the sidecar and sent to a ModelEndpoint
/// of the same namespace. The template uses Go text/template style placeholders: `{{.Name}}`.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ai.kernelpanic09.io",
    version = "v1alpha1",
    kind = "PromptTemplate",
    doc = "A reusable prompt with named variables, rendered by the sidecar and sent to a ModelEndpoint of the same namespace.",
    namespaced,
    status = "PromptTemplateStatus",
    shortname = "pt",
    category = "ai",
    derive = "PartialEq",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.modelEndpointRef.name"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplateSpec {
    /// The system prompt sent with every rendering (not templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65_536))]
    pub system_prompt: Option<String>,

    /// The user prompt, with placeholders such as `{{.Diff}}` for the declared variables.
    #[schemars(length(min = 1, max = 65_536))]
    pub template: String,

    /// The variables the template uses. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub variables: Vec<TemplateVariable>,

    /// The ModelEndpoint, in this namespace, that renderings are sent to.
    pub model_endpoint_ref: ModelEndpointRef,
}

/// One variable of a template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.required) && self.required && has(self.default))").message("a required variable cannot have a default: drop `default` or set `required: false`").field_path(".default"))]
pub struct TemplateVariable {
    /// The name used in the template as `{{.Name}}`: letters, digits and `_`, not starting with a digit.
    #[schemars(length(min = 1, max = 63), regex(pattern = VARIABLE_NAME_PATTERN))]
    pub name: String,

    /// The value's type; values are checked against it before rendering. Default `string`.
    #[serde(default, rename = "type")]
    pub type_: VariableType,

    /// Whether a value must be given on every render.
    #[serde(default)]
    pub required: bool,

    /// The value used when none is given (only for optional variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65_536))]
    pub default: Option<String>,

    /// What the variable is for, shown to people and tools that list templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The type of a template variable's value.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VariableType {
    /// Any text.
    #[default]
    String,
    /// A JSON number, or a string holding one.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// A reference to a ModelEndpoint in the template's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelEndpointRef {
    /// The ModelEndpoint's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// What the operator found when it checked the template.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplateStatus {
    /// `Valid`: the template compiles, its variables and defaults check out, its endpoint exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

//! The emulator's configuration: catalogue, identities, roles and trust, behaviour and faults.
//! Read from a YAML file (`--config`), or the defaults, which are enough for a local demo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The AWS account every emulated ARN belongs to.
pub const ACCOUNT_ID: &str = "123456789012";
/// The static test credentials of the default config (AWS's documented example key pair).
pub const TEST_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The secret of [`TEST_ACCESS_KEY_ID`].
pub const TEST_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The role of the default config, the one the seed README's `ModelEndpoint` names.
/// The default user's Bedrock API key (the `ABSK` prefix of Bedrock's long-term keys).
pub const TEST_API_KEY: &str = "ABSKZW11bGF0b3ItYWRtaW4tYXBpLWtleQ==";
pub const TEST_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/bedrock-invoker";

/// Everything the emulator can be told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Models served, per region. Default: every model of the built-in price table in
    /// `us-east-1`, `us-west-2`, `eu-central-1`, `eu-west-1`, `ap-northeast-1`, `ap-southeast-2`.
    #[serde(default = "default_catalogue")]
    pub catalogue: BTreeMap<String, Vec<CatalogueModel>>,
    /// Long-term credentials (IAM users) accepted for signing and `AssumeRole`.
    #[serde(default = "default_users")]
    pub users: Vec<User>,
    /// Roles that `AssumeRole` / `AssumeRoleWithWebIdentity` can issue credentials for.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// The OIDC provider whose tokens `AssumeRoleWithWebIdentity` accepts (the cluster's).
    #[serde(default)]
    pub oidc: Option<OidcProvider>,
    /// EKS Pod Identity: the service accounts associated with a role, whose pods get that role's
    /// credentials from the agent (`GET /v1/credentials`). Tokens are checked against `oidc`.
    #[serde(default)]
    pub pod_identity: Option<PodIdentity>,
    /// Lifetime of issued temporary credentials, in seconds (AWS: 900 to 43200; shorter allowed here).
    #[serde(default = "default_credential_lifetime")]
    pub credential_lifetime_seconds: u64,
    /// Largest clock skew accepted in a signature, in seconds (AWS: 300).
    #[serde(default = "default_max_skew")]
    pub max_clock_skew_seconds: u64,
    /// What the model answers.
    #[serde(default)]
    pub output: OutputMode,
    /// Simulated model latency.
    #[serde(default)]
    pub latency: Latency,
    /// Injected faults.
    #[serde(default)]
    pub faults: Faults,
    /// How many `GetGuardrail` calls report a transitional status (`CREATING`, `UPDATING`,
    /// `VERSIONING`) after a change before `READY`, so clients' polling is exercised.
    #[serde(default = "default_transition_gets")]
    pub guardrail_transition_gets: u32,
    /// How many requests the admin API keeps for `GET /_emulator/requests`.
    #[serde(default = "default_request_log")]
    pub request_log_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            catalogue: default_catalogue(),
            users: default_users(),
            roles: default_roles(),
            oidc: None,
            pod_identity: None,
            credential_lifetime_seconds: default_credential_lifetime(),
            max_clock_skew_seconds: default_max_skew(),
            output: OutputMode::default(),
            latency: Latency::default(),
            faults: Faults::default(),
            guardrail_transition_gets: default_transition_gets(),
            request_log_size: default_request_log(),
        }
    }
}

/// A model in a region's catalogue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogueModel {
    pub model_id: String,
    #[serde(default)]
    pub provider_name: String,
    #[serde(default)]
    pub model_name: String,
    /// How the model may be invoked: `ON_DEMAND` (by its id) and `INFERENCE_PROFILE` (through a
    /// cross-region profile). Default: what Bedrock publishes for it ([`default_inference_types`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_types_supported: Option<Vec<String>>,
    /// The system-defined profiles (`us`, `eu`, `apac`, `jp`, `au`, `global`, …) callable from this
    /// region. Default: [`default_profile_prefixes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_profiles: Option<Vec<String>>,
}

/// On-demand calls by the base id.
pub const ON_DEMAND: &str = "ON_DEMAND";
/// Calls through a cross-region inference profile.
pub const INFERENCE_PROFILE: &str = "INFERENCE_PROFILE";

/// Models Bedrock serves through inference profiles only: a call by the bare id is refused with
/// "Invocation of model ID … with on-demand throughput isn’t supported" (Bedrock user guide,
/// "Supported Regions and models for inference profiles"; users' reports such as Laisky/one-api#245
/// for Claude Haiku 4.5 and Sonnet 4.5, and LibreChat, Flowise, aider issues for Claude 3.7 and 4).
const PROFILE_ONLY: &[&str] = &[
    "anthropic.claude-3-7-",
    "anthropic.claude-sonnet-4",
    "anthropic.claude-opus-4",
    "anthropic.claude-haiku-4",
    "anthropic.claude-sonnet-5",
    "anthropic.claude-fable-",
    "amazon.nova-premier-",
    "amazon.nova-2-",
    "meta.llama3-2-",
    "meta.llama3-3-",
    "meta.llama4-",
    "deepseek.r1-",
];

/// Models that also have `global.` profiles and the narrower `jp.`/`au.`/`ca.` geographies: Claude
/// Sonnet 4.5, Haiku 4.5, Opus 4.5 and later, and Nova 2 (the models AWS prices 10% lower through
/// global cross-region inference).
const GLOBAL_PROFILES: &[&str] = &[
    "anthropic.claude-sonnet-4-5",
    "anthropic.claude-sonnet-4-6",
    "anthropic.claude-sonnet-5",
    "anthropic.claude-haiku-4-5",
    "anthropic.claude-opus-4-5",
    "anthropic.claude-opus-4-6",
    "anthropic.claude-opus-4-7",
    "anthropic.claude-opus-4-8",
    "anthropic.claude-fable-",
    "amazon.nova-2-",
];

/// Model families Bedrock offers both ways (on demand and through `us.`/`eu.`/`apac.` profiles).
const BOTH_WAYS: &[&str] = &["anthropic.", "amazon.nova-", "meta.llama3-1-"];

/// What Bedrock publishes as `inferenceTypesSupported` for a model of the built-in catalogue.
pub fn default_inference_types(model_id: &str) -> Vec<String> {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| model_id.starts_with(p));
    let types: &[&str] = if starts(PROFILE_ONLY) {
        &[INFERENCE_PROFILE]
    } else if starts(BOTH_WAYS) {
        &[ON_DEMAND, INFERENCE_PROFILE]
    } else {
        &[ON_DEMAND]
    };
    types.iter().map(|t| (*t).to_owned()).collect()
}

/// The profiles of a model that supports them, as seen from `region`: the region's geographies
/// (`jp.`, `au.`, `ca.` only for the newest models) and `global.` for the newest models.
pub fn default_profile_prefixes(model_id: &str, region: &str) -> Vec<String> {
    let newest = GLOBAL_PROFILES.iter().any(|p| model_id.starts_with(p));
    let mut prefixes: Vec<String> = k8s_ai_api::model_id::geographic_prefixes(region)
        .iter()
        .filter(|p| newest || !matches!(**p, "jp" | "au" | "ca"))
        .map(|p| (*p).to_owned())
        .collect();
    if newest && !region.starts_with("us-gov-") {
        prefixes.push(k8s_ai_api::model_id::GLOBAL_PREFIX.to_owned());
    }
    prefixes
}

impl CatalogueModel {
    /// A model of the built-in catalogue, with Bedrock's defaults.
    pub fn builtin(model_id: &str, provider: &str) -> Self {
        CatalogueModel {
            model_id: model_id.to_owned(),
            provider_name: provider.to_owned(),
            model_name: model_id.to_owned(),
            inference_types_supported: None,
            inference_profiles: None,
        }
    }

    /// `inferenceTypesSupported`, configured or default.
    pub fn inference_types(&self) -> Vec<String> {
        self.inference_types_supported
            .clone()
            .unwrap_or_else(|| default_inference_types(&self.model_id))
    }

    /// Whether the bare model id may be called on demand.
    pub fn on_demand(&self) -> bool {
        self.inference_types().iter().any(|t| t == ON_DEMAND)
    }

    /// The profile prefixes callable from `region` (none when the model has no profiles).
    pub fn profile_prefixes(&self, region: &str) -> Vec<String> {
        if !self
            .inference_types()
            .iter()
            .any(|t| t == INFERENCE_PROFILE)
        {
            return Vec::new();
        }
        self.inference_profiles
            .clone()
            .unwrap_or_else(|| default_profile_prefixes(&self.model_id, region))
    }
}

/// An IAM user with long-term credentials.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Models this user may invoke directly (`*` wildcards allowed).
    #[serde(default = "all")]
    pub allowed_models: Vec<String>,
    /// A Bedrock API key of this user (`Authorization: Bearer <key>`, Bedrock Runtime only),
    /// valid in `apiKeyRegion`; Bedrock derives a key's region from the endpoint's host.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default = "default_api_key_region")]
    pub api_key_region: String,
}

fn default_api_key_region() -> String {
    "us-east-1".to_owned()
}

/// An IAM role: who may assume it (trust policy) and what it may invoke (permission policy).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Role {
    pub arn: String,
    /// Web identity subjects trusted through the OIDC provider, e.g.
    /// `system:serviceaccount:ai-workloads:reviewer` (`*` wildcards allowed).
    #[serde(default)]
    pub trusted_subjects: Vec<String>,
    /// Principal ARNs (users or assumed roles) that may call `AssumeRole` (`*` wildcards allowed),
    /// and service principals: `pods.eks.amazonaws.com` lets EKS Pod Identity issue the role.
    #[serde(default)]
    pub trusted_principals: Vec<String>,
    /// Model ids this role may invoke (`*` wildcards allowed). Inference profile prefixes are
    /// stripped before matching.
    #[serde(default = "all")]
    pub allowed_models: Vec<String>,
}

/// The cluster's OIDC issuer, as an IAM OIDC identity provider sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcProvider {
    /// The `iss` every token must carry, e.g. `https://127.0.0.1:6443`.
    pub issuer: String,
    /// Where the signing keys are fetched (default `<issuer>/openid/v1/jwks`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM file of the CA that signs the issuer's serving certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The audience tokens must be issued for.
    #[serde(default = "default_audience")]
    pub audience: String,
}

/// EKS Pod Identity associations, as `aws eks create-pod-identity-association` makes them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodIdentity {
    /// The audience of the projected token the agent is given (EKS: `pods.eks.amazonaws.com`).
    #[serde(default = "default_pod_identity_audience")]
    pub audience: String,
    pub associations: Vec<PodIdentityAssociation>,
}

fn default_pod_identity_audience() -> String {
    "pods.eks.amazonaws.com".into()
}

/// One association: pods of this service account get this role.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodIdentityAssociation {
    pub namespace: String,
    pub service_account: String,
    pub role_arn: String,
}

/// What the model says.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "mode", deny_unknown_fields)]
pub enum OutputMode {
    /// The last user message, repeated back.
    #[default]
    Echo,
    /// Always the same text.
    Fixed { text: String },
    /// `tokens` tokens of filler (`tok ` repeated: one token each by the counting rule).
    Filler { tokens: u32 },
}

/// Simulated model latency: `fixedMs` before the first token, `perOutputTokenMs` for each one.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Latency {
    #[serde(default)]
    pub fixed_ms: u64,
    #[serde(default)]
    pub per_output_token_ms: u64,
}

/// Faults, applied to Bedrock runtime calls (`Converse`, `ConverseStream`, `InvokeModel`)
/// unless said otherwise. Fractions are deterministic: request `n` is hit when
/// `frac(n × golden ratio) < fraction`, so a run is reproducible.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Every Nth runtime call answers 429 ThrottlingException.
    #[serde(default)]
    pub throttle_every_n: Option<u64>,
    /// This fraction of runtime calls answers 429 ThrottlingException.
    #[serde(default)]
    pub throttle_fraction: Option<f64>,
    /// Every Nth runtime call answers with `errorStatus` (default 500 InternalServerException).
    #[serde(default)]
    pub error_every_n: Option<u64>,
    /// The status of injected errors: 500, 503 (ServiceUnavailableException) or 408 (ModelTimeoutException).
    #[serde(default)]
    pub error_status: Option<u16>,
    /// Streams stop sending (connection kept open) after this many output tokens.
    #[serde(default)]
    pub stream_stall_after_tokens: Option<u32>,
    /// Streams drop the connection after this many output tokens.
    #[serde(default)]
    pub stream_drop_after_tokens: Option<u32>,
    /// Streams end with an in-stream `modelStreamErrorException` after this many output tokens.
    #[serde(default)]
    pub stream_error_after_tokens: Option<u32>,
    /// STS answers after this delay.
    #[serde(default)]
    pub sts_delay_ms: Option<u64>,
    /// STS answers 503 ServiceUnavailable.
    #[serde(default)]
    pub sts_unavailable: bool,
}

fn all() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_audience() -> String {
    "sts.amazonaws.com".to_owned()
}

fn default_credential_lifetime() -> u64 {
    3600
}

fn default_max_skew() -> u64 {
    300
}

fn default_transition_gets() -> u32 {
    1
}

fn default_request_log() -> usize {
    10_000
}

/// Regions served by default.
pub const DEFAULT_REGIONS: [&str; 6] = [
    "us-east-1",
    "us-west-2",
    "eu-central-1",
    "eu-west-1",
    "ap-northeast-1",
    "ap-southeast-2",
];

fn default_catalogue() -> BTreeMap<String, Vec<CatalogueModel>> {
    let models: Vec<CatalogueModel> = k8s_ai_api::pricing::builtin_models()
        .map(|(model_id, provider)| CatalogueModel::builtin(model_id, provider))
        .collect();
    DEFAULT_REGIONS
        .iter()
        .map(|r| ((*r).to_owned(), models.clone()))
        .collect()
}

fn default_users() -> Vec<User> {
    vec![User {
        name: "emulator-admin".to_owned(),
        access_key_id: TEST_ACCESS_KEY_ID.to_owned(),
        secret_access_key: TEST_SECRET_ACCESS_KEY.to_owned(),
        allowed_models: all(),
        api_key: Some(TEST_API_KEY.to_owned()),
        api_key_region: default_api_key_region(),
    }]
}

fn default_roles() -> Vec<Role> {
    vec![Role {
        arn: TEST_ROLE_ARN.to_owned(),
        trusted_subjects: vec!["system:serviceaccount:*:*".to_owned()],
        trusted_principals: all(),
        allowed_models: all(),
    }]
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match(
            "system:serviceaccount:*:*",
            "system:serviceaccount:ns:sa"
        ));
        assert!(glob_match("anthropic.*", "anthropic.claude-3"));
        assert!(!glob_match("anthropic.*", "amazon.nova"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn a_config_file_parses() {
        let yaml = r"
roles:
- arn: arn:aws:iam::123456789012:role/r
  trustedSubjects: [system:serviceaccount:ns:sa]
  allowedModels: [anthropic.*]
output: {mode: filler, tokens: 200}
faults: {throttleEveryN: 2}
credentialLifetimeSeconds: 5
";
        let config: Config = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.output, OutputMode::Filler { tokens: 200 });
        assert_eq!(config.faults.throttle_every_n, Some(2));
        assert_eq!(config.roles[0].allowed_models, ["anthropic.*"]);
        assert!(
            !config.catalogue.is_empty(),
            "the default catalogue applies"
        );
    }

    #[test]
    fn newer_models_are_served_through_profiles_only() {
        let haiku =
            CatalogueModel::builtin("anthropic.claude-haiku-4-5-20251001-v1:0", "Anthropic");
        assert!(!haiku.on_demand());
        assert_eq!(haiku.profile_prefixes("us-east-1"), ["us", "global"]);
        assert_eq!(
            haiku.profile_prefixes("ap-northeast-1"),
            ["jp", "apac", "global"]
        );
        let old = CatalogueModel::builtin("anthropic.claude-3-haiku-20240307-v1:0", "Anthropic");
        assert!(old.on_demand());
        assert_eq!(old.profile_prefixes("ap-northeast-1"), ["apac"]);
        let mistral = CatalogueModel::builtin("mistral.mistral-7b-instruct-v0:2", "Mistral AI");
        assert!(mistral.on_demand());
        assert!(mistral.profile_prefixes("us-east-1").is_empty());
    }
}

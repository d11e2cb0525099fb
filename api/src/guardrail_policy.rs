//! `GuardrailPolicy`: content rules synced to a Bedrock guardrail and applied to every call of the
//! endpoints that reference it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bedrock's default message when input is blocked.
pub const DEFAULT_BLOCKED_INPUT_MESSAGE: &str =
    "Sorry, this request was blocked by the content policy.";
/// Bedrock's default message when output is blocked.
pub const DEFAULT_BLOCKED_OUTPUT_MESSAGE: &str =
    "Sorry, the answer was blocked by the content policy.";

/// Content moderation rules (sensitive information, content filters, denied topics, words and
/// patterns) that the operator keeps in sync with an AWS Bedrock guardrail. ModelEndpoints refer
/// to a policy by name in `guardrailPolicyRef`.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ai.kernelpanic09.io",
    version = "v1alpha1",
    kind = "GuardrailPolicy",
    doc = "Content moderation rules kept in sync with an AWS Bedrock guardrail and applied to every call of the ModelEndpoints that reference them.",
    plural = "guardrailpolicies",
    status = "GuardrailPolicyStatus",
    shortname = "gp",
    category = "ai",
    derive = "PartialEq",
    printcolumn(
        name = "Guardrail",
        type_ = "string",
        json_path = ".status.guardrailId"
    ),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailPolicySpec {
    /// What the policy is for; copied to the Bedrock guardrail's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,

    /// Personally identifiable information to block or anonymise, and custom patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive_information_policy: Option<SensitiveInformationPolicy>,

    /// Harmful-content filters and their strengths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_policy: Option<ContentPolicy>,

    /// Topics the model must not discuss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_policy: Option<TopicPolicy>,

    /// Words and managed word lists to block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_policy: Option<WordPolicy>,

    /// The answer given instead when a request is blocked.
    #[serde(default = "default_blocked_input")]
    #[schemars(length(min = 1, max = 500))]
    pub blocked_input_messaging: String,

    /// The answer given instead when a model's output is blocked.
    #[serde(default = "default_blocked_output")]
    #[schemars(length(min = 1, max = 500))]
    pub blocked_outputs_messaging: String,
}

fn default_blocked_input() -> String {
    DEFAULT_BLOCKED_INPUT_MESSAGE.to_owned()
}

fn default_blocked_output() -> String {
    DEFAULT_BLOCKED_OUTPUT_MESSAGE.to_owned()
}

/// Sensitive information rules.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SensitiveInformationPolicy {
    /// PII entity types and what to do when one is found. One rule per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 31), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub pii_entities: Vec<PiiEntity>,

    /// Custom regular expressions to block or anonymise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub regexes: Vec<RegexRule>,
}

/// One PII entity rule.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PiiEntity {
    /// The PII entity type, one of the 31 Bedrock recognises, e.g. `EMAIL`, `AWS_ACCESS_KEY`.
    #[serde(rename = "type")]
    pub type_: PiiEntityType,
    /// `BLOCK` refuses the request or answer; `ANONYMIZE` replaces the match with its type name.
    pub action: PiiAction,
}

/// A custom pattern rule.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RegexRule {
    /// A name for the pattern, shown in place of anonymised matches.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// What the pattern finds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// The regular expression (Rust `regex` syntax: linear time, no look-around or backreferences).
    /// The API server refuses one that does not compile as RE2, the same family.
    #[schemars(
        length(min = 1, max = 500),
        // Compiling the pattern is the check: an invalid one makes the rule fail with the parse error.
        extend("x-kubernetes-validations" = [{
            "rule": "\"\".matches(self) || !\"\".matches(self)",
            "message": "not a valid regular expression (RE2 syntax: no look-around or backreferences)"
        }])
    )]
    pub pattern: String,
    /// `BLOCK` or `ANONYMIZE`.
    pub action: PiiAction,
}

/// What to do with sensitive information.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiAction {
    Block,
    Anonymize,
}

/// The PII entity types Bedrock Guardrails recognise.
#[allow(missing_docs)]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiEntityType {
    Address,
    Age,
    AwsAccessKey,
    AwsSecretKey,
    CaHealthNumber,
    CaSocialInsuranceNumber,
    CreditDebitCardCvv,
    CreditDebitCardExpiry,
    CreditDebitCardNumber,
    DriverId,
    Email,
    InternationalBankAccountNumber,
    IpAddress,
    LicensePlate,
    MacAddress,
    Name,
    Password,
    Phone,
    Pin,
    SwiftCode,
    UkNationalHealthServiceNumber,
    UkNationalInsuranceNumber,
    UkUniqueTaxpayerReferenceNumber,
    Url,
    Username,
    UsBankAccountNumber,
    UsBankRoutingNumber,
    UsIndividualTaxIdentificationNumber,
    UsPassportNumber,
    UsSocialSecurityNumber,
    VehicleIdentificationNumber,
}

/// Harmful-content filters.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ContentPolicy {
    /// One filter per content type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub filters: Vec<ContentFilter>,
}

/// A filter for one type of harmful content.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContentFilter {
    /// The content type: `SEXUAL`, `VIOLENCE`, `HATE`, `INSULTS`, `MISCONDUCT` or `PROMPT_ATTACK`.
    #[serde(rename = "type")]
    pub type_: ContentFilterType,
    /// How strictly requests are filtered.
    pub input_strength: FilterStrength,
    /// How strictly answers are filtered. Bedrock does not filter answers for `PROMPT_ATTACK`;
    /// the operator sends `NONE` for it whatever is written here.
    pub output_strength: FilterStrength,
}

/// Content types Bedrock can filter.
#[allow(missing_docs)]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContentFilterType {
    Sexual,
    Violence,
    Hate,
    Insults,
    Misconduct,
    PromptAttack,
}

/// Filter strength.
#[allow(missing_docs)]
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterStrength {
    None,
    Low,
    Medium,
    High,
}

/// Denied topics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TopicPolicy {
    /// Topics to deny. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 30), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<DeniedTopic>,
}

/// A topic the model must not discuss.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeniedTopic {
    /// A short name for the topic.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[0-9A-Za-z-_ !?.]+$"))]
    pub name: String,
    /// What the topic covers, in a sentence or two.
    #[schemars(length(min = 1, max = 200))]
    pub definition: String,
    /// Example phrases that belong to the topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5), inner(length(min = 1, max = 100)))]
    pub examples: Vec<String>,
}

/// Blocked words.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WordPolicy {
    /// Words or phrases to block (case-insensitive, whole words).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10_000))]
    pub words: Vec<BlockedWord>,
    /// Managed word lists to block; Bedrock offers `PROFANITY`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub managed_word_lists: Vec<ManagedWordList>,
}

/// A word or phrase to block.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BlockedWord {
    /// The word or phrase (at most three words).
    #[schemars(length(min = 1, max = 100))]
    pub text: String,
}

/// A managed word list.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ManagedWordList {
    /// The list: `PROFANITY`.
    #[serde(rename = "type")]
    pub type_: ManagedWordListType,
}

/// Managed word lists Bedrock offers.
#[allow(missing_docs)]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ManagedWordListType {
    Profanity,
}

/// The Bedrock guardrail this policy is synced to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailPolicyStatus {
    /// The Bedrock guardrail's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail_id: Option<String>,
    /// The Bedrock guardrail's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail_arn: Option<String>,
    /// The guardrail version calls use (`DRAFT` or a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `Synced`: the Bedrock guardrail matches this spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

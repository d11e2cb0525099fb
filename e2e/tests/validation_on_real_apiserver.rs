//! Invalid objects are refused by the API server itself (OpenAPI schema and CEL rules of the
//! CRDs), with a message that names the offending field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use e2e::Cluster;

const ENDPOINT: &str = r#"apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: NAME
  namespace: NS
spec:
  modelId: anthropic.claude-haiku-4-5-20251001-v1:0
  region: us-east-1
  irsaRoleArn: arn:aws:iam::123456789012:role/bedrock-invoker
  maxTokens: 4096
  costBudget:
    daily: "10.00"
    monthly: "200.00"
  rateLimit:
    requestsPerMinute: 60
"#;

const GUARDRAIL: &str = r"apiVersion: ai.kernelpanic09.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: NAME
spec:
  sensitiveInformationPolicy:
    piiEntities:
    - type: AWS_ACCESS_KEY
      action: BLOCK
  contentPolicy:
    filters:
    - type: PROMPT_ATTACK
      inputStrength: HIGH
      outputStrength: HIGH
";

const TEMPLATE: &str = r#"apiVersion: ai.kernelpanic09.io/v1alpha1
kind: PromptTemplate
metadata:
  name: NAME
  namespace: NS
spec:
  template: "Review {{.Diff}}"
  variables:
  - name: Diff
    type: string
    required: true
  modelEndpointRef:
    name: claude-haiku
"#;

/// One invalid object: a valid base with one edit, and what the refusal must say.
struct Case {
    what: &'static str,
    base: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "modelId missing",
        base: ENDPOINT,
        from: "  modelId: anthropic.claude-haiku-4-5-20251001-v1:0\n",
        to: "",
        expect: &["spec.modelId", "Required value"],
    },
    Case {
        what: "modelId with spaces",
        base: ENDPOINT,
        from: "modelId: anthropic.claude-haiku-4-5-20251001-v1:0",
        to: "modelId: claude haiku",
        expect: &["spec.modelId"],
    },
    Case {
        what: "region not an AWS region",
        base: ENDPOINT,
        from: "region: us-east-1",
        to: "region: moon-base-one",
        expect: &["spec.region"],
    },
    Case {
        what: "irsaRoleArn not a role ARN",
        base: ENDPOINT,
        from: "arn:aws:iam::123456789012:role/bedrock-invoker",
        to: "arn:aws:iam::123:user/someone",
        expect: &["spec.irsaRoleArn"],
    },
    Case {
        what: "maxTokens zero",
        base: ENDPOINT,
        from: "maxTokens: 4096",
        to: "maxTokens: 0",
        expect: &["spec.maxTokens", "greater than or equal to 1"],
    },
    Case {
        what: "maxTokens above 131072",
        base: ENDPOINT,
        from: "maxTokens: 4096",
        to: "maxTokens: 131073",
        expect: &["spec.maxTokens", "less than or equal to 131072"],
    },
    Case {
        what: "negative daily budget",
        base: ENDPOINT,
        from: r#"daily: "10.00""#,
        to: r#"daily: "-1.00""#,
        expect: &["spec.costBudget.daily"],
    },
    Case {
        what: "budget with 7 decimals",
        base: ENDPOINT,
        from: r#"daily: "10.00""#,
        to: r#"daily: "0.0000001""#,
        expect: &["spec.costBudget.daily"],
    },
    Case {
        what: "budget not a number",
        base: ENDPOINT,
        from: r#"monthly: "200.00""#,
        to: r#"monthly: "lots""#,
        expect: &["spec.costBudget.monthly"],
    },
    Case {
        what: "budget as a YAML number",
        base: ENDPOINT,
        from: r#"monthly: "200.00""#,
        to: "monthly: 200",
        expect: &["spec.costBudget.monthly", "string"],
    },
    Case {
        what: "daily above monthly",
        base: ENDPOINT,
        from: r#"daily: "10.00""#,
        to: r#"daily: "300.00""#,
        expect: &[
            "spec.costBudget.daily",
            "must not exceed costBudget.monthly",
        ],
    },
    Case {
        what: "requestsPerMinute zero",
        base: ENDPOINT,
        from: "requestsPerMinute: 60",
        to: "requestsPerMinute: 0",
        expect: &["spec.rateLimit.requestsPerMinute"],
    },
    Case {
        what: "pricing not money",
        base: ENDPOINT,
        from: "  rateLimit:\n",
        to: "  pricing:\n    inputPerMillionTokens: \"1e3\"\n    outputPerMillionTokens: \"5\"\n  rateLimit:\n",
        expect: &["spec.pricing.inputPerMillionTokens"],
    },
    Case {
        what: "unknown PII entity type",
        base: GUARDRAIL,
        from: "type: AWS_ACCESS_KEY",
        to: "type: SOCIAL_SECURITY",
        expect: &[
            "spec.sensitiveInformationPolicy.piiEntities[0].type",
            "Unsupported value",
        ],
    },
    Case {
        what: "unknown PII action",
        base: GUARDRAIL,
        from: "action: BLOCK",
        to: "action: REDACT",
        expect: &[
            "spec.sensitiveInformationPolicy.piiEntities[0].action",
            "Unsupported value",
        ],
    },
    Case {
        what: "duplicate PII entity type",
        base: GUARDRAIL,
        from: "      action: BLOCK\n",
        to: "      action: BLOCK\n    - type: AWS_ACCESS_KEY\n      action: ANONYMIZE\n",
        expect: &[
            "spec.sensitiveInformationPolicy.piiEntities[1]",
            "Duplicate value",
        ],
    },
    Case {
        what: "unknown content filter type",
        base: GUARDRAIL,
        from: "type: PROMPT_ATTACK",
        to: "type: SPAM",
        expect: &["spec.contentPolicy.filters[0].type", "Unsupported value"],
    },
    Case {
        what: "unknown filter strength",
        base: GUARDRAIL,
        from: "inputStrength: HIGH",
        to: "inputStrength: EXTREME",
        expect: &[
            "spec.contentPolicy.filters[0].inputStrength",
            "Unsupported value",
        ],
    },
    Case {
        what: "duplicate variable names",
        base: TEMPLATE,
        from: "    required: true\n",
        to: "    required: true\n  - name: Diff\n    type: string\n",
        expect: &["spec.variables[1]", "Duplicate value"],
    },
    Case {
        what: "required variable with a default",
        base: TEMPLATE,
        from: "    required: true\n",
        to: "    required: true\n    default: none\n",
        expect: &[
            "spec.variables[0].default",
            "a required variable cannot have a default",
        ],
    },
    Case {
        what: "variable name not an identifier",
        base: TEMPLATE,
        from: "  - name: Diff",
        to: "  - name: 1-diff",
        expect: &["spec.variables[0].name"],
    },
    Case {
        what: "unknown variable type",
        base: TEMPLATE,
        from: "    type: string",
        to: "    type: date",
        expect: &["spec.variables[0].type", "Unsupported value"],
    },
    Case {
        what: "template missing",
        base: TEMPLATE,
        from: "  template: \"Review {{.Diff}}\"\n",
        to: "",
        expect: &["spec.template", "Required value"],
    },
    Case {
        what: "modelEndpointRef missing",
        base: TEMPLATE,
        from: "  modelEndpointRef:\n    name: claude-haiku\n",
        to: "",
        expect: &["spec.modelEndpointRef", "Required value"],
    },
    Case {
        what: "modelEndpointRef name not a DNS name",
        base: TEMPLATE,
        from: "name: claude-haiku",
        to: "name: Claude_Haiku",
        expect: &["spec.modelEndpointRef.name"],
    },
];

#[test]
fn invalid_objects_are_refused_with_the_field_named() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("invalid");
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        assert!(
            case.base.contains(case.from),
            "case {:?}: base lacks {:?}",
            case.what,
            case.from
        );
        let name = format!("invalid-{i}-{}", std::process::id());
        let valid = case.base.replace("NAME", &name).replace("NS", &ns);
        let invalid = valid.replacen(case.from, case.to, 1);
        let run = cluster.apply(&invalid);
        if run.success {
            failures.push(format!("{}: accepted", case.what));
            continue;
        }
        for expected in case.expect {
            if !run.stderr.contains(expected) {
                failures.push(format!(
                    "{}: refusal lacks {expected:?}: {}",
                    case.what,
                    run.stderr.trim()
                ));
            }
        }
    }
    assert!(CASES.len() >= 15);
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// The valid bases themselves are accepted, so each refusal above is down to its one edit.
#[test]
fn the_valid_bases_are_accepted() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("valid");
    for base in [ENDPOINT, GUARDRAIL, TEMPLATE] {
        let name = format!("valid-{}", std::process::id());
        let run = cluster.apply(&base.replace("NAME", &name).replace("NS", &ns));
        assert!(run.success, "{}", run.stderr);
    }
}

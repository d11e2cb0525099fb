//! The CRDs on a real kube-apiserver: installation, the seed README's objects, printer columns,
//! schema and CEL validation, and `kubectl explain`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use e2e::{Cluster, repo_root};
use serde_json::Value;

const SAMPLES: [&str; 3] = [
    "guardrailpolicy.yaml",
    "modelendpoint.yaml",
    "prompttemplate.yaml",
];

fn sample(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("manifests/samples").join(name)).unwrap()
}

#[test]
fn crds_install_and_become_established() {
    let cluster = Cluster::get();
    let out = cluster.kubectl_ok(&[
        "get",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=k8s-ai-operator",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let mut established: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|crd| {
            crd["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            })
        })
        .map(|crd| crd["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    established.sort();
    assert_eq!(
        established,
        [
            "guardrailpolicies.ai.kernelpanic09.io",
            "modelendpoints.ai.kernelpanic09.io",
            "modelusages.ai.kernelpanic09.io",
            "prompttemplates.ai.kernelpanic09.io"
        ]
    );
}

/// Every key and value of `expected` is in `actual` (the server may add defaults, never change ours).
fn assert_subset(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let child = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing from the stored object"));
                assert_subset(v, child, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: list length changed");
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_subset(ev, av, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{path} changed"),
    }
}

#[test]
fn seed_objects_apply_unchanged_and_read_back() {
    let cluster = Cluster::get();
    cluster.ensure_namespace("ai-workloads");
    for name in SAMPLES {
        let yaml = sample(name);
        let run = cluster.apply(&yaml);
        assert!(run.success, "{name} was refused: {}", run.stderr);
        let sent: Value = serde_yaml::from_str(&yaml).unwrap();
        let kind = sent["kind"].as_str().unwrap();
        let obj_name = sent["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", kind, obj_name, "-o", "json"];
        if let Some(ns) = sent["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        let stored: Value = serde_json::from_str(&cluster.kubectl_ok(&args)).unwrap();
        assert_subset(&sent["spec"], &stored["spec"], "spec");
    }
    // Defaults the API server fills in from the schema.
    let pt: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "pt",
        "code-review",
        "-n",
        "ai-workloads",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(pt["spec"]["variables"][1]["required"], false);
    let gp: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "gp", "pii-and-safety", "-o", "json"]))
            .unwrap();
    assert!(
        gp["spec"]["blockedInputMessaging"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

/// The samples are the seed README's heredocs, byte for byte (after the shell unescapes the backticks).
/// The seed README is vendored in e2e/seed: without it this test fails, it never skips.
#[test]
fn samples_are_the_seed_readmes_objects() {
    let path = repo_root().join("e2e/seed/README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: the seed README is our contract", path.display()));
    let heredocs: Vec<String> = readme
        .split("kubectl apply -f - <<EOF\n")
        .skip(1)
        .map(|rest| rest.split("\nEOF\n").next().unwrap().replace("\\`", "`") + "\n")
        .collect();
    assert_eq!(
        heredocs.len(),
        SAMPLES.len(),
        "the seed README has {} apply heredocs",
        heredocs.len()
    );
    for name in SAMPLES {
        let ours = sample(name);
        assert!(
            heredocs.contains(&ours),
            "manifests/samples/{name} differs from the seed README"
        );
    }
}

#[test]
fn get_modelendpoints_shows_the_seed_columns() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("columns");
    let yaml = sample("modelendpoint.yaml")
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"));
    assert!(cluster.apply(&yaml).success);
    cluster.kubectl_ok(&[
        "patch",
        "modelendpoint",
        "claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"available":true,"costThisMonth":"12.345678","invocationsThisMonth":42}}"#,
    ]);
    let out = cluster.kubectl_ok(&["get", "modelendpoints", "-n", &ns]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MODEL",
            "REGION",
            "AVAILABLE",
            "COST/MONTH",
            "INVOCATIONS",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..6],
        [
            "claude-haiku",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "us-east-1",
            "true",
            "12.345678",
            "42"
        ]
    );
}

#[test]
fn the_ai_category_lists_every_kind() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("category");
    let me = sample("modelendpoint.yaml")
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"));
    let pt = sample("prompttemplate.yaml")
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"));
    assert!(cluster.apply(&me).success && cluster.apply(&pt).success);
    let out = cluster.kubectl_ok(&["get", "ai", "-n", &ns, "-o", "name"]);
    assert!(
        out.contains("modelendpoint.ai.kernelpanic09.io/claude-haiku"),
        "{out}"
    );
    assert!(
        out.contains("prompttemplate.ai.kernelpanic09.io/code-review"),
        "{out}"
    );
    for short in ["me", "pt", "gp", "mu"] {
        cluster.kubectl_ok(&["get", short, "-n", &ns]);
    }
}

#[test]
fn kubectl_explain_documents_the_cost_budget() {
    let cluster = Cluster::get();
    let out = cluster.kubectl_ok(&["explain", "modelendpoint.spec.costBudget"]);
    for expected in [
        "daily",
        "monthly",
        "timeZone",
        "Most US dollars to spend per day",
        "IANA time zone",
    ] {
        assert!(
            out.contains(expected),
            "`kubectl explain` lacks {expected:?}:\n{out}"
        );
    }
}

//! A budget grant planned from the operator's cache is written only if the ledger is still what
//! the plan read (its `resourceVersion` a precondition). No operator runs in this file: one would
//! delete the pod-less ledger the test writes as its orphan.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use e2e::Cluster;

/// A budget grant planned on a ledger read before a sidecar's report (or an earlier grant) landed
/// is refused by the API server, not written over what the plan did not see: the patch carries
/// the version it was planned from.
#[test]
fn a_grant_planned_on_a_stale_ledger_is_refused() {
    use k8s_ai_api::{ModelUsage, Money, model_usage::BudgetGrant};
    use k8s_ai_operator::controllers::allocation::grant_patch;

    let cluster = Cluster::get();
    let ns = cluster.namespace("stale-grant");
    assert!(
        cluster
            .apply(&format!(
                "apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelUsage
metadata: {{ name: web-0.claude-haiku, namespace: {ns} }}
spec: {{ podName: web-0, podUid: 00000000-0000-0000-0000-000000000001, endpoint: claude-haiku }}
"
            ))
            .success
    );
    let read = || -> ModelUsage {
        serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "modelusage",
            "web-0.claude-haiku",
            "-n",
            &ns,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let planned_from = read();
    // The sidecar reports (its spend moves on) after the operator's cache was read.
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "web-0.claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"sequence":1,"day":{"period":"2026-12-06","cost":"0.40"}}}"#,
    ]);
    let grant = BudgetGrant {
        day: Some("2026-12-06".into()),
        daily: Money::new("0.50".parse().unwrap()),
        ..BudgetGrant::default()
    };
    let patch = |from: &ModelUsage| {
        cluster.kubectl(&[
            "patch",
            "modelusage",
            "web-0.claude-haiku",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &grant_patch(Some(from), &grant).to_string(),
        ])
    };
    let stale = patch(&planned_from);
    assert!(
        !stale.success,
        "a grant planned on a stale read was written"
    );
    assert!(stale.stderr.contains("modified"), "{}", stale.stderr);
    assert!(read().spec.budget_grant.is_none());
    // Planned again on what is there now, it is written.
    assert!(patch(&read()).success);
    assert_eq!(read().spec.budget_grant, Some(grant));
}

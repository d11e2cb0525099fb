//! A pod recreated under the same name (a StatefulSet's `web-0`) while the ledger of the earlier
//! one is still being deleted: the operator leaves that ledger to its fold, creates the new pod's
//! only once it is gone, and the endpoint counts the earlier pod's spend exactly once. The test
//! writes ledger status as a sidecar would; no garbage collector runs here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use e2e::{Cluster, Process, repo_root, wait_until};
use serde_json::{Value, json};

/// Holds the earlier ledger after its fold, as a slow deletion would: the fold's own finalizer is
/// released, this one keeps the object (with its deletion timestamp) until the test lets go.
const HOLD: &str = "test.kernelpanic09.io/hold";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_recreated_by_name_never_has_its_spend_counted_twice() {
    let cluster = Cluster::get();
    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("recreated");
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);
    for sample in ["guardrailpolicy.yaml", "modelendpoint.yaml"] {
        let yaml = std::fs::read_to_string(repo_root().join("manifests/samples").join(sample))
            .unwrap()
            .replace("namespace: ai-workloads", &format!("namespace: {ns}"))
            .replace("pii-and-safety", &format!("pii-{ns}"));
        assert!(cluster.apply(&yaml).success);
    }
    let lease_ns = cluster.namespace("recreated-operator");
    let start_operator = || {
        Process(
            Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
                .args(["run", "--leader-election=false", "--namespace", &lease_ns])
                .args(["--webhook-listen", "127.0.0.1:0"])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .args(["--webhook-configuration", "none"])
                .envs(e2e::test_platform_env(&cluster.kubeconfig, &emulator.url()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let operator = start_operator();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-0", "namespace": ns, "labels": { "ai.kernelpanic09.io/sidecar": "injected" }, "annotations": { "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku" } },
        "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
    })
    .to_string();
    let get = |kind: &str, name: &str| -> Option<Value> {
        let run = cluster.kubectl(&["get", kind, name, "-n", &ns, "-o", "json"]);
        run.success
            .then(|| serde_json::from_str(&run.stdout).unwrap())
    };
    let ledger = || get("modelusage", "web-0.claude-haiku");

    // The earlier web-0: its ledger, held by a second finalizer, and what its sidecar reported.
    assert!(cluster.apply(&pod).success);
    let earlier_uid = get("pod", "web-0").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the earlier pod's ledger", Duration::from_secs(30), || {
        ledger().is_some_and(|l| l["spec"]["podUid"] == earlier_uid.as_str())
    });
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "web-0.claude-haiku",
        "-n",
        &ns,
        "--type=json",
        "-p",
        &json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": HOLD }]).to_string(),
    ]);
    let now = k8s_openapi::jiff::Timestamp::now().to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
    let (day, month) = (
        now.date().to_string(),
        format!("{:04}-{:02}", now.date().year(), now.date().month()),
    );
    let period = |p: &str| json!({ "period": p, "invocations": 3, "inputTokens": 30, "outputTokens": 30, "cost": "0.0003" });
    let status = json!({ "status": { "day": period(&day), "month": period(&month), "lifetime": period(""), "sequence": 3, "closed": true } });
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "web-0.claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let endpoint_invocations = || {
        get("modelendpoint", "claude-haiku")
            .and_then(|e| e["status"]["invocationsThisMonth"].as_u64())
            .unwrap_or(0)
    };
    wait_until(
        "the endpoint to count the earlier pod's calls",
        Duration::from_secs(30),
        || endpoint_invocations() == 3,
    );

    // While the operator is away (a restart, a leader change), web-0 is deleted, its ledger's
    // deletion begins with its fold still to do, and web-0 is created again: a new pod of the
    // same name. The operator comes back to both at once.
    drop(operator);
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "web-0",
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
    ]);
    cluster.kubectl_ok(&[
        "delete",
        "modelusage",
        "web-0.claude-haiku",
        "-n",
        &ns,
        "--wait=false",
    ]);
    assert!(ledger().is_some_and(|l| l["metadata"]["deletionTimestamp"].is_string()));
    assert!(cluster.apply(&pod).success);
    let _operator = start_operator();
    let new_uid = get("pod", "web-0").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_uid, earlier_uid);
    wait_until("the earlier ledger's fold", Duration::from_secs(30), || {
        ledger().is_some_and(|l| {
            !l["metadata"]["finalizers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "ai.kernelpanic09.io/fold")
        })
    });
    // Several reconciles of the new pod pass (the operator rechecks a waiting pod every second):
    // the earlier ledger stays the earlier pod's, its counters are not handed to the new one.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let held = ledger().unwrap();
        assert_eq!(held["spec"]["podUid"], earlier_uid.as_str(), "{held}");
        assert_eq!(endpoint_invocations(), 3, "counted once while both exist");
    }

    // The deletion completes: the new pod gets a ledger of its own, empty, and the endpoint still
    // counts the earlier pod's three calls once.
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "web-0.claude-haiku",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    wait_until("the new pod's own ledger", Duration::from_secs(30), || {
        ledger().is_some_and(|l| l["spec"]["podUid"] == new_uid.as_str())
    });
    let fresh = ledger().unwrap();
    assert!(fresh["metadata"]["deletionTimestamp"].is_null(), "{fresh}");
    assert!(
        fresh["status"]["lifetime"].is_null(),
        "a new ledger starts empty: {fresh}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(endpoint_invocations(), 3);
}

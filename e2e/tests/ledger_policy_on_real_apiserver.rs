//! The ledger's ValidatingAdmissionPolicy (`manifests/ledger/`) on the real API server: with a
//! token bound to its pod, a sidecar may write only its own ModelUsage, and counters only grow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::time::{Duration, Instant};

use e2e::{Cluster, Run, repo_root};

/// Removes the cluster-wide policy when the test ends, so other tests' sidecars are not judged by it.
struct PolicyInstalled<'a>(&'a Cluster, String);

impl Drop for PolicyInstalled<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl(&["delete", "-f", &self.1, "--ignore-not-found"]);
    }
}

fn status(invocations: u64, cost: &str) -> String {
    format!(
        r#"{{"status":{{"lifetime":{{"period":"","invocations":{invocations},"inputTokens":{invocations},"outputTokens":{invocations},"cost":"{cost}"}}}}}}"#
    )
}

#[test]
fn a_pod_writes_only_its_own_ledger_and_counters_only_grow() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("ledger-policy");
    let policy = repo_root().join("manifests/ledger/validating-admission-policy.yaml");
    cluster.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
    let _installed = PolicyInstalled(cluster, policy.to_string_lossy().into_owned());
    let setup = format!(
        r"apiVersion: v1
kind: ServiceAccount
metadata: {{name: app, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ledger-writer, namespace: {ns}}}
rules:
- apiGroups: [ai.kernelpanic09.io]
  resources: [modelusages/status]
  verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ledger-writer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ledger-writer}}
subjects: [{{kind: ServiceAccount, name: app, namespace: {ns}}}]
"
    );
    assert!(cluster.apply(&setup).success);
    for pod in ["p1", "p2"] {
        let run = cluster.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec: {{serviceAccountName: app, containers: [{{name: app, image: app:1}}]}}\n"
        ));
        assert!(run.success, "{}", run.stderr);
        let uid = cluster.kubectl_ok(&[
            "get",
            "pod",
            pod,
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let run = cluster.apply(&format!(
            "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: {pod}.claude-haiku, namespace: {ns}}}\nspec: {{podName: {pod}, podUid: {uid}, endpoint: claude-haiku}}\n"
        ));
        assert!(run.success, "{}", run.stderr);
    }
    let token_of = |pod: Option<&str>| {
        let mut args = vec!["create", "token", "app", "-n", &ns];
        if let Some(pod) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        cluster.kubectl_ok(&args).trim().to_owned()
    };
    let as_pod = |token: &str, ledger: &str, body: &str| -> Run {
        let auth = format!("--token={token}");
        cluster.kubectl(&[
            &auth,
            "--user=",
            "patch",
            "modelusage",
            ledger,
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            body,
        ])
    };
    let p1 = token_of(Some("p1"));

    // Policies take effect asynchronously after creation: retry the first write until it is judged.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = as_pod(&p1, "p2.claude-haiku", &status(1, "0.000001"));
        if !run.success && run.stderr.contains("only its own ModelUsage") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy never refused a write to another pod's ledger: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let run = as_pod(&p1, "p1.claude-haiku", &status(5, "0.000500"));
    assert!(run.success, "a pod writes its own ledger: {}", run.stderr);
    let run = as_pod(&p1, "p1.claude-haiku", &status(6, "0.000600"));
    assert!(run.success, "counters grow: {}", run.stderr);
    let run = as_pod(&p1, "p1.claude-haiku", &status(3, "0.000300"));
    assert!(
        !run.success && run.stderr.contains("only grow"),
        "a decrease is refused: {}",
        run.stderr
    );
    let run = as_pod(&p1, "p1.claude-haiku", &status(7, "0.000100"));
    assert!(
        !run.success && run.stderr.contains("only grow"),
        "a lower cost is refused (exact decimals): {}",
        run.stderr
    );
    // The same name, another pod: a ledger left by an earlier p1 (a StatefulSet's pod recreated
    // while its ledger is folded) is not the new p1's to write.
    let run = cluster.apply(&format!(
        "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: p1.earlier, namespace: {ns}}}\nspec: {{podName: p1, podUid: 00000000-0000-0000-0000-00000000e1d0, endpoint: earlier}}\n"
    ));
    assert!(run.success, "{}", run.stderr);
    let run = as_pod(&p1, "p1.earlier", &status(1, "0.000001"));
    assert!(
        !run.success && run.stderr.contains("token's pod UID must be spec.podUid"),
        "a ledger of an earlier pod of the same name is refused: {}",
        run.stderr
    );
    let unbound = token_of(None);
    let run = as_pod(&unbound, "p1.claude-haiku", &status(8, "0.000800"));
    assert!(
        !run.success && run.stderr.contains("only its own ModelUsage"),
        "a token bound to no pod is refused: {}",
        run.stderr
    );
    // People and the operator are not limited by the policy (RBAC governs them).
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "p1.claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status(0, "0"),
    ]);
}

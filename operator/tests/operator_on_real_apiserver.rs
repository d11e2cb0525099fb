//! Two replicas of `k8s-ai-operator run` on the real API server, as in production: both serve the
//! webhook with the self-managed certificate from one Secret, and keep the
//! MutatingWebhookConfiguration's caBundle in step while serving certificates and the CA itself
//! rotate (lifetimes of seconds here) — with admission requests flowing, none fails. Also:
//! metrics (`promtool check metrics`) and probes, sidecar RBAC checked with real service-account
//! tokens, and a graceful SIGTERM that hands the Lease over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom
#![allow(clippy::float_cmp)] // sums of small integer samples are exact

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{Cluster, Process, free_port, repo_root, wait_until};
use serde_json::{Value, json};

/// GET on a local port: (HTTP status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The sum of a metric's samples on a text-format page.
fn metric_sum(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_rotating_certificates_without_failing_an_admission() {
    let cluster = Cluster::get();
    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let op_ns = cluster.namespace("operator");
    let ns = cluster.namespace("apps");
    cluster.kubectl_ok(&["label", "namespace", &ns, &format!("e2e-rotation={ns}")]);
    // No controller-manager here makes the default service account: pods need one.
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);
    let roles = repo_root().join("manifests/rbac/sidecar-clusterroles.yaml");
    cluster.kubectl_ok(&["apply", "-f", roles.to_str().unwrap()]);

    // One configuration, one webhook per replica: every admission goes through both, so both
    // replicas' certificates must be trusted at every moment.
    let config_name = format!("e2e-rotation-{ns}");
    let (webhook_a, webhook_b) = (free_port(), free_port());
    let (metrics_a, metrics_b) = (free_port(), free_port());
    let webhook = |name: &str, port: u16| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": { "url": format!("https://127.0.0.1:{port}/mutate") },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "matchConditions": [{ "name": "opted-in", "expression": "has(object.metadata.annotations) && 'ai.kernelpanic09.io/inject' in object.metadata.annotations && object.metadata.annotations['ai.kernelpanic09.io/inject'] == 'true'" }],
            "namespaceSelector": { "matchLabels": { "e2e-rotation": ns } },
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced" }],
        })
    };
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": config_name },
        "webhooks": [webhook("a.inject.ai.kernelpanic09.io", webhook_a), webhook("b.inject.ai.kernelpanic09.io", webhook_b)],
    });
    let run = cluster.apply(&config.to_string());
    assert!(run.success, "{}", run.stderr);

    let replica = |identity: &str, webhook_port: u16, metrics_port: u16| {
        Process(
            Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
                .args(["run", "--namespace", &op_ns, "--identity", identity])
                .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
                .args([
                    "--webhook-configuration",
                    &config_name,
                    "--cert-extra-names",
                    "127.0.0.1",
                ])
                // Lifetimes of seconds: the CA is replaced every ~15 s, serving certificates every ~6 s.
                .args(["--cert-ca-lifetime", "40s", "--cert-ca-renew-before", "25s"])
                .args([
                    "--cert-serving-lifetime",
                    "12s",
                    "--cert-serving-renew-before",
                    "6s",
                ])
                .args(["--cert-check-interval", "1s", "--shutdown-grace", "1s"])
                .args([
                    "--sidecar-image",
                    "example.com/ai-sidecar:test",
                    "--log-format",
                    "text",
                ])
                .envs(e2e::test_platform_env(&cluster.kubeconfig, &emulator.url()))
                .stderr(Stdio::null())
                // Logs (on stdout) are kept for a failure's post-mortem.
                .stdout(
                    std::fs::File::create(
                        std::env::temp_dir().join(format!("{identity}-{ns}.log")),
                    )
                    .unwrap(),
                )
                .spawn()
                .unwrap(),
        )
    };
    let mut first = replica("replica-a", webhook_a, metrics_a);
    let mut second = replica("replica-b", webhook_b, metrics_b);
    for port in [metrics_a, metrics_b] {
        wait_until("/readyz", Duration::from_secs(30), || {
            http_get(port, "/readyz").0 == 200
        });
        assert_eq!(http_get(port, "/healthz").0, 200);
    }
    let ca_bundles = || -> Vec<String> {
        let got: Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            &config_name,
            "-o",
            "json",
        ]))
        .unwrap();
        got["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    wait_until("the caBundle", Duration::from_secs(20), || {
        ca_bundles().iter().all(|b| !b.is_empty())
    });
    let secret_field = |field: &str| {
        cluster.kubectl_ok(&[
            "get",
            "secret",
            "k8s-ai-operator-webhook-tls",
            "-n",
            &op_ns,
            "-o",
            &format!("jsonpath={{.data.{}}}", field.replace('.', "\\.")),
        ])
    };

    // Admission requests for 40 s (server-side dry runs: admitted and mutated, not stored),
    // while certificates rotate underneath.
    let pod = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "annotations": { "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
        })
        .to_string()
    };
    // The API server picks up a new configuration asynchronously: wait for the first success.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = cluster.kubectl_with_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&pod("warm-up")),
        );
        if run.success && run.stdout.contains("ai-sidecar") {
            break;
        }
        assert!(Instant::now() < deadline, "no injection: {}", run.stderr);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mut admitted, mut failures) = (0_u32, Vec::new());
    let (mut cas, mut serving) = (BTreeSet::new(), BTreeSet::new());
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        let run = cluster.kubectl_with_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&pod(&format!("p{admitted}"))),
        );
        if run.success && run.stdout.contains("\"ai-sidecar\"") {
            admitted += 1;
        } else {
            failures.push(format!("{}{}", run.stdout, run.stderr));
        }
        cas.insert(secret_field("ca.crt"));
        serving.insert(secret_field("tls.crt"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed during rotation: {:?}",
        failures.len(),
        admitted as usize + failures.len(),
        failures.first()
    );
    assert!(admitted >= 50, "only {admitted} admissions");
    assert!(
        cas.len() >= 2,
        "the CA was replaced at least once ({} seen)",
        cas.len()
    );
    assert!(
        serving.len() >= 4,
        "serving certificates rotated ({} seen)",
        serving.len()
    );

    // Metrics: valid exposition, rotations counted, admissions counted, one leader.
    let (a, b) = (
        http_get(metrics_a, "/metrics").1,
        http_get(metrics_b, "/metrics").1,
    );
    for page in [&a, &b] {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), page.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let both = |prefix: &str| metric_sum(&a, prefix) + metric_sum(&b, prefix);
    assert!(
        both("k8s_ai_operator_webhook_certificate_rotations_total{step=\"switched_ca\"}") >= 1.0,
        "{a}"
    );
    // The first webhook injects; the second sees the marker and leaves the pod alone.
    for outcome in ["injected", "skipped"] {
        let count = both(&format!(
            "k8s_ai_operator_webhook_admissions_total{{outcome=\"{outcome}\"}}"
        ));
        assert!(count >= f64::from(admitted), "{outcome}: {count}\n{a}\n{b}");
    }
    assert!(
        metric_sum(
            &a,
            "k8s_ai_operator_webhook_admission_duration_seconds_count"
        ) > 0.0
    );
    assert_eq!(both("k8s_ai_operator_leader "), 1.0, "exactly one leader");
    assert!(
        both("k8s_ai_operator_reconciliations_total{controller=\"SidecarRBAC\"}") >= 1.0,
        "{a}\n{b}"
    );

    // Sidecar RBAC, with real tokens: the service account of an injected pod can do exactly what
    // a sidecar needs, in its own namespace; another account cannot; and it ends with the pod.
    cluster.kubectl_ok(&["create", "serviceaccount", "app", "-n", &ns]);
    cluster.kubectl_ok(&["create", "serviceaccount", "other", "-n", &ns]);
    let injected = serde_json::from_str::<Value>(&pod("p-rbac")).unwrap();
    let mut injected = injected;
    injected["spec"]["serviceAccountName"] = json!("app");
    let run = cluster.apply(&injected.to_string());
    assert!(run.success, "{}", run.stderr);
    let can = |account: &str, args: &[&str]| -> bool {
        let token = cluster.kubectl_ok(&["create", "token", account, "-n", &ns]);
        let auth = format!("--token={}", token.trim());
        let mut full = vec![auth.as_str(), "--user=", "auth", "can-i"];
        full.extend_from_slice(args);
        cluster.kubectl(&full).stdout.trim() == "yes"
    };
    wait_until("the sidecar RoleBinding", Duration::from_secs(30), || {
        can("app", &["list", "modelendpoints", "-n", &ns])
    });
    for (args, allowed) in [
        (vec!["watch", "modelendpoints", "-n", &ns], true),
        (vec!["list", "prompttemplates", "-n", &ns], true),
        (
            vec!["patch", "modelusages", "--subresource=status", "-n", &ns],
            true,
        ),
        (vec!["list", "guardrailpolicies"], true),
        (vec!["delete", "modelusages", "-n", &ns], false),
        (vec!["patch", "modelendpoints", "-n", &ns], false),
        (vec!["get", "secrets", "-n", &ns], false),
        (vec!["list", "modelendpoints", "-n", &op_ns], false),
    ] {
        assert_eq!(can("app", &args), allowed, "app: {args:?}");
    }
    assert!(
        !can("other", &["list", "modelendpoints", "-n", &ns]),
        "an account with no injected pod"
    );
    assert!(!can("other", &["list", "guardrailpolicies"]));
    cluster.kubectl_ok(&["delete", "pod", "p-rbac", "-n", &ns, "--wait=true"]);
    wait_until(
        "the RoleBinding to go with the last pod",
        Duration::from_secs(30),
        || !can("app", &["list", "modelendpoints", "-n", &ns]),
    );
    assert!(!can("app", &["list", "guardrailpolicies"]));

    // SIGTERM on the leader: it releases the Lease and exits cleanly; the other replica leads.
    let holder = || {
        cluster.kubectl_ok(&[
            "get",
            "lease",
            "k8s-ai-operator",
            "-n",
            &op_ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let (leader, follower, follower_metrics) = match holder().as_str() {
        "replica-a" => (&mut first, "replica-b", metrics_b),
        "replica-b" => (&mut second, "replica-a", metrics_a),
        other => panic!("unexpected Lease holder {other:?}"),
    };
    Command::new("kill")
        .args(["-TERM", &leader.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = leader.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
    wait_until("the other replica to lead", Duration::from_secs(30), || {
        metric_sum(
            &http_get(follower_metrics, "/metrics").1,
            "k8s_ai_operator_leader ",
        ) == 1.0
    });
    assert_eq!(holder(), follower);

    cluster.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config_name]);
}

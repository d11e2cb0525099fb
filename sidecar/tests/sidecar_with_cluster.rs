//! The sidecar with the real API server: IRSA with tokens from TokenRequest (refresh, rotation,
//! STS outage and recovery), and its configuration watched from the cluster with the pod's own
//! service account.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // each test is one scenario, read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::*;
use e2e::{
    Cluster,
    emulator::config::{Config, OidcProvider, Role},
};

fn cluster_state() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(e2e::repo_root().join("e2e/.run/cluster.json")).unwrap(),
    )
    .unwrap()
}

/// A service account `app` in a new namespace, a function minting its tokens for STS, and an
/// emulator config that trusts it for the seed's role through the cluster's OIDC issuer.
fn irsa_tenant<'c>(
    cluster: &'c Cluster,
    prefix: &str,
) -> (String, impl Fn() -> String + 'c, Config) {
    let ns = cluster.namespace(prefix);
    cluster.kubectl_ok(&["create", "serviceaccount", "app", "-n", &ns]);
    let token_ns = ns.clone();
    let token = move || {
        cluster.kubectl_ok(&[
            "create",
            "token",
            "app",
            "-n",
            &token_ns,
            "--audience",
            "sts.amazonaws.com",
        ])
    };
    let state = cluster_state();
    let config = Config {
        oidc: Some(OidcProvider {
            issuer: state["issuer"].as_str().unwrap().into(),
            jwks_url: None,
            ca_file: Some(state["caFile"].as_str().unwrap().into()),
            audience: "sts.amazonaws.com".into(),
        }),
        roles: vec![Role {
            arn: "arn:aws:iam::123456789012:role/bedrock-invoker".into(),
            trusted_subjects: vec![format!("system:serviceaccount:{ns}:app")],
            trusted_principals: vec![],
            allowed_models: vec!["*".into()],
        }],
        ..Config::default()
    };
    (ns, token, config)
}

/// The STS web-identity exchanges the emulator answered: (successes, failures).
fn sts_exchanges(emu: &e2e::emulator::Running) -> (usize, usize) {
    let calls: Vec<_> = emu
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == "AssumeRoleWithWebIdentity")
        .collect();
    let ok = calls.iter().filter(|r| r.error.is_none()).count();
    (ok, calls.len() - ok)
}

#[tokio::test]
async fn irsa_credentials_refresh_rotate_and_recover() {
    let cluster = Cluster::get();
    let (ns, token, config) = irsa_tenant(cluster, "sidecar-irsa");
    let config = Config {
        credential_lifetime_seconds: 3,
        ..config
    };
    let emu = emulator(config).await;
    let dir = std::env::temp_dir().join(format!("irsa-{}-{}", std::process::id(), ns));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token()).unwrap();
    // Requests as fast as they go for 7 s: more than the seed's 60 a minute.
    let manifests = without_operator(&seed_manifests())
        .replace("requestsPerMinute: 60", "requestsPerMinute: 100000");
    let sc = sidecar(
        &emu,
        &manifests,
        &[
            ("AI_SIDECAR_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AI_SIDECAR_CREDENTIAL_REFRESH_BEFORE", "1s"),
        ],
    )
    .await;
    let url = format!("{}/invoke/ai-workloads/claude-haiku", sc.url);

    // 3-second credentials, refreshed 1 s early, for 7 s of traffic; the token rotates midway.
    let started = Instant::now();
    let mut rotated = false;
    while started.elapsed() < Duration::from_secs(7) {
        let (status, v, _) = post(&url, SEED_INVOKE).await;
        assert_eq!(
            status, 200,
            "no request fails while credentials refresh: {v}"
        );
        if !rotated && started.elapsed() > Duration::from_secs(3) {
            std::fs::write(&token_file, token()).unwrap();
            rotated = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exchanges = emu
        .emulator
        .requests()
        .iter()
        .filter(|r| r.operation == "AssumeRoleWithWebIdentity" && r.error.is_none())
        .count();
    assert!(
        (3..=6).contains(&exchanges),
        "refreshed before expiry, single-flight: {exchanges} STS calls for ~70 requests"
    );

    // STS goes down: cached credentials serve until they expire, then a clear 503.
    let mut down = Config::clone(&emu.emulator.config());
    down.faults.sts_unavailable = true;
    emu.emulator.set_config(down.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, v, _) = post(&url, SEED_INVOKE).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "credentials_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ServiceUnavailable"),
        "{v}"
    );

    // STS is back: once the failure's backoff (1 s after one failure) has passed, the next request
    // gets fresh credentials, no restart.
    down.faults.sts_unavailable = false;
    emu.emulator.set_config(down);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, v, _) = post(&url, SEED_INVOKE).await;
    assert_eq!(status, 200, "{v}");
    let metrics = reqwest::get(format!("{}/metrics", sc.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("k8s_ai_operator_sidecar_credential_refreshes "),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fifty requests at a cold start share one STS call; with STS down and the credentials expired,
/// every request is refused at once with `credentials_unavailable`, and the failure is shared, not
/// retried by each request.
#[tokio::test]
async fn sts_is_called_once_for_many_waiters_and_a_failure_is_remembered() {
    let cluster = Cluster::get();
    let (ns, token, config) = irsa_tenant(cluster, "sidecar-sts-once");
    let mut config = Config {
        credential_lifetime_seconds: 2,
        ..config
    };
    config.faults.sts_delay_ms = Some(300); // the waiters pile up behind the first exchange
    let emu = emulator(config.clone()).await;
    let dir = std::env::temp_dir().join(format!("sts-once-{}-{}", std::process::id(), ns));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token()).unwrap();
    let manifests = without_operator(&seed_manifests())
        .replace("requestsPerMinute: 60", "requestsPerMinute: 100000");
    let sc = sidecar(
        &emu,
        &manifests,
        &[
            ("AI_SIDECAR_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AI_SIDECAR_CREDENTIAL_REFRESH_BEFORE", "1s"),
        ],
    )
    .await;
    let url = format!("{}/invoke/ai-workloads/claude-haiku", sc.url);
    let burst = || futures_util::future::join_all((0..50).map(|_| post(&url, SEED_INVOKE)));
    let answers = burst().await;
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200),
        "{:?}",
        answers[0].1
    );
    assert_eq!(
        sts_exchanges(&emu),
        (1, 0),
        "one STS call for 50 waiting requests"
    );

    // STS goes down and the credentials expire: 50 requests, all refused with the same clear
    // error, and STS asked once (the failure is remembered for its backoff), not once each.
    config.faults.sts_unavailable = true;
    config.faults.sts_delay_ms = None;
    emu.emulator.set_config(config);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answers = burst().await;
    for (status, v, _) in &answers {
        assert_eq!(*status, 503, "{v}");
        assert_eq!(v["error"]["code"], "credentials_unavailable", "{v}");
    }
    // One refresh: the STS client's own retries (3 attempts) are all that reach STS.
    let (ok, failed) = sts_exchanges(&emu);
    assert!(
        ok == 1 && (1..=3).contains(&failed),
        "the failure was shared by every request: {ok} successful, {failed} failed STS calls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request waiting for credentials holds no share of the limits, and gives up at its deadline:
/// with `maxConcurrency: 1` and STS slower than the deadline, two requests both end with
/// `credentials_unavailable` (neither is refused as `concurrency_limited` for the other's wait).
#[tokio::test]
async fn a_request_waiting_for_credentials_holds_no_reservation_past_its_deadline() {
    let cluster = Cluster::get();
    let (ns, token, config) = irsa_tenant(cluster, "sidecar-sts-deadline");
    let mut config = config;
    config.faults.sts_delay_ms = Some(3000);
    let emu = emulator(config).await;
    let dir = std::env::temp_dir().join(format!("sts-deadline-{}-{}", std::process::id(), ns));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token()).unwrap();
    let manifests = without_operator(&seed_manifests()).replace(
        "requestsPerMinute: 60",
        "requestsPerMinute: 60\n    maxConcurrency: 1",
    );
    assert!(manifests.contains("maxConcurrency: 1"), "{manifests}");
    let sc = sidecar(
        &emu,
        &manifests,
        &[
            ("AI_SIDECAR_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AI_SIDECAR_UPSTREAM_TIMEOUT", "1s"),
        ],
    )
    .await;
    let url = format!("{}/invoke/ai-workloads/claude-haiku", sc.url);
    let (first, second) = tokio::join!(post(&url, SEED_INVOKE), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        post(&url, SEED_INVOKE).await
    });
    for (status, v, _) in [first, second] {
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["code"], "credentials_unavailable", "{v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod recreated under the same name (a StatefulSet's) finds the earlier pod's ledger still
/// there, counters and all: its sidecar neither takes them over nor writes over them, and reports
/// its own calls once its own ledger (its UID) exists. The earlier pod's spend is counted once.
#[tokio::test]
async fn a_sidecar_never_takes_over_the_ledger_of_an_earlier_pod_of_its_name() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("sidecar-recreated");
    let state = cluster_state();
    let dir = std::env::temp_dir().join(format!("recreated-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kubeconfig_path, uid) = tenant(cluster, &ns, &state, &dir);
    // The ledger left by an earlier pod of this name (another UID), its counters being folded.
    cluster.kubectl_ok(&["delete", "modelusage", "test-pod.claude-haiku", "-n", &ns]);
    assert!(cluster.apply(&format!(
        "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: test-pod.claude-haiku, namespace: {ns}}}\nspec: {{podName: test-pod, podUid: 00000000-0000-0000-0000-000000000001, endpoint: claude-haiku}}\n"
    )).success);
    let period = |p: &str| serde_json::json!({ "period": p, "invocations": 7, "inputTokens": 70, "outputTokens": 70, "cost": "0.0007" });
    let earlier = serde_json::json!({ "status": { "lifetime": period(""), "sequence": 7 } });
    let set_status = |body: &serde_json::Value| {
        cluster.kubectl_ok(&[
            "patch",
            "modelusage",
            "test-pod.claude-haiku",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &body.to_string(),
        ]);
    };
    set_status(&earlier);
    let lifetime_invocations = || -> serde_json::Value {
        let ledger: serde_json::Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "modelusage",
            "test-pod.claude-haiku",
            "-n",
            &ns,
            "-o",
            "json",
        ]))
        .unwrap();
        ledger["status"]["lifetime"]["invocations"].clone()
    };

    let emu = emulator(Config::default()).await;
    let sc = start_sidecar(
        &emu,
        None,
        &ns,
        &[
            ("KUBECONFIG", kubeconfig_path.to_str().unwrap()),
            ("AI_SIDECAR_ENDPOINTS", "claude-haiku"),
            ("AI_SIDECAR_REPORT_INTERVAL", "1s"),
            // Not the ledger's 00000000-0000-0000-0000-000000000001: a new pod of the same name.
            ("AI_SIDECAR_POD_UID", uid.as_str()),
        ],
    )
    .await;
    let url = format!("{}/invoke/{ns}/claude-haiku", sc.url);
    let (status, v, _) = post(&url, SEED_INVOKE).await;
    assert_eq!(status, 200, "{v}");
    // Several report intervals: the earlier pod's counters stay as they were (7, not 8 nor 1).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            lifetime_invocations(),
            7,
            "the earlier pod's ledger was written"
        );
    }

    // The earlier ledger is folded and gone; the operator creates this pod's own.
    cluster.kubectl_ok(&["delete", "modelusage", "test-pod.claude-haiku", "-n", &ns]);
    let own = format!(
        "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: test-pod.claude-haiku, namespace: {ns}}}\nspec: {{podName: test-pod, podUid: {uid}, endpoint: claude-haiku}}\n"
    );
    assert!(cluster.apply(&own).success);
    let deadline = Instant::now() + Duration::from_secs(15);
    while lifetime_invocations() != 1 {
        assert!(
            Instant::now() < deadline,
            "this pod's one call never reached its own ledger: {}",
            lifetime_invocations()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plays the platform team and the operator for a pod in `ns`: the seed's objects (static keys,
/// no IRSA), a service account `app` that may read exactly what the sidecar needs and write its
/// ledger `test-pod.claude-haiku`, the pod `test-pod` (never scheduled: only its identity is
/// used), its ledger, and in `dir` a kubeconfig with a token bound to the pod, as the kubelet
/// would project it (the ledger admission policy, when installed, checks that binding).
/// Returns the kubeconfig's path and the pod's UID.
fn tenant(
    cluster: &Cluster,
    ns: &str,
    state: &serde_json::Value,
    dir: &std::path::Path,
) -> (std::path::PathBuf, String) {
    // GuardrailPolicies are cluster-wide: one of its own, so that another test's synced policy
    // (whose guardrail this test's emulator does not know) is never picked up.
    let seed = without_operator(&seed_manifests())
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"))
        .replace("pii-and-safety", &format!("pii-{ns}"))
        .replace(
            "  irsaRoleArn: arn:aws:iam::123456789012:role/bedrock-invoker\n",
            "",
        );
    let run = cluster.apply(&seed);
    assert!(run.success, "{}", run.stderr);
    // The pod's service account may read exactly its endpoint, the namespace's templates and guardrail policies.
    let rbac = format!(
        r"apiVersion: v1
kind: ServiceAccount
metadata: {{name: app, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ai-sidecar, namespace: {ns}}}
rules:
- apiGroups: [ai.kernelpanic09.io]
  resources: [modelendpoints]
  resourceNames: [claude-haiku]
  verbs: [get, list, watch]
- apiGroups: [ai.kernelpanic09.io]
  resources: [prompttemplates]
  verbs: [get, list, watch]
- apiGroups: [ai.kernelpanic09.io]
  resources: [modelusages]
  resourceNames: [test-pod.claude-haiku]
  verbs: [get, list, watch]
- apiGroups: [ai.kernelpanic09.io]
  resources: [modelusages/status]
  resourceNames: [test-pod.claude-haiku]
  verbs: [get, patch]
---
apiVersion: v1
kind: Pod
metadata: {{name: test-pod, namespace: {ns}}}
spec:
  serviceAccountName: app
  nodeName: nowhere
  containers: [{{name: app, image: example.com/app:1}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ai-sidecar, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ai-sidecar}}
subjects: [{{kind: ServiceAccount, name: app, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: ai-sidecar-{ns}}}
rules:
- apiGroups: [ai.kernelpanic09.io]
  resources: [guardrailpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ai-sidecar-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ai-sidecar-{ns}}}
subjects: [{{kind: ServiceAccount, name: app, namespace: {ns}}}]
"
    );
    let run = cluster.apply(&rbac);
    assert!(run.success, "{}", run.stderr);
    let uid = cluster
        .kubectl_ok(&[
            "get",
            "pod",
            "test-pod",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .trim()
        .to_owned();
    // The ledger the operator would create for this pod and endpoint.
    let ledger = format!(
        "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelUsage\nmetadata: {{name: test-pod.claude-haiku, namespace: {ns}}}\nspec: {{podName: test-pod, podUid: {uid}, endpoint: claude-haiku}}\n"
    );
    let run = cluster.apply(&ledger);
    assert!(run.success, "{}", run.stderr);
    let token = cluster
        .kubectl_ok(&[
            "create",
            "token",
            "app",
            "-n",
            ns,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "test-pod",
        ])
        .trim()
        .to_owned();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: app, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: app, context: {{cluster: e2e, user: app, namespace: {ns}}}}}]\ncurrent-context: app\n",
        state["server"].as_str().unwrap(),
        state["caFile"].as_str().unwrap()
    );
    let kubeconfig_path = dir.join("sidecar.kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig).unwrap();
    (kubeconfig_path, uid)
}

#[tokio::test]
async fn configuration_comes_from_the_cluster_and_changes_apply_live() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("sidecar-watch");
    let state = cluster_state();
    let dir = std::env::temp_dir().join(format!("watch-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kubeconfig_path, _) = tenant(cluster, &ns, &state, &dir);

    let emu = emulator(Config::default()).await;
    let mut sc = start_sidecar(
        &emu,
        None,
        &ns,
        &[
            ("KUBECONFIG", kubeconfig_path.to_str().unwrap()),
            ("AI_SIDECAR_ENDPOINTS", "claude-haiku"),
            ("AI_SIDECAR_REPORT_INTERVAL", "1s"),
        ],
    )
    .await;
    let url = format!("{}/invoke/{ns}/claude-haiku", sc.url);
    let (status, first, _) = post(&url, SEED_INVOKE).await;
    assert_eq!(status, 200, "{first}");
    let (status, second, _) =
        post(&format!("{}/render/{ns}/code-review", sc.url), SEED_RENDER).await;
    assert_eq!(status, 200, "{second}");

    // The ledger gets the exact cumulative counters (cost in micro-dollars, rounded up).
    let cost = |v: &serde_json::Value| {
        v["costUSD"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    let spent = (cost(&first) + cost(&second))
        .round_dp_with_strategy(6, rust_decimal::RoundingStrategy::AwayFromZero);
    let ledger = || -> serde_json::Value {
        serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "modelusage",
            "test-pod.claude-haiku",
            "-n",
            &ns,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = ledger()["status"].clone();
        if status["lifetime"]["invocations"] == 2 {
            assert_eq!(
                status["lifetime"]["cost"]
                    .as_str()
                    .unwrap()
                    .parse::<rust_decimal::Decimal>()
                    .unwrap(),
                spent,
                "{status}"
            );
            let tokens =
                first["outputTokens"].as_u64().unwrap() + second["outputTokens"].as_u64().unwrap();
            assert_eq!(status["lifetime"]["outputTokens"], tokens);
            assert_eq!(status["day"]["invocations"], 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached the ledger: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The platform team lowers the limit: the sidecar applies it without a restart.
    cluster.kubectl_ok(&[
        "patch",
        "modelendpoint",
        "claude-haiku",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"rateLimit":{"requestsPerMinute":1}}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = post(&url, SEED_INVOKE).await;
        if status == 429 {
            break;
        }
        assert!(Instant::now() < deadline, "the new limit never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM: the sidecar drains, flushes its counters (the refusals included) and exits 0.
    let refused_before = ledger()["status"]["lifetime"]["rejected"]["rate_limited"]
        .as_u64()
        .unwrap_or(0);
    let (status, _, _) = post(&url, SEED_INVOKE).await;
    assert_eq!(status, 429);
    let exit = sc.terminate();
    assert!(exit.success(), "{exit:?}");
    let refused_after = ledger()["status"]["lifetime"]["rejected"]["rate_limited"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        refused_after > refused_before,
        "the last refusal was flushed on shutdown ({refused_before} -> {refused_after})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A control plane of this test's own (the shared one must stay up for the other tests), which
/// the test can freeze: SIGSTOP makes the API server hang like a network partition would.
struct PrivateControlPlane {
    child: std::process::Child,
    cluster: Cluster,
    state: serde_json::Value,
    dir: std::path::PathBuf,
}

impl PrivateControlPlane {
    fn start() -> Self {
        Cluster::get(); // builds the binaries if needed
        let root = e2e::repo_root();
        let dir = std::env::temp_dir().join(format!("private-cp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(root.join("e2e/.bin/controlplane"))
            .arg("--run-dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !dir.join("cluster.json").exists() {
            assert!(
                Instant::now() < deadline,
                "the private control plane did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap())
                .unwrap();
        let cluster = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            kubectl: root.join("e2e/.bin/kubectl"),
            cache_dir: dir.join("kubectl-cache"),
        };
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-k",
            root.join("manifests/crds").to_str().unwrap(),
        ]);
        // `kubectl wait` errors out (rather than waits) while a new CRD has no conditions yet.
        e2e::wait_until(
            "the CRDs to be Established",
            std::time::Duration::from_secs(60),
            || {
                cluster
                    .kubectl(&[
                        "wait",
                        "--for=condition=Established",
                        "crd",
                        "--all",
                        "--timeout=60s",
                    ])
                    .success
            },
        );
        PrivateControlPlane {
            child,
            cluster,
            state,
            dir,
        }
    }

    fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn serving_continues_while_the_api_server_is_away_and_usage_lands_after() {
    let cp = PrivateControlPlane::start();
    let ns = "outage";
    cp.cluster.kubectl_ok(&["create", "namespace", ns]);
    let (kubeconfig, _) = tenant(&cp.cluster, ns, &cp.state, &cp.dir);
    let emu = emulator(Config::default()).await;
    let sc = start_sidecar(
        &emu,
        None,
        ns,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("AI_SIDECAR_ENDPOINTS", "claude-haiku"),
            ("AI_SIDECAR_REPORT_INTERVAL", "1s"),
        ],
    )
    .await;
    let url = format!("{}/invoke/{ns}/claude-haiku", sc.url);
    assert_eq!(post(&url, SEED_INVOKE).await.0, 200);

    // The API server hangs for 60 s: calls keep being served with the last configuration (one
    // every 1.1 s stays within the seed's 60 a minute).
    cp.signal("-STOP");
    let frozen = Instant::now();
    let mut served = 1;
    while frozen.elapsed() < Duration::from_secs(60) {
        let (status, v, _) = post(&url, SEED_INVOKE).await;
        assert_eq!(status, 200, "served during the outage: {v}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    cp.signal("-CONT");

    // Back: the ledger catches up with every call, none lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ledger: serde_json::Value = serde_json::from_str(&cp.cluster.kubectl_ok(&[
            "get",
            "modelusage",
            "test-pod.claude-haiku",
            "-n",
            ns,
            "-o",
            "json",
        ]))
        .unwrap();
        if ledger["status"]["lifetime"]["invocations"] == served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never caught up with {served} calls: {}",
            ledger["status"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

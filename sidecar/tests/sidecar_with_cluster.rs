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

#[tokio::test]
async fn irsa_credentials_refresh_rotate_and_recover() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("sidecar-irsa");
    cluster.kubectl_ok(&["create", "serviceaccount", "app", "-n", &ns]);
    let token = || {
        cluster.kubectl_ok(&[
            "create",
            "token",
            "app",
            "-n",
            &ns,
            "--audience",
            "sts.amazonaws.com",
        ])
    };
    let state = cluster_state();
    let role = "arn:aws:iam::123456789012:role/bedrock-invoker";
    let config = Config {
        oidc: Some(OidcProvider {
            issuer: state["issuer"].as_str().unwrap().into(),
            jwks_url: None,
            ca_file: Some(state["caFile"].as_str().unwrap().into()),
            audience: "sts.amazonaws.com".into(),
        }),
        roles: vec![Role {
            arn: role.into(),
            trusted_subjects: vec![format!("system:serviceaccount:{ns}:app")],
            trusted_principals: vec![],
            allowed_models: vec!["*".into()],
        }],
        credential_lifetime_seconds: 3,
        ..Config::default()
    };
    let emu = emulator(config).await;
    let dir = std::env::temp_dir().join(format!("irsa-{}-{}", std::process::id(), ns));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token()).unwrap();
    let sc = sidecar(
        &emu,
        &seed_manifests(),
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

    // STS is back: the next request gets fresh credentials, no restart.
    down.faults.sts_unavailable = false;
    emu.emulator.set_config(down);
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

#[tokio::test]
async fn configuration_comes_from_the_cluster_and_changes_apply_live() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("sidecar-watch");
    let seed = seed_manifests()
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"))
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
  resources: [modelusages/status]
  resourceNames: [test-pod.claude-haiku]
  verbs: [get, patch]
---
# The ledger the operator would create for this pod and endpoint.
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelUsage
metadata: {{name: test-pod.claude-haiku, namespace: {ns}}}
spec: {{podName: test-pod, podUid: 00000000-0000-0000-0000-000000000001, endpoint: claude-haiku}}
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
    let token = cluster
        .kubectl_ok(&["create", "token", "app", "-n", &ns])
        .trim()
        .to_owned();
    let state = cluster_state();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: app, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: app, context: {{cluster: e2e, user: app, namespace: {ns}}}}}]\ncurrent-context: app\n",
        state["server"].as_str().unwrap(),
        state["caFile"].as_str().unwrap()
    );
    let dir = std::env::temp_dir().join(format!("watch-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig_path = dir.join("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig).unwrap();

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

//! `kubectl apply -k manifests/default` on the real API server, then the operator run with the
//! installed service account's own token (so its least-privilege RBAC is proven sufficient): it
//! fills the webhook's caBundle, a pod that opts in is injected, the seed's ModelEndpoint becomes
//! Ready, and the sidecar's RoleBinding appears. The only change to the manifests is the webhook's
//! address: no kube-proxy here routes a Service, so the API server calls the local process by URL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{Cluster, Process, free_port, repo_root, wait_until};
use serde_json::{Value, json};

/// Removes what would affect other tests: the webhook (failurePolicy Fail) and the ledger policy.
struct Installed(&'static Cluster);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            "k8s-ai-operator",
            "--ignore-not-found",
        ]);
        let _ = self.0.kubectl(&[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            "ledger-writes.ai.kernelpanic09.io",
            "--ignore-not-found",
        ]);
    }
}

/// The two tests install the same cluster-wide objects: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the only other holder is a plain #[test] on its own thread
async fn the_default_install_works_with_its_own_least_privilege_rbac() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = Cluster::get();
    let _installed = Installed(cluster);
    let run = cluster.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        repo_root().join("manifests/default").to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    for object in [
        "deployment/k8s-ai-operator",
        "service/k8s-ai-operator-webhook",
        "poddisruptionbudget/k8s-ai-operator",
        "serviceaccount/k8s-ai-operator",
    ] {
        cluster.kubectl_ok(&["get", object, "-n", "ai-operator-system"]);
    }
    let webhook_port = free_port();
    cluster.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration",
        "k8s-ai-operator",
        "--type=json",
        "-p",
        &json!([
            { "op": "remove", "path": "/webhooks/0/clientConfig/service" },
            { "op": "add", "path": "/webhooks/0/clientConfig/url", "value": format!("https://127.0.0.1:{webhook_port}/mutate") },
        ])
        .to_string(),
    ]);

    // A kubeconfig with the operator's service-account token, nothing else.
    let server = cluster.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca_file = cluster.kubectl_ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ]);
    // ByteString serializes as base64, as kubeconfig's *-data fields want.
    let ca = serde_json::to_value(k8s_openapi::ByteString(
        std::fs::read(ca_file.trim()).unwrap(),
    ))
    .unwrap();
    let token = cluster.kubectl_ok(&[
        "create",
        "token",
        "k8s-ai-operator",
        "-n",
        "ai-operator-system",
        "--duration=1h",
    ]);
    let kubeconfig =
        std::env::temp_dir().join(format!("operator-sa-{}.kubeconfig", std::process::id()));
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{ "name": "e2e", "cluster": { "server": server.trim(), "certificate-authority-data": ca } }],
        "users": [{ "name": "operator", "user": { "token": token.trim() } }],
        "contexts": [{ "name": "operator", "context": { "cluster": "e2e", "user": "operator" } }],
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();

    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let log = std::env::temp_dir().join(format!("operator-install-{}.log", std::process::id()));
    let _operator = Process(
        Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
            .args(["--identity", "installed", "--cert-extra-names", "127.0.0.1"])
            .args([
                "--webhook-listen",
                &format!("127.0.0.1:{webhook_port}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--sidecar-image", "example.com/ai-sidecar:test"])
            .env("AI_OPERATOR_NAMESPACE", "ai-operator-system")
            .envs(e2e::test_platform_env(&kubeconfig, &emulator.url()))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // The seed's quick start in a fresh namespace.
    let ns = cluster.namespace("installed");
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);
    for sample in ["guardrailpolicy.yaml", "modelendpoint.yaml"] {
        let yaml = std::fs::read_to_string(repo_root().join("manifests/samples").join(sample))
            .unwrap()
            .replace("namespace: ai-workloads", &format!("namespace: {ns}"));
        let run = cluster.apply(&yaml);
        assert!(run.success, "{}", run.stderr);
    }
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "app", "namespace": ns, "annotations": { "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku" } },
        "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
    });
    // Until the operator has filled caBundle and the API server has seen it, creation fails.
    wait_until("an injected pod", Duration::from_secs(60), || {
        cluster.apply(&pod.to_string()).success
    });
    let created: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "pod", "app", "-n", &ns, "-o", "json"]))
            .unwrap();
    assert_eq!(
        created["spec"]["initContainers"][0]["name"], "ai-sidecar",
        "{created}"
    );
    let ready = || {
        cluster.kubectl_ok(&[
            "get",
            "modelendpoint",
            "claude-haiku",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.available}",
        ]) == "true"
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "the endpoint never became Ready; operator log:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("the sidecar RoleBinding", Duration::from_secs(30), || {
        cluster
            .kubectl(&["get", "rolebinding", "k8s-ai-operator-sidecar", "-n", &ns])
            .success
    });
    wait_until("the pod's ledger", Duration::from_secs(30), || {
        cluster
            .kubectl(&["get", "modelusage", "app.claude-haiku", "-n", &ns])
            .success
    });
    let forbidden: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .map(str::to_owned)
        .collect();
    assert!(
        forbidden.is_empty(),
        "the installed RBAC refused the operator: {forbidden:?}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

/// cert-manager's release whose CRDs the overlay is checked against (from its Go module: the
/// module's zip carries `deploy/crds/`, and the Go module proxy is reachable where GitHub is not).
const CERT_MANAGER: &str = "github.com/cert-manager/cert-manager@v1.21.2";

#[test]
fn the_cert_manager_overlay_renders_and_is_accepted_once_cert_manager_crds_exist() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = Cluster::get();
    let out = Command::new("go")
        .args(["mod", "download", "-json", CERT_MANAGER])
        .current_dir(std::env::temp_dir())
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go mod download {CERT_MANAGER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let crds = std::path::Path::new(info["Dir"].as_str().unwrap()).join("deploy/crds");
    for kind in [
        "issuers",
        "clusterissuers",
        "certificates",
        "certificaterequests",
    ] {
        let file = crds.join(format!("cert-manager.io_{kind}.yaml"));
        cluster.kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
        // `kubectl wait` errors out (rather than waits) while a new CRD has no conditions yet.
        wait_until("an Established CRD", Duration::from_secs(30), || {
            cluster
                .kubectl(&[
                    "wait",
                    "--for=condition=Established",
                    &format!("crd/{kind}.cert-manager.io"),
                ])
                .success
        });
    }
    let rendered = cluster.kubectl_ok(&[
        "kustomize",
        repo_root().join("manifests/cert-manager").to_str().unwrap(),
    ]);
    assert!(
        rendered
            .contains("cert-manager.io/inject-ca-from: ai-operator-system/k8s-ai-operator-webhook")
    );
    assert!(rendered.contains("secretName: k8s-ai-operator-webhook-cert"));
    cluster.ensure_namespace("ai-operator-system");
    // Discovery is cached per kubectl cache dir: new CRDs need a fresh look.
    let _ = cluster.kubectl(&["api-resources", "--api-group=cert-manager.io"]);
    let run =
        cluster.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains(
            "certificate.cert-manager.io/k8s-ai-operator-webhook created (server dry run)"
        ),
        "{}",
        run.stdout
    );
}

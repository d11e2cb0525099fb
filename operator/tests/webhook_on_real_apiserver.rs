//! The injecting webhook called by the real API server: `k8s-ai-operator webhook` serving TLS
//! with a certificate from `webhook-certs`, registered with a MutatingWebhookConfiguration that
//! selects pods with the opt-in annotation with matchConditions (CEL on the annotation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use e2e::{Cluster, Process, free_port};
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde_json::Value;
use webhook_certs::{Bundle, Lifetimes};

#[test]
fn opted_in_pods_are_mutated_by_the_webhook_others_are_not_and_bad_ones_are_denied() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("inject");
    cluster.kubectl_ok(&["label", "namespace", &ns, &format!("e2e-webhook={ns}")]);
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);

    // Serve the webhook over TLS with a certificate for 127.0.0.1, signed by our own CA.
    let bundle = Bundle::generate(
        &["127.0.0.1".to_owned()],
        SystemTime::now(),
        Lifetimes::default(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("webhook-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &bundle.key_pem).unwrap();
    let port = free_port();
    let webhook = Process(
        Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
            .args([
                "webhook",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sidecar-image",
                "example.com/ai-sidecar:test",
            ])
            .args(["--sidecar-env", "AWS_ENDPOINT_URL=http://127.0.0.1:4566"])
            .args(["--cert-mode", "files", "--metrics-listen", "127.0.0.1:0"])
            .arg("--tls-cert-file")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the webhook did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let name = format!("e2e-inject-{ns}");
    let config = MutatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.ai.kernelpanic09.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate")),
                ca_bundle: Some(ByteString(bundle.ca.cert_pem.clone().into_bytes())),
                service: None,
            },
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("IfNeeded".into()),
            match_conditions: Some(vec![MatchCondition {
                name: "opted-in".into(),
                // Any value but "false", so a typo ("yes") is denied rather than silently not injected.
                expression: "has(object.metadata.annotations) && 'ai.kernelpanic09.io/inject' in object.metadata.annotations && object.metadata.annotations['ai.kernelpanic09.io/inject'] != 'false'".into(),
            }]),
            namespace_selector: Some(LabelSelector { match_labels: Some([("e2e-webhook".to_owned(), ns.clone())].into()), ..LabelSelector::default() }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            ..MutatingWebhook::default()
        }]),
    };
    let run = cluster.apply(&serde_json::to_string(&config).unwrap());
    assert!(run.success, "{}", run.stderr);

    let pod = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {annotations}\nspec:\n  containers:\n  - name: app\n    image: app:1\n"
        )
    };
    let get = |name: &str| -> Value {
        serde_json::from_str(&cluster.kubectl_ok(&["get", "pod", name, "-n", &ns, "-o", "json"]))
            .unwrap()
    };

    // Registration takes effect asynchronously: retry the first create until the webhook is called.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    let injected = loop {
        attempt += 1;
        let pod_name = format!("app-{attempt}");
        let run = cluster.apply(&pod(&pod_name, r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#));
        assert!(run.success, "{}", run.stderr);
        let created = get(&pod_name);
        if created["spec"]["initContainers"].is_array() {
            break created;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never mutated a pod: {created}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let sidecar = &injected["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "ai-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], "example.com/ai-sidecar:test");
    let env = sidecar["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "AI_SIDECAR_ENDPOINTS" && e["value"] == "claude-haiku")
    );
    assert!(
        env.iter()
            .any(|e| e["name"] == "AWS_ENDPOINT_URL" && e["value"] == "http://127.0.0.1:4566")
    );
    let volumes = injected["spec"]["volumes"].as_array().unwrap();
    let token = volumes
        .iter()
        .find(|v| v["name"] == "ai-sidecar-sts-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "sts.amazonaws.com"
    );
    assert!(injected["metadata"]["annotations"]["ai.kernelpanic09.io/injected"].is_string());
    assert_eq!(
        injected["spec"]["containers"].as_array().unwrap().len(),
        1,
        "the app container is untouched"
    );
    // The sidecar shares the token the ServiceAccount plugin mounted for the app.
    let api_mount = |container: &Value| {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
            .map(|m| m["name"].as_str().unwrap().to_owned())
    };
    let app_token = api_mount(&injected["spec"]["containers"][0]).unwrap();
    assert!(app_token.starts_with("kube-api-access-"), "{app_token}");
    assert_eq!(api_mount(sidecar), Some(app_token));

    // Without automount the app stays tokenless and the sidecar alone gets API credentials.
    let run = cluster.apply(&format!(
        "{}  automountServiceAccountToken: false\n",
        pod(
            "no-automount",
            r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#
        )
    ));
    assert!(run.success, "{}", run.stderr);
    let no_automount = get("no-automount");
    assert_eq!(api_mount(&no_automount["spec"]["containers"][0]), None);
    assert_eq!(
        api_mount(&no_automount["spec"]["initContainers"][0]).as_deref(),
        Some("ai-sidecar-kube-api")
    );
    let own = no_automount["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ai-sidecar-kube-api")
        .unwrap();
    assert_eq!(
        own["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );

    // Asked for, the app's AWS SDKs are pointed at the sidecar for Bedrock Runtime only.
    let run = cluster.apply(&pod(
        "routed",
        r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku", "ai.kernelpanic09.io/route-bedrock-sdk": "true"}"#,
    ));
    assert!(run.success, "{}", run.stderr);
    let routed = get("routed");
    let app_env = &routed["spec"]["containers"][0]["env"];
    assert!(
        app_env
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"
                && e["value"] == "http://localhost:8090"),
        "{app_env}"
    );

    // An opt-in that is neither "true" nor "false" is refused, "false" is left alone.
    let run = cluster.apply(&pod(
        "typo",
        r#"{"ai.kernelpanic09.io/inject": "yes", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#,
    ));
    assert!(!run.success);
    assert!(run.stderr.contains("\"yes\""), "{}", run.stderr);
    let run = cluster.apply(&pod(
        "opted-out",
        r#"{"ai.kernelpanic09.io/inject": "false"}"#,
    ));
    assert!(run.success, "{}", run.stderr);
    assert!(get("opted-out")["spec"]["initContainers"].is_null());

    // hostNetwork pods are refused with what to fix.
    let run = cluster.apply(&format!(
        "{}  hostNetwork: true\n",
        pod(
            "host-network",
            r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#
        )
    ));
    assert!(!run.success);
    assert!(run.stderr.contains("hostNetwork"), "{}", run.stderr);

    // A pod that declares one of the sidecar's ports, in any container, is refused with what to fix.
    let opted_in = r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#;
    for (name, port, extra) in [
        ("data-port", 8090, "    ports:\n    - containerPort: 8090\n"),
        (
            "admin-port-init",
            8091,
            "  initContainers:\n  - name: setup\n    image: app:1\n    ports:\n    - containerPort: 8091\n",
        ),
    ] {
        let run = cluster.apply(&format!("{}{extra}", pod(name, opted_in)));
        assert!(!run.success, "{name} was admitted");
        assert!(
            run.stderr
                .contains(&format!("declares containerPort {port}"))
                && run.stderr.contains("move the app to another port"),
            "{}",
            run.stderr
        );
    }
    // A hostPort is the node's: 8090 there does not clash with the pod's own 8090.
    let run = cluster.apply(&format!(
        "{}    ports:\n    - containerPort: 8080\n      hostPort: 8090\n",
        pod("host-port", opted_in)
    ));
    assert!(run.success, "{}", run.stderr);

    // Pods that did not opt in are not sent to the webhook, and are not changed.
    let run = cluster.apply(&pod("plain", "{}"));
    assert!(run.success, "{}", run.stderr);
    assert!(get("plain")["spec"]["initContainers"].is_null());

    // A pod that opts in without naming endpoints is refused with what to fix.
    let run = cluster.apply(&pod(
        "no-endpoints",
        r#"{"ai.kernelpanic09.io/inject": "true"}"#,
    ));
    assert!(!run.success);
    assert!(
        run.stderr.contains("ai.kernelpanic09.io/endpoints"),
        "{}",
        run.stderr
    );

    // cert-manager renews the certificate in place: the webhook notices the files change and
    // serves the new certificate on the next handshakes, while admissions keep succeeding.
    let served = || -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let before = served();
    assert!(before.starts_with("serial="), "{before:?}");
    let mut renewed = bundle.clone();
    let due_now = Lifetimes {
        renew_before: Lifetimes::default().serving * 2,
        ..Lifetimes::default()
    };
    renewed
        .advance(
            &["127.0.0.1".to_owned()],
            SystemTime::now(),
            due_now,
            Duration::from_secs(60),
        )
        .unwrap();
    // Like the kubelet's atomic Secret volume update: both files replaced by rename.
    for (file, pem) in [
        ("tls.key", &renewed.key_pem),
        ("tls.crt", &renewed.cert_pem),
    ] {
        std::fs::write(dir.join(format!("{file}.new")), pem).unwrap();
        std::fs::rename(dir.join(format!("{file}.new")), dir.join(file)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut admitted = 0;
    while served() == before {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        let run = cluster.apply(&pod(
            &format!("during-renewal-{admitted}"),
            r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#,
        ));
        assert!(
            run.success,
            "an admission failed during renewal: {}",
            run.stderr
        );
        admitted += 1;
    }
    let run = cluster.apply(&pod(
        "after-renewal",
        r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#,
    ));
    assert!(run.success, "{}", run.stderr);
    assert!(get("after-renewal")["spec"]["initContainers"].is_array());

    // The webhook is down (no replica answers): failurePolicy Fail keeps a pod that asked for the
    // sidecar from starting without it, and everyone else is unaffected.
    drop(webhook);
    let run = cluster.apply(&pod(
        "while-down",
        r#"{"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}"#,
    ));
    assert!(
        !run.success && run.stderr.contains("failed calling webhook"),
        "an opted-in pod is refused while the webhook is down: {run:?}"
    );
    let run = cluster.apply(&pod("plain-while-down", "{}"));
    assert!(run.success, "other pods are unaffected: {}", run.stderr);

    cluster.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &name]);
    let _ = std::fs::remove_dir_all(&dir);
}

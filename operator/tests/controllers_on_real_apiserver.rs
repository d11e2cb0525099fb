//! `k8s-ai-operator run` against the real API server and the Bedrock/STS emulator: the
//! ModelEndpoint controller checks role, model, guardrail and price and publishes conditions and
//! `available`; the PromptTemplate controller publishes `Valid` with a message that points at the
//! error. Both re-check when what they reference changes. One operator for the whole file: two
//! would fight over the same status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{Cluster, Process, repo_root};
use serde_json::{Value, json};

fn sample(name: &str, ns: &str) -> String {
    std::fs::read_to_string(repo_root().join("manifests/samples").join(name))
        .unwrap()
        .replace("namespace: ai-workloads", &format!("namespace: {ns}"))
}

/// Waits until the template's `Valid` condition has `status` and `reason`; returns the condition.
fn wait_for_valid(cluster: &Cluster, ns: &str, status: &str, reason: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pt: Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "pt",
            "code-review",
            "-n",
            ns,
            "-o",
            "json",
        ]))
        .unwrap();
        let valid = pt["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Valid"))
            .cloned();
        if let Some(c) = valid.filter(|c| c["status"] == status && c["reason"] == reason) {
            assert_eq!(
                pt["status"]["observedGeneration"],
                pt["metadata"]["generation"]
            );
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "Valid never became {status}/{reason}: {}",
            pt["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until Events with each (object name, reason) exist in `ns`.
fn wait_for_events(cluster: &Cluster, ns: &str, wanted: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", "events", "-n", ns, "-o", "json"]))
                .unwrap();
        let seen = |name: &str, reason: &str| {
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        };
        if wanted.iter().all(|(name, reason)| seen(name, reason)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "missing Events {wanted:?}: {events}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the policy's status satisfies `done` with `Synced` True; returns the status.
fn wait_for_policy(cluster: &Cluster, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gp: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", "gp", name, "-o", "json"])).unwrap();
        let status = &gp["status"];
        let synced = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Synced" && c["status"] == "True")
        });
        if synced && done(status) {
            return status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "GuardrailPolicy {name} never got there: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the endpoint's condition `type_` has `status` and `reason`; returns the endpoint.
fn wait_for_endpoint(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let me: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", "me", name, "-n", ns, "-o", "json"]))
                .unwrap();
        let found = me["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .cloned();
        if found.is_some_and(|c| c["status"] == status && c["reason"] == reason) {
            return me;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {type_} never became {status}/{reason}: {}",
            me["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the endpoint resolves to: `(status.resolvedModelId, Available message, PriceKnown message)`.
fn resolution(me: &Value) -> (String, String, String) {
    let message = |t: &str| {
        me["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    (
        me["status"]["resolvedModelId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        message("Available"),
        message("PriceKnown"),
    )
}

/// Bedrock serves Claude Haiku 4.5 only through inference profiles: each way of writing an
/// endpoint resolves to an id Bedrock accepts, or is `Available=False` with what to write instead.
fn endpoints_resolve_to_ids_bedrock_accepts(cluster: &Cluster, seed_ns: &str, ns: &str) {
    const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";
    const CLAUDE_3_HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
    let endpoint = |name: &str, region: &str, model: &str, profile: Option<&str>| {
        let profile = profile.map_or(String::new(), |p| format!("  inferenceProfile: \"{p}\"\n"));
        format!(
            "apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  modelId: \"{model}\"\n  region: {region}\n{profile}"
        )
    };
    // The seed's endpoint: the US geographic profile, priced 10% above the list price.
    let me = wait_for_endpoint(cluster, seed_ns, "claude-haiku", "Ready", "True", "Ready");
    let (called, available, price) = resolution(&me);
    assert_eq!(called, format!("us.{HAIKU}"));
    assert!(
        available.contains("only through inference profiles"),
        "{available}"
    );
    assert!(price.contains("$1.1 / $5.5"), "{price}");
    let wide = cluster.kubectl_ok(&["get", "me", "claude-haiku", "-n", seed_ns, "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("CALLS"), "{wide}");
    assert!(wide.contains(&format!("us.{HAIKU}")), "{wide}");

    let ready = [
        (
            "global",
            "us-east-1",
            HAIKU,
            Some("global"),
            format!("global.{HAIKU}"),
            "$1 / $5",
        ),
        (
            "tokyo",
            "ap-northeast-1",
            HAIKU,
            None,
            format!("jp.{HAIKU}"),
            "$1.1 / $5.5",
        ),
        (
            "frankfurt",
            "eu-central-1",
            HAIKU,
            Some("geographic"),
            format!("eu.{HAIKU}"),
            "$1.1 / $5.5",
        ),
        (
            "on-demand",
            "us-east-1",
            CLAUDE_3_HAIKU,
            None,
            CLAUDE_3_HAIKU.to_owned(),
            "$0.25 / $1.25",
        ),
        (
            "written",
            "us-east-1",
            &format!("us.{HAIKU}") as &str,
            None,
            format!("us.{HAIKU}"),
            "$1.1 / $5.5",
        ),
    ];
    for (name, region, model, profile, _, _) in &ready {
        assert!(
            cluster
                .apply(&endpoint(name, region, model, *profile))
                .success
        );
    }
    for (name, _, _, _, want, price) in &ready {
        let me = wait_for_endpoint(cluster, ns, name, "Ready", "True", "Ready");
        let (called, _, priced) = resolution(&me);
        assert_eq!(&called, want, "{name}");
        assert!(priced.contains(price), "{name}: {priced}");
    }

    let broken = [
        (
            "no-region",
            "sa-east-1",
            HAIKU,
            None,
            "ModelNotFound",
            "choose a region",
        ),
        (
            "no-global",
            "us-east-1",
            CLAUDE_3_HAIKU,
            Some("global"),
            "InferenceProfileNotFound",
            "set spec.inferenceProfile to geographic",
        ),
        (
            "wrong-geo",
            "us-east-1",
            &format!("eu.{HAIKU}") as &str,
            None,
            "InferenceProfileNotFound",
            &format!("write the base model id {HAIKU}") as &str,
        ),
        (
            "mismatch",
            "us-east-1",
            HAIKU,
            Some(&format!("us.{CLAUDE_3_HAIKU}") as &str),
            "InferenceProfileMismatch",
            "does not route to",
        ),
    ];
    for (name, region, model, profile, _, _) in &broken {
        assert!(
            cluster
                .apply(&endpoint(name, region, model, *profile))
                .success
        );
    }
    for (name, _, _, _, reason, hint) in &broken {
        let me = wait_for_endpoint(cluster, ns, name, "Available", "False", reason);
        let (called, available, _) = resolution(&me);
        assert_eq!(called, "", "{name}: nothing to call");
        assert!(available.contains(hint), "{name}: {available}");
        assert_eq!(me["status"]["available"], false, "{name}");
    }
    // Fixing the spec re-resolves at once (a new generation).
    assert!(
        cluster
            .apply(&endpoint(
                "no-global",
                "us-east-1",
                CLAUDE_3_HAIKU,
                Some("geographic")
            ))
            .success
    );
    let me = wait_for_endpoint(cluster, ns, "no-global", "Ready", "True", "Ready");
    assert_eq!(resolution(&me).0, format!("us.{CLAUDE_3_HAIKU}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_publish_conditions_that_follow_what_they_reference() {
    let cluster = Cluster::get();
    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let lease_ns = cluster.namespace("lease");
    let operator = |identity: &str| {
        Process(
            Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
                .args([
                    "run",
                    "--lease-namespace",
                    &lease_ns,
                    "--identity",
                    identity,
                    "--webhook-listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                ])
                .envs(e2e::test_platform_env(&cluster.kubeconfig, &emulator.url()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let first = operator("operator-1");

    // ModelEndpoint: the seed's, with its guardrail policy.
    let ns = cluster.namespace("endpoints");
    assert!(cluster.apply(&sample("guardrailpolicy.yaml", &ns)).success);
    assert!(cluster.apply(&sample("modelendpoint.yaml", &ns)).success);
    let me = wait_for_endpoint(cluster, &ns, "claude-haiku", "Ready", "True", "Ready");
    assert_eq!(me["status"]["available"], true);
    assert_eq!(
        me["status"]["observedGeneration"],
        me["metadata"]["generation"]
    );
    for (type_, reason) in [
        ("CredentialsValid", "CredentialsValid"),
        ("Available", "ModelAvailable"),
        ("GuardrailResolved", "GuardrailResolved"),
        ("PriceKnown", "PriceKnown"),
    ] {
        let c = me["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap();
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("True"), Some(reason)),
            "{c}"
        );
    }
    let row = cluster.kubectl_ok(&["get", "me", "claude-haiku", "-n", &ns, "--no-headers"]);
    assert_eq!(
        row.split_whitespace().nth(3),
        Some("true"),
        "AVAILABLE column: {row}"
    );
    endpoints_resolve_to_ids_bedrock_accepts(cluster, &ns, &cluster.namespace("profiles"));

    // The ledger: an injected pod gets a ModelUsage per endpoint, owned by the pod; what its sidecar
    // writes there is summed into the endpoint's status and shown by `kubectl get modelendpoints`.
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {ns}\n  labels: {{ai.kernelpanic09.io/sidecar: injected}}\n  annotations: {{ai.kernelpanic09.io/inject: \"true\", ai.kernelpanic09.io/endpoints: claude-haiku}}\nspec:\n  containers: [{{name: app, image: app:1}}]\n"
    );
    assert!(cluster.apply(&pod).success);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ledger: Value = loop {
        let run = cluster.kubectl(&[
            "get",
            "modelusage",
            "app.claude-haiku",
            "-n",
            &ns,
            "-o",
            "json",
        ]);
        if run.success {
            break serde_json::from_str(&run.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no ledger for the injected pod: {}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ledger["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(ledger["spec"]["endpoint"], "claude-haiku");
    let today = k8s_openapi::jiff::Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date();
    let (day, month) = (
        today.to_string(),
        format!("{:04}-{:02}", today.year(), today.month()),
    );
    let counters = |period: &str| {
        format!(
            r#"{{"period":"{period}","invocations":3,"inputTokens":100,"outputTokens":150,"cost":"0.000837"}}"#
        )
    };
    let status = format!(
        r#"{{"status":{{"day":{},"month":{},"lifetime":{}}}}}"#,
        counters(&day),
        counters(&month),
        counters("")
    );
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "app.claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = cluster.kubectl_ok(&["get", "me", "claude-haiku", "-n", &ns, "--no-headers"]);
        let columns: Vec<&str> = row.split_whitespace().collect();
        if columns.get(4..6) == Some(&["0.000837", "3"][..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "COST/MONTH and INVOCATIONS never showed the ledger: {row}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let me: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "me",
        "claude-haiku",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        (
            me["status"]["costToday"].as_str(),
            me["status"]["totalOutputTokens"].as_u64()
        ),
        (Some("0.000837"), Some(150))
    );

    // Each broken reference, with the condition that says so.
    let broken = sample("modelendpoint.yaml", &ns)
        .replace("name: claude-haiku", "name: broken")
        .replace(
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "acme.no-such-model-v1:0",
        )
        .replace("role/bedrock-invoker", "role/not-trusted")
        .replace(
            "guardrailPolicyRef: pii-and-safety",
            &format!("guardrailPolicyRef: later-{ns}"),
        );
    assert!(cluster.apply(&broken).success);
    let me = wait_for_endpoint(
        cluster,
        &ns,
        "broken",
        "CredentialsValid",
        "False",
        "AssumeRoleFailed",
    );
    assert_eq!(me["status"]["available"], false);
    let condition = |me: &Value, t: &str| {
        me["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(condition(&me, "PriceKnown")["reason"], "PriceUnknown");
    assert_eq!(
        condition(&me, "GuardrailResolved")["reason"],
        "GuardrailPolicyNotFound"
    );
    assert!(
        condition(&me, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("CredentialsValid")
    );
    // Transitions are announced as Events (what `kubectl describe` shows).
    wait_for_events(
        cluster,
        &ns,
        &[("claude-haiku", "Ready"), ("broken", "NotReady")],
    );
    // Spend reaches the seed's daily budget ($10.00): BudgetExceeded, announced as a Warning.
    let me = wait_for_endpoint(
        cluster,
        &ns,
        "claude-haiku",
        "BudgetExceeded",
        "False",
        "WithinBudget",
    );
    assert!(me["status"]["costToday"].is_string());
    let today = k8s_openapi::jiff::Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date();
    let month = format!("{:04}-{:02}", today.year(), today.month());
    // A pod as the webhook leaves it; the operator creates its ledger, its sidecar reports.
    let _ = cluster.kubectl(&["create", "serviceaccount", "default", "-n", &ns]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "spender", "namespace": ns, "labels": { "ai.kernelpanic09.io/sidecar": "injected" }, "annotations": { "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku" } },
        "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
    });
    assert!(cluster.apply(&pod.to_string()).success);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .kubectl(&["get", "modelusage", "spender.claude-haiku", "-n", &ns])
        .success
    {
        assert!(Instant::now() < deadline, "no ledger for the pod");
        std::thread::sleep(Duration::from_millis(200));
    }
    let spent = json!({ "status": {
        "day": { "period": today.to_string(), "invocations": 1, "cost": "10.000001" },
        "month": { "period": month, "invocations": 1, "cost": "10.000001" },
    } });
    cluster.kubectl_ok(&[
        "patch",
        "modelusage",
        "spender.claude-haiku",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &spent.to_string(),
    ]);
    let me = wait_for_endpoint(
        cluster,
        &ns,
        "claude-haiku",
        "BudgetExceeded",
        "True",
        "DailyBudgetExceeded",
    );
    assert_eq!(
        me["status"]["available"], true,
        "still Ready: sidecars refuse calls themselves"
    );
    wait_for_events(cluster, &ns, &[("claude-haiku", "DailyBudgetExceeded")]);
    // The missing policy appears: the endpoint is re-checked through the watch.
    let policy = sample("guardrailpolicy.yaml", &ns)
        .replace("name: pii-and-safety", &format!("name: later-{ns}"));
    assert!(cluster.apply(&policy).success);
    wait_for_endpoint(
        cluster,
        &ns,
        "broken",
        "GuardrailResolved",
        "True",
        "GuardrailResolved",
    );
    // A trusted role but a model the region does not offer.
    let unknown_model = broken.replace("role/not-trusted", "role/bedrock-invoker");
    assert!(cluster.apply(&unknown_model).success);
    wait_for_endpoint(
        cluster,
        &ns,
        "broken",
        "Available",
        "False",
        "ModelNotFound",
    );

    // GuardrailPolicy: the seed's policy is synced (its PROMPT_ATTACK output strength sent as NONE).
    let bedrock = aws_sdk_bedrock::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(emulator.url())
            .credentials_provider(aws_credential_types::Credentials::new(
                e2e::emulator::config::TEST_ACCESS_KEY_ID,
                e2e::emulator::config::TEST_SECRET_ACCESS_KEY,
                None,
                None,
                "test",
            ))
            .load()
            .await,
    );
    let seed_policy = wait_for_policy(cluster, "pii-and-safety", |s| s["version"] == "1");
    assert_eq!(seed_policy["guardrailId"].as_str().unwrap().len(), 12);
    let lifecycle = format!("lifecycle-{ns}");
    let policy = sample("guardrailpolicy.yaml", &ns)
        .replace("name: pii-and-safety", &format!("name: {lifecycle}"));
    assert!(cluster.apply(&policy).success);
    let status = wait_for_policy(cluster, &lifecycle, |s| s["version"] == "1");
    let id = status["guardrailId"].as_str().unwrap().to_owned();
    // Cluster-scoped objects' Events live in `default`.
    wait_for_events(cluster, "default", &[(&lifecycle, "Synced")]);
    let named = |list: &aws_sdk_bedrock::operation::list_guardrails::ListGuardrailsOutput| {
        list.guardrails()
            .iter()
            .filter(|g| g.name() == format!("k8s-ai-{lifecycle}"))
            .count()
    };
    assert_eq!(
        named(&bedrock.list_guardrails().send().await.unwrap()),
        1,
        "one guardrail per policy"
    );
    // A spec change: the DRAFT is updated and a new version cut.
    let changed = policy.replace(
        "    - type: EMAIL\n      action: ANONYMIZE\n",
        "    - type: EMAIL\n      action: ANONYMIZE\n    - type: PHONE\n      action: BLOCK\n",
    );
    assert!(cluster.apply(&changed).success);
    wait_for_policy(cluster, &lifecycle, |s| s["version"] == "2");
    // Drift: someone edits the guardrail in Bedrock; the next reconcile puts the spec back.
    bedrock
        .update_guardrail()
        .guardrail_identifier(&id)
        .name(format!("k8s-ai-{lifecycle}"))
        .blocked_input_messaging("edited by hand")
        .blocked_outputs_messaging("edited by hand")
        .send()
        .await
        .unwrap();
    cluster.kubectl_ok(&["annotate", "gp", &lifecycle, "e2e/touch=1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let draft = loop {
        let draft = bedrock
            .get_guardrail()
            .guardrail_identifier(&id)
            .send()
            .await
            .unwrap();
        if draft.blocked_input_messaging() != "edited by hand" {
            break draft;
        }
        assert!(Instant::now() < deadline, "the drift was never repaired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Version 2 never changed (versions are immutable), so calls keep using it.
    assert_eq!(
        wait_for_policy(cluster, &lifecycle, |s| s["version"] == "2")["version"],
        "2"
    );
    assert_eq!(
        draft
            .sensitive_information_policy()
            .unwrap()
            .pii_entities()
            .len(),
        3
    );
    assert_eq!(
        named(&bedrock.list_guardrails().send().await.unwrap()),
        1,
        "still one guardrail"
    );
    // The crash window: a leader created the guardrail and died before writing the policy's
    // status. The next reconcile finds it by name and adopts it: never two for one policy.
    let crashed = format!("crashed-{ns}");
    let orphan = bedrock
        .create_guardrail()
        .name(format!("k8s-ai-{crashed}"))
        .blocked_input_messaging("blocked")
        .blocked_outputs_messaging("blocked")
        .content_policy_config(
            aws_sdk_bedrock::types::GuardrailContentPolicyConfig::builder()
                .filters_config(
                    aws_sdk_bedrock::types::GuardrailContentFilterConfig::builder()
                        .r#type(aws_sdk_bedrock::types::GuardrailContentFilterType::Hate)
                        .input_strength(aws_sdk_bedrock::types::GuardrailFilterStrength::High)
                        .output_strength(aws_sdk_bedrock::types::GuardrailFilterStrength::High)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let policy = sample("guardrailpolicy.yaml", &ns)
        .replace("name: pii-and-safety", &format!("name: {crashed}"));
    assert!(cluster.apply(&policy).success);
    let status = wait_for_policy(cluster, &crashed, |s| s["version"] == "1");
    assert_eq!(status["guardrailId"], orphan.guardrail_id(), "adopted");
    let same_name = bedrock
        .list_guardrails()
        .send()
        .await
        .unwrap()
        .guardrails()
        .iter()
        .filter(|g| g.name() == format!("k8s-ai-{crashed}"))
        .count();
    assert_eq!(same_name, 1, "no second guardrail");
    // Deleting the policy deletes the guardrail, then the object (finalizer).
    cluster.kubectl_ok(&["delete", "gp", &lifecycle, "--wait=true", "--timeout=30s"]);
    let err = bedrock
        .get_guardrail()
        .guardrail_identifier(&id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");

    // PromptTemplate, in a namespace of its own.
    let ns = cluster.namespace("templates");
    // The seed's template, before its endpoint exists.
    assert!(cluster.apply(&sample("prompttemplate.yaml", &ns)).success);
    let c = wait_for_valid(cluster, &ns, "False", "EndpointNotFound");
    assert!(
        c["message"].as_str().unwrap().contains("claude-haiku"),
        "{c}"
    );

    // The endpoint appears: the template is re-checked through the watch, no edit needed.
    assert!(cluster.apply(&sample("modelendpoint.yaml", &ns)).success);
    let c = wait_for_valid(cluster, &ns, "True", "TemplateValid");
    assert!(c["lastTransitionTime"].is_string());

    // A typo in the template: the message names it.
    let typo = sample("prompttemplate.yaml", &ns).replace("{{.Focus}}", "{{.Focuss}}");
    assert!(cluster.apply(&typo).success);
    let c = wait_for_valid(cluster, &ns, "False", "TemplateInvalid");
    assert!(c["message"].as_str().unwrap().contains("Focuss"), "{c}");
    wait_for_events(
        cluster,
        &ns,
        &[
            ("code-review", "TemplateValid"),
            ("code-review", "TemplateInvalid"),
        ],
    );

    // Leader election: a second replica waits; when the leader dies (SIGKILL, no goodbye), it takes
    // the Lease once it expires and runs the controllers.
    let holder = || {
        cluster.kubectl_ok(&[
            "get",
            "lease",
            "k8s-ai-operator",
            "-n",
            &lease_ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    assert_eq!(holder(), "operator-1");
    let _second = operator("operator-2");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        holder(),
        "operator-1",
        "the second replica does not take a held Lease"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder() != "operator-2" {
        assert!(
            Instant::now() < deadline,
            "the second replica never took over: {}",
            holder()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fixed = sample("prompttemplate.yaml", &ns);
    assert!(cluster.apply(&fixed).success);
    wait_for_valid(cluster, &ns, "True", "TemplateValid");
}

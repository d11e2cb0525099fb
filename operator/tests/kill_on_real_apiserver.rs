//! The operator SIGKILLed in the middle of its other multi-step work, on the real API server with
//! the Bedrock emulator: syncing a GuardrailPolicy to Bedrock (create, update the DRAFT, cut a
//! version, write status) and rebalancing the shares of an endpoint's limit among pods (shrinks
//! first, then grows). After each restart the state converges: one guardrail per policy, holding
//! the latest spec; shares that never add up to more than the limit, even mid-rebalance.
//! (Folds are tried the same way, 50 times, in fold_on_real_apiserver.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom
#![allow(clippy::cast_possible_truncation)] // a clock seed

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use e2e::{Cluster, Process, emulator::Running};
use serde_json::{Value, json};

/// The tests of this file one at a time: each runs an operator, and every operator syncs every
/// GuardrailPolicy (cluster-scoped) into its own emulator and writes the policy's status.
static ONE_OPERATOR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small deterministic generator (xorshift), seeded from the clock; the seed is printed so a
/// failing run can be replayed with KILL_SEED.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("KILL_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The operator as a local process (no leader election: one replica), logging to `log`.
fn start_operator(cluster: &Cluster, emulator: &Running, lease_ns: &str, log: &str) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
            .args(["run", "--leader-election=false", "--namespace", lease_ns])
            .args([
                "--webhook-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--webhook-configuration", "none", "--log-format", "text"])
            .envs(e2e::test_platform_env(&cluster.kubeconfig, &emulator.url()))
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(std::env::temp_dir().join(log))
                    .unwrap(),
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn kill(operator: &mut Process) {
    let _ = operator.0.kill(); // SIGKILL: no goodbye
    let _ = operator.0.wait();
}

fn bedrock(emulator: &Running) -> aws_sdk_bedrock::Client {
    let config = aws_sdk_bedrock::Config::builder()
        .behavior_version(aws_sdk_bedrock::config::BehaviorVersion::latest())
        .region(aws_sdk_bedrock::config::Region::new("us-east-1"))
        .endpoint_url(emulator.url())
        .credentials_provider(aws_credential_types::Credentials::new(
            e2e::emulator::config::TEST_ACCESS_KEY_ID,
            e2e::emulator::config::TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_bedrock::Client::from_conf(config)
}

/// Synced=True for the policy's current generation.
fn synced_at_generation(gp: &Value) -> bool {
    gp["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["type"] == "Synced"
                && c["status"] == "True"
                && c["observedGeneration"] == gp["metadata"]["generation"]
        })
    })
}

fn policy(name: &str, digits: u64) -> String {
    format!(
        r#"apiVersion: ai.kernelpanic09.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: {name}
spec:
  sensitiveInformationPolicy:
    piiEntities:
    - type: EMAIL
      action: ANONYMIZE
    regexes:
    - name: ticket
      pattern: "TICKET-[0-9]{{{digits}}}"
      action: BLOCK
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_sync_converges_to_one_guardrail_after_kills() {
    let _alone = ONE_OPERATOR_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let lease_ns = cluster.namespace("kill-gr-operator");
    let name = format!("kill-{lease_ns}");
    let log = format!("operator-{name}.log");
    let mut rng = Rng::from_env();
    let bedrock = bedrock(&emulator);
    // Every page: the shared cluster's other policies fill the emulator too.
    let ours = || async {
        let mut ids = Vec::new();
        let mut pages = bedrock.list_guardrails().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap();
            ids.extend(
                page.guardrails()
                    .iter()
                    .filter(|g| g.name() == format!("k8s-ai-{name}"))
                    .map(|g| g.id().to_owned()),
            );
        }
        ids
    };
    // The policy's status once synced at its current generation.
    let synced = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let gp: Value =
                serde_json::from_str(&cluster.kubectl_ok(&["get", "gp", &name, "-o", "json"]))
                    .unwrap();
            if synced_at_generation(&gp) {
                break gp["status"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "never synced after the kills: {gp}\n{}",
                std::fs::read_to_string(std::env::temp_dir().join(&log)).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut operator = start_operator(cluster, &emulator, &lease_ns, &log);
    let (trials, mut interrupted) = (12, 0);
    for trial in 0..trials {
        // The operator has caught up; the spec changes and the operator dies somewhere in the
        // sync that follows (its steps take milliseconds against the emulator).
        assert!(cluster.apply(&policy(&name, 4 + trial)).success);
        std::thread::sleep(Duration::from_millis(rng.below(2500)));
        kill(&mut operator);
        let gp: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", "gp", &name, "-o", "json"])).unwrap();
        interrupted += u32::from(!synced_at_generation(&gp));
        operator = start_operator(cluster, &emulator, &lease_ns, &log);
        synced().await;
        let guardrails = ours().await;
        assert_eq!(
            guardrails.len(),
            1,
            "trial {trial}: one guardrail per policy: {guardrails:?}"
        );
    }
    println!("{trials} SIGKILLs, {interrupted} before the new spec was synced");
    assert!(
        interrupted >= 3,
        "the kills rarely hit a sync in flight ({interrupted})"
    );
    // Converged: exactly one guardrail, its synced version holding the last spec.
    let final_digits = 4 + trials - 1;
    let status = synced().await;
    let found = ours().await;
    assert_eq!(
        found.len(),
        1,
        "one guardrail per policy after {trials} kills: {found:?}"
    );
    assert_eq!(status["guardrailId"], found[0].as_str());
    let version = status["version"].as_str().unwrap();
    let synced = bedrock
        .get_guardrail()
        .guardrail_identifier(&found[0])
        .guardrail_version(version)
        .send()
        .await
        .unwrap();
    let pattern = synced
        .sensitive_information_policy()
        .unwrap()
        .regexes()
        .first()
        .unwrap()
        .pattern()
        .to_owned();
    assert_eq!(
        pattern,
        format!("TICKET-[0-9]{{{final_digits}}}"),
        "version {version} holds the last spec"
    );
    // Deleted: the guardrail goes with the policy (finalizer), however many kills came before.
    cluster.kubectl_ok(&["delete", "gp", &name, "--wait=true", "--timeout=60s"]);
    let left = ours().await.len();
    assert_eq!(left, 0, "the guardrail outlived its policy");
    kill(&mut operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_never_pass_the_limit_while_the_operator_is_killed_mid_rebalance() {
    let _alone = ONE_OPERATOR_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let emulator = e2e::emulator::Emulator::start(
        e2e::emulator::config::Config::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("kill-alloc");
    cluster.kubectl_ok(&["create", "serviceaccount", "default", "-n", &ns]);
    let endpoint =
        std::fs::read_to_string(e2e::repo_root().join("manifests/samples/modelendpoint.yaml"))
            .unwrap()
            .replace("namespace: ai-workloads", &format!("namespace: {ns}"))
            .replace("  guardrailPolicyRef: pii-and-safety\n", "");
    assert!(endpoint.contains("requestsPerMinute: 60"));
    assert!(cluster.apply(&endpoint).success);
    let lease_ns = cluster.namespace("kill-alloc-operator");
    let log = format!("operator-{ns}.log");
    let mut operator = start_operator(cluster, &emulator, &lease_ns, &log);
    let pods: Vec<String> = (0..5).map(|i| format!("pod-{i}")).collect();
    for pod in &pods {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": pod, "namespace": ns, "labels": { "ai.kernelpanic09.io/sidecar": "injected" }, "annotations": { "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
        });
        assert!(cluster.apply(&pod.to_string()).success);
    }
    // Every ledger's share, read in one LIST (one consistent snapshot).
    let shares = {
        let ns = ns.clone();
        move || -> Vec<(String, u64)> {
            let run = cluster.kubectl(&["get", "modelusage", "-n", &ns, "-o", "json"]);
            let list: Value = serde_json::from_str(&run.stdout).unwrap_or(json!({ "items": [] }));
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| {
                    let rpm = l["spec"]["allocation"]["requestsPerMinute"].as_u64()?;
                    Some((l["spec"]["podName"].as_str()?.to_owned(), rpm))
                })
                .collect()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shares().len() < pods.len() {
        assert!(
            Instant::now() < deadline,
            "not every ledger got a share: {:?}",
            shares()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A watcher samples the shares all along: their sum must never pass the limit.
    let stop = Arc::new(AtomicBool::new(false));
    let (max_sum, samples) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let watcher = {
        let (stop, max_sum, samples, shares) = (
            Arc::clone(&stop),
            Arc::clone(&max_sum),
            Arc::clone(&samples),
            shares.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let sum: u64 = shares().iter().map(|(_, s)| s).sum();
                max_sum.fetch_max(sum, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut rng = Rng::from_env();
    let mut sequence = 0;
    let mut busy = 0;
    for _trial in 0..8 {
        // Demand moves to another pod; the operator dies somewhere in the rebalance that follows
        // (every 5 s on reported demand, so within 6 s).
        busy = (busy + 1 + rng.below(4) as usize) % pods.len();
        sequence += 1;
        for (i, pod) in pods.iter().enumerate() {
            let rpm = if i == busy { 60 } else { 0 };
            let status = json!({ "status": { "demand": { "requestsPerMinute": rpm, "tokensPerMinute": 0 }, "sequence": sequence } });
            cluster.kubectl_ok(&[
                "patch",
                "modelusage",
                &format!("{pod}.claude-haiku"),
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
        std::thread::sleep(Duration::from_millis(rng.below(6000)));
        kill(&mut operator);
        operator = start_operator(cluster, &emulator, &lease_ns, &log);
    }
    // Converged on the last demand: the busy pod holds nearly all, the others their floor of 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = shares();
        let of = |pod: &str| now.iter().find(|(p, _)| p == pod).map_or(0, |(_, s)| *s);
        let converged = pods.iter().enumerate().all(|(i, pod)| {
            if i == busy {
                of(pod) >= 50
            } else {
                of(pod) == 1
            }
        });
        if converged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shares never followed the demand of pod-{busy}: {now:?}\n{}",
            std::fs::read_to_string(std::env::temp_dir().join(&log)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let (max_sum, samples) = (
        max_sum.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    );
    println!("8 SIGKILLs mid-rebalance; {samples} snapshots of the shares, largest sum {max_sum}");
    assert!(
        samples > 50,
        "too few snapshots ({samples}) to say anything"
    );
    assert!(
        max_sum <= 60,
        "the shares added up to {max_sum}, over the limit of 60"
    );
    // Leave nothing behind: the operator releases the ledgers of the deleted pods.
    for pod in &pods {
        cluster.kubectl_ok(&["delete", "pod", pod, "-n", &ns, "--wait=false"]);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shares().is_empty() {
        assert!(
            Instant::now() < deadline,
            "ledgers left behind: {:?}",
            shares()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill(&mut operator);
}

//! `k8s-ai-operator run` against the real API server: the PromptTemplate controller publishes
//! `Valid` with a reason and a message that points at the error, and re-checks when the
//! referenced ModelEndpoint appears.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{Cluster, repo_root};
use serde_json::Value;

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

#[test]
fn prompt_templates_get_a_valid_condition_that_follows_their_endpoint() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("templates");
    let _operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_k8s-ai-operator"))
            .arg("run")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

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
}

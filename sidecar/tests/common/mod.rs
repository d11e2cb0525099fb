//! Shared by the sidecar's integration tests: the emulator, and `ai-sidecar` started as a pod runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)] // test code

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::emulator::{
    Emulator, Running,
    config::{Config, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY},
};
use rust_decimal::Decimal;
use serde_json::Value;

pub const SEED_INVOKE: &str =
    r#"{"messages":[{"role":"user","content":"Explain Kubernetes operators in two sentences."}]}"#;
pub const SEED_RENDER: &str = r#"{"variables":{"Diff":"- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")","Focus":"security"}}"#;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn seed_manifests() -> String {
    let root = e2e::repo_root();
    [
        "guardrailpolicy.yaml",
        "modelendpoint.yaml",
        "prompttemplate.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root.join("manifests/samples").join(f)).unwrap())
    .collect::<Vec<_>>()
    .join("---\n")
}

/// The seed's objects with the IRSA role removed: the sidecar then signs with the static test keys.
/// No operator resolves the endpoint here (see [`without_operator`]).
pub fn seed_with_static_keys() -> String {
    without_operator(&seed_manifests()).replace(
        "  irsaRoleArn: arn:aws:iam::123456789012:role/bedrock-invoker\n",
        "",
    )
}

/// The objects as a sidecar without an operator needs them: Bedrock serves the seed's model only
/// through inference profiles, and without an operator to resolve `status.resolvedModelId` the
/// spec must say so itself (`inferenceProfile: geographic`, what docs/sidecar.md tells
/// standalone users to write).
pub fn without_operator(manifests: &str) -> String {
    manifests.replace(
        "  modelId: anthropic.claude-haiku-4-5-20251001-v1:0\n",
        "  modelId: anthropic.claude-haiku-4-5-20251001-v1:0\n  inferenceProfile: geographic\n",
    )
}

/// A running sidecar process.
pub struct Sidecar {
    child: Child,
    pub url: String,
    pub admin: String,
    _dir: TempDir,
}

impl Sidecar {
    /// The process id, to look at the process from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as the kubelet does, and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ai-sidecar-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `ai-sidecar --standalone` with `manifests` against `emulator`, like a pod would.
pub async fn sidecar(emulator: &Running, manifests: &str, extra_env: &[(&str, &str)]) -> Sidecar {
    start_sidecar(emulator, Some(manifests), "ai-workloads", extra_env).await
}

/// Starts `ai-sidecar` in namespace `ns`: standalone with `manifests`, or against the cluster of
/// the `KUBECONFIG` in `extra_env` when `manifests` is `None`.
pub async fn start_sidecar(
    emulator: &Running,
    manifests: Option<&str>,
    ns: &str,
    extra_env: &[(&str, &str)],
) -> Sidecar {
    start_sidecar_logging(emulator, manifests, ns, extra_env, None).await
}

/// `start_sidecar`, with its log (standard output) written to `log` when given. A sidecar that
/// exits before it is ready is started again on new ports (twice at most): another test may take
/// a port between `free_port()` and the sidecar's bind.
pub async fn start_sidecar_logging(
    emulator: &Running,
    manifests: Option<&str>,
    ns: &str,
    extra_env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Sidecar {
    for _ in 0..2 {
        if let Ok(sidecar) = try_start_sidecar(emulator, manifests, ns, extra_env, log).await {
            return sidecar;
        }
    }
    try_start_sidecar(emulator, manifests, ns, extra_env, log)
        .await
        .unwrap_or_else(|status| panic!("the sidecar exited before it was ready: {status}"))
}

async fn try_start_sidecar(
    emulator: &Running,
    manifests: Option<&str>,
    ns: &str,
    extra_env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Result<Sidecar, std::process::ExitStatus> {
    let dir = TempDir::new();
    let (port, mut admin_port) = (free_port(), free_port());
    // A test that picks the admin address reaches it on its port over 127.0.0.1.
    if let Some((_, listen)) = extra_env
        .iter()
        .find(|(k, _)| *k == "AI_SIDECAR_ADMIN_LISTEN")
    {
        admin_port = listen.rsplit(':').next().unwrap().parse().unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_ai-sidecar"));
    if let Some(manifests) = manifests {
        let config = dir.0.join("config.yaml");
        std::fs::write(&config, manifests).unwrap();
        command.args(["--standalone", "--config"]).arg(&config);
    }
    command
        .env_clear()
        .env("AI_SIDECAR_NAMESPACE", ns)
        .env("AI_SIDECAR_POD_NAME", "test-pod")
        .env("AI_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("AI_SIDECAR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("AI_SIDECAR_LOG_FORMAT", "text")
        .env("AWS_ENDPOINT_URL", emulator.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(log.map_or_else(Stdio::null, |path| {
            std::fs::File::create(path).unwrap().into()
        }))
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let mut sidecar = Sidecar {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/readyz", sidecar.admin)).await
            && r.status() == 200
        {
            break;
        }
        if let Ok(Some(status)) = sidecar.child.try_wait() {
            return Err(status);
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sidecar)
}

pub async fn emulator(config: Config) -> Running {
    Emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub async fn post(url: &str, body: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value, headers)
}

/// The exact cost of `input`/`output` tokens of Claude Haiku 4.5 through its US profile (`us.`):
/// $1.10/$5.50 per million, the list price plus the geographic profiles' 10%.
pub fn haiku_cost(input: u64, output: u64) -> Decimal {
    (Decimal::from(input) * Decimal::new(11, 1) + Decimal::from(output) * Decimal::new(55, 1))
        / Decimal::from(1_000_000)
}

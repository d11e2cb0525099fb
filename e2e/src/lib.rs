//! The end-to-end harness: one fixture that starts (or reuses) the real test control plane of
//! `e2e/cluster.sh`, runs the pinned `kubectl` against it, installs the CRDs, and gives each test a
//! namespace of its own so tests run in parallel.
#![allow(clippy::missing_panics_doc)] // a fixture that cannot start is a failed test, by design
#![allow(clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// A running test control plane.
#[derive(Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// kubectl's discovery cache, kept apart from the user's `~/.kube/cache`.
    pub cache_dir: PathBuf,
}

/// The result of a command: its exit status and its output as text.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Cluster {
    /// The shared control plane, started on first use (`e2e/cluster.sh up` is idempotent, so a
    /// cluster started by `make cluster-up` is reused), with the CRDs of `manifests/crds` installed.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let root = repo_root();
            let status = Command::new(root.join("e2e/cluster.sh"))
                .arg("up")
                .status()
                .expect("running e2e/cluster.sh up");
            assert!(
                status.success(),
                "e2e/cluster.sh up failed; see e2e/.run/apiserver.log"
            );
            let cluster = Cluster {
                kubeconfig: root.join("e2e/.run/kubeconfig"),
                kubectl: root.join("e2e/.bin/kubectl"),
                cache_dir: root.join("e2e/.run/kubectl-cache"),
            };
            cluster.kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-k",
                &path_arg(&root.join("manifests/crds")),
            ]);
            // `kubectl wait` errors out (rather than waits) while a new CRD has no conditions yet.
            wait_until("the CRDs to be Established", Duration::from_mins(1), || {
                cluster
                    .kubectl(&[
                        "wait",
                        "--for=condition=Established",
                        "crd",
                        "-l",
                        "app.kubernetes.io/part-of=k8s-ai-operator",
                        "--timeout=60s",
                    ])
                    .success
            });
            // Established comes before the group is in the published OpenAPI (what `kubectl
            // explain` reads); wait for that, then drop kubectl's discovery cache, which was
            // filled before the CRDs existed and would hide them from `explain`.
            let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
            let openapi = "/openapi/v3/apis/ai.kernelpanic09.io/v1alpha1";
            while !cluster.kubectl(&["get", "--raw", openapi]).success {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the CRDs' OpenAPI was not published within 60s"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let _ = std::fs::remove_dir_all(&cluster.cache_dir);
            cluster
        })
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_with_stdin(args, None)
    }

    /// Runs kubectl with `input` on its standard input (for `apply -f -`).
    pub fn kubectl_with_stdin(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kubectl");
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("writing to kubectl");
        }
        child
            .wait_with_output()
            .expect("waiting for kubectl")
            .into()
    }

    /// Runs kubectl and fails the test, with kubectl's own words, unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let run = self.kubectl(args);
        assert!(
            run.success,
            "kubectl {} failed:\n{}",
            args.join(" "),
            run.stderr
        );
        run.stdout
    }

    /// `kubectl apply -f -` of a YAML document.
    pub fn apply(&self, yaml: &str) -> Run {
        self.kubectl_with_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    /// A new namespace with a unique name starting with `prefix`.
    pub fn namespace(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }

    /// Creates `name` if it does not exist yet (for the seed's fixed `ai-workloads`).
    pub fn ensure_namespace(&self, name: &str) {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        let run = self.apply(&yaml);
        assert!(run.success, "creating namespace {name}: {}", run.stderr);
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub mod emulator;

/// A process started by a test, killed (SIGKILL) and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `done` holds, polling every 200 ms; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The environment that points a process at the test cluster (`kubeconfig`) and its AWS SDK at
/// the emulator at `emulator_url`, with its static test keys and no instance-metadata lookups.
pub fn test_platform_env(kubeconfig: &Path, emulator_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
        ("AWS_ENDPOINT_URL", emulator_url.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        (
            "AWS_ACCESS_KEY_ID",
            emulator::config::TEST_ACCESS_KEY_ID.to_owned(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            emulator::config::TEST_SECRET_ACCESS_KEY.to_owned(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

//! The operator's listeners answer over IPv4 and IPv6: by default they bind `[::]` with
//! IPV6_V6ONLY off, so one process serves IPv4-only, IPv6-only and dual-stack clusters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failure report

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use e2e::{Process, free_port};
use webhook_certs::{Bundle, Lifetimes};

/// Fails, never skips, on a machine without IPv6 loopback: the test would prove nothing there.
fn require_ipv6_loopback() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("this machine has no IPv6 loopback (::1: {e}): the dual-stack test cannot run here");
    }
}

/// `GET path` over plain HTTP/1.1 to `addr`: the status line and body, or `None` if not reachable.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn webhook_and_metrics_listen_on_ipv4_and_ipv6_and_that_is_the_default() {
    require_ipv6_loopback();
    let bin = env!("CARGO_BIN_EXE_k8s-ai-operator");
    let help = Command::new(bin)
        .args(["webhook", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for default in ["[default: [::]:8443]", "[default: [::]:8080]"] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }

    let bundle = Bundle::generate(
        &["127.0.0.1".to_owned()],
        SystemTime::now(),
        Lifetimes::default(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("listen-dual-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &bundle.key_pem).unwrap();
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let _operator = Process(
        Command::new(bin)
            .args(["webhook", "--cert-mode", "files"])
            .args(["--sidecar-image", "example.com/ai-sidecar:test"])
            .args(["--listen", &format!("[::]:{webhook_port}")])
            .args(["--metrics-listen", &format!("[::]:{metrics_port}")])
            .arg("--tls-cert-file")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("tls.key"))
            // No cluster: the files-mode webhook serves without one.
            .env("KUBECONFIG", dir.join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let v4: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{metrics_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(v4, "/healthz").is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "the operator's /healthz never answered on {v4}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = get(v6, "/healthz").unwrap_or_else(|| panic!("nothing listens on {v6}"));
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
    for host in ["127.0.0.1", "[::1]"] {
        let addr: SocketAddr = format!("{host}:{webhook_port}").parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "the webhook does not listen on {addr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! Shared by the sidecar's fuzz targets: the sidecar's data API in process (`--standalone` with
//! the seed's objects), in front of a fake Bedrock on loopback whose ConverseStream answer is
//! whatever the current input says. Real HTTP, real SigV4 and event-stream decoding (the
//! sidecar's Bedrock client, on the AWS crates the SDK is built on).

use std::{
    net::SocketAddr,
    sync::{LazyLock, Mutex},
};

use ai_sidecar::{api::data_router, build_state, settings::Settings};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::{
    Router,
    body::{Body, Bytes},
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use clap::Parser;
use tower::ServiceExt;

/// The body the fake Bedrock answers ConverseStream with.
static STREAM_BODY: Mutex<Bytes> = Mutex::new(Bytes::new());

/// The seed's objects, with limits no fuzzing run reaches and no budget (a refusal is not the path
/// under test).
fn config() -> String {
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/samples");
    ["guardrailpolicy.yaml", "modelendpoint.yaml", "prompttemplate.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{samples}/{f}")).expect("the seed's samples"))
        .collect::<Vec<_>>()
        .join("---\n")
        .replace("  irsaRoleArn: arn:aws:iam::123456789012:role/bedrock-invoker\n", "")
        .replace("requestsPerMinute: 60", "requestsPerMinute: 1000000")
        .replace("    daily: \"10.00\"\n", "    daily: \"1000000.00\"\n")
        .replace("    monthly: \"200.00\"\n", "    monthly: \"1000000.00\"\n")
}

pub struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

/// The seed GuardrailPolicy's PII rules (`manifests/samples/guardrailpolicy.yaml`: AWS_ACCESS_KEY
/// BLOCK, EMAIL ANONYMIZE), as the sidecar serving [`HARNESS`] applies them.
pub static SEED_PII: LazyLock<ai_sidecar::pii::PiiFilter> = LazyLock::new(|| {
    let policy = serde_json::from_value(serde_json::json!({ "piiEntities": [
        { "type": "AWS_ACCESS_KEY", "action": "BLOCK" },
        { "type": "EMAIL", "action": "ANONYMIZE" },
    ] }))
    .expect("the seed's PII rules");
    ai_sidecar::pii::PiiFilter::new(&policy).expect("a valid PII policy")
});

pub static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let bedrock = runtime.block_on(fake_bedrock());
    let dir = std::env::temp_dir().join(format!("k8s-ai-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let config_file = dir.join("sidecar.yaml");
    std::fs::write(&config_file, config()).expect("the config file");
    // SAFETY: set once, before the sidecar (and its AWS SDK) starts reading the environment.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://{bedrock}"));
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAFUZZFUZZFUZZFUZZ");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "fuzz/fuzz/fuzz/fuzz/fuzz/fuzz/fuzz/fuzz");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_MAX_ATTEMPTS", "1");
    }
    let settings = Settings::try_parse_from([
        "ai-sidecar",
        "--standalone",
        "--config",
        config_file.to_str().expect("a UTF-8 temp path"),
        "--namespace",
        "ai-workloads",
        "--endpoints",
        "claude-haiku",
        "--max-body-bytes",
        "65536",
        "--upstream-timeout",
        "5s",
    ])
    .expect("the settings");
    let state = runtime.block_on(build_state(settings)).expect("the sidecar's state");
    Harness { router: data_router(state), runtime }
});

/// A Converse answer, and ConverseStream answering with `STREAM_BODY`.
async fn fake_bedrock() -> SocketAddr {
    let converse = || async {
        let answer = serde_json::json!({
            "output": { "message": { "role": "assistant", "content": [ { "text": "An answer." } ] } },
            "stopReason": "end_turn",
            "usage": { "inputTokens": 12, "outputTokens": 3, "totalTokens": 15 },
            "metrics": { "latencyMs": 1 },
        });
        ([(header::CONTENT_TYPE, "application/json")], answer.to_string())
    };
    let stream = || async {
        let body = STREAM_BODY.lock().map(|b| b.clone()).unwrap_or_default();
        (
            [(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")],
            body,
        )
    };
    let app = Router::new()
        .route("/model/{id}/converse", post(converse))
        .route("/model/{id}/converse-stream", post(stream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

impl Harness {
    /// Sends one request to the sidecar's data API; the answer's status and whole body.
    pub fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Option<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .ok()?;
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response: Response = router.oneshot(request).await.into_response();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 16 << 20).await.ok()?;
            Some((status, body))
        })
    }

    /// Makes the fake Bedrock answer the next ConverseStream calls with `body`.
    pub fn set_stream_body(&self, body: Vec<u8>) {
        if let Ok(mut slot) = STREAM_BODY.lock() {
            *slot = Bytes::from(body);
        }
    }
}

/// Checks an error answer is the documented JSON error with a stable code; never a 500.
pub fn check_answer(status: StatusCode, body: &[u8]) {
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "a 500: {}", String::from_utf8_lossy(body));
    if status.is_client_error() || status.is_server_error() {
        if status == StatusCode::METHOD_NOT_ALLOWED && body.is_empty() {
            return;
        }
        let error: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
        // Bedrock's routes answer `{"message"}` (the code in a header), Anthropic's route
        // `{"type": "error", "error": {"type", "message"}}`; ours `{"error": {"code", "message"}}`.
        // Either way the message starts with, or the body carries, a stable snake_case code.
        let (code, message) = if let Some(message) = error["message"].as_str() {
            (message.split(':').next().unwrap_or_default(), message)
        } else if error["type"] == "error" {
            let message = error["error"]["message"].as_str().expect("error.message");
            (message.split(':').next().unwrap_or_default(), message)
        } else {
            let code = error["error"]["code"].as_str().expect("error.code");
            (code, error["error"]["message"].as_str().expect("error.message"))
        };
        assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "code {code:?}");
        assert!(!message.is_empty() && message.len() <= 1200, "message {message:?}");
    }
}

/// One event-stream frame as Bedrock sends it: `:event-type` names the ConverseStream member.
pub fn frame(event_type: &str, payload: &serde_json::Value, out: &mut Vec<u8>) {
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(":event-type", HeaderValue::String(event_type.to_owned().into())))
        .add_header(Header::new(":content-type", HeaderValue::String("application/json".into())))
        .add_header(Header::new(":message-type", HeaderValue::String("event".into())));
    aws_smithy_eventstream::frame::write_message_to(&message, out).expect("a frame");
}

/// The `data:` payloads of a `text/event-stream` body, by event name (`message` when unnamed).
/// Panics on anything that is not well-formed SSE.
pub fn sse_events(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).expect("an SSE body is UTF-8");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let (mut name, mut data) = ("message".to_owned(), Vec::new());
        for line in block.split('\n') {
            if let Some(v) = line.strip_prefix("event: ") {
                v.clone_into(&mut name);
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            } else if line.starts_with(':') {
                // a keep-alive comment
            } else {
                panic!("not an SSE line: {line:?}");
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}


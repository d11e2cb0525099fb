//! The sidecar's data API with hostile requests: `/invoke`, `/render`, the OpenAI, Anthropic and
//! Bedrock routes and any path, through the real router, Bedrock client and a fake Bedrock on
//! loopback. Never a panic or a 500; every error is the documented JSON with a stable code; a
//! stream is well-formed SSE or event-stream frames.
#![no_main]

use k8s_ai_fuzz::{HARNESS, check_answer, sse_events};
use libfuzzer_sys::fuzz_target;

/// The routes a first byte picks; 0xff takes the path from the input instead (up to a newline).
const ROUTES: [(&str, &str); 14] = [
    ("POST", "/invoke/ai-workloads/claude-haiku"),
    ("POST", "/render/ai-workloads/code-review"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("POST", "/invoke/kube-system/claude-haiku"),
    ("POST", "/render/ai-workloads/no-such-template"),
    ("POST", "/invoke/ai-workloads/no-such-endpoint"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/embeddings"),
    ("POST", "/model/claude-haiku/converse"),
    ("POST", "/model/claude-haiku/converse-stream"),
    ("POST", "/model/claude-haiku/invoke"),
    ("POST", "/model/claude-haiku/invoke-with-response-stream"),
    ("POST", "/model/claude-haiku/count-tokens"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (method, path, body) = if selector == 0xff {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let path = String::from_utf8_lossy(&rest[..split]).into_owned();
        ("POST", path, rest.get(split + 1..).unwrap_or_default())
    } else {
        let (method, path) = ROUTES[usize::from(selector) % ROUTES.len()];
        (method, path.to_owned(), rest)
    };
    let Some((status, answer)) = HARNESS.send(method, &path, body.to_vec()) else { return };
    check_answer(status, &answer);
    if status.is_success() && (answer.starts_with(b"event: ") || answer.starts_with(b"data: ")) {
        let events = sse_events(&answer);
        assert!(!events.is_empty(), "an empty stream");
    } else if status.is_success() && path.ends_with("-stream") {
        // Bedrock's stream: whole, CRC-checked frames and nothing else.
        let mut rest = &answer[..];
        while !rest.is_empty() {
            aws_smithy_eventstream::frame::read_message_from(&mut rest).expect("an event-stream frame");
        }
    } else if status.is_success() {
        serde_json::from_slice::<serde_json::Value>(&answer).expect("a JSON answer");
    }
});

//! Bedrock's ConverseStream answer, from well-formed event-stream frames (cut anywhere) to raw
//! bytes, decoded by the AWS SDK and re-encoded by the sidecar as Server-Sent Events on both the
//! seed's `/invoke` and the OpenAI route. Never a panic; the SSE is well-formed and ends with one
//! final event; nothing the app receives is still PII by the seed's filter; for whole frames of
//! an answer shorter than the PII hold-back, the app receives exactly the text Bedrock sent after
//! that filter (emails masked; nothing at all of an answer with an AWS key).
#![no_main]

use k8s_ai_fuzz::{HARNESS, frame, sse_events};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let [mode, cut, rest @ ..] = data else { return };
    let (frames, truncate, openai) = (mode & 1 == 0, mode & 2 != 0, mode & 4 != 0);
    let mut body = Vec::new();
    let mut expected = None;
    if frames {
        // Text deltas split where the input has NULs, then the end of the message and its usage.
        let text = String::from_utf8_lossy(rest);
        frame("messageStart", &json!({ "role": "assistant" }), &mut body);
        for piece in text.split('\0') {
            let delta = json!({ "contentBlockIndex": 0, "delta": { "text": piece } });
            frame("contentBlockDelta", &delta, &mut body);
        }
        frame("contentBlockStop", &json!({ "contentBlockIndex": 0 }), &mut body);
        frame("messageStop", &json!({ "stopReason": "end_turn" }), &mut body);
        let usage = json!({ "inputTokens": 5, "outputTokens": 7, "totalTokens": 12 });
        frame("metadata", &json!({ "usage": usage, "metrics": { "latencyMs": 1 } }), &mut body);
        if truncate {
            body.truncate(body.len() * usize::from(*cut) / 256);
        } else {
            expected = Some(text.replace('\0', ""));
        }
    } else {
        body = rest.to_vec();
    }
    HARNESS.set_stream_body(body);
    let (path, request) = if openai {
        ("/v1/chat/completions", json!({ "model": "claude-haiku", "stream": true,
            "messages": [ { "role": "user", "content": "hi" } ] }))
    } else {
        ("/invoke/ai-workloads/claude-haiku", json!({ "stream": true,
            "messages": [ { "role": "user", "content": "hi" } ] }))
    };
    let Some((status, answer)) = HARNESS.send("POST", path, request.to_string().into_bytes()) else {
        return;
    };
    if !status.is_success() {
        // Refused before the first byte (e.g. Bedrock's answer was not an event stream at all).
        k8s_ai_fuzz::check_answer(status, &answer);
        return;
    }
    let events = sse_events(&answer);
    let mut received = String::new();
    if openai {
        let (last, chunks) = events.split_last().expect("at least [DONE]");
        assert_eq!(last.1, "[DONE]", "an OpenAI stream ends with [DONE]");
        for (_, data) in chunks {
            let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                received.push_str(text);
            }
        }
    } else {
        let (last, deltas) = events.split_last().expect("a final event");
        assert!(last.0 == "done" || last.0 == "error", "the last event is {:?}", last.0);
        let last: Value = serde_json::from_str(&last.1).expect("a JSON final event");
        if last.get("error").is_some() {
            assert!(last["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
        } else {
            assert!(last["costUSD"].as_str().is_some(), "the done event carries the cost");
        }
        for (name, data) in deltas {
            assert_eq!(name, "delta", "only deltas before the final event");
            let delta: Value = serde_json::from_str(data).expect("a JSON delta");
            received.push_str(delta["text"].as_str().expect("a delta's text"));
        }
    }
    // Whatever left the pod passed the seed's PII filter: nothing in it is still PII.
    assert!(
        matches!(k8s_ai_fuzz::SEED_PII.apply(&received), Ok(std::borrow::Cow::Borrowed(_))),
        "PII reached the app: {received:?}"
    );
    if let Some(expected) = expected.filter(|e| e.len() <= ai_sidecar::pii::STREAM_HOLD_BACK) {
        match k8s_ai_fuzz::SEED_PII.apply(&expected) {
            Ok(filtered) => {
                assert_eq!(received, filtered, "the app received other text than Bedrock sent");
            }
            Err(_) => assert_eq!(received, "", "an answer with a blocked entity leaves nothing"),
        }
    }
});

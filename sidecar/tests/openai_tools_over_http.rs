//! Tool calling on the OpenAI route, over HTTP against the emulator: the wire shapes OpenAI's
//! clients read (whole and streamed), the round trip of a call and its result, what is refused,
//! and the exact cost of each call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::*;
use e2e::emulator::config::Config;
use serde_json::{Value, json};

fn weather_tool() -> Value {
    json!([{ "type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" }, "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] } }, "required": ["city", "unit"] }
    } }])
}

/// The cost counted on the metrics page.
async fn counted_cost(admin: &str) -> f64 {
    let page = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .filter(|l| l.starts_with("k8s_ai_operator_bedrock_invocation_cost_dollars_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_tool_call_and_its_result_make_a_round_trip_charged_exactly() {
    let emu = emulator(Config::default()).await;
    let sc = sidecar(&emu, &seed_with_static_keys(), &[]).await;
    let url = format!("{}/v1/chat/completions", sc.url);

    // Turn 1: the model calls the tool.
    let question = json!({ "role": "user", "content": "What is get_weather in Paris?" });
    let body = json!({ "model": "claude-haiku", "messages": [question], "tools": weather_tool() });
    let (status, v, _) = post(&url, &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["unit"], "celsius", "{arguments}");
    assert!(arguments["city"].is_string(), "{arguments}");
    assert_eq!(choice["message"]["content"], "Calling get_weather.");

    // Turn 2: the app sends the call back with its result; the model answers from the result.
    let body = json!({ "model": "claude-haiku", "tools": weather_tool(), "messages": [
        question,
        choice["message"],
        { "role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 degrees" },
    ] });
    let (status, v, _) = post(&url, &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["content"], "Sunny, 21 degrees");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());

    // Both calls are charged what Bedrock counted, tools' prompt and definitions included.
    let calls: Vec<_> = emu
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == "Converse")
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|r| r.error.is_none()));
    assert!(
        calls[0].input_tokens > 346,
        "the tool-use system prompt is billed: {:?}",
        calls[0]
    );
    let expected: f64 = calls
        .iter()
        .map(|r| {
            haiku_cost(r.input_tokens, r.output_tokens)
                .to_string()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    let counted = counted_cost(&sc.admin).await;
    assert!(
        (counted - expected).abs() < 1e-12,
        "counted {counted}, Bedrock's count {expected}"
    );
}

#[tokio::test]
async fn streamed_tool_calls_are_indexed_from_zero_and_carry_their_arguments() {
    let emu = emulator(Config::default()).await;
    let sc = sidecar(&emu, &seed_with_static_keys(), &[]).await;
    let tools = json!([
        weather_tool()[0],
        { "type": "function", "function": { "name": "get_time", "parameters": { "type": "object", "properties": { "zone": { "type": "string" } } } } }
    ]);
    let body = json!({ "model": "claude-haiku", "stream": true, "tools": tools,
        "messages": [{ "role": "user", "content": "get_weather and get_time for Oslo" }] });
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", sc.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Accumulate as OpenAI's SDKs do: by `index`, the first chunk of a call naming it.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut content = String::new();
    let mut finish = None;
    for chunk in &chunks {
        let choice = &chunk["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = usize::try_from(delta["index"].as_u64().unwrap()).unwrap();
            if index == calls.len() {
                calls.push((
                    delta["id"].as_str().unwrap().to_owned(),
                    delta["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            }
            assert!(index < calls.len(), "index {index} skips ahead: {chunk}");
            calls[index].2 += delta["function"]["arguments"].as_str().unwrap();
        }
    }
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(content, "Calling get_weather and get_time.");
    assert_eq!(calls.len(), 2, "{text}");
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(calls[1].1, "get_time");
    assert_ne!(calls[0].0, calls[1].0);
    for (_, name, arguments) in &calls {
        let parsed: Value = serde_json::from_str(arguments).unwrap();
        assert!(parsed.is_object(), "{name}: {arguments}");
    }
}

#[tokio::test]
async fn tool_requests_bedrock_would_refuse_are_refused_here_first() {
    let emu = emulator(Config::default()).await;
    let sc = sidecar(&emu, &seed_with_static_keys(), &[]).await;
    let url = format!("{}/v1/chat/completions", sc.url);
    let user = json!({ "role": "user", "content": "hello" });
    let call = json!({ "role": "assistant", "content": null, "tool_calls": [
        { "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}" } }
    ] });
    let result = json!({ "role": "tool", "tool_call_id": "call_1", "content": "Rain" });
    for (what, body, code, names) in [
        (
            "tool_choice without tools",
            json!({ "messages": [user], "tool_choice": "required" }),
            "invalid_request",
            "tool_choice",
        ),
        (
            "an unknown named tool",
            json!({ "messages": [user], "tools": weather_tool(), "tool_choice": { "type": "function", "function": { "name": "nope" } } }),
            "invalid_request",
            "nope",
        ),
        (
            "a bad tool name",
            json!({ "messages": [user], "tools": [{ "type": "function", "function": { "name": "get weather" } }] }),
            "invalid_request",
            "tools[0].function.name",
        ),
        (
            "a schema that is not an object",
            json!({ "messages": [user], "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "string" } } }] }),
            "invalid_request",
            "parameters",
        ),
        (
            "parallel_tool_calls: false",
            json!({ "messages": [user], "tools": weather_tool(), "parallel_tool_calls": false }),
            "unsupported_parameter",
            "parallel_tool_calls",
        ),
        (
            "a tool history without tools",
            json!({ "messages": [user, call, result] }),
            "invalid_request",
            "tools is empty",
        ),
        (
            "arguments that are not JSON",
            json!({ "tools": weather_tool(), "messages": [user, { "role": "assistant", "tool_calls": [{ "id": "c", "type": "function", "function": { "name": "get_weather", "arguments": "{city" } }] }] }),
            "invalid_request",
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            "a tool message without its call's id",
            json!({ "tools": weather_tool(), "messages": [user, call, { "role": "tool", "content": "Rain" }] }),
            "invalid_request",
            "tool_call_id",
        ),
    ] {
        let mut body = body;
        body["model"] = json!("claude-haiku");
        let (status, v, _) = post(&url, &body.to_string()).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(names),
            "{what}: {v}"
        );
    }
    assert!(
        emu.emulator.requests().is_empty(),
        "nothing refused reached Bedrock"
    );

    // tool_choice "none" offers no tool; with a tool history Bedrock still needs the tools.
    let none = json!({ "model": "claude-haiku", "tools": weather_tool(), "tool_choice": "none",
        "messages": [{ "role": "user", "content": "get_weather in Oslo?" }] });
    let (status, v, _) = post(&url, &none.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let mut with_history = none.clone();
    with_history["messages"] = json!([user, call, result]);
    let (status, v, _) = post(&url, &with_history.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Rain");
}

//! PromptTemplate compile and render with hostile templates and variables: never a panic, and a
//! render stays within its output bound (`MAX_RENDERED_BYTES`).
#![no_main]

use k8s_ai_api::{PromptTemplateSpec, template::{CompiledTemplate, MAX_RENDERED_BYTES}};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input is a template, then NUL, then a JSON object of variables.
    let text = String::from_utf8_lossy(data);
    let (template, variables) = text.split_once('\0').unwrap_or((&text, "{}"));
    let spec: PromptTemplateSpec = match serde_json::from_value(serde_json::json!({
        "template": template,
        "systemPrompt": template.chars().rev().collect::<String>(),
        "variables": [
            { "name": "Diff", "type": "string", "required": true },
            { "name": "Focus", "type": "string", "default": "security" },
            { "name": "Items", "type": "array" },
            { "name": "Count", "type": "number" },
        ],
    })) {
        Ok(spec) => spec,
        Err(_) => return,
    };
    let Ok(compiled) = CompiledTemplate::compile(&spec) else { return };
    let variables = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(variables)
        .unwrap_or_default();
    if let Ok(rendered) = compiled.render(&variables) {
        assert!(rendered.prompt.len() <= MAX_RENDERED_BYTES);
    }
});

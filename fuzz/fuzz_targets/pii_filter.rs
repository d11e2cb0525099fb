//! The local PII filter on arbitrary text, with every entity type the sidecar detects (half BLOCK,
//! half ANONYMIZE) and custom regexes: never a panic, bounded time per KiB; anonymised output never
//! keeps a blocked match.
#![no_main]

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use ai_sidecar::pii::{PiiFilter, detected_types};
use k8s_ai_api::guardrail_policy::SensitiveInformationPolicy;
use libfuzzer_sys::fuzz_target;

static FILTERS: LazyLock<(PiiFilter, PiiFilter)> = LazyLock::new(|| {
    let policy = |action: &str| -> SensitiveInformationPolicy {
        let entities: Vec<_> = detected_types()
            .iter()
            .map(|t| serde_json::json!({ "type": t, "action": action }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "piiEntities": entities,
            "regexes": [
                { "name": "ticket", "pattern": "TICKET-[0-9]{4,8}", "action": action },
                { "name": "nested", "pattern": "(a+)+b", "action": action },
            ],
        }))
        .expect("a valid policy")
    };
    (
        PiiFilter::new(&policy("BLOCK")).expect("compiles"),
        PiiFilter::new(&policy("ANONYMIZE")).expect("compiles"),
    )
});

/// Time allowed per KiB of text, with a floor: linear-time regexes stay far below it even under
/// AddressSanitizer; catastrophic backtracking or a quadratic scan would not.
const BUDGET_PER_KIB: Duration = Duration::from_millis(100);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (block, anonymize) = &*FILTERS;
    let started = Instant::now();
    let blocked = block.apply(&text).is_err();
    let budget = BUDGET_PER_KIB * u32::try_from(text.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    assert!(started.elapsed() <= budget, "{:?} for {} bytes", started.elapsed(), text.len());
    match anonymize.apply(&text) {
        Ok(out) => {
            // What the blocking filter found, the anonymising one replaced.
            if blocked {
                assert!(block.apply(&out).is_err() || out != text);
            }
        }
        Err(_) => unreachable!("ANONYMIZE never blocks"),
    }
});

//! The workflow validator (`workflow.submit` params): a workflow or -32602, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sqs_scheduler::domain::MaxAttempts;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(wf) = sqs_scheduler::workflow::parse_submit(Some(v), MaxAttempts::default(), 262_144) {
            assert!(!wf.stages.is_empty());
            assert!(sqs_scheduler::workflow::find_cycle(&wf.stages).is_none());
        }
    }
});

//! The inbound queue's parser: any message body gives submissions or errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sqs_scheduler::domain::MaxAttempts;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        for (entry, parsed) in sqs_scheduler::protocol::parse_submissions(body, 262_144, MaxAttempts::default()) {
            // A batch entry's JSON is kept for its dead letter: it must be JSON again.
            if let Some(e) = entry {
                serde_json::from_str::<serde_json::Value>(&e).expect("an entry re-serialises as JSON");
            }
            if let Ok(task) = parsed {
                assert!(sqs_scheduler::protocol::outbound_size(&task) <= 262_144);
            }
        }
    }
});

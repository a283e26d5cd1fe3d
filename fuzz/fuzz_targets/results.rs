//! The results queue's parser (and the outbound task parser workers use): errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        for (_, r) in sqs_scheduler::protocol::parse_results(body, 262_144) {
            if let Ok(r) = r {
                // What was parsed can be written and read back.
                let again = sqs_scheduler::protocol::result_body(&r);
                assert!(sqs_scheduler::protocol::parse_result(&again, usize::MAX).is_ok());
            }
        }
        let _ = sqs_scheduler::protocol::TaskRequest::parse_many(body, 262_144);
    }
});

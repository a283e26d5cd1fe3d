//! The cron expression and time-zone parser: the first line is the expression, the rest the zone.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (expr, tz) = s.split_once('\n').unwrap_or((s, "UTC"));
        if let Ok(c) = sqs_scheduler::schedules::CronExpr::parse(expr, tz) {
            let now = chrono::Utc::now();
            if let Some(next) = c.next_after(now) {
                assert!(next > now);
                let _ = c.plan(next, next + chrono::Duration::days(400));
            }
        }
    }
});

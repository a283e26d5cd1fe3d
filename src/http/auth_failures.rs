//! Failed logins to `/rpc`: counted by reason in `scheduler_http_auth_failures_total`, logged with the peer's
//! address (at most one line per [`LOG_EVERY`], with how many were not logged), never with the token.

use crate::http::auth::Denied;
use crate::metrics::metrics;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every reason label, for labelling the counter up front.
pub const REASONS: [&str; 4] = ["missing_token", "malformed_header", "wrong_token", "forbidden"];
/// Log lines about failed logins at most this often (a flood of bad tokens must not flood the log).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

static LOG: Mutex<LogState> = Mutex::new(LogState { last: None, suppressed: 0 });

/// Why a refused request was refused, from its `Authorization` header (never looked at beyond its scheme).
pub fn reason(denied: Denied, authorization: Option<&[u8]>) -> &'static str {
    match (denied, authorization) {
        (Denied::Forbidden, _) => "forbidden",
        (Denied::Unauthorized, None) => "missing_token",
        (Denied::Unauthorized, Some(h)) if h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ") => "wrong_token",
        (Denied::Unauthorized, Some(_)) => "malformed_header",
    }
}

/// Counts one refused request and logs it unless a line was written less than [`LOG_EVERY`] ago.
pub fn record(denied: Denied, authorization: Option<&[u8]>, peer: Option<SocketAddr>) {
    let reason = reason(denied, authorization);
    metrics().auth_failures.with_label_values(&[reason]).inc();
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
        log.suppressed += 1;
        return;
    }
    let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into());
    tracing::warn!(%peer, reason, not_logged_since_last = log.suppressed, "refused a request to /rpc");
    log.last = Some(Instant::now());
    log.suppressed = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_never_depend_on_the_token() {
        assert_eq!(reason(Denied::Unauthorized, None), "missing_token");
        assert_eq!(reason(Denied::Unauthorized, Some(b"Basic abc")), "malformed_header");
        assert_eq!(reason(Denied::Unauthorized, Some(b"Bearer nope")), "wrong_token");
        assert_eq!(reason(Denied::Forbidden, None), "forbidden");
    }
}

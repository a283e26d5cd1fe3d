//! Circuit breaker in front of the database, for the queue-consuming commit stages. While commits fail for
//! transient reasons (database down, restarting, unreachable), their pollers stop receiving: every receive counts
//! towards the queue's maxReceiveCount, so receiving during an outage would redrive valid messages to the DLQs.
//! Open after `FAILURES_TO_OPEN` transient failures in a row. While open, a poller probes the database itself (a
//! fresh connection, `SELECT 1`) after a delay that doubles up to `MAX_OPEN` — never by receiving messages, so an
//! outage of any length costs no message a receive. A probe or a commit that succeeds closes it. `/readyz`
//! reports an open breaker.

use crate::metrics::metrics;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Transient commit failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
const FIRST_OPEN: Duration = Duration::from_millis(500);
const MAX_OPEN: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Set while open: receives wait until then, then one probe goes through.
    open_until: Option<Instant>,
    opened_at: Option<Instant>,
    delay: Duration,
    last_error: String,
}

/// One per process (per database); cheap to clone.
#[derive(Clone, Default)]
pub struct Breaker(Arc<Mutex<State>>);

static BREAKERS: Mutex<Vec<Weak<Mutex<State>>>> = Mutex::new(Vec::new());

impl Breaker {
    pub fn new() -> Breaker {
        let b = Breaker::default();
        BREAKERS.lock().unwrap().push(Arc::downgrade(&b.0));
        b
    }

    /// A commit succeeded: close.
    pub fn success(&self) {
        let mut s = self.0.lock().unwrap();
        if s.opened_at.is_some() {
            let open_for = s.opened_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or_default();
            tracing::info!(open_secs = open_for, "database reachable again: circuit closed, receiving again");
            metrics().breaker_open.set(0);
        }
        *s = State::default();
    }

    /// A commit failed for a transient reason. While the breaker is open this changes nothing but the reason:
    /// such failures come from batches received before it opened (several pollers, pipelined batches), and
    /// letting each of them double the wait would keep the pollers off a database that is already back for up
    /// to `MAX_OPEN`. Only a failed probe lengthens the wait.
    pub fn failure(&self, error: &str) {
        let mut s = self.0.lock().unwrap();
        s.last_error = error.to_owned();
        if s.opened_at.is_some() {
            return;
        }
        s.failures += 1;
        if s.failures < FAILURES_TO_OPEN {
            return;
        }
        s.delay = FIRST_OPEN;
        s.opened_at = Some(Instant::now());
        s.open_until = Some(Instant::now() + s.delay);
        metrics().breaker_opened.inc();
        metrics().breaker_open.set(1);
        tracing::error!(error, "database unavailable: circuit open, pollers stop receiving until it recovers");
    }

    /// The probe a [`Gate::Probe`] asked for failed: wait twice as long (up to `MAX_OPEN`) before the next one.
    pub fn probe_failed(&self, error: &str) {
        let mut s = self.0.lock().unwrap();
        s.last_error = error.to_owned();
        if s.opened_at.is_none() {
            return; // a commit succeeded meanwhile: closed
        }
        s.delay = (s.delay * 2).min(MAX_OPEN);
        s.open_until = Some(Instant::now() + s.delay);
    }

    /// What a poller must do before it receives.
    pub fn gate(&self) -> Gate {
        let mut s = self.0.lock().unwrap();
        match s.open_until {
            None => Gate::Receive,
            Some(t) => {
                let now = Instant::now();
                if t > now {
                    Gate::Wait(t - now)
                } else {
                    // This caller probes; the others wait for its outcome (or the next delay).
                    s.open_until = Some(now + s.delay);
                    Gate::Probe
                }
            }
        }
    }

    /// Why it is open, if it is.
    pub fn open_reason(&self) -> Option<String> {
        let s = self.0.lock().unwrap();
        s.opened_at.map(|t| format!("open for {:.0} s: {}", t.elapsed().as_secs_f64(), s.last_error))
    }
}

/// The answer of [`Breaker::gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: receive.
    Receive,
    /// Open: wait this long, then ask again.
    Wait(Duration),
    /// Open, and a probe is due: check the database, report with `success` or `probe_failed`, then ask again.
    Probe,
}

/// Why some breaker of this process is open, if one is (for `/readyz`).
pub fn any_open() -> Option<String> {
    let mut all = BREAKERS.lock().unwrap();
    all.retain(|w| w.strong_count() > 0);
    all.iter().filter_map(|w| w.upgrade()).find_map(|s| Breaker(s).open_reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(b: &Breaker) -> Duration {
        b.0.lock().unwrap().delay
    }

    #[test]
    fn opens_after_failures_in_a_row_and_a_success_closes_it() {
        let b = Breaker::default();
        b.failure("x");
        b.success();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.failure("x");
        }
        assert_eq!(b.gate(), Gate::Receive, "a success in between resets the count");
        b.failure("down");
        assert!(matches!(b.gate(), Gate::Wait(_)));
        assert!(b.open_reason().unwrap().contains("down"));
        b.success();
        assert_eq!(b.gate(), Gate::Receive);
        assert!(b.open_reason().is_none());
    }

    #[test]
    fn only_failed_probes_lengthen_the_wait() {
        let b = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            b.failure("x");
        }
        assert_eq!(delay(&b), FIRST_OPEN);
        // Batches received before it opened keep failing: the wait stays as it is.
        for _ in 0..20 {
            b.failure("late");
        }
        assert_eq!(delay(&b), FIRST_OPEN);
        assert!(matches!(b.gate(), Gate::Wait(w) if w <= FIRST_OPEN));
        b.probe_failed("still down");
        assert_eq!(delay(&b), FIRST_OPEN * 2);
        for _ in 0..10 {
            b.probe_failed("still down");
        }
        assert_eq!(delay(&b), MAX_OPEN);
    }

    #[test]
    fn a_due_probe_goes_to_one_caller() {
        let b = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            b.failure("x");
        }
        b.0.lock().unwrap().open_until = Some(Instant::now());
        assert_eq!(b.gate(), Gate::Probe);
        assert!(matches!(b.gate(), Gate::Wait(_)), "the others wait for its outcome");
    }
}

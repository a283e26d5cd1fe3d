//! The restart policy of a supervisor: exponential backoff per child (Akka's BackoffSupervisor) and a restart
//! intensity for the supervisor as a whole (Erlang/OTP's `intensity` within `period`).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `[supervision]`: how stages and roles are restarted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionSettings {
    /// Delay before the first restart of a child that failed (ms); doubles with each further failure.
    pub initial_backoff_ms: u64,
    /// Upper bound of the restart delay (ms).
    pub max_backoff_ms: u64,
    /// A child that ran this long without failing starts again from the initial delay (seconds).
    pub reset_after_secs: f64,
    /// A role's supervisor restarts its stages at most this many times within `period_secs`; one more failure
    /// and it gives up: the root restarts the whole role.
    pub max_restarts: usize,
    /// The window of `max_restarts` (seconds).
    pub period_secs: f64,
    /// The root restarts roles at most this many times within `root_period_secs`; one more and the process
    /// exits non-zero, for its orchestrator (compose, systemd, Kubernetes) to restart.
    pub root_max_restarts: usize,
    /// The window of `root_max_restarts` (seconds).
    pub root_period_secs: f64,
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
            reset_after_secs: 60.0,
            max_restarts: 5,
            period_secs: 60.0,
            root_max_restarts: 3,
            root_period_secs: 300.0,
        }
    }
}

impl SupervisionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err("supervision: need 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        for (key, v) in [
            ("reset_after_secs", self.reset_after_secs),
            ("period_secs", self.period_secs),
            ("root_period_secs", self.root_period_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("supervision.{key}: must be a positive number of seconds"));
            }
        }
        Ok(())
    }

    /// The policy of a role's supervisor (over its stages).
    pub fn role_policy(&self) -> RestartPolicy {
        RestartPolicy::new(self, self.max_restarts, self.period_secs)
    }

    /// The policy of the root (over the roles).
    pub fn root_policy(&self) -> RestartPolicy {
        RestartPolicy::new(self, self.root_max_restarts, self.root_period_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub reset_after: Duration,
    pub max_restarts: usize,
    pub period: Duration,
}

impl RestartPolicy {
    fn new(s: &SupervisionSettings, max_restarts: usize, period_secs: f64) -> Self {
        Self {
            initial_backoff: Duration::from_millis(s.initial_backoff_ms),
            max_backoff: Duration::from_millis(s.max_backoff_ms),
            reset_after: Duration::from_secs_f64(s.reset_after_secs),
            max_restarts,
            period: Duration::from_secs_f64(period_secs),
        }
    }

    /// The delay before restarting a child that failed for the `failures`-th time in a row (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self.initial_backoff.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max_backoff)
    }
}

/// Restarts within the policy's period: Erlang's restart intensity.
#[derive(Debug, Default)]
pub struct Intensity {
    restarts: VecDeque<Instant>,
}

impl Intensity {
    /// Records a failure now; false when it is one more than the policy allows (the supervisor must give up).
    pub fn allow(&mut self, policy: &RestartPolicy, now: Instant) -> bool {
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > policy.period) {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() <= policy.max_restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let p =
            SupervisionSettings { initial_backoff_ms: 100, max_backoff_ms: 1_000, ..Default::default() }.role_policy();
        let d: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn intensity_allows_max_restarts_within_the_period() {
        let p = SupervisionSettings { max_restarts: 2, period_secs: 10.0, ..Default::default() }.role_policy();
        let mut i = Intensity::default();
        let t = Instant::now();
        assert!(i.allow(&p, t));
        assert!(i.allow(&p, t + Duration::from_secs(1)));
        assert!(!i.allow(&p, t + Duration::from_secs(2)), "a third within 10 s is one too many");
        let mut i = Intensity::default();
        assert!(i.allow(&p, t));
        assert!(i.allow(&p, t + Duration::from_secs(1)));
        assert!(i.allow(&p, t + Duration::from_secs(12)), "the first fell out of the window");
    }
}

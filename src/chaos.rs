//! Fault injection (the original's "monkey"): each stage fails at random with its configured probability, to
//! prove that retries, fencing and idempotency hold. Off by default.

use crate::configuration::ChaosSettings;
use crate::metrics::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Persister,
    Acquirer,
    Worker,
    ResultSink,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Persister => "persister",
            Stage::Acquirer => "acquirer",
            Stage::Worker => "worker",
            Stage::ResultSink => "result_sink",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chaos {
    settings: ChaosSettings,
}

impl Chaos {
    pub fn new(settings: ChaosSettings) -> Self {
        Self { settings }
    }

    fn rate(&self, stage: Stage) -> f64 {
        let s = &self.settings;
        match stage {
            Stage::Persister => s.persister,
            Stage::Acquirer => s.acquirer,
            Stage::Worker => s.worker,
            Stage::ResultSink => s.result_sink,
        }
        .unwrap_or(s.error_rate)
    }

    /// True when this stage should fail now; counted in `scheduler_chaos_injected_total`.
    pub fn strike(&self, stage: Stage) -> bool {
        let rate = self.rate(stage);
        let hit = rate > 0.0 && rand::random::<f64>() < rate;
        if hit {
            metrics().chaos_injected.with_label_values(&[stage.as_str()]).inc();
        }
        hit
    }
}

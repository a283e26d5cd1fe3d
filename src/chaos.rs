//! Fault injection (the original's "monkey"), as decorators: [`ChaosTransport`] around the transport and
//! [`ChaosCommit`] around a commit stage's statement. Each reports a failure after the real operation succeeded —
//! the nastiest kind, where the effect happened but its author believes it did not — so retries, fencing and
//! idempotency must hold. Stage code knows nothing of it. Off by default.
//!
//! - persister, result_sink: the statement committed, its reply is "lost" (the batch is retried or redelivered);
//! - acquirer: an outbound send went out but "failed" (the task is released and sent again);
//! - worker: a result went out but "failed" (the outbound message is not deleted: the task runs again).

use crate::metrics::metrics;
use crate::store::{Commit, StoreError};
use crate::transport::{Message, Queue, Transport, TransportResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
    fn strike(&self, stage: Stage) -> bool {
        let rate = self.rate(stage);
        let hit = rate > 0.0 && rand::random::<f64>() < rate;
        if hit {
            metrics().chaos_injected.with_label_values(&[stage.as_str()]).inc();
        }
        hit
    }

    fn any(&self) -> bool {
        [Stage::Persister, Stage::Acquirer, Stage::Worker, Stage::ResultSink].iter().any(|s| self.rate(*s) > 0.0)
    }

    /// The transport, decorated when chaos is configured for the acquirer or the worker.
    pub fn around_transport(&self, inner: Arc<dyn Transport>) -> Arc<dyn Transport> {
        if self.any() {
            Arc::new(ChaosTransport { inner, chaos: self.clone() })
        } else {
            inner
        }
    }

    /// A commit stage's statement, decorated (a pass-through when this stage has no chaos).
    pub fn around_commit<C: Commit>(&self, inner: C, stage: Stage) -> ChaosCommit<C> {
        ChaosCommit { inner, chaos: self.clone(), stage }
    }
}

/// The statement runs; then, now and then, its reply is "lost".
pub struct ChaosCommit<C> {
    inner: C,
    chaos: Chaos,
    stage: Stage,
}

#[async_trait(?Send)]
impl<C: Commit> Commit for ChaosCommit<C> {
    type Item = C::Item;
    type Output = C::Output;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn commit(&self, items: &[C::Item]) -> Result<Vec<C::Output>, StoreError> {
        let out = self.inner.commit(items).await?;
        if self.chaos.strike(self.stage) {
            return Err(StoreError::Pool("chaos: the statement committed but its reply was lost".into()));
        }
        Ok(out)
    }
}

/// Sends go out; then, now and then, an entry is reported failed.
pub struct ChaosTransport {
    inner: Arc<dyn Transport>,
    chaos: Chaos,
}

#[async_trait]
impl Transport for ChaosTransport {
    async fn receive(&self, queue: Queue, max: usize, wait: Duration) -> TransportResult<Vec<Message>> {
        self.inner.receive(queue, max, wait).await
    }

    async fn send(&self, queue: Queue, bodies: &[String]) -> TransportResult<Vec<Result<(), String>>> {
        let mut res = self.inner.send(queue, bodies).await?;
        let stage = match queue {
            Queue::Outbound => Stage::Acquirer,
            Queue::Results => Stage::Worker,
            _ => return Ok(res),
        };
        for r in res.iter_mut().filter(|r| r.is_ok()) {
            if self.chaos.strike(stage) {
                *r = Err("chaos: sent, but reported as failed".into());
            }
        }
        Ok(res)
    }

    async fn delete(&self, queue: Queue, receipts: &[String]) -> TransportResult<Vec<String>> {
        self.inner.delete(queue, receipts).await
    }

    async fn change_visibility(&self, queue: Queue, receipts: &[String], timeout: Duration) -> TransportResult<()> {
        self.inner.change_visibility(queue, receipts, timeout).await
    }

    async fn depth(&self, queue: Queue) -> TransportResult<u64> {
        self.inner.depth(queue).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn cancel_safe_receive(&self) -> bool {
        self.inner.cancel_safe_receive()
    }
}

/// Fault injection, like the original's "monkey": each stage fails at random with this probability.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChaosSettings {
    /// Default probability for every stage, 0.0 ..= 1.0.
    pub error_rate: f64,
    /// Per-stage overrides: persister, acquirer, worker, result_sink.
    pub persister: Option<f64>,
    pub acquirer: Option<f64>,
    pub worker: Option<f64>,
    pub result_sink: Option<f64>,
}

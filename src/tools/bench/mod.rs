//! Benchmark commands (`sqs-scheduler bench ...`): run them on a release build; they print their figures.

pub mod compare;
mod compare_rows;
pub mod http;
pub mod peers;
mod pg_stats;
pub mod pipeline;

pub use pg_stats::{scratch_database, DbStats};
pub mod processes;
pub mod store;
pub mod workflows;

use crate::configuration::{Settings, TransportKind};
use crate::store::{Action, NewTask, Payload, TaskStore};
use crate::transport::memory::MemoryTransport;
use crate::transport::rabbitmq::RabbitMqTransport;
use crate::transport::sqs::SqsTransport;
use crate::transport::Transport;
use std::sync::Arc;
use std::time::Duration;

/// The transport a benchmark measures: over SQS and RabbitMQ a fresh queue set under the configured prefix, deleted
/// by [`BenchTransport::close`] whatever the outcome.
pub struct BenchTransport {
    pub transport: Arc<dyn Transport>,
    /// The SQS transport itself, for benchmarks that send on it directly.
    pub sqs: Option<SqsTransport>,
}

impl BenchTransport {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        Ok(match settings.transport.kind {
            TransportKind::Memory => BenchTransport {
                transport: Arc::new(MemoryTransport::new(Duration::from_secs(
                    settings.transport.visibility_timeout_secs as u64,
                ))),
                sqs: None,
            },
            TransportKind::Sqs => {
                let s = SqsTransport::create_queues(&settings.sqs, &settings.transport).await?;
                BenchTransport { transport: Arc::new(s.clone()), sqs: Some(s) }
            }
            TransportKind::RabbitMq => {
                let prefetch = settings.rabbitmq_prefetch();
                let r = RabbitMqTransport::create_queues(&settings.rabbitmq, &settings.transport, prefetch).await?;
                BenchTransport { transport: Arc::new(r), sqs: None }
            }
        })
    }

    /// Deletes the queues `open` created (reported, not fatal, when that fails).
    pub async fn close(&self, settings: &Settings, bench: &str) {
        let deleted = match settings.transport.kind {
            TransportKind::Memory => Ok(()),
            TransportKind::Sqs => match &self.sqs {
                Some(s) => s.delete_queues().await,
                None => Ok(()),
            },
            TransportKind::RabbitMq => RabbitMqTransport::delete_queue_set(&settings.rabbitmq).await.map(|_| ()),
        };
        if let Err(e) = deleted {
            eprintln!("bench {bench}: could not delete the queues of prefix {}: {e:#}", settings.queue_prefix());
        }
    }
}

/// `n` noop tasks `{key: i}` (no dedup key), the payloads numbered from `*seq` on.
pub fn noop_tasks(seq: &mut u64, key: &str, n: usize) -> Vec<NewTask> {
    let noop = Action::parse("noop").expect("a valid action name");
    (0..n)
        .map(|_| {
            *seq += 1;
            NewTask::new(noop.clone(), Payload::parse(serde_json::json!({ key: *seq })).expect("a JSON object"))
        })
        .collect()
}

/// Enqueues `n` noop tasks through the store's public API (submit_many, 1,000 per statement), whatever the
/// store's tables look like.
pub async fn submit_noops(store: &TaskStore, n: usize, key: &str) -> anyhow::Result<()> {
    let mut seq = 0u64;
    while (seq as usize) < n {
        let count = (n - seq as usize).min(1000);
        let batch = noop_tasks(&mut seq, key, count);
        store.submit_many(&batch).await?;
    }
    Ok(())
}

/// Nearest-rank quantile `p` of ascending `sorted` samples, or None when there are too few samples for it to say
/// more than the maximum does: at least 10 samples must lie above it (p99 needs 1,000 samples, p90 100, p50 20).
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 || (n as f64) * (1.0 - p) < 10.0 - 1e-9 {
        return None;
    }
    let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
    Some(sorted[i])
}

/// A quantile for a table cell: `{:.2}`, or `n/a` when the samples do not support it.
pub fn quantile_cell(sorted: &[f64], p: f64) -> String {
    quantile(sorted, p).map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_need_enough_samples() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.5), Some(50.0));
        assert_eq!(quantile(&hundred, 0.9), Some(90.0));
        // The 99th percentile of 100 samples would be the second-largest value: not printed.
        assert_eq!(quantile(&hundred, 0.99), None);
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&thousand, 0.99), Some(990.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

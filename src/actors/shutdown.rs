//! The shutdown phases (`Phases`): stop signals and in-flight trackers the stages consult while the process
//! stops.

use crate::transport::Queue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Counts in-flight work of one shutdown phase; `wait_idle` resolves when none is left.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<(AtomicUsize, Notify)>,
}

pub struct TrackGuard(Arc<(AtomicUsize, Notify)>);

impl Tracker {
    pub fn guard(&self) -> TrackGuard {
        self.inner.0.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.inner.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.inner.0.load(Ordering::SeqCst)
    }

    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}

/// A stop signal: `stop` once, `stopped` resolves for every waiter.
#[derive(Clone)]
pub struct StopSignal {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }
}

impl StopSignal {
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The shutdown phases, in order: take no new work, drain each queue's stage, then stop for good.
#[derive(Clone, Default)]
pub struct Phases {
    /// Shutdown has begun: pollers finish their current long poll (never cancelled: its messages would stay
    /// invisible until their visibility timeout) and only short-poll from then on.
    pub begun: StopSignal,
    /// Acquirer stops; inbound pollers drain their queue, then stop.
    pub inbound: StopSignal,
    /// Outbound pollers drain, workers finish in-flight tasks.
    pub outbound: StopSignal,
    /// Results pollers drain.
    pub results: StopSignal,
    /// Grace period over: everything stops now.
    pub hard: StopSignal,
    /// Outbound pollers drain their queue on shutdown (this process's Acquirer sent those tasks); otherwise they
    /// stop receiving at once and leave the tasks to the other workers.
    pub drain_outbound: bool,
    pub inbound_work: Tracker,
    pub outbound_work: Tracker,
    pub results_work: Tracker,
}

impl Phases {
    pub fn signal(&self, queue: Queue) -> &StopSignal {
        match queue {
            Queue::Inbound | Queue::InboundDlq => &self.inbound,
            Queue::Outbound | Queue::OutboundDlq => &self.outbound,
            Queue::Results | Queue::ResultsDlq => &self.results,
        }
    }

    pub fn tracker(&self, queue: Queue) -> &Tracker {
        match queue {
            Queue::Inbound | Queue::InboundDlq => &self.inbound_work,
            Queue::Outbound | Queue::OutboundDlq => &self.outbound_work,
            Queue::Results | Queue::ResultsDlq => &self.results_work,
        }
    }
}

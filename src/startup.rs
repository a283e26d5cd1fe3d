//! Startup: builds the actor tree for the selected roles on several Arbiters (both cores), wires pollers to
//! stages, and shuts it down gracefully in phases. Must be called inside a running actix System.

use crate::actors::acquirer::Acquirer;
use crate::actors::persister::Persister;
use crate::actors::poller::SqsPoller;
use crate::actors::reaper::StaleReaper;
use crate::actors::result_sink::ResultSink;
use crate::actors::stats::StatsCollector;
use crate::actors::watchdog::{StopWatching, Watchdog, Watched, WatchedActor};
use crate::actors::worker_pool::WorkerPool;
use crate::actors::{slot, Deliver, InjectPanic, Phases, Shared};
use crate::chaos::Chaos;
use crate::configuration::{Settings, TransportKind};
use crate::handlers::HandlerRegistry;
use crate::metrics::metrics;
use crate::store::Applied;
use crate::transport::memory::MemoryTransport;
use crate::transport::sqs::SqsTransport;
use crate::transport::{Queue, Transport};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// A part of the system that can run in its own process (the original's five services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// Inbound queue -> Persister -> Postgres.
    Submitter,
    /// Acquirer: Postgres -> outbound queue.
    Scheduler,
    /// WorkerPool: outbound queue -> handlers -> results queue.
    Worker,
    /// ResultSink: results queue -> Postgres.
    Resulter,
    /// StaleReaper and gauges.
    Supervisor,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Submitter, Role::Scheduler, Role::Worker, Role::Resulter, Role::Supervisor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
            Role::Resulter => "resulter",
            Role::Supervisor => "supervisor",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown role {s:?}"))
    }
}

/// Connects the configured transport.
pub async fn connect_transport(settings: &Settings) -> anyhow::Result<Arc<dyn Transport>> {
    Ok(match settings.transport.kind {
        TransportKind::Memory => {
            Arc::new(MemoryTransport::new(Duration::from_secs(settings.transport.visibility_timeout_secs as u64)))
        }
        TransportKind::Sqs => Arc::new(SqsTransport::connect(&settings.sqs, &settings.transport).await?),
    })
}

/// Starts a stage that consumes `queue` on `arbiter`, with `pollers` SqsPollers handing it batches through a slot
/// that always holds the stage's current Addr (a restart after a panic publishes the new one).
fn start_stage<A>(
    shared: &Shared,
    watched: &mut Vec<Box<dyn Watched>>,
    name: &str,
    arbiter: &actix::ArbiterHandle,
    queue: Queue,
    pollers: usize,
    make: fn(Shared) -> A,
) -> Addr<A>
where
    A: Actor<Context = Context<A>> + Supervised + Handler<Deliver> + Send,
{
    let slot = slot::<Deliver>();
    let (s, sl) = (shared.clone(), slot.clone());
    let stage = WatchedActor::start(
        name,
        arbiter,
        move || make(s.clone()),
        move |a: &Addr<A>| {
            *sl.write().unwrap() = Some(a.clone().recipient());
        },
    );
    let addr = stage.addr();
    watched.push(Box::new(stage));
    for i in 0..pollers.max(1) {
        let (s, sl) = (shared.clone(), slot.clone());
        watched.push(Box::new(WatchedActor::start(
            format!("{queue}_poller_{i}"),
            arbiter,
            move || SqsPoller::new(s.clone(), queue, sl.clone()),
            |_| {},
        )));
    }
    addr
}

/// The running actor tree of one process.
pub struct App {
    pub shared: Shared,
    roles: BTreeSet<Role>,
    arbiters: Vec<Arbiter>,
    watchdog: Addr<Watchdog>,
    persister: Option<Addr<Persister>>,
    acquirer: Option<Addr<Acquirer>>,
    worker_pool: Option<Addr<WorkerPool>>,
    result_sink: Option<Addr<ResultSink>>,
}

impl App {
    /// Starts the actors of `roles`. Migrations must already be applied (see `db::run_migrations`).
    pub fn start(settings: Settings, roles: &[Role], transport: Arc<dyn Transport>, handlers: HandlerRegistry) -> App {
        metrics().init_labels(&settings.sqs.queue_prefix);
        let roles: BTreeSet<Role> =
            if roles.is_empty() { Role::ALL.into_iter().collect() } else { roles.iter().copied().collect() };
        let shared = Shared {
            chaos: Chaos::new(settings.chaos.clone()),
            settings: Arc::new(settings),
            transport,
            handlers,
            phases: Phases::default(),
            completions: broadcast::channel(65_536).0,
            acquirer_wake: Arc::new(Notify::new()),
        };
        // One Arbiter (thread) per stage, so the stages use both cores.
        let arbiters: Vec<Arbiter> = (0..4).map(|_| Arbiter::new()).collect();
        let (inbound_arb, acquirer_arb, worker_arb, results_arb) =
            (arbiters[0].handle(), arbiters[1].handle(), arbiters[2].handle(), arbiters[3].handle());
        let mut watched: Vec<Box<dyn Watched>> = Vec::new();
        let mut app_persister = None;
        let mut app_acquirer = None;
        let mut app_worker = None;
        let mut app_results = None;

        if roles.contains(&Role::Submitter) {
            let pollers = shared.settings.persister.pollers;
            app_persister = Some(start_stage(
                &shared,
                &mut watched,
                "persister",
                &inbound_arb,
                Queue::Inbound,
                pollers,
                Persister::new,
            ));
        }
        if roles.contains(&Role::Scheduler) {
            let s = shared.clone();
            let w = WatchedActor::start("acquirer", &acquirer_arb, move || Acquirer::new(s.clone()), |_| {});
            app_acquirer = Some(w.addr());
            watched.push(Box::new(w));
        }
        if roles.contains(&Role::Worker) {
            let pollers = shared.settings.worker.pollers;
            app_worker = Some(start_stage(
                &shared,
                &mut watched,
                "worker_pool",
                &worker_arb,
                Queue::Outbound,
                pollers,
                WorkerPool::new,
            ));
        }
        if roles.contains(&Role::Resulter) {
            let pollers = shared.settings.result_sink.pollers;
            app_results = Some(start_stage(
                &shared,
                &mut watched,
                "result_sink",
                &results_arb,
                Queue::Results,
                pollers,
                ResultSink::new,
            ));
        }
        if roles.contains(&Role::Supervisor) {
            let s = shared.clone();
            watched.push(Box::new(WatchedActor::start(
                "stale_reaper",
                &acquirer_arb,
                move || StaleReaper::new(s.clone()),
                |_| {},
            )));
            let s = shared.clone();
            watched.push(Box::new(WatchedActor::start(
                "stats",
                &acquirer_arb,
                move || StatsCollector::new(s.clone()),
                |_| {},
            )));
        }
        let watchdog = Watchdog::new(watched).start();
        tracing::info!(roles = ?roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), transport = shared.transport.kind(), "scheduler started");
        App {
            shared,
            roles,
            arbiters,
            watchdog,
            persister: app_persister,
            acquirer: app_acquirer,
            worker_pool: app_worker,
            result_sink: app_results,
        }
    }

    pub fn roles(&self) -> &BTreeSet<Role> {
        &self.roles
    }

    /// Every result applied by this process's ResultSink.
    pub fn completions(&self) -> broadcast::Receiver<Applied> {
        self.shared.completions.subscribe()
    }

    /// Test hook: panics the named stage ("persister", "acquirer", "worker_pool", "result_sink") inside a handler.
    pub fn inject_panic(&self, stage: &str) -> bool {
        // The first Addr of each stage: after a restart it is dead, so a second call finds nothing to panic.
        match stage {
            "persister" => self.persister.as_ref().map(|a| a.do_send(InjectPanic)).is_some(),
            "acquirer" => self.acquirer.as_ref().map(|a| a.do_send(InjectPanic)).is_some(),
            "worker_pool" => self.worker_pool.as_ref().map(|a| a.do_send(InjectPanic)).is_some(),
            "result_sink" => self.result_sink.as_ref().map(|a| a.do_send(InjectPanic)).is_some(),
            _ => false,
        }
    }

    /// Graceful shutdown: stop taking work, drain each stage in pipeline order within `grace`, then stop.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let p = self.shared.phases.clone();
        self.watchdog.do_send(StopWatching);
        // Each phase's tracker counts its pollers (until they have drained their queue) and their in-flight work.
        let wait = |t: crate::actors::Tracker| async move {
            let _ = tokio::time::timeout_at(deadline.into(), t.wait_idle()).await;
        };
        tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: draining inbound, stopping the acquirer");
        p.begun.stop();
        p.inbound.stop();
        wait(p.inbound_work.clone()).await;
        tracing::info!("shutting down: finishing in-flight tasks");
        p.outbound.stop();
        wait(p.outbound_work.clone()).await;
        tracing::info!("shutting down: flushing results");
        p.results.stop();
        wait(p.results_work.clone()).await;
        p.hard.stop();
        let left = p.outbound_work.in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over with tasks still running; they will be redelivered or rescued"
            );
        }
        for a in self.arbiters {
            a.stop();
        }
        tracing::info!("shutdown complete");
    }
}

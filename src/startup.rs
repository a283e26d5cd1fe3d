//! Startup: builds the supervision tree for the selected roles — a root supervisor, one supervisor per role, the
//! stage actors on several Arbiters (both cores) — wires pollers to stages, and shuts it all down gracefully in
//! phases. Must be called inside a running actix System.

use crate::actors::acquirer::Acquirer;
use crate::actors::cron::CronScheduler;
use crate::actors::due_listener::DueListener;
use crate::actors::messages::{Capacity, Hooks, Reaped, Received, RunOnce};
use crate::actors::persister::Persister;
use crate::actors::poller::QueuePoller;
use crate::actors::reaper::StaleReaper;
use crate::actors::result_sink::ResultSink;
use crate::actors::stats::StatsCollector;
use crate::actors::worker_pool::WorkerPool;
use crate::actors::{Phases, PipelineSettings, Shared, Slot};
use crate::chaos::Chaos;
use crate::configuration::{Settings, TransportKind};
use crate::handlers::HandlerRegistry;
use crate::http::server::HttpServerActor;
use crate::http::HttpState;
use crate::metrics::{metrics, Metrics};
use crate::store::Applied;
use crate::supervision::{ActorSpec, ChildSpec, Link, Shutdown, SupervisionEvent, Supervisor, SupervisorSpec, Tree};
use crate::transport::memory::MemoryTransport;
use crate::transport::rabbitmq::RabbitMqTransport;
use crate::transport::sqs::SqsTransport;
use crate::transport::{Queue, Transport};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// A part of the system that can run in its own process (the original's five services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// Inbound queue -> Persister -> Postgres.
    Submitter,
    /// Acquirer: Postgres -> outbound queue; CronScheduler: schedules -> tasks.
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
        TransportKind::RabbitMq => Arc::new(
            RabbitMqTransport::connect(&settings.rabbitmq, &settings.transport, settings.rabbitmq_prefetch()).await?,
        ),
    })
}

/// The Arbiters (threads) stages run on, so the stages use both cores. They live as long as the process:
/// connection tasks of a pool live on the Arbiter that opened it.
#[derive(Clone)]
struct Arbiters {
    inbound: actix::ArbiterHandle,
    acquirer: actix::ArbiterHandle,
    worker: actix::ArbiterHandle,
    results: actix::ArbiterHandle,
}

/// Where each stage's current instance can be reached (its supervisor's start hook fills these in).
#[derive(Clone, Default)]
struct Stages {
    reaper: Slot<RunOnce>,
    #[cfg(feature = "test-hooks")]
    panics: std::collections::HashMap<&'static str, Slot<crate::actors::messages::InjectPanic>>,
}

impl Stages {
    fn new() -> Self {
        #[allow(unused_mut)]
        let mut s = Stages::default();
        #[cfg(feature = "test-hooks")]
        for name in STAGE_NAMES {
            s.panics.insert(name, Slot::default());
        }
        s
    }

    /// The start hook of stage `name`: publishes each new instance for its test hook.
    fn hook<A: Actor<Context = Context<A>> + Hooks>(&self, name: &'static str) -> impl FnMut(&Addr<A>) + 'static {
        #[cfg(feature = "test-hooks")]
        let slot = self.panics[name].clone();
        let _ = name;
        move |_a: &Addr<A>| {
            #[cfg(feature = "test-hooks")]
            slot.set(_a.clone().recipient());
        }
    }
}

/// The stage actors that test hooks can reach, by name.
pub const STAGE_NAMES: [&str; 5] = ["persister", "acquirer", "worker_pool", "result_sink", "stale_reaper"];

/// A stage that consumes `queue`, with `pollers` QueuePollers handing it batches through a slot that always holds
/// the stage's current instance.
fn queue_stage<A>(
    shared: &Shared,
    stages: &Stages,
    name: &'static str,
    arbiter: &actix::ArbiterHandle,
    queue: Queue,
    pollers: usize,
    make: impl Fn(Shared, Link) -> A + 'static,
) -> Vec<Box<dyn ChildSpec>>
where
    A: Actor<Context = Context<A>> + Handler<Received> + Handler<Capacity> + Hooks + Send,
{
    let (slot, capacity): (Slot<Received>, Slot<Capacity>) = Default::default();
    let (s, sl, cap) = (shared.clone(), slot.clone(), capacity.clone());
    let mut hook = stages.hook::<A>(name);
    let mut children = vec![ActorSpec::new(name, arbiter, move |link| make(s.clone(), link))
        .on_start(move |a: &Addr<A>| {
            sl.set(a.clone().recipient());
            cap.set(a.clone().recipient());
            hook(a);
        })
        .boxed()];
    for i in 0..pollers.max(1) {
        let (s, sl, cap) = (shared.clone(), slot.clone(), capacity.clone());
        children.push(
            ActorSpec::new(format!("{queue}_poller_{i}"), arbiter, move |link| {
                QueuePoller::new(s.clone(), link, queue, sl.clone(), cap.clone())
            })
            .boxed(),
        );
    }
    children
}

/// The children of `role`'s supervisor, built afresh for every (re)start of the role.
fn role_children(
    role: Role,
    settings: &Settings,
    shared: &Shared,
    arbiters: &Arbiters,
    stages: &Stages,
) -> Vec<Box<dyn ChildSpec>> {
    match role {
        Role::Submitter => {
            queue_stage(shared, stages, "persister", &arbiters.inbound, Queue::Inbound, settings.persister.pollers, {
                let own = settings.persister.clone();
                move |shared, link| Persister::new(shared, own.max_batch, own.pool_size, link)
            })
        }
        Role::Scheduler => {
            let (s, own, slot) = (shared.clone(), settings.acquirer.clone(), shared.acquirer.clone());
            let mut hook = stages.hook::<Acquirer>("acquirer");
            let make = move |link| Acquirer::new(s.clone(), own.clone(), link);
            let acquirer = ActorSpec::new("acquirer", &arbiters.acquirer, make).on_start(move |a: &Addr<Acquirer>| {
                slot.set(a.clone().recipient());
                hook(a);
            });
            let s = shared.clone();
            let listener =
                ActorSpec::new("due_listener", &arbiters.acquirer, move |link| DueListener::new(s.clone(), link));
            let (s, own) = (shared.clone(), settings.cron.clone());
            // Validated with the settings; an entry that is not valid here was never accepted by `run`.
            let declared =
                std::sync::Arc::new(crate::schedules::validate_specs(&settings.schedules).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "configured schedules invalid; none declared");
                    Vec::new()
                }));
            let cron = ActorSpec::new("cron_scheduler", &arbiters.acquirer, move |link| {
                CronScheduler::new(s.clone(), own.clone(), declared.clone(), link)
            });
            vec![acquirer.boxed(), listener.boxed(), cron.boxed()]
        }
        Role::Worker => {
            queue_stage(shared, stages, "worker_pool", &arbiters.worker, Queue::Outbound, settings.worker.pollers, {
                let own = settings.worker.clone();
                move |shared, link| WorkerPool::new(shared, own.clone(), link)
            })
        }
        Role::Resulter => queue_stage(
            shared,
            stages,
            "result_sink",
            &arbiters.results,
            Queue::Results,
            settings.result_sink.pollers,
            {
                let own = settings.result_sink.clone();
                move |shared, link| ResultSink::new(shared, own.max_batch, own.pool_size, link)
            },
        ),
        Role::Supervisor => {
            let (s, own, slot) = (shared.clone(), settings.reaper.clone(), stages.reaper.clone());
            let mut hook = stages.hook::<StaleReaper>("stale_reaper");
            let make = move |link| StaleReaper::new(s.clone(), own.clone(), link);
            let reaper =
                ActorSpec::new("stale_reaper", &arbiters.acquirer, make).on_start(move |a: &Addr<StaleReaper>| {
                    slot.set(a.clone().recipient());
                    hook(a);
                });
            let (s, own) = (shared.clone(), settings.stats.clone());
            let stats = ActorSpec::new("stats", &arbiters.acquirer, move |link| {
                StatsCollector::new(s.clone(), own.clone(), link)
            });
            vec![reaper.boxed(), stats.boxed()]
        }
    }
}

/// The running supervision tree of one process.
pub struct App {
    pub shared: Shared,
    roles: BTreeSet<Role>,
    arbiters: Vec<Arbiter>,
    root: Addr<Supervisor>,
    tree: Tree,
    stages: Stages,
    gave_up: watch::Receiver<Option<String>>,
}

impl App {
    /// Starts the actors of `roles`. Migrations must already be applied (see `db::run_migrations`).
    pub fn start(settings: Settings, roles: &[Role], transport: Arc<dyn Transport>, handlers: HandlerRegistry) -> App {
        Self::start_with_http(settings, roles, transport, handlers, None)
    }

    /// The same, with the HTTP server supervised in the tree (the `http` role) when `http` is given.
    pub fn start_with_http(
        settings: Settings,
        roles: &[Role],
        transport: Arc<dyn Transport>,
        handlers: HandlerRegistry,
        http: Option<HttpState>,
    ) -> App {
        metrics().init_labels(settings.queue_prefix());
        let roles: BTreeSet<Role> =
            if roles.is_empty() { Role::ALL.into_iter().collect() } else { roles.iter().copied().collect() };
        let chaos = Chaos::new(settings.chaos.clone());
        let shared = Shared {
            transport: chaos.around_transport(transport),
            chaos,
            settings: Arc::new(PipelineSettings {
                database: settings.database.clone(),
                transport: settings.transport.clone(),
                retry: settings.retry.clone(),
                queue_prefix: settings.queue_prefix().to_string(),
            }),
            known_actions: crate::handlers::KnownActions::new(&handlers, &settings.actions),
            handlers,
            phases: Phases { drain_outbound: roles.contains(&Role::Scheduler), ..Phases::default() },
            completions: broadcast::channel(65_536).0,
            acquirer: Slot::default(),
            breaker: crate::actors::breaker::Breaker::new(),
        };
        let owned: Vec<Arbiter> = (0..4).map(|_| Arbiter::new()).collect();
        let arbiters = Arbiters {
            inbound: owned[0].handle(),
            acquirer: owned[1].handle(),
            worker: owned[2].handle(),
            results: owned[3].handle(),
        };
        let tree = Tree::default();
        let stages = Stages::new();
        let settings = Arc::new(settings);
        let supervision = &settings.supervision;
        let mut role_specs: Vec<Box<dyn ChildSpec>> = roles
            .iter()
            .map(|&role| {
                let (settings, shared) = (settings.clone(), shared.clone());
                let (arbiters, stages) = (arbiters.clone(), stages.clone());
                let spec = SupervisorSpec::new(role.as_str(), supervision.role_policy(), &tree, move || {
                    role_children(role, &settings, &shared, &arbiters, &stages)
                });
                Box::new(spec) as Box<dyn ChildSpec>
            })
            .collect();
        if let Some(state) = http {
            let arbiter = actix::Arbiter::current();
            let spec = SupervisorSpec::new("http", supervision.role_policy(), &tree, move || {
                let state = state.clone();
                let make = move |link| HttpServerActor::new(state.clone(), link);
                vec![ActorSpec::new("http_server", &arbiter, make).boxed()]
            });
            role_specs.push(Box::new(spec));
        }
        let (gave_up_tx, gave_up) = watch::channel(None);
        let root = Supervisor::new("root", supervision.root_policy(), role_specs, &tree)
            .on_give_up(move |reason| {
                gave_up_tx.send_replace(Some(reason));
            })
            .start();
        tracing::info!(roles = ?roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), transport = shared.transport.kind(), "scheduler started");
        App { shared, roles, arbiters: owned, root, tree, stages, gave_up }
    }

    pub fn roles(&self) -> &BTreeSet<Role> {
        &self.roles
    }

    /// Every result applied by this process's ResultSink.
    pub fn completions(&self) -> broadcast::Receiver<Applied> {
        self.shared.completions.subscribe()
    }

    /// Every restart and give-up of this process's supervisors from now on.
    pub fn supervision_events(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.tree.events()
    }

    /// Resolves when the root supervisor gave up (a role kept failing past the root's restart intensity), with
    /// the reason. The process must then exit non-zero: `run` does.
    pub async fn gave_up(&self) -> String {
        let mut rx = self.gave_up.clone();
        let r = rx.wait_for(|r| r.is_some()).await.map(|r| r.clone().unwrap_or_default());
        match r {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }

    /// One StaleReaper pass now (the supervisor role must run in this process).
    pub async fn reap_once(&self) -> Option<Reaped> {
        self.stages.reaper.get()?.send(RunOnce).await.ok()
    }

    /// Test hook: panics the named stage (see [`STAGE_NAMES`]) inside a handler. False if it is not running.
    #[cfg(feature = "test-hooks")]
    pub fn inject_panic(&self, stage: &str) -> bool {
        let Some(slot) = self.stages.panics.get(stage) else { return false };
        match slot.get() {
            Some(r) => {
                r.do_send(crate::actors::messages::InjectPanic);
                true
            }
            None => false,
        }
    }

    /// Test hook: panics `stage` again and again, each new instance soon after it starts (a stage that keeps
    /// failing). `run` does this when built with the feature and `SQS_SCHEDULER_TEST_PANIC_LOOP=<stage>` is set.
    #[cfg(feature = "test-hooks")]
    pub fn keep_panicking(&self, stage: &str) {
        let Some(slot) = self.stages.panics.get(stage).cloned() else { return };
        actix_rt::spawn(async move {
            loop {
                if let Some(r) = slot.get() {
                    r.do_send(crate::actors::messages::InjectPanic);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Graceful shutdown: stop taking work, drain each stage in pipeline order within `grace`, then stop.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let p = self.shared.phases.clone();
        // From now on an actor that ends (a poller that drained its queue) is not restarted.
        self.tree.drain();
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
        let _ = self.root.send(Shutdown).await;
        for a in self.arbiters {
            a.stop();
        }
        tracing::info!("shutdown complete");
    }
}

/// Labels every metric family the dashboards query has, so they exist in /metrics from the start. Here, not in
/// `metrics.rs`: it names the queues, states and stages, and `metrics.rs` stays a leaf every module may use.
impl Metrics {
    pub fn init_labels(&self, queue_prefix: &str) {
        let m = self;
        for q in crate::transport::Queue::ALL {
            let name = q.name(queue_prefix);
            m.messages_received.with_label_values(&[name.as_str()]);
            m.queue_depth.with_label_values(&[name.as_str()]);
            if q.is_dlq() {
                m.messages_dead_lettered.with_label_values(&[name.as_str(), "parse_error"]);
            }
        }
        for o in ["success", "error", "critical_error", "cancelled"] {
            m.results_applied.with_label_values(&[o]);
        }
        for s in ["persister", "acquirer", "worker", "result_sink"] {
            m.chaos_injected.with_label_values(&[s]);
        }
        for a in ["noop", "export"] {
            m.handler_duration.with_label_values(&[a]);
        }
        for s in crate::store::TaskState::ALL {
            m.tasks.with_label_values(&[s.as_str()]);
        }
        for s in crate::workflow::WorkflowState::ALL {
            m.workflows.with_label_values(&[s.as_str()]);
        }
        for o in ["created", "duplicate"] {
            m.workflows_submitted.with_label_values(&[o]);
        }
        for stage in ["persister", "acquirer", "worker_pool", "result_sink", "stale_reaper", "stats", "http"] {
            for state in ["in_use", "idle"] {
                m.db_pool_connections.with_label_values(&[stage, state]);
            }
        }
        for a in ["persister", "acquirer", "due_listener", "worker_pool", "result_sink", "stale_reaper", "stats"] {
            m.actor_restarts.with_label_values(&[a, "panic"]);
            m.actor_in_flight.with_label_values(&[a]);
        }
        for s in ["root", "submitter", "scheduler", "worker", "resulter", "supervisor", "http"] {
            m.supervisor_give_ups.with_label_values(&[s]);
        }
        for s in ["persister", "result_sink", "http_submit", "http_workflow_submit", "result_sink_spawn"] {
            m.items_refused.with_label_values(&[s]);
            m.commit_batch_size.with_label_values(&[s]);
        }
        for s in ["active", "paused"] {
            m.cron_schedules.with_label_values(&[s]);
        }
        for reason in crate::http::auth_failures::REASONS {
            m.auth_failures.with_label_values(&[reason]);
        }
        for s in crate::metrics::REJECTION_SOURCES {
            m.unknown_action_rejections.with_label_values(&[s]);
        }
        for from in ["SCHEDULED", "ERROR", "ACQUIRED", "WAITING"] {
            m.tasks_cancelled.with_label_values(&[from]);
        }
        m.acquire_throttled.with_label_values(&["noop"]);
        m.tasks_timed_out.with_label_values(&["noop"]);
        for o in ["ack", "failed"] {
            m.amqp_confirms.with_label_values(&[o]);
        }
        m.http_requests.with_label_values(&["/rpc", "200"]);
        m.rpc_errors.with_label_values(&["-32600"]);
    }
}

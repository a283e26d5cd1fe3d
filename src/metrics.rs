//! Prometheus metrics: one registry per process, served on `GET /metrics`. Names follow Prometheus conventions
//! (`_total` counters, `_seconds` histograms); the Grafana dashboards query exactly these.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::OnceLock;

pub struct Metrics {
    pub registry: Registry,
    pub messages_received: IntCounterVec,
    pub tasks_persisted: IntCounter,
    pub tasks_duplicate: IntCounter,
    pub tasks_acquired: IntCounter,
    pub tasks_sent: IntCounter,
    pub tasks_released: IntCounter,
    pub results_applied: IntCounterVec,
    pub results_stale: IntCounter,
    pub tasks_rescued: IntCounter,
    pub tasks_cleaned: IntCounter,
    pub messages_dead_lettered: IntCounterVec,
    pub chaos_injected: IntCounterVec,
    pub actor_restarts: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub rpc_errors: IntCounterVec,
    pub handler_duration: HistogramVec,
    pub submit_to_acquire: Histogram,
    pub end_to_end: Histogram,
    pub tasks: IntGaugeVec,
    pub workflows: IntGaugeVec,
    pub workflows_submitted: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub db_pool_connections: IntGaugeVec,
    pub actor_messages: IntCounterVec,
    pub actor_in_flight: IntGaugeVec,
    pub supervisor_give_ups: IntCounterVec,
    pub items_refused: IntCounterVec,
    pub commit_batch_size: HistogramVec,
    pub breaker_open: prometheus::IntGauge,
    pub breaker_opened: IntCounter,
    pub cron_ticks: IntCounterVec,
    pub cron_schedules: IntGaugeVec,
    pub unknown_action_rejections: IntCounterVec,
    pub acquire_throttled: IntCounterVec,
    pub action_setting_faults: IntGaugeVec,
    pub auth_failures: IntCounterVec,
    pub actions_paused: prometheus::IntGauge,
    pub tasks_timed_out: IntCounterVec,
    pub tasks_cancelled: IntCounterVec,
    pub handlers_cancelled: IntCounter,
    pub amqp_connected: prometheus::IntGauge,
    pub amqp_reconnects: IntCounter,
    pub amqp_confirms: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric registers once");
            c
        }
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).unwrap());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(name, help), labels).unwrap())
        };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| reg(&r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap());
        let hist = |name: &str, help: &str| {
            reg(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())).unwrap())
        };
        Metrics {
            messages_received: counter_vec(
                "scheduler_messages_received_total",
                "Messages received from a queue.",
                &["queue"],
            ),
            tasks_persisted: counter("scheduler_tasks_persisted_total", "Submissions stored as new tasks."),
            tasks_duplicate: counter("scheduler_tasks_duplicate_total", "Submissions that matched an existing task."),
            tasks_acquired: counter("scheduler_tasks_acquired_total", "Tasks claimed by the Acquirer."),
            tasks_sent: counter("scheduler_tasks_sent_total", "Tasks sent to the outbound queue."),
            tasks_released: counter(
                "scheduler_tasks_released_total",
                "Acquired tasks handed back after a failed send.",
            ),
            results_applied: counter_vec(
                "scheduler_results_applied_total",
                "Results that changed a task's state, by the state reached.",
                &["outcome"],
            ),
            results_stale: counter("scheduler_results_stale_total", "Results for an (id, attempt) no longer ACQUIRED."),
            tasks_rescued: counter("scheduler_tasks_rescued_total", "ACQUIRED tasks rescued by the StaleReaper."),
            tasks_cleaned: counter("scheduler_tasks_cleaned_total", "Finished tasks deleted by the cleaner."),
            messages_dead_lettered: counter_vec(
                "scheduler_messages_dead_lettered_total",
                "Messages moved to a dead-letter queue, by queue and reason.",
                &["queue", "reason"],
            ),
            chaos_injected: counter_vec(
                "scheduler_chaos_injected_total",
                "Failures injected by chaos, by stage.",
                &["stage"],
            ),
            actor_restarts: counter_vec(
                "scheduler_actor_restarts_total",
                "Actors restarted by their supervisor, by actor and why it ended (panic, stopped, escalated).",
                &["actor", "reason"],
            ),
            http_requests: counter_vec(
                "scheduler_http_requests_total",
                "HTTP requests, by path and status.",
                &["path", "status"],
            ),
            rpc_errors: counter_vec("scheduler_rpc_errors_total", "JSON-RPC error responses, by code.", &["code"]),
            handler_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("scheduler_handler_duration_seconds", "Handler run time.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["action"],
                )
                .unwrap(),
            ),
            submit_to_acquire: hist(
                "scheduler_submit_to_acquire_seconds",
                "Time from due (submission or retry) to acquisition.",
            ),
            end_to_end: hist("scheduler_end_to_end_seconds", "Time from submission to a final state."),
            tasks: gauge_vec("scheduler_tasks", "Tasks by state.", &["state"]),
            workflows: gauge_vec(
                "scheduler_workflows",
                "Workflows stored, by state (RUNNING, SUCCESS, FAILED, CANCELLED), refreshed from the database.",
                &["state"],
            ),
            workflows_submitted: counter_vec(
                "scheduler_workflows_submitted_total",
                "workflow.submit requests stored, by outcome (created, duplicate).",
                &["outcome"],
            ),
            queue_depth: gauge_vec("scheduler_queue_depth", "Approximate visible messages per queue.", &["queue"]),
            db_pool_connections: gauge_vec(
                "scheduler_db_pool_connections",
                "Database pool connections, by the stage owning the pool.",
                &["stage", "state"],
            ),
            actor_messages: counter_vec(
                "scheduler_actor_messages_total",
                "Messages handled, by actor and message.",
                &["actor", "message"],
            ),
            actor_in_flight: gauge_vec(
                "scheduler_actor_in_flight",
                "Work an actor holds now: batches awaiting a stage (pollers), items in commit (commit stages), handlers running (worker pool).",
                &["actor"],
            ),
            supervisor_give_ups: counter_vec(
                "scheduler_supervisor_give_ups_total",
                "Supervisors that exceeded their restart intensity and escalated (root: the process exits).",
                &["supervisor"],
            ),
            breaker_open: reg(
                &r,
                prometheus::IntGauge::new(
                    "scheduler_breaker_open",
                    "1 while the database circuit breaker is open (commits failing: pollers do not receive).",
                )
                .unwrap(),
            ),
            breaker_opened: counter(
                "scheduler_breaker_opened_total",
                "Times the database circuit breaker opened.",
            ),
            items_refused: counter_vec(
                "scheduler_items_refused_total",
                "Items the database refused (poison), isolated one by one, by commit stage.",
                &["stage"],
            ),
            commit_batch_size: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "scheduler_commit_batch_size",
                        "Items per statement of a commit stage (group commit), by stage: _count is statements run, \
                         _sum items committed.",
                    )
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]),
                    &["stage"],
                )
                .unwrap(),
            ),
            cron_ticks: counter_vec(
                "scheduler_cron_ticks_total",
                "Cron schedule ticks, by schedule and outcome (enqueued; duplicate: its task existed; skipped: missed \
                 while nothing ran, not enqueued; invalid: the stored expression no longer parses, schedule paused).",
                &["schedule", "outcome"],
            ),
            cron_schedules: gauge_vec(
                "scheduler_cron_schedules",
                "Cron schedules in the database, by state (active, paused), as the CronScheduler last read them.",
                &["state"],
            ),
            unknown_action_rejections: counter_vec(
                "scheduler_unknown_action_rejections_total",
                "Submissions and schedules refused because no handler is known for their action, by source \
                 (http, inbound, schedule).",
                &["source"],
            ),
            acquire_throttled: counter_vec(
                "scheduler_acquire_throttled_total",
                "Acquire calls in which an action's pause, max_concurrency or rate_per_sec held back due tasks, by action.",
                &["action"],
            ),
            action_setting_faults: gauge_vec(
                "scheduler_action_setting_faults",
                "1 while an action's settings row holds a value the acquire statement cannot compute with (written \
                 by hand): its tasks are not acquired, every other action's are. By action and setting.",
                &["action", "setting"],
            ),
            auth_failures: counter_vec(
                "scheduler_http_auth_failures_total",
                "Requests to /rpc refused before JSON-RPC, by reason (missing, wrong or malformed bearer token; \
                 forbidden: a non-loopback client with no token configured).",
                &["reason"],
            ),
            actions_paused: reg(
                &r,
                prometheus::IntGauge::new("scheduler_actions_paused", "Actions paused now (action.pause).").unwrap(),
            ),
            tasks_timed_out: counter_vec(
                "scheduler_tasks_timed_out_total",
                "Handler runs dropped at their timeout (the attempt fails with a timeout error), by action.",
                &["action"],
            ),
            tasks_cancelled: counter_vec(
                "scheduler_tasks_cancelled_total",
                "Tasks cancelled through task.cancel, by the state they were in.",
                &["from"],
            ),
            handlers_cancelled: counter(
                "scheduler_handlers_cancelled_total",
                "Handler runs a worker dropped, or never started, because their task was cancelled or is no longer theirs.",
            ),
            amqp_connected: reg(
                &r,
                prometheus::IntGauge::new(
                    "scheduler_amqp_connected",
                    "1 while the RabbitMQ transport holds a live connection (0 while reconnecting).",
                )
                .unwrap(),
            ),
            amqp_reconnects: counter(
                "scheduler_amqp_reconnects_total",
                "Times the RabbitMQ transport reconnected after losing its connection.",
            ),
            amqp_confirms: counter_vec(
                "scheduler_amqp_confirms_total",
                "RabbitMQ publisher confirms, by outcome (ack; failed: nack, returned, timeout or lost connection).",
                &["outcome"],
            ),
            registry: r,
        }
    }

    /// Text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode metrics");
        String::from_utf8(buf).expect("utf8")
    }
}

impl Metrics {
    /// Every outcome of `scheduler_cron_ticks_total` for these schedules, so their series exist (at 0) before
    /// their first tick. Called at start for the configured schedules and by the CronScheduler for all it reads.
    pub fn init_schedule_labels<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            for outcome in CRON_TICK_OUTCOMES {
                self.cron_ticks.with_label_values(&[name, outcome]);
            }
        }
    }
}

/// Where a submission or schedule refused for an unknown action came from (`scheduler_unknown_action_rejections_total`).
pub const REJECTION_SOURCES: [&str; 3] = ["http", "inbound", "schedule"];

/// The outcomes of a cron tick (see `scheduler_cron_ticks_total`).
pub const CRON_TICK_OUTCOMES: [&str; 4] = ["enqueued", "duplicate", "skipped", "invalid"];

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

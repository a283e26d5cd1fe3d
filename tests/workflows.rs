//! Workflows end to end: a diamond's order and parents' results; 1,000 diamonds under chaos on the in-process
//! transport, on RabbitMQ, and 100 on the slow SQS emulator;
//! failure, on_failure and task.retry resuming; fan-out and fan-in; bad input storing nothing; two schedulers and
//! two result sinks in separate processes never running a stage early or twice.

mod common;

use actix_web::test;
use common::pipeline::*;
use common::process::spawn_roles;
use common::TestDb;
use serde_json::{json, Map, Value};
use sqs_scheduler::handlers::{Handler, HandlerContext, HandlerError, HandlerRegistry};
use sqs_scheduler::http::{build_app, HttpApi, HttpState};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::store::{MaxAttempts, Outcome, TaskResult, TaskState, TaskStore};
use sqs_scheduler::transport::Queue;
use sqs_scheduler::workflow::{self, WorkflowState};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One run of a recording handler.
#[derive(Debug, Clone)]
struct Exec {
    task_id: i64,
    attempt: i32,
    parents: Map<String, Value>,
    failed: Option<Value>,
    /// Parents of this stage that were not SUCCESS while it ran (must stay 0).
    early: i64,
}

type Log = Arc<Mutex<Vec<Exec>>>;

/// Records each run (checking in the database that every parent is SUCCESS) and returns `{"task": id}`, or spawns
/// `payload.spawn` children when given.
struct Rec(Log);

async fn parents_not_done(ctx: &HandlerContext) -> Result<i64, HandlerError> {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = ctx.db.get().await.map_err(|e| HandlerError::new(format!("no connection: {e}")))?;
    let r: Row = diesel::sql_query(
        "SELECT count(*) AS n FROM workflow_edges e JOIN tasks p ON p.id = e.parent_id \
         WHERE e.child_id = $1 AND p.state <> 'SUCCESS'",
    )
    .bind::<BigInt, _>(ctx.task_id)
    .get_result(&mut conn)
    .await
    .map_err(|e| HandlerError::new(format!("parents query: {e}")))?;
    Ok(r.n)
}

#[async_trait::async_trait]
impl Handler for Rec {
    async fn handle(&self, ctx: &HandlerContext, payload: &Value) -> Result<Value, HandlerError> {
        let early = parents_not_done(ctx).await?;
        self.0.lock().unwrap().push(Exec {
            task_id: ctx.task_id,
            attempt: ctx.attempt,
            parents: ctx.parents.clone(),
            failed: ctx.failed.clone(),
            early,
        });
        if let Some(n) = payload.get("spawn").and_then(Value::as_u64) {
            let children = (0..n).map(|i| json!({"name": format!("c{i}"), "action": "rec", "payload": {"i": i}}));
            return Ok(workflow::spawn_result(json!({"task": ctx.task_id}), children.collect()));
        }
        Ok(json!({"task": ctx.task_id}))
    }
}

/// Fails while its switch is on.
struct Flaky(Arc<AtomicBool>);

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn handle(&self, _: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        if self.0.load(Ordering::SeqCst) {
            Err(HandlerError::new("flaky: switched on"))
        } else {
            Ok(json!("recovered"))
        }
    }
}

fn handlers(log: &Log) -> HandlerRegistry {
    HandlerRegistry::builtin().with("rec", Rec(log.clone()))
}

fn diamond(i: usize) -> Value {
    json!({
        "name": format!("diamond-{i}"),
        "dedup_key": format!("diamond-{i}"),
        "stages": [
            {"name": "a", "action": "rec", "payload": {"i": i}},
            {"name": "b", "action": "rec", "depends_on": ["a"]},
            {"name": "c", "action": "rec", "depends_on": ["a"]},
            {"name": "d", "action": "rec", "depends_on": ["b", "c"]},
        ]
    })
}

/// Sends `workflow.submit` for each params object to the inbound queue, `per_message` in each message (more than
/// one: a JSON-RPC batch).
async fn submit_on_queue(transport: &dyn sqs_scheduler::transport::Transport, workflows: &[Value]) {
    submit_on_queue_by(transport, workflows, 10).await
}

async fn submit_on_queue_by(
    transport: &dyn sqs_scheduler::transport::Transport,
    workflows: &[Value],
    per_message: usize,
) {
    let bodies: Vec<String> = workflows
        .chunks(per_message)
        .map(|c| {
            Value::Array(
                c.iter().map(|p| json!({"jsonrpc": "2.0", "method": "workflow.submit", "params": p})).collect(),
            )
            .to_string()
        })
        .collect();
    for chunk in bodies.chunks(10) {
        let until = Instant::now() + Duration::from_secs(120);
        while transport.depth(Queue::Inbound).await.unwrap() > 10 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let res = transport.send(Queue::Inbound, chunk).await.unwrap();
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    }
}

async fn workflow_counts(store: &TaskStore) -> HashMap<WorkflowState, i64> {
    store.workflow_counts().await.unwrap().into_iter().collect()
}

async fn wait_workflows(store: &TaskStore, timeout: Duration, done: impl Fn(&HashMap<WorkflowState, i64>) -> bool) {
    let until = Instant::now() + timeout;
    loop {
        let c = workflow_counts(store).await;
        if done(&c) {
            return;
        }
        assert!(Instant::now() < until, "timed out; workflows by state: {c:?}; tasks: {:?}", counts(store).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// task id -> (workflow id, stage name) of every stage.
async fn stages_of(store: &TaskStore, ids: impl IntoIterator<Item = i64>) -> HashMap<i64, (i64, String)> {
    let mut out = HashMap::new();
    for wf in ids {
        for s in store.get_workflow(wf).await.unwrap().unwrap().stages {
            out.insert(s.task_id, (wf, s.name));
        }
    }
    out
}

type Stages = HashMap<String, workflow::StageView>;

/// The only workflow's id, once it is stored.
async fn only_workflow(store: &TaskStore) -> i64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(w) = store.list_workflows(&Default::default()).await.unwrap().first() {
            return w.id;
        }
        assert!(Instant::now() < until, "no workflow stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `done` holds for workflow `id`'s state and stages (by name); returns them.
async fn wait_stages(
    store: &TaskStore,
    id: i64,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Stages) -> bool,
) -> (WorkflowState, Stages) {
    let until = Instant::now() + timeout;
    loop {
        let wf = store.get_workflow(id).await.unwrap().unwrap();
        let st: Stages = wf.stages.into_iter().map(|s| (s.name.clone(), s)).collect();
        if done(&st) {
            return (wf.state, st);
        }
        assert!(Instant::now() < until, "{what}: not within {timeout:?}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks n finished diamonds: every workflow SUCCESS, every stage SUCCESS once, no run early, every d saw b and c.
async fn check_diamonds(store: &TaskStore, log: &Log, n: usize) {
    let list = store
        .list_workflows(&sqs_scheduler::store::WorkflowFilter { limit: Some(1000), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(list.len(), n);
    assert!(list.iter().all(|w| w.state == WorkflowState::Success && w.stages_succeeded == 4), "{list:?}");
    let stages = stages_of(store, list.iter().map(|w| w.id)).await;
    let log = log.lock().unwrap().clone();
    let early: Vec<&Exec> = log.iter().filter(|e| e.early != 0).take(5).collect();
    assert!(early.is_empty(), "stages ran before all their parents succeeded: {early:?}");
    let mut d_runs: HashMap<i64, usize> = HashMap::new();
    for e in &log {
        let (_, name) = &stages[&e.task_id];
        if name == "d" {
            *d_runs.entry(e.task_id).or_default() += 1;
            let keys: HashSet<&str> = e.parents.keys().map(String::as_str).collect();
            assert_eq!(keys, HashSet::from(["b", "c"]), "d must see both parents' results: {e:?}");
            assert!(e.parents.values().all(|v| v["task"].is_i64()), "{e:?}");
        }
    }
    assert_eq!(d_runs.len(), n, "every d ran");
    // Each d's SUCCESS is recorded once (fenced); reruns come only from chaos losing a result that went out.
    let tasks = store.get_many(&stages.keys().copied().collect::<Vec<_>>()).await.unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Success), "every stage SUCCESS");
}

// ------------------------------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn diamond_runs_in_dependency_order_and_d_sees_both_results() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let log = Log::default();
    let app = start(&settings, &[], transport.clone(), handlers(&log));
    submit_on_queue(transport.as_ref(), &[diamond(1)]).await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Success) == Some(&1)).await;
    let list = store.list_workflows(&Default::default()).await.unwrap();
    let wf = store.get_workflow(list[0].id).await.unwrap().unwrap();
    let by_name: HashMap<&str, &workflow::StageView> = wf.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by_name["d"].depends_on, vec!["b", "c"]);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 4, "each stage ran once: {log:?}");
    let order: Vec<i64> = log.iter().map(|e| e.task_id).collect();
    let pos = |s: &str| order.iter().position(|&t| t == by_name[s].task_id).unwrap();
    assert!(pos("a") < pos("b") && pos("a") < pos("c") && pos("b") < pos("d") && pos("c") < pos("d"));
    let d = &log[pos("d")];
    assert_eq!(d.parents["b"], json!({"task": by_name["b"].task_id}));
    assert_eq!(d.parents["c"], json!({"task": by_name["c"].task_id}));
    assert!(log.iter().all(|e| e.early == 0 && e.attempt == 1));
    // Finished after all of its parents, on the database clock.
    assert!(by_name["d"].finished_at > by_name["b"].finished_at.max(by_name["c"].finished_at));
    // task.get on a stage names its workflow and stage.
    let t = store.get(by_name["d"].task_id).await.unwrap().unwrap();
    assert_eq!((t.workflow_id, t.stage.as_deref()), (Some(wf.id), Some("d")));
    assert!(wf.finished_at.is_some());
    app.shutdown(Duration::from_secs(10)).await;
}

async fn thousand_diamonds_under_chaos(kind: Kind) {
    // One heavy workflow test at a time, on any transport (two cores). It once stalled in CI: the database breaker
    // let every failed commit double its wait, up to 30 s, while chaos kept failing commits; and on RabbitMQ,
    // messages of failed commits held the prefetch window until their visibility ran out. Both fixed.
    let _turn = sqs_turn(Kind::Sqs).await;
    let _metrics = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, kind);
    settings.chaos.error_rate = 0.1;
    settings.retry.default_max_attempts = 50;
    // The emulator takes a few hundred messages/s at best (4 stages x 2 messages per diamond, plus retries): 100
    // diamonds take about 35 s there, 1,000 would take six minutes (WORKFLOWS_SQS_N sets it).
    let n = if kind != Kind::Sqs {
        1000
    } else {
        std::env::var("WORKFLOWS_SQS_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
    };
    // The commit stages' chaos strikes per statement, and group commits make few of them: strike more often.
    settings.chaos.persister = Some(0.5);
    settings.chaos.result_sink = Some(0.3);
    let transport = transport(&settings).await;
    let log = Log::default();
    let injected = || {
        ["persister", "acquirer", "worker", "result_sink"]
            .map(|s| metrics().chaos_injected.with_label_values(&[s]).get())
    };
    let before = injected();
    let started = Instant::now();
    let app = start(&settings, &[], transport.clone(), handlers(&log));
    let diamonds: Vec<Value> = (0..n).map(diamond).collect();
    // Single submissions and batches of ten.
    submit_on_queue_by(transport.as_ref(), &diamonds[..n / 2], 1).await;
    submit_on_queue(transport.as_ref(), &diamonds[n / 2..]).await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(if kind == Kind::Memory { 180 } else { 600 }), |c| {
        c.get(&WorkflowState::Success) == Some(&(n as i64))
    })
    .await;
    eprintln!("{n} diamonds under chaos on {kind:?}: {:.1} s", started.elapsed().as_secs_f64());
    check_diamonds(&store, &log, n).await;
    let after = injected();
    for (i, stage) in ["persister", "acquirer", "worker", "result_sink"].iter().enumerate() {
        assert!(after[i] > before[i], "chaos never hit {stage}");
    }
    app.shutdown(Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn thousand_diamonds_under_chaos_memory() {
    thousand_diamonds_under_chaos(Kind::Memory).await
}

#[actix_rt::test]
async fn diamonds_under_chaos_sqs() {
    thousand_diamonds_under_chaos(Kind::Sqs).await
}

#[actix_rt::test]
async fn thousand_diamonds_under_chaos_rabbitmq() {
    thousand_diamonds_under_chaos(Kind::RabbitMq).await
}

#[actix_rt::test]
async fn failure_cancels_dependents_runs_on_failure_and_retry_resumes() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let log = Log::default();
    let switch = Arc::new(AtomicBool::new(true));
    let app = start(&settings, &[], transport.clone(), handlers(&log).with("flaky", Flaky(switch.clone())));
    submit_on_queue(
        transport.as_ref(),
        &[json!({
            "name": "fails",
            "stages": [
                {"name": "a", "action": "rec"},
                {"name": "b", "action": "flaky", "depends_on": ["a"], "max_attempts": 2},
                {"name": "c", "action": "rec", "depends_on": ["b"]},
                {"name": "d", "action": "rec", "depends_on": ["c", "a"]},
                {"name": "side", "action": "rec", "depends_on": ["a"]},
            ],
            "on_failure": {"name": "alert", "action": "rec", "payload": {"to": "ops"}}
        })],
    )
    .await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Failed) == Some(&1)).await;
    let id = store.list_workflows(&Default::default()).await.unwrap()[0].id;
    // on_failure runs once the workflow is FAILED, and sees which stage failed and why.
    let mut wf = store.get_workflow(id).await.unwrap().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while wf.stages.iter().any(|s| s.on_failure && s.state != TaskState::Success)
        || !wf.stages.iter().any(|s| s.on_failure)
    {
        assert!(Instant::now() < until, "on_failure never ran: {wf:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        wf = store.get_workflow(id).await.unwrap().unwrap();
    }
    let st: HashMap<&str, &workflow::StageView> = wf.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(st["b"].state, TaskState::CriticalError);
    assert_eq!(st["b"].attempts, 2);
    for dep in ["c", "d"] {
        assert_eq!(st[dep].state, TaskState::Cancelled, "{dep}");
        assert_eq!(st[dep].error.as_ref().unwrap()["upstream"], "b", "{dep}: the reason names the failed stage");
    }
    assert_eq!(st["side"].state, TaskState::Success, "an independent branch runs on");
    assert_eq!(wf.state, WorkflowState::Failed);
    let alert = log.lock().unwrap().iter().find(|e| e.task_id == st["alert"].task_id).cloned().unwrap();
    assert_eq!(alert.failed.as_ref().unwrap()["stage"], "b");
    assert_eq!(alert.failed.as_ref().unwrap()["task_id"], st["b"].task_id);
    assert!(log.lock().unwrap().iter().all(|e| e.task_id != st["c"].task_id && e.task_id != st["d"].task_id));

    // task.retry of the failed stage resumes the workflow: its dependents wait again, then run.
    switch.store(false, Ordering::SeqCst);
    assert!(store.retry(st["b"].task_id, MaxAttempts::parse(1).unwrap()).await.unwrap());
    let again = store.get_workflow(id).await.unwrap().unwrap();
    assert_eq!(again.state, WorkflowState::Running);
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Success) == Some(&1)).await;
    let wf = store.get_workflow(id).await.unwrap().unwrap();
    assert!(wf.stages.iter().filter(|s| !s.on_failure).all(|s| s.state == TaskState::Success), "{wf:?}");
    let d = log.lock().unwrap().iter().find(|e| e.task_id == st["d"].task_id).cloned().unwrap();
    assert_eq!(d.parents.keys().collect::<Vec<_>>(), vec!["a", "c"]);
    assert!(log.lock().unwrap().iter().all(|e| e.early == 0));
    app.shutdown(Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn retrying_one_of_two_failed_stages_keeps_their_shared_dependent_cancelled_until_both_are_retried() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let log = Log::default();
    let (x_fails, y_fails) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let handlers = handlers(&log).with("x", Flaky(x_fails.clone())).with("y", Flaky(y_fails.clone()));
    let app = start(&settings, &[], transport.clone(), handlers);
    submit_on_queue(
        transport.as_ref(),
        &[json!({
            "name": "two-failures",
            "stages": [
                {"name": "x", "action": "x", "max_attempts": 1},
                {"name": "y", "action": "y", "max_attempts": 1},
                {"name": "mid", "action": "rec", "depends_on": ["y"]},
                {"name": "d", "action": "rec", "depends_on": ["x", "mid"]},
            ]
        })],
    )
    .await;
    let store = db.store();
    let id = only_workflow(&store).await;
    let failed = |n: &str, st: &Stages| st[n].state == TaskState::CriticalError;
    let (_, st) = wait_stages(&store, id, Duration::from_secs(30), "x and y both failed", |st| {
        failed("x", st) && failed("y", st)
    })
    .await;
    assert_eq!(st["d"].state, TaskState::Cancelled);

    // Retry x: it succeeds, but d still has y failed upstream (through mid): it stays CANCELLED, naming y.
    x_fails.store(false, Ordering::SeqCst);
    assert!(store.retry(st["x"].task_id, MaxAttempts::parse(1).unwrap()).await.unwrap());
    let (state, st) = wait_stages(&store, id, Duration::from_secs(30), "x succeeded after its retry", |st| {
        st["x"].state == TaskState::Success
    })
    .await;
    assert_eq!(state, WorkflowState::Failed, "y still failed");
    assert_eq!(st["d"].state, TaskState::Cancelled, "not left WAITING for a stage that is not coming: {:?}", st["d"]);
    assert_eq!(st["d"].error.as_ref().unwrap()["upstream"], "y", "{:?}", st["d"]);
    assert!(st.values().all(|s| s.state.is_finished()), "every stage finished, so the cleaner can take it: {st:?}");

    // Retry y: mid and d wait again, then run; the workflow succeeds.
    y_fails.store(false, Ordering::SeqCst);
    assert!(store.retry(st["y"].task_id, MaxAttempts::parse(1).unwrap()).await.unwrap());
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Success) == Some(&1)).await;
    let (_, st) = wait_stages(&store, id, Duration::ZERO, "all SUCCESS", |_| true).await;
    assert!(st.values().all(|s| s.state == TaskState::Success), "{st:?}");
    let d = log.lock().unwrap().iter().filter(|e| e.task_id == st["d"].task_id).count();
    assert_eq!(d, 1, "d ran once");
    app.shutdown(Duration::from_secs(10)).await;
}

/// Spawns one child that sleeps 20 s with a 0.3 s timeout.
struct SpawnsSlow;

#[async_trait::async_trait]
impl Handler for SpawnsSlow {
    async fn handle(&self, _: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        let slow = json!({"name": "slow", "action": "sleep", "payload": {"ms": 20_000}, "timeout_secs": 0.3,
                          "max_attempts": 1});
        Ok(workflow::spawn_result(json!("spawned"), vec![slow]))
    }
}

#[actix_rt::test]
async fn a_stages_own_timeout_applies_submitted_spawned_and_on_failure() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let log = Log::default();
    let app = start(&settings, &[], transport.clone(), handlers(&log).with("spawns_slow", SpawnsSlow));
    let slow = |name: &str| {
        json!({"name": name, "action": "sleep", "payload": {"ms": 20_000}, "timeout_secs": 0.3,
                                   "max_attempts": 1})
    };
    let mut parent = json!({"name": "parent", "action": "spawns_slow"});
    parent["max_attempts"] = json!(1);
    submit_on_queue(
        transport.as_ref(),
        &[json!({"name": "timeouts", "stages": [slow("slow"), parent], "on_failure": slow("alert")})],
    )
    .await;
    let store = db.store();
    let id = only_workflow(&store).await;
    // Each of the three sleeps 20 s unless its own timeout (0.3 s) ends it: all three end well before that.
    let (_, st) = wait_stages(&store, id, Duration::from_secs(15), "the three sleeps ended", |st| {
        ["slow", "parent/slow", "alert"].iter().all(|n| st.get(*n).is_some_and(|s| s.state.is_finished()))
    })
    .await;
    for name in ["slow", "parent/slow", "alert"] {
        let s = &st[name];
        assert_eq!(s.state, TaskState::CriticalError, "{name}: {s:?}");
        assert_eq!(s.error.as_ref().unwrap()["code"], sqs_scheduler::protocol::TIMEOUT_ERROR, "{name}: {s:?}");
    }
    assert_eq!(st["parent"].state, TaskState::Success);
    app.shutdown(Duration::from_secs(10)).await;
}

/// Spawns a chain x -> y (y depends on its sibling x).
struct SpawnsChain;

#[async_trait::async_trait]
impl Handler for SpawnsChain {
    async fn handle(&self, _: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        let x = json!({"name": "x", "action": "rec"});
        let y = json!({"name": "y", "action": "rec", "depends_on": ["x"]});
        Ok(workflow::spawn_result(json!("chain"), vec![x, y]))
    }
}

#[actix_rt::test]
async fn spawned_stages_may_depend_on_their_siblings() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let log = Log::default();
    let app = start(&settings, &[], transport.clone(), handlers(&log).with("chain", SpawnsChain));
    let stages = json!([{"name": "p", "action": "chain"}, {"name": "after", "action": "rec", "depends_on": ["p"]}]);
    submit_on_queue(transport.as_ref(), &[json!({"name": "siblings", "stages": stages})]).await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Success) == Some(&1)).await;
    let id = only_workflow(&store).await;
    let (_, st) = wait_stages(&store, id, Duration::ZERO, "all SUCCESS", |_| true).await;
    assert_eq!(st.len(), 4, "{st:?}");
    assert_eq!(st["p/y"].depends_on, vec!["p", "p/x"], "y depends on its parent and its sibling");
    let log = log.lock().unwrap().clone();
    assert!(log.iter().all(|e| e.early == 0), "no stage ran before its parents: {log:?}");
    let pos = |n: &str| log.iter().position(|e| e.task_id == st[n].task_id).unwrap();
    assert!(pos("p/x") < pos("p/y") && pos("p/y") < pos("after"), "x, then y, then after: {log:?}");
    assert_eq!(log.iter().filter(|e| e.task_id == st["p/y"].task_id).count(), 1, "y ran once");
    let y = &log[pos("p/y")];
    assert_eq!(y.parents.keys().map(String::as_str).collect::<HashSet<_>>(), HashSet::from(["p", "p/x"]));
    let after = &log[pos("after")];
    assert_eq!(after.parents.keys().map(String::as_str).collect::<HashSet<_>>(), HashSet::from(["p", "p/x", "p/y"]));
    app.shutdown(Duration::from_secs(10)).await;
}

/// Returns a string of `payload.bytes` bytes.
struct Big;

#[async_trait::async_trait]
impl Handler for Big {
    async fn handle(&self, _: &HandlerContext, payload: &Value) -> Result<Value, HandlerError> {
        Ok(json!("x".repeat(payload["bytes"].as_u64().unwrap_or(0) as usize)))
    }
}

#[actix_rt::test]
async fn parents_results_too_large_for_the_childs_message_fail_it_visibly() {
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    settings.transport.max_message_bytes = 4096;
    let transport = transport(&settings).await;
    let log = Log::default();
    let app = start(&settings, &[], transport.clone(), handlers(&log).with("big", Big));
    // Each parent's result fits (3,000 bytes); both together in the child's message do not.
    submit_on_queue(
        transport.as_ref(),
        &[json!({
            "name": "piles-up",
            "stages": [
                {"name": "a", "action": "big", "payload": {"bytes": 3000}},
                {"name": "b", "action": "big", "payload": {"bytes": 3000}},
                {"name": "join", "action": "rec", "depends_on": ["a", "b"], "max_attempts": 2},
                {"name": "huge", "action": "big", "payload": {"bytes": 5000}, "max_attempts": 2},
            ]
        })],
    )
    .await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(30), |c| c.get(&WorkflowState::Failed) == Some(&1)).await;
    let id = store.list_workflows(&Default::default()).await.unwrap()[0].id;
    let (_, st) = wait_stages(&store, id, Duration::from_secs(30), "every stage finished", |st| {
        st.values().all(|s| s.state.is_finished())
    })
    .await;
    assert_eq!((st["a"].state, st["b"].state), (TaskState::Success, TaskState::Success));
    for (name, what) in [("join", "task message"), ("huge", "result")] {
        let s = &st[name];
        assert_eq!(s.state, TaskState::CriticalError, "{name}: {s:?}");
        assert_eq!(s.attempts, 2, "{name}: retried, then given up");
        let e = s.error.as_ref().unwrap();
        assert_eq!(e["code"], sqs_scheduler::protocol::TOO_LARGE_ERROR, "{name}: {e}");
        assert!(e["message"].as_str().unwrap().contains(&format!("the {what} would be")), "{name}: {e}");
        assert_eq!(e["data"]["limit"], 4096);
    }
    assert!(log.lock().unwrap().iter().all(|e| e.task_id != st["join"].task_id), "the join never ran");
    app.shutdown(Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn fan_out_of_100_then_fan_in_under_chaos_spawns_once() {
    let _metrics = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    // Results that went out but "failed": stages run again, and their second results are stale.
    settings.chaos.worker = Some(0.2);
    settings.chaos.result_sink = Some(0.2);
    settings.retry.default_max_attempts = 50;
    let transport = transport(&settings).await;
    let log = Log::default();
    let app = start(&settings, &[], transport.clone(), handlers(&log));
    submit_on_queue(
        transport.as_ref(),
        &[json!({"name": "fan", "stages": [
            {"name": "fan", "action": "rec", "payload": {"spawn": 100}},
            {"name": "join", "action": "rec", "depends_on": ["fan"]},
        ]})],
    )
    .await;
    let store = db.store();
    wait_workflows(&store, Duration::from_secs(60), |c| c.get(&WorkflowState::Success) == Some(&1)).await;
    let id = store.list_workflows(&Default::default()).await.unwrap()[0].id;
    let wf = store.get_workflow(id).await.unwrap().unwrap();
    assert_eq!(wf.stages.len(), 102, "fan, join and 100 children, each once");
    assert_eq!(wf.stages_total, 102);
    let join = wf.stages.iter().find(|s| s.name == "join").unwrap();
    let mut deps = join.depends_on.clone();
    deps.sort();
    assert_eq!(deps.len(), 101, "join waits for fan and each child: {deps:?}");
    let log = log.lock().unwrap().clone();
    let join_runs: Vec<&Exec> = log.iter().filter(|e| e.task_id == join.task_id).collect();
    assert!(!join_runs.is_empty());
    for r in &join_runs {
        assert_eq!(r.parents.len(), 101, "join sees fan's and every child's result");
        assert_eq!(
            r.parents["fan/c7"],
            json!({"task": wf.stages.iter().find(|s| s.name == "fan/c7").unwrap().task_id})
        );
        assert_eq!(r.parents["fan"], json!({"task": wf.stages.iter().find(|s| s.name == "fan").unwrap().task_id}));
    }
    let join_finished = join.finished_at.unwrap();
    assert!(wf.stages.iter().filter(|s| s.name.starts_with("fan/")).all(|s| s.finished_at.unwrap() < join_finished));
    assert!(log.iter().all(|e| e.early == 0), "no stage ran early");
    app.shutdown(Duration::from_secs(10)).await;
}

/// At the store: the parent's first attempt fails, its second spawns; a duplicate of that result and a late
/// result of the first attempt are stale, so the children exist once.
#[actix_rt::test]
async fn a_retried_parent_does_not_duplicate_its_children() {
    let db = TestDb::new().await;
    let store = db.store();
    let wf = workflow::parse_submit(
        Some(json!({"name": "f", "stages": [
            {"name": "fan", "action": "noop", "max_attempts": 5},
            {"name": "join", "action": "noop", "depends_on": ["fan"]}]})),
        MaxAttempts::default(),
        256 * 1024,
    )
    .unwrap();
    let sub = store.submit_workflows(&[wf]).await.unwrap().remove(0);
    let fan = sub.tasks.iter().find(|t| t.0 == "fan").unwrap().1;
    let spawn = workflow::spawn_result(
        json!("ok"),
        (0..100).map(|i| json!({"name": format!("c{i}"), "action": "noop"})).collect(),
    );
    let got = store.acquire_batch(10).await.unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![fan]);
    let fail = TaskResult { id: fan, attempt: 1, outcome: Outcome::Failure(json!({"code": 1, "message": "x"})) };
    store.complete_many(&[fail]).await.unwrap();
    exec_sql(&db, &format!("UPDATE tasks SET run_at = now() WHERE id = {fan}")).await;
    let got = store.acquire_batch(10).await.unwrap();
    assert_eq!((got[0].id, got[0].attempt), (fan, 2));
    let ok = TaskResult { id: fan, attempt: 2, outcome: Outcome::Success(spawn.clone()) };
    let late = TaskResult { id: fan, attempt: 1, outcome: Outcome::Success(spawn.clone()) };
    let c = store.complete_many(&[ok.clone(), ok.clone(), late]).await.unwrap();
    assert_eq!(c.applied.len(), 1);
    assert_eq!(c.stale.len(), 2);
    let c = store.complete_many(&[ok]).await.unwrap();
    assert_eq!(c.stale.len(), 1);
    let w = store.get_workflow(sub.workflow_id).await.unwrap().unwrap();
    assert_eq!(w.stages.len(), 102);
    assert_eq!(w.stages_total, 102);
    let children = store.acquire_batch(1000).await.unwrap();
    assert_eq!(children.len(), 100, "the children are due; join waits for them");
    assert!(children.iter().all(|t| t.payload["_meta"]["parents"]["fan"] == json!("ok")));
    let join = w.stages.iter().find(|s| s.name == "join").unwrap();
    assert_eq!(join.state, TaskState::Waiting);
    let results: Vec<TaskResult> = children
        .iter()
        .map(|t| TaskResult { id: t.id, attempt: t.attempt, outcome: Outcome::Success(json!(t.id)) })
        .collect();
    store.complete_many(&results).await.unwrap();
    let j = store.acquire_batch(10).await.unwrap();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].id, join.task_id);
    assert_eq!(j[0].payload["_meta"]["parents"].as_object().unwrap().len(), 101);
}

async fn exec_sql(db: &TestDb, sql: &str) {
    common::exec(&db.url, sql).await
}

#[actix_rt::test]
async fn every_bad_workflow_gets_its_error_and_stores_nothing() {
    let db = TestDb::new().await;
    let s = sqs_scheduler::configuration::Settings { database: db.settings(), ..Default::default() };
    let api = HttpApi::new(HttpState {
        settings: Arc::new(s),
        store: db.store(),
        transport: None,
        rpc_enabled: true,
        known_actions: sqs_scheduler::handlers::KnownActions::any(),
    });
    let app = test::init_service(build_app(api)).await;
    let many: Vec<Value> = (0..1001).map(|i| json!({"name": format!("s{i}"), "action": "noop"})).collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "x", "stages": [
                {"name": "a", "action": "noop", "depends_on": ["c"]},
                {"name": "b", "action": "noop", "depends_on": ["a"]},
                {"name": "c", "action": "noop", "depends_on": ["b"]}]}),
            "dependency cycle",
        ),
        (
            json!({"name": "x", "stages": [{"name": "a", "action": "noop", "depends_on": ["nope"]}]}),
            "unknown stage \"nope\"",
        ),
        (
            json!({"name": "x", "stages": [{"name": "a", "action": "noop"}, {"name": "a", "action": "noop"}]}),
            "duplicate stage name \"a\"",
        ),
        (json!({"name": "x", "stages": []}), "at least one stage"),
        (json!({"name": "x", "stages": many}), "at most 1000 stages"),
        (
            json!({"name": "x", "stages": [{"name": "a", "action": "noop", "payload": [1]}]}),
            "stage 0 (\"a\"): invalid payload",
        ),
        (json!({"name": "x", "stages": [{"name": "a", "action": "noop", "priority": 1000}]}), "invalid priority"),
        (json!({"name": "x", "stages": [{"name": "a", "action": "noop", "retries": 1}]}), "unknown member \"retries\""),
        (json!({"name": "x", "stages": [{"name": "a"}]}), "action is required"),
        (json!({"stages": [{"name": "a", "action": "noop"}]}), "invalid name: is required"),
    ];
    for (params, want) in cases {
        let body = json!({"jsonrpc": "2.0", "method": "workflow.submit", "params": params, "id": 1}).to_string();
        let req = test::TestRequest::post()
            .uri("/rpc")
            .peer_addr("127.0.0.1:40000".parse().unwrap())
            .set_payload(body.clone())
            .to_request();
        let res: Value = test::call_and_read_body_json(&app, req).await;
        assert_eq!(res["error"]["code"], -32602, "{res}");
        let msg = res["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
    }
    assert_eq!(count_rows(&db, "workflows").await, 0);
    assert_eq!(count_rows(&db, "tasks").await, 0);
    assert_eq!(count_rows(&db, "workflow_edges").await, 0);
    // The cycle is named.
    let req = test::TestRequest::post()
        .uri("/rpc")
        .peer_addr("127.0.0.1:40000".parse().unwrap())
        .set_payload(
            json!({"jsonrpc": "2.0", "method": "workflow.submit", "id": 2, "params": {"name": "x", "stages": [
                {"name": "root", "action": "noop"},
                {"name": "p", "action": "noop", "depends_on": ["root", "q"]},
                {"name": "q", "action": "noop", "depends_on": ["p"]}]}})
            .to_string(),
        )
        .to_request();
    let res: Value = test::call_and_read_body_json(&app, req).await;
    let cycle: HashSet<String> = serde_json::from_value(res["error"]["data"]["cycle"].clone()).unwrap();
    assert_eq!(cycle, HashSet::from(["p".to_string(), "q".to_string()]));
    // A good one is stored, once; workflow.get, workflow.list and workflow.cancel answer.
    let call = |method: &str, params: Value| {
        test::TestRequest::post()
            .uri("/rpc")
            .peer_addr("127.0.0.1:40000".parse().unwrap())
            .set_payload(json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 3}).to_string())
            .to_request()
    };
    let good = json!({"name": "ok", "stages": [{"name": "a", "action": "noop"}, {"name": "b", "action": "noop", "depends_on": ["a"]}]});
    let r1: Value = test::call_and_read_body_json(&app, call("workflow.submit", good.clone())).await;
    let r2: Value = test::call_and_read_body_json(&app, call("workflow.submit", good)).await;
    assert_eq!(r1["result"]["created"], true, "{r1}");
    assert_eq!(r2["result"]["created"], false, "the same submission is the same workflow: {r2}");
    assert_eq!(r1["result"]["workflow_id"], r2["result"]["workflow_id"]);
    assert_eq!(r1["result"]["tasks"], r2["result"]["tasks"]);
    let id = r1["result"]["workflow_id"].clone();
    let got: Value = test::call_and_read_body_json(&app, call("workflow.get", json!({"id": id}))).await;
    assert_eq!(got["result"]["state"], "RUNNING");
    assert_eq!(got["result"]["stages"][1]["state"], "WAITING");
    assert_eq!(got["result"]["stages"][1]["depends_on"], json!(["a"]));
    let b = got["result"]["stages"][1]["task_id"].clone();
    let t: Value = test::call_and_read_body_json(&app, call("task.get", json!({"id": b}))).await;
    assert_eq!((t["result"]["workflow_id"].clone(), t["result"]["stage"].clone()), (id.clone(), json!("b")));
    let listed: Value = test::call_and_read_body_json(&app, call("workflow.list", json!({"state": "RUNNING"}))).await;
    assert_eq!(listed["result"]["workflows"].as_array().unwrap().len(), 1);
    let c: Value = test::call_and_read_body_json(&app, call("workflow.cancel", json!({"id": id}))).await;
    assert_eq!(c["result"]["state"], "CANCELLED");
    let got: Value = test::call_and_read_body_json(&app, call("workflow.get", json!({"id": id}))).await;
    assert!(got["result"]["stages"].as_array().unwrap().iter().all(|s| s["state"] == "CANCELLED"), "{got}");
    let missing: Value = test::call_and_read_body_json(&app, call("workflow.get", json!({"id": 999999}))).await;
    assert_eq!(missing["error"]["code"], -32006);
}

#[actix_rt::test]
async fn a_bad_workflow_on_the_inbound_queue_is_dead_lettered_and_stores_nothing() {
    let _metrics = metrics_turn().await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let before = dead_lettered(&settings, Queue::Inbound, "invalid_params");
    let app =
        start(&settings, &[sqs_scheduler::startup::Role::Submitter], transport.clone(), HandlerRegistry::builtin());
    let bad = json!({"name": "x", "stages": [{"name": "a", "action": "noop", "depends_on": ["a"]}]});
    submit_on_queue(transport.as_ref(), &[bad]).await;
    wait_until(Duration::from_secs(20), "the bad workflow dead-lettered", || async {
        dead_lettered(&settings, Queue::Inbound, "invalid_params") > before
    })
    .await;
    assert_eq!(count_rows(&db, "workflows").await, 0);
    assert_eq!(count_rows(&db, "tasks").await, 0);
    app.shutdown(Duration::from_secs(10)).await;
}

/// Two scheduler+resulter processes (two Acquirers, two ResultSinks) over SQS, the workers in this process:
/// every stage acquired once, none before all its parents succeeded.
#[actix_rt::test]
async fn two_schedulers_and_two_result_sinks_never_run_a_stage_early_or_twice() {
    let _turn = sqs_turn(Kind::Sqs).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let n: usize = std::env::var("WORKFLOWS_PROCESSES_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let transport = transport(&settings).await;
    let store = db.store();
    let wfs: Vec<_> =
        (0..n).map(|i| workflow::parse_submit(Some(diamond(i)), MaxAttempts::default(), 256 * 1024).unwrap()).collect();
    for chunk in wfs.chunks(200) {
        store.submit_workflows(chunk).await.unwrap();
    }
    let _p1 = spawn_roles(&settings, &["scheduler", "resulter"], &[]);
    let _p2 = spawn_roles(&settings, &["scheduler", "resulter"], &[]);
    let log = Log::default();
    let started = Instant::now();
    let (transport, delivered) = RecordDeliveries::wrap(transport);
    let app = start(&settings, &[sqs_scheduler::startup::Role::Worker], transport, handlers(&log));
    wait_workflows(&store, Duration::from_secs(1500), |c| c.get(&WorkflowState::Success) == Some(&(n as i64))).await;
    eprintln!("{n} diamonds over two schedulers and result sinks: {:.1} s", started.elapsed().as_secs_f64());
    check_diamonds(&store, &log, n).await;
    // None twice: every stage acquired once and sent once (one outbound message each); a stage runs again only
    // when SQS delivers its one message again (at-least-once delivery, counted and reported).
    assert_eq!(count_rows(&db, "tasks WHERE attempts <> 1").await, 0, "a stage was acquired twice");
    let runs_log = log.lock().unwrap().clone();
    let mut runs: HashMap<i64, usize> = HashMap::new();
    for e in &runs_log {
        *runs.entry(e.task_id).or_default() += 1;
    }
    assert_eq!(runs.len(), 4 * n);
    let (outbound_deliveries, outbound_messages) = deliveries(&delivered, Queue::Outbound);
    assert_eq!(outbound_messages, 4 * n, "one outbound message per stage");
    assert!(runs_log.len() <= outbound_deliveries, "a run without a delivery of its message");
    if outbound_deliveries > 4 * n {
        eprintln!("SQS delivered {} outbound messages again", outbound_deliveries - 4 * n);
    }
    app.shutdown(Duration::from_secs(10)).await;
}

/// At the store: the two parents of 300 diamonds' d complete in two concurrent statements (b's in one, c's in the
/// other, in opposite orders): every d is promoted exactly once, with both results, and no d before both.
#[actix_rt::test]
async fn concurrent_completions_of_two_parents_promote_each_child_once() {
    let db = TestDb::new().await;
    let store = db.store();
    let other = db.store();
    let n = 300;
    let wfs: Vec<_> =
        (0..n).map(|i| workflow::parse_submit(Some(diamond(i)), MaxAttempts::default(), 256 * 1024).unwrap()).collect();
    let subs = store.submit_workflows(&wfs).await.unwrap();
    let stage = |s: &workflow::WorkflowSubmitted, name: &str| s.tasks.iter().find(|t| t.0 == name).unwrap().1;
    let ok = |t: &sqs_scheduler::store::AcquiredTask| TaskResult {
        id: t.id,
        attempt: t.attempt,
        outcome: Outcome::Success(json!({"from": t.id})),
    };
    let a = store.acquire_batch(10_000).await.unwrap();
    assert_eq!(a.len(), n, "only the a stages are due");
    store.complete_many(&a.iter().map(ok).collect::<Vec<_>>()).await.unwrap();
    let bc = store.acquire_batch(10_000).await.unwrap();
    assert_eq!(bc.len(), 2 * n, "b and c of every diamond, d waits");
    let bs: HashSet<i64> = subs.iter().map(|s| stage(s, "b")).collect();
    let (b_results, mut c_results): (Vec<_>, Vec<_>) = bc.iter().map(ok).partition(|r| bs.contains(&r.id));
    c_results.reverse();
    let (x, y) = futures::join!(store.complete_many(&b_results), other.complete_many(&c_results));
    assert_eq!(x.unwrap().applied.len() + y.unwrap().applied.len(), 2 * n);
    let ds = store.acquire_batch(10_000).await.unwrap();
    assert_eq!(ds.len(), n, "every d promoted once");
    for d in &ds {
        let parents = d.payload["_meta"]["parents"].as_object().unwrap();
        assert_eq!(parents.len(), 2, "{d:?}");
    }
    assert_eq!(count_rows(&db, "tasks WHERE pending_parents <> 0").await, 0);
    store.complete_many(&ds.iter().map(ok).collect::<Vec<_>>()).await.unwrap();
    let c = workflow_counts(&store).await;
    assert_eq!(c[&WorkflowState::Success], n as i64, "{c:?}");
}

/// The cleaner deletes a workflow with all its stages and edges once the whole workflow finished, never a stage
/// alone, and never a workflow with a stage still running.
#[actix_rt::test]
async fn the_cleaner_deletes_a_workflow_only_whole_and_finished() {
    let db = TestDb::new().await;
    let store = db.store();
    let parse = |v: Value| workflow::parse_submit(Some(v), MaxAttempts::default(), 256 * 1024).unwrap();
    let two = |name: &str| {
        parse(json!({"name": name, "stages": [
            {"name": "a", "action": "noop"}, {"name": "b", "action": "noop", "depends_on": ["a"]},
            {"name": "side", "action": "noop"}]}))
    };
    let subs = store.submit_workflows(&[two("done"), two("failed")]).await.unwrap();
    let due = store.acquire_batch(100).await.unwrap(); // a and side of both
    assert_eq!(due.len(), 4);
    let failed_a = subs[1].tasks.iter().find(|t| t.0 == "a").unwrap().1;
    let failed_side = subs[1].tasks.iter().find(|t| t.0 == "side").unwrap().1;
    let results: Vec<TaskResult> = due
        .iter()
        .filter(|t| t.id != failed_side) // still running
        .map(|t| TaskResult {
            id: t.id,
            attempt: t.attempt,
            outcome: if t.id == failed_a {
                Outcome::Failure(json!({"code": 1, "message": "no"}))
            } else {
                Outcome::Success(json!(1))
            },
        })
        .collect();
    exec_sql(&db, "UPDATE tasks SET max_attempts = 1").await;
    store.complete_many(&results).await.unwrap();
    let b = store.acquire_batch(100).await.unwrap();
    assert_eq!(b.len(), 1, "b of the first workflow only");
    store
        .complete_many(&[TaskResult { id: b[0].id, attempt: b[0].attempt, outcome: Outcome::Success(json!(2)) }])
        .await
        .unwrap();
    assert_eq!(store.get_workflow(subs[0].workflow_id).await.unwrap().unwrap().state, WorkflowState::Success);
    assert_eq!(store.get_workflow(subs[1].workflow_id).await.unwrap().unwrap().state, WorkflowState::Failed);
    // Ordinary cleaning leaves stages alone.
    let n = store.clean_finished(0.0, &[TaskState::Success, TaskState::CriticalError, TaskState::Cancelled], 100).await;
    assert_eq!(n.unwrap(), 0);
    let all = [WorkflowState::Success, WorkflowState::Failed, WorkflowState::Cancelled];
    assert_eq!(store.clean_workflows(0.0, &all, 100).await.unwrap(), 1, "the finished one only");
    assert!(store.get_workflow(subs[0].workflow_id).await.unwrap().is_none());
    assert_eq!(count_rows(&db, &format!("tasks WHERE workflow_id = {}", subs[0].workflow_id)).await, 0);
    assert_eq!(count_rows(&db, &format!("workflow_edges WHERE workflow_id = {}", subs[0].workflow_id)).await, 0);
    // The failed one still has a running stage: kept until it finishes.
    store
        .complete_many(&[TaskResult { id: failed_side, attempt: 1, outcome: Outcome::Success(json!(3)) }])
        .await
        .unwrap();
    assert_eq!(store.clean_workflows(0.0, &[WorkflowState::Success], 100).await.unwrap(), 0, "FAILED not listed");
    assert_eq!(store.clean_workflows(0.0, &all, 100).await.unwrap(), 1);
    assert_eq!(count_rows(&db, "tasks").await, 0);
}

/// Listens on `channel` and forwards each notification's payload.
async fn listen(db: &TestDb, channel: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (client, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
    // The connection lives as long as the client: keep it for the test's duration.
    tokio::spawn(async move {
        let _client = client;
        futures::future::pending::<()>().await
    });
    rx
}

/// A running stage cancelled (task.cancel, then workflow.cancel of another workflow) ends CANCELLED at once, its
/// worker is told (`tasks_cancel` id:attempt), its late result is stale, and the workflow's counters agree.
#[tokio::test]
async fn cancelling_a_running_stage_ends_it_at_once_and_cascades() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut rx = listen(&db, "tasks_cancel").await;
    let parse = |v: Value| workflow::parse_submit(Some(v), MaxAttempts::default(), 256 * 1024).unwrap();
    let subs = store.submit_workflows(&[parse(diamond(1)), parse(diamond(2))]).await.unwrap();
    let running = store.acquire_batch(10).await.unwrap();
    assert_eq!(running.len(), 2, "each diamond's root runs");
    let (first, second) = (&running[0], &running[1]);

    // task.cancel of the running root: CANCELLED now, its dependents cancelled in the same statement.
    assert_eq!(store.cancel(first.id).await.unwrap(), sqs_scheduler::store::CancelOutcome::CancelledRunning);
    let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(payload, format!("{}:{}", first.id, first.attempt));
    let w1 = subs.iter().find(|s| s.tasks.iter().any(|t| t.1 == first.id)).unwrap().workflow_id;
    let w = store.get_workflow(w1).await.unwrap().unwrap();
    assert_eq!(w.state, WorkflowState::Failed);
    assert!(w.stages.iter().all(|s| s.state == TaskState::Cancelled), "{:?}", w.stages);

    // workflow.cancel with a running stage: the same, through workflows_cancel.
    let w2 = subs.iter().find(|s| s.tasks.iter().any(|t| t.1 == second.id)).unwrap().workflow_id;
    assert_eq!(store.cancel_workflow(w2).await.unwrap(), Some(WorkflowState::Cancelled));
    let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(payload, format!("{}:{}", second.id, second.attempt));
    let w = store.get_workflow(w2).await.unwrap().unwrap();
    assert!(w.stages.iter().all(|s| s.state == TaskState::Cancelled), "{:?}", w.stages);
    assert_eq!(w.stages_failed, w.stages_total, "every stage counted once");

    // Late results of both runs are stale: nothing revives.
    let late: Vec<TaskResult> = running
        .iter()
        .map(|t| TaskResult { id: t.id, attempt: t.attempt, outcome: Outcome::Success(json!({"late": true})) })
        .collect();
    assert_eq!(store.complete_many(&late).await.unwrap().stale.len(), 2);
    assert_eq!(store.acquire_batch(10).await.unwrap().len(), 0, "nothing of either workflow runs");
}

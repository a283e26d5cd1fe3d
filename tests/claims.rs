//! What the Acquirer claims ahead of the workers (issue 18): only what they can start soon, and a dead process's
//! claims that no worker ran come back within seconds, with default settings.

mod common;

use common::pipeline::*;
use common::process::{spawn_roles, Proc};
use common::TestDb;
use serde_json::json;
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::startup::Role;
use sqs_scheduler::store::{Action, NewTask, Payload, Priority, TaskState};
use std::time::{Duration, Instant};

fn sleeps(n: usize, ms: u64) -> Vec<NewTask> {
    (0..n)
        .map(|i| NewTask::new(Action::parse("sleep").unwrap(), Payload::parse(json!({"ms": ms, "i": i})).unwrap()))
        .collect()
}

/// With 3,000 due tasks and workers running 8 at a time, the tasks ACQUIRED stay within the default claim bound
/// (`acquirer.max_outbound_depth` messages waiting, one batch per acquire loop on top, what the worker pool holds),
/// not the whole backlog; and a task submitted later at a higher priority overtakes the backlog.
#[actix_rt::test]
async fn the_acquirer_claims_only_what_the_workers_can_start_soon() {
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    settings.worker.concurrency = 8;
    let store = db.store();
    let backlog = store.submit_many(&sleeps(3000, 20)).await.unwrap();
    let app = start(
        &settings,
        &[Role::Scheduler, Role::Worker, Role::Resulter],
        transport(&settings).await,
        HandlerRegistry::builtin(),
    );
    let a = &settings.acquirer;
    let bound = a.max_outbound_depth as i64 + a.concurrency as i64 * a.batch_size + 8 + 2 * 10;
    assert!(bound < 1000, "the default bound is a few hundred: {bound}");
    let mut max_acquired = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while counts(&store).await.get(&TaskState::Success).copied().unwrap_or(0) < 200 {
        assert!(Instant::now() < until, "the backlog is not draining");
        max_acquired = max_acquired.max(counts(&store).await.get(&TaskState::Acquired).copied().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(max_acquired > 8, "the workers were kept busy: {max_acquired}");
    assert!(max_acquired <= bound, "{max_acquired} tasks ACQUIRED at once (bound {bound})");

    let mut urgent = sleeps(1, 1);
    urgent[0].priority = Priority::parse(100).unwrap();
    let urgent = store.submit_many(&urgent).await.unwrap()[0].id;
    let until = Instant::now() + Duration::from_secs(60);
    while store.get(urgent).await.unwrap().unwrap().state != TaskState::Success {
        assert!(Instant::now() < until, "the urgent task never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = counts(&store).await.get(&TaskState::Success).copied().unwrap_or(0) - 1;
    assert!(done < backlog.len() as i64 - 1000, "the urgent task waited behind {done} of the backlog");
    app.shutdown(Duration::from_secs(10)).await;
}

/// A scheduler (all roles, in-process transport) SIGKILLed with hundreds of claims in flight: a new process with
/// default reaper settings gets every task to SUCCESS within 30 s (before leases, the unsent claims waited for
/// `reaper.queue_timeout_secs`, 600 s, and the started ones for `reaper.stale_timeout_secs`, 120 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_schedulers_claims_are_back_to_work_within_seconds() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let store = db.store();
    store.submit_many(&sleeps(600, 200)).await.unwrap();
    let env = |concurrency: &str| {
        vec![
            ("SCHEDULER_TRANSPORT__KIND", "memory".to_string()),
            // The acquirer's defaults, not run_roles' short SQS queues.
            ("SCHEDULER_ACQUIRER__MAX_OUTBOUND_DEPTH", "400".to_string()),
            ("SCHEDULER_ACQUIRER__BATCH_SIZE", "200".to_string()),
            ("SCHEDULER_WORKER__CONCURRENCY", concurrency.to_string()),
        ]
    };
    // Every role (the in-process transport runs them all in one process).
    let roles: [&str; 0] = [];
    let mut doomed: Proc = spawn_roles(&settings, &roles, &env("4"));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let c = counts(&store).await;
        if c.get(&TaskState::Success).copied().unwrap_or(0) >= 4
            && c.get(&TaskState::Acquired).copied().unwrap_or(0) >= 100
        {
            break;
        }
        assert!(Instant::now() < until, "no claims in flight: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let killed = Instant::now();
    let in_flight = counts(&store).await.get(&TaskState::Acquired).copied().unwrap_or(0);
    let _next = spawn_roles(&settings, &roles, &env("64"));
    wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&600)).await;
    eprintln!("{in_flight} claims in flight at the kill; all 600 SUCCESS {:?} after it", killed.elapsed());
}

//! The binary as separate processes over the local SQS endpoint: the five roles each in their own process, and a
//! worker killed with SIGKILL mid-task.

mod common;

use common::pipeline::*;
use common::process::{spawn_roles, Proc};
use common::TestDb;
use serde_json::json;
use sqs_scheduler::store::TaskState;
use sqs_scheduler::transport::Queue;
use std::process::Command;
use std::time::{Duration, Instant};

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.0.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The roles as one process, with short retry delays (a killed worker's task is retried soon).
fn spawn(settings: &sqs_scheduler::configuration::Settings, roles: &[&str], extra_env: &[(&str, String)]) -> Proc {
    let mut env = vec![
        ("SCHEDULER_RETRY__BASE_DELAY_SECS", "0.05".to_string()),
        ("SCHEDULER_RETRY__MAX_DELAY_SECS", "0.2".to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    spawn_roles(settings, roles, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_roles_as_separate_processes_complete_a_workload() {
    // The emulator is single-threaded: the SQS tests of this binary take turns.
    let _turn = sqs_turn(Kind::Sqs).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let transport = transport(&settings).await;
    insert_objects(&db, 200).await;
    log_export_runs(&db).await;
    let mut procs: Vec<Proc> = ["submitter", "scheduler", "worker", "resulter", "supervisor"]
        .iter()
        .map(|r| spawn(&settings, &[r], &[]))
        .collect();
    // A second worker: any number of instances of a role can run at once.
    procs.push(spawn(&settings, &["worker"], &[]));
    submit_exports(transport.as_ref(), 200).await;
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(180), |c| c.get(&TaskState::Success) == Some(&200)).await;
    assert_eq!(c.values().sum::<i64>(), 200);
    // No faults: each export runs once (counted by the database, across the processes).
    assert_exports_ran_once(&db, 200).await;
    // Graceful shutdown on SIGTERM: every process exits 0.
    for p in &procs {
        p.signal("-TERM");
    }
    for p in procs.iter_mut() {
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "exit status {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_rescued_and_completed() {
    let _turn = sqs_turn(Kind::Sqs).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let transport = transport(&settings).await;
    // Stale after 8 s without a heartbeat (or 8 s after acquisition if the worker died before marking the start);
    // the outbound message stays invisible for 60 s, so it is the StaleReaper that rescues it.
    let env = [
        ("SCHEDULER_REAPER__STALE_TIMEOUT_SECS", "8".to_string()),
        ("SCHEDULER_REAPER__QUEUE_TIMEOUT_SECS", "8".to_string()),
        ("SCHEDULER_WORKER__HEARTBEAT_INTERVAL_SECS", "1".to_string()),
        ("SCHEDULER_REAPER__INTERVAL_SECS", "0.5".to_string()),
        ("SCHEDULER_TRANSPORT__VISIBILITY_TIMEOUT_SECS", "60".to_string()),
    ];
    let _core = spawn(&settings, &["submitter", "scheduler", "resulter", "supervisor"], &env);
    let mut doomed = spawn(&settings, &["worker"], &env);
    // Long enough that the doomed worker cannot finish it before the kill, even when the emulator answers the
    // depth checks below slowly (2 s did not suffice on a loaded machine: the first run completed).
    let body = sqs_scheduler::protocol::submit_message("sleep", &json!({"ms": 10000}));
    transport.send(Queue::Inbound, &[body]).await.unwrap();
    let store = db.store();
    wait_for_counts(&store, Duration::from_secs(60), |c| c.get(&TaskState::Acquired) == Some(&1)).await;
    // The worker has it once the outbound queue shows nothing visible.
    let until = Instant::now() + Duration::from_secs(30);
    while transport.depth(Queue::Outbound).await.unwrap() > 0 {
        assert!(Instant::now() < until, "the worker never received the task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.signal("-KILL");
    let status = doomed.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let _rescuer = spawn(&settings, &["worker"], &env);
    wait_for_counts(&store, Duration::from_secs(90), |c| c.get(&TaskState::Success) == Some(&1)).await;
    let task = store.list(&Default::default()).await.unwrap().remove(0);
    assert_eq!(task.attempts, 2, "rescued as stale, then completed by the second worker: {task:?}");
}

/// SIGTERM with work in flight, on the binary (all roles in one process): 20 `sleep {"ms": 1500}` submitted, the
/// signal sent once handlers run; `run` exits 0 within its grace (20 s), every submission was persisted (or is still
/// in the inbound queue for another process), nothing is left ACQUIRED, nothing failed, and what was acquired
/// finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_tasks_in_flight_finishes_them_and_exits_0_within_the_grace() {
    let _turn = sqs_turn(Kind::Sqs).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let transport = transport(&settings).await;
    let mut all = spawn(&settings, &["submitter", "scheduler", "worker", "resulter", "supervisor"], &[]);
    let bodies: Vec<String> =
        (0..20).map(|i| sqs_scheduler::protocol::submit_message("sleep", &json!({"ms": 1500, "i": i}))).collect();
    for chunk in bodies.chunks(10) {
        transport.send(Queue::Inbound, chunk).await.unwrap();
    }
    let store = db.store();
    // In flight: a handler has marked its start (heartbeat), and not everything is done.
    wait_until(Duration::from_secs(120), "a handler to start", || async {
        let tasks = all_tasks(&store).await;
        let mut started = false;
        for t in tasks.iter().filter(|t| t.state == TaskState::Acquired) {
            started |= store.heartbeat_at(t.id).await.unwrap().is_some();
        }
        started
    })
    .await;
    let signalled = Instant::now();
    all.signal("-TERM");
    let status = all.wait_exit(Duration::from_secs(60));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    // Within the grace (20 s, run_roles) is shown by the work, not a clock: had it run out, the unfinished
    // handlers' tasks would be left ACQUIRED.
    let c = counts(&store).await;
    assert_eq!(c.get(&TaskState::Acquired).copied().unwrap_or(0), 0, "left ACQUIRED after shutdown: {c:?}");
    assert_eq!(c.get(&TaskState::Error).copied().unwrap_or(0), 0, "{c:?}");
    assert!(c.get(&TaskState::Success).copied().unwrap_or(0) > 0, "{c:?}");
    let stored: i64 = c.values().sum();
    let waiting = transport.depth(Queue::Inbound).await.unwrap() as i64;
    assert_eq!(stored + waiting, 20, "submissions stored ({c:?}) + still in the inbound queue ({waiting})");
    eprintln!("SIGTERM to exit {took:?}; {c:?}, {waiting} left in the inbound queue");
}

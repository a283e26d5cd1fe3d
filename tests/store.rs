//! TaskStore against a real PostgreSQL: state machine, fencing, concurrency, backoff, rescue, cleaning.

mod common;

use common::{exec, TestDb};
use serde_json::json;
use sqs_scheduler::store::*;
use std::collections::HashSet;
use std::time::Duration;

fn task(action: &str, payload: serde_json::Value) -> NewTask {
    NewTask::new(Action::parse(action).unwrap(), Payload::parse(payload).unwrap())
}

fn ok(a: &AcquiredTask) -> TaskResult {
    TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({"result": "success"})) }
}

fn fail(a: &AcquiredTask) -> TaskResult {
    TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Failure(json!({"code": -1234, "message": "bad"})) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquirers_never_share_an_attempt_and_get_every_task() {
    let db = TestDb::new().await;
    let store = db.store();
    let tasks: Vec<NewTask> = (0..1000).map(|i| task("noop", json!({"i": i}))).collect();
    let submitted = store.submit_many(&tasks).await.unwrap();
    assert_eq!(submitted.len(), 1000);

    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.acquire_batch(7).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|a| (a.id, a.attempt)));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "an (id, attempt) was acquired twice");
    let ids: HashSet<i64> = all.iter().map(|x| x.0).collect();
    let expected: HashSet<i64> = submitted.iter().map(|s| s.id).collect();
    assert_eq!(ids, expected, "every task is acquired");
    assert!(all.iter().all(|x| x.1 == 1));
    let counts = store.counts_by_state().await.unwrap();
    assert!(counts.contains(&(TaskState::Acquired, 1000)));
}

#[tokio::test]
async fn duplicate_submit_gives_one_row() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = store.submit_many(&[task("export", json!({"objectID": 23}))]).await.unwrap();
    let b = store
        .submit_many(&[task("export", json!({"objectID": 23})), task("export", json!({"objectID": 23}))])
        .await
        .unwrap();
    assert!(a[0].created);
    assert_eq!(b, vec![Submitted { id: a[0].id, created: false }, Submitted { id: a[0].id, created: false }]);
    // Same payload, other action: another task. Explicit dedup keys override the payload.
    let c = store.submit_many(&[task("noop", json!({"objectID": 23}))]).await.unwrap();
    assert!(c[0].created && c[0].id != a[0].id);
    let mut k1 = task("export", json!({"objectID": 1}));
    k1.dedup_key = Some(DedupKey::parse("k").unwrap());
    let mut k2 = task("export", json!({"objectID": 2}));
    k2.dedup_key = Some(DedupKey::parse("k").unwrap());
    let d = store.submit_many(&[k1, k2]).await.unwrap();
    assert!(d[0].created && !d[1].created && d[0].id == d[1].id);
    let counts = store.counts_by_state().await.unwrap();
    assert!(counts.contains(&(TaskState::Scheduled, 3)), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_submits_return_the_same_id() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let tasks: Vec<NewTask> = (0..200).map(|i| task("export", json!({"objectID": i}))).collect();
            store.submit_many(&tasks).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    for i in 0..200 {
        let ids: HashSet<i64> = results.iter().map(|r| r[i].id).collect();
        assert_eq!(ids.len(), 1, "one id per object");
        assert_eq!(results.iter().filter(|r| r[i].created).count(), 1, "exactly one creator");
    }
    let counts = store.counts_by_state().await.unwrap();
    assert!(counts.contains(&(TaskState::Scheduled, 200)));
}

#[tokio::test]
async fn stale_or_late_results_are_rejected() {
    let db = TestDb::new().await;
    let store = db.store();
    store.submit_many(&[task("noop", json!({}))]).await.unwrap();
    let a = store.acquire_batch(10).await.unwrap().remove(0);
    // A result for an attempt that never ran: stale.
    let wrong = TaskResult { id: a.id, attempt: a.attempt + 1, outcome: Outcome::Success(json!({})) };
    let c = store.complete_many(&[wrong]).await.unwrap();
    assert!(c.applied.is_empty());
    assert_eq!(c.stale, vec![(a.id, a.attempt + 1)]);
    // The real result applies once; a duplicate in the same batch and a late redelivery are stale.
    let c = store.complete_many(&[ok(&a), ok(&a)]).await.unwrap();
    assert_eq!(c.applied.len(), 1);
    assert_eq!(c.applied[0].state, TaskState::Success);
    assert_eq!(c.stale.len(), 1);
    let c = store.complete_many(&[fail(&a)]).await.unwrap();
    assert!(c.applied.is_empty());
    let t = store.get(a.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.result, Some(json!({"result": "success"})));
    assert!(t.finished_at.is_some());
}

#[tokio::test]
async fn a_result_after_stale_rescue_does_not_apply() {
    let db = TestDb::new().await;
    let store = db.store();
    store.submit_many(&[task("noop", json!({}))]).await.unwrap();
    let a = store.acquire_batch(1).await.unwrap().remove(0);
    exec(&db.url, "UPDATE tasks SET acquired_at = now() - interval '10 minutes'").await;
    let rescued = store.rescue_stale(120.0, 120.0, 100).await.unwrap();
    assert_eq!(rescued, vec![(a.id, TaskState::Error)]);
    let t = store.get(a.id).await.unwrap().unwrap();
    assert_eq!(t.error.as_ref().unwrap()["code"], json!(STALE_ERROR_CODE));
    assert!(t.error.as_ref().unwrap()["message"].as_str().unwrap().starts_with("stale"));
    assert_eq!(t.acquired_at, None);
    // The old worker finally answers: fenced out.
    let c = store.complete_many(&[ok(&a)]).await.unwrap();
    assert!(c.applied.is_empty());
    assert_eq!(store.get(a.id).await.unwrap().unwrap().state, TaskState::Error);
}

#[tokio::test]
async fn backoff_grows_exponentially_within_jitter_bounds() {
    let db = TestDb::new().await;
    let backoff = Backoff { base_seconds: 10.0, max_seconds: 100.0, jitter: 0.2 };
    let store = db.store_with(backoff);
    let tasks: Vec<NewTask> = (0..20).map(|i| task("noop", json!({"i": i}))).collect();
    store.submit_many(&tasks).await.unwrap();
    for attempt in 1..=6 {
        let acquired = store.acquire_batch(100).await.unwrap();
        assert_eq!(acquired.len(), 20, "attempt {attempt}: all due");
        assert!(acquired.iter().all(|a| a.attempt == attempt));
        let before = store.db_now().await.unwrap();
        store.complete_many(&acquired.iter().map(fail).collect::<Vec<_>>()).await.unwrap();
        let after = store.db_now().await.unwrap();
        let nominal = backoff.nominal_seconds(attempt);
        assert_eq!(nominal, (10.0 * 2f64.powi(attempt - 1)).min(100.0));
        let mut delays = Vec::new();
        for t in store.get_many(&acquired.iter().map(|a| a.id).collect::<Vec<_>>()).await.unwrap() {
            assert_eq!(t.state, TaskState::Error);
            let lo = (t.run_at - after).as_seconds_f64();
            let hi = (t.run_at - before).as_seconds_f64();
            assert!(
                lo <= nominal * 1.2 + 0.01 && hi >= nominal * 0.8 - 0.01,
                "attempt {attempt}: {lo}..{hi} vs {nominal}"
            );
            delays.push(hi);
        }
        // Jitter spreads the delays: not all equal.
        assert!(delays.iter().any(|d| (d - delays[0]).abs() > 1e-3), "jitter missing: {delays:?}");
        // Not due yet: nothing is acquired early.
        assert!(store.acquire_batch(100).await.unwrap().is_empty());
        exec(&db.url, "UPDATE tasks SET run_at = now() - interval '1 second' WHERE state = 'ERROR'").await;
    }
}

#[tokio::test]
async fn a_task_failing_max_attempts_times_ends_critical_error() {
    let db = TestDb::new().await;
    let store = db.store_with(Backoff { base_seconds: 0.0, max_seconds: 0.0, jitter: 0.0 });
    let ids = store.submit_many(&[task("noop", json!({}))]).await.unwrap();
    for attempt in 1..=10 {
        let a = store.acquire_batch(1).await.unwrap();
        assert_eq!(a.len(), 1, "attempt {attempt} acquired");
        assert_eq!(a[0].attempt, attempt);
        let c = store.complete_many(&[fail(&a[0])]).await.unwrap();
        let want = if attempt == 10 { TaskState::CriticalError } else { TaskState::Error };
        assert_eq!(c.applied[0].state, want);
    }
    assert!(store.acquire_batch(1).await.unwrap().is_empty());
    let t = store.get(ids[0].id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::CriticalError, 10));
    assert_eq!(t.error, Some(json!({"code": -1234, "message": "bad"})));
    // Retry gives it more attempts; numbers keep growing.
    assert!(store.retry(t.id, MaxAttempts::parse(2).unwrap()).await.unwrap());
    let a = store.acquire_batch(1).await.unwrap();
    assert_eq!(a[0].attempt, 11);
}

/// Heartbeats are fenced on (id, attempt) while ACQUIRED, one statement for many tasks; the rescue rule: a task
/// with a heartbeat is stale once its last heartbeat is older than the stale timeout, however long ago it was
/// acquired; a task without one (still queued) only after the queue timeout.
#[tokio::test]
async fn heartbeats_keep_running_tasks_and_queued_tasks_get_the_queue_timeout() {
    let db = TestDb::new().await;
    let store = db.store();
    let tasks: Vec<NewTask> = (0..5).map(|i| task("noop", json!({"i": i}))).collect();
    let ids: Vec<i64> = store.submit_many(&tasks).await.unwrap().iter().map(|s| s.id).collect();
    let a = store.acquire_batch(4).await.unwrap();
    let key = |i: usize| (a[i].id, a[i].attempt);
    // Only (id, current attempt) of ACQUIRED tasks: not a wrong attempt, not a SCHEDULED task.
    let queued = *ids.iter().find(|id| a.iter().all(|t| t.id != **id)).unwrap();
    let n = store.heartbeat(&[key(0), key(1), (a[2].id, a[2].attempt + 1), (queued, 1)]).await.unwrap();
    assert_eq!(n, 2);
    assert!(store.heartbeat_at(a[0].id).await.unwrap().is_some());
    assert_eq!(store.heartbeat_at(a[2].id).await.unwrap(), None);
    // All acquired 200 s ago. 0: heartbeat just now (running long); 1: last heartbeat 150 s ago (its worker died);
    // 2: no heartbeat (queued) for 200 s; 3: no heartbeat, acquired 700 s ago.
    exec(&db.url, "UPDATE tasks SET acquired_at = now() - interval '200 seconds' WHERE state = 'ACQUIRED'").await;
    exec(&db.url, &format!("UPDATE tasks SET heartbeat_at = now() WHERE id = {}", a[0].id)).await;
    exec(&db.url, &format!("UPDATE tasks SET heartbeat_at = now() - interval '150 seconds' WHERE id = {}", a[1].id))
        .await;
    exec(&db.url, &format!("UPDATE tasks SET acquired_at = now() - interval '700 seconds' WHERE id = {}", a[3].id))
        .await;
    let mut rescued = store.rescue_stale(120.0, 600.0, 100).await.unwrap();
    rescued.sort_by_key(|r| r.0);
    assert_eq!(rescued, vec![(a[1].id, TaskState::Error), (a[3].id, TaskState::Error)]);
    let t = store.get(a[1].id).await.unwrap().unwrap();
    assert!(t.error.as_ref().unwrap()["message"].as_str().unwrap().starts_with("stale: no heartbeat"), "{t:?}");
    assert_eq!(store.heartbeat_at(t.id).await.unwrap(), None, "a heartbeat of a finished attempt is not shown");
    let t = store.get(a[3].id).await.unwrap().unwrap();
    assert!(t.error.as_ref().unwrap()["message"].as_str().unwrap().starts_with("stale: not started"), "{t:?}");
    for i in [0, 2] {
        assert_eq!(store.get(a[i].id).await.unwrap().unwrap().state, TaskState::Acquired);
    }
    // The rescued attempt's heartbeat no longer applies; the next attempt starts without one.
    assert_eq!(store.heartbeat(&[key(1)]).await.unwrap(), 0);
    exec(&db.url, "UPDATE tasks SET run_at = now() WHERE state = 'ERROR'").await;
    let again = store.acquire_batch(10).await.unwrap();
    let b = again.iter().find(|t| t.id == a[1].id).unwrap();
    assert_eq!(b.attempt, 2);
    assert_eq!(store.heartbeat_at(b.id).await.unwrap(), None);
}

#[tokio::test]
async fn stale_rescue_ends_critical_on_the_last_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut last = task("noop", json!({"last": 1}));
    last.max_attempts = MaxAttempts::parse(1).unwrap();
    let ids =
        store.submit_many(&[last, task("noop", json!({"other": 1})), task("noop", json!({"fresh": 1}))]).await.unwrap();
    let (last, other, fresh) = (ids[0].id, ids[1].id, ids[2].id);
    assert_eq!(store.acquire_batch(10).await.unwrap().len(), 3);
    // Two are old enough: one on its last attempt (max_attempts 1), one with attempts left. The third is recent.
    exec(
        &db.url,
        &format!("UPDATE tasks SET acquired_at = now() - interval '200 seconds' WHERE id IN ({last}, {other})"),
    )
    .await;
    let mut rescued = store.rescue_stale(120.0, 120.0, 100).await.unwrap();
    let mut want = vec![(last, TaskState::CriticalError), (other, TaskState::Error)];
    rescued.sort_by_key(|r| r.0);
    want.sort_by_key(|r| r.0);
    assert_eq!(rescued, want);
    let t = store.get(last).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts, t.acquired_at), (TaskState::CriticalError, 1, None));
    assert!(t.finished_at.is_some(), "CRITICAL_ERROR is final: {t:?}");
    assert_eq!(store.get(other).await.unwrap().unwrap().state, TaskState::Error);
    assert_eq!(store.get(fresh).await.unwrap().unwrap().state, TaskState::Acquired);
}

#[tokio::test]
async fn cleaner_deletes_only_old_finished_tasks_in_batches() {
    let db = TestDb::new().await;
    let store = db.store();
    let tasks: Vec<NewTask> = (0..30).map(|i| task("noop", json!({"i": i}))).collect();
    store.submit_many(&tasks).await.unwrap();
    let a = store.acquire_batch(25).await.unwrap();
    store.complete_many(&a[..20].iter().map(ok).collect::<Vec<_>>()).await.unwrap();
    // 20 SUCCESS (15 of them old), 5 ACQUIRED, 5 SCHEDULED.
    exec(&db.url, "UPDATE tasks SET finished_at = now() - interval '2 hours' WHERE id IN (SELECT id FROM tasks WHERE state = 'SUCCESS' ORDER BY id LIMIT 15)").await;
    assert_eq!(store.clean_finished(3600.0, &[TaskState::Success], 10).await.unwrap(), 10);
    assert_eq!(store.clean_finished(3600.0, &[TaskState::Success], 10).await.unwrap(), 5);
    assert_eq!(store.clean_finished(3600.0, &[TaskState::Success], 10).await.unwrap(), 0);
    let counts: std::collections::HashMap<_, _> = store.counts_by_state().await.unwrap().into_iter().collect();
    assert_eq!(counts[&TaskState::Success], 5);
    assert_eq!(counts[&TaskState::Acquired], 5);
    assert_eq!(counts[&TaskState::Scheduled], 5);
}

#[tokio::test]
async fn acquisition_follows_priority_then_run_at_then_id() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut low = task("noop", json!({"n": "low"}));
    low.priority = Priority::parse(-5).unwrap();
    let mut high = task("noop", json!({"n": "high"}));
    high.priority = Priority::parse(50).unwrap();
    let mid1 = task("noop", json!({"n": "mid1"}));
    let mut mid0 = task("noop", json!({"n": "mid0"}));
    mid0.run_at = RunAt::At(store.db_now().await.unwrap() - chrono::Duration::seconds(60));
    let ids = store.submit_many(&[low, mid1, high, mid0]).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(store.acquire_batch(1).await.unwrap()[0].id);
    }
    assert_eq!(order, vec![ids[2].id, ids[3].id, ids[1].id, ids[0].id]);
}

#[tokio::test]
async fn a_future_run_at_is_not_acquired_early() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut later = task("noop", json!({"n": 1}));
    later.run_at = RunAt::After(Duration::from_secs(3600));
    let ids = store.submit_many(&[later]).await.unwrap();
    assert!(store.acquire_batch(10).await.unwrap().is_empty());
    exec(&db.url, "UPDATE tasks SET run_at = now() - interval '1 ms'").await;
    assert_eq!(store.acquire_batch(10).await.unwrap()[0].id, ids[0].id);
}

#[tokio::test]
async fn cancel_scheduled_and_acquired_tasks() {
    let db = TestDb::new().await;
    let store = db.store_with(Backoff { base_seconds: 0.0, max_seconds: 0.0, jitter: 0.0 });
    let ids = store.submit_many(&[task("noop", json!({"a": 1})), task("noop", json!({"a": 2}))]).await.unwrap();
    assert_eq!(store.cancel(ids[0].id).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(store.cancel(ids[0].id).await.unwrap(), CancelOutcome::AlreadyFinished);
    assert_eq!(store.cancel(999_999).await.unwrap(), CancelOutcome::NotFound);
    let a = store.acquire_batch(10).await.unwrap();
    assert_eq!(a.len(), 1, "a cancelled task is never acquired");
    assert_eq!(store.cancel(a[0].id).await.unwrap(), CancelOutcome::CancelledRunning);
    // CANCELLED at once; a late result of that attempt is stale.
    let t = store.get(a[0].id).await.unwrap().unwrap();
    assert_eq!((t.state, t.acquired_at.is_none(), t.cancel_requested), (TaskState::Cancelled, true, true));
    assert_eq!(t.error.as_ref().unwrap()["code"], json!(-32011));
    let c = store.complete_many(&[fail(&a[0])]).await.unwrap();
    assert_eq!((c.applied.len(), c.stale.len()), (0, 1));
    assert_eq!(store.get(a[0].id).await.unwrap().unwrap().state, TaskState::Cancelled);
    assert!(store.acquire_batch(10).await.unwrap().is_empty());
    // Retry brings a cancelled task back.
    assert!(store.retry(ids[0].id, MaxAttempts::default()).await.unwrap());
    assert_eq!(store.acquire_batch(10).await.unwrap()[0].id, ids[0].id);
}

/// A release (after an uncertain outbound send) keeps the attempt: the send may have gone out, so the next
/// execution must have a new fencing token. The task is retried after backoff, as after a failure.
#[tokio::test]
async fn release_keeps_the_attempt_and_retries_after_backoff() {
    let db = TestDb::new().await;
    let store = db.store_with(Backoff { base_seconds: 60.0, max_seconds: 60.0, jitter: 0.0 });
    store.submit_many(&[task("noop", json!({}))]).await.unwrap();
    let a = store.acquire_batch(1).await.unwrap().remove(0);
    assert_eq!(store.release(&[(a.id, a.attempt), (a.id, a.attempt + 5)]).await.unwrap(), 1);
    let t = store.get(a.id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts, t.acquired_at), (TaskState::Error, 1, None), "release lowered the attempt");
    assert_eq!(t.error.as_ref().unwrap()["code"], json!(RELEASED_ERROR_CODE));
    assert_eq!(t.error.as_ref().unwrap()["attempt"], json!(1));
    // Due after the backoff, not at once.
    assert!((t.run_at - store.db_now().await.unwrap()).as_seconds_f64() > 50.0, "{t:?}");
    assert!(store.acquire_batch(1).await.unwrap().is_empty());
    exec(&db.url, "UPDATE tasks SET run_at = now() - interval '1 ms'").await;
    let again = store.acquire_batch(1).await.unwrap().remove(0);
    assert_eq!(again.attempt, 2, "the next execution has a new fencing token");
}

/// The late result of a released attempt (its send did go out after all) is stale: while the task waits for its
/// retry, and after the retry was acquired.
#[tokio::test]
async fn the_late_result_of_a_released_attempt_is_stale() {
    let db = TestDb::new().await;
    let store = db.store_with(Backoff { base_seconds: 0.0, max_seconds: 0.0, jitter: 0.0 });
    store.submit_many(&[task("noop", json!({}))]).await.unwrap();
    let a = store.acquire_batch(1).await.unwrap().remove(0);
    assert_eq!(store.release(&[(a.id, a.attempt)]).await.unwrap(), 1);
    let c = store.complete_many(&[ok(&a)]).await.unwrap();
    assert!(c.applied.is_empty() && c.stale == vec![(a.id, a.attempt)], "{c:?}");
    let b = store.acquire_batch(1).await.unwrap().remove(0);
    assert_eq!(b.attempt, a.attempt + 1);
    let c = store.complete_many(&[ok(&a)]).await.unwrap();
    assert!(c.applied.is_empty(), "the released attempt's result applied to the next attempt: {c:?}");
    let c = store.complete_many(&[ok(&b)]).await.unwrap();
    assert_eq!(c.applied[0].state, TaskState::Success);
}

/// A task that can never be sent ends CRITICAL_ERROR after max_attempts releases instead of looping.
#[tokio::test]
async fn a_task_released_max_attempts_times_ends_critical_error() {
    let db = TestDb::new().await;
    let store = db.store_with(Backoff { base_seconds: 0.0, max_seconds: 0.0, jitter: 0.0 });
    let mut t = task("noop", json!({}));
    t.max_attempts = MaxAttempts::parse(3).unwrap();
    let id = store.submit_many(&[t]).await.unwrap()[0].id;
    for attempt in 1..=3 {
        let a = store.acquire_batch(1).await.unwrap();
        assert_eq!(a.len(), 1, "attempt {attempt} acquired");
        assert_eq!(a[0].attempt, attempt);
        assert_eq!(store.release(&[(a[0].id, a[0].attempt)]).await.unwrap(), 1);
    }
    assert!(store.acquire_batch(1).await.unwrap().is_empty(), "acquired after its last attempt");
    let t = store.get(id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::CriticalError, 3));
    assert!(t.finished_at.is_some());
}

#[tokio::test]
async fn list_filters_and_pages() {
    let db = TestDb::new().await;
    let store = db.store();
    let tasks: Vec<NewTask> =
        (0..10).map(|i| task(if i % 2 == 0 { "export" } else { "noop" }, json!({"i": i}))).collect();
    store.submit_many(&tasks).await.unwrap();
    let export = Action::parse("export").unwrap();
    let page1 =
        store.list(&ListFilter { action: Some(export.clone()), limit: Some(3), ..Default::default() }).await.unwrap();
    assert_eq!(page1.len(), 3);
    let page2 = store
        .list(&ListFilter { action: Some(export), after_id: Some(page1[2].id), limit: Some(3), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page2.len(), 2);
    assert!(page2.iter().all(|t| t.action == "export" && t.id > page1[2].id));
    // A state filter: 4 of the 10 are ACQUIRED, so SCHEDULED lists exactly the other 6 (no filter would give 10).
    let acquired: HashSet<i64> = store.acquire_batch(4).await.unwrap().iter().map(|a| a.id).collect();
    assert_eq!(acquired.len(), 4);
    let all: HashSet<i64> = store.list(&Default::default()).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(all.len(), 10);
    let sched = store.list(&ListFilter { state: Some(TaskState::Scheduled), ..Default::default() }).await.unwrap();
    assert_eq!(sched.iter().map(|t| t.id).collect::<HashSet<_>>(), &all - &acquired);
    assert!(sched.iter().all(|t| t.state == TaskState::Scheduled));
    let acq = store.list(&ListFilter { state: Some(TaskState::Acquired), ..Default::default() }).await.unwrap();
    assert_eq!(acq.iter().map(|t| t.id).collect::<HashSet<_>>(), acquired);
    // State and action together.
    let export = Action::parse("export").unwrap();
    let both = store
        .list(&ListFilter { state: Some(TaskState::Scheduled), action: Some(export), ..Default::default() })
        .await
        .unwrap();
    let want: HashSet<i64> = sched.iter().filter(|t| t.action == "export").map(|t| t.id).collect();
    assert!(!want.is_empty() && want.len() < sched.len(), "{want:?}");
    assert_eq!(both.iter().map(|t| t.id).collect::<HashSet<_>>(), want);
    assert!(store.list(&ListFilter { limit: Some(0), ..Default::default() }).await.is_err());
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    assert_eq!(Payload::parse(json!([1, 2])).unwrap_err().field, "payload");
    assert_eq!(Payload::parse(json!("x")).unwrap_err().field, "payload");
    assert_eq!(Action::parse("").unwrap_err().field, "action");
    assert_eq!(Action::parse("a".repeat(129)).unwrap_err().field, "action");
    assert!(Action::parse("a".repeat(128)).is_ok());
    assert_eq!(Priority::parse(101).unwrap_err().field, "priority");
    assert_eq!(MaxAttempts::parse(-1).unwrap_err().field, "max_attempts");
    assert_eq!(MaxAttempts::parse(0).unwrap_err().field, "max_attempts");
    let e = Priority::parse(1000).unwrap_err();
    assert!(e.to_string().contains("priority") && e.to_string().contains("1000"), "{e}");
    let db = TestDb::new().await;
    let store = db.store();
    let total =
        |store: TaskStore| async move { store.counts_by_state().await.unwrap().iter().map(|c| c.1).sum::<i64>() };
    let first = store.submit_many(&[task("noop", json!({"n": 0}))]).await.unwrap();
    assert_eq!(total(store.clone()).await, 1);
    assert!(store.submit_many(&[]).await.unwrap().is_empty());
    assert_eq!(total(store.clone()).await, 1);
    // What the database refuses fails the whole statement and writes none of its rows, not even the valid ones
    // before and after it. (Our validation leaves nothing for the database to refuse, so this test adds a rule.)
    exec(&db.url, "ALTER TABLE tasks ADD CONSTRAINT test_refused CHECK (NOT payload ? 'refused')").await;
    let batch = [task("noop", json!({"n": 1})), task("noop", json!({"refused": true})), task("noop", json!({"n": 2}))];
    let err = store.submit_many(&batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)) && err.to_string().contains("test_refused"), "{err}");
    assert_eq!(total(store.clone()).await, 1, "a refused statement wrote rows");
    assert_eq!(
        store.list(&Default::default()).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![first[0].id]
    );
    // The valid ones were not stored: submitted again they are created now.
    let again = store.submit_many(&[batch[0].clone(), batch[2].clone()]).await.unwrap();
    assert!(again.iter().all(|s| s.created), "{again:?}");
    assert_eq!(total(store).await, 3);
}

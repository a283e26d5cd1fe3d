//! The acquire statement guards its own arithmetic (issue 21, migration 2026-12-04-210000_acquire_guard): an
//! actions row that the arithmetic cannot carry, written by hand, stops only its own action; the others' tasks
//! are still acquired, and the store names the faulty action and setting.

mod common;

use common::TestDb;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use sqs_scheduler::store::{Action, ActionChange, ActionFault, NewTask, Payload};

fn task(action: &str, n: i64) -> NewTask {
    NewTask::new(Action::parse(action).unwrap(), Payload::parse(serde_json::json!({ "n": n })).unwrap())
}

async fn batch(url: &str, sql: &str) -> diesel::QueryResult<()> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    conn.batch_execute(sql).await
}

#[actix_rt::test]
async fn a_row_written_by_hand_stops_only_its_own_action() {
    let db = TestDb::new().await;
    let store = db.store();
    let limited = ActionChange { rate_per_sec: Some(Some(1000.0)), ..ActionChange::default() };
    for a in ["tiny_rate", "neg_tokens", "endless_clock"] {
        store.configure_action(&Action::parse(a).unwrap(), &limited).await.unwrap();
    }
    let tasks: Vec<NewTask> = ["tiny_rate", "neg_tokens", "endless_clock", "healthy"]
        .iter()
        .enumerate()
        .map(|(i, a)| task(a, i as i64))
        .collect();
    store.submit_many(&tasks).await.unwrap();
    // What the API refuses now, and rows stored before the range was enforced: the table's own CHECKs set aside.
    batch(
        &db.url,
        "ALTER TABLE actions DROP CONSTRAINT actions_rate_per_sec_check, DROP CONSTRAINT actions_rate_per_sec_min;
         UPDATE actions SET rate_per_sec = 5e-324 WHERE action = 'tiny_rate';
         UPDATE actions SET tokens = '-Infinity' WHERE action = 'neg_tokens';
         UPDATE actions SET tokens_at = 'infinity' WHERE action = 'endless_clock';",
    )
    .await
    .unwrap();

    let a = store.acquire(10).await.expect("the acquire statement still runs");
    let acquired: Vec<&str> = a.tasks.iter().map(|t| t.action.as_str()).collect();
    assert_eq!(acquired, ["healthy"]);
    let fault = |action: &str, setting: &str| ActionFault { action: action.into(), setting: setting.into() };
    let mut faults = a.faults.clone();
    faults.sort_by(|x, y| x.action.cmp(&y.action));
    let expected =
        vec![fault("endless_clock", "tokens_at"), fault("neg_tokens", "tokens"), fault("tiny_rate", "rate_per_sec")];
    assert_eq!(faults, expected);
    assert_eq!(store.action_faults().await.unwrap(), expected);

    // Repaired through the API (removing the rate resets the bucket): its task is acquired, the fault is gone.
    let unlimited = ActionChange { rate_per_sec: Some(None), ..ActionChange::default() };
    store.configure_action(&Action::parse("neg_tokens").unwrap(), &unlimited).await.unwrap();
    let a = store.acquire(10).await.unwrap();
    assert_eq!(a.tasks.iter().map(|t| t.action.as_str()).collect::<Vec<_>>(), ["neg_tokens"]);
    assert_eq!(a.faults.len(), 2);
}

#[actix_rt::test]
async fn the_table_refuses_a_rate_below_the_minimum() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .configure_action(
            &Action::parse("x").unwrap(),
            &ActionChange { rate_per_sec: Some(Some(1.0)), ..ActionChange::default() },
        )
        .await
        .unwrap();
    let r = batch(&db.url, "UPDATE actions SET rate_per_sec = 1e-310 WHERE action = 'x'").await;
    assert!(format!("{r:?}").contains("actions_rate_per_sec_min"), "{r:?}");
}

//! Faults the pipeline must survive without losing or dead-lettering valid work: a database outage longer than
//! the queue's redrive allows (the circuit breaker stops the pollers, /readyz says 503 and why), and a JSON-RPC batch on the inbound queue
//! holding valid and invalid entries (each entry on its own). In-process, on the in-process transport.

mod common;

use common::pipeline::*;
use common::proxy::Proxy;
use common::TestDb;
use serde_json::json;
use sqs_scheduler::actors::breaker;
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::store::TaskState;
use sqs_scheduler::transport::memory::MemoryTransport;
use sqs_scheduler::transport::{Queue, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET /readyz of an HTTP API on `db` (direct, no proxy): status and JSON body.
async fn readyz(db: &TestDb) -> (u16, serde_json::Value) {
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    let api = sqs_scheduler::http::HttpApi::new(sqs_scheduler::http::HttpState {
        settings: Arc::new(sqs_scheduler::configuration::Settings { database: db.settings(), ..Default::default() }),
        store: db.store(),
        transport: None,
        rpc_enabled: false,
        known_actions: sqs_scheduler::handlers::KnownActions::any(),
    });
    let app = init_service(sqs_scheduler::http::build_app(api)).await;
    let res = call_service(&app, TestRequest::get().uri("/readyz").to_request()).await;
    let status = res.status().as_u16();
    (status, serde_json::from_slice(&read_body(res).await).unwrap())
}

#[actix_rt::test]
async fn a_database_outage_longer_than_the_redrive_window_dead_letters_nothing() {
    let _metrics = metrics_turn().await; // the breaker is visible process-wide (readyz)
    let db = TestDb::new().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut settings = test_settings(&db, Kind::Memory);
    settings.database.url = proxy.url(&db.url).into();
    settings.database.connect_timeout_ms = 300;
    settings.transport.visibility_timeout_secs = 1;
    // Redrive after 5 receives of 1 s visibility: a 12 s outage is more than twice what the queue alone survives.
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::with_redrive(Duration::from_secs(1), 5));
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    proxy.cut();
    let bodies: Vec<String> =
        (0..30).map(|i| sqs_scheduler::protocol::submit_message("noop", &json!({"i": i}))).collect();
    for c in bodies.chunks(10) {
        transport.send(Queue::Inbound, c).await.unwrap();
    }
    until("the breaker to open", Duration::from_secs(20), || breaker::any_open().is_some()).await;
    // /readyz says 503 and why, while the breaker is open, even to a process whose own database check passes (its
    // store bypasses the cut proxy).
    let (status, body) = readyz(&db).await;
    assert_eq!(status, 503, "/readyz while the breaker is open: {body}");
    assert_eq!(body["database"], "ok", "{body}");
    assert!(body["circuit_breaker"].as_str().is_some_and(|w| !w.is_empty()), "the reason is given: {body}");
    let outage = Instant::now() + Duration::from_secs(12);
    while Instant::now() < outage {
        for q in [Queue::InboundDlq, Queue::ResultsDlq] {
            assert_eq!(transport.depth(q).await.unwrap(), 0, "{q} during the outage");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(60), |c| c.get(&TaskState::Success) == Some(&30)).await;
    assert_eq!(c.values().sum::<i64>(), 30, "{c:?}");
    for q in [Queue::InboundDlq, Queue::OutboundDlq, Queue::ResultsDlq] {
        assert_eq!(transport.depth(q).await.unwrap(), 0, "{q}: nothing dead-lettered");
    }
    until("the breaker to close", Duration::from_secs(5), || breaker::any_open().is_none()).await;
    let (status, body) = readyz(&db).await;
    assert_eq!(status, 200, "/readyz once the breaker closed: {body}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_json_rpc_batch_on_the_inbound_queue_is_handled_entry_by_entry() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let invalid = json!({"jsonrpc": "2.0", "method": "submit:noop", "params": [1, 2]});
    let batch = json!([
        {"jsonrpc": "2.0", "method": "submit:noop", "params": {"n": 1}},
        invalid,
        {"jsonrpc": "2.0", "method": "submit:noop", "params": {"n": 2}},
    ]);
    transport.send(Queue::Inbound, &[batch.to_string()]).await.unwrap();
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&2)).await;
    assert_eq!(c.values().sum::<i64>(), 2, "both valid entries stored, nothing else: {c:?}");
    let dead = peek_all(transport.as_ref(), Queue::InboundDlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dead: serde_json::Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(dead, invalid, "the invalid entry alone is dead-lettered");
    // The message was acknowledged once its entries were durable: never delivered again.
    assert_eq!(transport.depth(Queue::Inbound).await.unwrap(), 0);
    app.shutdown(Duration::from_secs(5)).await;
}

/// Data the database refuses, arriving on the inbound queue (a CHECK constraint this test adds to its own database:
/// our validation leaves nothing else for the database to refuse): the Persister's group commit fails, it retries
/// the batch item by item, the refused submission alone goes to the inbound DLQ, the others are stored and run, and
/// nothing loops.
#[actix_rt::test]
async fn a_submission_the_database_refuses_on_the_inbound_queue_is_dead_lettered_alone() {
    let db = TestDb::new().await;
    common::exec(&db.url, "ALTER TABLE tasks ADD CONSTRAINT test_refused CHECK (NOT payload ? 'refused')").await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let refused = sqs_scheduler::protocol::submit_message("noop", &json!({"refused": true}));
    let mut bodies: Vec<String> =
        (0..11).map(|i| sqs_scheduler::protocol::submit_message("noop", &json!({"n": i}))).collect();
    bodies.insert(5, refused.clone());
    transport.send(Queue::Inbound, &bodies).await.unwrap();
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&11)).await;
    assert_eq!(c.values().sum::<i64>(), 11, "the valid submissions stored, the refused one not: {c:?}");
    wait_until(Duration::from_secs(30), "the refused submission in the inbound DLQ", || async {
        transport.depth(Queue::InboundDlq).await.unwrap() == 1
    })
    .await;
    let dead = peek_all(transport.as_ref(), Queue::InboundDlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead, vec![refused], "the refused submission alone is dead-lettered");
    assert_eq!(transport.depth(Queue::Inbound).await.unwrap(), 0, "nothing left to loop on the inbound queue");
    app.shutdown(Duration::from_secs(5)).await;
}

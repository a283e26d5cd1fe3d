//! Faults the pipeline must survive without losing or dead-lettering valid work: a database outage longer than
//! the queue's redrive allows (the circuit breaker stops the pollers), and a JSON-RPC batch on the inbound queue
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

//! The HTTP API against a real PostgreSQL (a fresh database per test): JSON-RPC 2.0 semantics, the task
//! methods, auth, limits, /metrics, /readyz, group commit, and one real socket.

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use async_trait::async_trait;
use common::TestDb;
use serde_json::{json, Value};
use sqs_scheduler::configuration::{DatabaseSettings, Settings};
use sqs_scheduler::handlers::{HandlerRegistry, KnownActions};
use sqs_scheduler::http::{build_app, start_server, HttpApi, HttpState, TASK_NOT_FOUND, TASK_NOT_RETRYABLE};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::store::{
    Action, Backoff, MaxAttempts, NewTask, Outcome, Payload, Priority, TaskResult, TaskState, TaskStore,
};
use sqs_scheduler::tools::bench::http::RpcHttpClient;
use sqs_scheduler::transport::memory::MemoryTransport;
use sqs_scheduler::transport::{Message, Queue, Transport, TransportError, TransportResult};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "t0ken-for-tests";

fn settings(db: &TestDb, tokens: &[&str]) -> Settings {
    let mut s = Settings { database: db.settings(), ..Settings::default() };
    s.http.bind = "127.0.0.1:0".into();
    s.http.api_tokens = tokens.iter().map(|t| (*t).into()).collect();
    s
}

fn state_with(settings: Settings, store: TaskStore) -> HttpState {
    let known_actions = KnownActions::new(&HandlerRegistry::builtin(), &settings.actions);
    HttpState { settings: Arc::new(settings), store, transport: None, rpc_enabled: true, known_actions }
}

fn api(db: &TestDb, tokens: &[&str]) -> HttpApi {
    HttpApi::new(state_with(settings(db, tokens), db.store()))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// A POST /rpc from loopback with the test token.
fn rpc_req(body: impl Into<String>) -> TestRequest {
    TestRequest::post()
        .uri("/rpc")
        .peer_addr(loopback())
        .insert_header(("Authorization", format!("Bearer {TOKEN}")))
        .set_payload(body.into())
}

/// Sends a request: (status, headers, body).
macro_rules! send {
    ($app:expr, $req:expr) => {{
        let res = test::call_service(&$app, $req.to_request()).await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = test::read_body(res).await;
        (status, headers, body)
    }};
}

/// POSTs a JSON-RPC body, expects HTTP 200 and returns the parsed response.
macro_rules! rpc {
    ($app:expr, $body:expr) => {{
        let body: String = $body.to_string();
        let (status, _, b) = send!($app, rpc_req(body.clone()));
        assert_eq!(status, StatusCode::OK, "{body} -> {}", String::from_utf8_lossy(&b));
        serde_json::from_slice::<Value>(&b).expect("a JSON response")
    }};
}

/// Calls one method with id 1 and returns its `result` (panics on an error response).
macro_rules! call_ok {
    ($app:expr, $method:expr, $params:expr) => {{
        let mut r = rpc!($app, request($method, $params));
        assert!(r.get("error").is_none(), "{} -> {r}", $method);
        assert_eq!(r["id"], 1);
        r["result"].take()
    }};
}

/// Calls one method with id 1 and returns its `error` (panics on a result).
macro_rules! call_err {
    ($app:expr, $method:expr, $params:expr) => {{
        let mut r = rpc!($app, request($method, $params));
        assert!(r.get("result").is_none(), "{} -> {r}", $method);
        assert_eq!(r["id"], 1);
        r["error"].take()
    }};
}

/// A request with id 1; null params are left out.
fn request(method: &str, params: Value) -> Value {
    let mut r = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        r["params"] = params;
    }
    r
}

fn counter(path: &str, status: &str) -> u64 {
    metrics().http_requests.with_label_values(&[path, status]).get()
}

fn rpc_error_count(code: i64) -> u64 {
    metrics().rpc_errors.with_label_values(&[code.to_string().as_str()]).get()
}

fn task(action: &str, payload: Value) -> NewTask {
    NewTask::new(Action::parse(action).unwrap(), Payload::parse(payload).unwrap())
}

#[actix_rt::test]
async fn submit_returns_an_id_and_a_duplicate_the_same_id() {
    let db = TestDb::new().await;
    let api = api(&db, &[TOKEN]);
    let app = test::init_service(build_app(api.clone())).await;

    let first = call_ok!(app, "submit:export", json!({"objectID": 23}));
    let id = first["id"].as_i64().expect("an integer id");
    assert_eq!(first["created"], true);
    let again = call_ok!(app, "submit:export", json!({"objectID": 23}));
    assert_eq!(again, json!({"id": id, "created": false}));

    // The structured form with options, and a string request id echoed back.
    let r = rpc!(
        app,
        json!({"jsonrpc": "2.0", "method": "submit:export", "id": "abc",
               "params": {"payload": {"objectID": 24}, "priority": 7, "dedup_key": "k24", "max_attempts": 3}})
    );
    assert_eq!(r["id"], "abc");
    assert_eq!(r["result"]["created"], true);
    let other = r["result"]["id"].as_i64().unwrap();
    assert_ne!(other, id);
    let t = db.store().get(other).await.unwrap().unwrap();
    assert_eq!((t.priority, t.max_attempts, t.dedup_key.as_str()), (7, 3, "k24"));
    // Same dedup key, different payload: still the same task.
    let dup = call_ok!(app, "submit:export", json!({"payload": {"objectID": 99}, "dedup_key": "k24"}));
    assert_eq!(dup, json!({"id": other, "created": false}));
    // Without options the configured default max_attempts applies.
    assert_eq!(db.store().get(id).await.unwrap().unwrap().max_attempts, 10);
    assert_eq!(db.store().list(&Default::default()).await.unwrap().len(), 2);
}

#[actix_rt::test]
async fn task_get_list_cancel_retry_and_stats() {
    let db = TestDb::new().await;
    let store = db.store();
    let app = test::init_service(build_app(api(&db, &[TOKEN]))).await;

    let a = call_ok!(app, "submit:export", json!({"objectID": 1}))["id"].as_i64().unwrap();
    let b = call_ok!(app, "submit:export", json!({"objectID": 2}))["id"].as_i64().unwrap();
    let c = call_ok!(app, "submit:noop", json!({"payload": {"x": 1}, "priority": 100}))["id"].as_i64().unwrap();

    // task.get
    let t = call_ok!(app, "task.get", json!({"id": a}));
    assert_eq!(t["id"], a);
    assert_eq!(t["state"], "SCHEDULED");
    assert_eq!(t["action"], "export");
    assert_eq!(t["payload"], json!({"objectID": 1}));
    assert_eq!(t["attempts"], 0);
    assert_eq!(t["max_attempts"], 10);
    assert_eq!(t["priority"], 0);
    for k in ["result", "error", "run_at", "created_at", "updated_at", "finished_at"] {
        assert!(t.get(k).is_some(), "task.get lacks {k}: {t}");
    }
    assert!(t["finished_at"].is_null() && t["result"].is_null());
    let e = call_err!(app, "task.get", json!({"id": 999_999}));
    assert_eq!(e["code"], TASK_NOT_FOUND);
    assert_eq!(e["message"], "task not found");

    // task.list: pages, filters
    let page = call_ok!(app, "task.list", json!({"limit": 2}));
    let ids: Vec<i64> = page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(page["next_after_id"], b);
    let page2 = call_ok!(app, "task.list", json!({"limit": 2, "after_id": b}));
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(page2["tasks"][0]["id"], c);
    let page3 = call_ok!(app, "task.list", json!({"after_id": c}));
    assert_eq!(page3, json!({"tasks": [], "next_after_id": null}));
    let exports = call_ok!(app, "task.list", json!({"action": "export", "state": "SCHEDULED"}));
    assert_eq!(exports["tasks"].as_array().unwrap().len(), 2);
    let all = call_ok!(app, "task.list", Value::Null);
    assert_eq!(all["tasks"].as_array().unwrap().len(), 3);

    // c has the highest priority: acquire it, then cancel it -> CANCELLED at once (its worker is notified).
    let acquired = store.acquire_batch(1).await.unwrap();
    assert_eq!(acquired[0].id, c);
    assert_eq!(call_ok!(app, "task.cancel", json!({"id": c})), json!({"outcome": "cancelled_running"}));
    assert_eq!(store.get(c).await.unwrap().unwrap().state, TaskState::Cancelled);
    assert_eq!(call_ok!(app, "task.cancel", json!({"id": a})), json!({"outcome": "cancelled"}));
    assert_eq!(call_ok!(app, "task.cancel", json!({"id": a})), json!({"outcome": "already_finished"}));
    assert_eq!(call_err!(app, "task.cancel", json!({"id": 424242}))["code"], TASK_NOT_FOUND);

    // task.retry: CANCELLED -> SCHEDULED; SCHEDULED is not retryable; unknown id -> not found.
    assert_eq!(call_ok!(app, "task.retry", json!({"id": a})), json!({"retried": true}));
    assert_eq!(store.get(a).await.unwrap().unwrap().state, TaskState::Scheduled);
    let e = call_err!(app, "task.retry", json!({"id": b}));
    assert_eq!(e["code"], TASK_NOT_RETRYABLE);
    assert_eq!(e["message"], "task is not in CRITICAL_ERROR or CANCELLED");
    assert_eq!(call_err!(app, "task.retry", json!({"id": 777_777}))["code"], TASK_NOT_FOUND);
    // CRITICAL_ERROR -> SCHEDULED with extra attempts.
    let mut crit = task("export", json!({"objectID": 3})).with_max_attempts(MaxAttempts::parse(1).unwrap());
    crit.priority = Priority::parse(100).unwrap();
    let d = store.submit_many(&[crit]).await.unwrap()[0].id;
    let got = store.acquire_batch(1).await.unwrap();
    assert_eq!(got[0].id, d);
    store
        .complete_many(&[TaskResult {
            id: d,
            attempt: 1,
            outcome: Outcome::Failure(json!({"code": -1, "message": "boom"})),
        }])
        .await
        .unwrap();
    let t = call_ok!(app, "task.get", json!({"id": d}));
    assert_eq!(t["state"], "CRITICAL_ERROR");
    assert_eq!(t["error"]["message"], "boom");
    assert!(t["finished_at"].is_string());
    assert_eq!(call_ok!(app, "task.retry", json!({"id": d, "extra_attempts": 2})), json!({"retried": true}));
    let t = call_ok!(app, "task.get", json!({"id": d}));
    assert_eq!((t["state"].clone(), t["max_attempts"].clone()), (json!("SCHEDULED"), json!(3)));

    // stats: every state, per action.
    let s = call_ok!(app, "stats", Value::Null);
    let by_state = s["by_state"].as_object().unwrap();
    assert_eq!(by_state.len(), 7, "{s}"); // every state, WAITING (workflow stages) included
    assert_eq!(s["by_state"]["SCHEDULED"], 3); // a (retried), b, d (retried)
    assert_eq!(s["by_state"]["CANCELLED"], 1); // c, cancelled while running
    assert_eq!(s["by_state"]["SUCCESS"], 0);
    assert_eq!(s["by_action"]["export"]["SCHEDULED"], 3);
    assert_eq!(s["by_action"]["noop"]["CANCELLED"], 1);
    assert_eq!(s["by_action"]["noop"]["SCHEDULED"], 0);
    assert_eq!(call_ok!(app, "stats", json!({})), s);
    assert_eq!(call_ok!(app, "stats", json!([])), s);
}

#[actix_rt::test]
async fn every_json_rpc_error_case() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db, &[TOKEN]))).await;
    let parse_errors = rpc_error_count(-32700);

    // Parse error: id null.
    for body in ["{not json", "", "[1,", "\u{feff}x", &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))] {
        let r = rpc!(app, body);
        assert_eq!(r["error"]["code"], -32700, "{body:.40}");
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["jsonrpc"], "2.0");
    }
    let (status, _, b) = send!(app, rpc_req("").set_payload(vec![0xff_u8, 0xfe, 0x00]));
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert!(rpc_error_count(-32700) >= parse_errors + 6);

    // Empty batch: one error object (not an array), id null.
    let r = rpc!(app, "[]");
    assert_eq!(r["error"]["code"], -32600);
    assert_eq!(r["id"], Value::Null);

    // Invalid requests: the id echoed where it can be read.
    let cases = [
        (json!({"jsonrpc": "1.0", "method": "stats", "id": 7}), json!(7)),
        (json!({"jsonrpc": "2.0", "id": "abc"}), json!("abc")),
        (json!({"jsonrpc": "2.0", "method": 5, "id": 8}), json!(8)),
        (json!({"jsonrpc": "2.0", "method": "stats", "params": 3, "id": 9}), json!(9)),
        (json!({"jsonrpc": "2.0", "method": "stats", "id": {"x": 1}}), Value::Null),
        (json!({"method": "stats"}), Value::Null),
        (json!(42), Value::Null),
    ];
    for (req, id) in cases {
        let r = rpc!(app, req);
        assert_eq!(r["error"]["code"], -32600, "{req}");
        assert_eq!(r["id"], id, "{req}");
    }
    let r = rpc!(app, "[1, \"x\"]");
    let arr = r.as_array().expect("a batch answer");
    assert_eq!(arr.len(), 2);
    assert!(arr.iter().all(|e| e["error"]["code"] == -32600 && e["id"].is_null()));

    // Unknown methods.
    for m in ["nope", "task.delete", "submit:", "submit:has space"] {
        assert_eq!(call_err!(app, m, json!({}))["code"], -32601, "{m}");
    }

    // Bad params: -32602, naming the field.
    let cases = [
        ("task.get", json!({"id": "x"}), "id"),
        ("task.get", json!({"id": 1.5}), "id"),
        ("task.get", json!({}), "id"),
        ("task.get", Value::Null, "id"),
        ("task.get", json!([1]), "params"),
        ("task.get", json!({"id": 1, "bogus": 2}), "bogus"),
        ("task.cancel", json!({"id": true}), "id"),
        ("task.retry", json!({"id": 1, "extra_attempts": 0}), "extra_attempts"),
        ("task.retry", json!({"id": 1, "extra_attempts": "3"}), "extra_attempts"),
        ("task.list", json!({"state": "NOPE"}), "state"),
        ("task.list", json!({"state": 1}), "state"),
        ("task.list", json!({"action": "has space"}), "action"),
        ("task.list", json!({"limit": 0}), "limit"),
        ("task.list", json!({"limit": 5000}), "limit"),
        ("task.list", json!({"after_id": "1"}), "after_id"),
        ("task.list", json!({"sate": "SUCCESS"}), "sate"),
        ("stats", json!({"x": 1}), "x"),
        ("submit:export", json!([1]), "params"),
        ("submit:export", json!({"payload": {}, "priority": "high"}), "priority"),
        ("submit:export", json!({"payload": {}, "priority": 1000}), "priority"),
        ("submit:export", json!({"payload": {}, "bogus": 1}), "bogus"),
        ("submit:export", json!({"_meta": {}}), "payload"),
        ("submit:export", json!({"s": "nul\u{0}byte"}), "payload"),
        ("submit:export", json!({"payload": {}, "dedup_key": "a\u{0}"}), "dedup_key"),
    ];
    for (method, params, field) in cases {
        let e = call_err!(app, method, params.clone());
        assert_eq!(e["code"], -32602, "{method} {params} -> {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{method} {params}: {e} does not name {field}");
    }
    // The NUL payload was refused without poisoning the store: a good submit still works.
    call_ok!(app, "submit:export", json!({"ok": 1}));

    // A non-object body member in a batch next to good ones.
    let r = rpc!(
        app,
        json!([{"jsonrpc": "2.0", "method": "stats", "id": 1}, {"jsonrpc": "2.0", "method": "stats", "params": "x", "id": 2}])
    );
    let arr = r.as_array().unwrap();
    assert_eq!(arr.len(), 2);
}

#[actix_rt::test]
async fn notifications_get_no_response_and_batches_answer_requests_only() {
    let db = TestDb::new().await;
    let store = db.store();
    let api = api(&db, &[TOKEN]);
    let app = test::init_service(build_app(api.clone())).await;

    // A single notification: 204, empty body, but it is executed.
    let (status, _, b) =
        send!(app, rpc_req(json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 1}}).to_string()));
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(b.is_empty());
    assert_eq!(store.list(&Default::default()).await.unwrap().len(), 1);
    // A failing notification is not answered either.
    let (status, _, b) = send!(app, rpc_req(json!({"jsonrpc": "2.0", "method": "nope"}).to_string()));
    assert_eq!((status, b.is_empty()), (StatusCode::NO_CONTENT, true));

    // A batch of notifications only: 204.
    let (status, _, b) = send!(
        app,
        rpc_req(
            json!([
                {"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 2}},
                {"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 3}},
                {"jsonrpc": "2.0", "method": "nope"}
            ])
            .to_string()
        )
    );
    assert_eq!((status, b.is_empty()), (StatusCode::NO_CONTENT, true));
    assert_eq!(store.list(&Default::default()).await.unwrap().len(), 3);

    // Mixed: answers for the requests only (matched by id), invalid elements answered with id null.
    let r = rpc!(
        app,
        json!([
            {"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 4}, "id": 1},
            {"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 5}},
            {"jsonrpc": "2.0", "method": "task.get", "params": {"id": 987654}, "id": "b"},
            {"foo": "bar"},
            {"jsonrpc": "2.0", "method": "nope"},
            {"jsonrpc": "2.0", "method": "nope", "id": null},
            {"jsonrpc": "2.0", "method": "submit:export", "params": {"n": 4}, "id": 3}
        ])
    );
    let arr = r.as_array().expect("a batch answer");
    assert_eq!(arr.len(), 5, "{r}");
    let by_id = |id: Value| -> Vec<&Value> { arr.iter().filter(|e| e["id"] == id).collect() };
    let one = by_id(json!(1));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["result"]["created"], true);
    let three = by_id(json!(3));
    assert_eq!(three[0]["result"]["id"], one[0]["result"]["id"]);
    assert_eq!(three[0]["result"]["created"], false);
    assert_eq!(by_id(json!("b"))[0]["error"]["code"], TASK_NOT_FOUND);
    let nulls = by_id(Value::Null);
    let mut codes: Vec<i64> = nulls.iter().map(|e| e["error"]["code"].as_i64().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, vec![-32601, -32600]);
    assert_eq!(store.list(&Default::default()).await.unwrap().len(), 5);

    // The submits of one batch go through the batcher together (group commit).
    let before = api.submit_statements();
    let batch: Vec<Value> =
        (0..20).map(|i| json!({"jsonrpc": "2.0", "method": "submit:noop", "params": {"i": i}, "id": i})).collect();
    let r = rpc!(app, Value::Array(batch));
    let ids: HashSet<i64> = r.as_array().unwrap().iter().map(|e| e["result"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 20);
    let statements = api.submit_statements() - before;
    assert!((1..=3).contains(&statements), "20 submits in one batch took {statements} statements");
}

#[actix_rt::test]
async fn bearer_token_auth() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db, &[TOKEN, "second-token"]))).await;
    let body = json!({"jsonrpc": "2.0", "method": "stats", "id": 1}).to_string();
    let unauthorized = counter("/rpc", "401");
    let cases: [(Option<String>, StatusCode); 7] = [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong".into()), StatusCode::UNAUTHORIZED),
        (Some(format!("Bearer {TOKEN}x")), StatusCode::UNAUTHORIZED),
        (Some(TOKEN.into()), StatusCode::UNAUTHORIZED),
        (Some(format!("Basic {TOKEN}")), StatusCode::UNAUTHORIZED),
        (Some(format!("Bearer {TOKEN}")), StatusCode::OK),
        (Some("bearer second-token".into()), StatusCode::OK),
    ];
    for (auth, expected) in cases {
        // A non-loopback peer: with tokens configured, the address does not matter.
        let mut req =
            TestRequest::post().uri("/rpc").peer_addr("203.0.113.9:5555".parse().unwrap()).set_payload(body.clone());
        if let Some(a) = &auth {
            req = req.insert_header(("Authorization", a.as_str()));
        }
        let (status, headers, b) = send!(app, req);
        assert_eq!(status, expected, "{auth:?}");
        let r: Value = serde_json::from_slice(&b).unwrap();
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(r["error"]["code"], -32001);
            assert_eq!(r["error"]["message"], "unauthorized");
            assert_eq!(r["id"], Value::Null);
            assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
        } else {
            assert!(r["result"]["by_state"].is_object(), "{r}");
        }
    }
    assert!(counter("/rpc", "401") >= unauthorized + 5);
    // No token needed for the operational endpoints.
    for path in ["/metrics", "/healthz"] {
        let (status, _, _) = send!(app, TestRequest::get().uri(path).peer_addr("203.0.113.9:5555".parse().unwrap()));
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[actix_rt::test]
async fn without_tokens_only_loopback_clients_are_served() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db, &[]))).await;
    let body = json!({"jsonrpc": "2.0", "method": "stats", "id": 1}).to_string();
    for (peer, expected) in [
        (Some("127.0.0.1:1234"), StatusCode::OK),
        (Some("[::1]:1234"), StatusCode::OK),
        (Some("10.1.2.3:1234"), StatusCode::FORBIDDEN),
        (Some("[2001:db8::1]:1234"), StatusCode::FORBIDDEN),
        (None, StatusCode::FORBIDDEN),
    ] {
        let mut req = TestRequest::post().uri("/rpc").set_payload(body.clone());
        if let Some(p) = peer {
            req = req.peer_addr(p.parse().unwrap());
        }
        let (status, _, b) = send!(app, req);
        assert_eq!(status, expected, "{peer:?}");
        let r: Value = serde_json::from_slice(&b).unwrap();
        if expected == StatusCode::FORBIDDEN {
            assert_eq!(r["error"]["code"], -32003);
            assert_eq!(r["id"], Value::Null);
        }
    }
    let (status, _, b) = send!(app, TestRequest::get().uri("/healthz").peer_addr("10.1.2.3:1234".parse().unwrap()));
    assert_eq!((status, &b[..]), (StatusCode::OK, &b"ok"[..]));
}

#[actix_rt::test]
async fn oversized_bodies_get_413() {
    let db = TestDb::new().await;
    let mut s = settings(&db, &[TOKEN]);
    s.http.body_limit_bytes = 1024;
    let app = test::init_service(build_app(HttpApi::new(state_with(s, db.store())))).await;
    let before = counter("/rpc", "413");

    let pad = |n: usize| {
        let mut b = json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"pad": ""}, "id": 1}).to_string();
        let fill = "x".repeat(n - b.len());
        b = b.replace("\"pad\":\"\"", &format!("\"pad\":\"{fill}\""));
        assert_eq!(b.len(), n);
        b
    };
    // Exactly at the limit: served.
    let r = rpc!(app, pad(1024));
    assert_eq!(r["result"]["created"], true);
    // Beyond it: 413, streamed body (no Content-Length)...
    let (status, _, b) = send!(app, rpc_req(pad(1025)));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(r["error"]["code"], -32600);
    // ... and a declared Content-Length beyond it.
    let (status, _, _) = send!(app, rpc_req(pad(5000)).insert_header(("Content-Length", "5000")));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(counter("/rpc", "413") >= before + 2);
    assert_eq!(db.store().list(&Default::default()).await.unwrap().len(), 1);
}

/// A submission whose task message would exceed `transport.max_message_bytes` (though its HTTP body is within
/// `http.body_limit_bytes`) gets -32602 naming the limit; nothing is stored.
#[actix_rt::test]
async fn a_payload_too_large_for_the_queue_is_refused_naming_the_limit() {
    let db = TestDb::new().await;
    let mut s = settings(&db, &[TOKEN]);
    s.transport.max_message_bytes = 2048;
    let app = test::init_service(build_app(HttpApi::new(state_with(s, db.store())))).await;
    let e = call_err!(app, "submit:export", json!({"objectID": 1, "pad": "x".repeat(3000)}));
    assert_eq!(e["code"], -32602, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("2048") && message.contains("transport.max_message_bytes"), "{e}");
    assert_eq!(e["data"]["field"], "payload");
    let r = call_ok!(app, "submit:export", json!({"objectID": 1, "pad": "x".repeat(1500)}));
    assert_eq!(r["created"], true);
    assert_eq!(db.store().list(&Default::default()).await.unwrap().len(), 1);
}

#[actix_rt::test]
async fn rpc_disabled_is_404_and_unknown_paths_count_as_other() {
    let db = TestDb::new().await;
    let mut st = state_with(settings(&db, &[TOKEN]), db.store());
    st.rpc_enabled = false;
    let app = test::init_service(build_app(HttpApi::new(st))).await;
    let other = counter("other", "404");
    let (status, _, _) = send!(app, rpc_req("{}"));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send!(app, TestRequest::get().uri("/nope/../x?y=1"));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(counter("other", "404") >= other + 2);
    // Wrong method on a known route.
    let (status, _, _) = send!(app, TestRequest::post().uri("/healthz"));
    assert!(status.is_client_error());
}

/// The value of one series in a Prometheus text exposition; 0 when it is absent.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a sample value"))
        .unwrap_or(0.0)
}

#[actix_rt::test]
async fn metrics_endpoint_exposes_the_counters() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db, &[TOKEN]))).await;
    let scrape = || async {
        let (status, headers, b) = send!(app, TestRequest::get().uri("/metrics"));
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        String::from_utf8(b.to_vec()).unwrap()
    };
    let rpc_200 = r#"scheduler_http_requests_total{path="/rpc",status="200"}"#;
    let rpc_401 = r#"scheduler_http_requests_total{path="/rpc",status="401"}"#;
    let metrics_200 = r#"scheduler_http_requests_total{path="/metrics",status="200"}"#;
    let not_found = r#"scheduler_rpc_errors_total{code="-32601"}"#;
    let unauthorized = r#"scheduler_rpc_errors_total{code="-32001"}"#;
    let before = scrape().await;
    // The series exist from the start (HttpApi::new creates them); what matters is that these requests move them.
    call_ok!(app, "stats", Value::Null);
    call_err!(app, "nope", Value::Null);
    call_err!(app, "nope", Value::Null);
    let (status, _, _) = send!(app, TestRequest::post().uri("/rpc").peer_addr(loopback()).set_payload("{}"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Only this test sends anything but GET to /metrics: that series moves by exactly one.
    let (wrong_method, _, _) = send!(app, TestRequest::put().uri("/metrics"));
    assert!(wrong_method.is_client_error(), "{wrong_method}");
    let wrong = format!(r#"scheduler_http_requests_total{{path="/metrics",status="{}"}}"#, wrong_method.as_str());
    let after = scrape().await;
    // Other tests in this process run at the same time and can only add to the shared series: at least ours.
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(delta(rpc_200) >= 3.0, "{rpc_200}: {}", delta(rpc_200));
    assert!(delta(not_found) >= 2.0, "{not_found}: {}", delta(not_found));
    assert!(delta(rpc_401) >= 1.0, "{rpc_401}: {}", delta(rpc_401));
    assert!(delta(unauthorized) >= 1.0, "{unauthorized}: {}", delta(unauthorized));
    assert!(delta(metrics_200) >= 1.0, "the first scrape is counted: {}", delta(metrics_200));
    assert_eq!(delta(&wrong), 1.0, "{wrong}");
}

#[actix_rt::test]
async fn promtool_accepts_the_metrics() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db, &[TOKEN]))).await;
    call_ok!(app, "stats", Value::Null);
    let (_, _, b) = send!(app, TestRequest::get().uri("/metrics"));
    let report = common::promtool_report(&b);
    assert!(report.trim().is_empty(), "promtool check metrics: {report}");
}

struct BrokenTransport;

#[async_trait]
impl Transport for BrokenTransport {
    async fn receive(&self, q: Queue, _: usize, _: Duration) -> TransportResult<Vec<Message>> {
        Err(TransportError::new(q, "down"))
    }
    async fn send(&self, q: Queue, _: &[String]) -> TransportResult<Vec<Result<(), String>>> {
        Err(TransportError::new(q, "down"))
    }
    async fn delete(&self, q: Queue, _: &[String]) -> TransportResult<Vec<String>> {
        Err(TransportError::new(q, "down"))
    }
    async fn change_visibility(&self, q: Queue, _: &[String], _: Duration) -> TransportResult<()> {
        Err(TransportError::new(q, "down"))
    }
    async fn depth(&self, q: Queue) -> TransportResult<u64> {
        Err(TransportError::new(q, "down"))
    }
    fn kind(&self) -> &'static str {
        "broken"
    }
}

#[actix_rt::test]
async fn readyz_checks_the_database_and_the_transport() {
    let db = TestDb::new().await;
    let readyz = |transport: Option<Arc<dyn Transport>>, store: TaskStore| {
        let mut st = state_with(settings(&db, &[TOKEN]), store);
        st.transport = transport;
        HttpApi::new(st)
    };

    let memory: Arc<dyn Transport> = Arc::new(MemoryTransport::new(Duration::from_secs(30)));
    let app = test::init_service(build_app(readyz(Some(memory), db.store()))).await;
    let (status, _, b) = send!(app, TestRequest::get().uri("/readyz"));
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(r, json!({"database": "ok", "transport": "ok", "ready": true}));

    let app = test::init_service(build_app(readyz(Some(Arc::new(BrokenTransport)), db.store()))).await;
    let (status, _, b) = send!(app, TestRequest::get().uri("/readyz"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!((r["database"].as_str(), r["transport"].as_str()), (Some("ok"), Some("failed")));

    // A database that is not there (nothing listens on port 1).
    let dead = TaskStore::new(
        sqs_scheduler::db::build_pool(&DatabaseSettings {
            url: "postgres://postgres@127.0.0.1:1/nowhere".into(),
            pool_size: 1,
            min_idle: 0,
            connect_timeout_ms: 500,
            ..DatabaseSettings::default()
        }),
        Backoff::default(),
    );
    let api = readyz(None, dead);
    let app = test::init_service(build_app(api)).await;
    let (status, _, b) = send!(app, TestRequest::get().uri("/readyz"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(r["database"], "failed");
    assert!(r.get("transport").is_none());
    // And the API answers -32603 instead of hanging or panicking.
    let e = call_err!(app, "submit:export", json!({"n": 1}));
    assert_eq!(e["code"], -32603);
    let e = call_err!(app, "stats", Value::Null);
    assert_eq!(e["code"], -32603);
}

/// One exchange on a raw socket: the request as written, the whole response (the server closes).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_rt::test]
async fn the_server_binds_a_real_socket_and_answers() {
    let db = TestDb::new().await;
    let mut s = settings(&db, &[TOKEN]);
    s.http.body_limit_bytes = 4096;
    let (handle, addr) = start_server(state_with(s, db.store())).await.unwrap();
    assert_ne!(addr.port(), 0);

    let r = raw_http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nok"), "{r}");

    let body = json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"objectID": 1}, "id": 1}).to_string();
    let req = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_http(addr, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let json_body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json_body["result"]["created"], true);

    // Keep-alive client: several calls on one connection, then a 413 on a declared oversized body.
    let mut c = RpcHttpClient::connect(addr, Some(TOKEN.into())).await.unwrap();
    for i in 0..5 {
        let (status, b) = c
            .call(
                &json!({"jsonrpc": "2.0", "method": "task.get", "params": {"id": json_body["result"]["id"]}, "id": i})
                    .to_string(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["id"], i);
    }
    let (status, b) = c.call(&" ".repeat(5000)).await.unwrap();
    assert_eq!(status, 413, "{b}");
    // The client recovers (reconnects if the server closed the connection).
    let (status, b) = c.call(r#"{"jsonrpc":"2.0","method":"nope"}"#).await.unwrap();
    assert_eq!((status, b.as_str()), (204, ""));
    let (status, _) = RpcHttpClient::connect(addr, None).await.unwrap().call("{}").await.unwrap();
    assert_eq!(status, 401);

    handle.stop(true).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[actix_rt::test]
async fn fifty_concurrent_submits_get_distinct_ids() {
    let db = TestDb::new().await;
    let (handle, addr) = start_server(state_with(settings(&db, &[TOKEN]), db.store())).await.unwrap();
    let calls = (0..50).map(|i| async move {
        let mut c = RpcHttpClient::connect(addr, Some(TOKEN.into())).await.unwrap();
        let (status, b) = c
            .call(&json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"objectID": i}, "id": i}).to_string())
            .await
            .unwrap();
        assert_eq!(status, 200, "{b}");
        let r: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(r["id"], i);
        assert_eq!(r["result"]["created"], true, "{r}");
        r["result"]["id"].as_i64().unwrap()
    });
    let ids: HashSet<i64> = futures::future::join_all(calls).await.into_iter().collect();
    assert_eq!(ids.len(), 50);
    let rows =
        db.store().list(&sqs_scheduler::store::ListFilter { limit: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows.iter().map(|t| t.id).collect::<HashSet<_>>(), ids);
    handle.stop(true).await;
}

#[actix_rt::test]
async fn concurrent_in_process_submits_are_group_committed() {
    let db = TestDb::new().await;
    let api = api(&db, &[TOKEN]);
    let app = test::init_service(build_app(api.clone())).await;
    let before = api.submit_statements();
    let calls = (0..50).map(|i| {
        let req = rpc_req(
            json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"objectID": i}, "id": i}).to_string(),
        )
        .to_request();
        test::call_service(&app, req)
    });
    let responses = futures::future::join_all(calls).await;
    let mut ids = HashSet::new();
    for res in responses {
        let r: Value = serde_json::from_slice(&test::read_body(res).await).unwrap();
        ids.insert(r["result"]["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 50);
    let statements = api.submit_statements() - before;
    assert!(statements < 50, "50 concurrent submits took {statements} statements");
    assert_eq!(db.store().list(&Default::default()).await.unwrap().len(), 50);
}

/// `cargo test --test http_api -- --ignored --nocapture`: the HTTP benchmark against a local server.
#[actix_rt::test]
#[ignore]
async fn bench_http_submits() {
    let db = TestDb::new().await;
    let (handle, addr) = start_server(state_with(settings(&db, &[TOKEN]), db.store())).await.unwrap();
    sqs_scheduler::tools::bench::http::run(&format!("http://{addr}"), Some(TOKEN), 16, 2000, 1).await.unwrap();
    assert_eq!(db.store().counts_by_state().await.unwrap().iter().map(|c| c.1).sum::<i64>(), 2000);
    handle.stop(true).await;
}

#[actix_rt::test]
async fn a_large_batch_is_answered_completely() {
    let db = TestDb::new().await;
    let api = api(&db, &[TOKEN]);
    let app = test::init_service(build_app(api.clone())).await;
    let before = api.submit_statements();
    let batch: Vec<Value> = (0..1500)
        .map(|i| match i % 3 {
            0 => json!({"jsonrpc": "2.0", "method": "task.get", "params": {"id": 1}, "id": i}),
            1 => json!({"jsonrpc": "2.0", "method": "stats", "id": i}),
            _ => json!({"jsonrpc": "2.0", "method": "submit:noop", "params": {"i": i}, "id": i}),
        })
        .collect();
    let r = rpc!(app, Value::Array(batch));
    let arr = r.as_array().unwrap();
    assert_eq!(arr.len(), 1500);
    let ids: HashSet<i64> = arr.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1500);
    for e in arr {
        let i = e["id"].as_i64().unwrap();
        match i % 3 {
            0 => assert!(e["result"]["id"] == 1 || e["error"]["code"] == TASK_NOT_FOUND, "{e}"),
            1 => assert!(e["result"]["by_state"].is_object(), "{e}"),
            _ => assert_eq!(e["result"]["created"], true, "{e}"),
        }
    }
    assert!(api.submit_statements() - before < 500);
    assert_eq!(db.store().counts_by_state().await.unwrap().iter().map(|c| c.1).sum::<i64>(), 500);
    // Beyond the batch limit: one -32600.
    let huge = format!("[{}]", vec!["1"; 10_001].join(","));
    let r = rpc!(app, huge);
    assert_eq!((r["error"]["code"].as_i64(), r["id"].is_null()), (Some(-32600), true));
}

/// The database refuses one submission of a batch (a CHECK constraint this test adds to its own database: our
/// validation leaves nothing else for the database to refuse). The group commit fails, the batcher retries one by
/// one: the valid submissions are stored and answered with ids, only the refused one gets an error.
#[actix_rt::test]
async fn a_submission_the_database_refuses_fails_alone_in_its_batch() {
    let db = TestDb::new().await;
    common::exec(&db.url, "ALTER TABLE tasks ADD CONSTRAINT test_refused CHECK (NOT payload ? 'refused')").await;
    let api = api(&db, &[TOKEN]);
    let app = test::init_service(build_app(api.clone())).await;
    let before = api.submit_statements();
    let bad = 5;
    let batch: Vec<Value> = (0..12)
        .map(|i| {
            let params = if i == bad { json!({"refused": true}) } else { json!({"objectID": i}) };
            json!({"jsonrpc": "2.0", "method": "submit:export", "params": params, "id": i})
        })
        .collect();
    let r = rpc!(app, Value::Array(batch));
    let replies = r.as_array().unwrap();
    assert_eq!(replies.len(), 12);
    let mut stored = HashSet::new();
    for e in replies {
        let i = e["id"].as_i64().unwrap();
        if i == bad {
            assert!(e.get("result").is_none(), "{e}");
            // Data the database refuses is the caller's to fix: invalid params, saying why.
            assert_eq!(e["error"]["code"], -32602, "{e}");
            assert!(e["error"]["message"].as_str().unwrap().contains("refused by the database"), "{e}");
        } else {
            assert!(e.get("error").is_none(), "{e}");
            assert_eq!(e["result"]["created"], true, "{e}");
            stored.insert(e["result"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(stored.len(), 11);
    let rows = db.store().list(&Default::default()).await.unwrap();
    assert_eq!(rows.iter().map(|t| t.id).collect::<HashSet<_>>(), stored, "exactly the valid ones are stored");
    assert!(rows.iter().all(|t| t.payload.get("refused").is_none()));
    // It took the one-by-one path: more statements than the group commit alone.
    assert!(api.submit_statements() - before > 1);
}

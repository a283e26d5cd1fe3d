//! The HTTP server: the JSON-RPC 2.0 API on `POST /rpc`, `GET /metrics`, `GET /healthz` and `GET /readyz`.
//!
//! - `/rpc` needs `Authorization: Bearer <token>` when `http.api_tokens` is set; with no token configured it
//!   serves loopback clients only. Bodies beyond `http.body_limit_bytes` get HTTP 413.
//! - JSON-RPC errors are answered with HTTP 200 (the error is in the body); refusals before JSON-RPC (401, 403,
//!   413, 400 for an unreadable body) carry a JSON-RPC error object with id null as well.
//! - concurrent `submit:*` calls are group-committed: one `submit_many` for everything waiting (see
//!   [`GroupCommitter`]).
//! - every request is counted in `scheduler_http_requests_total{path,status}` (path: the route, or "other"),
//!   every JSON-RPC error response in `scheduler_rpc_errors_total{code}`.

pub mod auth;
pub mod auth_failures;
mod budget;
pub mod rpc;
pub mod rpc_id;
pub mod server;

use crate::configuration::Settings;
use crate::group_commit::GroupCommitter;
use crate::metrics::metrics;
use crate::protocol::{RpcError, FORBIDDEN, INVALID_REQUEST, UNAUTHORIZED};
use crate::store::{MaxAttempts, TaskStore};
use crate::submit::{SubmitCommit, WorkflowCommit};
use crate::transport::{Queue, Transport};
use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use auth::{Access, Denied};
use futures::StreamExt;
use rpc::{error_response, RpcContext};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::protocol::{SCHEDULE_NOT_FOUND, TASK_NOT_FOUND, TASK_NOT_RETRYABLE};

/// Submissions per group commit at most.
pub const MAX_SUBMIT_BATCH: usize = 1000;

/// Submit statements running at once: while one commits, the next group forms, and both cores work.
const SUBMIT_STATEMENTS_IN_FLIGHT: usize = 4;
/// Worker threads of the HTTP server.
pub const WORKERS: usize = 2;
/// How long reading a request body may take.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `/readyz` waits for each check.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the HTTP server serves.
#[derive(Clone)]
pub struct HttpState {
    pub settings: Arc<Settings>,
    pub store: TaskStore,
    /// Checked by `/readyz` (depth of the inbound queue) when set.
    pub transport: Option<Arc<dyn Transport>>,
    /// Serve `POST /rpc` (else it is 404).
    pub rpc_enabled: bool,
    /// The actions `submit:*` and `schedule.create` accept.
    pub known_actions: crate::handlers::KnownActions,
}

struct Inner {
    state: HttpState,
    access: Access,
    rpc: RpcContext,
}

/// The API with its submit batcher, shared by every worker of the server. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi(Arc<Inner>);

impl HttpApi {
    /// Spawns the submit batcher on the current thread's local task set, so call it inside an actix System
    /// (or `#[actix_rt::test]`). Logs a warning if `/rpc` has no token and so serves loopback clients only.
    pub fn new(state: HttpState) -> HttpApi {
        let access = Access::from_tokens(&state.settings.http.api_tokens);
        if state.rpc_enabled && matches!(access, Access::LoopbackOnly) {
            tracing::warn!("no API tokens configured: /rpc serves loopback clients only");
        }
        let m = metrics();
        for code in crate::protocol::RESPONSE_CODES {
            m.rpc_errors.with_label_values(&[code.to_string().as_str()]);
        }
        for (path, status) in
            [("/rpc", "200"), ("/rpc", "204"), ("/metrics", "200"), ("/healthz", "200"), ("/readyz", "200")]
        {
            m.http_requests.with_label_values(&[path, status]);
        }
        let rpc = RpcContext {
            store: state.store.clone(),
            submits: {
                // The HTTP submit path is the Persister's commit stage, fed by requests instead of a queue.
                let commit = SubmitCommit { store: state.store.clone(), wake: None, name: "http_submit" };
                let (committer, loops) = GroupCommitter::new(commit, MAX_SUBMIT_BATCH, SUBMIT_STATEMENTS_IN_FLIGHT);
                actix_rt::spawn(loops);
                committer
            },
            workflows: {
                let commit = WorkflowCommit { store: state.store.clone(), wake: None, name: "http_workflow_submit" };
                let (committer, loops) = GroupCommitter::new(commit, MAX_SUBMIT_BATCH, SUBMIT_STATEMENTS_IN_FLIGHT);
                actix_rt::spawn(loops);
                committer
            },
            default_max_attempts: MaxAttempts::parse(state.settings.retry.default_max_attempts).unwrap_or_default(),
            max_message_bytes: state.settings.transport.max_message_bytes,
            known_actions: state.known_actions.clone(),
        };
        HttpApi(Arc::new(Inner { state, access, rpc }))
    }

    /// Group commits (`submit_many` statements) run by the submit batcher so far.
    pub fn submit_statements(&self) -> u64 {
        self.0.rpc.submits.statements()
    }

    /// Submissions handled by the submit batcher so far.
    pub fn submitted(&self) -> u64 {
        self.0.rpc.submits.items()
    }
}

/// The actix application: routes and the request-counting middleware. `HttpServer` builds one per worker;
/// tests can pass it to `actix_web::test::init_service`.
pub fn build_app(
    api: HttpApi,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let rpc_enabled = api.0.state.rpc_enabled;
    let mut app = App::new()
        .app_data(web::Data::new(api))
        .route("/metrics", web::get().to(metrics_endpoint))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
    if rpc_enabled {
        app = app.route("/rpc", web::post().to(rpc_endpoint));
    }
    app.default_service(web::to(|| async {
        HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("not found\n")
    }))
    .wrap_fn(|req, srv| {
        let fut = srv.call(req);
        async move {
            let res = fut.await;
            let (path, status) = match &res {
                Ok(r) => (r.request().match_pattern().unwrap_or_else(|| "other".into()), r.status()),
                Err(e) => ("other".into(), e.as_response_error().status_code()),
            };
            let path = match path.as_str() {
                "/rpc" | "/metrics" | "/healthz" | "/readyz" => path,
                _ => "other".into(),
            };
            metrics().http_requests.with_label_values(&[path.as_str(), status.as_str()]).inc();
            res
        }
    })
}

/// Binds `settings.http.bind` (port 0: any free port), starts the server with [`WORKERS`] workers on the current
/// actix System and returns its handle and the bound address. The server does not handle signals: stop it with
/// `handle.stop(true)`.
pub async fn start_server(state: HttpState) -> anyhow::Result<(ServerHandle, SocketAddr)> {
    let (handle, server, local) = bind_server(state)?;
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((handle, local))
}

/// Binds and builds the server without running it: the caller awaits the returned `Server` (the supervised
/// [`server::HttpServerActor`] actor does, so it sees the server end).
pub fn bind_server(state: HttpState) -> anyhow::Result<(ServerHandle, actix_web::dev::Server, SocketAddr)> {
    let bind = state.settings.http.bind.trim();
    anyhow::ensure!(!bind.is_empty(), "http.bind is empty: no HTTP server configured");
    let addr: SocketAddr =
        bind.parse().with_context(|| format!("http.bind {bind:?} is not an IP address with a port"))?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind the HTTP server to {addr}"))?;
    let local = listener.local_addr()?;
    let api = HttpApi::new(state);
    let server = HttpServer::new(move || build_app(api.clone()))
        .workers(WORKERS)
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
    let handle = server.handle();
    tracing::info!(address = %local, "HTTP server listening");
    Ok((handle, server, local))
}

fn json_response(status: StatusCode, v: &Value) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body(serde_json::to_vec(v).unwrap_or_default())
}

fn refusal(status: StatusCode, code: i64, message: String) -> HttpResponse {
    let body = error_response(&RpcError::new(code, message), Value::Null);
    let mut res = json_response(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    res
}

async fn rpc_endpoint(req: HttpRequest, payload: web::Payload, api: web::Data<HttpApi>) -> HttpResponse {
    let inner = &api.0;
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let access = inner.access.check(authorization, req.peer_addr());
    if let Err(denied) = access {
        crate::http::auth_failures::record(denied, authorization, req.peer_addr());
    }
    match access {
        Ok(()) => {}
        Err(Denied::Unauthorized) => return refusal(StatusCode::UNAUTHORIZED, UNAUTHORIZED, "unauthorized".into()),
        Err(Denied::Forbidden) => {
            return refusal(
                StatusCode::FORBIDDEN,
                FORBIDDEN,
                "forbidden: no API tokens configured, /rpc serves loopback clients only".into(),
            )
        }
    }
    let limit = inner.state.settings.http.body_limit_bytes;
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(&req, payload, limit)).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                INVALID_REQUEST,
                format!("invalid request: the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )
        }
        Ok(Err(BodyError::TooLarge)) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                format!("invalid request: the body exceeds the limit of {limit} bytes"),
            )
        }
        Ok(Err(BodyError::Unreadable(e))) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                format!("invalid request: cannot read the body: {e}"),
            )
        }
    };
    match rpc::handle_body(&inner.rpc, &body).await {
        Some(bytes) => HttpResponse::Ok().content_type("application/json").body(bytes),
        None => HttpResponse::NoContent().finish(),
    }
}

enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit` (declared length or bytes read).
async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn metrics_endpoint() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body({
        crate::db::refresh_pool_metrics();
        metrics().render()
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok")
}

async fn readyz(api: web::Data<HttpApi>) -> HttpResponse {
    let state = &api.0.state;
    let mut ready = true;
    let database = match tokio::time::timeout(READY_TIMEOUT, state.store.db_now()).await {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: database check failed");
            ready = false;
            "failed"
        }
        Err(_) => {
            tracing::warn!("readyz: database check timed out");
            ready = false;
            "timeout"
        }
    };
    let mut body = json!({"database": database});
    // The commit stages' pollers stop receiving while the database breaker is open: not ready, and why.
    if let Some(why) = crate::actors::breaker::any_open() {
        ready = false;
        body["circuit_breaker"] = json!(why);
    }
    // An action whose settings row the acquire statement cannot use stops only itself: named, still ready.
    if let Ok(Ok(faults)) = tokio::time::timeout(READY_TIMEOUT, state.store.action_faults()).await {
        if !faults.is_empty() {
            body["action_setting_faults"] = json!(faults);
        }
    }
    if let Some(t) = &state.transport {
        let transport = match tokio::time::timeout(READY_TIMEOUT, t.depth(Queue::Inbound)).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readyz: transport check failed");
                ready = false;
                "failed"
            }
            Err(_) => {
                tracing::warn!("readyz: transport check timed out");
                ready = false;
                "timeout"
            }
        };
        body["transport"] = json!(transport);
    }
    body["ready"] = json!(ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &body)
}

//! The JSON-RPC 2.0 endpoint of `POST /rpc`: single and batch requests, notifications, and one dispatcher over
//! the method families, one file each (mini-redis's `cmd/`): `tasks.rs` (`submit:<action>`, `task.*`, `stats`),
//! `workflows.rs` (`workflow.*`), `schedules.rs` (`schedule.*`) and `actions.rs` (`action.*`). Parameters are
//! read with `protocol::params`; what a method is given is `context.rs`'s [`RpcContext`].

pub mod actions;
mod context;
mod schedules;
mod tasks;
mod workflows;

pub use context::RpcContext;

use crate::metrics::metrics;
use crate::protocol::{self, RpcError, INVALID_REQUEST, PARSE_ERROR, SUBMIT_PREFIX};
use futures::StreamExt;
use serde_json::{json, Value};

/// Most elements one batch request may have.
pub const MAX_BATCH_LEN: usize = 10_000;

/// Elements of one batch handled at the same time at most.
pub const BATCH_CONCURRENCY: usize = 256;

/// An error response object, counted in `rpc_errors{code}`.
pub fn error_response(e: &RpcError, id: Value) -> Value {
    metrics().rpc_errors.with_label_values(&[e.code.to_string().as_str()]).inc();
    json!({"jsonrpc": "2.0", "error": e.to_value(), "id": id})
}

/// Handles one HTTP body. None: nothing to answer (only notifications): HTTP 204.
pub async fn handle_body(ctx: &RpcContext, body: &[u8]) -> Option<Value> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(error_response(&RpcError::new(PARSE_ERROR, format!("parse error: {e}")), Value::Null)),
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            Some(error_response(&RpcError::new(INVALID_REQUEST, "invalid request: empty batch"), Value::Null))
        }
        Value::Array(items) if items.len() > MAX_BATCH_LEN => Some(error_response(
            &RpcError::new(
                INVALID_REQUEST,
                format!("invalid request: a batch may have at most {MAX_BATCH_LEN} elements, got {}", items.len()),
            ),
            Value::Null,
        )),
        Value::Array(items) => {
            // Many elements at once, so their submits meet in the same group commit; bounded, so a large batch of
            // reads does not queue thousands of callers on the connection pool (and time out there).
            let replies: Vec<Option<Value>> = futures::stream::iter(items)
                .map(|item| handle_one(ctx, item))
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await;
            let replies: Vec<Value> = replies.into_iter().flatten().collect();
            (!replies.is_empty()).then_some(Value::Array(replies))
        }
        single => handle_one(ctx, single).await,
    }
}

/// One request or notification. None for a notification.
async fn handle_one(ctx: &RpcContext, v: Value) -> Option<Value> {
    let req = match protocol::parse_request(v) {
        Ok(r) => r,
        Err((e, id)) => return Some(error_response(&e, id)),
    };
    let result = call(ctx, &req.method, req.params).await;
    match req.id {
        None => {
            if let Err(e) = &result {
                tracing::debug!(method = %req.method, code = e.code, error = %e.message, "notification failed");
            }
            None
        }
        Some(id) => Some(match result {
            Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
            Err(e) => error_response(&e, id),
        }),
    }
}

/// The dispatcher: which family a method belongs to.
async fn call(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    match method {
        m if m.starts_with(SUBMIT_PREFIX) => tasks::submit(ctx, m, params).await,
        m if tasks::METHODS.contains(&m) => tasks::call(ctx, m, params).await,
        m if workflows::METHODS.contains(&m) => workflows::call(ctx, m, params).await,
        m if m.starts_with(schedules::PREFIX) => schedules::call(ctx, m, params).await,
        m if m.starts_with(actions::PREFIX) => actions::call(&ctx.store, m, params).await,
        other => Err(method_not_found(other)),
    }
}

/// -32601 listing every method.
fn method_not_found(method: &str) -> RpcError {
    let all: Vec<&str> = ["submit:<action>"]
        .iter()
        .chain(tasks::METHODS)
        .chain(workflows::METHODS)
        .chain(schedules::METHODS)
        .chain(actions::METHODS)
        .copied()
        .collect();
    RpcError::method_not_found(method, &all)
}

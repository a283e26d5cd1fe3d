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

/// Handles one HTTP body: the answer's bytes, None when there is nothing to answer (only notifications): HTTP 204.
/// Ids come back byte-exact ([`super::rpc_id`]); the work and bytes of one body are bounded ([`super::budget`]).
pub async fn handle_body(ctx: &RpcContext, body: &[u8]) -> Option<Vec<u8>> {
    let raw_ids = super::rpc_id::RawIds::read(body);
    let one_answer = |v: &Value| Some(super::rpc_id::answer_bytes(v, None));
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return one_answer(&error_response(&RpcError::new(PARSE_ERROR, format!("parse error: {e}")), Value::Null))
        }
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            one_answer(&error_response(&RpcError::new(INVALID_REQUEST, "invalid request: empty batch"), Value::Null))
        }
        Value::Array(items) if items.len() > MAX_BATCH_LEN => one_answer(&error_response(
            &RpcError::new(
                INVALID_REQUEST,
                format!("invalid request: a batch may have at most {MAX_BATCH_LEN} elements, got {}", items.len()),
            ),
            Value::Null,
        )),
        Value::Array(items) => {
            if let Err(e) = super::budget::check_batch(&items) {
                return one_answer(&error_response(&e, Value::Null));
            }
            // Many elements at once, so their submits meet in the same group commit; bounded, so a large batch of
            // reads does not queue thousands of callers on the connection pool (and time out there).
            let replies: Vec<Option<(Value, bool)>> = futures::stream::iter(items)
                .map(|item| handle_one(ctx, item))
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await;
            let mut size = 0;
            let answers: Vec<Vec<u8>> = replies
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.map(|(v, read)| bounded_answer(&v, read, raw_ids.get(i), &mut size)))
                .collect();
            (!answers.is_empty()).then(|| super::rpc_id::join(answers))
        }
        single => {
            if let Err(e) = super::budget::check_batch(std::slice::from_ref(&single)) {
                return one_answer(&error_response(&e, Value::Null));
            }
            let (v, read) = handle_one(ctx, single).await?;
            Some(bounded_answer(&v, read, raw_ids.get(0), &mut 0))
        }
    }
}

/// One answer's bytes, counted in `size`; a read's answer that would take the body past the limit is replaced by
/// an error (a write's is always answered: what it did must be told).
fn bounded_answer(v: &Value, read: bool, raw_id: Option<&serde_json::value::RawValue>, size: &mut usize) -> Vec<u8> {
    let mut bytes = super::rpc_id::answer_bytes(v, raw_id);
    if read && *size + bytes.len() > super::budget::MAX_ANSWER_BYTES {
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        bytes = super::rpc_id::answer_bytes(&error_response(&super::budget::answer_too_large(), id), raw_id);
    }
    *size += bytes.len();
    bytes
}

/// One request or notification: its answer and whether its method only reads. None for a notification.
async fn handle_one(ctx: &RpcContext, v: Value) -> Option<(Value, bool)> {
    let req = match protocol::parse_request(v) {
        Ok(r) => r,
        Err((e, id)) => return Some((error_response(&e, id), false)),
    };
    let read = super::budget::is_read(&req.method);
    let result = call(ctx, &req.method, req.params).await;
    match req.id {
        None => {
            if let Err(e) = &result {
                tracing::debug!(method = %req.method, code = e.code, error = %e.message, "notification failed");
            }
            None
        }
        Some(id) => Some((
            match result {
                Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
                Err(e) => error_response(&e, id),
            },
            read,
        )),
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

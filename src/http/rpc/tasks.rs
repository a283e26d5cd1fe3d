//! The task methods of `/rpc`: `submit:<action>` (group-committed), `task.get`, `task.list`, `task.cancel` and
//! `task.retry` (one task by id, or in bulk by a filter: `action`, `state`), and `stats`.

use super::context::{commit_failed, store_error, RpcContext};
use crate::metrics::metrics;
use crate::protocol::params::{check_limit, invalid, Params};
use crate::protocol::{self, RpcError, TASK_NOT_FOUND, TASK_NOT_RETRYABLE};
use crate::store::{Action, CancelOutcome, ListFilter, MaxAttempts, Task, TaskFilter, TaskState, TaskStore};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The methods of this family, in the order `method not found` lists them.
pub const METHODS: &[&str] = &["task.get", "task.list", "task.cancel", "task.retry", "stats"];

/// `submit:<action>`: one task through the group commit.
pub async fn submit(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let action = protocol::submit_action(method)?;
    ctx.known_actions.check(&action, "http")?;
    let task = protocol::submit_task(action, params, ctx.default_max_attempts, ctx.max_message_bytes)?;
    match ctx.submits.commit(vec![task]).await.pop() {
        Some(Ok(s)) => Ok(json!({"id": s.id, "created": s.created})),
        other => Err(commit_failed(other.map(|o| o.map(|_| ())), "submit")),
    }
}

pub async fn call(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let mut p = Params::new(params)?;
    match method {
        "task.get" => {
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.get(id).await.map_err(store_error)? {
                Some(t) => Ok(task_json(&t)),
                None => Err(not_found(id)),
            }
        }
        "task.list" => {
            let state =
                p.optional_str("state")?.map(|s| TaskState::parse(&s)).transpose().map_err(RpcError::invalid_params)?;
            let action = p.optional_str("action")?.map(Action::parse).transpose().map_err(RpcError::invalid_params)?;
            let after_id = p.optional_i64("after_id")?;
            let limit = p.optional_i64("limit")?;
            p.finish()?;
            check_limit(limit)?;
            let filter = ListFilter { state, action, after_id, limit };
            let tasks = ctx.store.list(&filter).await.map_err(store_error)?;
            let next = tasks.last().map(|t| json!(t.id)).unwrap_or(Value::Null);
            Ok(json!({
                "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
                "next_after_id": next,
            }))
        }
        "task.cancel" => {
            let id = p.optional_i64("id")?;
            let filter = task_filter(&mut p)?;
            p.finish()?;
            let id = match one_or_filter(id, filter)? {
                Ok(id) => id,
                Err(filter) => return cancel_matching(&ctx.store, &filter).await,
            };
            let (outcome, from) = ctx.store.cancel_one(id).await.map_err(store_error)?;
            if let Some(from) = from {
                metrics().tasks_cancelled.with_label_values(&[from.as_str()]).inc();
            }
            let outcome = match outcome {
                CancelOutcome::NotFound => return Err(not_found(id)),
                CancelOutcome::Cancelled => "cancelled",
                CancelOutcome::CancelledRunning => "cancelled_running",
                CancelOutcome::AlreadyFinished => "already_finished",
            };
            Ok(json!({"outcome": outcome}))
        }
        "task.retry" => {
            let id = p.optional_i64("id")?;
            let filter = task_filter(&mut p)?;
            let extra = match p.optional_i64("extra_attempts")? {
                None => ctx.default_max_attempts,
                Some(n) => MaxAttempts::parse(n).map_err(|e| invalid("extra_attempts", e.message))?,
            };
            p.finish()?;
            let id = match one_or_filter(id, filter)? {
                Ok(id) => id,
                Err(filter) => return retry_matching(&ctx.store, &filter, extra).await,
            };
            if ctx.store.retry(id, extra).await.map_err(store_error)? {
                return Ok(json!({"retried": true}));
            }
            match ctx.store.get(id).await.map_err(store_error)? {
                None => Err(not_found(id)),
                Some(t) => Err(RpcError {
                    code: TASK_NOT_RETRYABLE,
                    message: "task is not in CRITICAL_ERROR or CANCELLED".into(),
                    data: Some(json!({"id": id, "state": t.state})),
                }),
            }
        }
        "stats" => {
            p.finish()?;
            let rows = ctx.store.counts_by_state_and_action().await.map_err(store_error)?;
            let zero = || -> BTreeMap<&'static str, i64> { TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect() };
            let mut by_state = zero();
            let mut by_action: BTreeMap<String, BTreeMap<&'static str, i64>> = BTreeMap::new();
            for (state, action, n) in rows {
                *by_state.entry(state.as_str()).or_default() += n;
                *by_action.entry(action).or_insert_with(zero).entry(state.as_str()).or_default() += n;
            }
            Ok(json!({"by_state": by_state, "by_action": by_action}))
        }
        other => Err(RpcError::method_not_found(other, METHODS)),
    }
}

/// `task.cancel` / `task.retry` take an id or a filter: Ok(id), or Err(filter) for the bulk form.
fn one_or_filter(id: Option<i64>, filter: Option<TaskFilter>) -> Result<Result<i64, TaskFilter>, RpcError> {
    match (id, filter) {
        (Some(id), None) => Ok(Ok(id)),
        (None, Some(filter)) => Ok(Err(filter)),
        (Some(_), Some(_)) => Err(invalid("params", "give either id or a filter (action, state), not both")),
        (None, None) => Err(invalid("id", "is required (or a filter: action, state)")),
    }
}

/// The filter of a bulk `task.cancel` / `task.retry` (`action`, `state`), None when the params name neither.
fn task_filter(p: &mut Params) -> Result<Option<TaskFilter>, RpcError> {
    let action = p.optional_str("action")?.map(Action::parse).transpose().map_err(RpcError::invalid_params)?;
    let state = p.optional_str("state")?.map(|s| TaskState::parse(&s)).transpose().map_err(RpcError::invalid_params)?;
    Ok((action.is_some() || state.is_some()).then_some(TaskFilter { action, state }))
}

/// Bulk cancel: `{"cancelled": n, "by_state": {...}}`.
async fn cancel_matching(store: &TaskStore, filter: &TaskFilter) -> Result<Value, RpcError> {
    let counts = store.cancel_matching(filter).await.map_err(store_error)?;
    let mut by_state = serde_json::Map::new();
    let mut total = 0;
    for (state, n) in counts {
        metrics().tasks_cancelled.with_label_values(&[state.as_str()]).inc_by(n as u64);
        by_state.insert(state.as_str().into(), json!(n));
        total += n;
    }
    tracing::info!(action = ?filter.action, state = ?filter.state, cancelled = total, "bulk cancel");
    Ok(json!({"cancelled": total, "by_state": by_state}))
}

/// Bulk retry: `{"retried": n}`.
async fn retry_matching(store: &TaskStore, filter: &TaskFilter, extra: MaxAttempts) -> Result<Value, RpcError> {
    let n = store.retry_matching(filter, extra).await.map_err(store_error)?;
    tracing::info!(action = ?filter.action, state = ?filter.state, retried = n, "bulk retry");
    Ok(json!({"retried": n}))
}

/// A task as the API shows it.
fn task_json(t: &Task) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn not_found(id: i64) -> RpcError {
    RpcError { code: TASK_NOT_FOUND, message: "task not found".into(), data: Some(json!({"id": id})) }
}

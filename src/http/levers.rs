//! The JSON-RPC methods an operator steers the queue with: `action.configure`, `action.pause`, `action.resume`,
//! `action.list`, and the bulk (filter) forms of `task.cancel` and `task.retry`. Every change is one statement;
//! bad input gets -32602 naming the field and changes nothing.

use super::rpc::{invalid, store_error, Params};
use crate::domain::json_kind;
use crate::metrics::metrics;
use crate::protocol::RpcError;
use crate::store::{Action, ActionChange, MaxAttempts, TaskFilter, TaskState, TaskStore, TimeoutSecs, ValidationError};
use serde_json::{json, Value};

/// The `action.*` methods (also the `action` subcommand of the CLI).
pub async fn call_action(store: &TaskStore, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let mut p = Params::new(params)?;
    match method {
        "action.configure" => {
            let action = required_action(&mut p)?;
            let change = ActionChange {
                max_concurrency: setting(&mut p, "max_concurrency", |v| {
                    ActionChange::max_concurrency(integer("max_concurrency", v)?).map_err(RpcError::invalid_params)
                })?,
                rate_per_sec: setting(&mut p, "rate_per_sec", |v| {
                    ActionChange::rate_per_sec(number("rate_per_sec", v)?).map_err(RpcError::invalid_params)
                })?,
                timeout_secs: setting(&mut p, "timeout_secs", |v| {
                    TimeoutSecs::parse("timeout_secs", number("timeout_secs", v)?).map_err(RpcError::invalid_params)
                })?,
                max_attempts: setting(&mut p, "max_attempts", |v| {
                    MaxAttempts::parse(integer("max_attempts", v)?).map_err(RpcError::invalid_params)
                })?,
            };
            p.finish()?;
            if change == ActionChange::default() {
                return Err(invalid(
                    "params",
                    "nothing to configure: give max_concurrency, rate_per_sec, timeout_secs or max_attempts \
                     (null removes one)",
                ));
            }
            let settings = store.configure_action(&action, &change).await.map_err(store_error)?;
            tracing::info!(action = %action, ?settings, "action configured");
            Ok(json!(settings))
        }
        "action.pause" | "action.resume" => {
            let action = required_action(&mut p)?;
            p.finish()?;
            let paused = method == "action.pause";
            let settings = store.set_action_paused(&action, paused).await.map_err(store_error)?;
            tracing::info!(action = %action, paused, "action {}", if paused { "paused" } else { "resumed" });
            Ok(json!(settings))
        }
        "action.list" => {
            let action = p.optional_str("action")?.map(Action::parse).transpose().map_err(RpcError::invalid_params)?;
            p.finish()?;
            let actions = store.list_actions(action.as_ref()).await.map_err(store_error)?;
            Ok(json!({"actions": actions}))
        }
        other => Err(RpcError::new(
            crate::protocol::METHOD_NOT_FOUND,
            format!(
                "method not found: {other:?} (expected action.configure, action.pause, action.resume or action.list)"
            ),
        )),
    }
}

/// The filter of a bulk `task.cancel` / `task.retry` (`action`, `state`), None when the params name neither.
pub(super) fn task_filter(p: &mut Params) -> Result<Option<TaskFilter>, RpcError> {
    let action = p.optional_str("action")?.map(Action::parse).transpose().map_err(RpcError::invalid_params)?;
    let state = p.optional_str("state")?.map(|s| TaskState::parse(&s)).transpose().map_err(RpcError::invalid_params)?;
    Ok((action.is_some() || state.is_some()).then_some(TaskFilter { action, state }))
}

/// Bulk cancel: `{"cancelled": n, "by_state": {...}}`.
pub(super) async fn cancel_matching(store: &TaskStore, filter: &TaskFilter) -> Result<Value, RpcError> {
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
pub(super) async fn retry_matching(
    store: &TaskStore,
    filter: &TaskFilter,
    extra: MaxAttempts,
) -> Result<Value, RpcError> {
    let n = store.retry_matching(filter, extra).await.map_err(store_error)?;
    tracing::info!(action = ?filter.action, state = ?filter.state, retried = n, "bulk retry");
    Ok(json!({"retried": n}))
}

fn required_action(p: &mut Params) -> Result<Action, RpcError> {
    let a = p.optional_str("action")?.ok_or_else(|| invalid("action", "is required"))?;
    Action::parse(a).map_err(RpcError::invalid_params)
}

/// A setting of `action.configure`: absent -> None (unchanged), null -> Some(None) (removed), else parsed.
fn setting<T>(
    p: &mut Params,
    field: &'static str,
    parse: impl FnOnce(&Value) -> Result<T, RpcError>,
) -> Result<Option<Option<T>>, RpcError> {
    match p.take_raw(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => Ok(Some(Some(parse(&v)?))),
    }
}

fn integer(field: &'static str, v: &Value) -> Result<i64, RpcError> {
    v.as_i64().ok_or_else(|| {
        RpcError::invalid_params(ValidationError::new(field, format!("must be an integer, got {}", describe(v))))
    })
}

fn number(field: &'static str, v: &Value) -> Result<f64, RpcError> {
    v.as_f64().ok_or_else(|| {
        RpcError::invalid_params(ValidationError::new(field, format!("must be a number, got {}", describe(v))))
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        other => json_kind(other).to_string(),
    }
}

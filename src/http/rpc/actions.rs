//! The `action.*` methods of `/rpc`, with which an operator steers an action's tasks: `action.configure`,
//! `action.pause`, `action.resume`, `action.list` (also the `action` subcommand of the CLI). Every change is one
//! statement; bad input gets -32602 naming the field and changes nothing.

use super::context::store_error;
use crate::domain::json_kind;
use crate::protocol::params::{invalid, Params};
use crate::protocol::RpcError;
use crate::store::{Action, ActionChange, MaxAttempts, TaskStore, TimeoutSecs, ValidationError};
use serde_json::{json, Value};

pub const PREFIX: &str = "action.";

/// The methods of this family, in the order `method not found` lists them.
pub const METHODS: &[&str] = &["action.configure", "action.pause", "action.resume", "action.list"];

/// The `action.*` methods (also the `action` subcommand of the CLI).
pub async fn call(store: &TaskStore, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
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
        other => Err(RpcError::method_not_found(other, METHODS)),
    }
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

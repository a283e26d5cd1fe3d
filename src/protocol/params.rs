//! JSON-RPC parameters, parsed in one place: named members with typed getters ([`Params`], refusing what no
//! getter took), and the task options every JSON description of a task shares ([`apply_task_option`]: submits,
//! workflow stages submitted, spawned or run on failure) with the payload and size rules cron schedules use too.

use super::codes::INVALID_PARAMS;
use super::error::RpcError;
use super::outbound::{outbound_size, META_KEY};
use crate::domain::{
    json_kind, DedupKey, MaxAttempts, NewTask, Payload, Priority, RunAt, TimeoutSecs, ValidationError,
};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// -32602 naming `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(ValidationError::new(field, message))
}

/// Named parameters of a call: typed getters that name the field, and a final check that nothing unknown was
/// passed (mini-redis's `Parse::finish`).
pub struct Params(Map<String, Value>);

impl Params {
    pub fn new(params: Option<Value>) -> Result<Params, RpcError> {
        match params {
            None => Ok(Params(Map::new())),
            Some(Value::Object(m)) => Ok(Params(m)),
            Some(Value::Array(a)) if a.is_empty() => Ok(Params(Map::new())),
            Some(_) => Err(invalid("params", "must be an object with named members")),
        }
    }

    /// The member as given (null included), None if absent.
    pub fn take_raw(&mut self, field: &'static str) -> Option<Value> {
        self.0.remove(field)
    }

    /// The member, None if absent or null.
    pub fn take(&mut self, field: &'static str) -> Option<Value> {
        self.0.remove(field).filter(|v| !v.is_null())
    }

    pub fn optional_i64(&mut self, field: &'static str) -> Result<Option<i64>, RpcError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => {
                v.as_i64().map(Some).ok_or_else(|| invalid(field, format!("must be an integer, got {}", json_kind(&v))))
            }
        }
    }

    pub fn required_i64(&mut self, field: &'static str) -> Result<i64, RpcError> {
        self.optional_i64(field)?.ok_or_else(|| invalid(field, "is required"))
    }

    pub fn required_str(&mut self, field: &'static str) -> Result<String, RpcError> {
        self.optional_str(field)?.ok_or_else(|| invalid(field, "is required"))
    }

    pub fn optional_str(&mut self, field: &'static str) -> Result<Option<String>, RpcError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(invalid(field, format!("must be a string, got {}", json_kind(&v)))),
        }
    }

    /// Fails naming every member that no getter took.
    pub fn finish(self) -> Result<(), RpcError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let names: Vec<&String> = self.0.keys().collect();
        let mut e = invalid(
            "params",
            format!(
                "unknown member{} {}",
                if names.len() == 1 { "" } else { "s" },
                names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            ),
        );
        e.data = Some(json!({"field": "params", "unknown": names}));
        Err(e)
    }
}

/// A page size (`limit`): 1 to 1000 (the store refuses more).
pub fn check_limit(limit: Option<i64>) -> Result<(), RpcError> {
    match limit {
        Some(l) if !(1..=1000).contains(&l) => Err(invalid("limit", format!("must be between 1 and 1000, got {l}"))),
        _ => Ok(()),
    }
}

/// Where a task is described, and so which options it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOptionSet {
    /// `submit:<action>`: every option; a given max_attempts is the submitter's own (the action's default no
    /// longer applies).
    Submit,
    /// A workflow stage (submitted, spawned or on_failure): no dedup_key or run_at (the workflow has them).
    Stage,
}

/// A task option that is not valid.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionError {
    /// Not of the type the option takes (`expected`: "an integer", ...).
    WrongType { field: &'static str, expected: &'static str },
    /// Of the right type, outside the option's range.
    Invalid(ValidationError),
}

impl OptionError {
    /// `invalid <field>: must be <expected>` or the range error: how a submit reports it.
    pub fn into_validation(self) -> ValidationError {
        match self {
            OptionError::WrongType { field, expected } => ValidationError::new(field, format!("must be {expected}")),
            OptionError::Invalid(e) => e,
        }
    }

    /// `<field> must be <expected>` or the range error: how a stage reports it, after its label.
    pub fn stage_message(&self) -> String {
        match self {
            OptionError::WrongType { field, expected } => format!("{field} must be {expected}"),
            OptionError::Invalid(e) => e.to_string(),
        }
    }
}

const DELAY: &str = "a number of seconds between 0 and 31536000";

/// Applies the task option `key` to `task`, one rule per option for every place that describes a task in JSON.
/// None: `key` is no option `set` allows (the caller's own member, or an unknown one).
pub fn apply_task_option(
    task: &mut NewTask,
    set: TaskOptionSet,
    key: &str,
    v: &Value,
) -> Option<Result<(), OptionError>> {
    let allowed = match key {
        "priority" | "max_attempts" | "timeout_secs" | "delay_secs" => true,
        "dedup_key" | "run_at" => set == TaskOptionSet::Submit,
        _ => false,
    };
    allowed.then(|| apply(task, set, key, v))
}

fn apply(task: &mut NewTask, set: TaskOptionSet, key: &str, v: &Value) -> Result<(), OptionError> {
    let wrong = |field, expected| OptionError::WrongType { field, expected };
    let int = |field: &'static str| v.as_i64().ok_or(wrong(field, "an integer"));
    match key {
        "priority" => task.priority = Priority::parse(int("priority")?).map_err(OptionError::Invalid)?,
        "max_attempts" => {
            let n = MaxAttempts::parse(int("max_attempts")?).map_err(OptionError::Invalid)?;
            match set {
                TaskOptionSet::Submit => *task = task.clone().with_max_attempts(n),
                TaskOptionSet::Stage => task.max_attempts = n,
            }
        }
        "timeout_secs" => {
            let secs = v.as_f64().ok_or(wrong("timeout_secs", "a number of seconds"))?;
            task.timeout = Some(TimeoutSecs::parse("timeout_secs", secs).map_err(OptionError::Invalid)?);
        }
        "delay_secs" => {
            let d = v
                .as_f64()
                .filter(|d| d.is_finite() && *d >= 0.0 && *d <= 365.0 * 86400.0)
                .ok_or(wrong("delay_secs", DELAY))?;
            task.run_at = if d > 0.0 { RunAt::After(Duration::from_secs_f64(d)) } else { RunAt::Now };
        }
        "dedup_key" => {
            let s = v.as_str().ok_or(wrong("dedup_key", "a string"))?;
            task.dedup_key = Some(DedupKey::parse(s).map_err(OptionError::Invalid)?);
        }
        "run_at" => {
            let s = v.as_str().ok_or(wrong("run_at", "an RFC 3339 string"))?;
            let at = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
                OptionError::Invalid(ValidationError::new("run_at", format!("must be an RFC 3339 time: {e}")))
            })?;
            task.run_at = RunAt::At(at.with_timezone(&chrono::Utc));
        }
        other => unreachable!("{other} is no task option"),
    }
    Ok(())
}

/// `_meta` is reserved in payloads: the outbound message carries the task's metadata there.
pub fn check_payload(payload: &Payload) -> Result<(), ValidationError> {
    if payload.as_map().contains_key(META_KEY) {
        return Err(ValidationError::new("payload", format!("{META_KEY} is a reserved key")));
    }
    Ok(())
}

/// A task whose outbound message could exceed `transport.max_message_bytes` (no queue could carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub size: usize,
    pub limit: usize,
}

impl TooLarge {
    /// "its task message would be N bytes, over the limit of M bytes (transport.max_message_bytes)".
    pub fn detail(&self) -> String {
        format!(
            "its task message would be {} bytes, over the limit of {} bytes (transport.max_message_bytes)",
            self.size, self.limit
        )
    }

    /// -32602 on `payload`, with the size and the limit.
    pub fn to_rpc(self) -> RpcError {
        RpcError {
            code: INVALID_PARAMS,
            message: format!("payload too large: {}", self.detail()),
            data: Some(json!({"field": "payload", "size": self.size, "limit": self.limit})),
        }
    }
}

/// Checks that `task`'s largest outbound message fits in `limit` bytes.
pub fn check_size(task: &NewTask, limit: usize) -> Result<(), TooLarge> {
    let size = outbound_size(task);
    if size > limit {
        return Err(TooLarge { size, limit });
    }
    Ok(())
}

//! The domain: what a task is, independent of storage, transport and configuration. Each newtype can only hold
//! a valid value, so a `NewTask` that exists can be written; bad input is refused here with an error that names
//! the field. It imports nothing else from the crate: configuration, store, protocol and actors all stand on it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Bad input: names the field and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// The name of a registered handler: 1 to 128 characters, no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Action(String);

impl Action {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        if s.is_empty() {
            return Err(ValidationError::new("action", "must not be empty"));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(ValidationError::new("action", format!("must be at most {} characters", Self::MAX_LEN)));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new("action", "must not contain whitespace or control characters"));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's parameters: always a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload(Map<String, Value>);

impl Payload {
    pub fn parse(v: Value) -> Result<Self, ValidationError> {
        if has_nul(&v) {
            // Postgres jsonb cannot store U+0000; refusing it here keeps one bad task from failing a whole batch.
            return Err(ValidationError::new("payload", "must not contain the character U+0000"));
        }
        match v {
            Value::Object(m) => Ok(Self(m)),
            other => Err(ValidationError::new("payload", format!("must be a JSON object, got {}", json_kind(&other)))),
        }
    }

    pub fn empty() -> Self {
        Self(Map::new())
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Higher runs first. -100 ..= 100, default 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Priority(i16);

impl Priority {
    pub const MIN: i64 = -100;
    pub const MAX: i64 = 100;

    pub fn parse(v: i64) -> Result<Self, ValidationError> {
        if !(Self::MIN..=Self::MAX).contains(&v) {
            return Err(ValidationError::new(
                "priority",
                format!("must be between {} and {}, got {v}", Self::MIN, Self::MAX),
            ));
        }
        Ok(Self(v as i16))
    }

    pub fn get(self) -> i16 {
        self.0
    }
}

/// How many times a task may run before it ends CRITICAL_ERROR. 1 ..= 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MaxAttempts(i32);

impl MaxAttempts {
    pub const DEFAULT: i32 = 10;
    pub const MAX: i64 = 1000;

    pub fn parse(v: i64) -> Result<Self, ValidationError> {
        if !(1..=Self::MAX).contains(&v) {
            return Err(ValidationError::new("max_attempts", format!("must be between 1 and {}, got {v}", Self::MAX)));
        }
        Ok(Self(v as i32))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl Default for MaxAttempts {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

/// Makes a submission idempotent: one task per (action, dedup key). 1 ..= 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DedupKey(String);

impl DedupKey {
    pub fn parse(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        if s.is_empty() || s.chars().count() > 256 || s.contains('\0') {
            return Err(ValidationError::new("dedup_key", "must be 1 to 256 characters, without U+0000"));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When a new task may first run. A delay is added to the database clock at insert time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RunAt {
    #[default]
    Now,
    At(DateTime<Utc>),
    After(Duration),
}

/// A validated task submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub action: Action,
    pub payload: Payload,
    pub dedup_key: Option<DedupKey>,
    pub priority: Priority,
    pub max_attempts: MaxAttempts,
    pub run_at: RunAt,
}

impl NewTask {
    pub fn new(action: Action, payload: Payload) -> Self {
        Self {
            action,
            payload,
            dedup_key: None,
            priority: Priority::default(),
            max_attempts: MaxAttempts::default(),
            run_at: RunAt::Now,
        }
    }
}

/// Result of one submission: the task's id and whether this call created it (false: a duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub id: i64,
    pub created: bool,
}

/// Every state a task can be in; the transitions are in docs/ARCHITECTURE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// A workflow stage whose parents have not all succeeded: not acquirable, not finished.
    Waiting,
    Scheduled,
    Acquired,
    Success,
    Error,
    CriticalError,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Waiting,
        TaskState::Scheduled,
        TaskState::Acquired,
        TaskState::Success,
        TaskState::Error,
        TaskState::CriticalError,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "WAITING",
            TaskState::Scheduled => "SCHEDULED",
            TaskState::Acquired => "ACQUIRED",
            TaskState::Success => "SUCCESS",
            TaskState::Error => "ERROR",
            TaskState::CriticalError => "CRITICAL_ERROR",
            TaskState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ValidationError::new("state", format!("unknown state {s:?}")))
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Success | TaskState::CriticalError | TaskState::Cancelled)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task handed to a worker: one (id, attempt) pair is one execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcquiredTask {
    pub id: i64,
    pub action: String,
    pub payload: Value,
    pub attempt: i32,
    pub priority: i16,
    pub created_at: DateTime<Utc>,
    /// How long the task waited between becoming due and being acquired (database clock).
    pub wait_seconds: f64,
}

/// What a worker reported for one (id, attempt).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub id: i64,
    pub attempt: i32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success(Value),
    Failure(Value),
}

/// A result that changed its task's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub id: i64,
    pub attempt: i32,
    pub state: TaskState,
    /// created_at -> now on the database clock.
    pub age_seconds: f64,
}

/// What `complete_many` did with each result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub applied: Vec<Applied>,
    /// Results whose (id, attempt) was no longer ACQUIRED: late, duplicate or for a rescued attempt.
    pub stale: Vec<(i64, i32)>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: i64,
    pub action: String,
    pub payload: Value,
    pub dedup_key: String,
    pub state: TaskState,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub acquired_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The workflow this task is a stage of (filled by `TaskStore::get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<i64>,
    /// Its stage name in that workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// Filter and page for `list`: keyset pagination on id (pass the last id seen as `after_id`).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<TaskState>,
    pub action: Option<Action>,
    pub after_id: Option<i64>,
    pub limit: Option<i64>,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// SCHEDULED or ERROR: now CANCELLED.
    Cancelled,
    /// ACQUIRED: it runs on, but a failure will not be retried.
    CancelRequested,
    /// Already finished (SUCCESS, CRITICAL_ERROR or CANCELLED): nothing changed.
    AlreadyFinished,
    NotFound,
}

/// Exponential backoff with jitter: `min(base * 2^(attempt-1), max) * (1 ± jitter)`. Evaluated in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_seconds: f64,
    pub max_seconds: f64,
    /// 0.0 ..= 1.0: the delay is spread uniformly over [d * (1 - jitter), d * (1 + jitter)].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base_seconds: 1.0, max_seconds: 300.0, jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay before jitter for a failed attempt (1-based).
    pub fn nominal_seconds(&self, attempt: i32) -> f64 {
        let exp = (attempt.max(1) - 1).min(62) as i32;
        (self.base_seconds * 2f64.powi(exp)).min(self.max_seconds)
    }
}

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

/// How long one run of a task may take, in seconds, measured from its handler's start: more than 0, at most a
/// week (604800).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct TimeoutSecs(f64);

impl TimeoutSecs {
    pub const MAX: f64 = 604_800.0;

    pub fn parse(field: &'static str, v: f64) -> Result<Self, ValidationError> {
        if !(v.is_finite() && v > 0.0 && v <= Self::MAX) {
            return Err(ValidationError::new(
                field,
                format!("must be a number of seconds above 0 and at most {}, got {v}", Self::MAX),
            ));
        }
        Ok(Self(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A validated task submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub action: Action,
    pub payload: Payload,
    pub dedup_key: Option<DedupKey>,
    pub priority: Priority,
    pub max_attempts: MaxAttempts,
    /// False while `max_attempts` is only the configured default: the action's own max_attempts
    /// (`action.configure`) then takes its place. Set by [`NewTask::with_max_attempts`].
    pub max_attempts_explicit: bool,
    pub run_at: RunAt,
    /// This task's own timeout; None: its action's (`action.configure`), if any, read when each attempt starts.
    pub timeout: Option<TimeoutSecs>,
}

impl NewTask {
    pub fn new(action: Action, payload: Payload) -> Self {
        Self {
            action,
            payload,
            dedup_key: None,
            priority: Priority::default(),
            max_attempts: MaxAttempts::default(),
            max_attempts_explicit: false,
            run_at: RunAt::Now,
            timeout: None,
        }
    }

    /// Sets max_attempts as the submitter's own choice (the action's default no longer applies).
    pub fn with_max_attempts(mut self, n: MaxAttempts) -> Self {
        self.max_attempts = n;
        self.max_attempts_explicit = true;
        self
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
    /// The attempt's timeout (the task's, else its action's): its handler is dropped this long after it started.
    pub timeout_secs: Option<f64>,
    /// Acquisition time + timeout on the database clock: when the attempt must end at the latest if it starts at
    /// once (for workers in other languages; the pool measures `timeout_secs` from the handler's start).
    pub deadline: Option<DateTime<Utc>>,
}

/// What one acquire call returned: the tasks, and the actions whose limits held back due tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acquisition {
    pub tasks: Vec<AcquiredTask>,
    pub throttled: Vec<Throttled>,
    /// Actions whose settings row the acquire statement cannot compute with (written by hand): not acquired.
    pub faults: Vec<ActionFault>,
}

/// An action whose settings row holds a value outside what the acquire statement's arithmetic carries (a row
/// written by hand, or stored before the range was enforced): its tasks wait, every other action's are acquired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionFault {
    pub action: String,
    /// The column at fault (`rate_per_sec`, `tokens`, `tokens_at`, ...).
    pub setting: String,
}

/// An action whose pause, max_concurrency or rate_per_sec held back due tasks in an acquire call.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttled {
    pub action: String,
    /// When its rate limit has its next token (seconds); 0 when a running task must end first (or it is paused).
    pub retry_after_secs: f64,
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
    /// ACQUIRED: now CANCELLED; its worker is told to drop the handler, and a late result is stale.
    CancelledRunning,
    /// Already finished (SUCCESS, CRITICAL_ERROR or CANCELLED): nothing changed.
    AlreadyFinished,
    NotFound,
}

/// Which tasks a bulk `task.cancel` / `task.retry` applies to: every task of `action` (if given) in `state` (if
/// given; else every state the operation applies to).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub action: Option<Action>,
    pub state: Option<TaskState>,
}

/// Per-action settings (`action.configure`, `action.pause`): limits decided inside the acquire statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionSettings {
    pub action: String,
    /// At most this many tasks of the action ACQUIRED at once, across every process.
    pub max_concurrency: Option<i32>,
    /// At most this many acquisitions per second, across every process (token bucket of 100 ms capacity).
    pub rate_per_sec: Option<f64>,
    /// Timeout of a run of its tasks that have none of their own.
    pub timeout_secs: Option<f64>,
    /// max_attempts of its tasks submitted without one.
    pub max_attempts: Option<i32>,
    /// Not acquired while paused; running tasks finish.
    pub paused: bool,
}

/// A change to an action's settings: None leaves a setting as it is, Some(None) removes it, Some(Some(v)) sets it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionChange {
    pub max_concurrency: Option<Option<i32>>,
    pub rate_per_sec: Option<Option<f64>>,
    pub timeout_secs: Option<Option<TimeoutSecs>>,
    pub max_attempts: Option<Option<MaxAttempts>>,
}

impl ActionChange {
    pub const MAX_CONCURRENCY: i64 = 1_000_000;
    pub const MAX_RATE: f64 = 1_000_000.0;
    /// One task per 11.6 days. Below it the acquire statement's arithmetic fails (rate / 10 underflows at 5e-324,
    /// 1 / rate overflows below 1e-308); the table refuses it too (migration 2026-12-04-210000_acquire_guard).
    pub const MIN_RATE: f64 = 0.000_001;

    pub fn max_concurrency(v: i64) -> Result<i32, ValidationError> {
        if !(1..=Self::MAX_CONCURRENCY).contains(&v) {
            return Err(ValidationError::new(
                "max_concurrency",
                format!("must be an integer between 1 and {}, got {v}", Self::MAX_CONCURRENCY),
            ));
        }
        Ok(v as i32)
    }

    pub fn rate_per_sec(v: f64) -> Result<f64, ValidationError> {
        if !(v.is_finite() && (Self::MIN_RATE..=Self::MAX_RATE).contains(&v)) {
            return Err(ValidationError::new(
                "rate_per_sec",
                format!("must be a number between {} and {}, got {v}", Self::MIN_RATE, Self::MAX_RATE),
            ));
        }
        Ok(v)
    }
}

/// An action's settings and its tasks by state (`action.list`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionStatus {
    #[serde(flatten)]
    pub settings: ActionSettings,
    /// Every state, zero if none.
    pub counts: std::collections::BTreeMap<&'static str, i64>,
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
        let exp = (attempt.max(1) - 1).min(62);
        (self.base_seconds * 2f64.powi(exp)).min(self.max_seconds)
    }
}

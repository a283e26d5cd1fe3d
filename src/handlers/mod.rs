//! Task handlers: user actions registered by name. A worker looks up the action of each task here.
//! Built in: `export` (the original's example), `noop`, and the demo/test handlers `sleep` and `fail`.

mod export;
mod known;

pub use export::ExportHandler;
pub use known::{ActionsSettings, KnownActions};

use crate::db::DbPool;
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a handler sees besides its payload.
#[derive(Clone)]
pub struct HandlerContext {
    pub task_id: i64,
    pub attempt: i32,
    /// The scheduler's database pool, for handlers that work on the same database (like `export`).
    pub db: DbPool,
    /// A workflow stage's parents' results by stage name (empty outside workflows): `_meta.parents` of the task.
    /// Return [`crate::workflow::spawn_result`] to spawn child stages.
    pub parents: Map<String, Value>,
    /// An on_failure stage's report of the stage that failed: `{"stage", "task_id", "state", "error"}`.
    pub failed: Option<Value>,
}

impl HandlerContext {
    /// A context for task `task_id`'s attempt `attempt`, outside workflows.
    pub fn new(task_id: i64, attempt: i32, db: DbPool) -> Self {
        Self { task_id, attempt, db, parents: Map::new(), failed: None }
    }

    /// Takes the workflow metadata (`_meta`) out of a payload into this context.
    pub fn take_meta(&mut self, payload: &mut Value) {
        let Some(Value::Object(mut meta)) = payload.as_object_mut().and_then(|p| p.remove(crate::protocol::META_KEY))
        else {
            return;
        };
        if let Some(Value::Object(parents)) = meta.remove("parents") {
            self.parents = parents;
        }
        self.failed = meta.remove("failed");
    }
}

/// A failed run: recorded as the task's error and retried with backoff until max_attempts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct HandlerError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { code: crate::protocol::HANDLER_ERROR, message: message.into(), data: None }
    }

    pub fn with_code(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn to_value(&self) -> Value {
        let mut v = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            v["data"] = d.clone();
        }
        v
    }
}

/// A user action. Handlers must be idempotent: a task may run more than once (at-least-once delivery).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, ctx: &HandlerContext, payload: &Value) -> Result<Value, HandlerError>;
}

/// Handlers by action name.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl HandlerRegistry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in handlers: export, noop, sleep, fail.
    pub fn builtin() -> Self {
        Self::empty().with("export", ExportHandler).with("noop", Noop).with("sleep", Sleep).with("fail", Fail)
    }

    pub fn with(mut self, action: &str, handler: impl Handler) -> Self {
        self.handlers.insert(action.to_owned(), Arc::new(handler));
        self
    }

    pub fn get(&self, action: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(action).cloned()
    }

    pub fn actions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.handlers.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Does nothing and succeeds: for benchmarks and smoke tests.
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn handle(&self, _: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        Ok(json!({"result": "success"}))
    }
}

/// Sleeps `payload.ms` milliseconds (default 100, at most 600000), then succeeds: a slow handler for demos and tests.
pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn handle(&self, _: &HandlerContext, payload: &Value) -> Result<Value, HandlerError> {
        let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(100).min(600_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({"slept_ms": ms}))
    }
}

/// Always fails with `payload.code` / `payload.message`: shows retries, backoff and CRITICAL_ERROR.
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn handle(&self, _: &HandlerContext, payload: &Value) -> Result<Value, HandlerError> {
        let code = payload.get("code").and_then(Value::as_i64).unwrap_or(-1234);
        let message = payload.get("message").and_then(Value::as_str).unwrap_or("something bad happened");
        Err(HandlerError::with_code(code, message))
    }
}

//! The JSON-RPC 2.0 dispatcher of `POST /rpc`: single and batch requests, notifications, and the methods
//! `submit:<action>`, `task.get`, `task.list`, `task.cancel`, `task.retry`, `stats`, `workflow.submit`,
//! `workflow.get`, `workflow.list`, `workflow.cancel` and `schedule.*` (in `schedules.rs`); the `action.*` methods
//! and the bulk forms of `task.cancel` / `task.retry` are in `levers.rs`.

use super::levers;
use crate::actors::commit_stage::{GroupCommitter, ItemError};
use crate::actors::persister::{SubmitCommit, WorkflowCommit, WORKFLOW_SUBMIT};
use crate::metrics::metrics;
use crate::protocol::{self, RpcError, INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, SUBMIT_PREFIX};
use crate::store::{
    Action, CancelOutcome, ListFilter, MaxAttempts, NewTask, StoreError, Task, TaskState, TaskStore, ValidationError,
    WorkflowFilter,
};
use crate::workflow::{self, WorkflowState};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// No task has that id.
pub const TASK_NOT_FOUND: i64 = -32004;
/// `task.retry` of a task that is not CRITICAL_ERROR or CANCELLED.
pub const TASK_NOT_RETRYABLE: i64 = -32005;
/// No workflow has that id.
pub const WORKFLOW_NOT_FOUND: i64 = -32006;
/// Missing or wrong bearer token (HTTP 401).
pub const UNAUTHORIZED: i64 = -32001;
/// No token configured and the client is not on loopback (HTTP 403).
pub const FORBIDDEN: i64 = -32003;
/// Most elements one batch request may have.
pub const MAX_BATCH_LEN: usize = 10_000;

/// Elements of one batch handled at the same time at most.
pub const BATCH_CONCURRENCY: usize = 256;

/// Every error code this endpoint can answer with (for labelling metrics up front).
pub const ERROR_CODES: &[i64] = &[
    PARSE_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    protocol::INVALID_PARAMS,
    INTERNAL_ERROR,
    UNAUTHORIZED,
    FORBIDDEN,
    TASK_NOT_FOUND,
    TASK_NOT_RETRYABLE,
    WORKFLOW_NOT_FOUND,
    super::schedules::SCHEDULE_NOT_FOUND,
];

/// What the dispatcher needs.
pub struct RpcContext {
    pub store: TaskStore,
    /// Group commit of submissions (the commit stage the Persister uses too).
    pub submits: GroupCommitter<SubmitCommit>,
    /// Group commit of `workflow.submit`.
    pub workflows: GroupCommitter<WorkflowCommit>,
    pub default_max_attempts: MaxAttempts,
    /// `transport.max_message_bytes`: a submission whose task message would be larger is refused.
    pub max_message_bytes: usize,
    /// The actions `submit:*` and `schedule.create` accept (-32601 for any other).
    pub known_actions: crate::handlers::KnownActions,
}

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

async fn call(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    match method {
        "task.get" => {
            let mut p = Params::new(params)?;
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.get(id).await.map_err(store_error)? {
                Some(t) => Ok(task_json(&t)),
                None => Err(not_found(id)),
            }
        }
        "task.list" => {
            let mut p = Params::new(params)?;
            let state =
                p.optional_str("state")?.map(|s| TaskState::parse(&s)).transpose().map_err(RpcError::invalid_params)?;
            let action = p.optional_str("action")?.map(Action::parse).transpose().map_err(RpcError::invalid_params)?;
            let after_id = p.optional_i64("after_id")?;
            let limit = p.optional_i64("limit")?;
            p.finish()?;
            if let Some(l) = limit {
                if !(1..=1000).contains(&l) {
                    return Err(invalid("limit", format!("must be between 1 and 1000, got {l}")));
                }
            }
            let filter = ListFilter { state, action, after_id, limit };
            let tasks = ctx.store.list(&filter).await.map_err(store_error)?;
            let next = tasks.last().map(|t| json!(t.id)).unwrap_or(Value::Null);
            Ok(json!({
                "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
                "next_after_id": next,
            }))
        }
        "task.cancel" => {
            let mut p = Params::new(params)?;
            let id = p.optional_i64("id")?;
            let filter = levers::task_filter(&mut p)?;
            p.finish()?;
            let id = match (id, filter) {
                (Some(id), None) => id,
                (None, Some(filter)) => return levers::cancel_matching(&ctx.store, &filter).await,
                (Some(_), Some(_)) => {
                    return Err(invalid("params", "give either id or a filter (action, state), not both"))
                }
                (None, None) => return Err(invalid("id", "is required (or a filter: action, state)")),
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
            let mut p = Params::new(params)?;
            let id = p.optional_i64("id")?;
            let filter = levers::task_filter(&mut p)?;
            let extra = match p.optional_i64("extra_attempts")? {
                None => ctx.default_max_attempts,
                Some(n) => MaxAttempts::parse(n).map_err(|e| invalid("extra_attempts", e.message))?,
            };
            p.finish()?;
            let id = match (id, filter) {
                (Some(id), None) => id,
                (None, Some(filter)) => return levers::retry_matching(&ctx.store, &filter, extra).await,
                (Some(_), Some(_)) => {
                    return Err(invalid("params", "give either id or a filter (action, state), not both"))
                }
                (None, None) => return Err(invalid("id", "is required (or a filter: action, state)")),
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
            Params::new(params)?.finish()?;
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
        WORKFLOW_SUBMIT => {
            let wf = workflow::parse_submit(params, ctx.default_max_attempts, ctx.max_message_bytes)?;
            for stage in wf.stages.iter().chain(&wf.on_failure) {
                ctx.known_actions.check(&stage.task.action, "http")?;
            }
            match ctx.workflows.commit(vec![wf]).await.pop() {
                Some(Ok(s)) => Ok(s.to_json()),
                Some(Err(ItemError::Refused(why))) => {
                    Err(RpcError::new(protocol::INVALID_PARAMS, format!("refused by the database: {why}")))
                }
                other => {
                    tracing::error!(outcome = ?other.map(|o| o.map(|_| ())), "workflow submit failed");
                    Err(RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable"))
                }
            }
        }
        "workflow.get" => {
            let mut p = Params::new(params)?;
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.get_workflow(id).await.map_err(store_error)? {
                Some(w) => Ok(serde_json::to_value(&w).unwrap_or(Value::Null)),
                None => Err(workflow_not_found(id)),
            }
        }
        "workflow.list" => {
            let mut p = Params::new(params)?;
            let state = match p.optional_str("state")? {
                None => None,
                Some(s) => Some(WorkflowState::parse(&s).ok_or_else(|| {
                    invalid("state", format!("unknown workflow state {s:?} (RUNNING, SUCCESS, FAILED or CANCELLED)"))
                })?),
            };
            let after_id = p.optional_i64("after_id")?;
            let limit = p.optional_i64("limit")?;
            p.finish()?;
            if let Some(l) = limit {
                if !(1..=1000).contains(&l) {
                    return Err(invalid("limit", format!("must be between 1 and 1000, got {l}")));
                }
            }
            let list = ctx
                .store
                .list_workflows(&WorkflowFilter { state, after_id, limit })
                .await
                .map_err(store_error)?;
            let next = list.last().map(|w| json!(w.id)).unwrap_or(Value::Null);
            Ok(json!({"workflows": list, "next_after_id": next}))
        }
        "workflow.cancel" => {
            let mut p = Params::new(params)?;
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.cancel_workflow(id).await.map_err(store_error)? {
                Some(state) => Ok(json!({"state": state})),
                None => Err(workflow_not_found(id)),
            }
        }
        m if m.starts_with(SUBMIT_PREFIX) => {
            let action = protocol::submit_action(m)?;
            ctx.known_actions.check(&action, "http")?;
            let task = protocol::submit_task(action, params, ctx.default_max_attempts, ctx.max_message_bytes)?;
            check_storable(&task)?;
            let s = match ctx.submits.commit(vec![task]).await.pop() {
                Some(Ok(s)) => s,
                Some(Err(ItemError::Refused(why))) => {
                    return Err(RpcError::new(protocol::INVALID_PARAMS, format!("refused by the database: {why}")))
                }
                other => {
                    tracing::error!(outcome = ?other.map(|o| o.map(|_| ())), "submit failed");
                    return Err(RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable"));
                }
            };
            Ok(json!({"id": s.id, "created": s.created}))
        }
        m if m.starts_with(super::schedules::PREFIX) => super::schedules::call(ctx, m, params).await,
        m if m.starts_with("action.") => levers::call_action(&ctx.store, m, params).await,
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!(
                "method not found: {other:?} (expected submit:<action>, task.get, task.list, task.cancel, task.retry, stats, workflow.submit, workflow.get, workflow.list, workflow.cancel, schedule.create, schedule.list, schedule.delete, schedule.pause, schedule.resume, action.configure, action.pause, action.resume or action.list)"
            ),
        )),
    }
}

/// A task as the API shows it.
fn task_json(t: &Task) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn not_found(id: i64) -> RpcError {
    RpcError { code: TASK_NOT_FOUND, message: "task not found".into(), data: Some(json!({"id": id})) }
}

fn workflow_not_found(id: i64) -> RpcError {
    RpcError { code: WORKFLOW_NOT_FOUND, message: "workflow not found".into(), data: Some(json!({"id": id})) }
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(ValidationError::new(field, message))
}

pub(super) fn store_error(e: StoreError) -> RpcError {
    match e {
        StoreError::Invalid(v) => RpcError::invalid_params(v),
        other => {
            tracing::error!(error = %other, "task store operation failed");
            RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable")
        }
    }
}

/// PostgreSQL text and jsonb cannot hold U+0000: refuse it here, naming the field, instead of failing the
/// statement (and, through group commit, everyone else's submissions with it).
fn check_storable(t: &NewTask) -> Result<(), RpcError> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if t.payload.as_map().iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(invalid("payload", "must not contain the character U+0000"));
    }
    if t.dedup_key.as_ref().is_some_and(|k| k.as_str().contains('\0')) {
        return Err(invalid("dedup_key", "must not contain the character U+0000"));
    }
    Ok(())
}

/// Named parameters of a `task.*` or `stats` call: typed getters that name the field, and a final check that
/// nothing unknown was passed.
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
    pub(super) fn take_raw(&mut self, field: &'static str) -> Option<Value> {
        self.0.remove(field)
    }

    /// The member, None if absent or null.
    pub(super) fn take(&mut self, field: &'static str) -> Option<Value> {
        self.0.remove(field).filter(|v| !v.is_null())
    }

    pub(super) fn optional_i64(&mut self, field: &'static str) -> Result<Option<i64>, RpcError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(field, format!("must be an integer, got {}", crate::domain::json_kind(&v)))),
        }
    }

    pub(super) fn required_i64(&mut self, field: &'static str) -> Result<i64, RpcError> {
        self.optional_i64(field)?.ok_or_else(|| invalid(field, "is required"))
    }

    pub(super) fn required_str(&mut self, field: &'static str) -> Result<String, RpcError> {
        self.optional_str(field)?.ok_or_else(|| invalid(field, "is required"))
    }

    pub(super) fn optional_str(&mut self, field: &'static str) -> Result<Option<String>, RpcError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(invalid(field, format!("must be a string, got {}", crate::domain::json_kind(&v)))),
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

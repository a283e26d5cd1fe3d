//! JSON-RPC 2.0, the one protocol on every queue and over HTTP.
//!
//! - inbound (submit): `{"jsonrpc":"2.0","method":"submit:export","params":{"objectID":23}}`. `params` is the
//!   payload, or, to pass options, `{"payload":{...},"priority":5,"dedup_key":"k","run_at":"<RFC 3339>",
//!   "delay_secs":30,"max_attempts":3,"timeout_secs":60}` (the structured form is recognised by its `payload` member).
//! - outbound (task): `{"jsonrpc":"2.0","method":"export","params":{"objectID":23,"_meta":{"attempt":1}},"id":42}`
//!   where the id is the task id; `_meta` is reserved in payloads. A task with a timeout also has
//!   `"timeout_secs":60` (one run's limit, from its start) and `"deadline":"<RFC 3339>"` (acquisition + timeout,
//!   database clock) in `_meta`. A workflow stage's `_meta` also carries
//!   `parents`: its parents' results by stage name (`{"fetch": <result>, ...}`; a spawning parent's `result` member,
//!   and each child it spawned as `"<parent>/<child>"`), and an on_failure stage's `failed`: `{"stage", "task_id",
//!   "state", "error"}` of the stage that failed.
//! - workflows: `{"jsonrpc":"2.0","method":"workflow.submit","params":{"name":"etl","stages":[...]}}` on the inbound
//!   queue too (see `crate::workflow`). A stage's handler may spawn children by returning
//!   `{"result": <its result>, "spawn": [{"name","action","payload"?,"priority"?,"max_attempts"?,"delay_secs"?}]}`.
//! - results: `{"jsonrpc":"2.0","result":{"result":<handler output>,"attempt":1},"id":42}` or
//!   `{"jsonrpc":"2.0","error":{"code":-1234,"message":"...","attempt":1,"data":...},"id":42}`.

use crate::domain::{
    Action, DedupKey, MaxAttempts, NewTask, Outcome, Payload, Priority, RunAt, TaskResult, TimeoutSecs, ValidationError,
};
use serde_json::{json, Map, Value};
use std::time::Duration;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// A handler failed without its own code.
pub const HANDLER_ERROR: i64 = -32000;
/// A handler ran past its task's timeout_secs and was dropped (the message starts with "timeout").
pub const TIMEOUT_ERROR: i64 = -32010;
/// Recorded as the error of a task cancelled while running (`task.cancel`).
pub const CANCELLED_ERROR: i64 = -32011;
/// A task message or result would exceed `transport.max_message_bytes` (a workflow stage whose parents' results
/// pile up, a handler returning too much): the attempt fails with this code instead of looping on the transport.
pub const TOO_LARGE_ERROR: i64 = -32014;

/// The failure recorded for a message of `size` bytes over `limit` (`what`: "task message" or "result").
pub fn too_large(what: &str, size: usize, limit: usize) -> Value {
    json!({
        "code": TOO_LARGE_ERROR,
        "message": format!("too large: the {what} would be {size} bytes, over the limit of {limit} bytes (transport.max_message_bytes)"),
        "data": {"size": size, "limit": limit},
    })
}

/// Reserved payload key carrying task metadata on the outbound queue.
pub const META_KEY: &str = "_meta";
pub const SUBMIT_PREFIX: &str = "submit:";

/// A JSON-RPC error object; `id` is the request's id where it could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn invalid_params(e: ValidationError) -> Self {
        Self { code: INVALID_PARAMS, message: e.to_string(), data: Some(json!({"field": e.field})) }
    }

    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        // A more specific reason carried in `data.reason` (e.g. an unknown action, which is also -32601).
        if self.data.as_ref().and_then(|d| d.get("reason")).and_then(Value::as_str) == Some("unknown_action") {
            return "unknown_action";
        }
        match self.code {
            PARSE_ERROR => "parse_error",
            INVALID_REQUEST => "invalid_request",
            METHOD_NOT_FOUND => "method_not_found",
            INVALID_PARAMS => "invalid_params",
            INTERNAL_ERROR => "internal_error",
            _ => "other",
        }
    }

    pub fn to_value(&self) -> Value {
        let mut o = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            o["data"] = d.clone();
        }
        o
    }
}

/// A request or notification (no `id`) after the envelope was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Option<Value>,
    /// None: a notification. Some(Value::Null) is a request with a null id.
    pub id: Option<Value>,
}

/// Checks a JSON-RPC 2.0 request envelope. The error carries what can be known of the id.
pub fn parse_request(v: Value) -> Result<Request, (RpcError, Value)> {
    let Value::Object(mut o) = v else {
        return Err((RpcError::new(INVALID_REQUEST, "invalid request: not a JSON object"), Value::Null));
    };
    let id = o.remove("id");
    let id_for_err = match &id {
        Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
        _ => Value::Null,
    };
    let bad = |m: &str| Err((RpcError::new(INVALID_REQUEST, format!("invalid request: {m}")), id_for_err.clone()));
    if !matches!(&id, None | Some(Value::Null | Value::Number(_) | Value::String(_))) {
        return bad("id must be a string, a number or null");
    }
    if o.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return bad("jsonrpc must be \"2.0\"");
    }
    let method = match o.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return bad("method must be a non-empty string"),
    };
    let params = o.remove("params");
    if !matches!(params, None | Some(Value::Object(_) | Value::Array(_))) {
        return bad("params must be an object or an array");
    }
    Ok(Request { method, params, id })
}

/// Parses a message body: size limit, then JSON.
pub fn parse_body(body: &str, max_bytes: usize) -> Result<Value, RpcError> {
    if body.len() > max_bytes {
        return Err(RpcError::new(
            INVALID_REQUEST,
            format!("message of {} bytes exceeds the limit of {max_bytes}", body.len()),
        ));
    }
    serde_json::from_str(body).map_err(|e| RpcError::new(PARSE_ERROR, format!("parse error: {e}")))
}

/// The action of a `submit:<action>` method.
pub fn submit_action(method: &str) -> Result<Action, RpcError> {
    let Some(action) = method.strip_prefix(SUBMIT_PREFIX) else {
        return Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("method not found: {method:?} (expected submit:<action>)"),
        ));
    };
    Action::parse(action).map_err(|e| RpcError::new(METHOD_NOT_FOUND, format!("method not found: {e}")))
}

/// Builds a task from a submit's params (the payload, or the structured form with options). `max_message_bytes`
/// is `transport.max_message_bytes`: a task whose outbound message could exceed it is refused here, the one place
/// submissions (queue and HTTP) are checked, since no queue could ever carry it to a worker.
pub fn submit_task(
    action: Action,
    params: Option<Value>,
    default_max_attempts: MaxAttempts,
    max_message_bytes: usize,
) -> Result<NewTask, RpcError> {
    let params = match params {
        None => Value::Object(Map::new()),
        Some(p) => p,
    };
    let inv = RpcError::invalid_params;
    let Value::Object(mut obj) = params else {
        return Err(inv(ValidationError::new("params", "must be an object (the payload)")));
    };
    let structured = matches!(obj.get("payload"), Some(Value::Object(_)));
    let mut task = if structured {
        let payload = Payload::parse(obj.remove("payload").unwrap()).map_err(inv)?;
        let mut t = NewTask::new(action, payload);
        t.max_attempts = default_max_attempts;
        for (k, v) in obj {
            match k.as_str() {
                "priority" => t.priority = Priority::parse(int_field("priority", &v)?).map_err(inv)?,
                "max_attempts" => {
                    t = t.with_max_attempts(MaxAttempts::parse(int_field("max_attempts", &v)?).map_err(inv)?)
                }
                "timeout_secs" => {
                    let secs =
                        v.as_f64().ok_or_else(|| inv(ValidationError::new("timeout_secs", "must be a number")))?;
                    t.timeout = Some(TimeoutSecs::parse("timeout_secs", secs).map_err(inv)?);
                }
                "dedup_key" => {
                    let s = v.as_str().ok_or_else(|| inv(ValidationError::new("dedup_key", "must be a string")))?;
                    t.dedup_key = Some(DedupKey::parse(s).map_err(inv)?);
                }
                "run_at" => {
                    let s =
                        v.as_str().ok_or_else(|| inv(ValidationError::new("run_at", "must be an RFC 3339 string")))?;
                    let at = chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|e| inv(ValidationError::new("run_at", format!("must be an RFC 3339 time: {e}"))))?;
                    t.run_at = RunAt::At(at.with_timezone(&chrono::Utc));
                }
                "delay_secs" => {
                    let d = v.as_f64().filter(|d| d.is_finite() && *d >= 0.0 && *d <= 365.0 * 86400.0).ok_or_else(
                        || {
                            inv(ValidationError::new(
                                "delay_secs",
                                "must be a number of seconds between 0 and 31536000",
                            ))
                        },
                    )?;
                    t.run_at = RunAt::After(Duration::from_secs_f64(d));
                }
                other => {
                    return Err(inv(ValidationError::new(
                        "params",
                        format!("unknown member {other:?} next to payload"),
                    )));
                }
            }
        }
        t
    } else {
        let mut t = NewTask::new(action, Payload::parse(Value::Object(obj)).map_err(inv)?);
        t.max_attempts = default_max_attempts;
        t
    };
    if task.payload.as_map().contains_key(META_KEY) {
        return Err(inv(ValidationError::new("payload", format!("{META_KEY} is a reserved key"))));
    }
    if task.run_at == RunAt::After(Duration::ZERO) {
        task.run_at = RunAt::Now;
    }
    let outbound = outbound_size(&task);
    if outbound > max_message_bytes {
        return Err(RpcError {
            code: INVALID_PARAMS,
            message: format!(
                "payload too large: its task message would be {outbound} bytes, over the limit of \
                 {max_message_bytes} bytes (transport.max_message_bytes)"
            ),
            data: Some(json!({"field": "payload", "size": outbound, "limit": max_message_bytes})),
        });
    }
    Ok(task)
}

/// The largest outbound message `task` can become: its [`TaskRequest::to_body`] with the widest id and attempt
/// (the envelope, `_meta` and the id included).
pub fn outbound_size(task: &NewTask) -> usize {
    TaskRequest {
        id: i64::MIN,
        attempt: i32::MAX,
        action: task.action.as_str().to_owned(),
        payload: task.payload.clone().into_value(),
        // The widest _meta: a timeout (the task's, or one its action may get later) and a deadline.
        timeout_secs: Some(f64::MIN_POSITIVE),
        deadline: Some(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    }
    .to_body()
    .len()
}

fn int_field(field: &'static str, v: &Value) -> Result<i64, RpcError> {
    v.as_i64().ok_or_else(|| RpcError::invalid_params(ValidationError::new(field, "must be an integer")))
}

/// An inbound message body -> a task to persist.
pub fn parse_submit(body: &str, max_bytes: usize, default_max_attempts: MaxAttempts) -> Result<NewTask, RpcError> {
    let v = parse_body(body, max_bytes)?;
    let req = parse_request(v).map_err(|(e, _)| e)?;
    let action = submit_action(&req.method)?;
    submit_task(action, req.params, default_max_attempts, max_bytes)
}

/// An inbound message body -> its submissions: one, or each entry of a JSON-RPC batch on its own (an entry's
/// JSON comes with it, so a bad entry can be dead-lettered alone). A body that is not JSON, or an empty batch, is
/// one bad submission.
pub fn parse_submissions(
    body: &str,
    max_bytes: usize,
    default_max_attempts: MaxAttempts,
) -> Vec<(Option<String>, Result<NewTask, RpcError>)> {
    parse_batch(body, max_bytes, |v| {
        let req = parse_request(v).map_err(|(e, _)| e)?;
        submit_task(submit_action(&req.method)?, req.params, default_max_attempts, max_bytes)
    })
}

/// Entries one queue message (a JSON-RPC batch) may hold; `transport.tasks_per_message` packs at most 100.
pub const MAX_MESSAGE_ENTRIES: usize = 1000;

/// A message that is one JSON-RPC object or a batch (an array of them) -> each entry parsed by `one`, with the
/// entry's own JSON for a batch entry (dead-lettered on its own when it is bad), None for a whole message.
pub fn parse_batch<T>(
    body: &str,
    max_bytes: usize,
    one: impl Fn(Value) -> Result<T, RpcError>,
) -> Vec<(Option<String>, Result<T, RpcError>)> {
    match parse_body(body, max_bytes) {
        Err(e) => vec![(None, Err(e))],
        Ok(Value::Array(entries)) if entries.is_empty() => {
            vec![(None, Err(RpcError::new(INVALID_REQUEST, "invalid request: empty batch")))]
        }
        // Bounds the work one message may ask for (each entry may be a workflow of many stages): dead-lettered whole.
        Ok(Value::Array(entries)) if entries.len() > MAX_MESSAGE_ENTRIES => vec![(
            None,
            Err(RpcError::new(
                INVALID_REQUEST,
                format!(
                    "invalid request: a queue message may hold at most {MAX_MESSAGE_ENTRIES} entries, got {}",
                    entries.len()
                ),
            )),
        )],
        Ok(Value::Array(entries)) => entries.into_iter().map(|e| (Some(e.to_string()), one(e))).collect(),
        Ok(v) => vec![(None, one(v))],
    }
}

/// Packs JSON-RPC bodies into messages of at most `per_message` entries and `max_bytes` bytes: a single entry
/// stays as it is, several become a batch (an array). Returns each message with the indexes of its bodies. With
/// `per_message` 1 every body is its own message, as JSON-RPC clients without batch support expect.
pub fn pack(bodies: &[String], per_message: usize, max_bytes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut size = 1; // "["
    let flush = |group: &mut Vec<usize>, out: &mut Vec<(String, Vec<usize>)>| match group.len() {
        0 => {}
        1 => out.push((bodies[group[0]].clone(), std::mem::take(group))),
        _ => {
            let joined = group.iter().map(|&i| bodies[i].as_str()).collect::<Vec<_>>().join(",");
            out.push((format!("[{joined}]"), std::mem::take(group)));
        }
    };
    for (i, b) in bodies.iter().enumerate() {
        if !group.is_empty() && (group.len() >= per_message.max(1) || size + b.len() + 1 > max_bytes) {
            flush(&mut group, &mut out);
            size = 1;
        }
        group.push(i);
        size += b.len() + 1;
    }
    flush(&mut group, &mut out);
    out
}

/// A submit notification, as a client sends it.
pub fn submit_message(action: &str, payload: &Value) -> String {
    json!({"jsonrpc": "2.0", "method": format!("{SUBMIT_PREFIX}{action}"), "params": payload}).to_string()
}

/// A task as it travels on the outbound queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub id: i64,
    pub attempt: i32,
    pub action: String,
    pub payload: Value,
    /// This run's limit (seconds from the handler's start); the pool drops the handler past it.
    pub timeout_secs: Option<f64>,
    /// Acquisition + timeout on the database clock (information for workers in other languages).
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

impl TaskRequest {
    pub fn to_body(&self) -> String {
        let mut params = match &self.payload {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        // A workflow stage's payload carries `_meta.parents` (or `failed`): the attempt and the timeout join them.
        let mut meta = match params.remove(META_KEY) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        meta.insert("attempt".into(), json!(self.attempt));
        if let Some(t) = self.timeout_secs {
            meta.insert("timeout_secs".into(), json!(t));
        }
        if let Some(d) = self.deadline {
            meta.insert("deadline".into(), json!(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        }
        params.insert(META_KEY.into(), Value::Object(meta));
        json!({"jsonrpc": "2.0", "method": self.action, "params": params, "id": self.id}).to_string()
    }

    pub fn parse(body: &str, max_bytes: usize) -> Result<TaskRequest, RpcError> {
        TaskRequest::from_value(parse_body(body, max_bytes)?)
    }

    /// An outbound message: one task, or several packed as a JSON-RPC batch (`transport.tasks_per_message`).
    pub fn parse_many(body: &str, max_bytes: usize) -> Vec<(Option<String>, Result<TaskRequest, RpcError>)> {
        parse_batch(body, max_bytes, TaskRequest::from_value)
    }

    pub fn from_value(v: Value) -> Result<TaskRequest, RpcError> {
        let req = parse_request(v).map_err(|(e, _)| e)?;
        let id = req
            .id
            .as_ref()
            .and_then(Value::as_i64)
            .ok_or_else(|| RpcError::new(INVALID_REQUEST, "task id must be an integer"))?;
        let Some(Value::Object(mut params)) = req.params else {
            return Err(RpcError::new(INVALID_PARAMS, "params must be an object"));
        };
        let mut meta = match params.remove(META_KEY) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let attempt = meta
            .remove("attempt")
            .and_then(|a| a.as_i64())
            .filter(|a| *a >= 1 && *a <= i32::MAX as i64)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "params._meta.attempt must be a positive integer"))?;
        let timeout_secs =
            match meta.remove("timeout_secs") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().filter(|t| t.is_finite() && *t > 0.0).ok_or_else(|| {
                    RpcError::new(INVALID_PARAMS, "params._meta.timeout_secs must be a positive number")
                })?),
            };
        let deadline = match meta.remove("deadline") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .ok_or_else(|| RpcError::new(INVALID_PARAMS, "params._meta.deadline must be an RFC 3339 time"))?,
            ),
        };
        // What else `_meta` holds (a workflow stage's parents) stays in the payload for the worker to hand over.
        if !meta.is_empty() {
            params.insert(META_KEY.into(), Value::Object(meta));
        }
        Ok(TaskRequest {
            id,
            attempt: attempt as i32,
            action: req.method,
            payload: Value::Object(params),
            timeout_secs,
            deadline,
        })
    }
}

/// A worker's answer for one (task id, attempt).
pub fn result_body(r: &TaskResult) -> String {
    match &r.outcome {
        Outcome::Success(v) => {
            json!({"jsonrpc": "2.0", "result": {"result": v, "attempt": r.attempt}, "id": r.id})
        }
        Outcome::Failure(e) => {
            let mut err = match e {
                Value::Object(m) => m.clone(),
                other => {
                    let mut m = Map::new();
                    m.insert("message".into(), Value::String(other.to_string()));
                    m
                }
            };
            err.entry("code").or_insert(json!(HANDLER_ERROR));
            err.entry("message").or_insert(json!("handler error"));
            err.insert("attempt".into(), json!(r.attempt));
            json!({"jsonrpc": "2.0", "error": err, "id": r.id})
        }
    }
    .to_string()
}

/// A results-queue body -> the result to record. Success stores the handler output; failure the error object.
pub fn parse_result(body: &str, max_bytes: usize) -> Result<TaskResult, RpcError> {
    result_from_value(parse_body(body, max_bytes)?)
}

/// A results message: one result, or several packed as a JSON-RPC batch response.
pub fn parse_results(body: &str, max_bytes: usize) -> Vec<(Option<String>, Result<TaskResult, RpcError>)> {
    parse_batch(body, max_bytes, result_from_value)
}

fn result_from_value(v: Value) -> Result<TaskResult, RpcError> {
    let Value::Object(mut o) = v else {
        return Err(RpcError::new(INVALID_REQUEST, "a result must be a JSON object"));
    };
    if o.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let id = o
        .get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| RpcError::new(INVALID_REQUEST, "id must be the integer task id"))?;
    let attempt_of = |v: &Value| {
        v.get("attempt")
            .and_then(Value::as_i64)
            .filter(|a| *a >= 1 && *a <= i32::MAX as i64)
            .map(|a| a as i32)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "attempt must be a positive integer"))
    };
    match (o.remove("result"), o.remove("error")) {
        (Some(res), None) => {
            let attempt = attempt_of(&res)?;
            let output = res.get("result").cloned().unwrap_or(Value::Null);
            Ok(TaskResult { id, attempt, outcome: Outcome::Success(output) })
        }
        (None, Some(err)) => {
            let attempt = attempt_of(&err)?;
            if !err.get("code").is_some_and(Value::is_i64) || !err.get("message").is_some_and(Value::is_string) {
                return Err(RpcError::new(INVALID_PARAMS, "error must have an integer code and a string message"));
            }
            Ok(TaskResult { id, attempt, outcome: Outcome::Failure(err) })
        }
        _ => Err(RpcError::new(INVALID_REQUEST, "a result must have exactly one of result and error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_groups_by_count_and_size_and_keeps_single_entries_plain() {
        let bodies: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
        let one = pack(&bodies, 1, 1024);
        assert_eq!(one.len(), 5);
        assert_eq!(one[0], (bodies[0].clone(), vec![0]));
        let packed = pack(&bodies, 2, 1024);
        assert_eq!(packed.iter().map(|(_, ix)| ix.clone()).collect::<Vec<_>>(), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(packed[0].0, r#"[{"n":0},{"n":1}]"#);
        assert_eq!(packed[2].0, bodies[4], "a lone entry is not wrapped");
        // 8 bytes per body: "[" + 3 bodies and commas is 27, over 24.
        let by_size = pack(&bodies, 10, 24);
        assert!(by_size.iter().all(|(m, _)| m.len() <= 24), "{by_size:?}");
        assert_eq!(by_size.iter().map(|(_, ix)| ix.len()).sum::<usize>(), 5);
        let v: Value = serde_json::from_str(&packed[1].0).unwrap();
        assert_eq!(v, json!([{"n": 2}, {"n": 3}]));
    }

    #[test]
    fn packed_requests_and_results_parse_entry_by_entry() {
        let reqs: Vec<String> = (1..=3)
            .map(|id| {
                TaskRequest {
                    id,
                    attempt: 1,
                    action: "noop".into(),
                    payload: json!({}),
                    timeout_secs: None,
                    deadline: None,
                }
                .to_body()
            })
            .collect();
        let mut bodies = reqs.clone();
        bodies.push(r#"{"jsonrpc":"2.0","method":"noop","params":{},"id":"x"}"#.into());
        let (msg, _) = pack(&bodies, 10, 10_000).remove(0);
        let parsed = TaskRequest::parse_many(&msg, 10_000);
        assert_eq!(parsed.iter().filter(|(_, r)| r.is_ok()).count(), 3);
        let entry: Value = serde_json::from_str(parsed[3].0.as_deref().unwrap()).unwrap();
        assert!(parsed[3].1.is_err(), "{parsed:?}");
        assert_eq!(entry, serde_json::from_str::<Value>(&bodies[3]).unwrap(), "the bad entry's own JSON");
        assert_eq!(TaskRequest::parse_many(&reqs[0], 10_000).len(), 1);
        let results: Vec<String> = (1..=2)
            .map(|id| result_body(&TaskResult { id, attempt: 1, outcome: Outcome::Success(json!(id)) }))
            .collect();
        let (msg, _) = pack(&results, 10, 10_000).remove(0);
        let parsed = parse_results(&msg, 10_000);
        assert_eq!(parsed.iter().map(|(_, r)| r.as_ref().unwrap().id).collect::<Vec<_>>(), vec![1, 2]);
    }

    fn d() -> MaxAttempts {
        MaxAttempts::default()
    }

    #[test]
    fn submit_in_the_original_form() {
        let t =
            parse_submit(r#"{"jsonrpc":"2.0","method":"submit:export","params":{"objectID":23}}"#, 1024, d()).unwrap();
        assert_eq!(t.action.as_str(), "export");
        assert_eq!(t.payload.clone().into_value(), json!({"objectID": 23}));
        assert_eq!(t.max_attempts, d());
    }

    #[test]
    fn submit_with_options() {
        let body = r#"{"jsonrpc":"2.0","method":"submit:export","params":{"payload":{"objectID":1},"priority":7,"dedup_key":"x","delay_secs":5,"max_attempts":3,"timeout_secs":2.5}}"#;
        let t = parse_submit(body, 1024, d()).unwrap();
        assert_eq!(t.priority.get(), 7);
        assert_eq!(t.max_attempts.get(), 3);
        assert!(t.max_attempts_explicit);
        assert_eq!(t.timeout.map(|t| t.get()), Some(2.5));
        let plain =
            parse_submit(r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{}}}"#, 1024, d()).unwrap();
        assert!(!plain.max_attempts_explicit && plain.timeout.is_none());
        assert_eq!(t.dedup_key.unwrap().as_str(), "x");
        assert_eq!(t.run_at, RunAt::After(Duration::from_secs(5)));
    }

    #[test]
    fn bad_submits_get_the_right_code() {
        let cases = [
            ("{not json", PARSE_ERROR),
            ("[1]", INVALID_REQUEST),
            (r#"{"jsonrpc":"1.0","method":"submit:x"}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":"export","params":{}}"#, METHOD_NOT_FOUND),
            (r#"{"jsonrpc":"2.0","method":"submit:","params":{}}"#, METHOD_NOT_FOUND),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":[1]}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"priority":1000}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"priority":"high"}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"bogus":1}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"_meta":{}}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"max_attempts":-1}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"timeout_secs":0}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"timeout_secs":-1}}"#, INVALID_PARAMS),
            (r#"{"jsonrpc":"2.0","method":"submit:x","params":{"payload":{},"timeout_secs":"1"}}"#, INVALID_PARAMS),
        ];
        for (body, code) in cases {
            assert_eq!(parse_submit(body, 1024, d()).unwrap_err().code, code, "{body}");
        }
        let big = format!(r#"{{"jsonrpc":"2.0","method":"submit:x","params":{{"s":"{}"}}}}"#, "a".repeat(2000));
        assert_eq!(parse_submit(&big, 1024, d()).unwrap_err().code, INVALID_REQUEST);
    }

    #[test]
    fn a_submit_whose_task_message_would_be_too_large_is_refused_naming_the_limit() {
        // The submission fits (under 1024 bytes), its outbound message (with _meta and the id) would not.
        let limit = 1024;
        let fill = |n: usize| json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"s": "a".repeat(n)}});
        let n = (900..1024).find(|n| fill(*n).to_string().len() == limit - 5).unwrap();
        let body = fill(n).to_string();
        let e = parse_submit(&body, limit, d()).unwrap_err();
        assert_eq!(e.code, INVALID_PARAMS, "{e:?}");
        assert!(e.message.contains("1024") && e.message.contains("transport.max_message_bytes"), "{e:?}");
        // A smaller one is accepted, and its largest task message (with a timeout and a deadline) fits.
        let t = parse_submit(&fill(n - 200).to_string(), limit, d()).unwrap();
        let most = TaskRequest {
            id: i64::MIN,
            attempt: i32::MAX,
            action: "export".into(),
            payload: t.payload.into_value(),
            timeout_secs: Some(604_799.123456789),
            deadline: Some(chrono::Utc::now()),
        };
        assert!(most.to_body().len() <= limit);
    }

    #[test]
    fn task_request_round_trip_keeps_payload_and_attempt() {
        let t = TaskRequest {
            id: 42,
            attempt: 3,
            action: "export".into(),
            payload: json!({"objectID": 23}),
            timeout_secs: None,
            deadline: None,
        };
        let body = t.to_body();
        assert_eq!(TaskRequest::parse(&body, 1024).unwrap(), t);
        let deadline = chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:01.500Z").unwrap().to_utc();
        let timed = TaskRequest { timeout_secs: Some(1.5), deadline: Some(deadline), ..t.clone() };
        let body = timed.to_body();
        assert!(body.contains(r#""deadline":"2026-11-27T10:00:01.500Z""#) && body.contains(r#""timeout_secs":1.5"#));
        assert_eq!(TaskRequest::parse(&body, 1024).unwrap(), timed);
        assert!(
            TaskRequest::parse(r#"{"jsonrpc":"2.0","method":"export","params":{"objectID":1},"id":1}"#, 1024).is_err()
        );
    }

    #[test]
    fn results_round_trip() {
        let ok = TaskResult { id: 1, attempt: 2, outcome: Outcome::Success(json!({"rows": 1})) };
        assert_eq!(parse_result(&result_body(&ok), 1024).unwrap(), ok);
        let original = r#"{"jsonrpc": "2.0", "error": {"code": -1234, "message": "something bad happened", "attempt": 1}, "id": 1}"#;
        let r = parse_result(original, 1024).unwrap();
        assert_eq!(r.attempt, 1);
        assert!(matches!(r.outcome, Outcome::Failure(ref e) if e["code"] == -1234));
        let fail = TaskResult { id: 5, attempt: 1, outcome: Outcome::Failure(json!({"message": "boom"})) };
        let back = parse_result(&result_body(&fail), 1024).unwrap();
        assert!(
            matches!(back.outcome, Outcome::Failure(ref e) if e["code"] == HANDLER_ERROR && e["message"] == "boom")
        );
        for bad in [
            r#"{"jsonrpc":"2.0","result":{"result":1},"id":1}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{"attempt":1},"id":"x"}"#,
        ] {
            assert!(parse_result(bad, 1024).is_err(), "{bad}");
        }
    }
}

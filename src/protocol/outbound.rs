//! Outbound tasks: the message a worker receives (`TaskRequest`), and the largest one a task can become.

use super::codes::{INVALID_PARAMS, INVALID_REQUEST};
use super::envelope::{parse_batch, parse_body, parse_request};
use super::error::RpcError;
use crate::domain::NewTask;
use serde_json::{json, Map, Value};

/// Reserved payload key carrying task metadata on the outbound queue.
pub const META_KEY: &str = "_meta";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

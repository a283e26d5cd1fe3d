//! Inbound submissions: `submit:<action>` requests (the payload, or the structured form with options) -> tasks.

use super::codes::METHOD_NOT_FOUND;
use super::envelope::{parse_batch, parse_body, parse_request, Entry};
use super::error::RpcError;
use super::params::{apply_task_option, check_payload, check_size, TaskOptionSet, TooLarge};
use crate::domain::{Action, MaxAttempts, NewTask, Payload, ValidationError};
use serde_json::{json, Map, Value};

pub const SUBMIT_PREFIX: &str = "submit:";
/// The method that submits a workflow (over HTTP `/rpc` and on the inbound queue).
pub const WORKFLOW_SUBMIT: &str = "workflow.submit";

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
    let task = if structured {
        let payload = Payload::parse(obj.remove("payload").unwrap()).map_err(inv)?;
        let mut t = NewTask::new(action, payload);
        t.max_attempts = default_max_attempts;
        for (k, v) in obj {
            match apply_task_option(&mut t, TaskOptionSet::Submit, &k, &v) {
                Some(applied) => applied.map_err(|e| inv(e.into_validation()))?,
                None => {
                    return Err(inv(ValidationError::new("params", format!("unknown member {k:?} next to payload"))))
                }
            }
        }
        t
    } else {
        let mut t = NewTask::new(action, Payload::parse(Value::Object(obj)).map_err(inv)?);
        t.max_attempts = default_max_attempts;
        t
    };
    check_payload(&task.payload).map_err(inv)?;
    check_size(&task, max_message_bytes).map_err(TooLarge::to_rpc)?;
    Ok(task)
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

/// What one inbound entry asks for: a task, or a workflow (its params as given, for `workflow::parse_submit`:
/// the workflow layer sits above the protocol).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Task(NewTask),
    Workflow(Option<Value>),
}

/// An inbound message body -> its entries: one JSON parse, then each request (the message, or each entry of a
/// JSON-RPC batch, with its own JSON so it can be dead-lettered alone) dispatched on its method. A body that is not
/// JSON, or an empty batch, is one bad entry.
pub fn parse_inbound(body: &str, max_bytes: usize, default_max_attempts: MaxAttempts) -> Vec<Entry<Inbound>> {
    parse_batch(body, max_bytes, |v| {
        let req = parse_request(v).map_err(|(e, _)| e)?;
        if req.method == WORKFLOW_SUBMIT {
            return Ok(Inbound::Workflow(req.params));
        }
        submit_task(submit_action(&req.method)?, req.params, default_max_attempts, max_bytes).map(Inbound::Task)
    })
    .into_iter()
    .map(|(body, item)| Entry { item, body })
    .collect()
}

/// A submit notification, as a client sends it.
pub fn submit_message(action: &str, payload: &Value) -> String {
    json!({"jsonrpc": "2.0", "method": format!("{SUBMIT_PREFIX}{action}"), "params": payload}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RunAt;
    use crate::protocol::codes::*;
    use crate::protocol::outbound::TaskRequest;
    use std::time::Duration;

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
}

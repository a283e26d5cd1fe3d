//! Results: a worker's answer for one (task id, attempt), written and read.

use super::codes::{HANDLER_ERROR, INVALID_PARAMS, INVALID_REQUEST};
use super::envelope::{parse_batch, parse_body};
use super::error::RpcError;
use crate::domain::{Outcome, TaskResult};
use serde_json::{json, Map, Value};

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

//! The JSON-RPC error object, and the one constructor of the too-large failure.

use super::codes::*;
use crate::domain::ValidationError;
use serde_json::{json, Value};

/// The failure recorded for a message of `size` bytes over `limit` (`what`: "task message" or "result").
pub fn too_large(what: &str, size: usize, limit: usize) -> Value {
    json!({
        "code": TOO_LARGE_ERROR,
        "message": format!("too large: the {what} would be {size} bytes, over the limit of {limit} bytes (transport.max_message_bytes)"),
        "data": {"size": size, "limit": limit},
    })
}

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

    /// -32601 naming the methods expected instead.
    pub fn method_not_found(method: &str, expected: &[&str]) -> Self {
        let expected = match expected.split_last() {
            None => String::new(),
            Some((last, [])) => format!(" (expected {last})"),
            Some((last, rest)) => format!(" (expected {} or {last})", rest.join(", ")),
        };
        Self::new(METHOD_NOT_FOUND, format!("method not found: {method:?}{expected}"))
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

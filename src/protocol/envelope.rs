//! The JSON-RPC 2.0 envelope: a request checked, a body read within its size limit, a batch split into entries.

use super::codes::{INVALID_REQUEST, PARSE_ERROR};
use super::error::RpcError;
use serde_json::Value;

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

/// One entry of a received message: a message holds one, or several when it is a JSON-RPC batch.
pub struct Entry<T> {
    pub item: Result<T, RpcError>,
    /// The entry's own JSON, for a batch entry (dead-lettered on its own); None for a whole message.
    pub body: Option<String>,
}

impl<T> Entry<T> {
    /// The message is the entry.
    pub fn whole(item: Result<T, RpcError>) -> Vec<Entry<T>> {
        vec![Entry { item, body: None }]
    }
}

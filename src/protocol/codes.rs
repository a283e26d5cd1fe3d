//! Every JSON-RPC error code the scheduler answers with or records, in one registry.

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

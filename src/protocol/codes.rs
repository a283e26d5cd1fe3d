//! Every JSON-RPC error code the scheduler answers with or records, in one registry, so that a collision shows.
//!
//! Two namespaces: the codes `/rpc` answers with (an error response), and the codes recorded in a task's `error`
//! (what `task.get` shows). A code means one thing in each; the one overlap left, -32001 ("unauthorized" as an
//! answer, "stale" as a task's error), is pinned by the store's SQL and the HTTP tests, and is listed in
//! [`KNOWN_OVERLAPS`] until the store renumbers its stale error.

// JSON-RPC 2.0's own.
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

// The answers of `/rpc`.
/// Missing or wrong bearer token (HTTP 401).
pub const UNAUTHORIZED: i64 = -32001;
/// No token configured and the client is not on loopback (HTTP 403).
pub const FORBIDDEN: i64 = -32003;
/// No task has that id.
pub const TASK_NOT_FOUND: i64 = -32004;
/// `task.retry` of a task that is not CRITICAL_ERROR or CANCELLED.
pub const TASK_NOT_RETRYABLE: i64 = -32005;
/// No workflow has that id.
pub const WORKFLOW_NOT_FOUND: i64 = -32006;
/// No schedule has that name.
pub const SCHEDULE_NOT_FOUND: i64 = -32020;

// Recorded in a task's `error` by the store (its SQL writes the literals; `store::STALE_ERROR_CODE`,
// `store::RELEASED_ERROR_CODE`, `store::workflows::WORKFLOW_CANCELLED_CODE` name three of them).
/// Rescued: no heartbeat from its worker for longer than the stale timeout.
pub const STALE_ERROR: i64 = -32001;
/// Released: acquired, but its message could not be sent.
pub const RELEASED_ERROR: i64 = -32002;
/// A workflow stage cancelled because a parent failed (`upstream_id` names it).
pub const UPSTREAM_FAILED_ERROR: i64 = -32012;
/// A workflow stage cancelled with its workflow.
pub const WORKFLOW_CANCELLED_ERROR: i64 = -32013;
/// The export handler's object is not in `t_object`.
pub const OBJECT_NOT_FOUND_ERROR: i64 = -32030;

/// Every code `/rpc` can answer with (for labelling metrics up front).
pub const RESPONSE_CODES: &[i64] = &[
    PARSE_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    INVALID_PARAMS,
    INTERNAL_ERROR,
    UNAUTHORIZED,
    FORBIDDEN,
    TASK_NOT_FOUND,
    TASK_NOT_RETRYABLE,
    WORKFLOW_NOT_FOUND,
    SCHEDULE_NOT_FOUND,
];

/// Every code a task's recorded `error` can carry that the scheduler itself writes (handlers add their own).
pub const TASK_ERROR_CODES: &[i64] = &[
    HANDLER_ERROR,
    TIMEOUT_ERROR,
    CANCELLED_ERROR,
    TOO_LARGE_ERROR,
    METHOD_NOT_FOUND,
    STALE_ERROR,
    RELEASED_ERROR,
    UPSTREAM_FAILED_ERROR,
    WORKFLOW_CANCELLED_ERROR,
    OBJECT_NOT_FOUND_ERROR,
];

/// Codes that mean one thing as an answer and another as a task's error, until the store renumbers them.
pub const KNOWN_OVERLAPS: &[i64] = &[STALE_ERROR];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_in_each_namespace_and_overlap_only_where_known() {
        for codes in [RESPONSE_CODES, TASK_ERROR_CODES] {
            let set: HashSet<_> = codes.iter().collect();
            assert_eq!(set.len(), codes.len(), "a duplicate in {codes:?}");
        }
        // METHOD_NOT_FOUND is the same fault in both: no handler for the action.
        let overlap: Vec<i64> = RESPONSE_CODES
            .iter()
            .filter(|c| TASK_ERROR_CODES.contains(c) && **c != METHOD_NOT_FOUND)
            .copied()
            .collect();
        assert_eq!(overlap, KNOWN_OVERLAPS);
    }

    #[test]
    fn the_store_writes_the_codes_registered_here() {
        assert_eq!(crate::store::STALE_ERROR_CODE, STALE_ERROR);
        assert_eq!(crate::store::RELEASED_ERROR_CODE, RELEASED_ERROR);
        assert_eq!(crate::store::WORKFLOW_CANCELLED_CODE, WORKFLOW_CANCELLED_ERROR);
    }
}

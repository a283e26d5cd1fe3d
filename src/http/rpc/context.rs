//! What every `/rpc` method family is given: the [`RpcContext`], and the one mapping of a store error to a
//! JSON-RPC error.

use crate::group_commit::{GroupCommitter, ItemError};
use crate::protocol::{RpcError, INTERNAL_ERROR};
use crate::store::{MaxAttempts, StoreError, TaskStore};
use crate::submit::{SubmitCommit, WorkflowCommit};

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

/// Invalid input the store found is -32602 naming the field; anything else is logged and -32603.
pub fn store_error(e: StoreError) -> RpcError {
    match e {
        StoreError::Invalid(v) => RpcError::invalid_params(v),
        other => {
            tracing::error!(error = %other, "task store operation failed");
            RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable")
        }
    }
}

/// The answer to a submission whose group commit did not store it: refused data is -32602, anything else -32603.
pub fn commit_failed(outcome: Option<Result<(), ItemError>>, what: &str) -> RpcError {
    match outcome {
        Some(Err(ItemError::Refused(why))) => {
            RpcError::new(crate::protocol::INVALID_PARAMS, format!("refused by the database: {why}"))
        }
        other => {
            tracing::error!(outcome = ?other, "{what} failed");
            RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable")
        }
    }
}

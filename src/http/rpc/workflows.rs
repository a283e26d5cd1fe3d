//! The workflow methods of `/rpc`: `workflow.submit` (group-committed), `workflow.get`, `workflow.list` and
//! `workflow.cancel`.

use super::context::{commit_failed, store_error, RpcContext};
use crate::protocol::params::{check_limit, invalid, Params};
use crate::protocol::{RpcError, WORKFLOW_NOT_FOUND, WORKFLOW_SUBMIT};
use crate::store::WorkflowFilter;
use crate::workflow::{self, WorkflowState};
use serde_json::{json, Value};

/// The methods of this family, in the order `method not found` lists them.
pub const METHODS: &[&str] = &[WORKFLOW_SUBMIT, "workflow.get", "workflow.list", "workflow.cancel"];

pub async fn call(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    if method == WORKFLOW_SUBMIT {
        let wf = workflow::parse_submit(params, ctx.default_max_attempts, ctx.max_message_bytes)?;
        for stage in wf.stages.iter().chain(&wf.on_failure) {
            ctx.known_actions.check(&stage.task.action, "http")?;
        }
        return match ctx.workflows.commit(vec![wf]).await.pop() {
            Some(Ok(s)) => Ok(s.to_json()),
            other => Err(commit_failed(other.map(|o| o.map(|_| ())), "workflow submit")),
        };
    }
    let mut p = Params::new(params)?;
    match method {
        "workflow.get" => {
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.get_workflow(id).await.map_err(store_error)? {
                Some(w) => Ok(serde_json::to_value(&w).unwrap_or(Value::Null)),
                None => Err(not_found(id)),
            }
        }
        "workflow.list" => {
            let state = match p.optional_str("state")? {
                None => None,
                Some(s) => Some(WorkflowState::parse(&s).ok_or_else(|| {
                    invalid("state", format!("unknown workflow state {s:?} (RUNNING, SUCCESS, FAILED or CANCELLED)"))
                })?),
            };
            let after_id = p.optional_i64("after_id")?;
            let limit = p.optional_i64("limit")?;
            p.finish()?;
            check_limit(limit)?;
            let list =
                ctx.store.list_workflows(&WorkflowFilter { state, after_id, limit }).await.map_err(store_error)?;
            let next = list.last().map(|w| json!(w.id)).unwrap_or(Value::Null);
            Ok(json!({"workflows": list, "next_after_id": next}))
        }
        "workflow.cancel" => {
            let id = p.required_i64("id")?;
            p.finish()?;
            match ctx.store.cancel_workflow(id).await.map_err(store_error)? {
                Some(state) => Ok(json!({"state": state})),
                None => Err(not_found(id)),
            }
        }
        other => Err(RpcError::method_not_found(other, METHODS)),
    }
}

fn not_found(id: i64) -> RpcError {
    RpcError { code: WORKFLOW_NOT_FOUND, message: "workflow not found".into(), data: Some(json!({"id": id})) }
}

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

mod codes;
mod envelope;
mod error;
mod inbound;
mod outbound;
mod pack;
pub mod params;
mod results;

pub use codes::*;
pub use envelope::{parse_batch, parse_body, parse_request, Entry, Request, MAX_MESSAGE_ENTRIES};
pub use error::{too_large, RpcError};
pub use inbound::{
    parse_inbound, parse_submissions, parse_submit, submit_action, submit_message, submit_task, Inbound, SUBMIT_PREFIX,
    WORKFLOW_SUBMIT,
};
pub use outbound::{outbound_size, TaskRequest, META_KEY};
pub use pack::pack;
pub use results::{parse_result, parse_results, result_body};

//! Workflows (DAGs of stages): what a `workflow.submit` is, checked here before anything is stored (names, the
//! graph, each stage as a task), what a stage may spawn at run time, and how a workflow is shown. The state machine
//! itself is SQL (migrations/2026-11-27-190000_workflows): the stages' transitions drive it in the statements that
//! make them. See docs/ARCHITECTURE.md ("Workflows").

use crate::domain::{json_kind, Action, DedupKey, MaxAttempts, NewTask, Payload, TaskState, TimeoutSecs};
use crate::protocol::params::{apply_task_option, check_payload, check_size, TaskOptionSet};
use crate::protocol::{RpcError, INVALID_PARAMS};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// Most stages one workflow may be submitted with.
pub const MAX_STAGES: usize = 1000;
/// Most stages one result may spawn.
pub const MAX_SPAWN: usize = 1000;
/// The on_failure stage's name when the submission gives none.
pub const DEFAULT_ON_FAILURE_NAME: &str = "on_failure";

/// A workflow's state, derived in SQL from its stages' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkflowState {
    Running,
    Success,
    Failed,
    Cancelled,
}

impl WorkflowState {
    pub const ALL: [WorkflowState; 4] =
        [WorkflowState::Running, WorkflowState::Success, WorkflowState::Failed, WorkflowState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Running => "RUNNING",
            WorkflowState::Success => "SUCCESS",
            WorkflowState::Failed => "FAILED",
            WorkflowState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

/// One stage of a submission: a task, and the stages (indices into the submission) it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStage {
    pub name: String,
    pub task: NewTask,
    pub depends_on: Vec<usize>,
}

/// A validated workflow submission: stages in submission order, acyclic, names unique.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub name: String,
    pub dedup_key: Option<DedupKey>,
    pub stages: Vec<NewStage>,
    /// Runs when the workflow turns FAILED (not when it is cancelled). Its delay and depends_on are not used.
    pub on_failure: Option<NewStage>,
}

impl NewWorkflow {
    /// The on_failure stage as the database keeps it until it runs.
    pub fn on_failure_json(&self) -> Option<Value> {
        self.on_failure.as_ref().map(|s| {
            json!({
                "name": s.name,
                "action": s.task.action.as_str(),
                "payload": s.task.payload.clone().into_value(),
                "priority": s.task.priority.get(),
                "max_attempts": s.task.max_attempts.get(),
                "timeout_secs": s.task.timeout.map(TimeoutSecs::get),
            })
        })
    }
}

/// What `workflow.submit` stored: the workflow, whether this call created it, and its stages' task ids.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowSubmitted {
    pub workflow_id: i64,
    pub created: bool,
    /// (stage name, task id), in submission order (stored order for a duplicate).
    pub tasks: Vec<(String, i64)>,
}

impl WorkflowSubmitted {
    pub fn to_json(&self) -> Value {
        let tasks: Map<String, Value> = self.tasks.iter().map(|(n, id)| (n.clone(), json!(id))).collect();
        json!({"workflow_id": self.workflow_id, "created": self.created, "tasks": tasks})
    }
}

/// A stage as `workflow.get` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageView {
    pub name: String,
    pub task_id: i64,
    pub action: String,
    pub state: TaskState,
    pub depends_on: Vec<String>,
    pub attempts: i32,
    pub result: Option<Value>,
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_failure: bool,
    pub acquired_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A workflow as stored (`stages` empty in listings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    pub id: i64,
    pub name: String,
    pub dedup_key: Option<String>,
    pub state: WorkflowState,
    pub stages_total: i32,
    pub stages_succeeded: i32,
    pub stages_failed: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageView>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn bad(message: impl Into<String>) -> RpcError {
    RpcError { code: INVALID_PARAMS, message: message.into(), data: Some(json!({"field": "stages"})) }
}

fn bad_field(field: &str, message: impl Into<String>) -> RpcError {
    let message = message.into();
    RpcError {
        code: INVALID_PARAMS,
        message: format!("invalid {field}: {message}"),
        data: Some(json!({"field": field})),
    }
}

/// A stage name: 1 to 128 characters, none of them whitespace, control characters, `/` (it joins a spawning
/// stage's name to its children's) or `#` (it numbers on_failure runs).
pub fn check_stage_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '#') {
        return Err("must not contain whitespace, control characters, '/' or '#'".into());
    }
    Ok(())
}

/// Parses a stage object. `allow_depends_on`: false for spawned and on_failure stages.
fn parse_stage(
    v: &Value,
    label: &str,
    default_max_attempts: MaxAttempts,
    max_message_bytes: usize,
    allow_depends_on: bool,
    default_name: Option<&str>,
) -> Result<(NewStage, Vec<String>), RpcError> {
    let Value::Object(obj) = v else {
        return Err(bad(format!("{label}: must be an object, got {}", json_kind(v))));
    };
    let err = |m: String| bad(format!("{label}: {m}"));
    let name = match (obj.get("name"), default_name) {
        (Some(Value::String(s)), _) => s.clone(),
        (None | Some(Value::Null), Some(d)) => d.to_owned(),
        (None | Some(Value::Null), None) => return Err(err("name is required".into())),
        (Some(other), _) => return Err(err(format!("name must be a string, got {}", json_kind(other)))),
    };
    check_stage_name(&name).map_err(|m| err(format!("invalid name {name:?}: {m}")))?;
    let label = format!("{label} ({name:?})");
    let err = |m: String| bad(format!("{label}: {m}"));
    let action = match obj.get("action") {
        Some(Value::String(s)) => Action::parse(s.clone()).map_err(|e| err(e.to_string()))?,
        None => return Err(err("action is required".into())),
        Some(other) => return Err(err(format!("action must be a string, got {}", json_kind(other)))),
    };
    let payload = match obj.get("payload") {
        None | Some(Value::Null) => Payload::empty(),
        Some(p) => Payload::parse(p.clone()).map_err(|e| err(e.to_string()))?,
    };
    check_payload(&payload).map_err(|e| err(e.to_string()))?;
    let mut task = NewTask::new(action, payload);
    task.max_attempts = default_max_attempts;
    let mut depends_on = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            "name" | "action" | "payload" => {}
            "depends_on" if allow_depends_on => {
                let Value::Array(a) = v else { return Err(err("depends_on must be an array of stage names".into())) };
                for d in a {
                    let Value::String(d) = d else {
                        return Err(err("depends_on must be an array of stage names".into()));
                    };
                    depends_on.push(d.clone());
                }
            }
            other => match apply_task_option(&mut task, TaskOptionSet::Stage, other, v) {
                Some(applied) => applied.map_err(|e| err(e.stage_message()))?,
                None => return Err(err(format!("unknown member {other:?}"))),
            },
        }
    }
    check_size(&task, max_message_bytes).map_err(|e| err(format!("payload too large: {}", e.detail())))?;
    Ok((NewStage { name, task, depends_on: Vec::new() }, depends_on))
}

/// `workflow.submit` params -> a workflow to store, or -32602 naming the problem: a cycle (naming its stages), an
/// unknown stage in depends_on, duplicate names, no stages, more than [`MAX_STAGES`], an invalid stage.
pub fn parse_submit(
    params: Option<Value>,
    default_max_attempts: MaxAttempts,
    max_message_bytes: usize,
) -> Result<NewWorkflow, RpcError> {
    let Some(Value::Object(mut obj)) = params else {
        return Err(bad_field("params", "must be an object with name and stages"));
    };
    // Without a dedup key, the same submission is the same workflow (as a task's key defaults to its payload's
    // hash): a redelivered inbound message or a client's retry does not run it twice.
    let auto_key = format!("auto:{:032x}", fnv1a_128(Value::Object(obj.clone()).to_string().as_bytes()));
    let name = match obj.remove("name") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 256 && !s.contains('\0') => s,
        Some(Value::String(_)) => return Err(bad_field("name", "must be 1 to 256 characters, without U+0000")),
        None | Some(Value::Null) => return Err(bad_field("name", "is required")),
        Some(v) => return Err(bad_field("name", format!("must be a string, got {}", json_kind(&v)))),
    };
    let dedup_key = match obj.remove("dedup_key") {
        None | Some(Value::Null) => Some(DedupKey::parse(auto_key).map_err(RpcError::invalid_params)?),
        Some(Value::String(s)) => Some(DedupKey::parse(s).map_err(RpcError::invalid_params)?),
        Some(v) => return Err(bad_field("dedup_key", format!("must be a string, got {}", json_kind(&v)))),
    };
    let stages = match obj.remove("stages") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(bad("invalid stages: is required")),
        Some(v) => return Err(bad(format!("invalid stages: must be an array, got {}", json_kind(&v)))),
    };
    let on_failure = match obj.remove("on_failure") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            parse_stage(
                &v,
                "on_failure",
                default_max_attempts,
                max_message_bytes,
                false,
                Some(DEFAULT_ON_FAILURE_NAME),
            )?
            .0,
        ),
    };
    if let Some(k) = obj.keys().next() {
        return Err(bad_field("params", format!("unknown member {k:?}")));
    }
    if stages.is_empty() {
        return Err(bad("invalid stages: a workflow needs at least one stage"));
    }
    if stages.len() > MAX_STAGES {
        return Err(bad(format!("invalid stages: at most {MAX_STAGES} stages, got {}", stages.len())));
    }
    let out = resolve_stages(&stages, "stages", "stage", default_max_attempts, max_message_bytes)?;
    if let Some(f) = &on_failure {
        if out.iter().any(|s| s.name == f.name) {
            return Err(bad(format!("invalid on_failure: its name {:?} is also a stage's", f.name)));
        }
    }
    Ok(NewWorkflow { name, dedup_key, stages: out, on_failure })
}

/// A list of stage objects -> stages with their `depends_on` as indexes into the list, or -32602 naming the
/// problem (`what`: "stages" or "spawn"; `label`: how one stage is named in messages): an invalid stage, a duplicate
/// name, a dependency on a stage not in the list, a cycle (naming its stages).
fn resolve_stages(
    stages: &[Value],
    what: &str,
    label: &str,
    default_max_attempts: MaxAttempts,
    max_message_bytes: usize,
) -> Result<Vec<NewStage>, RpcError> {
    let mut parsed = Vec::with_capacity(stages.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(stages.len());
    for (i, v) in stages.iter().enumerate() {
        let (stage, deps) =
            parse_stage(v, &format!("{label} {i}"), default_max_attempts, max_message_bytes, true, None)?;
        if index.insert(stage.name.clone(), i).is_some() {
            return Err(bad(format!("invalid {what}: duplicate stage name {:?}", stage.name)));
        }
        parsed.push((stage, deps));
    }
    let mut out = Vec::with_capacity(parsed.len());
    for (mut stage, deps) in parsed {
        let mut seen = HashSet::new();
        for d in deps {
            let Some(&j) = index.get(&d) else {
                return Err(bad(format!("invalid {what}: stage {:?} depends on unknown stage {d:?}", stage.name)));
            };
            if seen.insert(j) {
                stage.depends_on.push(j);
            }
        }
        out.push(stage);
    }
    if let Some(cycle) = find_cycle(&out) {
        let names: Vec<&str> = cycle.iter().map(|&i| out[i].name.as_str()).collect();
        let mut e = bad(format!("invalid {what}: dependency cycle {}", names.join(" -> ")));
        e.data = Some(json!({"field": what, "cycle": names}));
        return Err(e);
    }
    Ok(out)
}

/// FNV-1a, 128 bits: a stable hash of the canonical submission (serde_json sorts object keys).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |h, b| (h ^ *b as u128).wrapping_mul(PRIME))
}

/// A dependency cycle, as stage indices from parent to child, its first stage repeated at the end; None if the
/// graph is acyclic. Kahn's algorithm; what it cannot order contains a cycle, found by walking parents.
pub fn find_cycle(stages: &[NewStage]) -> Option<Vec<usize>> {
    let n = stages.len();
    let mut pending: Vec<usize> = stages.iter().map(|s| s.depends_on.len()).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in stages.iter().enumerate() {
        for &p in &s.depends_on {
            children[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = ready.pop() {
        done[i] = true;
        for &c in &children[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    let start = (0..n).find(|&i| !done[i])?;
    // Every stage left has a parent left: walk parents until one repeats.
    let mut path = vec![start];
    let mut at: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let p = *stages[cur].depends_on.iter().find(|&&p| !done[p]).expect("a stage left has a parent left");
        if let Some(&k) = at.get(&p) {
            let mut cycle: Vec<usize> = path[k..].to_vec();
            cycle.reverse(); // parent -> child
            cycle.push(cycle[0]);
            return Some(cycle);
        }
        at.insert(p, path.len());
        path.push(p);
        cur = p;
    }
}

/// Checks the stages a result spawns (`{"result": ..., "spawn": [stage, ...]}`): each an object with name (unique
/// in the list), action, and optionally payload, priority, max_attempts, delay_secs, timeout_secs and depends_on
/// (siblings in the same list, without a cycle; every spawned stage also depends on the stage that spawned it). A
/// result whose `spawn` is not an array spawns nothing.
pub fn check_spawn(result: &Value, max_message_bytes: usize) -> Result<(), RpcError> {
    let Some(Value::Array(spawn)) = result.get("spawn") else { return Ok(()) };
    if spawn.len() > MAX_SPAWN {
        return Err(bad(format!("invalid spawn: at most {MAX_SPAWN} stages, got {}", spawn.len())));
    }
    resolve_stages(spawn, "spawn", "spawned stage", MaxAttempts::default(), max_message_bytes).map(|_| ()).map_err(
        |e| if e.message.starts_with("invalid spawn") { e } else { bad(format!("invalid spawn: {}", e.message)) },
    )
}

/// Fills what a spawned stage left out and the database would otherwise default on its own: `max_attempts` (the
/// configured `retry.default_max_attempts`). `result` has passed [`check_spawn`].
pub fn spawn_defaults(result: &mut Value, default_max_attempts: i64) {
    let Some(Value::Array(spawn)) = result.get_mut("spawn") else { return };
    for stage in spawn.iter_mut().filter_map(Value::as_object_mut) {
        stage.entry("max_attempts").or_insert(json!(default_max_attempts));
        // Each sibling once: the database counts them as the stage's pending parents.
        if let Some(Value::Array(deps)) = stage.get_mut("depends_on") {
            let mut seen = HashSet::new();
            deps.retain(|d| seen.insert(d.to_string()));
        }
    }
}

/// A handler's result that spawns `stages` (each `{"name", "action", "payload"?, ...}`) after `result`: the
/// stages join the workflow as children of the running stage, and its dependents wait for them too.
pub fn spawn_result(result: Value, stages: Vec<Value>) -> Value {
    json!({"result": result, "spawn": stages})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(v: Value) -> Result<NewWorkflow, RpcError> {
        parse_submit(Some(v), MaxAttempts::default(), 256 * 1024)
    }

    #[test]
    fn diamond_parses() {
        let w = submit(json!({"name": "d", "stages": [
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "noop", "depends_on": ["a"]},
            {"name": "c", "action": "noop", "depends_on": ["a"]},
            {"name": "d", "action": "noop", "depends_on": ["b", "c"], "priority": 5, "max_attempts": 2},
        ]}))
        .unwrap();
        assert_eq!(w.stages[3].depends_on, vec![1, 2]);
        assert_eq!(w.stages[3].task.priority.get(), 5);
        let w = submit(json!({"name": "t", "stages": [{"name": "a", "action": "noop", "timeout_secs": 2.5}],
            "on_failure": {"name": "f", "action": "noop", "timeout_secs": 9}}))
        .unwrap();
        assert_eq!(w.stages[0].task.timeout.map(TimeoutSecs::get), Some(2.5));
        assert_eq!(w.on_failure_json().unwrap()["timeout_secs"], json!(9.0));
    }

    #[test]
    fn bad_input_is_named() {
        let cases = [
            (json!({"name": "x", "stages": []}), "at least one stage"),
            (
                json!({"name": "x", "stages": [{"name": "a", "action": "noop", "depends_on": ["zz"]}]}),
                "unknown stage \"zz\"",
            ),
            (
                json!({"name": "x", "stages": [{"name": "a", "action": "noop"}, {"name": "a", "action": "noop"}]}),
                "duplicate stage name \"a\"",
            ),
            (json!({"name": "x", "stages": [{"name": "a", "action": ""}]}), "stage 0 (\"a\")"),
            (json!({"name": "x", "stages": [{"name": "a/b", "action": "noop"}]}), "invalid name"),
            (json!({"name": "x", "stages": [{"name": "a", "action": "noop", "timeout_secs": 0}]}), "timeout_secs"),
            (json!({"name": "x", "stages": [{"name": "a", "action": "noop", "timeout_secs": "1"}]}), "timeout_secs"),
            (json!({"stages": [{"name": "a", "action": "noop"}]}), "invalid name: is required"),
            (
                json!({"name": "x", "stages": [
                {"name": "a", "action": "noop", "depends_on": ["c"]},
                {"name": "b", "action": "noop", "depends_on": ["a"]},
                {"name": "c", "action": "noop", "depends_on": ["b"]},
                {"name": "d", "action": "noop", "depends_on": ["c"]}]}),
                "cycle",
            ),
        ];
        for (v, want) in cases {
            let e = submit(v.clone()).unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS);
            assert!(e.message.contains(want), "{v}: {}", e.message);
        }
        let many: Vec<Value> = (0..1001).map(|i| json!({"name": format!("s{i}"), "action": "noop"})).collect();
        assert!(submit(json!({"name": "x", "stages": many})).unwrap_err().message.contains("at most 1000"));
    }

    #[test]
    fn cycle_names_its_stages_only() {
        let e = submit(json!({"name": "x", "stages": [
            {"name": "root", "action": "noop"},
            {"name": "a", "action": "noop", "depends_on": ["root", "c"]},
            {"name": "b", "action": "noop", "depends_on": ["a"]},
            {"name": "c", "action": "noop", "depends_on": ["b"]},
            {"name": "tail", "action": "noop", "depends_on": ["c"]}]}))
        .unwrap_err();
        let cycle: Vec<String> = serde_json::from_value(e.data.unwrap()["cycle"].clone()).unwrap();
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        assert_eq!(cycle[0], cycle[3]);
        let set: HashSet<&str> = cycle.iter().map(String::as_str).collect();
        assert_eq!(set, HashSet::from(["a", "b", "c"]));
        let self_loop = submit(json!({"name": "x", "stages": [{"name": "a", "action": "noop", "depends_on": ["a"]}]}));
        assert!(self_loop.unwrap_err().message.contains("cycle a -> a"));
    }

    #[test]
    fn spawn_is_checked() {
        assert!(check_spawn(&json!({"result": 1}), 1024).is_ok());
        let mut r = spawn_result(
            json!(1),
            vec![
                json!({"name": "a", "action": "noop"}),
                json!({"name": "b", "action": "noop", "max_attempts": 2, "depends_on": ["a", "a"]}),
            ],
        );
        assert!(check_spawn(&r, 1024).is_ok(), "siblings may depend on each other");
        spawn_defaults(&mut r, 7);
        assert_eq!(
            (r["spawn"][0]["max_attempts"].clone(), r["spawn"][1]["max_attempts"].clone()),
            (json!(7), json!(2))
        );
        assert_eq!(r["spawn"][1]["depends_on"], json!(["a"]), "each sibling once");
        assert!(check_spawn(&spawn_result(json!(1), vec![json!({"name": "c1", "action": "noop"})]), 1024).is_ok());
        let cycle = json!({"spawn": [{"name": "x", "action": "noop", "depends_on": ["y"]},
                                     {"name": "y", "action": "noop", "depends_on": ["x"]}]});
        let e = check_spawn(&cycle, 1024).unwrap_err();
        assert!(e.message.starts_with("invalid spawn: dependency cycle"), "{}", e.message);
        for bad in [
            json!({"spawn": [{"name": "c1"}]}),
            json!({"spawn": [{"name": "c1", "action": "noop", "depends_on": ["nope"]}]}),
            json!({"spawn": [{"name": "c1", "action": "noop"}, {"name": "c1", "action": "noop"}]}),
            json!({"spawn": [1]}),
        ] {
            assert!(check_spawn(&bad, 1024).is_err(), "{bad}");
        }
    }
}

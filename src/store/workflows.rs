//! Workflows in the task store: submit (many workflows, all their stages and edges, one statement), get, list,
//! cancel, counts and the cleaner's pass. Stage transitions need nothing here: the trigger on `tasks` runs the
//! workflow state machine inside the statements that complete, rescue, release, cancel or retry a stage.

use super::{StoreError, StoreResult, TaskStore};
use crate::domain::{RunAt, TaskState, ValidationError};
use crate::workflow::{NewWorkflow, StageView, Workflow, WorkflowState, WorkflowSubmitted};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use std::collections::HashMap;

/// Error code recorded on the stages `workflow.cancel` cancelled.
pub const WORKFLOW_CANCELLED_CODE: i64 = -32013;

#[derive(QueryableByName)]
struct WorkflowRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    dedup_key: Option<String>,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Integer)]
    stages_total: i32,
    #[diesel(sql_type = Integer)]
    stages_succeeded: i32,
    #[diesel(sql_type = Integer)]
    stages_failed: i32,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<DateTime<Utc>>,
}

impl WorkflowRow {
    fn into_workflow(self) -> StoreResult<Workflow> {
        let state = WorkflowState::parse(&self.state)
            .ok_or_else(|| ValidationError::new("state", format!("unknown workflow state {:?}", self.state)))?;
        Ok(Workflow {
            id: self.id,
            name: self.name,
            dedup_key: self.dedup_key,
            state,
            stages_total: self.stages_total,
            stages_succeeded: self.stages_succeeded,
            stages_failed: self.stages_failed,
            stages: Vec::new(),
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

const WORKFLOW_COLUMNS: &str =
    "id, name, dedup_key, state, stages_total, stages_succeeded, stages_failed, created_at, finished_at";

/// Filter and page for `list_workflows`: keyset pagination on id.
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter {
    pub state: Option<WorkflowState>,
    pub after_id: Option<i64>,
    pub limit: Option<i64>,
}

impl TaskStore {
    /// Stores workflows with all their stages (WAITING, or SCHEDULED without parents) and edges, in one statement.
    /// Idempotent per dedup key: a duplicate returns the stored workflow with `created: false`. One result per
    /// input, in order.
    pub async fn submit_workflows(&self, workflows: &[NewWorkflow]) -> StoreResult<Vec<WorkflowSubmitted>> {
        if workflows.is_empty() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        let mut keys: Vec<Option<String>> = Vec::new();
        let mut on_failure: Vec<Option<Value>> = Vec::new();
        let (mut stage_wf, mut stage_names, mut actions, mut payloads) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut priorities, mut max_attempts, mut delays, mut parents) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut timeouts: Vec<Option<f64>> = Vec::new();
        let (mut edge_parent, mut edge_child) = (Vec::new(), Vec::new());
        for (w, wf) in workflows.iter().enumerate() {
            names.push(wf.name.clone());
            keys.push(wf.dedup_key.as_ref().map(|k| k.as_str().to_owned()));
            on_failure.push(wf.on_failure_json());
            let base = stage_names.len() as i32; // 0-based ordinal of this workflow's first stage
            for (i, s) in wf.stages.iter().enumerate() {
                stage_wf.push(w as i32 + 1);
                stage_names.push(s.name.clone());
                actions.push(s.task.action.as_str().to_owned());
                payloads.push(s.task.payload.clone().into_value());
                priorities.push(s.task.priority.get());
                max_attempts.push(s.task.max_attempts.get());
                delays.push(match s.task.run_at {
                    RunAt::After(d) => d.as_secs_f64(),
                    _ => 0.0,
                });
                parents.push(s.depends_on.len() as i32);
                timeouts.push(s.task.timeout.map(|t| t.get()));
                for &p in &s.depends_on {
                    edge_parent.push(base + p as i32 + 1);
                    edge_child.push(base + i as i32 + 1);
                }
            }
        }

        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Integer)]
            workflow_ord: i32,
            #[diesel(sql_type = BigInt)]
            workflow_id: i64,
            #[diesel(sql_type = Bool)]
            created: bool,
            #[diesel(sql_type = Text)]
            stage: String,
            #[diesel(sql_type = BigInt)]
            task_id: i64,
        }
        let mut round = 0;
        let rows: Vec<Row> = loop {
            let mut conn = self.conn().await?;
            let res = diesel::sql_query(
                "SELECT * FROM workflows_submit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind::<Array<Text>, _>(&names)
            .bind::<Array<Nullable<Text>>, _>(&keys)
            .bind::<Array<Nullable<Jsonb>>, _>(&on_failure)
            .bind::<Array<Integer>, _>(&stage_wf)
            .bind::<Array<Text>, _>(&stage_names)
            .bind::<Array<Text>, _>(&actions)
            .bind::<Array<Jsonb>, _>(&payloads)
            .bind::<Array<SmallInt>, _>(&priorities)
            .bind::<Array<Integer>, _>(&max_attempts)
            .bind::<Array<Double>, _>(&delays)
            .bind::<Array<Integer>, _>(&parents)
            .bind::<Array<Integer>, _>(&edge_parent)
            .bind::<Array<Integer>, _>(&edge_child)
            .bind::<Array<Nullable<Double>>, _>(&timeouts)
            .load(&mut conn)
            .await
            .map_err(StoreError::from);
            match res {
                Err(e) if e.is_retryable() && round < 5 => round += 1,
                other => break other?,
            }
        };
        let mut out: Vec<Option<WorkflowSubmitted>> = vec![None; workflows.len()];
        for r in rows {
            let slot = out
                .get_mut(r.workflow_ord as usize - 1)
                .ok_or_else(|| StoreError::Pool("workflows_submit returned an unknown ordinal".into()))?;
            slot.get_or_insert_with(|| WorkflowSubmitted {
                workflow_id: r.workflow_id,
                created: r.created,
                tasks: Vec::new(),
            })
            .tasks
            .push((r.stage, r.task_id));
        }
        out.into_iter()
            .map(|w| w.ok_or_else(|| StoreError::Pool("workflows_submit returned no stages for a workflow".into())))
            .collect()
    }

    /// A workflow with its stages (the on_failure stage last, once it ran), None if there is none.
    pub async fn get_workflow(&self, id: i64) -> StoreResult<Option<Workflow>> {
        let mut conn = self.conn().await?;
        let rows: Vec<WorkflowRow> =
            diesel::sql_query(format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1"))
                .bind::<BigInt, _>(id)
                .load(&mut conn)
                .await?;
        let Some(row) = rows.into_iter().next() else { return Ok(None) };
        let mut wf = row.into_workflow()?;

        #[derive(QueryableByName)]
        struct StageRow {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Text)]
            stage: String,
            #[diesel(sql_type = Text)]
            action: String,
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Jsonb>)]
            result: Option<Value>,
            #[diesel(sql_type = Nullable<Jsonb>)]
            error: Option<Value>,
            #[diesel(sql_type = Bool)]
            on_failure: bool,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            acquired_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            finished_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Array<Text>)]
            depends_on: Vec<String>,
        }
        let stages: Vec<StageRow> = diesel::sql_query(
            r#"
            SELECT t.id, t.stage, t.action, t.state, t.attempts, t.result, t.error,
                   COALESCE(t.stage_on_failure, false) AS on_failure, t.acquired_at, t.finished_at,
                   ARRAY(SELECT p.stage FROM workflow_edges e JOIN tasks p ON p.id = e.parent_id
                         WHERE e.child_id = t.id ORDER BY p.id) AS depends_on
            FROM tasks t WHERE t.workflow_id = $1
            ORDER BY COALESCE(t.stage_on_failure, false), t.id"#,
        )
        .bind::<BigInt, _>(id)
        .load(&mut conn)
        .await?;
        for s in stages {
            wf.stages.push(StageView {
                name: s.stage,
                task_id: s.id,
                action: s.action,
                state: TaskState::parse(&s.state)?,
                depends_on: s.depends_on,
                attempts: s.attempts,
                result: s.result,
                error: s.error,
                on_failure: s.on_failure,
                acquired_at: s.acquired_at,
                finished_at: s.finished_at,
            });
        }
        Ok(Some(wf))
    }

    /// Workflows by id (without stages), filtered by state, `limit` (default 100, at most 1000) after `after_id`.
    pub async fn list_workflows(&self, filter: &WorkflowFilter) -> StoreResult<Vec<Workflow>> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ValidationError::new("limit", "must be between 1 and 1000").into());
        }
        let mut conn = self.conn().await?;
        let rows: Vec<WorkflowRow> = diesel::sql_query(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE ($1::text IS NULL OR state = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind::<Nullable<Text>, _>(filter.state.map(|s| s.as_str()))
        .bind::<BigInt, _>(filter.after_id.unwrap_or(0))
        .bind::<BigInt, _>(limit)
        .load(&mut conn)
        .await?;
        rows.into_iter().map(WorkflowRow::into_workflow).collect()
    }

    /// Cancels every stage of workflow `id` that has not finished (ACQUIRED ones are marked, as `cancel` does); the
    /// workflow becomes CANCELLED unless it already succeeded. Returns its state after, None if there is none.
    pub async fn cancel_workflow(&self, id: i64) -> StoreResult<Option<WorkflowState>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<Text>)]
            state: Option<String>,
        }
        let mut round = 0;
        let row: Row = loop {
            let mut conn = self.conn().await?;
            let res = diesel::sql_query("SELECT workflows_cancel($1) AS state")
                .bind::<BigInt, _>(id)
                .get_result(&mut conn)
                .await
                .map_err(StoreError::from);
            match res {
                Err(e) if e.is_retryable() && round < 5 => round += 1,
                other => break other?,
            }
        };
        Ok(row.state.as_deref().and_then(WorkflowState::parse))
    }

    /// Number of workflows in each state (every state present, zero if none).
    pub async fn workflow_counts(&self) -> StoreResult<Vec<(WorkflowState, i64)>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT state, count(*) AS n FROM workflows GROUP BY state").load(&mut conn).await?;
        let by: HashMap<String, i64> = rows.into_iter().map(|r| (r.state, r.n)).collect();
        Ok(WorkflowState::ALL.into_iter().map(|s| (s, by.get(s.as_str()).copied().unwrap_or(0))).collect())
    }

    /// Deletes up to `batch` workflows in `states` that finished more than `retention_secs` ago and have no stage
    /// left unfinished, with all their stages and edges (ON DELETE CASCADE). Returns how many it deleted.
    pub async fn clean_workflows(
        &self,
        retention_secs: f64,
        states: &[WorkflowState],
        batch: i64,
    ) -> StoreResult<usize> {
        let states: Vec<&str> = states.iter().filter(|s| **s != WorkflowState::Running).map(|s| s.as_str()).collect();
        if states.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(
            r#"
            DELETE FROM workflows WHERE id IN (
                SELECT w.id FROM workflows w
                WHERE w.finished_at IS NOT NULL AND w.finished_at < now() - make_interval(secs => $1)
                  AND w.state = ANY($3::text[])
                  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.id AND t.finished_at IS NULL)
                ORDER BY w.finished_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )"#,
        )
        .bind::<Double, _>(retention_secs)
        .bind::<BigInt, _>(batch)
        .bind::<Array<Text>, _>(&states)
        .execute(&mut conn)
        .await?;
        Ok(n)
    }

    /// The workflow and stage name of task `id` (both None outside workflows).
    pub(crate) async fn stage_of(&self, id: i64) -> StoreResult<(Option<i64>, Option<String>)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<BigInt>)]
            workflow_id: Option<i64>,
            #[diesel(sql_type = Nullable<Text>)]
            stage: Option<String>,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query("SELECT workflow_id, stage FROM tasks WHERE id = $1")
            .bind::<BigInt, _>(id)
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().next().map(|r| (r.workflow_id, r.stage)).unwrap_or((None, None)))
    }
}

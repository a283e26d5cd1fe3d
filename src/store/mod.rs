//! `TaskStore`: every state transition of a task, each one SQL statement over the bb8 pool.
//!
//! Rules this module keeps (see docs/ARCHITECTURE.md):
//! - batch-first: each operation takes or returns many tasks per statement (arrays bound with `unnest`);
//! - fenced: a result applies only to the (id, attempt) that is still `ACQUIRED`;
//! - every time comes from the database clock (`now()`), never from this process.

mod actions;
mod faults;
mod workflows;

pub use workflows::{WorkflowFilter, WORKFLOW_CANCELLED_CODE};

// The store speaks in domain types; re-exported because its API takes and returns them.
pub use crate::domain::*;

mod schedules;
pub use schedules::{DueSchedule, Fire, Fired, ScheduleOverview, StoredSchedule};

use crate::db::{DbConn, DbPool};
use crate::schema::tasks;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;

/// JSON-RPC error code recorded on tasks rescued by the StaleReaper (server-defined range).
pub const STALE_ERROR_CODE: i64 = -32001;
/// JSON-RPC error code recorded on tasks released after a failed outbound send.
pub const RELEASED_ERROR_CODE: i64 = -32002;

/// A lease not renewed for this long (seconds) belongs to a dead process: its claims that were never sent are
/// released. Acquire loops renew theirs every [`LEASE_RENEW_SECS`].
pub const LEASE_EXPIRY_SECS: f64 = 5.0;
/// How often an acquire loop's lease is renewed (seconds).
pub const LEASE_RENEW_SECS: f64 = 1.0;

/// The claim an acquire loop makes: its lease, this batch's number (1, 2, ... per lease), and the last batch it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub lease: i64,
    pub batch: i64,
    pub sent_through: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
}

/// What a failed statement means for the data that was in it. The one place errors are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database refused this data (SQLSTATE class 23 — constraints — or our own validation): running it
    /// again fails again. Only this is ever dead-lettered.
    Refused,
    /// Connection lost or refused, pool exhausted, serialization failure, read-only during a failover: the
    /// data is fine, run it again later. Never dead-lettered.
    Transient,
    /// The server raised an error whose SQLSTATE diesel-async does not expose (it reports `Unknown`): a data
    /// exception (classes 22, 54) or an administrator's shutdown of the connection (57P01) look alike. The
    /// caller confirms by running the statement alone once more on a fresh connection.
    Unclear,
}

impl StoreError {
    /// Classified by what the database said (diesel-async maps SQLSTATEs to kinds, and an error without one,
    /// a dead connection, to `UnableToSendCommand`), never by our own guess of the variant.
    pub fn class(&self) -> ErrorClass {
        use diesel::result::{DatabaseErrorKind as K, Error};
        match self {
            StoreError::Invalid(_) => ErrorClass::Refused,
            StoreError::Pool(_) => ErrorClass::Transient,
            StoreError::Database(Error::DatabaseError(kind, _)) => match kind {
                K::UniqueViolation
                | K::ForeignKeyViolation
                | K::NotNullViolation
                | K::CheckViolation
                | K::RestrictViolation
                | K::ExclusionViolation => ErrorClass::Refused,
                K::UnableToSendCommand | K::ClosedConnection | K::SerializationFailure | K::ReadOnlyTransaction => {
                    ErrorClass::Transient
                }
                // A deadlock (40P01, which diesel reports without a kind): the statement may run again as it is.
                _ if self.is_retryable() => ErrorClass::Transient,
                _ => ErrorClass::Unclear,
            },
            // Our data could not be encoded for the statement.
            StoreError::Database(Error::SerializationError(_)) => ErrorClass::Refused,
            StoreError::Database(_) => ErrorClass::Transient,
        }
    }

    /// A serialization failure or deadlock: the statement may simply be run again at once.
    pub(crate) fn is_retryable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        matches!(self, StoreError::Database(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _)))
            || matches!(self, StoreError::Database(Error::DatabaseError(_, info)) if info.message().contains("deadlock"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A batched write a commit stage runs (`submit_many`, `complete_many`): items in one statement, one output
/// per item, in order. Decorators (chaos) wrap it.
#[async_trait::async_trait(?Send)]
pub trait Commit: 'static {
    type Item: Clone + 'static;
    type Output: 'static;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    async fn commit(&self, items: &[Self::Item]) -> Result<Vec<Self::Output>, StoreError>;
}

/// The Postgres task store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct TaskStore {
    pool: DbPool,
    backoff: Backoff,
    /// Keeps the pool listed in `scheduler_db_pool_connections` while any clone of this store lives.
    _reported: Option<std::sync::Arc<crate::db::ReportedPool>>,
}

impl TaskStore {
    pub fn new(pool: DbPool, backoff: Backoff) -> Self {
        Self { pool, backoff, _reported: None }
    }

    /// Reports this store's pool as `stage` in `scheduler_db_pool_connections`.
    pub fn reporting_as(mut self, stage: &str) -> Self {
        self._reported = Some(crate::db::report_pool(stage, &self.pool));
        self
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    async fn conn(&self) -> StoreResult<DbConn<'_>> {
        self.pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// Inserts new tasks as SCHEDULED. Idempotent: a duplicate (action, dedup key), in the table or earlier in the
    /// same batch, returns the existing task's id with `created: false`. One result per input, in input order.
    pub async fn submit_many(&self, tasks: &[NewTask]) -> StoreResult<Vec<Submitted>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut actions = Vec::with_capacity(tasks.len());
        let mut payloads = Vec::with_capacity(tasks.len());
        let mut keys = Vec::with_capacity(tasks.len());
        let mut priorities = Vec::with_capacity(tasks.len());
        let mut max_attempts = Vec::with_capacity(tasks.len());
        let mut run_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(tasks.len());
        let mut delays: Vec<Option<f64>> = Vec::with_capacity(tasks.len());
        let timeouts: Vec<Option<f64>> = tasks.iter().map(|t| t.timeout.map(TimeoutSecs::get)).collect();
        let explicit: Vec<bool> = tasks.iter().map(|t| t.max_attempts_explicit).collect();
        for t in tasks {
            actions.push(t.action.as_str().to_owned());
            payloads.push(t.payload.clone().into_value());
            keys.push(t.dedup_key.as_ref().map(|k| k.as_str().to_owned()));
            priorities.push(t.priority.get());
            max_attempts.push(t.max_attempts.get());
            match t.run_at {
                RunAt::Now => {
                    run_ats.push(None);
                    delays.push(None);
                }
                RunAt::At(at) => {
                    run_ats.push(Some(at));
                    delays.push(None);
                }
                RunAt::After(d) => {
                    run_ats.push(None);
                    delays.push(Some(d.as_secs_f64()));
                }
            }
        }

        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<BigInt>)]
            id: Option<i64>,
            #[diesel(sql_type = Bool)]
            created: bool,
        }

        // A concurrent submitter may insert the same key after this statement's snapshot was taken: ON CONFLICT
        // skips it, but the join cannot see it yet (id NULL). Running the statement again sees it committed.
        for round in 0.. {
            let mut conn = self.conn().await?;
            let res: Result<Vec<Row>, _> = diesel::sql_query(SUBMIT_SQL)
                .bind::<Array<Text>, _>(&actions)
                .bind::<Array<Jsonb>, _>(&payloads)
                .bind::<Array<Nullable<Text>>, _>(&keys)
                .bind::<Array<SmallInt>, _>(&priorities)
                .bind::<Array<Integer>, _>(&max_attempts)
                .bind::<Array<Nullable<Timestamptz>>, _>(&run_ats)
                .bind::<Array<Nullable<Double>>, _>(&delays)
                .bind::<Array<Nullable<Double>>, _>(&timeouts)
                .bind::<Array<Bool>, _>(&explicit)
                .load(&mut conn)
                .await;
            let rows = match res.map_err(StoreError::from) {
                Err(e) if e.is_retryable() && round < 5 => continue,
                other => other?,
            };
            if rows.iter().all(|r| r.id.is_some()) || round >= 5 {
                return rows
                    .into_iter()
                    .map(|r| {
                        r.id.map(|id| Submitted { id, created: r.created })
                            .ok_or_else(|| StoreError::Pool("submit raced with a concurrent submitter 5 times".into()))
                    })
                    .collect();
            }
        }
        unreachable!()
    }

    /// Claims up to `limit` due tasks (SCHEDULED, or ERROR whose run_at has come) by priority, then run_at, then id:
    /// sets ACQUIRED, attempts + 1, acquired_at = now. Concurrent callers never get the same task (SKIP LOCKED).
    /// Per-action limits apply (see [`TaskStore::acquire`]).
    pub async fn acquire_batch(&self, limit: i64) -> StoreResult<Vec<AcquiredTask>> {
        Ok(self.acquire(limit).await?.tasks)
    }

    /// [`TaskStore::acquire_batch`], also naming the actions whose limits (pause, max_concurrency, rate_per_sec)
    /// held back due tasks in this call, and when to look again. Limits are decided inside the one statement.
    pub async fn acquire(&self, limit: i64) -> StoreResult<Acquisition> {
        self.acquire_claimed(limit, None).await
    }

    /// [`TaskStore::acquire`] under an acquire loop's lease: the claims carry (lease, batch), and the same statement
    /// renews the lease and records the last batch the loop sent (see [`TaskStore::open_lease`]).
    pub async fn acquire_claimed(&self, limit: i64, claim: Option<Claim>) -> StoreResult<Acquisition> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<BigInt>)]
            id: Option<i64>,
            #[diesel(sql_type = Text)]
            action: String,
            #[diesel(sql_type = Nullable<Jsonb>)]
            payload: Option<Value>,
            #[diesel(sql_type = Nullable<Integer>)]
            attempt: Option<i32>,
            #[diesel(sql_type = Nullable<SmallInt>)]
            priority: Option<i16>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            created_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Double)]
            wait_seconds: f64,
            #[diesel(sql_type = Nullable<Double>)]
            timeout_secs: Option<f64>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            deadline: Option<DateTime<Utc>>,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(ACQUIRE_SQL)
            .bind::<BigInt, _>(limit.max(0))
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.lease))
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.batch))
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.sent_through))
            .load(&mut conn)
            .await?;
        let mut out = Acquisition::default();
        for r in rows {
            match (r.id, r.payload, r.attempt, r.priority, r.created_at) {
                (Some(id), Some(payload), Some(attempt), Some(priority), Some(created_at)) => {
                    out.tasks.push(AcquiredTask {
                        id,
                        action: r.action,
                        payload,
                        attempt,
                        priority,
                        created_at,
                        wait_seconds: r.wait_seconds,
                        timeout_secs: r.timeout_secs,
                        deadline: r.deadline,
                    })
                }
                // A row without a task naming a fault: this action's settings row is unusable (see faults.rs).
                (None, Some(p), ..) => out.faults.push(faults::from_row(r.action, &p)),
                // A row without a task: this action's limits held back due tasks.
                _ => out.throttled.push(Throttled { action: r.action, retry_after_secs: r.wait_seconds }),
            }
        }
        // UPDATE ... RETURNING has no order: restore the acquisition order.
        out.tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Records results. Each applies only while its task is ACQUIRED with that same attempt (fencing); the others
    /// come back as stale. Success: SUCCESS. Failure: ERROR with run_at = now + backoff, or CRITICAL_ERROR once
    /// attempts reached max_attempts, or CANCELLED if cancel was requested meanwhile.
    pub async fn complete_many(&self, results: &[TaskResult]) -> StoreResult<Completion> {
        if results.is_empty() {
            return Ok(Completion::default());
        }
        // In id order: the rows (and, for workflow stages, their children and workflows) are locked in the same
        // order by concurrent statements, which keeps them from deadlocking.
        let mut sorted: Vec<&TaskResult> = results.iter().collect();
        sorted.sort_by_key(|r| (r.id, r.attempt));
        let ids: Vec<i64> = sorted.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = sorted.iter().map(|r| r.attempt).collect();
        let oks: Vec<bool> = sorted.iter().map(|r| matches!(r.outcome, Outcome::Success(_))).collect();
        let bodies: Vec<Value> = sorted
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Success(v) | Outcome::Failure(v) => v.clone(),
            })
            .collect();

        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Integer)]
            attempt: i32,
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Double)]
            age_seconds: f64,
        }
        // Workflow stages lock their children and workflow rows in the same statement: two statements completing
        // stages of the same workflows may deadlock, and the one the database aborts simply runs again.
        let mut round = 0;
        let rows: Vec<Row> = loop {
            let mut conn = self.conn().await?;
            let res = diesel::sql_query(COMPLETE_SQL)
                .bind::<Array<BigInt>, _>(&ids)
                .bind::<Array<Integer>, _>(&attempts)
                .bind::<Array<Bool>, _>(&oks)
                .bind::<Array<Jsonb>, _>(&bodies)
                .bind::<Double, _>(self.backoff.base_seconds)
                .bind::<Double, _>(self.backoff.max_seconds)
                .bind::<Double, _>(self.backoff.jitter)
                .load(&mut conn)
                .await
                .map_err(StoreError::from);
            match res {
                Err(e) if e.is_retryable() && round < 10 => {
                    round += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(5..50))).await;
                }
                other => break other?,
            }
        };

        let mut applied_keys: HashSet<(i64, i32)> = HashSet::with_capacity(rows.len());
        let mut applied = Vec::with_capacity(rows.len());
        for r in rows {
            applied_keys.insert((r.id, r.attempt));
            applied.push(Applied {
                id: r.id,
                attempt: r.attempt,
                state: TaskState::parse(&r.state)?,
                age_seconds: r.age_seconds,
            });
        }
        // A duplicate of an applied result in the same batch is stale too: only one can apply.
        let mut stale = Vec::new();
        for r in results {
            if !applied_keys.remove(&(r.id, r.attempt)) {
                stale.push((r.id, r.attempt));
            }
        }
        Ok(Completion { applied, stale })
    }

    /// Hands acquired tasks back after their outbound send failed (or may have failed). The attempt stays
    /// consumed, so no two executions ever share an (id, attempt) fencing token even if the uncertain send did go
    /// out: ACQUIRED with that attempt becomes ERROR, due after the retry backoff, with an error that says
    /// "released"; CRITICAL_ERROR once attempts reached max_attempts (a task that can never be sent ends instead
    /// of looping); CANCELLED if cancel was requested meanwhile. A late result of the released attempt is stale.
    /// Returns how many were released.
    pub async fn release(&self, tasks: &[(i64, i32)]) -> StoreResult<usize> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = tasks.iter().map(|t| t.0).collect();
        let attempts: Vec<i32> = tasks.iter().map(|t| t.1).collect();
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(RELEASE_SQL)
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<Integer>, _>(&attempts)
            .bind::<Double, _>(self.backoff.base_seconds)
            .bind::<Double, _>(self.backoff.max_seconds)
            .bind::<Double, _>(self.backoff.jitter)
            .bind::<BigInt, _>(RELEASED_ERROR_CODE)
            .execute(&mut conn)
            .await?;
        Ok(n)
    }

    /// Opens a lease for an acquire loop: claims made under it that the loop never recorded as sent are released by
    /// the next rescue once the lease went [`LEASE_EXPIRY_SECS`] without renewal (its process died).
    /// `in_process`: the outbound queue and its workers live in the acquiring process (the in-process transport),
    /// so all of a dead lease's claims come back, started or not.
    pub async fn open_lease(&self, in_process: bool) -> StoreResult<i64> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let mut conn = self.conn().await?;
        let row: Row = diesel::sql_query(LEASE_OPEN_SQL).bind::<Bool, _>(in_process).get_result(&mut conn).await?;
        Ok(row.id)
    }

    /// Renews leases, each with the last batch its loop sent: `(lease, sent_through)` pairs, in one statement.
    pub async fn renew_leases(&self, leases: &[(i64, i64)]) -> StoreResult<()> {
        let mut leases = leases.to_vec();
        leases.sort_unstable();
        let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
        let sent: Vec<i64> = leases.iter().map(|l| l.1).collect();
        let mut conn = self.conn().await?;
        diesel::sql_query(LEASE_RENEW_SQL)
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<BigInt>, _>(&sent)
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Signs of life of running tasks, in one statement: heartbeat_at = now() for each (id, attempt) that is still
    /// ACQUIRED with that attempt (a worker marks its handlers' starts and then all its running tasks this way).
    /// Returns how many rows it refreshed.
    pub async fn heartbeat(&self, tasks: &[(i64, i32)]) -> StoreResult<usize> {
        let mut unique = tasks.to_vec();
        unique.sort_unstable();
        unique.dedup();
        Ok(unique.len() - self.heartbeat_lost(tasks).await?.len())
    }

    /// [`TaskStore::heartbeat`], returning the (id, attempt) pairs it did not refresh: no longer ACQUIRED with that
    /// attempt (cancelled, rescued, released, or already completed). Their handlers' results would be stale.
    pub async fn heartbeat_lost(&self, tasks: &[(i64, i32)]) -> StoreResult<Vec<(i64, i32)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // In id order: concurrent statements over the same rows lock them in the same order.
        let mut tasks = tasks.to_vec();
        tasks.sort_unstable();
        tasks.dedup();
        let ids: Vec<i64> = tasks.iter().map(|t| t.0).collect();
        let attempts: Vec<i32> = tasks.iter().map(|t| t.1).collect();
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Integer)]
            attempts: i32,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(HEARTBEAT_SQL)
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<Integer>, _>(&attempts)
            .load(&mut conn)
            .await?;
        let refreshed: HashSet<(i64, i32)> = rows.into_iter().map(|r| (r.id, r.attempts)).collect();
        Ok(tasks.into_iter().filter(|t| !refreshed.contains(t)).collect())
    }

    /// The current attempt's last heartbeat of task `id` (None: not started, not ACQUIRED, or no such task). The
    /// column stays out of the diesel schema (it would pass diesel's 16-column limit); tests and tools read it here.
    pub async fn heartbeat_at(&self, id: i64) -> StoreResult<Option<DateTime<Utc>>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<Timestamptz>)]
            heartbeat_at: Option<DateTime<Utc>>,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT heartbeat_at FROM tasks WHERE id = $1 AND state = 'ACQUIRED' AND heartbeat_at >= acquired_at",
        )
        .bind::<BigInt, _>(id)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().next().and_then(|r| r.heartbeat_at))
    }

    /// Rescues ACQUIRED tasks whose worker went silent, as ERROR (retried after backoff) or CRITICAL_ERROR, with an
    /// error that says "stale". The rule: a task whose handler started (it has a heartbeat for this attempt) is
    /// stale when its last heartbeat is older than `stale_timeout_secs`; a task without one is still waiting in the
    /// outbound queue (or its worker died before starting it) and is stale only `queue_timeout_secs` after it was
    /// acquired, so a backlog in the queue is not rescued and sent again. At most `batch` per call; returns the
    /// tasks rescued.
    pub async fn rescue_stale(
        &self,
        stale_timeout_secs: f64,
        queue_timeout_secs: f64,
        batch: i64,
    ) -> StoreResult<Vec<(i64, TaskState)>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Text)]
            state: String,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(RESCUE_SQL)
            .bind::<Double, _>(stale_timeout_secs)
            .bind::<BigInt, _>(batch)
            .bind::<Double, _>(self.backoff.base_seconds)
            .bind::<Double, _>(self.backoff.max_seconds)
            .bind::<Double, _>(self.backoff.jitter)
            .bind::<Double, _>(queue_timeout_secs)
            .bind::<BigInt, _>(STALE_ERROR_CODE)
            .bind::<BigInt, _>(RELEASED_ERROR_CODE)
            .bind::<Double, _>(LEASE_EXPIRY_SECS)
            .load(&mut conn)
            .await?;
        rows.into_iter().map(|r| Ok((r.id, TaskState::parse(&r.state)?))).collect()
    }

    /// Deletes up to `batch` finished tasks in `states` whose finished_at is older than `retention_secs`.
    pub async fn clean_finished(&self, retention_secs: f64, states: &[TaskState], batch: i64) -> StoreResult<usize> {
        let states: Vec<&str> = states.iter().filter(|s| s.is_finished()).map(|s| s.as_str()).collect();
        if states.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(CLEAN_SQL)
            .bind::<Array<Text>, _>(&states)
            .bind::<Double, _>(retention_secs)
            .bind::<BigInt, _>(batch)
            .execute(&mut conn)
            .await?;
        Ok(n)
    }

    pub async fn get(&self, id: i64) -> StoreResult<Option<Task>> {
        let mut conn = self.conn().await?;
        let row: Option<TaskRow> =
            tasks::table.find(id).select(TaskRow::as_select()).first(&mut conn).await.optional()?;
        drop(conn);
        let Some(mut task) = row.map(Task::try_from).transpose()? else { return Ok(None) };
        (task.workflow_id, task.stage) = self.stage_of(id).await?;
        Ok(Some(task))
    }

    pub async fn get_many(&self, ids: &[i64]) -> StoreResult<Vec<Task>> {
        let mut conn = self.conn().await?;
        let rows: Vec<TaskRow> = tasks::table
            .filter(tasks::id.eq_any(ids))
            .order(tasks::id)
            .select(TaskRow::as_select())
            .load(&mut conn)
            .await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    /// Tasks by id, filtered by state and action, `limit` (default 100, at most 1000) after `after_id`.
    pub async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ValidationError::new("limit", "must be between 1 and 1000").into());
        }
        let mut q = tasks::table.select(TaskRow::as_select()).order(tasks::id).limit(limit).into_boxed();
        if let Some(state) = filter.state {
            q = q.filter(tasks::state.eq(state.as_str()));
        }
        if let Some(action) = &filter.action {
            q = q.filter(tasks::action.eq(action.as_str().to_owned()));
        }
        if let Some(after) = filter.after_id {
            q = q.filter(tasks::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows: Vec<TaskRow> = q.load(&mut conn).await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    /// SCHEDULED, ERROR, WAITING (a workflow stage) or ACQUIRED become CANCELLED, in one statement. For an ACQUIRED
    /// task the same statement notifies `tasks_cancel` (delivered at commit) so its worker drops the handler; a
    /// result of that attempt arriving later is stale.
    pub async fn cancel(&self, id: i64) -> StoreResult<CancelOutcome> {
        Ok(self.cancel_one(id).await?.0)
    }

    /// [`TaskStore::cancel`], with the state the task was cancelled from (None if it was not cancelled).
    pub async fn cancel_one(&self, id: i64) -> StoreResult<(CancelOutcome, Option<TaskState>)> {
        let counts = self.cancel_where(Some(id), &TaskFilter::default()).await?;
        if let Some(&(from, _)) = counts.iter().find(|(_, n)| *n > 0) {
            let outcome =
                if from == TaskState::Acquired { CancelOutcome::CancelledRunning } else { CancelOutcome::Cancelled };
            return Ok((outcome, Some(from)));
        }
        Ok(match self.get(id).await? {
            None => (CancelOutcome::NotFound, None),
            Some(_) => (CancelOutcome::AlreadyFinished, None),
        })
    }

    /// Bulk cancel: every task matching `filter` (state SCHEDULED, ERROR, ACQUIRED or WAITING; all four when the
    /// filter names none) becomes CANCELLED in one statement, running ones as in [`TaskStore::cancel`]. Returns how many
    /// were cancelled, by the state they were in.
    pub async fn cancel_matching(&self, filter: &TaskFilter) -> StoreResult<Vec<(TaskState, i64)>> {
        if let Some(s) = filter.state {
            if !matches!(s, TaskState::Scheduled | TaskState::Error | TaskState::Acquired | TaskState::Waiting) {
                return Err(ValidationError::new(
                    "state",
                    "only SCHEDULED, ERROR, ACQUIRED or WAITING tasks can be cancelled",
                )
                .into());
            }
        }
        self.cancel_where(None, filter).await
    }

    async fn cancel_where(&self, id: Option<i64>, filter: &TaskFilter) -> StoreResult<Vec<(TaskState, i64)>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            before: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(CANCEL_SQL)
            .bind::<Nullable<BigInt>, _>(id)
            .bind::<Nullable<Text>, _>(filter.action.as_ref().map(|a| a.as_str().to_owned()))
            .bind::<Nullable<Text>, _>(filter.state.map(|s| s.as_str()))
            .load(&mut conn)
            .await?;
        rows.into_iter().map(|r| Ok((TaskState::parse(&r.before)?, r.n))).collect()
    }

    /// CRITICAL_ERROR or CANCELLED back to SCHEDULED with `extra_attempts` more attempts. Attempt numbers keep
    /// growing, so a late result of an earlier attempt still cannot apply. Returns false if the task was not in
    /// one of those states.
    pub async fn retry(&self, id: i64, extra_attempts: MaxAttempts) -> StoreResult<bool> {
        Ok(self.retry_where(Some(id), None, &[TaskState::CriticalError, TaskState::Cancelled], extra_attempts).await?
            == 1)
    }

    /// Bulk retry: every task of `filter.action` (if given) in `filter.state` (CRITICAL_ERROR or CANCELLED; only
    /// CRITICAL_ERROR when the filter names none) back to SCHEDULED as in [`TaskStore::retry`], in one statement.
    /// Returns how many.
    pub async fn retry_matching(&self, filter: &TaskFilter, extra_attempts: MaxAttempts) -> StoreResult<usize> {
        let state = filter.state.unwrap_or(TaskState::CriticalError);
        if !matches!(state, TaskState::CriticalError | TaskState::Cancelled) {
            return Err(ValidationError::new("state", "only CRITICAL_ERROR or CANCELLED tasks can be retried").into());
        }
        self.retry_where(None, filter.action.as_ref(), &[state], extra_attempts).await
    }

    async fn retry_where(
        &self,
        id: Option<i64>,
        action: Option<&Action>,
        states: &[TaskState],
        extra_attempts: MaxAttempts,
    ) -> StoreResult<usize> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(RETRY_SQL)
            .bind::<Nullable<BigInt>, _>(id)
            .bind::<Integer, _>(extra_attempts.get())
            .bind::<Nullable<Text>, _>(action.map(|a| a.as_str().to_owned()))
            .bind::<Array<Text>, _>(&states)
            .execute(&mut conn)
            .await?;
        Ok(n)
    }

    /// Number of tasks in each state (every state present, zero if none).
    pub async fn counts_by_state(&self) -> StoreResult<Vec<(TaskState, i64)>> {
        let rows = self.counts_by_state_and_action().await?;
        Ok(TaskState::ALL.into_iter().map(|s| (s, rows.iter().filter(|r| r.0 == s).map(|r| r.2).sum())).collect())
    }

    /// Number of tasks per (state, action).
    pub async fn counts_by_state_and_action(&self) -> StoreResult<Vec<(TaskState, String, i64)>> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, String, i64)> = tasks::table
            .group_by((tasks::state, tasks::action))
            .select((tasks::state, tasks::action, diesel::dsl::count_star()))
            .load(&mut conn)
            .await?;
        rows.into_iter().map(|(s, a, n)| Ok((TaskState::parse(&s)?, a, n))).collect()
    }

    /// The database clock, for tests and the load generator.
    pub async fn db_now(&self) -> StoreResult<DateTime<Utc>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Timestamptz)]
            now: DateTime<Utc>,
        }
        let mut conn = self.conn().await?;
        let r: Row = diesel::sql_query("SELECT now() AS now").get_result(&mut conn).await?;
        Ok(r.now)
    }
}

/// The error body a stale rescue records for a task whose handler had started (also built in SQL; kept here for
/// documentation and tests).
pub fn stale_error(timeout_secs: f64, attempt: i32) -> Value {
    json!({"code": STALE_ERROR_CODE, "message": format!("stale: no heartbeat from its worker for longer than {timeout_secs} s"), "attempt": attempt})
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = tasks, check_for_backend(diesel::pg::Pg))]
struct TaskRow {
    id: i64,
    action: String,
    payload: Value,
    dedup_key: String,
    state: String,
    priority: i16,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    acquired_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    result: Option<Value>,
    error: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> StoreResult<Task> {
        Ok(Task {
            id: r.id,
            action: r.action,
            payload: r.payload,
            dedup_key: r.dedup_key,
            state: TaskState::parse(&r.state)?,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            run_at: r.run_at,
            acquired_at: r.acquired_at,
            cancel_requested: r.cancel_requested,
            result: r.result,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            workflow_id: None,
            stage: None,
        })
    }
}

const SUBMIT_SQL: &str = include_str!("sql/submit.sql");

// $1 limit, $2 the caller's lease (NULL: none), $3 its batch number, $4 the last batch it sent. No comment in the
// file: sessions are recognised by this statement's text in pg_stat_activity.
const ACQUIRE_SQL: &str = include_str!("sql/acquire.sql");

const COMPLETE_SQL: &str = include_str!("sql/complete.sql");

const RELEASE_SQL: &str = include_str!("sql/release.sql");

const HEARTBEAT_SQL: &str = include_str!("sql/heartbeat.sql");

const RESCUE_SQL: &str = include_str!("sql/rescue.sql");

const CLEAN_SQL: &str = include_str!("sql/clean.sql");

const CANCEL_SQL: &str = include_str!("sql/cancel.sql");

const RETRY_SQL: &str = include_str!("sql/retry.sql");

const LEASE_OPEN_SQL: &str = include_str!("sql/lease_open.sql");

const LEASE_RENEW_SQL: &str = include_str!("sql/lease_renew.sql");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// max_attempts of a task submitted without one.
    pub default_max_attempts: i64,
    /// Delay after the first failed attempt (seconds); doubles each attempt.
    pub base_delay_secs: f64,
    /// Upper bound of the delay (seconds).
    pub max_delay_secs: f64,
    /// Spread of the delay, 0.0 ..= 1.0: uniform over [d * (1 - jitter), d * (1 + jitter)].
    pub jitter: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let b = Backoff::default();
        Self {
            default_max_attempts: 10,
            base_delay_secs: b.base_seconds,
            max_delay_secs: b.max_seconds,
            jitter: b.jitter,
        }
    }
}

impl RetrySettings {
    pub fn backoff(&self) -> Backoff {
        Backoff { base_seconds: self.base_delay_secs, max_seconds: self.max_delay_secs, jitter: self.jitter }
    }
}

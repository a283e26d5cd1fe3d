//! Per-action settings (`actions` table): limits and pause that the acquire statement enforces, the timeout and
//! max_attempts defaults of an action's tasks. Each change is one statement that also wakes the Acquirers
//! (`NOTIFY tasks_due`): a resumed or loosened action's queued tasks are acquired at once.

use super::{StoreResult, TaskStore};
use crate::domain::{Action, ActionChange, ActionSettings, ActionStatus, TaskState, TimeoutSecs};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Double, Integer, Jsonb, Nullable, Text};
use diesel_async::RunQueryDsl;
use serde_json::Value;

#[derive(QueryableByName)]
struct SettingsRow {
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Nullable<Integer>)]
    max_concurrency: Option<i32>,
    #[diesel(sql_type = Nullable<Double>)]
    rate_per_sec: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    timeout_secs: Option<f64>,
    #[diesel(sql_type = Nullable<Integer>)]
    max_attempts: Option<i32>,
    #[diesel(sql_type = Bool)]
    paused: bool,
}

impl From<SettingsRow> for ActionSettings {
    fn from(r: SettingsRow) -> Self {
        ActionSettings {
            action: r.action,
            max_concurrency: r.max_concurrency,
            rate_per_sec: r.rate_per_sec,
            timeout_secs: r.timeout_secs,
            max_attempts: r.max_attempts,
            paused: r.paused,
        }
    }
}

impl TaskStore {
    /// Applies `change` to `action`'s settings (creating them if needed) and returns the result. A changed rate
    /// limit starts with an empty token bucket.
    pub async fn configure_action(&self, action: &Action, change: &ActionChange) -> StoreResult<ActionSettings> {
        let mut conn = self.conn().await?;
        let row: SettingsRow = diesel::sql_query(CONFIGURE_SQL)
            .bind::<Text, _>(action.as_str())
            .bind::<Bool, _>(change.max_concurrency.is_some())
            .bind::<Nullable<Integer>, _>(change.max_concurrency.flatten())
            .bind::<Bool, _>(change.rate_per_sec.is_some())
            .bind::<Nullable<Double>, _>(change.rate_per_sec.flatten())
            .bind::<Bool, _>(change.timeout_secs.is_some())
            .bind::<Nullable<Double>, _>(change.timeout_secs.flatten().map(TimeoutSecs::get))
            .bind::<Bool, _>(change.max_attempts.is_some())
            .bind::<Nullable<Integer>, _>(change.max_attempts.flatten().map(|m| m.get()))
            .get_result(&mut conn)
            .await?;
        Ok(row.into())
    }

    /// Pauses (`true`) or resumes an action: a paused action's due tasks are not acquired; its running tasks finish.
    pub async fn set_action_paused(&self, action: &Action, paused: bool) -> StoreResult<ActionSettings> {
        let mut conn = self.conn().await?;
        let row: SettingsRow = diesel::sql_query(PAUSE_SQL)
            .bind::<Text, _>(action.as_str())
            .bind::<Bool, _>(paused)
            .get_result(&mut conn)
            .await?;
        Ok(row.into())
    }

    /// Every action that has settings or tasks (or only `action`), with its settings and its tasks by state, in
    /// one query.
    pub async fn list_actions(&self, action: Option<&Action>) -> StoreResult<Vec<ActionStatus>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(embed)]
            settings: SettingsRow,
            #[diesel(sql_type = Jsonb)]
            counts: Value,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(LIST_SQL)
            .bind::<Nullable<Text>, _>(action.map(|a| a.as_str().to_owned()))
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ActionStatus {
                settings: r.settings.into(),
                counts: TaskState::ALL
                    .into_iter()
                    .map(|s| (s.as_str(), r.counts.get(s.as_str()).and_then(Value::as_i64).unwrap_or(0)))
                    .collect(),
            })
            .collect())
    }

    /// How many actions are paused now (a gauge).
    pub async fn paused_actions(&self) -> StoreResult<i64> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await?;
        let r: Row = diesel::sql_query("SELECT count(*) AS n FROM actions WHERE paused").get_result(&mut conn).await?;
        Ok(r.n)
    }
}

// $2/$4/$6/$8: whether $3/$5/$7/$9 replaces the setting (NULL removes it).
const CONFIGURE_SQL: &str = r#"
WITH up AS (
    INSERT INTO actions AS a (action, max_concurrency, rate_per_sec, timeout_secs, max_attempts)
    VALUES ($1, $3, $5, $7, $9)
    ON CONFLICT (action) DO UPDATE SET
        max_concurrency = CASE WHEN $2 THEN EXCLUDED.max_concurrency ELSE a.max_concurrency END,
        rate_per_sec = CASE WHEN $4 THEN EXCLUDED.rate_per_sec ELSE a.rate_per_sec END,
        tokens = CASE WHEN $4 THEN 0 ELSE a.tokens END,
        tokens_at = CASE WHEN $4 THEN now() ELSE a.tokens_at END,
        timeout_secs = CASE WHEN $6 THEN EXCLUDED.timeout_secs ELSE a.timeout_secs END,
        max_attempts = CASE WHEN $8 THEN EXCLUDED.max_attempts ELSE a.max_attempts END,
        updated_at = now()
    RETURNING action, max_concurrency, rate_per_sec, timeout_secs, max_attempts, paused
)
SELECT up.* FROM up, (SELECT pg_notify('tasks_due', '')) wake
"#;

const PAUSE_SQL: &str = r#"
WITH up AS (
    INSERT INTO actions AS a (action, paused) VALUES ($1, $2)
    ON CONFLICT (action) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING action, max_concurrency, rate_per_sec, timeout_secs, max_attempts, paused
)
SELECT up.* FROM up, (SELECT pg_notify('tasks_due', '')) wake
"#;

const LIST_SQL: &str = r#"
WITH counts AS (
    SELECT action, state, count(*) AS n FROM tasks
    WHERE $1::text IS NULL OR action = $1
    GROUP BY action, state
),
names AS (
    SELECT action FROM actions WHERE $1::text IS NULL OR action = $1
    UNION
    SELECT action FROM counts
)
SELECT names.action, a.max_concurrency, a.rate_per_sec, a.timeout_secs, a.max_attempts,
       COALESCE(a.paused, false) AS paused,
       COALESCE((SELECT jsonb_object_agg(c.state, c.n) FROM counts c WHERE c.action = names.action), '{}') AS counts
FROM names LEFT JOIN actions a ON a.action = names.action
ORDER BY names.action
"#;

//! The `schedules` table (migrations/…_schedules): cron schedules as stored, and the statements of the
//! CronScheduler and of the `schedule.*` methods. Each is one statement; firing a batch of due schedules enqueues
//! their ticks and moves them on in the same statement (`schedules_fire`), fenced on each schedule's next_run_at.

use super::{StoreResult, TaskStore};
use crate::schedules::Schedule;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use serde_json::Value;

/// A schedule as stored, with its state.
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct StoredSchedule {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub cron: String,
    #[diesel(sql_type = Text)]
    pub timezone: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: Value,
    #[diesel(sql_type = SmallInt)]
    pub priority: i16,
    #[diesel(sql_type = Nullable<Integer>)]
    pub max_attempts: Option<i32>,
    #[diesel(sql_type = Bool)]
    pub paused: bool,
    /// "config" or "api".
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Timestamptz)]
    pub next_run_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_tick_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub skipped_ticks: i64,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

impl StoredSchedule {
    /// Whether it declares the same thing as `s` (name aside): a repeated `schedule.create` is then a no-op.
    pub fn same_definition(&self, s: &Schedule) -> bool {
        self.cron == s.cron.expression
            && self.timezone == s.cron.timezone.name()
            && self.action == s.action.as_str()
            && self.payload == s.payload.clone().into_value()
            && self.priority == s.priority.get()
            && self.max_attempts == s.max_attempts.map(|m| m.get())
    }
}

/// A due schedule, as the CronScheduler reads it.
#[derive(Debug, Clone, QueryableByName)]
pub struct DueSchedule {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub cron: String,
    #[diesel(sql_type = Text)]
    pub timezone: String,
    #[diesel(sql_type = Timestamptz)]
    pub next_run_at: DateTime<Utc>,
}

/// One tick to fire: enqueue `tick` of schedule `name` if its next_run_at is still `expected`, then wait for `next`.
#[derive(Debug, Clone)]
pub struct Fire {
    pub name: String,
    pub expected: DateTime<Utc>,
    pub tick: DateTime<Utc>,
    /// None: no further tick (the schedule is paused after this one).
    pub next: Option<DateTime<Utc>>,
    pub skipped: u64,
    pub dedup_key: String,
}

/// A tick that was fired (its schedule matched its fence).
#[derive(Debug, Clone, QueryableByName)]
pub struct Fired {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Timestamptz)]
    pub tick_at: DateTime<Utc>,
    /// The tick's task (None only if a concurrent insert of the same key is not visible yet).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub task_id: Option<i64>,
    /// False: the tick's task existed already (a duplicate).
    #[diesel(sql_type = Bool)]
    pub created: bool,
}

/// The database clock, the soonest upcoming tick and the schedule counts, for the CronScheduler's next sleep.
#[derive(Debug, Clone, QueryableByName)]
pub struct ScheduleOverview {
    #[diesel(sql_type = Timestamptz)]
    pub now: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub soonest: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub active: i64,
    #[diesel(sql_type = BigInt)]
    pub paused: i64,
}

const COLUMNS: &str = "name, cron, timezone, action, payload, priority, max_attempts, paused, source, next_run_at, \
                       last_tick_at, skipped_ticks, created_at, updated_at";

/// Columns of a schedule's definition, as bound arrays.
struct Definitions {
    names: Vec<String>,
    crons: Vec<String>,
    zones: Vec<String>,
    actions: Vec<String>,
    payloads: Vec<Value>,
    priorities: Vec<i16>,
    max_attempts: Vec<Option<i32>>,
}

impl Definitions {
    fn of(schedules: &[Schedule]) -> Definitions {
        Definitions {
            names: schedules.iter().map(|s| s.name.clone()).collect(),
            crons: schedules.iter().map(|s| s.cron.expression.clone()).collect(),
            zones: schedules.iter().map(|s| s.cron.timezone.name().to_owned()).collect(),
            actions: schedules.iter().map(|s| s.action.as_str().to_owned()).collect(),
            payloads: schedules.iter().map(|s| s.payload.clone().into_value()).collect(),
            priorities: schedules.iter().map(|s| s.priority.get()).collect(),
            max_attempts: schedules.iter().map(|s| s.max_attempts.map(|m| m.get())).collect(),
        }
    }
}

impl TaskStore {
    /// Declares the configured schedules (`[[schedules]]`), in one statement: new ones are inserted with their
    /// `nexts`; existing ones take the configured definition, and a new next_run_at only if their expression or
    /// time zone changed (so a restart neither loses nor repeats a tick). Paused stays as an operator left it.
    /// Schedules missing from the configuration are left alone (`schedule.delete` removes them).
    pub async fn upsert_config_schedules(&self, schedules: &[Schedule], nexts: &[DateTime<Utc>]) -> StoreResult<usize> {
        if schedules.is_empty() {
            return Ok(0);
        }
        let d = Definitions::of(schedules);
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(UPSERT_CONFIG_SQL)
            .bind::<Array<Text>, _>(&d.names)
            .bind::<Array<Text>, _>(&d.crons)
            .bind::<Array<Text>, _>(&d.zones)
            .bind::<Array<Text>, _>(&d.actions)
            .bind::<Array<Jsonb>, _>(&d.payloads)
            .bind::<Array<SmallInt>, _>(&d.priorities)
            .bind::<Array<Nullable<Integer>>, _>(&d.max_attempts)
            .bind::<Array<Timestamptz>, _>(nexts)
            .execute(&mut conn)
            .await?;
        Ok(n)
    }

    /// Creates a schedule (`schedule.create`). Returns the stored row and whether this call created it; a schedule
    /// of that name that exists already is returned as it is (the caller compares definitions).
    pub async fn create_schedule(&self, s: &Schedule, next: DateTime<Utc>) -> StoreResult<(StoredSchedule, bool)> {
        let d = Definitions::of(std::slice::from_ref(s));
        let mut conn = self.conn().await?;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(embed)]
            schedule: StoredSchedule,
            #[diesel(sql_type = Bool)]
            created: bool,
        }
        let rows: Vec<Row> = diesel::sql_query(format!(
            "WITH ins AS (
                INSERT INTO schedules (name, cron, timezone, action, payload, priority, max_attempts, source, next_run_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 'api', $8)
                ON CONFLICT (name) DO NOTHING
                RETURNING {COLUMNS}
            )
            SELECT {COLUMNS}, true AS created FROM ins
            UNION ALL
            SELECT {COLUMNS}, false FROM schedules WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
        ))
        .bind::<Text, _>(&d.names[0])
        .bind::<Text, _>(&d.crons[0])
        .bind::<Text, _>(&d.zones[0])
        .bind::<Text, _>(&d.actions[0])
        .bind::<Jsonb, _>(&d.payloads[0])
        .bind::<SmallInt, _>(d.priorities[0])
        .bind::<Nullable<Integer>, _>(d.max_attempts[0])
        .bind::<Timestamptz, _>(next)
        .load(&mut conn)
        .await?;
        // No row: a concurrent create of the same name committed after this statement's snapshot was taken, or the
        // existing one was deleted meanwhile; the caller may try again.
        let row = rows.into_iter().next().ok_or(diesel::result::Error::NotFound)?;
        Ok((row.schedule, row.created))
    }

    /// Every schedule, by name.
    pub async fn list_schedules(&self) -> StoreResult<Vec<StoredSchedule>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!("SELECT {COLUMNS} FROM schedules ORDER BY name")).load(&mut conn).await?)
    }

    pub async fn get_schedule(&self, name: &str) -> StoreResult<Option<StoredSchedule>> {
        let mut conn = self.conn().await?;
        let rows: Vec<StoredSchedule> = diesel::sql_query(format!("SELECT {COLUMNS} FROM schedules WHERE name = $1"))
            .bind::<Text, _>(name)
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Deletes a schedule; its tasks already enqueued stay. False if there was none of that name.
    pub async fn delete_schedule(&self, name: &str) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let n =
            diesel::sql_query("DELETE FROM schedules WHERE name = $1").bind::<Text, _>(name).execute(&mut conn).await?;
        Ok(n == 1)
    }

    /// Pauses a schedule: no tick is enqueued until it is resumed. None if there is none of that name.
    pub async fn pause_schedule(&self, name: &str) -> StoreResult<Option<StoredSchedule>> {
        let mut conn = self.conn().await?;
        let rows: Vec<StoredSchedule> = diesel::sql_query(format!(
            "UPDATE schedules SET paused = true, updated_at = now() WHERE name = $1 RETURNING {COLUMNS}"
        ))
        .bind::<Text, _>(name)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().next())
    }

    /// Resumes a paused schedule from `next` (the ticks it missed while paused are not enqueued); an active one is
    /// left as it is. None if there is none of that name.
    pub async fn resume_schedule(&self, name: &str, next: DateTime<Utc>) -> StoreResult<Option<StoredSchedule>> {
        let mut conn = self.conn().await?;
        let rows: Vec<StoredSchedule> = diesel::sql_query(format!(
            "UPDATE schedules SET paused = false,
                 next_run_at = CASE WHEN paused THEN $2 ELSE next_run_at END,
                 updated_at = CASE WHEN paused THEN now() ELSE updated_at END
             WHERE name = $1 RETURNING {COLUMNS}"
        ))
        .bind::<Text, _>(name)
        .bind::<Timestamptz, _>(next)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().next())
    }

    /// Up to `limit` unpaused schedules whose next_run_at has come, earliest first, with the database clock.
    pub async fn due_schedules(&self, limit: i64) -> StoreResult<Vec<DueSchedule>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT name, cron, timezone, next_run_at FROM schedules
             WHERE NOT paused AND next_run_at <= now() ORDER BY next_run_at, name LIMIT $1",
        )
        .bind::<BigInt, _>(limit)
        .load(&mut conn)
        .await?)
    }

    /// Fires ticks, one statement for all (see `schedules_fire`): returns the ticks whose schedule still matched
    /// its fence (the others were fired by another process, changed, paused or deleted meanwhile).
    pub async fn fire_schedules(&self, fires: &[Fire], default_max_attempts: i32) -> StoreResult<Vec<Fired>> {
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = fires.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<DateTime<Utc>> = fires.iter().map(|f| f.expected).collect();
        let ticks: Vec<DateTime<Utc>> = fires.iter().map(|f| f.tick).collect();
        let nexts: Vec<Option<DateTime<Utc>>> = fires.iter().map(|f| f.next).collect();
        let skipped: Vec<i64> = fires.iter().map(|f| f.skipped.min(i64::MAX as u64) as i64).collect();
        let keys: Vec<&str> = fires.iter().map(|f| f.dedup_key.as_str()).collect();
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query("SELECT name, tick_at, task_id, created FROM schedules_fire($1, $2, $3, $4, $5, $6, $7)")
            .bind::<Array<Text>, _>(&names)
            .bind::<Array<Timestamptz>, _>(&expected)
            .bind::<Array<Timestamptz>, _>(&ticks)
            .bind::<Array<Nullable<Timestamptz>>, _>(&nexts)
            .bind::<Array<BigInt>, _>(&skipped)
            .bind::<Array<Text>, _>(&keys)
            .bind::<Integer, _>(default_max_attempts)
            .load(&mut conn)
            .await?)
    }

    /// Pauses schedules whose stored expression no longer parses (so they are reported once, not every second).
    pub async fn pause_schedules(&self, names: &[String]) -> StoreResult<usize> {
        if names.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "UPDATE schedules SET paused = true, updated_at = now() WHERE name = ANY($1) AND NOT paused",
        )
        .bind::<Array<Text>, _>(names)
        .execute(&mut conn)
        .await?)
    }

    /// The database clock, the soonest upcoming tick of an unpaused schedule, and how many are active and paused.
    pub async fn schedule_overview(&self) -> StoreResult<ScheduleOverview> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT now() AS now, min(next_run_at) FILTER (WHERE NOT paused) AS soonest,
                    count(*) FILTER (WHERE NOT paused) AS active, count(*) FILTER (WHERE paused) AS paused
             FROM schedules",
        )
        .get_result(&mut conn)
        .await?)
    }
}

const UPSERT_CONFIG_SQL: &str = r#"
INSERT INTO schedules AS s (name, cron, timezone, action, payload, priority, max_attempts, source, next_run_at)
SELECT i.name, i.cron, i.timezone, i.action, i.payload, i.priority, i.max_attempts, 'config', i.next_run_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::int2[], $7::int4[], $8::timestamptz[])
     AS i(name, cron, timezone, action, payload, priority, max_attempts, next_run_at)
ORDER BY i.name
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron,
    timezone = EXCLUDED.timezone,
    action = EXCLUDED.action,
    payload = EXCLUDED.payload,
    priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts,
    source = 'config',
    next_run_at = CASE WHEN (s.cron, s.timezone) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.timezone)
                       THEN EXCLUDED.next_run_at ELSE s.next_run_at END,
    updated_at = now()
WHERE (s.cron, s.timezone, s.action, s.payload, s.priority, s.max_attempts, s.source)
      IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.timezone, EXCLUDED.action, EXCLUDED.payload, EXCLUDED.priority,
                        EXCLUDED.max_attempts, 'config')
"#;

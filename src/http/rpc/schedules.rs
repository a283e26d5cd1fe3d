//! The `schedule.*` JSON-RPC methods: `schedule.create`, `schedule.list`, `schedule.delete`, `schedule.pause`
//! and `schedule.resume`. A bad name, expression, time zone, payload, priority or max_attempts is -32602 naming
//! the field, an action no handler is known for is -32601, and neither changes anything.

use super::context::{store_error, RpcContext};
use crate::protocol::params::{invalid, Params};
use crate::protocol::{RpcError, INTERNAL_ERROR, SCHEDULE_NOT_FOUND};
use crate::schedules::{parse_name, CronExpr, Schedule, ScheduleSpec};
use crate::store::{StoreError, StoredSchedule};
use serde_json::{json, Value};

pub const PREFIX: &str = "schedule.";

/// The methods of this family, in the order `method not found` lists them.
pub const METHODS: &[&str] =
    &["schedule.create", "schedule.list", "schedule.delete", "schedule.pause", "schedule.resume"];

pub async fn call(ctx: &RpcContext, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let mut p = Params::new(params)?;
    match method {
        "schedule.create" => {
            let spec = ScheduleSpec {
                name: p.required_str("name")?,
                cron: p.required_str("cron")?,
                action: p.required_str("action")?,
                payload: match p.take("payload") {
                    None => Default::default(),
                    Some(Value::Object(m)) => m,
                    Some(v) => {
                        return Err(invalid(
                            "payload",
                            format!("must be an object, got {}", crate::domain::json_kind(&v)),
                        ))
                    }
                },
                timezone: p.optional_str("timezone")?.unwrap_or_else(|| "UTC".into()),
                priority: p.optional_i64("priority")?.unwrap_or(0),
                max_attempts: p.optional_i64("max_attempts")?,
            };
            p.finish()?;
            let schedule = Schedule::parse(&spec).map_err(RpcError::invalid_params)?;
            ctx.known_actions.check(&schedule.action, "schedule")?;
            let task = crate::store::NewTask::new(schedule.action.clone(), schedule.payload.clone());
            crate::protocol::params::check_size(&task, ctx.max_message_bytes)
                .map_err(|e| invalid("payload", format!("too large: {}", e.detail())))?;
            let now = ctx.store.db_now().await.map_err(store_error)?;
            let next = schedule.cron.next_after(now).ok_or_else(|| invalid("cron", "has no upcoming tick"))?;
            // A concurrent create of the same name that committed after the statement's snapshot leaves no row to
            // return: once more sees it.
            let (row, created) = match ctx.store.create_schedule(&schedule, next).await {
                Err(StoreError::Database(diesel::result::Error::NotFound)) => {
                    ctx.store.create_schedule(&schedule, next).await
                }
                other => other,
            }
            .map_err(store_error)?;
            if !created && !row.same_definition(&schedule) {
                return Err(invalid(
                    "name",
                    format!("a schedule named {:?} already exists with another definition; delete it first", row.name),
                ));
            }
            Ok(json!({"created": created, "schedule": schedule_json(&row)}))
        }
        "schedule.list" => {
            p.finish()?;
            let rows = ctx.store.list_schedules().await.map_err(store_error)?;
            Ok(json!({"schedules": rows.iter().map(schedule_json).collect::<Vec<_>>()}))
        }
        "schedule.delete" => {
            let name = name(p)?;
            if ctx.store.delete_schedule(&name).await.map_err(store_error)? {
                Ok(json!({"deleted": true}))
            } else {
                Err(not_found(&name))
            }
        }
        "schedule.pause" => {
            let name = name(p)?;
            match ctx.store.pause_schedule(&name).await.map_err(store_error)? {
                Some(row) => Ok(json!({"schedule": schedule_json(&row)})),
                None => Err(not_found(&name)),
            }
        }
        "schedule.resume" => {
            let name = name(p)?;
            let Some(row) = ctx.store.get_schedule(&name).await.map_err(store_error)? else {
                return Err(not_found(&name));
            };
            // Ticks missed while paused are not enqueued: it resumes from its next tick after now.
            let cron = CronExpr::parse(&row.cron, &row.timezone).map_err(RpcError::invalid_params)?;
            let now = ctx.store.db_now().await.map_err(store_error)?;
            let next = cron.next_after(now).ok_or_else(|| invalid("cron", "has no upcoming tick"))?;
            match ctx.store.resume_schedule(&name, next).await.map_err(store_error)? {
                Some(row) => Ok(json!({"schedule": schedule_json(&row)})),
                None => Err(not_found(&name)),
            }
        }
        other => Err(RpcError::method_not_found(other, METHODS)),
    }
}

/// The `name` member of delete, pause and resume (and nothing else).
fn name(mut p: Params) -> Result<String, RpcError> {
    let name = p.required_str("name")?;
    let name = parse_name(&name).map_err(RpcError::invalid_params)?;
    p.finish()?;
    Ok(name)
}

fn not_found(name: &str) -> RpcError {
    RpcError { code: SCHEDULE_NOT_FOUND, message: "schedule not found".into(), data: Some(json!({"name": name})) }
}

fn schedule_json(s: &StoredSchedule) -> Value {
    serde_json::to_value(s).unwrap_or_else(|e| {
        tracing::error!(error = %e, "schedule not serializable");
        json!({"name": s.name, "error": INTERNAL_ERROR})
    })
}

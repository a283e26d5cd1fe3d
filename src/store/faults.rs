//! Actions whose settings row the acquire statement cannot compute with (issue 21): a value outside what its
//! arithmetic carries, written by hand or stored before the range was enforced. The predicate is one SQL function,
//! `action_setting_fault(actions)` (migration 2026-12-04-210000_acquire_guard), used by `tasks_acquire` (which
//! leaves such an action's tasks waiting and acquires every other action's) and by [`TaskStore::action_faults`].

use super::{StoreResult, TaskStore};
use crate::domain::ActionFault;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde_json::Value;

/// The fault row of `tasks_acquire`: no task, payload `{"fault": "<column>"}`.
pub(super) fn from_row(action: String, payload: &Value) -> ActionFault {
    let setting = payload.get("fault").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    ActionFault { action, setting }
}

impl TaskStore {
    /// Every action whose settings row is at fault now, by action (`/readyz` names them).
    pub async fn action_faults(&self) -> StoreResult<Vec<ActionFault>> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            action: String,
            #[diesel(sql_type = Text)]
            setting: String,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT a.action, action_setting_fault(a) AS setting FROM actions a \
             WHERE action_setting_fault(a) IS NOT NULL ORDER BY a.action",
        )
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().map(|r| ActionFault { action: r.action, setting: r.setting }).collect())
    }
}

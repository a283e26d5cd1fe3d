//! `export`: copies the `t_object` row `payload.objectID` to `t_exported_object` with the same id (the original
//! system's example worker). One statement; a row that is already exported counts as success (idempotent).

use super::{Handler, HandlerContext, HandlerError};
use async_trait::async_trait;
use diesel::sql_types::{BigInt, Bool};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};

pub struct ExportHandler;

/// The row is copied if it exists and is not exported yet; `found` tells a missing source row from a re-run.
const EXPORT_SQL: &str = r#"
WITH src AS (SELECT id, data FROM t_object WHERE id = $1),
ins AS (
    INSERT INTO t_exported_object (id, data, created_dt)
    SELECT id, data, now() FROM src
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM src) AS found, EXISTS (SELECT 1 FROM ins) AS inserted
"#;

#[async_trait]
impl Handler for ExportHandler {
    async fn handle(&self, ctx: &HandlerContext, payload: &Value) -> Result<Value, HandlerError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Bool)]
            found: bool,
            #[diesel(sql_type = Bool)]
            inserted: bool,
        }
        let object_id = payload
            .get("objectID")
            .and_then(Value::as_i64)
            .ok_or_else(|| HandlerError::with_code(crate::protocol::INVALID_PARAMS, "objectID must be an integer"))?;
        let mut conn = ctx.db.get().await.map_err(|e| HandlerError::new(format!("database pool: {e}")))?;
        let row: Row = diesel::sql_query(EXPORT_SQL)
            .bind::<BigInt, _>(object_id)
            .get_result(&mut conn)
            .await
            .map_err(|e| HandlerError::new(format!("export of object {object_id} failed: {e}")))?;
        if !row.found {
            return Err(HandlerError::with_code(
                crate::protocol::OBJECT_NOT_FOUND_ERROR,
                format!("object {object_id} not found in t_object"),
            ));
        }
        Ok(json!({"result": "success", "objectID": object_id, "already_exported": !row.inserted}))
    }
}

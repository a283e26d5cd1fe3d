DROP TRIGGER IF EXISTS tasks_stage_transition ON tasks;
DROP TRIGGER IF EXISTS tasks_stage_guard ON tasks;
DROP FUNCTION IF EXISTS tasks_stage_transition();
DROP FUNCTION IF EXISTS tasks_stage_guard();
DROP FUNCTION IF EXISTS workflows_submit(text[], text[], jsonb[], int4[], text[], text[], jsonb[], int2[], int4[], float8[], int4[], int4[], int4[]);
DROP FUNCTION IF EXISTS workflows_cancel(bigint);
DROP FUNCTION IF EXISTS workflows_parents_meta(jsonb, text, jsonb);
DROP TABLE IF EXISTS workflow_edges;
DELETE FROM tasks WHERE workflow_id IS NOT NULL;
ALTER TABLE tasks DROP COLUMN workflow_id, DROP COLUMN stage, DROP COLUMN pending_parents, DROP COLUMN stage_on_failure;
DROP TABLE IF EXISTS workflows;
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('SCHEDULED', 'ACQUIRED', 'SUCCESS', 'ERROR', 'CRITICAL_ERROR', 'CANCELLED'));

CREATE INDEX tasks_state_action_id_idx ON tasks (state, action, id);
DROP FUNCTION IF EXISTS tasks_complete(int8[], int4[], bool[], jsonb[], float8, float8, float8);
DROP FUNCTION IF EXISTS tasks_acquire(bigint);
DROP FUNCTION IF EXISTS tasks_submit(text[], jsonb[], text[], int2[], int4[], timestamptz[], float8[]);
ALTER TABLE tasks RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                         autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay);

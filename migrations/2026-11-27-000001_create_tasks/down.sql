DROP TRIGGER IF EXISTS tasks_notify_due_insert ON tasks;
DROP FUNCTION IF EXISTS tasks_notify_due();
DROP TABLE IF EXISTS tasks;
DROP FUNCTION IF EXISTS tasks_retry_delay(integer, float8, float8, float8);

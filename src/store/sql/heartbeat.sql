UPDATE tasks t SET heartbeat_at = now()
FROM tasks_lock_running($1::int8[], $2::int4[]) l
WHERE t.id = l.id
RETURNING t.id, t.attempts

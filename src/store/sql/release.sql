-- Release: attempts whose outbound send failed end as failed attempts (tasks_failed_state), with the released error.
-- $1 ids, $2 attempts, $3..$5 backoff (base, max, jitter), $6 the released error code. Rows locked in id order.
UPDATE tasks t SET
    state = tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts),
    error = jsonb_build_object(
        'code', $6::int8,
        'message', 'released: the task could not be sent to the outbound queue',
        'attempt', t.attempts),
    run_at = CASE WHEN tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts) = 'ERROR'
                  THEN now() + tasks_retry_delay(t.attempts, $3, $4, $5) ELSE t.run_at END,
    acquired_at = NULL,
    updated_at = now(),
    finished_at = CASE WHEN tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts) = 'ERROR'
                       THEN NULL ELSE now() END
FROM tasks_lock_running($1::int8[], $2::int4[]) l
WHERE t.id = l.id

-- $1 id (NULL: any), $2 extra attempts, $3 action (NULL: any), $4 the states to retry.
UPDATE tasks t SET
    state = 'SCHEDULED',
    max_attempts = t.attempts + $2,
    run_at = now(),
    cancel_requested = false,
    finished_at = NULL,
    updated_at = now()
FROM (
    SELECT id FROM tasks
    WHERE state = ANY($4::text[])
      AND ($1::int8 IS NULL OR id = $1)
      AND ($3::text IS NULL OR action = $3)
    ORDER BY id
    FOR UPDATE
) l
WHERE t.id = l.id

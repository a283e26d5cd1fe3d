-- $1 id, $2 action, $3 state (each NULL: any). Rows locked in id order; a result racing with it waits and then finds
-- its task no longer ACQUIRED (stale). The notification CTE is evaluated because the final SELECT reads it; NOTIFY is
-- delivered at commit, and only then: workers never drop a handler for a cancel that rolled back.
WITH target AS (
    SELECT id, state AS before FROM tasks
    WHERE state IN ('SCHEDULED', 'ERROR', 'ACQUIRED', 'WAITING')
      AND ($1::int8 IS NULL OR id = $1)
      AND ($2::text IS NULL OR action = $2)
      AND ($3::text IS NULL OR state = $3)
    ORDER BY id
    FOR UPDATE
),
upd AS (
    UPDATE tasks t SET
        state = 'CANCELLED',
        cancel_requested = t.cancel_requested OR target.before = 'ACQUIRED',
        error = CASE WHEN target.before = 'ACQUIRED'
                     THEN jsonb_build_object('code', -32011, 'message', 'cancelled while running',
                                             'attempt', t.attempts)
                     ELSE t.error END,
        acquired_at = NULL,
        finished_at = now(),
        updated_at = now()
    FROM target
    WHERE t.id = target.id
    RETURNING t.id, t.attempts, target.before
),
notified AS (
    SELECT count(pg_notify('tasks_cancel', pairs)) AS n FROM (
        SELECT string_agg(id || ':' || attempts, ',') AS pairs
        FROM (SELECT id, attempts, (row_number() OVER (ORDER BY id) - 1) / 400 AS chunk
              FROM upd WHERE before = 'ACQUIRED') r
        GROUP BY chunk
    ) c
)
SELECT before, count(*) AS n FROM upd WHERE (SELECT n FROM notified) >= 0 GROUP BY before

UPDATE tasks t SET heartbeat_at = now()
FROM (
    SELECT t.id FROM tasks t
    JOIN unnest($1::int8[], $2::int4[]) AS r(id, attempt) ON t.id = r.id AND t.attempts = r.attempt
    WHERE t.state = 'ACQUIRED'
    ORDER BY t.id
    FOR UPDATE OF t
) l
WHERE t.id = l.id
RETURNING t.id, t.attempts

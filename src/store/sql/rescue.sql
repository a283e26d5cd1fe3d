-- Rescue: ACQUIRED tasks whose worker went silent (tasks_attempt_timed_out), and claims a dead scheduler never had
-- run (tasks_claim_orphaned), end as failed attempts (tasks_failed_state).
-- $1 stale timeout (since the last heartbeat), $2 batch, $3..$5 backoff (base, max, jitter), $6 queue timeout (since
-- acquisition, no heartbeat yet), $7 the stale error code, $8 the released error code, $9 how long a lease goes
-- unrenewed before its scheduler counts as dead (seconds).
-- A heartbeat is never older than its attempt's acquisition, so `acquired_at < now() - least($1, $6)` (an index
-- range on tasks_acquired_idx) holds every timed-out candidate.
WITH timed_out AS (
    SELECT id FROM tasks
    WHERE state = 'ACQUIRED'
      AND acquired_at < now() - make_interval(secs => least($1, $6))
      AND tasks_attempt_timed_out(heartbeat_at, acquired_at, $1, $6)
    ORDER BY acquired_at
    LIMIT $2
),
orphaned AS (
    SELECT id FROM tasks t
    WHERE state = 'ACQUIRED'
      AND claim_lease IN (SELECT id FROM acquirer_leases WHERE alive_at < now() - make_interval(secs => $9))
      AND tasks_claim_orphaned(claim_lease, claim_batch, COALESCE(heartbeat_at >= acquired_at, false), $9)
    LIMIT $2
),
-- Locked in id order (the global order); the rules are checked again on the locked rows.
stale AS (
    SELECT t.id,
           tasks_claim_orphaned(t.claim_lease, t.claim_batch, COALESCE(t.heartbeat_at >= t.acquired_at, false), $9)
               AS orphan,
           COALESCE(t.heartbeat_at >= t.acquired_at, false) AS started
    FROM tasks t
    WHERE t.id IN (SELECT id FROM timed_out UNION SELECT id FROM orphaned)
      AND t.state = 'ACQUIRED'
      AND (tasks_attempt_timed_out(t.heartbeat_at, t.acquired_at, $1, $6)
           OR tasks_claim_orphaned(t.claim_lease, t.claim_batch, COALESCE(t.heartbeat_at >= t.acquired_at, false), $9))
    ORDER BY t.id
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE tasks t SET
    state = tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts),
    error = jsonb_build_object(
        'code', CASE WHEN r.orphan THEN $8::int8 ELSE $7::int8 END,
        'message', CASE WHEN r.orphan THEN 'released: the scheduler that claimed it stopped before a worker ran it'
                        WHEN r.started
                        THEN 'stale: no heartbeat from its worker for longer than ' || $1::text || ' s'
                        ELSE 'stale: not started within ' || $6::text || ' s of being acquired' END,
        'attempt', t.attempts),
    run_at = CASE WHEN tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts) = 'ERROR'
                  THEN now() + tasks_retry_delay(t.attempts, $3, $4, $5) ELSE t.run_at END,
    acquired_at = NULL,
    updated_at = now(),
    finished_at = CASE WHEN tasks_failed_state(t.cancel_requested, t.attempts, t.max_attempts) = 'ERROR'
                       THEN NULL ELSE now() END
FROM stale r
WHERE t.id = r.id
RETURNING t.id, t.state

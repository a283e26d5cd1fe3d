DROP FUNCTION tasks_acquire(bigint, bigint, bigint, bigint);
CREATE FUNCTION tasks_acquire(p_limit bigint)
    RETURNS TABLE (id bigint, action text, payload jsonb, attempt integer, priority smallint,
                   created_at timestamptz, wait_seconds float8, timeout_secs float8, deadline timestamptz)
    LANGUAGE plpgsql SET enable_bitmapscan = off AS $$
#variable_conflict use_column
DECLARE
    v_limited text[];
    v_locked text[];
    v_timeouts boolean;
BEGIN
    SELECT COALESCE(array_agg(a.action) FILTER (WHERE a.paused OR a.max_concurrency IS NOT NULL
                                                   OR a.rate_per_sec IS NOT NULL), '{}'),
           COALESCE(bool_or(a.timeout_secs IS NOT NULL), false)
      INTO v_limited, v_timeouts
      FROM actions a;

    IF cardinality(v_limited) = 0 THEN
        RETURN QUERY
        WITH due AS (
            SELECT tasks.id FROM tasks
            WHERE tasks.state IN ('SCHEDULED', 'ERROR') AND tasks.run_at <= now()
            ORDER BY tasks.priority DESC, tasks.run_at, tasks.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ),
        upd AS (
            UPDATE tasks t
            SET state = 'ACQUIRED', attempts = t.attempts + 1, acquired_at = now(), updated_at = now()
            FROM due
            WHERE t.id = due.id
            RETURNING t.id, t.action, t.payload, t.attempts, t.priority, t.created_at,
                      GREATEST(0, EXTRACT(EPOCH FROM now() - t.run_at))::float8 AS wait_seconds,
                      CASE WHEN t.timeout_secs IS NOT NULL THEN t.timeout_secs
                           WHEN v_timeouts THEN (SELECT a.timeout_secs FROM actions a WHERE a.action = t.action)
                      END AS timeout_secs
        )
        SELECT upd.*, now() + make_interval(secs => upd.timeout_secs) FROM upd;
        RETURN;
    END IF;

    SELECT COALESCE(array_agg(l.action), '{}') INTO v_locked FROM (
        SELECT a.action FROM actions a WHERE a.action = ANY(v_limited)
        ORDER BY a.action
        FOR UPDATE SKIP LOCKED
    ) l;

    RETURN QUERY
    WITH budget AS (
        SELECT a.action, a.rate_per_sec,
               GREATEST(1, a.rate_per_sec / 10) AS capacity,
               LEAST(GREATEST(1, a.rate_per_sec / 10),
                     a.tokens + a.rate_per_sec * EXTRACT(EPOCH FROM now() - a.tokens_at)) AS tokens,
               CASE WHEN a.paused THEN 0::bigint
                    ELSE LEAST(p_limit,
                               CASE WHEN a.max_concurrency IS NULL THEN p_limit
                                    ELSE GREATEST(0, a.max_concurrency - (
                                        SELECT count(*) FROM tasks r
                                        WHERE r.action = a.action AND r.state = 'ACQUIRED')) END,
                               CASE WHEN a.rate_per_sec IS NULL THEN p_limit
                                    ELSE floor(LEAST(GREATEST(1, a.rate_per_sec / 10),
                                                     a.tokens + a.rate_per_sec
                                                                * EXTRACT(EPOCH FROM now() - a.tokens_at)))::bigint
                               END) END AS n
        FROM actions a WHERE a.action = ANY(v_locked)
    ),
    limited_due AS (
        SELECT d.id FROM budget b CROSS JOIN LATERAL (
            SELECT tasks.id FROM tasks
            WHERE tasks.action = b.action AND tasks.state IN ('SCHEDULED', 'ERROR') AND tasks.run_at <= now()
            ORDER BY tasks.priority DESC, tasks.run_at, tasks.id
            LIMIT b.n
            FOR UPDATE SKIP LOCKED
        ) d
        WHERE b.n > 0
    ),
    free_due AS (
        SELECT tasks.id FROM tasks
        WHERE tasks.state IN ('SCHEDULED', 'ERROR') AND tasks.run_at <= now()
          AND tasks.action <> ALL(v_limited)
        ORDER BY tasks.priority DESC, tasks.run_at, tasks.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    due AS (
        SELECT limited_due.id FROM limited_due
        UNION ALL
        (SELECT free_due.id FROM free_due LIMIT GREATEST(0, p_limit - (SELECT count(*) FROM limited_due)))
    ),
    upd AS (
        UPDATE tasks t
        SET state = 'ACQUIRED', attempts = t.attempts + 1, acquired_at = now(), updated_at = now()
        FROM due
        WHERE t.id = due.id
        RETURNING t.id, t.action, t.payload, t.attempts, t.priority, t.created_at,
                  GREATEST(0, EXTRACT(EPOCH FROM now() - t.run_at))::float8 AS wait_seconds,
                  CASE WHEN t.timeout_secs IS NOT NULL THEN t.timeout_secs
                       WHEN v_timeouts THEN (SELECT a.timeout_secs FROM actions a WHERE a.action = t.action)
                  END AS timeout_secs
    ),
    taken AS (
        SELECT upd.action, count(*) AS n FROM upd GROUP BY upd.action
    ),
    charge AS (
        UPDATE actions a SET tokens = b.tokens - taken.n, tokens_at = now()
        FROM budget b JOIN taken ON taken.action = b.action
        WHERE a.action = b.action AND b.rate_per_sec IS NOT NULL
    ),
    throttled AS (
        -- Held back: the budget is spent (or zero) and a due task of the action is left.
        SELECT b.action,
               CASE WHEN b.rate_per_sec IS NOT NULL AND b.n = floor(b.tokens)
                    THEN (1 - (b.tokens - COALESCE(taken.n, 0)))
                         / b.rate_per_sec
                    ELSE 0 END AS wait_seconds
        FROM budget b LEFT JOIN taken ON taken.action = b.action
        WHERE COALESCE(taken.n, 0) >= b.n
          AND EXISTS (SELECT 1 FROM tasks d
                      WHERE d.action = b.action AND d.state IN ('SCHEDULED', 'ERROR') AND d.run_at <= now()
                      OFFSET COALESCE(taken.n, 0))
    )
    SELECT upd.id, upd.action, upd.payload, upd.attempts, upd.priority, upd.created_at, upd.wait_seconds,
           upd.timeout_secs, now() + make_interval(secs => upd.timeout_secs)
    FROM upd
    UNION ALL
    SELECT NULL, throttled.action, NULL, NULL, NULL, NULL, GREATEST(0, throttled.wait_seconds)::float8, NULL, NULL
    FROM throttled;
END;
$$;

CREATE OR REPLACE FUNCTION tasks_complete(
    p_ids int8[], p_attempts int4[], p_oks bool[], p_bodies jsonb[],
    p_base_secs float8, p_max_secs float8, p_jitter float8)
    RETURNS TABLE (id bigint, attempt integer, state text, age_seconds float8) LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
DECLARE
    v_workflows bigint[];
BEGIN
    SELECT array_agg(DISTINCT l.workflow_id) FILTER (WHERE l.workflow_id IS NOT NULL) INTO v_workflows
    FROM (
        SELECT t.id, t.workflow_id FROM tasks t
        JOIN unnest(p_ids, p_attempts) AS r(id, attempt) ON t.id = r.id AND t.attempts = r.attempt
        WHERE t.state = 'ACQUIRED'
        ORDER BY t.id
        FOR UPDATE OF t
    ) l;
    IF v_workflows IS NOT NULL THEN
        PERFORM 1 FROM workflows w WHERE w.id = ANY(v_workflows) ORDER BY w.id FOR UPDATE;
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_oks, p_bodies) AS r(id, attempt, ok, body)
    )
    UPDATE tasks t SET
        state = CASE WHEN r.ok THEN 'SUCCESS'
                     WHEN t.cancel_requested THEN 'CANCELLED'
                     WHEN t.attempts >= t.max_attempts THEN 'CRITICAL_ERROR'
                     ELSE 'ERROR' END,
        result = CASE WHEN r.ok THEN r.body END,
        error = CASE WHEN r.ok THEN NULL ELSE r.body END,
        run_at = CASE WHEN r.ok OR t.cancel_requested OR t.attempts >= t.max_attempts THEN t.run_at
                      ELSE now() + tasks_retry_delay(t.attempts, p_base_secs, p_max_secs, p_jitter) END,
        acquired_at = NULL,
        updated_at = now(),
        finished_at = CASE WHEN r.ok OR t.cancel_requested OR t.attempts >= t.max_attempts THEN now() END
    FROM r
    WHERE t.id = r.id AND t.attempts = r.attempt AND t.state = 'ACQUIRED'
    RETURNING t.id, t.attempts, t.state, EXTRACT(EPOCH FROM now() - t.created_at)::float8;
END;
$$;

DROP FUNCTION tasks_failed_state(boolean, integer, integer);
DROP FUNCTION tasks_lock_running(int8[], int4[]);
DROP FUNCTION tasks_attempt_timed_out(timestamptz, timestamptz, float8, float8);
DROP FUNCTION tasks_claim_orphaned(bigint, bigint, boolean, float8);
ALTER TABLE tasks DROP COLUMN claim_lease, DROP COLUMN claim_batch;
DROP TABLE acquirer_leases;

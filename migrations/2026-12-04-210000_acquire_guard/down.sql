-- Back to the acquire statement of 2026-12-04-000002_claim_leases (unguarded).
CREATE OR REPLACE FUNCTION tasks_acquire(p_limit bigint, p_lease bigint DEFAULT NULL, p_batch bigint DEFAULT NULL,
                              p_sent_through bigint DEFAULT NULL)
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

    IF p_lease IS NOT NULL THEN
        UPDATE acquirer_leases l SET alive_at = now(), sent_through = GREATEST(l.sent_through, COALESCE(p_sent_through, 0))
        WHERE l.id = p_lease;
    END IF;

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
            SET state = 'ACQUIRED', attempts = t.attempts + 1, acquired_at = now(), updated_at = now(),
            claim_lease = p_lease, claim_batch = p_batch
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
        SET state = 'ACQUIRED', attempts = t.attempts + 1, acquired_at = now(), updated_at = now(),
            claim_lease = p_lease, claim_batch = p_batch
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


DROP FUNCTION action_setting_fault(actions);
ALTER TABLE actions DROP CONSTRAINT actions_rate_per_sec_min;

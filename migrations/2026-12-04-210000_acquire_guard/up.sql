-- Guards the acquire statement's own arithmetic (issue 21). Before this, one actions row the arithmetic cannot
-- carry stopped every acquisition of every action in every process: rate_per_sec = 5e-324 made
-- GREATEST(1, rate_per_sec / 10) fail with "value out of range: underflow" (1e-310: 1 / rate_per_sec overflowed),
-- tokens = '-Infinity' made floor(...)::bigint fail, tokens_at = 'infinity' made now() - tokens_at fail.
--
-- Now: (1) the API refuses rates below 0.000001 (one task per 11.6 days) and the table does too, for new rows
-- (NOT VALID: a row stored before keeps the migration from failing; the guard below handles it);
-- (2) action_setting_fault(row) names the first setting of a row outside what the arithmetic carries, NULL when
-- the row is sound; (3) tasks_acquire treats a faulty action as limited, gives it no budget (its tasks wait, no
-- arithmetic is done on its row) and returns one extra row per faulty action: id NULL, payload
-- {"fault": "<column>"}, which the Acquirer logs and counts (scheduler_action_setting_faults{action,setting}) and
-- /readyz names. The rest of tasks_acquire (with its claim leases, 2026-12-04-000002) is unchanged.

ALTER TABLE actions ADD CONSTRAINT actions_rate_per_sec_min CHECK (rate_per_sec >= 0.000001) NOT VALID;

CREATE FUNCTION action_setting_fault(a actions) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        -- NaN compares above every number: NOT (x >= lo AND x <= hi) holds for it too.
        WHEN a.rate_per_sec IS NOT NULL AND NOT (a.rate_per_sec >= 0.000001 AND a.rate_per_sec <= 1000000)
            THEN 'rate_per_sec'
        WHEN a.max_concurrency IS NOT NULL AND NOT (a.max_concurrency BETWEEN 1 AND 1000000) THEN 'max_concurrency'
        WHEN a.timeout_secs IS NOT NULL AND NOT (a.timeout_secs > 0 AND a.timeout_secs <= 604800) THEN 'timeout_secs'
        -- The bucket holds at most 100000 tokens (rate / 10); anything far outside was written by hand.
        WHEN NOT (a.tokens >= -1e9 AND a.tokens <= 1e9) THEN 'tokens'
        -- now() - tokens_at must be a finite interval whose seconds times the rate fit a bigint.
        WHEN NOT (a.tokens_at > now() - interval '100 years' AND a.tokens_at < now() + interval '1 day')
            THEN 'tokens_at'
    END
$$;

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
                                                   OR a.rate_per_sec IS NOT NULL
                                                   OR action_setting_fault(a) IS NOT NULL), '{}'),
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
        -- A faulty row (see action_setting_fault) gets no budget and no arithmetic: only its action stops.
        FROM actions a WHERE a.action = ANY(v_locked) AND action_setting_fault(a) IS NULL
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
    FROM throttled
    UNION ALL
    -- A faulty action: a row without a task whose payload names the setting ({"fault": "<column>"}).
    SELECT NULL, f.action, jsonb_build_object('fault', f.fault), NULL, NULL, NULL, 0::float8, NULL, NULL
    FROM (SELECT a.action, action_setting_fault(a) AS fault FROM actions a WHERE a.action = ANY(v_limited)) f
    WHERE f.fault IS NOT NULL;
END;
$$;


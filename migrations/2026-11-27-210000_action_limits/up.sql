-- Per-action settings (issue 11): limits and pause decided inside the acquire statement, timeouts, a max_attempts
-- default per action, and cancelling running tasks.

-- One row per configured action; an action without a row has no limit. `tokens`/`tokens_at` are the rate limit's
-- token bucket (capacity: max(1, rate_per_sec / 10), i.e. 100 ms of rate), refilled on the database clock.
CREATE TABLE actions (
    action          text        PRIMARY KEY CHECK (char_length(action) BETWEEN 1 AND 128),
    max_concurrency integer     CHECK (max_concurrency BETWEEN 1 AND 1000000),
    rate_per_sec    float8      CHECK (rate_per_sec > 0 AND rate_per_sec <= 1000000),
    timeout_secs    float8      CHECK (timeout_secs > 0 AND timeout_secs <= 604800),
    max_attempts    integer     CHECK (max_attempts BETWEEN 1 AND 1000),
    paused          boolean     NOT NULL DEFAULT false,
    tokens          float8      NOT NULL DEFAULT 0,
    tokens_at       timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A task's own timeout (seconds, from the start of each run); NULL: its action's, if any.
ALTER TABLE tasks ADD COLUMN timeout_secs float8 CHECK (timeout_secs > 0 AND timeout_secs <= 604800);

-- Running tasks per action (max_concurrency), and due tasks of one action in acquisition order (limited actions are
-- acquired per action). Both partial: each costs one index entry per acquisition, resp. per submission or retry.
CREATE INDEX tasks_acquired_action_idx ON tasks (action) WHERE state = 'ACQUIRED';
CREATE INDEX tasks_acquirable_action_idx ON tasks (action, priority DESC, run_at, id)
    WHERE state IN ('SCHEDULED', 'ERROR');

-- Submit, as before, plus two trailing arguments (both optional, so existing callers keep working):
-- p_timeouts: each task's timeout_secs (NULL: its action's); p_max_attempts_explicit: false where p_max_attempts
-- holds only the configured default, which the action's max_attempts then overrides (NULL array: all explicit).
DROP FUNCTION tasks_submit(text[], jsonb[], text[], int2[], int4[], timestamptz[], float8[]);
CREATE FUNCTION tasks_submit(
    p_actions text[], p_payloads jsonb[], p_dedup_keys text[], p_priorities int2[], p_max_attempts int4[],
    p_run_ats timestamptz[], p_delays float8[], p_timeouts float8[] DEFAULT NULL,
    p_max_attempts_explicit bool[] DEFAULT NULL)
    RETURNS TABLE (id bigint, created boolean) LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT i.ord, i.action, i.payload,
               COALESCE(i.dedup_key, md5(i.payload::text)) AS dedup_key,
               i.priority,
               CASE WHEN COALESCE(i.explicit, true) THEN i.max_attempts
                    ELSE COALESCE(a.max_attempts, i.max_attempts) END AS max_attempts,
               COALESCE(i.run_at, now() + make_interval(secs => COALESCE(i.delay_secs, 0))) AS run_at,
               i.timeout_secs
        FROM unnest(p_actions, p_payloads, p_dedup_keys, p_priorities, p_max_attempts, p_run_ats, p_delays,
                    p_timeouts, p_max_attempts_explicit)
             WITH ORDINALITY AS i(action, payload, dedup_key, priority, max_attempts, run_at, delay_secs,
                                  timeout_secs, explicit, ord)
        LEFT JOIN actions a ON a.action = i.action
    ),
    ins AS (
        INSERT INTO tasks (action, payload, dedup_key, priority, max_attempts, run_at, timeout_secs)
        SELECT action, payload, dedup_key, priority, max_attempts, run_at, timeout_secs FROM input
        ORDER BY action, dedup_key
        ON CONFLICT (action, dedup_key) DO NOTHING
        RETURNING id, action, dedup_key
    )
    SELECT COALESCE(ins.id, existing.id),
           (ins.id IS NOT NULL
            AND input.ord = min(input.ord) OVER (PARTITION BY input.action, input.dedup_key))
    FROM input
    LEFT JOIN ins ON ins.action = input.action AND ins.dedup_key = input.dedup_key
    LEFT JOIN tasks existing ON existing.action = input.action AND existing.dedup_key = input.dedup_key
    ORDER BY input.ord;
END;
$$;

-- Acquire: due tasks by priority, run_at, id, within each action's limits, in one call.
--
-- Fast path (no action is paused, concurrency- or rate-limited): the ordered index scan of before, SKIP LOCKED.
-- Limited path: the rows of the limited actions are locked first (SKIP LOCKED: an action another acquirer holds is
-- left to it this round), in their own statement, so the next statement's snapshot sees every acquisition the
-- previous holder committed: running counts are exact and two acquirers can never both take the last slot. Each
-- locked action's budget is min(free slots, whole rate tokens), 0 when paused; its due tasks are taken in order up to
-- the budget; unlimited actions fill the rest of the batch with the ordered scan; the token buckets are charged in
-- the same statement. Returned rows with a NULL id are not tasks: each names an action whose limits held back due
-- tasks (throttled), with wait_seconds = when its next rate token comes (0: when a slot frees).
-- Every task row carries its effective timeout (the task's, else its action's) and deadline = now() + timeout.
DROP FUNCTION tasks_acquire(bigint);
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

-- Cancelled running tasks: workers LISTEN on this channel; payload "id:attempt,id:attempt,..." (at most 400 pairs
-- per notification, far below the 8000-byte payload limit).

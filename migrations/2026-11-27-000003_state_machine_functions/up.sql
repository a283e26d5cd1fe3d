-- The hot state transitions as PL/pgSQL functions: the state machine lives in SQL, each call is still one
-- statement, and PL/pgSQL keeps the plans prepared per connection (planning these CTEs cost more than running them).

-- Queue tables churn: vacuum the tasks table early so dead index entries do not pile up under acquisition.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Submit: idempotent per (action, dedup key); one row per input, in input order; created = this call inserted it.
CREATE FUNCTION tasks_submit(
    p_actions text[], p_payloads jsonb[], p_dedup_keys text[], p_priorities int2[], p_max_attempts int4[],
    p_run_ats timestamptz[], p_delays float8[])
    RETURNS TABLE (id bigint, created boolean) LANGUAGE plpgsql
    -- A generic plan cannot see the arrays' sizes and may join against the whole table: plan each call.
    SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT i.ord, i.action, i.payload,
               COALESCE(i.dedup_key, md5(i.payload::text)) AS dedup_key,
               i.priority, i.max_attempts,
               COALESCE(i.run_at, now() + make_interval(secs => COALESCE(i.delay_secs, 0))) AS run_at
        FROM unnest(p_actions, p_payloads, p_dedup_keys, p_priorities, p_max_attempts, p_run_ats, p_delays)
             WITH ORDINALITY AS i(action, payload, dedup_key, priority, max_attempts, run_at, delay_secs, ord)
    ),
    ins AS (
        INSERT INTO tasks (action, payload, dedup_key, priority, max_attempts, run_at)
        SELECT action, payload, dedup_key, priority, max_attempts, run_at FROM input
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

-- Acquire: due tasks by priority, run_at, id. The ordered index scan (not a bitmap scan) stops at the limit and
-- marks dead index entries, so acquisition stays cheap while the table churns.
CREATE FUNCTION tasks_acquire(p_limit bigint)
    RETURNS TABLE (id bigint, action text, payload jsonb, attempt integer, priority smallint,
                   created_at timestamptz, wait_seconds float8)
    LANGUAGE plpgsql SET enable_bitmapscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT tasks.id FROM tasks
        WHERE tasks.state IN ('SCHEDULED', 'ERROR') AND tasks.run_at <= now()
        ORDER BY tasks.priority DESC, tasks.run_at, tasks.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks t
    SET state = 'ACQUIRED', attempts = t.attempts + 1, acquired_at = now(), updated_at = now()
    FROM due
    WHERE t.id = due.id
    RETURNING t.id, t.action, t.payload, t.attempts, t.priority, t.created_at,
              GREATEST(0, EXTRACT(EPOCH FROM now() - t.run_at))::float8;
END;
$$;

-- Complete: fenced on (id, attempt) while ACQUIRED; success, retry with backoff, CRITICAL_ERROR or CANCELLED.
CREATE FUNCTION tasks_complete(
    p_ids int8[], p_attempts int4[], p_oks bool[], p_bodies jsonb[],
    p_base_secs float8, p_max_secs float8, p_jitter float8)
    RETURNS TABLE (id bigint, attempt integer, state text, age_seconds float8) LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
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

-- Every state change is a non-HOT update that inserts into every index: an index on state alone costs each
-- transition more than it saves. Listing by state pages over the primary key; the partial indexes serve the hot paths.
DROP INDEX tasks_state_action_id_idx;

DROP FUNCTION tasks_acquire(bigint);
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
DROP FUNCTION tasks_submit(text[], jsonb[], text[], int2[], int4[], timestamptz[], float8[], float8[], bool[]);
CREATE FUNCTION tasks_submit(
    p_actions text[], p_payloads jsonb[], p_dedup_keys text[], p_priorities int2[], p_max_attempts int4[],
    p_run_ats timestamptz[], p_delays float8[])
    RETURNS TABLE (id bigint, created boolean) LANGUAGE plpgsql
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
DROP INDEX tasks_acquirable_action_idx;
DROP INDEX tasks_acquired_action_idx;
ALTER TABLE tasks DROP COLUMN timeout_secs;
DROP TABLE actions;

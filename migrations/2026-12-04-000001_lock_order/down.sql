CREATE OR REPLACE FUNCTION tasks_complete(
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

-- Cron schedules, and the stable SQL entry point for transactional enqueue (`scheduler.submit`).

-- One row per schedule, declared in configuration (`[[schedules]]`, upserted at start) or at run time
-- (`schedule.create`). The CronScheduler enqueues each tick as a task whose dedup key is `cron:<name>:<tick>`, in
-- the same statement that moves next_run_at on, fenced on its old value: one process wins each tick.
CREATE TABLE schedules (
    name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    -- A cron expression (5 fields, or 6 with seconds first), checked by the cron crate before it is stored.
    cron          text        NOT NULL CHECK (char_length(cron) BETWEEN 1 AND 256),
    -- IANA time zone the expression is read in.
    timezone      text        NOT NULL DEFAULT 'UTC' CHECK (char_length(timezone) BETWEEN 1 AND 64),
    action        text        NOT NULL CHECK (char_length(action) BETWEEN 1 AND 128),
    payload       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    priority      smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    -- NULL: retry.default_max_attempts of the process that enqueues the tick.
    max_attempts  integer     CHECK (max_attempts >= 1),
    paused        boolean     NOT NULL DEFAULT false,
    -- 'config' ([[schedules]], upserted at every start) or 'api' (schedule.create).
    source        text        NOT NULL CHECK (source IN ('config', 'api')),
    -- The next tick to enqueue (always a tick of the expression; computed by the scheduler, stored in UTC).
    next_run_at   timestamptz NOT NULL,
    -- The last tick enqueued.
    last_tick_at  timestamptz,
    -- Ticks missed while nothing ran that were not enqueued (only the most recent missed tick is).
    skipped_ticks bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE NOT paused;

-- Fire due schedules, one statement per batch: for each (name, expected next_run_at) still unpaused and still due at
-- that time, move next_run_at on (NULL: no further tick, the schedule is paused), count the skipped ticks, and insert
-- the tick's task (ON CONFLICT: the tick was enqueued before). A schedule another process fired meanwhile does not
-- match its fence and returns no row.
CREATE FUNCTION schedules_fire(
    p_names text[], p_expected timestamptz[], p_ticks timestamptz[], p_nexts timestamptz[], p_skipped int8[],
    p_dedup_keys text[], p_default_max_attempts int4)
    RETURNS TABLE (name text, tick_at timestamptz, task_id bigint, created boolean) LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_names, p_expected, p_ticks, p_nexts, p_skipped, p_dedup_keys)
                      AS i(name, expected, tick_at, next_run_at, skipped, dedup_key)
    ),
    fired AS (
        UPDATE schedules s SET
            next_run_at = COALESCE(i.next_run_at, s.next_run_at),
            paused = s.paused OR i.next_run_at IS NULL,
            last_tick_at = i.tick_at,
            skipped_ticks = s.skipped_ticks + i.skipped,
            updated_at = now()
        FROM input i
        WHERE s.name = i.name AND s.next_run_at = i.expected AND NOT s.paused
        RETURNING s.name, s.action, s.payload, s.priority, COALESCE(s.max_attempts, p_default_max_attempts) AS max_attempts,
                  i.tick_at, i.dedup_key
    ),
    ins AS (
        INSERT INTO tasks (action, payload, dedup_key, priority, max_attempts, run_at)
        SELECT action, payload, dedup_key, priority, max_attempts, tick_at FROM fired
        ORDER BY action, dedup_key
        ON CONFLICT (action, dedup_key) DO NOTHING
        RETURNING id, action, dedup_key
    )
    SELECT fired.name, fired.tick_at, COALESCE(ins.id, existing.id), ins.id IS NOT NULL
    FROM fired
    LEFT JOIN ins ON ins.action = fired.action AND ins.dedup_key = fired.dedup_key
    LEFT JOIN tasks existing ON existing.action = fired.action AND existing.dedup_key = fired.dedup_key;
END;
$$;

-- Transactional enqueue: a stable API for applications that share the database. Call it inside your own
-- transaction; the task exists if and only if that transaction commits, and the Acquirer is woken at commit (the
-- tasks_due NOTIFY is delivered at commit, and not at all on rollback). Idempotent per (action, dedup_key): a
-- duplicate returns the existing task's id. Arguments are named, so callers may pass only what they need:
--   SELECT scheduler.submit('export', '{"objectID": 23}', run_at => now() + interval '1 hour');
CREATE SCHEMA IF NOT EXISTS scheduler;

-- Created with this schema's search path pinned to the schema holding the tasks table (so it works whatever the
-- caller's search_path is, and a caller's objects cannot shadow ours).
DO $do$
BEGIN
    EXECUTE format($f$
CREATE FUNCTION scheduler.submit(
    action text,
    payload jsonb DEFAULT '{}',
    dedup_key text DEFAULT NULL,
    priority integer DEFAULT 0,
    max_attempts integer DEFAULT 10,
    run_at timestamptz DEFAULT NULL,
    delay_secs float8 DEFAULT NULL)
    RETURNS bigint LANGUAGE plpgsql VOLATILE
    SET search_path = %I, pg_temp AS $body$
DECLARE
    v_id bigint;
BEGIN
    IF action IS NULL OR char_length(action) NOT BETWEEN 1 AND 128 OR action ~ '[[:space:][:cntrl:]]' THEN
        RAISE EXCEPTION 'scheduler.submit: action must be 1 to 128 characters without whitespace, got %%',
            quote_nullable(action) USING ERRCODE = '22023';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'scheduler.submit: payload must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF payload ? '_meta' THEN
        RAISE EXCEPTION 'scheduler.submit: payload key _meta is reserved' USING ERRCODE = '22023';
    END IF;
    IF dedup_key IS NOT NULL AND char_length(dedup_key) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'scheduler.submit: dedup_key must be 1 to 256 characters' USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'scheduler.submit: priority must be between -100 and 100, got %%', priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'scheduler.submit: max_attempts must be between 1 and 1000, got %%', max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF delay_secs IS NOT NULL AND NOT (delay_secs BETWEEN 0 AND 31536000) THEN
        RAISE EXCEPTION 'scheduler.submit: delay_secs must be between 0 and 31536000, got %%', delay_secs
            USING ERRCODE = '22023';
    END IF;
    -- The same statement as every other submission path.
    SELECT s.id INTO v_id
    FROM tasks_submit(ARRAY[action], ARRAY[payload], ARRAY[dedup_key], ARRAY[priority::int2],
                      ARRAY[max_attempts], ARRAY[run_at], ARRAY[delay_secs]) AS s;
    IF v_id IS NULL THEN
        -- A concurrent transaction inserted the same (action, dedup_key) and has not committed: ON CONFLICT waited
        -- for it and skipped, but this snapshot cannot see its row. Read it now (READ COMMITTED: a new snapshot).
        SELECT t.id INTO v_id FROM tasks t
        WHERE t.action = submit.action AND t.dedup_key = COALESCE(submit.dedup_key, md5(submit.payload::text));
    END IF;
    RETURN v_id;
END;
$body$;
$f$, current_schema());
END;
$do$;

COMMENT ON FUNCTION scheduler.submit(text, jsonb, text, integer, integer, timestamptz, float8) IS
    'Stable API: enqueue a task inside the caller''s transaction; returns the task id (the existing one for a duplicate (action, dedup_key)).';

-- The tasks table: the only source of truth for every task's state.
-- It generalises the original t_scheduler (see docs/ARCHITECTURE.md for the state machine).
CREATE TABLE tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action           text        NOT NULL CHECK (char_length(action) BETWEEN 1 AND 128),
    payload          jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    -- Given by the client, else md5 of the payload's canonical jsonb text.
    dedup_key        text        NOT NULL CHECK (char_length(dedup_key) BETWEEN 1 AND 256),
    state            text        NOT NULL DEFAULT 'SCHEDULED'
                     CHECK (state IN ('SCHEDULED', 'ACQUIRED', 'SUCCESS', 'ERROR', 'CRITICAL_ERROR', 'CANCELLED')),
    priority         smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 10 CHECK (max_attempts >= 1),
    -- When the task may run (the original delayed_dt): submission time, a requested time, or the retry backoff.
    run_at           timestamptz NOT NULL DEFAULT now(),
    acquired_at      timestamptz,
    -- Set by cancel on an ACQUIRED task: its failure ends CANCELLED instead of being retried.
    cancel_requested boolean     NOT NULL DEFAULT false,
    result           jsonb,
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT tasks_action_dedup_key_key UNIQUE (action, dedup_key)
);

-- Acquisition: an index scan in exactly the acquisition order, over acquirable rows only,
-- so its cost does not depend on how many finished rows the table holds.
CREATE INDEX tasks_acquirable_idx ON tasks (priority DESC, run_at, id)
    WHERE state IN ('SCHEDULED', 'ERROR');

-- Stale rescue: only ACQUIRED rows, oldest first.
CREATE INDEX tasks_acquired_idx ON tasks (acquired_at)
    WHERE state = 'ACQUIRED';

-- Cleaner: finished rows by state and age.
CREATE INDEX tasks_finished_idx ON tasks (state, finished_at)
    WHERE finished_at IS NOT NULL;

-- Listing by state/action is paginated by id.
CREATE INDEX tasks_state_action_id_idx ON tasks (state, action, id);

-- Wake the Acquirer when work becomes due now (new submissions; retries are due later and are found by its timer).
CREATE FUNCTION tasks_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tasks_due', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_due_insert
    AFTER INSERT ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify_due();

-- Retry delay after a failed attempt (1-based): min(base * 2^(attempt-1), max), spread by ±jitter.
-- Evaluated by the database, so every process agrees on the clock.
CREATE FUNCTION tasks_retry_delay(attempt integer, base_secs float8, max_secs float8, jitter float8)
    RETURNS interval LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => LEAST(max_secs, base_secs * power(2::float8, GREATEST(attempt, 1) - 1))
                                 * (1 - jitter + 2 * jitter * random()))
$$;

-- task.retry of one failed stage while another failed stage upstream of the same descendant still stands: the
-- descendant stays CANCELLED and names the other stage (whose retry resumes it), instead of waiting for ever in a
-- FAILED workflow the cleaner would never delete.
-- Stage timeouts: a stage's own `timeout_secs` (submitted, spawned or on_failure), as tasks have (p_timeouts; NULL:
-- the action's).
-- Spawned stages may depend on their siblings (`depends_on` in the spawn list): WAITING until those succeed.
CREATE OR REPLACE FUNCTION tasks_stage_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_failed_old boolean := OLD.state IN ('CRITICAL_ERROR', 'CANCELLED');
    v_failed_new boolean := NEW.state IN ('CRITICAL_ERROR', 'CANCELLED');
    v_ok integer := 0;
    v_fail integer := 0;
    v_spawned integer := 0;
    v_spawned_ids bigint[] := '{}';
    v_result jsonb;
    v_spawn jsonb;
    v_old_state text;
    v_new_state text;
    v_failures integer;
    v_on_failure jsonb;
    v_n integer;
BEGIN
    IF NEW.stage_on_failure THEN
        RETURN NULL;
    END IF;
    -- Accounted for by the statement that cascaded them.
    IF (v_failed_new AND NEW.error->>'code' = '-32012' AND OLD.state = 'WAITING')
       OR (v_failed_new AND NEW.error->>'code' = '-32013')
       OR (v_failed_old AND NOT v_failed_new AND OLD.error->>'code' = '-32012' AND NEW.error IS NULL) THEN
        RETURN NULL;
    END IF;

    IF NEW.state = 'SUCCESS' THEN
        v_ok := 1;
        v_result := NEW.result;
        -- Fan-out: {"result": ..., "spawn": [stage, ...]}; children get the parent's "result".
        IF jsonb_typeof(v_result) = 'object' AND jsonb_typeof(v_result->'spawn') = 'array' THEN
            v_spawn := v_result->'spawn';
            v_result := v_result->'result';
            WITH ins AS (
                INSERT INTO tasks (action, payload, dedup_key, state, priority, max_attempts, run_at,
                                   workflow_id, stage, pending_parents, timeout_secs)
                SELECT e->>'action',
                       workflows_parents_meta(COALESCE(e->'payload', '{}'::jsonb), NEW.stage, v_result),
                       'wf:' || NEW.workflow_id || ':' || NEW.stage || '/' || (e->>'name'),
                       CASE WHEN s.n = 0 THEN 'SCHEDULED' ELSE 'WAITING' END,
                       COALESCE((e->>'priority')::int2, NEW.priority),
                       COALESCE((e->>'max_attempts')::int4, 10),
                       now() + make_interval(secs => COALESCE((e->>'delay_secs')::float8, 0)),
                       NEW.workflow_id, NEW.stage || '/' || (e->>'name'), s.n, (e->>'timeout_secs')::float8
                FROM jsonb_array_elements(v_spawn) e
                -- Siblings it depends on (checked by the ResultSink: in the list, no cycle), each once.
                CROSS JOIN LATERAL (
                    SELECT count(DISTINCT d)::int AS n FROM jsonb_array_elements_text(COALESCE(e->'depends_on', '[]')) d
                ) s
                ON CONFLICT (workflow_id, stage) WHERE workflow_id IS NOT NULL DO NOTHING
                RETURNING id, stage
            ),
            to_siblings AS (
                INSERT INTO workflow_edges (parent_id, child_id, workflow_id)
                SELECT DISTINCT p.id, c.id, NEW.workflow_id
                FROM jsonb_array_elements(v_spawn) e
                JOIN ins c ON c.stage = NEW.stage || '/' || (e->>'name')
                CROSS JOIN LATERAL jsonb_array_elements_text(COALESCE(e->'depends_on', '[]')) dep(name)
                JOIN ins p ON p.stage = NEW.stage || '/' || dep.name
            ),
            -- A chord: every dependent of the spawning stage also waits for each child.
            to_dependents AS (
                INSERT INTO workflow_edges (parent_id, child_id, workflow_id)
                SELECT ins.id, d.child_id, NEW.workflow_id
                FROM ins CROSS JOIN workflow_edges d
                WHERE d.parent_id = NEW.id
            )
            SELECT COALESCE(array_agg(id), '{}'), count(*) INTO v_spawned_ids, v_spawned FROM ins;
        END IF;
        -- Promotion: one less pending parent (plus the spawned children); WAITING at 0 becomes SCHEDULED, here.
        -- Children locked in id order (deadlocks); a concurrent parent's update of the same child waits for this
        -- one and re-reads the committed row, so exactly one of them sees the count reach 0.
        WITH c AS (
            SELECT t.id FROM tasks t
            WHERE t.id IN (SELECT child_id FROM workflow_edges WHERE parent_id = NEW.id) AND t.pending_parents > 0
            ORDER BY t.id
            FOR UPDATE
        )
        UPDATE tasks t SET
            pending_parents = t.pending_parents - 1 + v_spawned,
            state = CASE WHEN t.state = 'WAITING' AND t.pending_parents - 1 + v_spawned = 0 THEN 'SCHEDULED'
                         ELSE t.state END,
            run_at = CASE WHEN t.state = 'WAITING' AND t.pending_parents - 1 + v_spawned = 0
                          THEN now() + (t.run_at - t.created_at) ELSE t.run_at END,
            payload = workflows_parents_meta(t.payload, NEW.stage, v_result),
            updated_at = now()
        FROM c
        WHERE t.id = c.id AND t.pending_parents > 0;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        -- The spawned stages' edge from this stage, after the promotion above (which must not count it: their
        -- pending parents are their siblings only, this stage being SUCCESS already).
        IF v_spawned > 0 THEN
            INSERT INTO workflow_edges (parent_id, child_id, workflow_id)
            SELECT NEW.id, c, NEW.workflow_id FROM unnest(v_spawned_ids) c;
            v_n := v_n + 1;
        END IF;
        IF v_n > 0 THEN
            PERFORM pg_notify('tasks_due', '');
        END IF;
    ELSIF v_failed_new AND NOT v_failed_old THEN
        v_fail := 1;
        BEGIN
            -- Cascade: every WAITING descendant becomes CANCELLED, naming this stage.
            WITH RECURSIVE d(id) AS (
                SELECT child_id FROM workflow_edges WHERE parent_id = NEW.id
                UNION
                SELECT e.child_id FROM workflow_edges e JOIN d ON e.parent_id = d.id
            ),
            c AS (
                SELECT t.id FROM tasks t WHERE t.id IN (SELECT id FROM d) AND t.state = 'WAITING'
                ORDER BY t.id
                FOR UPDATE
            )
            UPDATE tasks t SET
                state = 'CANCELLED',
                error = jsonb_build_object(
                    'code', -32012,
                    'message', 'cancelled: upstream stage ' || to_jsonb(NEW.stage)::text || ' ended ' || NEW.state,
                    'upstream', NEW.stage, 'upstream_id', NEW.id),
                finished_at = now(),
                updated_at = now()
            FROM c
            WHERE t.id = c.id AND t.state = 'WAITING';
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_fail := v_fail + v_n;
        END;
    ELSIF v_failed_old AND NOT v_failed_new THEN
        -- task.retry: the workflow resumes; what this stage's failure cancelled waits again, unless another failed
        -- stage upstream of it still stands: then it stays CANCELLED, now naming that stage, whose own retry
        -- resumes it. (Left WAITING, it would wait for a stage that is not coming, in a workflow never cleaned.)
        v_fail := -1;
        WITH resumed AS (
            SELECT t.id,
                   (WITH RECURSIVE a(id) AS (
                        SELECT e.parent_id FROM workflow_edges e WHERE e.child_id = t.id
                        UNION
                        SELECT e.parent_id FROM workflow_edges e JOIN a ON e.child_id = a.id
                    )
                    SELECT p.id FROM tasks p
                    WHERE p.id IN (SELECT id FROM a) AND p.id <> NEW.id
                      AND p.state IN ('CRITICAL_ERROR', 'CANCELLED') AND p.error->>'code' IS DISTINCT FROM '-32012'
                    ORDER BY p.id LIMIT 1) AS other
            FROM tasks t
            WHERE t.workflow_id = NEW.workflow_id AND t.state = 'CANCELLED'
              AND t.error->>'code' = '-32012' AND t.error->>'upstream_id' = NEW.id::text
            ORDER BY t.id
            FOR UPDATE OF t
        ),
        changed AS (
            UPDATE tasks t SET
                state = CASE WHEN r.other IS NULL THEN 'WAITING' ELSE t.state END,
                error = CASE WHEN r.other IS NULL THEN NULL
                             ELSE t.error || jsonb_build_object(
                                 'message', 'cancelled: upstream stage ' || to_jsonb(o.stage)::text || ' ended ' || o.state,
                                 'upstream', o.stage, 'upstream_id', o.id) END,
                finished_at = CASE WHEN r.other IS NULL THEN NULL ELSE t.finished_at END,
                updated_at = now()
            FROM resumed r LEFT JOIN tasks o ON o.id = r.other
            WHERE t.id = r.id
            RETURNING t.state
        )
        SELECT count(*) FILTER (WHERE state = 'WAITING') INTO v_n FROM changed;
        v_fail := v_fail - v_n;
    ELSE
        RETURN NULL;
    END IF;

    SELECT w.state INTO v_old_state FROM workflows w WHERE w.id = NEW.workflow_id FOR UPDATE;
    UPDATE workflows w SET
        stages_total = w.stages_total + v_spawned,
        stages_succeeded = w.stages_succeeded + v_ok,
        stages_failed = w.stages_failed + v_fail,
        -- A stage taken out of a failed state (task.retry) ends a cancellation too.
        cancel_requested = w.cancel_requested AND v_fail >= 0,
        state = CASE WHEN w.cancel_requested AND v_fail >= 0 THEN 'CANCELLED'
                     WHEN w.stages_failed + v_fail > 0 THEN 'FAILED'
                     WHEN w.stages_succeeded + v_ok >= w.stages_total + v_spawned THEN 'SUCCESS'
                     ELSE 'RUNNING' END,
        updated_at = now()
    WHERE w.id = NEW.workflow_id
    RETURNING w.state, w.on_failure INTO v_new_state, v_on_failure;
    IF v_new_state IS NULL THEN
        RETURN NULL; -- its workflow is being deleted
    END IF;
    IF v_new_state IS DISTINCT FROM v_old_state THEN
        UPDATE workflows w SET
            finished_at = CASE WHEN v_new_state = 'RUNNING' THEN NULL ELSE now() END,
            failures = w.failures + (v_new_state = 'FAILED' AND v_old_state = 'RUNNING')::int
        WHERE w.id = NEW.workflow_id
        RETURNING w.failures INTO v_failures;
        -- on_failure runs each time the workflow turns FAILED, and sees which stage failed and why.
        IF v_new_state = 'FAILED' AND v_old_state = 'RUNNING' AND v_on_failure IS NOT NULL THEN
            INSERT INTO tasks (action, payload, dedup_key, state, priority, max_attempts, workflow_id, stage,
                               pending_parents, stage_on_failure, timeout_secs)
            SELECT v_on_failure->>'action',
                   jsonb_set(COALESCE(v_on_failure->'payload', '{}'::jsonb), '{_meta}', jsonb_build_object('failed',
                       jsonb_build_object('stage', NEW.stage, 'task_id', NEW.id, 'state', NEW.state,
                                          'error', NEW.error))),
                   'wf:' || NEW.workflow_id || ':' || (v_on_failure->>'name') || '#' || v_failures,
                   'SCHEDULED',
                   COALESCE((v_on_failure->>'priority')::int2, 0),
                   COALESCE((v_on_failure->>'max_attempts')::int4, 10),
                   NEW.workflow_id,
                   (v_on_failure->>'name') || CASE WHEN v_failures > 1 THEN '#' || v_failures ELSE '' END,
                   0, true, (v_on_failure->>'timeout_secs')::float8;
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

DROP FUNCTION workflows_submit(text[], text[], jsonb[], int4[], text[], text[], jsonb[], int2[], int4[], float8[], int4[], int4[], int4[]);

CREATE FUNCTION workflows_submit(
    p_names text[], p_keys text[], p_on_failure jsonb[],
    p_stage_wf int4[], p_stage_names text[], p_actions text[], p_payloads jsonb[], p_priorities int2[],
    p_max_attempts int4[], p_delays float8[], p_parents int4[],
    p_edge_parent int4[], p_edge_child int4[], p_timeouts float8[] DEFAULT NULL)
    RETURNS TABLE (workflow_ord integer, workflow_id bigint, created boolean, stage text, task_id bigint)
    LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
DECLARE
    n integer := COALESCE(array_length(p_names, 1), 0);
    m integer := COALESCE(array_length(p_stage_names, 1), 0);
    v_counts integer[];
    v_ids bigint[] := '{}';
    v_created boolean[] := '{}';
    v_tids bigint[];
    v_id bigint;
BEGIN
    SELECT array_agg(COALESCE(c.n, 0) ORDER BY g.i) INTO v_counts
    FROM generate_series(1, n) g(i)
    LEFT JOIN (SELECT s.wf, count(*)::int AS n FROM unnest(p_stage_wf) s(wf) GROUP BY s.wf) c ON c.wf = g.i;
    FOR i IN 1 .. n LOOP
        v_id := NULL;
        IF p_keys[i] IS NOT NULL THEN
            SELECT w.id INTO v_id FROM workflows w WHERE w.dedup_key = p_keys[i];
        END IF;
        IF v_id IS NOT NULL THEN
            v_ids := v_ids || v_id;
            v_created := v_created || false;
            CONTINUE;
        END IF;
        INSERT INTO workflows (name, dedup_key, on_failure, stages_total)
        VALUES (p_names[i], p_keys[i], p_on_failure[i], v_counts[i])
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            -- A concurrent submitter inserted the key; ON CONFLICT waited for its commit, this new snapshot sees it.
            SELECT w.id INTO v_id FROM workflows w WHERE w.dedup_key = p_keys[i];
            v_ids := v_ids || v_id;
            v_created := v_created || false;
        ELSE
            v_ids := v_ids || v_id;
            v_created := v_created || true;
        END IF;
    END LOOP;

    -- Ids first, so the edges can name them in the same statement as the stages.
    v_tids := ARRAY(SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, m));
    INSERT INTO tasks (id, action, payload, dedup_key, state, priority, max_attempts, run_at,
                       workflow_id, stage, pending_parents, timeout_secs)
    OVERRIDING SYSTEM VALUE
    SELECT v_tids[s.ord], s.action, s.payload, 'wf:' || v_ids[s.wf] || ':' || s.name,
           CASE WHEN s.parents = 0 THEN 'SCHEDULED' ELSE 'WAITING' END,
           s.priority, s.max_attempts, now() + make_interval(secs => COALESCE(s.delay, 0)),
           v_ids[s.wf], s.name, s.parents, p_timeouts[s.ord]
    FROM unnest(p_stage_wf, p_stage_names, p_actions, p_payloads, p_priorities, p_max_attempts, p_delays, p_parents)
         WITH ORDINALITY AS s(wf, name, action, payload, priority, max_attempts, delay, parents, ord)
    WHERE v_created[s.wf];
    INSERT INTO workflow_edges (parent_id, child_id, workflow_id)
    SELECT v_tids[e.p], v_tids[e.c], v_ids[p_stage_wf[e.c]]
    FROM unnest(p_edge_parent, p_edge_child) AS e(p, c)
    WHERE v_created[p_stage_wf[e.c]];

    RETURN QUERY
    SELECT s.wf, v_ids[s.wf], true, s.name, v_tids[s.ord]
    FROM unnest(p_stage_wf, p_stage_names) WITH ORDINALITY AS s(wf, name, ord)
    WHERE v_created[s.wf]
    UNION ALL
    SELECT g.i, v_ids[g.i], false, t.stage, t.id
    FROM generate_series(1, n) g(i)
    JOIN tasks t ON t.workflow_id = v_ids[g.i]
    WHERE NOT v_created[g.i] AND t.stage_on_failure IS NOT TRUE;
END;
$$;

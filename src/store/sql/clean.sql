DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks
    WHERE state = ANY($1::text[]) AND finished_at IS NOT NULL
      AND finished_at < now() - make_interval(secs => $2)
      -- Workflow stages are deleted with their workflow, once all of it finished (clean_workflows).
      AND workflow_id IS NULL
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)

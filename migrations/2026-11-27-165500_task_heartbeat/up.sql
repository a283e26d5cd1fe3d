-- Sign of life of a running task: the worker running it refreshes heartbeat_at (batched, fenced on id, attempt and
-- state ACQUIRED) when its handler starts and then periodically. It belongs to the current attempt only while it is
-- not older than acquired_at (a later acquisition leaves the previous attempt's value behind, older than itself).
-- Not indexed: heartbeats rewrite no indexed column, so they can be HOT updates; stale rescue finds candidates
-- through tasks_acquired_idx (a heartbeat is never older than its acquisition).
ALTER TABLE tasks ADD COLUMN heartbeat_at timestamptz;

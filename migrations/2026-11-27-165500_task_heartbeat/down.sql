ALTER TABLE tasks DROP COLUMN heartbeat_at;

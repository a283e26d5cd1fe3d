DROP FUNCTION IF EXISTS scheduler.submit(text, jsonb, text, integer, integer, timestamptz, float8);
DROP SCHEMA IF EXISTS scheduler;
DROP FUNCTION IF EXISTS schedules_fire(text[], timestamptz[], timestamptz[], timestamptz[], int8[], text[], int4);
DROP TABLE IF EXISTS schedules;

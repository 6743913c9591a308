-- Named queries of `campaignq migrate` (consumer/migrate.py): the advisory lock, the history
-- of applied migrations, what PGMQ and pg_cron the server has, the worker role.
-- Statements composed with identifiers or literals (CREATE EXTENSION … VERSION, COMMENT ON
-- SCHEMA, CREATE ROLE) are built with psycopg.sql in migrate.py.

-- name: migrate_lock
-- Serialises concurrent `campaignq migrate` runs (the key is MIGRATION_LOCK_KEY).
SELECT pg_advisory_lock(%s);

-- name: migrate_unlock
SELECT pg_advisory_unlock(%s);

-- name: migrate_history_table
-- The record of applied migrations, made before the first one runs.
CREATE TABLE IF NOT EXISTS campaignq_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now());

-- name: pgmq_extension_version
-- What PGMQ this database has (migrate.py's decide_pgmq reads these five).
SELECT extversion FROM pg_extension WHERE extname = 'pgmq';

-- name: pgmq_schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq';

-- name: pgmq_missing_functions
-- Each entry is "signature|alternative signature…": missing when none of them exists.
SELECT split_part(f, '|', 1) FROM unnest(%s::text[]) AS f WHERE NOT EXISTS
       (SELECT 1 FROM unnest(string_to_array(f, '|')) AS s WHERE to_regprocedure(s) IS NOT NULL);

-- name: pgmq_schema_comment
-- The bundled SQL records its version here (BUNDLED_NOTE).
SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'pgmq';

-- name: pgmq_available_default
SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq';

-- name: migrate_history_exists
SELECT to_regclass('campaignq_schema_migrations');

-- name: migrate_history_checksums
SELECT version, checksum FROM campaignq_schema_migrations;

-- name: migrate_history_update
-- A superseded migration re-applied.
UPDATE campaignq_schema_migrations SET checksum = %s, applied_at = now() WHERE version = %s;

-- name: migrate_history_insert
INSERT INTO campaignq_schema_migrations (version, name, checksum) VALUES (%s, %s, %s);

-- name: migrate_history_versions
SELECT version FROM campaignq_schema_migrations;

-- name: migrate_current_user
SELECT current_user;

-- name: pg_cron_installed
-- `migrate --schedule-producer`: the producer as a pg_cron job.
SELECT 1 FROM pg_extension WHERE extname = 'pg_cron';

-- name: pg_cron_available
SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron';

-- name: pg_cron_create
CREATE EXTENSION IF NOT EXISTS pg_cron;

-- name: pg_cron_version
SELECT extversion FROM pg_extension WHERE extname = 'pg_cron';

-- name: pg_cron_schedule
SELECT cron.schedule(%s, %s, %s);

-- name: migrate_role_exists
-- `migrate --create-roles`: does the worker role exist already?
SELECT 1 FROM pg_roles WHERE rolname = %s;

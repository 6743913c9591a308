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

-- name: grant_reader_role
-- Issue 22: `campaignq_reader` may read our tables, views and the four queue tables, and
-- nothing else: no write, no DDL, and every transaction read-only by default as a second wall
-- (our functions run as their caller, so calling a writing one is refused by these grants).
-- Not the console's sessions (hashes of live cookies) nor the migration history. Revoked
-- first, so re-running gives exactly this set; only on what is ours (see grant_worker_role).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel, c.relkind, c.relname, n.nspname
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                AND ((n.nspname = 'public' AND pg_has_role(c.relowner, 'USAGE'))
                     OR (n.nspname = 'pgmq' AND c.relname IN ('q_campaign_messages', 'a_campaign_messages',
                                                              'q_campaign_messages_dlq',
                                                              'a_campaign_messages_dlq')))
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM campaignq_reader',
                       CASE WHEN r.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.rel);
        IF r.relkind <> 'S' AND r.relname NOT IN ('campaignq_console_sessions', 'campaignq_schema_migrations') THEN
            EXECUTE format('GRANT SELECT ON TABLE %s TO campaignq_reader', r.rel);
        END IF;
    END LOOP;
END;
$$;
GRANT USAGE ON SCHEMA public, pgmq TO campaignq_reader;
ALTER ROLE campaignq_reader SET default_transaction_read_only = on;

-- name: grant_console_role
-- Issue 22: `campaignq serve` as `campaignq_console`: it reads what the pages show and does
-- only the console's actions — run status, weights, the shared AI budget, inbox pause and
-- connection state, opt-outs from the webhook, dead-letter replay, its audit and sessions.
-- It cannot write a message's text, parts, lead or run, nor a lead's name or phone, nor
-- delete business rows; column lists are the columns those actions' SQL sets. Revoked first
-- (idempotent), only on what is ours (see grant_worker_role).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel, c.relkind, c.relname
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                AND ((n.nspname = 'public' AND pg_has_role(c.relowner, 'USAGE'))
                     OR (n.nspname = 'pgmq' AND c.relname IN ('q_campaign_messages', 'a_campaign_messages',
                                                              'q_campaign_messages_dlq',
                                                              'a_campaign_messages_dlq')))
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM campaignq_console',
                       CASE WHEN r.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.rel);
        IF r.relkind <> 'S' AND r.relname <> 'campaignq_schema_migrations' THEN
            EXECUTE format('GRANT SELECT ON TABLE %s TO campaignq_console', r.rel);
        END IF;
    END LOOP;
END;
$$;
GRANT USAGE ON SCHEMA public, pgmq TO campaignq_console;
GRANT INSERT ON campaignq_console_audit TO campaignq_console;
GRANT INSERT, UPDATE, DELETE ON campaignq_console_sessions TO campaignq_console;
GRANT INSERT, UPDATE ON workspace_weights TO campaignq_console;
GRANT INSERT, UPDATE, DELETE ON rate_limits TO campaignq_console;
GRANT UPDATE (status, pause_reason, leads_processed, finished_at) ON campaign_runs TO campaignq_console;
GRANT UPDATE (paused_at, pause_reason, connection_state, connection_state_at) ON inboxes TO campaignq_console;
GRANT UPDATE (opted_out_at) ON leads TO campaignq_console;
GRANT UPDATE (status, retry_count, deferral_count, first_deferred_at, queued_at, finished_at, error_class,
              error_message, attempt_history, held_until, held_reason) ON campaign_messages TO campaignq_console;
-- replay: lock and archive dead letters, send their payloads back to the main queue
GRANT UPDATE, DELETE ON pgmq.q_campaign_messages_dlq TO campaignq_console;
GRANT INSERT ON pgmq.a_campaign_messages_dlq TO campaignq_console;
GRANT INSERT ON pgmq.q_campaign_messages TO campaignq_console;

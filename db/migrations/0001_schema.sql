-- 0001_schema: the contract's tables, statuses, indexes and the two PGMQ queues.
-- PGMQ itself is installed by `campaignq migrate` before this file runs (extension when the
-- server has it, else the SQL bundled in the `pgmq` Python package).

CREATE OR REPLACE FUNCTION campaignq_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE inboxes (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id  uuid NOT NULL,
    name          text NOT NULL,
    provider      text NOT NULL DEFAULT 'evolution' CHECK (provider IN ('evolution')),
    instance      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE leads (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id   uuid NOT NULL,
    name           text NOT NULL DEFAULT '',
    phone          text,
    custom_fields  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign_configs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id    uuid NOT NULL,
    name            text NOT NULL,
    ai_model        text NOT NULL,
    system_prompt   text NOT NULL DEFAULT '',
    inbox_id        uuid NOT NULL REFERENCES inboxes (id),
    split_messages  boolean NOT NULL DEFAULT false,
    max_parts       integer NOT NULL DEFAULT 3 CHECK (max_parts BETWEEN 1 AND 10),
    max_tokens      integer NOT NULL DEFAULT 1024 CHECK (max_tokens BETWEEN 16 AND 32000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign_runs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    config_id        uuid NOT NULL REFERENCES campaign_configs (id),
    status           text NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'running', 'paused', 'completed', 'cancelled')),
    leads_total      integer NOT NULL DEFAULT 0 CHECK (leads_total >= 0),
    leads_processed  integer NOT NULL DEFAULT 0 CHECK (leads_processed >= 0),
    started_at       timestamptz,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign_messages (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id             uuid NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
    lead_id            uuid NOT NULL REFERENCES leads (id),
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'queued', 'generating', 'sending', 'sent', 'failed', 'skipped')),
    scheduled_at       timestamptz NOT NULL DEFAULT now(),
    retry_count        integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    error_message      text,
    generated_message  text,
    parts              jsonb CHECK (parts IS NULL OR jsonb_typeof(parts) = 'array'),
    parts_sent         integer NOT NULL DEFAULT 0 CHECK (parts_sent >= 0),
    ai_tokens_used     integer,
    ai_ms              integer,
    split_ms           integer,
    send_ms            integer,
    sent_at            timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- beyond the contract (all defaulted): why and how the message moved
    error_class        text,
    deferral_count     integer NOT NULL DEFAULT 0 CHECK (deferral_count >= 0),
    first_deferred_at  timestamptz,
    attempt_history    jsonb NOT NULL DEFAULT '[]'::jsonb,
    ai_prompt_tokens   integer,
    ai_completion_tokens integer,
    ai_cost_usd        numeric(12, 6),
    queued_at          timestamptz,
    finished_at        timestamptz,
    CHECK (parts IS NULL OR parts_sent <= jsonb_array_length(parts))
);

CREATE TRIGGER inboxes_touch BEFORE UPDATE ON inboxes
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();
CREATE TRIGGER leads_touch BEFORE UPDATE ON leads
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();
CREATE TRIGGER campaign_configs_touch BEFORE UPDATE ON campaign_configs
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();
CREATE TRIGGER campaign_runs_touch BEFORE UPDATE ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();
CREATE TRIGGER campaign_messages_touch BEFORE UPDATE ON campaign_messages
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();

-- A run that starts running without a start time gets one (the audit's runs carry it).
CREATE OR REPLACE FUNCTION campaignq_stamp_run_started() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'running' AND NEW.started_at IS NULL THEN
        NEW.started_at := now();
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER campaign_runs_stamp_started BEFORE INSERT OR UPDATE OF status ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION campaignq_stamp_run_started();

-- Audit problems 4 and 12: the producer's selection and its stale sweep both walk only
-- pending rows of running runs, per run, in scheduled_at order; the sweep's range ends
-- at the first row newer than the stale window, so it costs one index probe per running
-- run when nothing is stale.
CREATE INDEX campaign_messages_pending_due_idx
    ON campaign_messages (run_id, status, scheduled_at) WHERE status = 'pending';
CREATE INDEX campaign_runs_running_idx
    ON campaign_runs (id, status) WHERE status = 'running';
-- finalize_campaign_run_if_complete asks "is anything of this run still moving?": pending
-- rows through campaign_messages_pending_due_idx, in-flight rows through this one.
CREATE INDEX campaign_messages_run_in_flight_idx
    ON campaign_messages (run_id) WHERE status IN ('queued', 'generating', 'sending');
-- Foreign-key cascades and per-run progress views.
CREATE INDEX campaign_messages_run_idx ON campaign_messages (run_id);
CREATE INDEX campaign_messages_lead_idx ON campaign_messages (lead_id);
CREATE INDEX campaign_messages_finished_idx
    ON campaign_messages (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX campaign_configs_inbox_idx ON campaign_configs (inbox_id);
CREATE INDEX campaign_runs_config_idx ON campaign_runs (config_id);

SELECT pgmq.create('campaign_messages');
SELECT pgmq.create('campaign_messages_dlq');

-- Every read is an UPDATE and every archive a DELETE: vacuum the hot queue table early.
ALTER TABLE pgmq.q_campaign_messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

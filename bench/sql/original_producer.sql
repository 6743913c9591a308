-- The ORIGINAL system's selection, reproduced for bench/producer.py (never used by campaignq).
--
-- Source: the original system's audit (Portuguese, kept outside this repository), section 1.1
-- ("create_atomic_message_selection.sql:16-25", function get_and_lock_campaign_messages),
-- section 1.3 (the "too old" sweep in campaign-process-queue/index.ts:394-421), section 7.1
-- and 7.2 ("Índices Atuais": the indexes the old system had) and section 2.3 (batch_size
-- validated 1..100). Table names are already ours: the old system used the same ones.
--
-- What is verbatim and what is reconstructed:
--   * verbatim: the UPDATE … FROM campaign_runs JOIN campaign_configs … WHERE block
--     (lines 16-25 as quoted), the sweep's filters and its error message, the four indexes.
--   * reconstructed: the audit quotes neither the function header nor how it honours the
--     batch size (an UPDATE has no LIMIT). We use the usual Supabase idiom: an extra
--     `cm.id IN (SELECT … ORDER BY scheduled_at LIMIT p_batch_size FOR UPDATE SKIP LOCKED)`
--     with the same filters, and RETURNING what the Edge Function read (message, run and
--     config fields: that is why it joined campaign_configs at all).
--   * translated: the sweep was a supabase-js builder; this is the SQL it stands for,
--     `run_id IN (SELECT id FROM campaign_runs WHERE status = 'running')`.
-- The Edge Function ran the sweep and then the selection on EVERY invocation, each as its
-- own statement; bench/producer.py does the same per batch.

-- name: original_indexes
-- "Índices Atuais" of sections 1.1, 7.1 and 7.2: what the old system had besides primary
-- keys (foreign keys create no index in PostgreSQL).
CREATE INDEX idx_campaign_messages_run_status
    ON campaign_messages (run_id, status);
CREATE INDEX idx_campaign_messages_status_scheduled
    ON campaign_messages (status, scheduled_at) WHERE status = 'pending';
CREATE INDEX idx_campaign_runs_config_status
    ON campaign_runs (config_id, status) WHERE status = 'running';
CREATE INDEX idx_campaign_runs_status
    ON campaign_runs (status) WHERE status = 'running';

-- name: original_function
CREATE OR REPLACE FUNCTION get_and_lock_campaign_messages(
    p_batch_size integer,
    p_one_hour_ago timestamptz)
RETURNS TABLE (
    id uuid, run_id uuid, lead_id uuid, scheduled_at timestamptz, retry_count integer,
    config_id uuid, workspace_id uuid, ai_model text, system_prompt text, inbox_id uuid,
    split_messages boolean)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE campaign_messages cm
    SET status = 'generating'
    FROM campaign_runs cr
    JOIN campaign_configs cc ON cc.id = cr.config_id
    WHERE cm.run_id = cr.id
      AND cm.status = 'pending'
      AND cr.status = 'running'
      AND cm.scheduled_at <= NOW()
      AND cm.scheduled_at >= p_one_hour_ago
      -- reconstructed: the batch limit (see the header)
      AND cm.id IN (
            SELECT m.id
              FROM campaign_messages m
              JOIN campaign_runs r ON r.id = m.run_id
             WHERE m.status = 'pending'
               AND r.status = 'running'
               AND m.scheduled_at <= NOW()
               AND m.scheduled_at >= p_one_hour_ago
             ORDER BY m.scheduled_at
             LIMIT p_batch_size
               FOR UPDATE OF m SKIP LOCKED)
    RETURNING cm.id, cm.run_id, cm.lead_id, cm.scheduled_at, cm.retry_count,
              cc.id, cc.workspace_id, cc.ai_model, cc.system_prompt, cc.inbox_id,
              cc.split_messages;
END;
$$;

-- name: original_stale_sweep
UPDATE campaign_messages
   SET status = 'skipped',
       error_message = 'Mensagem agendada há mais de 1 hora - muito antiga para processar'
 WHERE status = 'pending'
   AND run_id IN (SELECT id FROM campaign_runs WHERE status = 'running')
   AND scheduled_at < %(one_hour_ago)s;

-- name: original_select
-- The Edge Function read these rows back; counting them on the server instead keeps the
-- comparison about the database (ours returns a single integer too).
SELECT count(*)
  FROM get_and_lock_campaign_messages(%(batch_size)s::integer, %(one_hour_ago)s::timestamptz);

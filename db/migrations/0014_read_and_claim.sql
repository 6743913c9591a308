-- 0014_read_and_claim (issue 15): less PostgreSQL work per message on the hot path.
--
-- 1. One statement per batch instead of two: `campaignq_read_and_claim` reads from PGMQ and
--    claims the batch's rows with their context, as `read_messages` + `claim_batch`
--    (db/queries.sql) did in two round trips. The claim runs after the read in the same
--    transaction, with a snapshot taken after it (as the second statement's was), so what it
--    returns is what `claim_batch` returned. All or nothing: a failure leaves the messages
--    unread (visible at once), where a failed second statement used to leave them invisible
--    until their visibility timeout.
-- 2. Triggers that only do something in rare cases say so in a WHEN clause, which the server
--    evaluates without calling PL/pgSQL: `updated_at` is touched only by an UPDATE that did
--    not set it itself (the hot path's functions set it in the same UPDATE), and an uncertain
--    part is settled only when the row has one. Same effect on every UPDATE as before.

-- --- triggers ------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS campaign_messages_touch ON campaign_messages;
CREATE TRIGGER campaign_messages_touch BEFORE UPDATE ON campaign_messages
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION campaignq_touch_updated_at();

DROP TRIGGER IF EXISTS campaign_runs_touch ON campaign_runs;
CREATE TRIGGER campaign_runs_touch BEFORE UPDATE ON campaign_runs
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION campaignq_touch_updated_at();

-- 0007's settle: clears the uncertain part once the acknowledged count passes it.
DROP TRIGGER IF EXISTS campaign_messages_settle_uncertain ON campaign_messages;
CREATE TRIGGER campaign_messages_settle_uncertain BEFORE UPDATE OF parts_sent ON campaign_messages
    FOR EACH ROW WHEN (NEW.uncertain_part IS NOT NULL AND NEW.parts_sent > NEW.uncertain_part)
    EXECUTE FUNCTION campaignq_settle_uncertain_part();

-- --- read and claim ------------------------------------------------------------------------

-- A payload the claim may trust: a JSON object with "v": 1 and the three ids as canonical
-- uuid strings. Every payload this accepts, the consumer's parser accepts too; one it refuses
-- is not claimed here (the consumer parses it: invalid -> dead letter, valid in another
-- spelling -> claimed with `claim_batch`).
CREATE OR REPLACE FUNCTION campaignq_payload_ok(p_message jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_typeof(p_message) = 'object'
       AND jsonb_typeof(p_message -> 'v') = 'number' AND (p_message ->> 'v') = '1'
       AND jsonb_typeof(p_message -> 'campaign_message_id') = 'string'
       AND jsonb_typeof(p_message -> 'run_id') = 'string'
       AND jsonb_typeof(p_message -> 'lead_id') = 'string'
       AND (p_message ->> 'campaign_message_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
       AND (p_message ->> 'run_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
       AND (p_message ->> 'lead_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
$$;

-- Read up to p_qty messages (visibility timeout p_vt_s) and claim their rows: one row per
-- message read, in read order, with the queue columns, `payload_ok`, and the columns of
-- `claim_batch` (db/queries.sql; same rules, same meaning). A message whose payload is not
-- `payload_ok` is returned with found = claimed = false and nothing else.
CREATE OR REPLACE FUNCTION campaignq_read_and_claim(p_qty integer, p_vt_s integer, p_cached_config_ids uuid[])
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    payload_ok boolean, found boolean, claimed boolean, previous_status text, run_status text,
    run_id uuid, lead_id uuid, retry_count integer, deferral_count integer,
    first_deferred_at timestamptz, generated_message text, parts jsonb, parts_sent integer,
    uncertain_part integer, uncertain_since timestamptz, last_progress_at timestamptz,
    attempt_history jsonb, lead_name text, phone text, custom_fields jsonb, config_id uuid,
    workspace_id uuid, ai_model text, system_prompt text, split_messages boolean, max_parts integer,
    max_tokens integer, inbox_id uuid, instance text, uncertain_send_policy text,
    opted_out_at timestamptz, lead_timezone text, config_timezone text, send_window_start time,
    send_window_end time, safety_inbox_id uuid, max_sends_per_minute integer, daily_send_cap integer,
    inbox_paused_at timestamptz, inbox_pause_reason text, warmup_started_at timestamptz,
    warmup_first_day_cap integer, warmup_daily_growth double precision, send_slot_wait_s double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids  bigint[];
    v_cts  integer[];
    v_enq  timestamptz[];
    v_vts  timestamptz[];
    v_msgs jsonb[];
BEGIN
    SELECT coalesce(array_agg(r.msg_id ORDER BY r.ord), '{}'), coalesce(array_agg(r.read_ct ORDER BY r.ord), '{}'),
           coalesce(array_agg(r.enqueued_at ORDER BY r.ord), '{}'), coalesce(array_agg(r.vt ORDER BY r.ord), '{}'),
           coalesce(array_agg(r.message ORDER BY r.ord), '{}')
      INTO v_ids, v_cts, v_enq, v_vts, v_msgs
      FROM (SELECT q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, row_number() OVER () AS ord
              FROM pgmq.read(queue_name => 'campaign_messages', vt => p_vt_s, qty => p_qty) AS q) r;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    -- claim_batch's statement (db/queries.sql), on the messages just read: this statement's
    -- snapshot is taken now, after the read, and its main SELECT sees the rows as they were
    -- before its own UPDATE (the "previous_status" the consumer needs).
    RETURN QUERY
    WITH batch AS (
        SELECT b.msg_id, b.read_ct, b.enqueued_at, b.vt, b.message, b.ord,
               campaignq_payload_ok(b.message) AS payload_ok
          FROM unnest(v_ids, v_cts, v_enq, v_vts, v_msgs)
               WITH ORDINALITY AS b(msg_id, read_ct, enqueued_at, vt, message, ord)
    ), ids AS (
        SELECT b.*,
               CASE WHEN b.payload_ok THEN (b.message ->> 'campaign_message_id')::uuid END AS message_id,
               CASE WHEN b.payload_ok THEN (b.message ->> 'run_id')::uuid END AS p_run_id,
               CASE WHEN b.payload_ok THEN (b.message ->> 'lead_id')::uuid END AS p_lead_id
          FROM batch b
    ), claimed AS (
        UPDATE campaign_messages m
           SET status = CASE WHEN m.parts IS NULL THEN 'generating' ELSE 'sending' END,
               retry_count = m.retry_count + CASE WHEN m.status IN ('generating', 'sending') THEN 1 ELSE 0 END,
               attempt_history = CASE WHEN m.status IN ('generating', 'sending')
                   THEN campaignq_history_append(m.attempt_history, jsonb_build_object(
                            'at', now(), 'attempt', m.retry_count + 1, 'burned', true,
                            'error_class', 'crashed', 'stage', m.status,
                            'error', 'the previous holder stopped mid-message (crash or lost lease)'))
                   ELSE m.attempt_history END,
               updated_at = now()
          FROM ids b, campaign_runs r
         WHERE b.payload_ok
           AND m.id = b.message_id
           AND m.run_id = b.p_run_id
           AND m.lead_id = b.p_lead_id
           AND r.id = m.run_id
           AND r.status = 'running'
           AND m.status IN ('queued', 'generating', 'sending')
        RETURNING m.id, m.retry_count, m.attempt_history
    )
    SELECT b.msg_id,
           b.read_ct,
           b.enqueued_at,
           b.vt,
           b.message,
           b.payload_ok,
           m.id IS NOT NULL,
           c.id IS NOT NULL,
           m.status::text,
           r.status::text,
           m.run_id,
           m.lead_id,
           coalesce(c.retry_count, m.retry_count)::integer,
           m.deferral_count::integer,
           m.first_deferred_at,
           m.generated_message::text,
           m.parts,
           m.parts_sent::integer,
           m.uncertain_part::integer,
           m.uncertain_since,
           m.updated_at,
           coalesce(c.attempt_history, m.attempt_history),
           l.name::text,
           l.phone::text,
           l.custom_fields,
           r.config_id,
           cf.workspace_id,
           cf.ai_model::text,
           cf.system_prompt::text,
           cf.split_messages,
           cf.max_parts::integer,
           cf.max_tokens::integer,
           cf.inbox_id,
           i.instance::text,
           i.uncertain_send_policy::text,
           l.opted_out_at,
           l.timezone::text,
           sc.timezone::text,
           sc.send_window_start,
           sc.send_window_end,
           sc.inbox_id,
           si.max_sends_per_minute::integer,
           si.daily_send_cap::integer,
           si.paused_at,
           si.pause_reason::text,
           si.warmup_started_at,
           si.warmup_first_day_cap::integer,
           si.warmup_daily_growth::double precision,
           extract(epoch FROM m.send_slot_at - clock_timestamp())::double precision
      FROM ids b
      LEFT JOIN campaign_messages m ON m.id = b.message_id
      LEFT JOIN claimed c ON c.id = b.message_id
      LEFT JOIN campaign_runs r ON r.id = m.run_id
      LEFT JOIN leads l ON l.id = m.lead_id
      LEFT JOIN campaign_configs cf
             ON cf.id = r.config_id AND NOT (cf.id = ANY (p_cached_config_ids))
      LEFT JOIN inboxes i ON i.id = cf.inbox_id
      LEFT JOIN campaign_configs sc ON sc.id = r.config_id   -- issue 13
      LEFT JOIN inboxes si ON si.id = sc.inbox_id            -- issue 13
     ORDER BY b.ord;
END;
$$;

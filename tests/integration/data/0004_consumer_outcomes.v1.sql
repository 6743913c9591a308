-- 0004_consumer_outcomes: every state change a consumer makes, as one function each.
--
-- Why functions: each outcome changes the queue and the row in ONE transaction and ONE
-- round trip, and every queue operation is guarded by the (msg_id, read_ct) lease the
-- worker read. PGMQ has no receipt handle (archive/delete/set_vt match msg_id only), so a
-- worker whose visibility timeout expired must not be able to ack or extend a message that
-- another worker now holds: every function below first touches the queue row WHERE
-- msg_id = p_msg_id AND read_ct = p_read_ct and does nothing else when that matches no row.
-- Row updates never touch a row already terminal (sent / failed / skipped).

-- Attempt history kept on the row (and copied into dead letters); bounded to the last 20.
CREATE OR REPLACE FUNCTION campaignq_history_append(p_history jsonb, p_entry jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_array_length(coalesce(p_history, '[]'::jsonb)) >= 20
                THEN (p_history - 0) || jsonb_build_array(p_entry)
                ELSE coalesce(p_history, '[]'::jsonb) || jsonb_build_array(p_entry) END;
$$;

-- Guarded archive: true when this lease still held the message and it is now archived.
CREATE OR REPLACE FUNCTION campaignq_archive_leased(p_msg_id bigint, p_read_ct integer)
RETURNS boolean
LANGUAGE sql AS $$
    WITH acked AS (
        DELETE FROM pgmq.q_campaign_messages
         WHERE msg_id = p_msg_id AND read_ct = p_read_ct
        RETURNING msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers
    ), archived AS (
        INSERT INTO pgmq.a_campaign_messages (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
        SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers FROM acked
        RETURNING msg_id
    )
    SELECT EXISTS (SELECT 1 FROM archived);
$$;

-- Heartbeat: push out the visibility timeout of every message still held; returns the
-- msg_ids still held (a missing one means that lease was lost).
CREATE OR REPLACE FUNCTION campaignq_extend_leases(p_msg_ids bigint[], p_read_cts integer[], p_vt_s integer)
RETURNS SETOF bigint
LANGUAGE sql AS $$
    UPDATE pgmq.q_campaign_messages q
       SET vt = clock_timestamp() + make_interval(secs => p_vt_s)
      FROM unnest(p_msg_ids, p_read_cts) AS lease(msg_id, read_ct)
     WHERE q.msg_id = lease.msg_id AND q.read_ct = lease.read_ct
    RETURNING q.msg_id;
$$;

-- Generated once: text and parts are stored before the first part is sent. False when the
-- lease is gone or another holder already stored a generation (never overwrite it).
CREATE OR REPLACE FUNCTION campaignq_store_generation(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_text text, p_parts jsonb,
    p_prompt_tokens integer, p_completion_tokens integer, p_cost_usd numeric,
    p_ai_ms integer, p_split_ms integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM pgmq.q_campaign_messages
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct
       FOR SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages m
       SET generated_message = p_text,
           parts = p_parts,
           parts_sent = 0,
           status = 'sending',
           ai_prompt_tokens = p_prompt_tokens,
           ai_completion_tokens = p_completion_tokens,
           ai_tokens_used = p_prompt_tokens + p_completion_tokens,
           ai_cost_usd = p_cost_usd,
           ai_ms = p_ai_ms,
           split_ms = p_split_ms
     WHERE m.id = p_message_id
       AND m.parts IS NULL
       AND m.status IN ('queued', 'generating', 'sending');
    RETURN FOUND;
END;
$$;

-- A part the gateway acknowledged is a fact whoever holds the lease now: record it
-- unconditionally and monotonically so no holder ever sends it again.
CREATE OR REPLACE FUNCTION campaignq_record_part_sent(p_message_id uuid, p_parts_sent integer)
RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign_messages
       SET parts_sent = greatest(parts_sent, p_parts_sent)
     WHERE id = p_message_id AND parts_sent < p_parts_sent;
$$;

-- Success: archive, row sent, run counter, run finalised — one transaction.
CREATE OR REPLACE FUNCTION campaignq_complete_sent(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid, p_send_ms integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run_id uuid;
BEGIN
    IF NOT campaignq_archive_leased(p_msg_id, p_read_ct) THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages m
       SET status = 'sent',
           sent_at = now(),
           finished_at = now(),
           parts_sent = coalesce(jsonb_array_length(m.parts), m.parts_sent),
           send_ms = coalesce(m.send_ms, 0) + p_send_ms,
           error_class = NULL,
           error_message = NULL
     WHERE m.id = p_message_id
       AND m.status NOT IN ('sent', 'failed', 'skipped')
    RETURNING m.run_id INTO v_run_id;
    IF v_run_id IS NOT NULL THEN
        UPDATE campaign_runs SET leads_processed = leads_processed + 1 WHERE id = v_run_id;
        PERFORM finalize_campaign_run_if_complete(v_run_id);
    END IF;
    RETURN true;
END;
$$;

-- Temporary error or deferral: the message becomes visible again after p_delay_s; the row
-- goes back to queued. Deferrals (not the message's fault) do not burn an attempt.
CREATE OR REPLACE FUNCTION campaignq_retry_later(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_delay_s double precision, p_burns_attempt boolean,
    p_error_class text, p_error text, p_stage text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgmq.q_campaign_messages
       SET vt = clock_timestamp() + make_interval(secs => greatest(p_delay_s, 0))
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages m
       SET status = 'queued',
           retry_count = m.retry_count + CASE WHEN p_burns_attempt THEN 1 ELSE 0 END,
           deferral_count = m.deferral_count + CASE WHEN p_burns_attempt THEN 0 ELSE 1 END,
           first_deferred_at = CASE WHEN p_burns_attempt THEN m.first_deferred_at
                                    ELSE coalesce(m.first_deferred_at, now()) END,
           error_class = p_error_class,
           error_message = left(p_error, 2000),
           attempt_history = campaignq_history_append(m.attempt_history, jsonb_build_object(
               'at', now(), 'attempt', m.retry_count + CASE WHEN p_burns_attempt THEN 1 ELSE 0 END,
               'burned', p_burns_attempt, 'error_class', p_error_class, 'error', left(p_error, 500),
               'stage', p_stage, 'retry_in_s', round(p_delay_s::numeric, 1)))
     WHERE m.id = p_message_id
       AND m.status NOT IN ('sent', 'failed', 'skipped');
    RETURN true;
END;
$$;

-- Dead letter: the queue message moves to campaign_messages_dlq with the reason and the
-- attempt history; the row (when there is one) becomes failed. Returns the DLQ msg_id, or
-- NULL when the lease was lost.
CREATE OR REPLACE FUNCTION campaignq_dead_letter(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_reason text, p_error_class text, p_error text, p_stage text, p_burns_attempt boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_message  jsonb;
    v_entry    jsonb;
    v_run_id   uuid;
    v_history  jsonb;
    v_attempts integer := 0;
    v_dlq_id   bigint;
BEGIN
    DELETE FROM pgmq.q_campaign_messages
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct
    RETURNING message INTO v_message;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_entry := jsonb_build_object('at', now(), 'burned', p_burns_attempt, 'error_class', p_error_class,
                                  'error', left(p_error, 500), 'stage', p_stage, 'outcome', 'dead_letter');
    IF p_message_id IS NOT NULL THEN
        UPDATE campaign_messages m
           SET status = 'failed',
               finished_at = now(),
               retry_count = m.retry_count + CASE WHEN p_burns_attempt THEN 1 ELSE 0 END,
               error_class = p_error_class,
               error_message = left(p_reason || ': ' || p_error, 2000),
               attempt_history = campaignq_history_append(m.attempt_history, v_entry || jsonb_build_object(
                   'attempt', m.retry_count + CASE WHEN p_burns_attempt THEN 1 ELSE 0 END))
         WHERE m.id = p_message_id
           AND m.status NOT IN ('sent', 'failed', 'skipped')
        RETURNING m.run_id, m.attempt_history, m.retry_count INTO v_run_id, v_history, v_attempts;
    END IF;
    SELECT pgmq.send('campaign_messages_dlq',
               (CASE WHEN jsonb_typeof(v_message) = 'object' THEN v_message
                     ELSE jsonb_build_object('original', v_message) END)
               || jsonb_build_object(
                    'reason', p_reason,
                    'error_class', p_error_class,
                    'error', left(p_error, 2000),
                    'attempts', coalesce(v_attempts, 0),
                    'failed_at', now(),
                    'history', coalesce(v_history, jsonb_build_array(v_entry)),
                    'source_msg_id', p_msg_id))
      INTO v_dlq_id;
    IF v_run_id IS NOT NULL THEN
        UPDATE campaign_runs SET leads_processed = leads_processed + 1 WHERE id = v_run_id;
        PERFORM finalize_campaign_run_if_complete(v_run_id);
    END IF;
    RETURN v_dlq_id;
END;
$$;

-- Run paused (or not started): row back to pending, queue message removed; the producer
-- queues it again when the run resumes. Generated text and acknowledged parts are kept.
CREATE OR REPLACE FUNCTION campaignq_release_to_pending(p_msg_id bigint, p_read_ct integer, p_message_id uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgmq.q_campaign_messages WHERE msg_id = p_msg_id AND read_ct = p_read_ct;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages
       SET status = 'pending', queued_at = NULL
     WHERE id = p_message_id AND status IN ('queued', 'generating', 'sending');
    RETURN true;
END;
$$;

-- Run cancelled (or already completed): row skipped, queue message archived.
CREATE OR REPLACE FUNCTION campaignq_skip(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid, p_error_class text, p_error text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run_id uuid;
BEGIN
    IF NOT campaignq_archive_leased(p_msg_id, p_read_ct) THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages
       SET status = 'skipped', finished_at = now(), error_class = p_error_class, error_message = p_error
     WHERE id = p_message_id AND status NOT IN ('sent', 'failed', 'skipped')
    RETURNING run_id INTO v_run_id;
    IF v_run_id IS NOT NULL THEN
        UPDATE campaign_runs SET leads_processed = leads_processed + 1 WHERE id = v_run_id;
    END IF;
    RETURN true;
END;
$$;

-- Graceful shutdown: give the message back at once without counting an attempt.
CREATE OR REPLACE FUNCTION campaignq_release_now(p_msg_id bigint, p_read_ct integer, p_message_id uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgmq.q_campaign_messages SET vt = clock_timestamp()
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages SET status = 'queued'
     WHERE id = p_message_id AND status IN ('generating', 'sending');
    RETURN true;
END;
$$;

-- 0005_operator_views: what an operator reads in psql (audit problems 9 and 10), and the SQL
-- behind `campaignq replay` and `campaignq prune`.
--
-- The views are what `campaignq stats` prints, column for column, so psql users and the CLI
-- never disagree. Each one is cheap enough to run by hand on a busy system:
--   * queue views scan the queue tables once (the same cost as pgmq.metrics(), no joins);
--   * run views aggregate one run at a time through campaign_messages_run_idx;
--   * workspace views walk only the last day of finished rows through
--     campaign_messages_finished_idx.

-- A uuid from untrusted text (a dead letter may carry any payload), NULL when it is not one,
-- so a malformed dead letter shows up in the views instead of breaking them.
CREATE OR REPLACE FUNCTION campaignq_try_uuid(p_text text)
RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_text ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN p_text::uuid END;
$$;

-- One row per queue. `in_flight` is every message read at least once and invisible now: held
-- by a consumer, or waiting out a retry / deferral delay (PGMQ cannot tell the two apart).
-- `delayed` was sent with a delay and never read. `dead_letters` (main queue row only) is the
-- depth of its DLQ; `archived_estimate` is the planner's row estimate of the archive table
-- (free to read, refreshed by autovacuum/ANALYZE), the number `campaignq prune` shrinks.
CREATE OR REPLACE VIEW campaignq_queue_overview AS
WITH main AS (
    SELECT count(*)                                              AS depth,
           count(*) FILTER (WHERE q.vt <= now())                 AS visible,
           count(*) FILTER (WHERE q.vt > now() AND q.read_ct > 0) AS in_flight,
           count(*) FILTER (WHERE q.vt > now() AND q.read_ct = 0) AS delayed,
           min(q.enqueued_at)                                    AS oldest_enqueued_at
      FROM pgmq.q_campaign_messages q
), dlq AS (
    SELECT count(*)                                              AS depth,
           count(*) FILTER (WHERE q.vt <= now())                 AS visible,
           count(*) FILTER (WHERE q.vt > now() AND q.read_ct > 0) AS in_flight,
           count(*) FILTER (WHERE q.vt > now() AND q.read_ct = 0) AS delayed,
           min(q.enqueued_at)                                    AS oldest_enqueued_at
      FROM pgmq.q_campaign_messages_dlq q
)
SELECT 'campaign_messages'::text AS queue_name,
       'main'::text AS role,
       main.depth,
       main.visible,
       main.in_flight,
       main.delayed,
       round(coalesce(extract(epoch FROM now() - main.oldest_enqueued_at), 0)::numeric, 1) AS oldest_age_s,
       dlq.depth AS dead_letters,
       (SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c
         WHERE c.oid = 'pgmq.a_campaign_messages'::regclass) AS archived_estimate
  FROM main, dlq
UNION ALL
SELECT 'campaign_messages_dlq'::text,
       'dead_letter'::text,
       dlq.depth,
       dlq.visible,
       dlq.in_flight,
       dlq.delayed,
       round(coalesce(extract(epoch FROM now() - dlq.oldest_enqueued_at), 0)::numeric, 1),
       NULL::bigint,
       (SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c
         WHERE c.oid = 'pgmq.a_campaign_messages_dlq'::regclass)
  FROM dlq;

-- Per run: where its messages are, what they cost and how long each stage took.
-- `retries` sums retry_count: attempts that failed and counted toward max_attempts (a message
-- sent at its second attempt adds 1; one dead-lettered after three timeouts adds 3).
-- `cost_usd` sums the stored ai_cost_usd (the provider's reported cost, else the price table
-- at generation time); `unpriced_*` are the rows with tokens but no stored cost, which
-- `campaignq stats` prices with the current table. Percentiles are of rows that have the
-- timing (ai_ms/split_ms are NULL until generated; split_ms stays NULL when not split).
CREATE OR REPLACE VIEW campaignq_run_progress AS
SELECT r.id            AS run_id,
       c.workspace_id,
       r.config_id,
       c.name          AS campaign,
       c.ai_model,
       r.status        AS run_status,
       r.leads_total,
       r.leads_processed,
       s.messages,
       s.pending,
       s.queued,
       s.in_progress,
       s.sent,
       s.failed,
       s.skipped,
       CASE WHEN s.messages > 0
            THEN round(100.0 * (s.sent + s.failed + s.skipped) / s.messages, 1) ELSE 0 END AS done_pct,
       s.retries,
       s.retried_messages,
       s.deferrals,
       s.tokens,
       s.prompt_tokens,
       s.completion_tokens,
       s.cost_usd,
       s.unpriced_messages,
       s.unpriced_prompt_tokens,
       s.unpriced_completion_tokens,
       s.ai_ms_p50,
       s.ai_ms_p95,
       s.split_ms_p50,
       s.split_ms_p95,
       s.send_ms_p50,
       s.send_ms_p95,
       s.sent_last_minute,
       CASE WHEN s.sent > 0 AND s.last_sent_at > r.started_at
            THEN round((s.sent / (extract(epoch FROM s.last_sent_at - r.started_at) / 60))::numeric, 1)
       END AS sent_per_minute,
       r.started_at,
       r.finished_at,
       s.last_sent_at
  FROM campaign_runs r
  JOIN campaign_configs c ON c.id = r.config_id
 CROSS JOIN LATERAL (
        SELECT count(*)                                                          AS messages,
               count(*) FILTER (WHERE m.status = 'pending')                      AS pending,
               count(*) FILTER (WHERE m.status = 'queued')                       AS queued,
               count(*) FILTER (WHERE m.status IN ('generating', 'sending'))     AS in_progress,
               count(*) FILTER (WHERE m.status = 'sent')                         AS sent,
               count(*) FILTER (WHERE m.status = 'failed')                       AS failed,
               count(*) FILTER (WHERE m.status = 'skipped')                      AS skipped,
               coalesce(sum(m.retry_count), 0)::bigint                           AS retries,
               count(*) FILTER (WHERE m.retry_count > 0)                         AS retried_messages,
               coalesce(sum(m.deferral_count), 0)::bigint                        AS deferrals,
               coalesce(sum(m.ai_tokens_used), 0)::bigint                        AS tokens,
               coalesce(sum(m.ai_prompt_tokens), 0)::bigint                      AS prompt_tokens,
               coalesce(sum(m.ai_completion_tokens), 0)::bigint                  AS completion_tokens,
               round(coalesce(sum(m.ai_cost_usd), 0), 6)                         AS cost_usd,
               count(*) FILTER (WHERE m.ai_cost_usd IS NULL AND m.ai_tokens_used IS NOT NULL)
                                                                                 AS unpriced_messages,
               coalesce(sum(m.ai_prompt_tokens) FILTER (WHERE m.ai_cost_usd IS NULL), 0)::bigint
                                                                                 AS unpriced_prompt_tokens,
               coalesce(sum(m.ai_completion_tokens) FILTER (WHERE m.ai_cost_usd IS NULL), 0)::bigint
                                                                                 AS unpriced_completion_tokens,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY m.ai_ms)              AS ai_ms_p50,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY m.ai_ms)             AS ai_ms_p95,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY m.split_ms)           AS split_ms_p50,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY m.split_ms)          AS split_ms_p95,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY m.send_ms)            AS send_ms_p50,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY m.send_ms)           AS send_ms_p95,
               count(*) FILTER (WHERE m.sent_at > now() - interval '1 minute')   AS sent_last_minute,
               max(m.sent_at)                                                    AS last_sent_at
          FROM campaign_messages m
         WHERE m.run_id = r.id
       ) s;

-- Per workspace, over the messages that FINISHED (sent, failed or skipped) in the last hour
-- and the last day: a workspace with nothing finished in a period has no row for it.
-- `timeouts` / `rate_limited` count attempts (from attempt_history) that ended that way.
CREATE OR REPLACE VIEW campaignq_workspace_totals AS
SELECT c.workspace_id,
       p.period,
       count(*)                                          AS finished,
       count(*) FILTER (WHERE m.status = 'sent')         AS sent,
       count(*) FILTER (WHERE m.status = 'failed')       AS failed,
       count(*) FILTER (WHERE m.status = 'skipped')      AS skipped,
       coalesce(sum(m.retry_count), 0)::bigint           AS retries,
       coalesce(sum(h.timeouts), 0)::bigint              AS timeouts,
       coalesce(sum(h.rate_limited), 0)::bigint          AS rate_limited,
       coalesce(sum(m.ai_tokens_used), 0)::bigint        AS tokens,
       round(coalesce(sum(m.ai_cost_usd), 0), 6)         AS cost_usd,
       count(*) FILTER (WHERE m.ai_cost_usd IS NULL AND m.ai_tokens_used IS NOT NULL) AS unpriced_messages,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY m.ai_ms)    AS ai_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY m.ai_ms)   AS ai_ms_p95,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY m.send_ms)  AS send_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY m.send_ms) AS send_ms_p95,
       round(count(*) FILTER (WHERE m.status = 'sent') / (extract(epoch FROM p.length) / 60), 2)
                                                         AS sent_per_minute
  FROM (VALUES ('1h'::text, interval '1 hour'), ('24h'::text, interval '1 day')) AS p(period, length)
  JOIN campaign_messages m ON m.finished_at >= now() - p.length
  JOIN campaign_runs r ON r.id = m.run_id
  JOIN campaign_configs c ON c.id = r.config_id
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e->>'error_class' = 'timeout')      AS timeouts,
               count(*) FILTER (WHERE e->>'error_class' = 'rate_limited') AS rate_limited
          FROM jsonb_array_elements(m.attempt_history) AS e
       ) h
 GROUP BY c.workspace_id, p.period, p.length;

-- Every dead letter, its payload taken apart. `dead_lettered_at` is the DLQ enqueue time
-- (the same transaction that failed the row); `campaignq replay --older-than` filters on it.
CREATE OR REPLACE VIEW campaignq_dead_letters AS
SELECT d.msg_id                                                  AS dlq_msg_id,
       campaignq_try_uuid(d.message->>'campaign_message_id')     AS campaign_message_id,
       campaignq_try_uuid(d.message->>'run_id')                  AS run_id,
       campaignq_try_uuid(d.message->>'lead_id')                 AS lead_id,
       coalesce(d.message->>'reason', 'unknown')                 AS reason,
       d.message->>'error_class'                                 AS error_class,
       d.message->>'error'                                       AS error,
       CASE WHEN jsonb_typeof(d.message->'attempts') = 'number'
            THEN (d.message->>'attempts')::numeric::integer END  AS attempts,
       d.enqueued_at                                             AS dead_lettered_at,
       d.message
  FROM pgmq.q_campaign_messages_dlq d;

CREATE OR REPLACE VIEW campaignq_dead_letters_by_reason AS
SELECT reason,
       coalesce(error_class, 'unknown')  AS error_class,
       count(*)                          AS dead_letters,
       count(DISTINCT run_id)            AS runs,
       min(dead_lettered_at)             AS oldest_at,
       max(dead_lettered_at)             AS newest_at
  FROM campaignq_dead_letters
 GROUP BY reason, coalesce(error_class, 'unknown');

CREATE OR REPLACE VIEW campaignq_dead_letters_by_run AS
SELECT d.run_id,
       c.workspace_id,
       d.reason,
       count(*)               AS dead_letters,
       min(d.dead_lettered_at) AS oldest_at,
       max(d.dead_lettered_at) AS newest_at
  FROM campaignq_dead_letters d
  LEFT JOIN campaign_runs r ON r.id = d.run_id
  LEFT JOIN campaign_configs c ON c.id = r.config_id
 GROUP BY d.run_id, c.workspace_id, d.reason;

-- `campaignq replay`, one batch = one transaction: moves matching dead letters back to the
-- main queue and their rows back to `queued` with attempts reset. Generated text, parts and
-- parts_sent are kept, so nothing is generated again and no acknowledged part is resent.
--
-- Never duplicates: the dead letters are taken FOR UPDATE SKIP LOCKED (two replays share
-- nothing), their rows FOR UPDATE (the producer skips a locked row and re-checks it), and a
-- letter leaves the DLQ in the same transaction that queues its row. Each letter ends as:
--   replayed            row queued again, a fresh contract payload sent, letter archived
--   archived_sent       row already sent: never resent, letter archived
--   archived_missing    no such row (deleted, or a payload without a usable id): archived
--   archived_in_flight  row already queued / being processed by a live message: archived
--   kept_run_<status>   the run is paused, scheduled or cancelled: letter left in the DLQ
--                       (resume the run, then replay again)
-- A completed run is reopened (back to `running`) and its leads_processed given back, so
-- finalize_campaign_run_if_complete completes it again once the replayed rows settle.
-- Rows are paged by DLQ msg_id: call again with p_after_msg_id = the last id returned.
CREATE OR REPLACE FUNCTION campaignq_replay_dead_letters(
    p_limit        integer,
    p_after_msg_id bigint   DEFAULT 0,
    p_run_id       uuid     DEFAULT NULL,
    p_reason       text     DEFAULT NULL,
    p_older_than   interval DEFAULT NULL,
    p_newer_than   interval DEFAULT NULL)
RETURNS TABLE (dlq_msg_id bigint, campaign_message_id uuid, run_id uuid, reason text,
               previous_status text, action text)
LANGUAGE plpgsql AS $$
DECLARE
    v_letter    record;
    v_id        uuid;
    v_row_id    uuid;
    v_run_id    uuid;
    v_lead_id   uuid;
    v_status    text;
    v_run_state text;
    v_reason    text;
    v_action    text;
    v_archive   bigint[]  := '{}';
    v_payloads  jsonb[]   := '{}';
    v_runs      uuid[]    := '{}';
    v_counted   boolean[] := '{}';
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'campaignq_replay_dead_letters: p_limit must be a positive integer'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR v_letter IN
        SELECT d.msg_id, d.message
          FROM pgmq.q_campaign_messages_dlq d
         WHERE d.msg_id > coalesce(p_after_msg_id, 0)
           AND (p_run_id IS NULL OR campaignq_try_uuid(d.message->>'run_id') = p_run_id)
           AND (p_reason IS NULL OR coalesce(d.message->>'reason', 'unknown') = p_reason)
           AND (p_older_than IS NULL OR d.enqueued_at <= now() - p_older_than)
           AND (p_newer_than IS NULL OR d.enqueued_at >= now() - p_newer_than)
         ORDER BY d.msg_id
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
    LOOP
        v_id := campaignq_try_uuid(v_letter.message->>'campaign_message_id');
        v_reason := coalesce(v_letter.message->>'reason', 'unknown');
        v_row_id := NULL;
        v_status := NULL;
        SELECT m.id, m.run_id, m.lead_id, m.status, r.status
          INTO v_row_id, v_run_id, v_lead_id, v_status, v_run_state
          FROM campaign_messages m
          JOIN campaign_runs r ON r.id = m.run_id
         WHERE m.id = v_id
           FOR UPDATE OF m;
        IF v_row_id IS NULL THEN
            v_action := 'archived_missing';
            v_run_id := campaignq_try_uuid(v_letter.message->>'run_id');
            v_archive := v_archive || v_letter.msg_id;
        ELSIF v_status = 'sent' THEN
            v_action := 'archived_sent';
            v_archive := v_archive || v_letter.msg_id;
        ELSIF v_status IN ('queued', 'generating', 'sending') THEN
            v_action := 'archived_in_flight';
            v_archive := v_archive || v_letter.msg_id;
        ELSIF v_run_state NOT IN ('running', 'completed') THEN
            v_action := 'kept_run_' || v_run_state;
        ELSE
            UPDATE campaign_messages m
               SET status = 'queued',
                   retry_count = 0,
                   deferral_count = 0,
                   first_deferred_at = NULL,
                   queued_at = now(),
                   finished_at = NULL,
                   error_class = NULL,
                   error_message = NULL,
                   attempt_history = campaignq_history_append(m.attempt_history, jsonb_build_object(
                       'at', now(), 'outcome', 'replayed', 'reason', v_reason,
                       'dlq_msg_id', v_letter.msg_id))
             WHERE m.id = v_row_id;
            v_payloads := v_payloads || jsonb_build_object(
                'v', 1, 'campaign_message_id', v_row_id, 'run_id', v_run_id, 'lead_id', v_lead_id);
            v_archive := v_archive || v_letter.msg_id;
            v_runs := v_runs || v_run_id;
            -- failed/skipped rows were counted in leads_processed; pending ones were not
            v_counted := v_counted || (v_status IN ('failed', 'skipped'));
            v_action := 'replayed';
        END IF;
        dlq_msg_id := v_letter.msg_id;
        campaign_message_id := v_id;
        run_id := v_run_id;
        reason := v_reason;
        previous_status := v_status;
        action := v_action;
        RETURN NEXT;
    END LOOP;

    -- Run bookkeeping after every message row is locked: a consumer locks a message row and
    -- then its run, so taking runs last (in id order) never waits in the opposite order.
    IF cardinality(v_runs) > 0 THEN
        PERFORM 1 FROM campaign_runs cr WHERE cr.id = ANY (v_runs) ORDER BY cr.id FOR UPDATE;
        UPDATE campaign_runs cr
           SET leads_processed = greatest(cr.leads_processed - per_run.counted, 0),
               status = CASE WHEN cr.status = 'completed' THEN 'running' ELSE cr.status END,
               finished_at = CASE WHEN cr.status = 'completed' THEN NULL ELSE cr.finished_at END
          FROM (SELECT u.rid, count(*) FILTER (WHERE u.counted)::integer AS counted
                  FROM unnest(v_runs, v_counted) AS u(rid, counted)
                 GROUP BY u.rid) per_run
         WHERE cr.id = per_run.rid;
    END IF;
    IF cardinality(v_archive) > 0 THEN
        PERFORM pgmq.archive('campaign_messages_dlq', v_archive);
    END IF;
    IF cardinality(v_payloads) > 0 THEN
        PERFORM pgmq.send_batch('campaign_messages', v_payloads);
        PERFORM pg_notify('pgmq.q_campaign_messages.INSERT', NULL);
    END IF;
    RETURN;
END;
$$;

-- `campaignq prune`: deletes up to p_limit archived messages of one queue archived before
-- p_before, oldest first, through PGMQ's archived_at index. One call = one short
-- transaction, so pruning a large archive never holds locks or blocks vacuum for long.
-- Static statements per queue (no dynamic SQL): these are the only two archives we own.
CREATE OR REPLACE FUNCTION campaignq_prune_archive(p_queue text, p_before timestamptz, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_deleted integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'campaignq_prune_archive: p_limit must be a positive integer'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_queue = 'campaign_messages' THEN
        DELETE FROM pgmq.a_campaign_messages a
         WHERE a.msg_id IN (SELECT x.msg_id FROM pgmq.a_campaign_messages x
                             WHERE x.archived_at < p_before
                             ORDER BY x.archived_at
                             LIMIT p_limit
                               FOR UPDATE SKIP LOCKED);
    ELSIF p_queue = 'campaign_messages_dlq' THEN
        DELETE FROM pgmq.a_campaign_messages_dlq a
         WHERE a.msg_id IN (SELECT x.msg_id FROM pgmq.a_campaign_messages_dlq x
                             WHERE x.archived_at < p_before
                             ORDER BY x.archived_at
                             LIMIT p_limit
                               FOR UPDATE SKIP LOCKED);
    ELSE
        RAISE EXCEPTION 'campaignq_prune_archive: unknown queue %', p_queue
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$$;

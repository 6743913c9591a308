-- 0002_producer: the SQL producer (contract Flow step 2) and run finalisation.

-- Completes a running run once none of its messages can still change. Returns true when
-- this call completed it. Two index probes (pending, in flight): cheap enough to call after
-- every terminal outcome.
CREATE OR REPLACE FUNCTION finalize_campaign_run_if_complete(p_run_id uuid)
RETURNS boolean
LANGUAGE sql AS $$
    WITH completed AS (
        UPDATE campaign_runs r
           SET status = 'completed', finished_at = now()
         WHERE r.id = p_run_id
           AND r.status = 'running'
           AND EXISTS (SELECT 1 FROM campaign_messages m WHERE m.run_id = r.id)
           AND NOT EXISTS (
                 SELECT 1 FROM campaign_messages m
                  WHERE m.run_id = r.id AND m.status = 'pending')
           AND NOT EXISTS (
                 SELECT 1 FROM campaign_messages m
                  WHERE m.run_id = r.id AND m.status IN ('queued', 'generating', 'sending'))
        RETURNING r.id
    )
    SELECT EXISTS (SELECT 1 FROM completed);
$$;

-- Moves due messages of running runs into the `campaign_messages` queue, one PGMQ message
-- per row, and skips pending rows of running runs scheduled more than an hour ago.
-- Safe to run concurrently: rows are claimed with FOR UPDATE SKIP LOCKED and re-checked
-- against their latest version, so two producers never queue the same row.
CREATE OR REPLACE FUNCTION enqueue_due_campaign_messages(p_limit integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := now();
    v_cutoff  timestamptz := now() - interval '1 hour';
    v_msgs    jsonb[];
    v_run_id  uuid;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'enqueue_due_campaign_messages: p_limit must be a positive integer, got %',
            coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Stale sweep (audit problem 12): one range scan of the pending-by-schedule index that
    -- returns at once when nothing is stale; EXISTS, never IN (subquery).
    FOR v_run_id IN
        WITH stale AS (
            SELECT m.id
              FROM campaign_messages m
             WHERE m.status = 'pending'
               AND m.scheduled_at < v_cutoff
               AND EXISTS (SELECT 1 FROM campaign_runs r
                            WHERE r.id = m.run_id AND r.status = 'running')
               FOR UPDATE OF m SKIP LOCKED
        ), swept AS (
            UPDATE campaign_messages m
               SET status = 'skipped',
                   error_class = 'stale',
                   error_message = 'scheduled more than 1 hour before it could be queued',
                   finished_at = v_now
              FROM stale
             WHERE m.id = stale.id
            RETURNING m.run_id
        ), per_run AS (
            SELECT run_id, count(*)::integer AS n FROM swept GROUP BY run_id
        )
        UPDATE campaign_runs r
           SET leads_processed = r.leads_processed + per_run.n
          FROM per_run
         WHERE r.id = per_run.run_id
        RETURNING r.id
    LOOP
        PERFORM finalize_campaign_run_if_complete(v_run_id);
    END LOOP;

    -- Selection (audit problems 4 and 6): walk the few running runs through their partial
    -- index, then each run's due pending rows through campaign_messages_pending_due_idx.
    WITH picked AS (
        SELECT due.id
          FROM campaign_runs r
          CROSS JOIN LATERAL (
                SELECT m.id
                  FROM campaign_messages m
                 WHERE m.run_id = r.id
                   AND m.status = 'pending'
                   AND m.scheduled_at <= v_now
                   AND m.scheduled_at >= v_cutoff
                 ORDER BY m.scheduled_at
                 LIMIT p_limit
                   FOR UPDATE OF m SKIP LOCKED
          ) due
         WHERE r.status = 'running'
         LIMIT p_limit
    ), marked AS (
        UPDATE campaign_messages m
           SET status = 'queued', queued_at = v_now
          FROM picked
         WHERE m.id = picked.id
        RETURNING m.id, m.run_id, m.lead_id
    )
    SELECT array_agg(jsonb_build_object(
               'v', 1, 'campaign_message_id', marked.id,
               'run_id', marked.run_id, 'lead_id', marked.lead_id))
      INTO v_msgs
      FROM marked;

    IF v_msgs IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM pgmq.send_batch('campaign_messages', v_msgs);
    -- One wake-up for idle consumers (PGMQ's own channel name), instead of PGMQ's per-row
    -- insert trigger which would update its throttle row once per message.
    PERFORM pg_notify('pgmq.q_campaign_messages.INSERT', NULL);
    RETURN cardinality(v_msgs);
END;
$$;

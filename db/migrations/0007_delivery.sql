-- 0007_delivery: delivery guarantees under ambiguous faults (issue 9).
--
-- Part 1 — the producer's stale sweep, in its own function, with the rule a lead can rely
-- on: a row that already has part of its message (`parts_sent > 0`) is never skipped as
-- stale (it is completed), and a pause does not eat the stale window.

-- When a paused run was last resumed. The stale clock of its messages starts at the later
-- of their `scheduled_at` and this, so a run paused overnight gets its full window back on
-- resume instead of losing every message to the sweep.
ALTER TABLE campaign_runs
    ADD COLUMN resumed_at timestamptz;

-- Status changes of a run, however they are made (SQL, CLI, console: a plain UPDATE):
-- stamp the resume time. Later parts of this migration extend it (cancel, finalise).
CREATE OR REPLACE FUNCTION campaignq_run_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'running' AND OLD.status = 'paused' THEN
        NEW.resumed_at := now();
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER campaign_runs_status_changed BEFORE UPDATE OF status ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION campaignq_run_status_changed();

-- The stale sweep (audit problems 3 and 12). A pending row of a running run is stale when
--   * no part of it was sent (`parts_sent = 0`) — a half-sent row is completed, never
--     skipped: the lead already has part 1 and must get the rest, and
--   * it was scheduled more than an hour before now, and the run was not resumed within
--     that hour — the window counts from the later of `scheduled_at` and `resumed_at`.
-- Cost: one probe of campaign_runs_running_idx, then per running run (not resumed within
-- the window) one range probe of campaign_messages_pending_due_idx on
-- (run_id, 'pending', scheduled_at < cutoff) that ends at once when nothing is stale.
-- Rows are locked FOR UPDATE SKIP LOCKED (two producers never fight over them). Skipped
-- rows count as processed and their run is finalised when nothing else can change.
-- p_limit bounds one call (NULL: all). Returns how many rows it skipped.
CREATE OR REPLACE FUNCTION campaignq_sweep_stale_pending(p_limit integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    v_cutoff   timestamptz := now() - interval '1 hour';
    v_skipped  integer := 0;
    v_run_id   uuid;
    v_n        integer;
BEGIN
    FOR v_run_id, v_n IN
        WITH stale AS (
            SELECT s.id
              FROM campaign_runs r
              CROSS JOIN LATERAL (
                    SELECT m.id
                      FROM campaign_messages m
                     WHERE m.run_id = r.id
                       AND m.status = 'pending'
                       AND m.scheduled_at < v_cutoff
                       AND m.parts_sent = 0
                     ORDER BY m.scheduled_at
                     LIMIT p_limit
                       FOR UPDATE OF m SKIP LOCKED
              ) s
             WHERE r.status = 'running'
               AND (r.resumed_at IS NULL OR r.resumed_at < v_cutoff)
             LIMIT p_limit
        ), swept AS (
            UPDATE campaign_messages m
               SET status = 'skipped',
                   error_class = 'stale',
                   error_message = 'scheduled (or its run resumed) more than 1 hour before it could be queued',
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
        RETURNING r.id, per_run.n
    LOOP
        v_skipped := v_skipped + v_n;
        PERFORM finalize_campaign_run_if_complete(v_run_id);
    END LOOP;
    RETURN v_skipped;
END;
$$;

-- The producer (contract Flow step 2), now calling the sweep above. Selection unchanged but
-- for its lower bound: a due pending row is picked unless it is stale by the sweep's rule,
-- so a half-sent row or a row of a just-resumed run is queued however old its schedule.
CREATE OR REPLACE FUNCTION enqueue_due_campaign_messages(p_limit integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := now();
    v_cutoff  timestamptz := now() - interval '1 hour';
    v_msgs    jsonb[];
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'enqueue_due_campaign_messages: p_limit must be a positive integer, got %',
            coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM campaignq_sweep_stale_pending();

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
                   AND (m.scheduled_at >= v_cutoff OR m.parts_sent > 0 OR r.resumed_at >= v_cutoff)
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

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
--   * no part of it was sent (`parts_sent = 0`) nor may have been (`uncertain_part IS NULL`,
--     a column of part 2 below) — a half-sent row is completed, never skipped: the lead
--     already has part 1 and must get the rest, and
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
                       AND m.uncertain_part IS NULL
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
                   AND (m.scheduled_at >= v_cutoff OR m.parts_sent > 0 OR m.uncertain_part IS NOT NULL
                        OR r.resumed_at >= v_cutoff)
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

-- Part 2 — uncertain sends. A send that timed out or lost its connection after the request
-- was written may have been delivered. The part is recorded *uncertain* (which part, and
-- when the first attempt at it began) before anything else happens, whoever holds the lease
-- (it is a fact about the world, like an acknowledged part), and is reconciled with the
-- gateway's message list before any resend. The mark clears itself once the part counts as
-- acknowledged (trigger below), whichever function moves `parts_sent`.
ALTER TABLE campaign_messages
    ADD COLUMN uncertain_part  integer CHECK (uncertain_part >= 0),
    ADD COLUMN uncertain_since timestamptz;

-- What to do when the gateway cannot say whether an uncertain part went out (NULL: the
-- consumer's CAMPAIGNQ_UNCERTAIN_SEND_POLICY): verify later, resend, or hold for an operator.
ALTER TABLE inboxes
    ADD COLUMN uncertain_send_policy text CHECK (uncertain_send_policy IN ('verify', 'resend', 'hold'));

CREATE OR REPLACE FUNCTION campaignq_record_part_uncertain(
    p_message_id uuid, p_part integer, p_since timestamptz)
RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign_messages
       SET uncertain_since = CASE WHEN uncertain_part = p_part
                                  THEN least(uncertain_since, p_since) ELSE p_since END,
           uncertain_part = p_part
     WHERE id = p_message_id AND parts_sent <= p_part;
$$;

CREATE OR REPLACE FUNCTION campaignq_settle_uncertain_part() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.uncertain_part IS NOT NULL AND NEW.parts_sent > NEW.uncertain_part THEN
        NEW.uncertain_part := NULL;
        NEW.uncertain_since := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER campaign_messages_settle_uncertain BEFORE UPDATE OF parts_sent ON campaign_messages
    FOR EACH ROW EXECUTE FUNCTION campaignq_settle_uncertain_part();

-- Part 3 — runs and rows never left open. However a run's status changes (SQL, CLI, console):
--   * cancel: its pending rows become `skipped` (run_cancelled) in one statement through the
--     pending index, and count as processed; queued/in-flight rows are skipped by the
--     consumer that reads them (triage), as before;
--   * resume (paused -> running): the stale clock restarts (part 1), and a run whose last
--     outcome landed while it was paused is completed at once.
CREATE OR REPLACE FUNCTION campaignq_run_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_skipped integer;
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.status = 'running' AND OLD.status = 'paused' THEN
        NEW.resumed_at := now();
        IF EXISTS (SELECT 1 FROM campaign_messages m WHERE m.run_id = NEW.id)
           AND NOT EXISTS (SELECT 1 FROM campaign_messages m
                            WHERE m.run_id = NEW.id AND m.status = 'pending')
           AND NOT EXISTS (SELECT 1 FROM campaign_messages m
                            WHERE m.run_id = NEW.id AND m.status IN ('queued', 'generating', 'sending'))
        THEN
            NEW.status := 'completed';
            NEW.finished_at := now();
        END IF;
    ELSIF NEW.status = 'cancelled' THEN
        WITH skipped AS (
            UPDATE campaign_messages m
               SET status = 'skipped',
                   error_class = 'run_cancelled',
                   error_message = 'the run was cancelled',
                   finished_at = now()
             WHERE m.run_id = NEW.id AND m.status = 'pending'
            RETURNING 1
        )
        SELECT count(*)::integer INTO v_skipped FROM skipped;
        NEW.leads_processed := NEW.leads_processed + v_skipped;
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
    RETURN NEW;
END;
$$;

-- Part 4 — replay never re-queues a row a dead letter does not really name. A letter dead-
-- lettered as `invalid_payload`, or whose payload's run_id / lead_id do not match the row its
-- campaign_message_id names, is archived (`archived_invalid_payload`): replaying it would
-- re-send someone else's message. Otherwise as in 0005.
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
        ELSIF v_reason = 'invalid_payload'
           OR campaignq_try_uuid(v_letter.message->>'run_id') IS DISTINCT FROM v_run_id
           OR campaignq_try_uuid(v_letter.message->>'lead_id') IS DISTINCT FROM v_lead_id THEN
            v_action := 'archived_invalid_payload';
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

-- 0015_lock_order (issue 20): ONE lock order for everything that touches runs and their
-- messages, and the functions that broke it, redefined (CREATE OR REPLACE; signatures and
-- answers unchanged). At the end: the opt-out check that rides on recording a sent part.
--
-- THE LOCK ORDER. A transaction that waits for row locks takes them in this order, never
-- backwards:
--   1. queue rows of `campaign_messages` (a worker's leases), in msg_id order;
--   2. rows only one writer locks before runs: `leads` (the opt-out), `workspace_budgets`
--      (an operator's cap edit), `inbox_pacing` (a send-slot booking);
--   3. `campaign_runs` rows, several in id order — FOR NO KEY UPDATE, the lock an UPDATE of
--      the row takes anyway (it does not block the FOR KEY SHARE of inserting messages);
--   4. `campaign_messages` rows, several in id order;
--   5. everything else (workspace_ai_spend, the dead-letter queue's rows, …).
-- Why runs before messages: an operator cancels a run with a plain UPDATE of the run (SQL,
-- CLI, console), so the cancel trigger necessarily holds the run row when it skips the run's
-- pending rows. Everything else follows it. A function that will update a run locks that run
-- before it locks (updates) any of the run's messages, even when the run's counter is only
-- written at its end.
-- Exempt, because they cannot close a wait cycle:
--   * a lock taken with SKIP LOCKED or NOWAIT (it never waits): the producer's selection, the
--     stale sweep's rows, pgmq.read, replay's letters, batch claims;
--   * a transaction that holds no lock when it waits, or takes one lock and then waits for
--     nothing (record_part_sent, an uncapped store_pregenerated). retry_later,
--     release_to_pending, release_now and hold_back take their lease, then their one row: in
--     the order.
-- (0010's comment on campaignq_record_ai_spend gives the order before this migration —
-- message, run, workspace-day; it is now run, message, workspace-day.)
-- Known residue, left as is (hot path: ordering them would cost a second lock per row): a
-- batch's message rows reached through leases it holds (read_and_claim,
-- record_parts_sent_many, store_ai_generations_many) are updated in the order the planner
-- joins them, not id order. Another waiter for two of those rows at once would need the same
-- lead twice in one read batch while it opts out, or two dead letters of rows in one batch
-- replayed at that moment, or a stale holder recording parts of two rows of a run being
-- cancelled; a deadlock then aborts one side after deadlock_timeout and its caller retries.
-- And a run cap set between a generation's cap probe and its store makes that one store
-- lock its run after its message (see campaignq_store_ai_generation).
-- The concurrency test is tests/integration/test_lock_order.py; docs/operations.md
-- ("Lock order") is the operator's copy of this.

-- --- the cancel trigger: run (held by the UPDATE), then its pending rows in id order ---------

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
        -- The pending rows locked in id order first (0007 updated them in index order).
        WITH locked AS (
            SELECT m.id
              FROM campaign_messages m
             WHERE m.run_id = NEW.id AND m.status = 'pending'
             ORDER BY m.id
               FOR NO KEY UPDATE
        ), skipped AS (
            UPDATE campaign_messages m
               SET status = 'skipped',
                   error_class = 'run_cancelled',
                   error_message = 'the run was cancelled',
                   finished_at = now()
              FROM locked
             WHERE m.id = locked.id AND m.status = 'pending'
            RETURNING 1
        )
        SELECT count(*)::integer INTO v_skipped FROM skipped;
        NEW.leads_processed := NEW.leads_processed + v_skipped;
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
    RETURN NEW;
END;
$$;

-- --- the stale sweep (0007): runs first ------------------------------------------------------

-- Same rule, cost and answer as 0007's. 0007 locked the stale rows, then updated their runs
-- (in no set order) — the opposite of the cancel trigger, a real deadlock that aborted the
-- producer's tick (or the operator's cancel). Now: a plain probe finds the runs with stale
-- rows (usually none: nothing is locked then), those runs are locked in id order and
-- re-checked, and only then are their stale rows taken (SKIP LOCKED, as before).
CREATE OR REPLACE FUNCTION campaignq_sweep_stale_pending(p_limit integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    v_cutoff   timestamptz := now() - interval '1 hour';
    v_runs     uuid[];
    v_skipped  integer := 0;
    v_run_id   uuid;
    v_n        integer;
BEGIN
    SELECT array_agg(r.id) INTO v_runs
      FROM campaign_runs r
     WHERE r.status = 'running'
       AND (r.resumed_at IS NULL OR r.resumed_at < v_cutoff)
       AND EXISTS (SELECT 1 FROM campaign_messages m
                    WHERE m.run_id = r.id
                      AND m.status = 'pending'
                      AND m.scheduled_at < v_cutoff
                      AND m.parts_sent = 0
                      AND m.uncertain_part IS NULL);
    IF v_runs IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(l.id ORDER BY l.id) INTO v_runs
      FROM (SELECT r.id
              FROM campaign_runs r
             WHERE r.id = ANY (v_runs)
               AND r.status = 'running'
               AND (r.resumed_at IS NULL OR r.resumed_at < v_cutoff)
             ORDER BY r.id
               FOR NO KEY UPDATE) l;
    IF v_runs IS NULL THEN
        RETURN 0;
    END IF;
    FOR v_run_id, v_n IN
        WITH stale AS (
            SELECT s.id
              FROM unnest(v_runs) AS r(id)
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

-- --- the opt-out (0009): leads, then their runs in id order, then their rows in id order ------

-- Same effects and answer as 0009's; 0009 skipped the rows, then counted them on their runs
-- in no set order (against the cancel trigger's run-then-rows). Rows of the lead that become
-- pending or queued after the runs were chosen are left to the consumer, which skips an
-- opted-out lead's message at read time and before each part (issue 20).
CREATE OR REPLACE FUNCTION campaignq_record_opt_out(
    p_instance text,
    p_phone    text,
    p_reason   text DEFAULT 'reply')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_digits text := regexp_replace(coalesce(p_phone, ''), '\D', '', 'g');
    v_leads  uuid[];
    v_runs   uuid[];
    v_run    uuid;
BEGIN
    IF v_digits = '' THEN
        RAISE EXCEPTION 'campaignq_record_opt_out: phone % has no digits', p_phone
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH opted AS (
        UPDATE leads AS l
           SET opted_out_at = now()
         WHERE l.opted_out_at IS NULL
           AND regexp_replace(coalesce(l.phone, ''), '\D', '', 'g') = v_digits
           AND l.workspace_id IN (SELECT i.workspace_id FROM inboxes AS i WHERE i.instance = p_instance)
        RETURNING l.id
    )
    SELECT array_agg(opted.id) INTO v_leads FROM opted;
    IF v_leads IS NOT NULL THEN
        SELECT array_agg(l.id ORDER BY l.id) INTO v_runs
          FROM (SELECT r.id
                  FROM campaign_runs r
                 WHERE r.id IN (SELECT m.run_id FROM campaign_messages m
                                 WHERE m.lead_id = ANY (v_leads) AND m.status IN ('pending', 'queued'))
                 ORDER BY r.id
                   FOR NO KEY UPDATE) l;
    END IF;
    IF v_runs IS NOT NULL THEN
        WITH locked AS (
            SELECT m.id
              FROM campaign_messages m
             WHERE m.lead_id = ANY (v_leads)
               AND m.run_id = ANY (v_runs)
               AND m.status IN ('pending', 'queued')
             ORDER BY m.id
               FOR NO KEY UPDATE
        ), skipped AS (
            UPDATE campaign_messages m
               SET status = 'skipped', finished_at = now(), error_class = 'opted_out',
                   error_message = left('the lead opted out (' || coalesce(p_reason, 'reply') || ')', 2000),
                   held_until = NULL, held_reason = NULL
              FROM locked
             WHERE m.id = locked.id
               AND m.status IN ('pending', 'queued')
            RETURNING m.run_id
        ), counted AS (
            UPDATE campaign_runs r
               SET leads_processed = r.leads_processed + s.n
              FROM (SELECT run_id, count(*) AS n FROM skipped GROUP BY run_id) AS s
             WHERE r.id = s.run_id
            RETURNING r.id
        )
        SELECT array_agg(counted.id ORDER BY counted.id) INTO v_runs FROM counted;
        FOREACH v_run IN ARRAY coalesce(v_runs, '{}') LOOP
            PERFORM finalize_campaign_run_if_complete(v_run);
        END LOOP;
    END IF;
    RAISE LOG 'campaignq opt-out: instance=% reason=% leads=%', p_instance, p_reason,
        coalesce(cardinality(v_leads), 0);
    RETURN coalesce(cardinality(v_leads), 0);
END;
$$;

-- --- replay (0007): letters (SKIP LOCKED), then runs in id order, then rows in id order -------

-- Same actions and answers as 0007's. 0007 locked each letter's row, then (at the end) the
-- runs: the order of the consumer's outcomes before this migration, the opposite of the
-- cancel trigger's. Now the letters are taken first (SKIP LOCKED: two replays share none),
-- then the runs of the rows they name and those rows, each in id order, before any decision.
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
    v_letter      record;
    v_letter_ids  bigint[];
    v_letter_msgs jsonb[];
    v_row_ids     uuid[];
    v_id          uuid;
    v_row_id      uuid;
    v_run_id      uuid;
    v_lead_id     uuid;
    v_status      text;
    v_run_state   text;
    v_reason      text;
    v_action      text;
    v_archive     bigint[]  := '{}';
    v_payloads    jsonb[]   := '{}';
    v_runs        uuid[]    := '{}';
    v_counted     boolean[] := '{}';
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'campaignq_replay_dead_letters: p_limit must be a positive integer'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(array_agg(d.msg_id ORDER BY d.msg_id), '{}'), coalesce(array_agg(d.message ORDER BY d.msg_id), '{}')
      INTO v_letter_ids, v_letter_msgs
      FROM (SELECT d.msg_id, d.message
              FROM pgmq.q_campaign_messages_dlq d
             WHERE d.msg_id > coalesce(p_after_msg_id, 0)
               AND (p_run_id IS NULL OR campaignq_try_uuid(d.message->>'run_id') = p_run_id)
               AND (p_reason IS NULL OR coalesce(d.message->>'reason', 'unknown') = p_reason)
               AND (p_older_than IS NULL OR d.enqueued_at <= now() - p_older_than)
               AND (p_newer_than IS NULL OR d.enqueued_at >= now() - p_newer_than)
             ORDER BY d.msg_id
             LIMIT p_limit
               FOR UPDATE OF d SKIP LOCKED) d;
    IF cardinality(v_letter_ids) = 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(DISTINCT x.id), '{}') INTO v_row_ids
      FROM (SELECT campaignq_try_uuid(u.message->>'campaign_message_id') AS id
              FROM unnest(v_letter_msgs) AS u(message)) x
     WHERE x.id IS NOT NULL;
    PERFORM 1 FROM campaign_runs r
     WHERE r.id IN (SELECT m.run_id FROM campaign_messages m WHERE m.id = ANY (v_row_ids))
     ORDER BY r.id
       FOR NO KEY UPDATE;
    PERFORM 1 FROM campaign_messages m WHERE m.id = ANY (v_row_ids) ORDER BY m.id FOR UPDATE;

    FOR v_letter IN
        SELECT u.msg_id, u.message
          FROM unnest(v_letter_ids, v_letter_msgs) AS u(msg_id, message)
         ORDER BY u.msg_id
    LOOP
        v_id := campaignq_try_uuid(v_letter.message->>'campaign_message_id');
        v_reason := coalesce(v_letter.message->>'reason', 'unknown');
        v_row_id := NULL;
        v_status := NULL;
        SELECT m.id, m.run_id, m.lead_id, m.status, r.status
          INTO v_row_id, v_run_id, v_lead_id, v_status, v_run_state
          FROM campaign_messages m
          JOIN campaign_runs r ON r.id = m.run_id
         WHERE m.id = v_id;
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

    -- Run bookkeeping: the runs are already locked (above).
    IF cardinality(v_runs) > 0 THEN
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

-- --- a worker's outcomes (0004, 0010, 0013): lease, then run, then row ------------------------

-- The run a message belongs to, locked, when a terminal outcome will count it there: taken
-- after the lease and before the row (0004's functions updated the row, then the run). No lock
-- when the row is already terminal (nothing will be counted). run_id never changes, so the
-- unlocked read of it is exact.
CREATE OR REPLACE FUNCTION campaignq_lock_run_of(p_message_id uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
       FROM campaign_runs r
      WHERE r.id = (SELECT m.run_id FROM campaign_messages m
                     WHERE m.id = p_message_id AND m.status NOT IN ('sent', 'failed', 'skipped'))
        FOR NO KEY UPDATE;
END;
$$;

-- Success (0004): archive, row sent, run counter, run finalised — one transaction.
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
    PERFORM campaignq_lock_run_of(p_message_id);
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

-- Dead letter (0004), same answers; the run is locked between the lease and the row.
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
        PERFORM campaignq_lock_run_of(p_message_id);
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

-- Skip (0004), same answers; the run is locked between the lease and the row.
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
    PERFORM campaignq_lock_run_of(p_message_id);
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

-- The runs among p_run_ids whose row storing a generation of cost p_cost_usd will write: a
-- capped run (its spend total) or a run of a capped workspace (a budget pause). Uncapped runs
-- are not locked at all — their row is hot (0010) — so the probe comes first, unlocked.
CREATE OR REPLACE FUNCTION campaignq_lock_capped_runs(p_run_ids uuid[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- PERFORM runs the query to its end (a SQL function would stop at its first row, and so
    -- lock only the first run).
    PERFORM 1
       FROM campaign_runs r
       JOIN campaign_configs c ON c.id = r.config_id
      WHERE r.id = ANY (p_run_ids)
        AND (r.ai_cost_cap_usd IS NOT NULL
             OR EXISTS (SELECT 1 FROM workspace_budgets b
                         WHERE b.workspace_id = c.workspace_id AND b.daily_ai_cost_cap_usd IS NOT NULL))
      ORDER BY r.id
        FOR NO KEY UPDATE OF r;
END;
$$;

-- Storing a generation (0010), same guards and answers; a capped run is locked before the
-- row. (A cap set between this probe and the store makes campaignq_record_ai_spend lock the
-- run after the row, once — the residue named at the top of this file.)
CREATE OR REPLACE FUNCTION campaignq_store_ai_generation(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_text text, p_parts jsonb,
    p_prompt_tokens integer, p_completion_tokens integer, p_cost_usd numeric,
    p_ai_ms integer, p_split_ms integer,
    p_cached_tokens integer, p_cache_write_tokens integer, p_ai_calls integer, p_mode text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    PERFORM 1 FROM pgmq.q_campaign_messages
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct
       FOR SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_lock_capped_runs(ARRAY(SELECT m.run_id FROM campaign_messages m WHERE m.id = p_message_id));
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
           split_ms = p_split_ms,
           ai_cached_tokens = p_cached_tokens,
           ai_cache_write_tokens = p_cache_write_tokens,
           ai_calls = p_ai_calls,
           generation_mode = p_mode,
           generated_at = now()
     WHERE m.id = p_message_id
       AND m.parts IS NULL
       AND m.status IN ('queued', 'generating', 'sending')
    RETURNING m.run_id INTO v_run;
    IF v_run IS NULL THEN
        RETURN false;
    END IF;
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_record_ai_spend(v_run, p_cost_usd);
        PERFORM campaignq_enforce_ai_budget(v_run);
    END IF;
    RETURN true;
END;
$$;

-- A batch result (0010), same guards and answers; a capped run is locked before the row.
CREATE OR REPLACE FUNCTION campaignq_store_pregenerated(
    p_message_id uuid, p_batch_id uuid, p_text text, p_parts jsonb,
    p_prompt_tokens integer, p_completion_tokens integer, p_cost_usd numeric,
    p_cached_tokens integer, p_cache_write_tokens integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_lock_capped_runs(ARRAY(SELECT m.run_id FROM campaign_messages m WHERE m.id = p_message_id));
    END IF;
    UPDATE campaign_messages m
       SET generated_message = p_text,
           parts = p_parts,
           parts_sent = 0,
           ai_prompt_tokens = p_prompt_tokens,
           ai_completion_tokens = p_completion_tokens,
           ai_tokens_used = p_prompt_tokens + p_completion_tokens,
           ai_cost_usd = p_cost_usd,
           ai_cached_tokens = p_cached_tokens,
           ai_cache_write_tokens = p_cache_write_tokens,
           ai_calls = 0,
           generation_mode = 'batch',
           generated_at = now()
     WHERE m.id = p_message_id
       AND m.ai_batch_id = p_batch_id
       AND m.parts IS NULL
       AND m.status IN ('pending', 'queued')
    RETURNING m.run_id INTO v_run;
    IF v_run IS NULL THEN
        RETURN false;
    END IF;
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_record_ai_spend(v_run, p_cost_usd);
        PERFORM campaignq_enforce_ai_budget(v_run);
    END IF;
    RETURN true;
END;
$$;

-- Success, for a batch (0013), same answers: the leases (msg_id order), then the runs of the
-- rows about to become `sent` (id order; 0013 took them after the rows), then the rows.
CREATE OR REPLACE FUNCTION campaignq_complete_sent_many(
    p_msg_ids bigint[], p_read_cts integer[], p_message_ids uuid[], p_send_ms integer[])
RETURNS TABLE (ord integer, msg_id bigint, ok boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_held_ids  bigint[];
    v_held_cts  integer[];
    v_archived  bigint[];
    v_runs      uuid[];
BEGIN
    -- 1. The leases still held, locked in msg_id order: nobody can bump read_ct until we commit.
    SELECT coalesce(array_agg(h.msg_id ORDER BY h.msg_id), '{}'), coalesce(array_agg(h.read_ct ORDER BY h.msg_id), '{}')
      INTO v_held_ids, v_held_cts
      FROM (SELECT q.msg_id, q.read_ct
              FROM pgmq.q_campaign_messages q
              JOIN unnest(p_msg_ids, p_read_cts) AS u(msg_id, read_ct)
                ON q.msg_id = u.msg_id AND q.read_ct = u.read_ct
             ORDER BY q.msg_id
               FOR UPDATE OF q) h;
    -- 2. Archived by PGMQ itself (version-independent).
    IF cardinality(v_held_ids) > 0 THEN
        SELECT coalesce(array_agg(a.id), '{}') INTO v_archived
          FROM pgmq.archive('campaign_messages', v_held_ids) AS a(id);
    ELSE
        v_archived := '{}';
    END IF;
    -- 3. The runs those rows will be counted on, locked in id order before any row.
    IF cardinality(v_archived) > 0 THEN
        PERFORM 1
           FROM campaign_runs r
          WHERE r.id IN (SELECT m.run_id
                           FROM unnest(p_msg_ids, p_message_ids) AS u(msg_id, message_id)
                           JOIN campaign_messages m ON m.id = u.message_id
                          WHERE u.msg_id = ANY (v_archived)
                            AND m.status NOT IN ('sent', 'failed', 'skipped'))
          ORDER BY r.id
            FOR NO KEY UPDATE;
    END IF;
    -- 4. The rows of the archived elements become `sent`; their runs are collected.
    WITH done AS (
        SELECT u.message_id, sum(u.send_ms)::integer AS send_ms
          FROM unnest(p_msg_ids, p_read_cts, p_message_ids, p_send_ms) AS u(msg_id, read_ct, message_id, send_ms)
          JOIN unnest(v_held_ids, v_held_cts) AS h(msg_id, read_ct)
            ON h.msg_id = u.msg_id AND h.read_ct = u.read_ct
         WHERE u.msg_id = ANY (v_archived)
         GROUP BY u.message_id
    ), sent AS (
        UPDATE campaign_messages m
           SET status = 'sent',
               sent_at = now(),
               finished_at = now(),
               parts_sent = coalesce(jsonb_array_length(m.parts), m.parts_sent),
               send_ms = coalesce(m.send_ms, 0) + coalesce(done.send_ms, 0),
               error_class = NULL,
               error_message = NULL,
               updated_at = now()
          FROM done
         WHERE m.id = done.message_id
           AND m.status NOT IN ('sent', 'failed', 'skipped')
        RETURNING m.run_id
    )
    SELECT coalesce(array_agg(sent.run_id), '{}') INTO v_runs FROM sent;
    -- 5. Each run's counter once per batch (already locked), then each run finalised.
    IF cardinality(v_runs) > 0 THEN
        UPDATE campaign_runs r
           SET leads_processed = r.leads_processed + per_run.n,
               updated_at = now()
          FROM (SELECT x.run_id, count(*)::integer AS n FROM unnest(v_runs) AS x(run_id) GROUP BY x.run_id) per_run
         WHERE r.id = per_run.run_id;
        PERFORM finalize_campaign_run_if_complete(d.run_id)
           FROM (SELECT DISTINCT x.run_id FROM unnest(v_runs) AS x(run_id) ORDER BY x.run_id) d;
    END IF;
    RETURN QUERY
        SELECT u.ord::integer, u.msg_id,
               (u.msg_id = ANY (v_archived)
                AND EXISTS (SELECT 1 FROM unnest(v_held_ids, v_held_cts) AS h(msg_id, read_ct)
                             WHERE h.msg_id = u.msg_id AND h.read_ct = u.read_ct))
          FROM unnest(p_msg_ids, p_read_cts) WITH ORDINALITY AS u(msg_id, read_ct, ord)
         ORDER BY u.ord;
END;
$$;

-- Generations, for a batch (0013), same guards and answers: the leases (msg_id order, FOR
-- SHARE), then the capped runs among the batch's priced elements (id order), then the rows.
CREATE OR REPLACE FUNCTION campaignq_store_ai_generations_many(
    p_msg_ids bigint[], p_read_cts integer[], p_message_ids uuid[],
    p_texts text[], p_parts jsonb[],
    p_prompt_tokens integer[], p_completion_tokens integer[], p_cost_usd numeric[],
    p_ai_ms integer[], p_split_ms integer[],
    p_cached_tokens integer[], p_cache_write_tokens integer[], p_ai_calls integer[], p_modes text[])
RETURNS TABLE (ord integer, msg_id bigint, ok boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_held_ids bigint[];
    v_held_cts integer[];
    v_ords     bigint[];
    v_runs     uuid[];
    v_costs    numeric[];
    v_spend    record;
BEGIN
    SELECT coalesce(array_agg(h.msg_id ORDER BY h.msg_id), '{}'), coalesce(array_agg(h.read_ct ORDER BY h.msg_id), '{}')
      INTO v_held_ids, v_held_cts
      FROM (SELECT q.msg_id, q.read_ct
              FROM pgmq.q_campaign_messages q
              JOIN unnest(p_msg_ids, p_read_cts) AS u(msg_id, read_ct)
                ON q.msg_id = u.msg_id AND q.read_ct = u.read_ct
             ORDER BY q.msg_id
               FOR SHARE OF q) h;
    IF cardinality(v_held_ids) > 0 THEN
        PERFORM campaignq_lock_capped_runs(ARRAY(
            SELECT DISTINCT m.run_id
              FROM unnest(p_msg_ids, p_message_ids, p_cost_usd) AS u(msg_id, message_id, cost_usd)
              JOIN campaign_messages m ON m.id = u.message_id
             WHERE u.msg_id = ANY (v_held_ids) AND u.cost_usd > 0));
    END IF;
    WITH items AS (
        SELECT u.*
          FROM unnest(p_msg_ids, p_read_cts, p_message_ids, p_texts, p_parts, p_prompt_tokens,
                      p_completion_tokens, p_cost_usd, p_ai_ms, p_split_ms, p_cached_tokens,
                      p_cache_write_tokens, p_ai_calls, p_modes)
               WITH ORDINALITY AS u(msg_id, read_ct, message_id, text, parts, prompt_tokens,
                                    completion_tokens, cost_usd, ai_ms, split_ms, cached_tokens,
                                    cache_write_tokens, ai_calls, mode, ord)
          JOIN unnest(v_held_ids, v_held_cts) AS h(msg_id, read_ct)
            ON h.msg_id = u.msg_id AND h.read_ct = u.read_ct
    ), stored AS (
        UPDATE campaign_messages m
           SET generated_message = i.text,
               parts = i.parts,
               parts_sent = 0,
               status = 'sending',
               ai_prompt_tokens = i.prompt_tokens,
               ai_completion_tokens = i.completion_tokens,
               ai_tokens_used = i.prompt_tokens + i.completion_tokens,
               ai_cost_usd = i.cost_usd,
               ai_ms = i.ai_ms,
               split_ms = i.split_ms,
               ai_cached_tokens = i.cached_tokens,
               ai_cache_write_tokens = i.cache_write_tokens,
               ai_calls = i.ai_calls,
               generation_mode = i.mode,
               generated_at = now(),
               updated_at = now()
          FROM items i
         WHERE m.id = i.message_id
           AND m.parts IS NULL
           AND m.status IN ('queued', 'generating', 'sending')
        RETURNING i.ord, m.run_id, i.cost_usd
    )
    SELECT coalesce(array_agg(s.ord), '{}'), coalesce(array_agg(s.run_id), '{}'),
           coalesce(array_agg(s.cost_usd), '{}')
      INTO v_ords, v_runs, v_costs
      FROM stored s;
    FOR v_spend IN
        SELECT x.run_id, sum(x.cost_usd) AS cost_usd
          FROM unnest(v_runs, v_costs) AS x(run_id, cost_usd)
         WHERE x.cost_usd > 0
         GROUP BY x.run_id
         ORDER BY x.run_id
    LOOP
        PERFORM campaignq_record_ai_spend(v_spend.run_id, v_spend.cost_usd);
        PERFORM campaignq_enforce_ai_budget(v_spend.run_id);
    END LOOP;
    RETURN QUERY
        SELECT u.ord::integer, u.msg_id, u.ord = ANY (v_ords)
          FROM unnest(p_msg_ids) WITH ORDINALITY AS u(msg_id, ord)
         ORDER BY u.ord;
END;
$$;

-- --- budget pauses and resumes (0010): several runs, in id order -----------------------------

-- As 0010's, walking the runs in id order (0010: in no set order).
CREATE OR REPLACE FUNCTION campaignq_resume_within_budget(p_workspace_id uuid DEFAULT NULL, p_run_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_count integer := 0;
BEGIN
    FOR v_run IN
        SELECT r.id FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id
         WHERE r.status = 'paused' AND r.pause_reason = 'budget_exhausted'
           AND (p_workspace_id IS NULL OR c.workspace_id = p_workspace_id)
           AND (p_run_id IS NULL OR r.id = p_run_id)
         ORDER BY r.id
    LOOP
        IF campaignq_ai_cap_reached(v_run) IS NULL THEN
            UPDATE campaign_runs SET status = 'running', pause_reason = NULL
             WHERE id = v_run AND status = 'paused' AND pause_reason = 'budget_exhausted';
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- A workspace cap set or changed (0010): the workspace's runs are locked in id order first —
-- before today's spend row is written here and before the AFTER trigger resumes some runs and
-- pauses others (two passes that would otherwise lock runs out of order, and after the spend
-- row that every priced generation of the workspace writes after its run).
CREATE OR REPLACE FUNCTION campaignq_workspace_cap_set() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
       FROM campaign_runs r
       JOIN campaign_configs c ON c.id = r.config_id
      WHERE c.workspace_id = NEW.workspace_id AND r.status IN ('running', 'scheduled', 'paused')
      ORDER BY r.id
        FOR NO KEY UPDATE OF r;
    IF NEW.daily_ai_cost_cap_usd IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.daily_ai_cost_cap_usd IS NULL) THEN
        INSERT INTO workspace_ai_spend AS s (workspace_id, day, cost_usd)
        SELECT NEW.workspace_id, campaignq_utc_day(), coalesce(sum(m.ai_cost_usd), 0)
          FROM campaign_messages m
          JOIN campaign_runs r ON r.id = m.run_id
          JOIN campaign_configs c ON c.id = r.config_id
         WHERE c.workspace_id = NEW.workspace_id
           AND m.generated_at >= (campaignq_utc_day()::timestamp AT TIME ZONE 'UTC')
        ON CONFLICT (workspace_id, day) DO UPDATE SET cost_usd = excluded.cost_usd;
    END IF;
    RETURN NEW;
END;
$$;

-- workspace_cap_changed (0010) pauses the workspace's runs one by one: in id order now.
CREATE OR REPLACE FUNCTION campaignq_workspace_cap_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM campaignq_resume_within_budget(NEW.workspace_id, NULL);
    PERFORM campaignq_enforce_ai_budget(x.id)
       FROM (SELECT r.id FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id
              WHERE c.workspace_id = NEW.workspace_id AND r.status IN ('running', 'scheduled')
              ORDER BY r.id) x;
    RETURN NULL;
END;
$$;

-- --- an opt-out honoured before each further part of a message in flight (issue 20) ---------

-- The consumer records each acknowledged part (but the last) before it sends the next one.
-- These record it exactly as 0004's / 0013's functions do and, in the same statement, say
-- whether the message's lead has opted out since: the consumer then sends nothing more and
-- skips the message (`opted_out`). No extra round trip: the answer rides on a write the
-- consumer makes anyway; its cost is one primary-key probe of `leads` per element.
CREATE OR REPLACE FUNCTION campaignq_record_part_sent_checked(p_message_id uuid, p_parts_sent integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM campaignq_record_part_sent(p_message_id, p_parts_sent);
    RETURN EXISTS (SELECT 1
                     FROM campaign_messages m
                     JOIN leads l ON l.id = m.lead_id
                    WHERE m.id = p_message_id AND l.opted_out_at IS NOT NULL);
END;
$$;

-- The batch form: one row per input element, in input order (`ord`, 1-based).
CREATE OR REPLACE FUNCTION campaignq_record_parts_sent_many_checked(p_message_ids uuid[], p_parts_sent integer[])
RETURNS TABLE (ord integer, opted_out boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM campaignq_record_parts_sent_many(p_message_ids, p_parts_sent);
    RETURN QUERY
        SELECT u.ord::integer, coalesce(l.opted_out_at IS NOT NULL, false)
          FROM unnest(p_message_ids) WITH ORDINALITY AS u(id, ord)
          LEFT JOIN campaign_messages m ON m.id = u.id
          LEFT JOIN leads l ON l.id = m.lead_id
         ORDER BY u.ord;
END;
$$;

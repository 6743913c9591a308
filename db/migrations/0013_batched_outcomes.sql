-- 0013_batched_outcomes (issue 15, P1/P2): the hot success path's writes, set-based.
--
-- A consumer at full speed used to spend ~3 statements (and 3 commits) per message on its
-- outcome writes — store the generation, record each acknowledged part, complete — and every
-- success updated its run's row (`leads_processed + 1`) and held that row's lock until commit,
-- so with one big run the completions queued on `Lock:transactionid`. The functions below take
-- a batch of the same calls (collected for a few ms by consumer/runtime/db.py's
-- OutcomeBatcher) and do them in one statement:
--   * each element keeps its own (msg_id, read_ct) lease check and its own answer — a message
--     whose lease was lost gets ok = false, the others are unaffected;
--   * a run's counters are updated once per batch (not once per message), runs locked in id
--     order so two batches never wait on each other in opposite orders;
--   * queue rows are locked in msg_id order (the heartbeat below does the same).
--   * each row is updated once per call and sets `updated_at` in that same UPDATE, so the
--     touch trigger (WHEN-gated by 0014) is not called for it.
-- The single-message functions of 0004 / 0010 stay as they are (the contract; other tools
-- call them, and a consumer with CAMPAIGNQ_OUTCOME_BATCH_WINDOW_MS=0 uses them).

-- Run finalisation, probing before it locks (P2): the two NOT EXISTS probes run first, and the
-- run row is updated (locked) only when they pass; the UPDATE repeats them, so a concurrent
-- outcome can never be missed. Same signature and answer as 0002's.
-- Why completing the last messages of a run concurrently still finalises it: every terminal
-- outcome updates the run's counter (locking the run row) *before* it calls this, so two
-- transactions finishing a run's last two messages are serialised on that row, and the second
-- one's probes (a new snapshot per statement) see the first one's committed row.
CREATE OR REPLACE FUNCTION finalize_campaign_run_if_complete(p_run_id uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- The probe: 0002's conditions as a plain SELECT (no lock, no new row version), in the
    -- same shape — correlated with the run row, so each NOT EXISTS is an index probe
    -- (campaign_messages_pending_due_idx, ..._run_in_flight_idx) whatever the run's size.
    IF NOT EXISTS (
        SELECT 1
          FROM campaign_runs r
         WHERE r.id = p_run_id
           AND r.status = 'running'
           AND NOT EXISTS (
                 SELECT 1 FROM campaign_messages m
                  WHERE m.run_id = r.id AND m.status = 'pending')
           AND NOT EXISTS (
                 SELECT 1 FROM campaign_messages m
                  WHERE m.run_id = r.id AND m.status IN ('queued', 'generating', 'sending')))
    THEN
        RETURN false;
    END IF;
    -- 0002's statement, unchanged: it re-checks everything under the row lock.
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
              WHERE m.run_id = r.id AND m.status IN ('queued', 'generating', 'sending'));
    RETURN FOUND;
END;
$$;

-- Heartbeat, as 0004's, but locking the queue rows in msg_id order first: a batched outcome
-- below locks several rows of the same worker's messages, and two statements locking
-- overlapping rows in different orders could deadlock (a one-second stall and a retry).
CREATE OR REPLACE FUNCTION campaignq_extend_leases(p_msg_ids bigint[], p_read_cts integer[], p_vt_s integer)
RETURNS SETOF bigint
LANGUAGE sql AS $$
    WITH held AS (
        SELECT q.msg_id
          FROM pgmq.q_campaign_messages q
          JOIN unnest(p_msg_ids, p_read_cts) AS lease(msg_id, read_ct)
            ON q.msg_id = lease.msg_id AND q.read_ct = lease.read_ct
         ORDER BY q.msg_id
           FOR UPDATE OF q
    )
    UPDATE pgmq.q_campaign_messages q
       SET vt = clock_timestamp() + make_interval(secs => p_vt_s)
      FROM held
     WHERE q.msg_id = held.msg_id
    RETURNING q.msg_id;
$$;

-- Success, for a batch: per element what campaignq_complete_sent (0004) does — archive the
-- queue message only while (msg_id, read_ct) still match (the lease), row `sent` — then each
-- run's counter once (`leads_processed + n`), then each distinct run finalised. Returns one
-- row per input element, in input order (`ord`, 1-based): ok = false when that lease was lost.
-- Queue columns are never named: the archive is PGMQ's own pgmq.archive(queue, bigint[]) on
-- rows locked here first (as 0004's campaignq_archive_leased does one by one), so this works
-- on every PGMQ from 1.4.4 (its queue tables have no last_read_at, its archive no headers).
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
    -- 3. The rows of the archived elements become `sent`; their runs are collected.
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
    -- 4. Each run's counter once per batch (runs locked in id order), then each run finalised.
    IF cardinality(v_runs) > 0 THEN
        PERFORM 1 FROM campaign_runs r WHERE r.id = ANY (v_runs) ORDER BY r.id FOR UPDATE;
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

-- Acknowledged parts, for a batch: monotonic (GREATEST), unguarded facts, as 0004's
-- campaignq_record_part_sent; the highest count wins when one message appears twice.
CREATE OR REPLACE FUNCTION campaignq_record_parts_sent_many(p_message_ids uuid[], p_parts_sent integer[])
RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign_messages m
       SET parts_sent = greatest(m.parts_sent, u.parts_sent),
           updated_at = now()
      FROM (SELECT x.id, max(x.parts_sent) AS parts_sent
              FROM unnest(p_message_ids, p_parts_sent) AS x(id, parts_sent)
             GROUP BY x.id) u
     WHERE m.id = u.id AND m.parts_sent < u.parts_sent;
$$;

-- Generations, for a batch: campaignq_store_ai_generation (0010) per element — same lease
-- guard, same "never overwrite" rule, same spend bookkeeping and budget check — set-based, in
-- one transaction: one UPDATE for the batch's rows, then the spend recorded and the budget
-- checked once per run (the sum of its elements' costs: the same totals, and the same final
-- state, as one element after another — a generation is stored whether or not an earlier one
-- of the batch reached the cap, as before). Lock order as everywhere in this file: the queue
-- rows first, in msg_id order (the heartbeat's), then the runs in id order (a capped run's row
-- is updated by the spend bookkeeping, as campaignq_complete_sent_many takes them).
-- Returns one row per element in input order: ok is that element's own answer, so each
-- caller still learns before its first send whether its text was stored. An element whose
-- message appears twice in one batch is stored once (the other answers false).
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
    v_ords   bigint[];
    v_runs   uuid[];
    v_costs  numeric[];
    v_spend  record;
BEGIN
    WITH held AS (
        SELECT q.msg_id, q.read_ct
          FROM pgmq.q_campaign_messages q
          JOIN unnest(p_msg_ids, p_read_cts) AS u(msg_id, read_ct)
            ON q.msg_id = u.msg_id AND q.read_ct = u.read_ct
         ORDER BY q.msg_id
           FOR SHARE OF q
    ), items AS (
        SELECT u.*
          FROM unnest(p_msg_ids, p_read_cts, p_message_ids, p_texts, p_parts, p_prompt_tokens,
                      p_completion_tokens, p_cost_usd, p_ai_ms, p_split_ms, p_cached_tokens,
                      p_cache_write_tokens, p_ai_calls, p_modes)
               WITH ORDINALITY AS u(msg_id, read_ct, message_id, text, parts, prompt_tokens,
                                    completion_tokens, cost_usd, ai_ms, split_ms, cached_tokens,
                                    cache_write_tokens, ai_calls, mode, ord)
          JOIN held h ON h.msg_id = u.msg_id AND h.read_ct = u.read_ct
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

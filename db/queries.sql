-- Named queries used by consumer/db.py. Each begins with a "-- name: x" line.
-- Every value is a bind parameter; nothing here is ever formatted into a string.

-- name: enqueue_due
SELECT enqueue_due_campaign_messages(%(limit)s::integer);

-- name: enqueue_due_with_target
-- The same call with the just-in-time target (0008) set for this statement's transaction
-- only: one statement, so behind a transaction pooler it runs on one server connection, and
-- the MATERIALIZED CTE is read (settings applied) before the producer function runs.
WITH target AS MATERIALIZED (
    SELECT set_config('campaignq.queue_horizon_s', %(horizon_s)s::text, true),
           set_config('campaignq.queue_min_depth', %(min_depth)s::text, true)
)
SELECT enqueue_due_campaign_messages(%(limit)s::integer) FROM target;

-- name: grant_worker_role
-- Least privilege for `campaignq consume` (and `produce`): EXECUTE on the functions the
-- consumer calls, each SECURITY DEFINER (db/migrations/0019_least_privilege.sql), and the two
-- cost views its metrics sampler reads. No table grant at all: it cannot rewrite a message,
-- cancel a run, read a lead or touch a queue except through one lease-checked outcome.
-- Everything is revoked first, so re-running gives exactly this set
-- (tests/integration/test_roles.py), on our own objects only (campaignq_revoke_role).
SELECT campaignq_revoke_role('campaignq_worker');
GRANT USAGE ON SCHEMA public TO campaignq_worker;
SELECT campaignq_grant_execute('campaignq_worker', ARRAY[
    'campaignq_read_and_claim', 'campaignq_claim_batch', 'campaignq_extend_leases',
    'campaignq_store_ai_generation', 'campaignq_store_ai_generations_many',
    'campaignq_record_part_uncertain', 'campaignq_record_part_sent', 'campaignq_record_parts_sent_many',
    'campaignq_complete_sent', 'campaignq_complete_sent_many', 'campaignq_retry_later',
    'campaignq_dead_letter', 'campaignq_release_to_pending', 'campaignq_skip_and_finalize',
    'campaignq_archive_leased', 'campaignq_release_now', 'campaignq_book_send_slot',
    'campaignq_hold_back', 'campaignq_report_inbox_trouble', 'campaignq_lease_rate_limit',
    'campaignq_release_rate_limit', 'campaignq_share_cooldown', 'campaignq_sample_queues',
    'campaignq_record_whatsapp_jid', 'campaignq_message_whatsapp_jid',
    'enqueue_due_campaign_messages', 'campaignq_resume_within_budget'],
    -- 0015_lock_order's opt-out-checking acknowledgements, where that migration is applied.
    ARRAY['campaignq_record_part_sent_checked', 'campaignq_record_parts_sent_many_checked']);
GRANT SELECT ON campaignq_run_ai_costs, campaignq_workspace_ai_costs TO campaignq_worker;

-- name: grant_reader_role
-- Read-only, for `campaignq stats` and dashboards: every campaignq_* view (they read as their
-- owner) and the few columns `stats_workspace_unpriced` reads directly. No lead data, no
-- message text, no write of any kind.
SELECT campaignq_revoke_role('campaignq_reader');
GRANT USAGE ON SCHEMA public TO campaignq_reader;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm') AND c.relname LIKE 'campaignq\_%'
                AND pg_has_role(c.relowner, 'USAGE')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO campaignq_reader', r.rel);
    END LOOP;
END;
$$;
GRANT SELECT (id, run_id, finished_at, ai_cost_usd, ai_tokens_used, ai_prompt_tokens, ai_completion_tokens)
   ON campaign_messages TO campaignq_reader;
GRANT SELECT ON campaign_runs TO campaignq_reader;  -- statuses, counters and costs: no lead data
GRANT SELECT (id, workspace_id, ai_model) ON campaign_configs TO campaignq_reader;
-- A second wall: its transactions are read-only unless it says otherwise (which its grants
-- make pointless anyway).
ALTER ROLE campaignq_reader SET default_transaction_read_only = on;

-- name: grant_console_role
-- `campaignq serve` (and the operator commands `replay` and `limits`): what the reader sees,
-- plus the console's pages and actions. Run status changes, replays and opt-outs go through
-- definer functions (a status an operator may set, from the statuses it makes sense from);
-- budgets, weights and its own tables directly; inboxes only their pause and connection
-- columns. It cannot write a message or a lead, nor touch a queue but through a replay. The
-- audit is append-only for it.
SELECT campaignq_revoke_role('campaignq_console');
GRANT USAGE ON SCHEMA public TO campaignq_console;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel, c.relname, c.relkind
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname LIKE 'campaignq\_%'
                AND pg_has_role(c.relowner, 'USAGE')
    LOOP
        IF r.relkind IN ('v', 'm') THEN
            EXECUTE format('GRANT SELECT ON %s TO campaignq_console', r.rel);
        ELSIF r.relname = 'campaignq_console_audit' THEN
            EXECUTE format('GRANT SELECT, INSERT ON %s TO campaignq_console', r.rel);
        ELSIF r.relname LIKE 'campaignq\_console\_%' THEN  -- the console's own tables (sessions…)
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO campaignq_console', r.rel);
        END IF;
    END LOOP;
END;
$$;
SELECT campaignq_grant_execute('campaignq_console', ARRAY[
    'campaignq_console_set_run_status', 'campaignq_lock_dead_letters_of_class',
    'campaignq_replay_dead_letters', 'campaignq_record_opt_out']);
GRANT SELECT (id, run_id, finished_at, ai_cost_usd, ai_tokens_used, ai_prompt_tokens, ai_completion_tokens)
   ON campaign_messages TO campaignq_console;
GRANT SELECT ON campaign_runs TO campaignq_console;
GRANT SELECT (id, workspace_id, ai_model) ON campaign_configs TO campaignq_console;
-- The dead-letter page's lead column; workspace_id: whether a workspace exists at all.
GRANT SELECT (id, workspace_id, name, phone) ON leads TO campaignq_console;
GRANT SELECT (id, workspace_id, instance, paused_at, connection_state_at),
      UPDATE (paused_at, pause_reason, connection_state, connection_state_at) ON inboxes TO campaignq_console;
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits, workspace_weights TO campaignq_console;

-- name: read_messages
SELECT msg_id, read_ct, enqueued_at, vt, message
  FROM pgmq.read(queue_name => 'campaign_messages', vt => %(vt_s)s::integer, qty => %(qty)s::integer);

-- name: read_and_claim
-- 0014: read_messages + claim_batch in one statement (one round trip, one transaction).
SELECT * FROM campaignq_read_and_claim(%(qty)s::integer, %(vt_s)s::integer,
                                       %(cached_config_ids)s::text::uuid[]);

-- name: claim_batch
-- One round trip per batch (audit problem 5): claims every claimable message of the batch
-- (status -> generating, or sending when its text was generated by an earlier attempt) and
-- returns each message with its run, lead and, unless cached, its config and inbox.
-- A row found `generating`/`sending` was left by a holder that crashed: that burns an
-- attempt here, because PGMQ's read_ct also counts deferrals and graceful releases. Only a
-- row whose run and lead match the payload is claimed: a payload naming someone else's row
-- is dead-lettered without touching that row. The statement lives in
-- `campaignq_claim_batch` (0019), so the worker role needs no grant on the tables.
SELECT * FROM campaignq_claim_batch(%(msg_ids)s::bigint[], %(read_cts)s::integer[], %(message_ids)s::uuid[],
                                    %(run_ids)s::uuid[], %(lead_ids)s::uuid[],
                                    %(cached_config_ids)s::uuid[]);

-- name: extend_leases
SELECT campaignq_extend_leases(%(msg_ids)s::bigint[], %(read_cts)s::integer[], %(vt_s)s::integer);

-- name: store_generation
-- 0010: the 0004 store plus cache figures, call count, mode and the spend-cap check.
SELECT campaignq_store_ai_generation(
    %(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
    %(text)s::text, %(parts)s::jsonb,
    %(prompt_tokens)s::integer, %(completion_tokens)s::integer, %(cost_usd)s::numeric,
    %(ai_ms)s::integer, %(split_ms)s::integer,
    %(cached_tokens)s::integer, %(cache_write_tokens)s::integer, %(ai_calls)s::integer, %(mode)s::text);

-- name: record_part_uncertain
SELECT campaignq_record_part_uncertain(%(message_id)s::uuid, %(part)s::integer, %(since)s::timestamptz);

-- name: record_part_sent
-- true: the lead opted out since the message was read — send no further part (0015).
SELECT campaignq_record_part_sent_checked(%(message_id)s::uuid, %(parts_sent)s::integer);

-- name: complete_sent
SELECT campaignq_complete_sent(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
                               %(send_ms)s::integer);

-- name: complete_sent_many
-- 0013: a batch of complete_sent (consumer/runtime/db.py OutcomeBatcher), one row per element.
-- The batched statements take each array as one text parameter (an array literal of numbers
-- or uuids, or a JSON array of text), cast here: cheaper to send than a list psycopg dumps
-- element by element (db.py `_array`, `_json_array`).
SELECT ord, msg_id, ok
  FROM campaignq_complete_sent_many(%(msg_ids)s::text::bigint[], %(read_cts)s::text::integer[],
                                    %(message_ids)s::text::uuid[], %(send_ms)s::text::integer[]);

-- name: record_parts_sent_many
-- One row per element: whether its lead opted out since the message was read (0015).
SELECT ord, opted_out
  FROM campaignq_record_parts_sent_many_checked(%(message_ids)s::text::uuid[], %(parts_sent)s::text::integer[]);

-- name: store_generations_many
SELECT ord, msg_id, ok
  FROM campaignq_store_ai_generations_many(
    %(msg_ids)s::text::bigint[], %(read_cts)s::text::integer[], %(message_ids)s::text::uuid[],
    ARRAY(SELECT t.e FROM jsonb_array_elements_text(%(texts)s::text::jsonb) WITH ORDINALITY AS t(e, o)
           ORDER BY t.o),
    ARRAY(SELECT t.e FROM jsonb_array_elements(%(parts)s::text::jsonb) WITH ORDINALITY AS t(e, o)
           ORDER BY t.o),
    %(prompt_tokens)s::text::integer[], %(completion_tokens)s::text::integer[],
    %(cost_usd)s::text::numeric[],
    %(ai_ms)s::text::integer[], %(split_ms)s::text::integer[],
    %(cached_tokens)s::text::integer[], %(cache_write_tokens)s::text::integer[],
    %(ai_calls)s::text::integer[],
    ARRAY(SELECT t.e FROM jsonb_array_elements_text(%(modes)s::text::jsonb) WITH ORDINALITY AS t(e, o)
           ORDER BY t.o));

-- name: retry_later
SELECT campaignq_retry_later(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
                             %(delay_s)s::double precision, %(burns_attempt)s::boolean,
                             %(error_class)s::text, %(error)s::text, %(stage)s::text);

-- name: dead_letter
SELECT campaignq_dead_letter(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
                             %(reason)s::text, %(error_class)s::text, %(error)s::text, %(stage)s::text,
                             %(burns_attempt)s::boolean);

-- name: release_to_pending
SELECT campaignq_release_to_pending(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid);

-- name: skip
-- issue 13: the finalising wrapper (0009), so an opted-out lead's skip can complete its run.
SELECT campaignq_skip_and_finalize(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
                      %(error_class)s::text, %(error)s::text);

-- name: archive_leased
SELECT campaignq_archive_leased(%(msg_id)s::bigint, %(read_ct)s::integer);

-- name: release_now
SELECT campaignq_release_now(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid);

-- name: book_send_slot
-- Issue 13: book the next free span of a paced or capped inbox (0009_sender_safety.sql).
SELECT booked, wait_s, messages_today
  FROM campaignq_book_send_slot(%(inbox_id)s::uuid, %(message_id)s::uuid, %(span_s)s::double precision,
                                %(daily_cap)s::integer, %(first_bubble)s::boolean, %(bubbles)s::integer);

-- name: hold_back
SELECT campaignq_hold_back(%(msg_id)s::bigint, %(read_ct)s::integer, %(message_id)s::uuid,
                           %(delay_s)s::double precision, %(reason)s::text, %(detail)s::text);

-- name: report_inbox_trouble
SELECT campaignq_report_inbox_trouble(%(inbox_id)s::uuid, %(kind)s::text, %(detail)s::text,
                                      %(retry_after_s)s::double precision, %(threshold)s::integer,
                                      %(window_s)s::double precision);

-- name: stats_inboxes
SELECT inbox_id, workspace_id, name, instance, max_sends_per_minute, daily_send_cap,
       warmup_started_at, warmup_first_day_cap, warmup_daily_growth, paused_at, pause_reason,
       next_slot_at, messages_today, bubbles_booked, rate_limited_recent, last_rate_limited_at,
       held, held_send_window, held_pace, held_daily_cap, held_inbox_paused, skipped_opted_out_24h
  FROM campaignq_inbox_safety
 WHERE max_sends_per_minute IS NOT NULL OR daily_send_cap IS NOT NULL OR paused_at IS NOT NULL
    OR warmup_started_at IS NOT NULL OR held > 0 OR skipped_opted_out_24h > 0
 ORDER BY paused_at IS NULL, name, inbox_id
 LIMIT %(limit)s::integer;

-- name: replay_dead_letters
-- Operating it (issue 4): replay, stats, prune and the metrics sampler below; their views and
-- functions live in db/migrations/0005_operator_views.sql.
SELECT dlq_msg_id, campaign_message_id, run_id, reason, previous_status, action
  FROM campaignq_replay_dead_letters(
           p_limit        => %(limit)s::integer,
           p_after_msg_id => %(after_msg_id)s::bigint,
           p_run_id       => %(run_id)s::uuid,
           p_reason       => %(reason)s::text,
           p_older_than   => make_interval(secs => %(older_than_s)s::double precision),
           p_newer_than   => make_interval(secs => %(newer_than_s)s::double precision));

-- name: stats_no_jit
-- `campaignq stats` / the console's snapshot, first statement of its transaction: the reads
-- are index-bounded aggregates of milliseconds each; JIT compiling them cost more than the
-- reads themselves (issue 25: up to 0.85 s per snapshot).
SET LOCAL jit = off;

-- name: stats_now
-- The snapshot's own clock (`campaignq stats` runs in one repeatable-read transaction).
SELECT now();

-- name: stats_queues
SELECT queue_name, role, depth, visible, in_flight, delayed, oldest_age_s, dead_letters, archived_estimate
  FROM campaignq_queue_overview;

-- name: stats_runs
-- One run when run_id is given; else every run not finished yet plus those finished in the
-- last day, newest first.
SELECT run_id, workspace_id, config_id, campaign, ai_model, run_status, leads_total, leads_processed,
       messages, pending, queued, in_progress, sent, failed, skipped, done_pct,
       retries, retried_messages, deferrals, tokens, prompt_tokens, completion_tokens,
       cost_usd, unpriced_messages, unpriced_prompt_tokens, unpriced_completion_tokens,
       ai_ms_p50, ai_ms_p95, split_ms_p50, split_ms_p95, send_ms_p50, send_ms_p95,
       sent_last_minute, sent_per_minute, started_at, finished_at, last_sent_at
  FROM campaignq_run_progress
 WHERE run_id = ANY (ARRAY(
        -- The runs shown are picked from campaign_runs first, so the view aggregates only
        -- their messages (not every message of every unfinished run, then keeps 20).
        SELECT r.id FROM campaign_runs r
         WHERE CASE WHEN %(run_id)s::uuid IS NULL
                    THEN r.status IN ('scheduled', 'running', 'paused') OR r.finished_at >= now() - interval '1 day'
                    ELSE r.id = %(run_id)s::uuid END
         ORDER BY r.started_at DESC NULLS FIRST, r.id
         LIMIT %(limit)s::integer))
 ORDER BY started_at DESC NULLS FIRST, run_id;

-- name: stats_workspaces
SELECT workspace_id, period, finished, sent, failed, skipped, retries, timeouts, rate_limited,
       tokens, cost_usd, unpriced_messages, ai_ms_p50, ai_ms_p95, send_ms_p50, send_ms_p95, sent_per_minute
  FROM campaignq_workspace_totals
 WHERE %(workspace_id)s::uuid IS NULL OR workspace_id = %(workspace_id)s::uuid
 ORDER BY workspace_id, period;

-- name: stats_workspace_unpriced
-- Tokens of finished rows with no stored cost, per model: `campaignq stats` prices them with
-- the current price table (a view cannot read the application's configuration).
SELECT c.workspace_id, m.period, c.ai_model,
       count(*) AS messages,
       coalesce(sum(m.ai_prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(m.ai_completion_tokens), 0)::bigint AS completion_tokens
-- Each period a constant bound on campaign_messages_unpriced_idx (0020).
  FROM (SELECT '1h'::text AS period, m.run_id, m.ai_prompt_tokens, m.ai_completion_tokens
          FROM campaign_messages m
         WHERE m.finished_at >= now() - interval '1 hour'
           AND m.ai_cost_usd IS NULL AND m.ai_tokens_used IS NOT NULL
        UNION ALL
        SELECT '24h'::text, m.run_id, m.ai_prompt_tokens, m.ai_completion_tokens
          FROM campaign_messages m
         WHERE m.finished_at >= now() - interval '1 day'
           AND m.ai_cost_usd IS NULL AND m.ai_tokens_used IS NOT NULL) AS m
  JOIN campaign_runs r ON r.id = m.run_id
  JOIN campaign_configs c ON c.id = r.config_id
 WHERE %(workspace_id)s::uuid IS NULL OR c.workspace_id = %(workspace_id)s::uuid
 GROUP BY c.workspace_id, m.period, c.ai_model;

-- name: stats_dead_letters_by_reason
SELECT reason, error_class, dead_letters, runs, oldest_at, newest_at
  FROM campaignq_dead_letters_by_reason
 ORDER BY dead_letters DESC, reason, error_class;

-- name: stats_dead_letters_by_run
SELECT run_id, workspace_id, reason, dead_letters, oldest_at, newest_at
  FROM campaignq_dead_letters_by_run
 WHERE %(run_id)s::uuid IS NULL OR run_id = %(run_id)s::uuid
 ORDER BY dead_letters DESC, run_id, reason
 LIMIT %(limit)s::integer;

-- name: sample_queues
-- The metrics sampler, every few seconds per consumer: one scan of each queue table (what
-- pgmq.metrics() costs) and nothing per message, in `campaignq_sample_queues` (0019) so the
-- worker role reads counts, never queue rows.
SELECT queue_name, depth, visible, in_flight, oldest_age_s FROM campaignq_sample_queues();

-- name: prune_cutoff
SELECT now() - make_interval(secs => %(older_than_s)s::double precision);

-- name: prune_count
SELECT 'campaign_messages' AS queue_name, count(*) AS prunable, min(archived_at) AS oldest_archived_at
  FROM pgmq.a_campaign_messages WHERE archived_at < %(before)s::timestamptz
UNION ALL
SELECT 'campaign_messages_dlq', count(*), min(archived_at)
  FROM pgmq.a_campaign_messages_dlq WHERE archived_at < %(before)s::timestamptz;

-- name: prune_archive_batch
SELECT campaignq_prune_archive(%(queue)s::text, %(before)s::timestamptz, %(limit)s::integer);

-- name: resume_within_budget
-- Runs paused for budget whose caps leave room again (a new UTC day for workspace caps).
SELECT campaignq_resume_within_budget();

-- name: stats_ai_costs
SELECT run_id, workspace_id, ai_model, run_status, pause_reason, ai_cost_cap_usd, generated,
       batch_generated, ai_calls, ai_calls_per_message, prompt_tokens, cached_tokens,
       cache_write_tokens, cached_token_share, cost_usd, cost_per_1000_messages_usd, budget_exhausted
  FROM campaignq_run_ai_costs
 WHERE CASE WHEN %(run_id)s::uuid IS NULL
            THEN run_status IN ('scheduled', 'running', 'paused') OR generated > 0
            ELSE run_id = %(run_id)s::uuid END
 ORDER BY run_id
 LIMIT %(limit)s::integer;

-- name: stats_workspace_ai_costs
SELECT workspace_id, day, generated, batch_generated, ai_calls, prompt_tokens, cached_tokens,
       cached_token_share, cost_usd, cost_per_1000_messages_usd, daily_ai_cost_cap_usd,
       runs_budget_exhausted
  FROM campaignq_workspace_ai_costs
 WHERE day >= (now() AT TIME ZONE 'UTC')::date - 1
   AND (%(workspace_id)s::uuid IS NULL OR workspace_id = %(workspace_id)s::uuid)
 ORDER BY workspace_id, day;

-- name: pregen_claim
SELECT message_id, config_id, lead_name, custom_fields
  FROM campaignq_claim_for_batch(%(batch_id)s::uuid,
                                 make_interval(secs => %(min_ahead_s)s::double precision),
                                 make_interval(secs => %(horizon_s)s::double precision),
                                 %(limit)s::integer);

-- name: pregen_configs
SELECT c.id, c.workspace_id, c.ai_model, c.system_prompt, c.split_messages, c.max_parts, c.max_tokens,
       c.inbox_id, i.instance
  FROM campaign_configs c JOIN inboxes i ON i.id = c.inbox_id
 WHERE c.id = ANY (%(config_ids)s::uuid[]);

-- name: pregen_new_batch
INSERT INTO ai_batches (status) VALUES ('preparing') RETURNING id;

-- name: pregen_regroup
-- One claim may hold several models (or schemas); a provider batch takes one (issue 21). Moves
-- the given rows of a claimed batch into a new batch of their own, in one statement.
WITH moved AS (
    INSERT INTO ai_batches (id, status) VALUES (%(new_batch_id)s::uuid, 'preparing') RETURNING id
)
UPDATE campaign_messages SET ai_batch_id = (SELECT id FROM moved)
 WHERE ai_batch_id = %(batch_id)s::uuid AND id = ANY (%(message_ids)s::uuid[]);

-- name: pregen_submitted
UPDATE ai_batches
   SET status = 'submitted', provider_batch_id = %(provider_batch_id)s::text,
       input_file_id = %(input_file_id)s::text, requests = %(requests)s::integer, submitted_at = now()
 WHERE id = %(batch_id)s::uuid;

-- name: pregen_abandon
-- A batch that could not be created: release its rows (never submitted, so nothing to pay)
-- and mark it failed. The rows may join a later batch. Rows locked in id order first (the lock
-- order of 0015: a cancel may be skipping some of them, in id order, at the same time).
WITH locked AS (
    SELECT id FROM campaign_messages
     WHERE ai_batch_id = %(batch_id)s::uuid AND parts IS NULL
     ORDER BY id
       FOR NO KEY UPDATE
), released AS (
    UPDATE campaign_messages m SET ai_batch_id = NULL
      FROM locked
     WHERE m.id = locked.id AND m.ai_batch_id = %(batch_id)s::uuid AND m.parts IS NULL
    RETURNING m.id
)
UPDATE ai_batches SET status = 'failed', error = %(error)s::text, finished_at = now()
 WHERE id = %(batch_id)s::uuid AND status = 'preparing';

-- name: pregen_open_batches
SELECT id, provider_batch_id, status, created_at
  FROM ai_batches WHERE status IN ('preparing', 'submitted') ORDER BY created_at;

-- name: pregen_store
SELECT campaignq_store_pregenerated(
    %(message_id)s::uuid, %(batch_id)s::uuid, %(text)s::text, %(parts)s::jsonb,
    %(prompt_tokens)s::integer, %(completion_tokens)s::integer, %(cost_usd)s::numeric,
    %(cached_tokens)s::integer, %(cache_write_tokens)s::integer);

-- name: pregen_finished
UPDATE ai_batches
   SET status = %(status)s::text, output_file_id = %(output_file_id)s::text,
       error_file_id = %(error_file_id)s::text, stored = %(stored)s::integer,
       failed_items = %(failed_items)s::integer, discarded = %(discarded)s::integer,
       error = %(error)s::text, finished_at = now()
 WHERE id = %(batch_id)s::uuid;

-- name: sample_run_ai_costs
-- The LLM cost gauges (issue 14), runs still running or paused only.
SELECT run_id, cached_token_share, cost_per_1000_messages_usd, budget_exhausted
  FROM campaignq_run_ai_costs
 WHERE run_status IN ('running', 'paused');

-- name: sample_workspace_ai_costs
SELECT workspace_id, cached_token_share, cost_per_1000_messages_usd
  FROM campaignq_workspace_ai_costs
 WHERE day = (now() AT TIME ZONE 'UTC')::date;

-- name: pregen_expire_preparing
-- A batch left 'preparing' (its process died between claiming rows and recording the
-- provider's batch id): its rows stay claimed (a provider batch may exist and we would pay
-- twice), so they are generated synchronously at due time; the batch is marked failed.
UPDATE ai_batches SET status = 'failed', error = 'abandoned while preparing', finished_at = now()
 WHERE status = 'preparing' AND created_at < now() - make_interval(secs => %(older_than_s)s::double precision);

-- name: demo_other_open_work
-- `campaignq demo`: due messages of other running runs, which the demo's consumers also finish.
SELECT count(*)
  FROM campaign_messages m JOIN campaign_runs r ON r.id = m.run_id
 WHERE r.status = 'running' AND m.run_id <> ALL(%(ours)s::uuid[])
   AND m.status IN ('pending', 'queued', 'generating', 'sending') AND m.scheduled_at <= now();

-- name: demo_sent_times
-- `campaignq demo`: when each message of the paced run was sent (epoch seconds), for its busiest 10 s.
SELECT extract(epoch FROM sent_at)::double precision
  FROM campaign_messages
 WHERE run_id = %(run_id)s::uuid AND status = 'sent'
 ORDER BY sent_at;

-- === Fair share and the shared AI budget (issue 12, db/migrations/0008) ===================

-- name: lease_rate_limit
-- One refresh of this process's slice of a shared budget: about once a second per process.
SELECT budget_rpm, granted_rpm, holders, cooldown_until
  FROM campaignq_lease_rate_limit(
           p_name       => %(name)s::text,
           p_holder     => %(holder)s::text,
           p_host       => %(host)s::text,
           p_pid        => %(pid)s::integer,
           p_cap_rpm    => %(cap_rpm)s::integer,
           p_wanted_rpm => %(wanted_rpm)s::integer,
           p_used_rpm   => %(used_rpm)s::integer,
           p_requests   => %(requests)s::bigint,
           p_lease_s    => %(lease_s)s::double precision);

-- name: release_rate_limit
SELECT campaignq_release_rate_limit(%(name)s::text, %(holder)s::text);

-- name: rate_limit_cooldown
-- 0019: bounded to 600 s, whatever the caller asks.
SELECT campaignq_share_cooldown(%(name)s::text, %(seconds)s::double precision,
                                %(holder)s::text, %(reason)s::text);

-- name: limits_usage
SELECT name, requests_per_minute, holders, granted_rpm, wanted_rpm, used_rpm, used_pct,
       cooldown_until, updated_at
  FROM campaignq_rate_limit_usage
 ORDER BY name;

-- name: limits_holders
SELECT name, holder, host, pid, cap_rpm, wanted_rpm, granted_rpm, used_rpm, requests_total,
       joined_at, seen_at, seen_s_ago
  FROM campaignq_rate_limit_holders
 ORDER BY name, holder;

-- name: limits_set
INSERT INTO rate_limits (name, requests_per_minute) VALUES (%(name)s::text, %(rpm)s::integer)
ON CONFLICT (name) DO UPDATE SET requests_per_minute = excluded.requests_per_minute
RETURNING name, requests_per_minute;

-- name: limits_delete
DELETE FROM rate_limits WHERE name = %(name)s::text RETURNING name;

-- name: weights_list
SELECT workspace_id, weight, updated_at FROM workspace_weights ORDER BY workspace_id;

-- name: weights_set
INSERT INTO workspace_weights (workspace_id, weight) VALUES (%(workspace_id)s::uuid, %(weight)s::integer)
ON CONFLICT (workspace_id) DO UPDATE SET weight = excluded.weight
RETURNING workspace_id, weight;

-- name: weights_delete
DELETE FROM workspace_weights WHERE workspace_id = %(workspace_id)s::uuid RETURNING workspace_id;

-- name: stats_fair_share
SELECT workspace_id, weight, running_runs, due, in_queue, share_pct
  FROM campaignq_fair_share
 ORDER BY share_pct DESC, workspace_id;

-- name: record_whatsapp_jid
-- 0017: the `key.remoteJid` the gateway answered for a part of this message (issue 21). An
-- unguarded fact like `record_part_sent`; a no-op when the row already has it.
-- Through 0019's definer function: the worker role has no UPDATE on the table.
SELECT * FROM campaignq_record_whatsapp_jid(%(message_id)s::uuid, %(jid)s::text);

-- name: message_whatsapp_jid
-- 0017: the jid to reconcile an uncertain part in first (NULL: none recorded).
SELECT campaignq_message_whatsapp_jid(%(message_id)s::uuid);

-- 0019_least_privilege (issue 22): each process's role can do its job and nothing else.
--
-- Before, `campaignq_worker` held table grants wide enough to rewrite any message's text or
-- lead, mark rows sent, cancel every run, store a day-long AI cooldown, delete queue rows and
-- read every lead. Now it holds no table grant at all: it may only EXECUTE the functions the
-- consumer calls, which run as their owner (SECURITY DEFINER) and do exactly one outcome
-- each, lease-checked. The console and the reader get their own roles (granted by
-- `campaignq migrate --create-roles`, db/queries.sql `grant_*_role`).
--
-- This migration:
-- 1. wraps what the consumer and the console still issued as plain table statements in small
--    functions (same statement, same round trips);
-- 2. makes every function a role may call SECURITY DEFINER with a fixed search_path, and
--    takes EXECUTE on them away from PUBLIC: a definer function is a privilege, granted by
--    name to the role that needs it. Matched by name, not signature, so a function that an
--    earlier migration re-created with another signature is covered all the same;
-- 3. adds the two helpers `--create-roles` uses to revoke and grant.
--
-- CREATE OR REPLACE resets SECURITY DEFINER and SET: a later migration that replaces one of
-- these functions must restate both (tests/integration/test_roles.py fails otherwise).

-- --- the consumer's remaining statements, as functions -------------------------------------

-- claim_batch (db/queries.sql before 0019): the claim of payloads the read-and-claim did not
-- trust but the consumer's parser accepted. The same statement, unchanged.
CREATE OR REPLACE FUNCTION campaignq_claim_batch(
    p_msg_ids bigint[], p_read_cts integer[], p_message_ids uuid[], p_run_ids uuid[],
    p_lead_ids uuid[], p_cached_config_ids uuid[])
RETURNS TABLE (
    msg_id bigint, found boolean, claimed boolean, previous_status text, run_status text,
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
LANGUAGE sql AS $$
WITH batch AS (
    SELECT b.msg_id, b.read_ct, b.message_id, b.run_id, b.lead_id, b.ord
      FROM unnest(p_msg_ids, p_read_cts, p_message_ids, p_run_ids, p_lead_ids)
           WITH ORDINALITY AS b(msg_id, read_ct, message_id, run_id, lead_id, ord)
), claimed AS (
    UPDATE campaign_messages m
       SET status = CASE WHEN m.parts IS NULL THEN 'generating' ELSE 'sending' END,
           retry_count = m.retry_count + CASE WHEN m.status IN ('generating', 'sending') THEN 1 ELSE 0 END,
           attempt_history = CASE WHEN m.status IN ('generating', 'sending')
               THEN campaignq_history_append(m.attempt_history, jsonb_build_object(
                        'at', now(), 'attempt', m.retry_count + 1, 'burned', true,
                        'error_class', 'crashed', 'stage', m.status,
                        'error', 'the previous holder stopped mid-message (crash or lost lease)'))
               ELSE m.attempt_history END
      FROM batch b, campaign_runs r
     WHERE m.id = b.message_id
       AND m.run_id = b.run_id
       AND m.lead_id = b.lead_id
       AND r.id = m.run_id
       AND r.status = 'running'
       AND m.status IN ('queued', 'generating', 'sending')
       AND EXISTS (SELECT 1 FROM pgmq.q_campaign_messages q
                    WHERE q.msg_id = b.msg_id AND q.read_ct = b.read_ct)
    RETURNING m.id, m.retry_count, m.attempt_history
)
SELECT b.msg_id,
       m.id IS NOT NULL,
       c.id IS NOT NULL,
       m.status::text,
       r.status::text,
       m.run_id,
       m.lead_id,
       coalesce(c.retry_count, m.retry_count),
       m.deferral_count,
       m.first_deferred_at,
       m.generated_message,
       m.parts,
       m.parts_sent,
       m.uncertain_part,
       m.uncertain_since,
       m.updated_at,
       coalesce(c.attempt_history, m.attempt_history),
       l.name,
       l.phone,
       l.custom_fields,
       r.config_id,
       cf.workspace_id,
       cf.ai_model,
       cf.system_prompt,
       cf.split_messages,
       cf.max_parts,
       cf.max_tokens,
       cf.inbox_id,
       i.instance,
       i.uncertain_send_policy,
       l.opted_out_at,
       l.timezone,
       sc.timezone,
       sc.send_window_start,
       sc.send_window_end,
       sc.inbox_id,
       si.max_sends_per_minute,
       si.daily_send_cap,
       si.paused_at,
       si.pause_reason,
       si.warmup_started_at,
       si.warmup_first_day_cap,
       si.warmup_daily_growth::double precision,
       extract(epoch FROM m.send_slot_at - clock_timestamp())::double precision
  FROM batch b
  LEFT JOIN campaign_messages m ON m.id = b.message_id
  LEFT JOIN claimed c ON c.id = b.message_id
  LEFT JOIN campaign_runs r ON r.id = m.run_id
  LEFT JOIN leads l ON l.id = m.lead_id
  LEFT JOIN campaign_configs cf
         ON cf.id = r.config_id AND NOT (cf.id = ANY (p_cached_config_ids))
  LEFT JOIN inboxes i ON i.id = cf.inbox_id
  LEFT JOIN campaign_configs sc ON sc.id = r.config_id
  LEFT JOIN inboxes si ON si.id = sc.inbox_id
 ORDER BY b.ord;
$$;

-- The metrics sampler's one scan of each queue table (what pgmq.metrics() costs): the
-- worker reads counts, never the queue rows themselves.
CREATE OR REPLACE FUNCTION campaignq_sample_queues()
RETURNS TABLE (queue_name text, depth bigint, visible bigint, in_flight bigint, oldest_age_s double precision)
LANGUAGE sql STABLE AS $$
SELECT 'campaign_messages'::text,
       count(*),
       count(*) FILTER (WHERE q.vt <= now()),
       count(*) FILTER (WHERE q.vt > now() AND q.read_ct > 0),
       coalesce(extract(epoch FROM now() - min(q.enqueued_at)), 0)::double precision
  FROM pgmq.q_campaign_messages q
UNION ALL
SELECT 'campaign_messages_dlq'::text,
       count(*),
       count(*) FILTER (WHERE d.vt <= now()),
       count(*) FILTER (WHERE d.vt > now() AND d.read_ct > 0),
       coalesce(extract(epoch FROM now() - min(d.enqueued_at)), 0)::double precision
  FROM pgmq.q_campaign_messages_dlq d;
$$;

-- A clean shutdown hands this holder's slice of a shared budget back at once.
CREATE OR REPLACE FUNCTION campaignq_release_rate_limit(p_name text, p_holder text)
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rate_limit_slices s WHERE s.name = p_name AND s.holder = p_holder;
$$;

-- The provider cooldown a consumer shares (0008's `campaignq_rate_limit_cooldown`), bounded:
-- at most 600 s from now (above the 120 s Retry-After the consumer honours by default,
-- `CAMPAIGNQ_AI_MAX_RETRY_AFTER_S`), so no caller can stop every consumer's AI calls for
-- longer than that with one statement. NaN and infinities clamp to the bound too.
CREATE OR REPLACE FUNCTION campaignq_share_cooldown(
    p_name text, p_seconds double precision, p_set_by text, p_reason text)
RETURNS timestamptz
LANGUAGE sql AS $$
    SELECT campaignq_rate_limit_cooldown(
        p_name,
        CASE WHEN p_seconds IS NULL OR p_seconds <= 0 THEN 0
             WHEN p_seconds >= 600 THEN 600          -- also 'NaN' and 'Infinity'
             ELSE p_seconds END,
        left(p_set_by, 200),
        left(p_reason, 500));
$$;

-- The chat a message went to, as the gateway named it (issue 21, `campaign_messages.whatsapp_jid`
-- from 0017_whatsapp_jid): recorded and read by the worker through these, not by table
-- grants. PL/pgSQL, so they can be created before that column exists (its body is checked
-- when first called); `record_whatsapp_jid` / `message_whatsapp_jid` call them.
CREATE OR REPLACE FUNCTION campaignq_record_whatsapp_jid(p_message_id uuid, p_jid text)
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE campaign_messages m SET whatsapp_jid = p_jid
     WHERE m.id = p_message_id AND m.whatsapp_jid IS DISTINCT FROM p_jid
    RETURNING m.id;
END;
$$;

CREATE OR REPLACE FUNCTION campaignq_message_whatsapp_jid(p_message_id uuid)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT m.whatsapp_jid FROM campaign_messages m WHERE m.id = p_message_id);
END;
$$;

-- --- the console's remaining statements, as functions --------------------------------------

-- An operator's pause / resume / cancel (console_set_run_status before 0019): a plain status
-- change (the run's triggers carry the side effects), only to a status an operator may set
-- and only from the statuses the action makes sense from. Returns no row otherwise.
CREATE OR REPLACE FUNCTION campaignq_console_set_run_status(
    p_run_id uuid, p_status text, p_allowed_from text[])
RETURNS TABLE (previous_status text, new_status text)
LANGUAGE sql AS $$
    UPDATE campaign_runs r
       SET status = p_status, pause_reason = NULL
      FROM (SELECT c.id, c.status AS previous FROM campaign_runs c WHERE c.id = p_run_id FOR UPDATE) p
     WHERE r.id = p.id
       AND p.previous = ANY (p_allowed_from)
       AND p_status IN ('paused', 'running', 'cancelled')
    RETURNING p.previous::text, r.status::text;
$$;

-- Replay by error class, step 1 (console_lock_dead_letters_of_class before 0019): lock the
-- next page of matching letters in the caller's transaction. Step 2 replays exactly these.
CREATE OR REPLACE FUNCTION campaignq_lock_dead_letters_of_class(
    p_after_msg_id bigint, p_error_class text, p_run_id uuid, p_reason text,
    p_older_than_s double precision, p_newer_than_s double precision, p_limit integer)
RETURNS SETOF bigint
LANGUAGE sql AS $$
SELECT d.msg_id
  FROM pgmq.q_campaign_messages_dlq d
 WHERE d.msg_id > p_after_msg_id
   AND coalesce(d.message->>'error_class', 'unknown') = p_error_class
   AND (p_run_id IS NULL OR campaignq_try_uuid(d.message->>'run_id') = p_run_id)
   AND (p_reason IS NULL OR coalesce(d.message->>'reason', 'unknown') = p_reason)
   AND (p_older_than_s IS NULL OR d.enqueued_at <= now() - make_interval(secs => p_older_than_s))
   AND (p_newer_than_s IS NULL OR d.enqueued_at >= now() - make_interval(secs => p_newer_than_s))
 ORDER BY d.msg_id
 LIMIT p_limit
   FOR UPDATE OF d SKIP LOCKED;
$$;

-- --- definer functions ----------------------------------------------------------------------

-- Takes EXECUTE on `p_fn` away from every role but its owner and our three roles: on
-- Supabase, default privileges grant every new function in public to `anon` and
-- `authenticated` (callable through the REST API), which must never reach a definer function.
CREATE OR REPLACE FUNCTION campaignq_revoke_other_grantees(p_fn regprocedure)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT DISTINCT g.rolname
                    FROM pg_proc p, aclexplode(p.proacl) a JOIN pg_roles g ON g.oid = a.grantee
                   WHERE p.oid = p_fn AND a.grantee <> p.proowner
                     AND g.rolname NOT IN ('campaignq_worker', 'campaignq_console', 'campaignq_reader')
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %I', p_fn, v_role);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION campaignq_revoke_other_grantees(regprocedure) FROM PUBLIC;

-- Every function a role is granted. Each runs as its owner (the migrating role) with a
-- search_path no caller can change: pg_catalog first (no built-in can be shadowed), then our
-- schema and PGMQ's (PGMQ calls are schema-qualified anyway), pg_temp last.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS fn, p.prokind
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'public'
                AND p.proname = ANY (ARRAY[
                    -- the consumer (campaignq_worker)
                    'campaignq_read_and_claim', 'campaignq_claim_batch', 'campaignq_extend_leases',
                    'campaignq_store_ai_generation', 'campaignq_store_ai_generations_many',
                    'campaignq_record_part_uncertain', 'campaignq_record_part_sent',
                    'campaignq_record_parts_sent_many', 'campaignq_complete_sent',
                    'campaignq_complete_sent_many', 'campaignq_retry_later', 'campaignq_dead_letter',
                    'campaignq_release_to_pending', 'campaignq_skip_and_finalize',
                    'campaignq_archive_leased', 'campaignq_release_now', 'campaignq_book_send_slot',
                    'campaignq_hold_back', 'campaignq_report_inbox_trouble',
                    'campaignq_lease_rate_limit', 'campaignq_release_rate_limit',
                    'campaignq_share_cooldown', 'campaignq_sample_queues',
                    'campaignq_record_whatsapp_jid', 'campaignq_message_whatsapp_jid',
                    -- 0015_lock_order's variants of record_part(s)_sent, where that migration is
                    'campaignq_record_part_sent_checked', 'campaignq_record_parts_sent_many_checked',
                    -- the producer (campaignq_worker too: `campaignq produce`)
                    'enqueue_due_campaign_messages', 'campaignq_resume_within_budget',
                    -- the console and the CLI's replay (campaignq_console)
                    'campaignq_console_set_run_status', 'campaignq_lock_dead_letters_of_class',
                    'campaignq_replay_dead_letters', 'campaignq_record_opt_out'])
                AND pg_has_role(p.proowner, 'USAGE')
    LOOP
        EXECUTE format('ALTER %s %s SECURITY DEFINER SET search_path = pg_catalog, public, pgmq, pg_temp',
                       CASE WHEN r.prokind = 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.fn);
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', r.fn);
        PERFORM campaignq_revoke_other_grantees(r.fn);
    END LOOP;
END;
$$;

-- --- what `migrate --create-roles` uses ------------------------------------------------------

-- Revokes everything `p_role` holds on what is ours: our tables, views and sequences in
-- public, our four queue tables in pgmq, our functions; and its USAGE on schema pgmq where
-- we granted it (a role of ours reaches PGMQ only through our functions). Other
-- applications' objects (Supabase projects share both schemas) are never touched.
CREATE OR REPLACE FUNCTION campaignq_revoke_role(p_role text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel, c.relkind
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                AND ((n.nspname = 'public' AND pg_has_role(c.relowner, 'USAGE'))
                     OR (n.nspname = 'pgmq' AND c.relname IN ('q_campaign_messages', 'a_campaign_messages',
                                                              'q_campaign_messages_dlq',
                                                              'a_campaign_messages_dlq')))
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM %I',
                       CASE WHEN r.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.rel, p_role);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS fn
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'public' AND pg_has_role(p.proowner, 'USAGE')
                AND (p.proname LIKE 'campaignq\_%' OR p.proname IN ('enqueue_due_campaign_messages',
                                                                    'finalize_campaign_run_if_complete'))
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %I', r.fn, p_role);
    END LOOP;
    BEGIN
        EXECUTE format('REVOKE USAGE ON SCHEMA pgmq FROM %I', p_role);
    EXCEPTION WHEN insufficient_privilege OR invalid_schema_name THEN
        NULL;  -- granted by someone else, or no pgmq: not ours to change
    END;
END;
$$;

-- Grants EXECUTE on the named functions of ours (every signature) to `p_role`. Refuses a
-- function that is not SECURITY DEFINER with a fixed search_path (a later CREATE OR REPLACE
-- that forgot to restate them) or, unless named in `p_if_present`, that does not exist: the
-- role could not do its job.
CREATE OR REPLACE FUNCTION campaignq_grant_execute(p_role text, p_names text[], p_if_present text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
    r record;
    v_found boolean;
BEGIN
    FOREACH v_name IN ARRAY p_names || p_if_present LOOP
        v_found := false;
        FOR r IN SELECT p.oid::regprocedure AS fn, p.prosecdef,
                        coalesce(array_to_string(p.proconfig, ',') LIKE '%search_path=%', false) AS fixed_path
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'public' AND p.proname = v_name AND pg_has_role(p.proowner, 'USAGE')
        LOOP
            IF NOT (r.prosecdef AND r.fixed_path) THEN
                RAISE EXCEPTION '% must be SECURITY DEFINER with a fixed search_path before % may call it',
                    r.fn, p_role;
            END IF;
            EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', r.fn);
            PERFORM campaignq_revoke_other_grantees(r.fn);
            EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', r.fn, p_role);
            v_found := true;
        END LOOP;
        IF NOT v_found AND NOT v_name = ANY (p_if_present) THEN
            RAISE EXCEPTION 'no function % to grant to %', v_name, p_role;
        END IF;
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION campaignq_revoke_role(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION campaignq_grant_execute(text, text[], text[]) FROM PUBLIC;

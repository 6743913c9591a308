-- Named queries of the operator console (`campaignq serve`), loaded by consumer/sql.py beside
-- db/queries.sql. Views and the audit table live in db/migrations/0012_console.sql.

-- name: console_ping
SELECT 1;

-- name: console_throughput
SELECT minute, sent, failed FROM campaignq_throughput_last_hour ORDER BY minute;

-- name: console_inboxes
SELECT inbox_id, workspace_id, name, instance, connection_state, connection_state_at,
       max_sends_per_minute, daily_send_cap, paused_at, pause_reason, sent_last_minute, sent_today
  FROM campaignq_inbox_overview
 ORDER BY name, instance;

-- name: console_workspaces
SELECT workspace_id, weight, weight_set, running_runs, paused_runs, sent_5m, configured_share, recent_share
  FROM campaignq_workspace_share
 ORDER BY configured_share DESC NULLS LAST, workspace_id;

-- name: console_rate_limits
-- The budgets and what used them: AI generations finished in the last minute (every process).
SELECT rl.name, rl.requests_per_minute, rl.updated_at,
       (SELECT count(*) FROM campaign_messages m
         WHERE m.finished_at >= now() - interval '1 minute' AND m.ai_tokens_used IS NOT NULL) AS used_last_minute
  FROM rate_limits rl
 ORDER BY rl.name;

-- name: console_audit_recent
SELECT id, at, actor, action, target, filter, result
  FROM campaignq_console_audit
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: console_audit_insert
INSERT INTO campaignq_console_audit (actor, action, target, filter, result)
VALUES (%(actor)s, %(action)s, %(target)s, %(filter)s, %(result)s)
RETURNING id;

-- name: console_dead_letters
-- The page's list: the first letters matching the filter (same filters as the replay, plus
-- the error class) and how many match in all. The page walks the DLQ's primary key and stops
-- at `limit`; only its letters are joined to leads. The count is a second, narrow pass
-- (0012's `count(*) OVER ()` computed and joined every matching letter to show 100).
WITH matching AS NOT MATERIALIZED (
    SELECT d.dlq_msg_id, d.campaign_message_id, d.run_id, d.lead_id, d.reason, d.error_class,
           d.error, d.attempts, d.dead_lettered_at
      FROM campaignq_dead_letters d
     WHERE (%(run_id)s::uuid IS NULL OR d.run_id = %(run_id)s::uuid)
       AND (%(reason)s::text IS NULL OR d.reason = %(reason)s::text)
       AND (%(error_class)s::text IS NULL OR coalesce(d.error_class, 'unknown') = %(error_class)s::text)
       AND (%(older_than_s)s::float8 IS NULL
            OR d.dead_lettered_at <= now() - make_interval(secs => %(older_than_s)s::float8))
       AND (%(newer_than_s)s::float8 IS NULL
            OR d.dead_lettered_at >= now() - make_interval(secs => %(newer_than_s)s::float8))
)
SELECT p.dlq_msg_id, p.campaign_message_id, p.run_id, p.reason,
       coalesce(p.error_class, 'unknown') AS error_class, p.error, p.attempts, p.dead_lettered_at,
       l.name AS lead_name, l.phone AS lead_phone,
       (SELECT count(*) FROM matching) AS matching
  FROM (SELECT * FROM matching ORDER BY dlq_msg_id LIMIT %(limit)s) AS p
  LEFT JOIN leads l ON l.id = p.lead_id
 ORDER BY p.dlq_msg_id;

-- name: console_lock_dead_letters_of_class
-- Replay by error class, step 1 (campaignq_replay_dead_letters has no class filter): lock
-- the next page of matching letters in this transaction (`campaignq_lock_dead_letters_of_class`,
-- 0019: the console role has no grant on the queue tables). Step 2 replays exactly these.
SELECT msg_id
  FROM campaignq_lock_dead_letters_of_class(
           p_after_msg_id => %(after_msg_id)s::bigint, p_error_class => %(error_class)s::text,
           p_run_id => %(run_id)s::uuid, p_reason => %(reason)s::text,
           p_older_than_s => %(older_than_s)s::float8, p_newer_than_s => %(newer_than_s)s::float8,
           p_limit => %(limit)s::integer) AS t(msg_id);

-- name: console_replay_locked_letters
-- Step 2: one call of the replay function per locked letter. Starting right before it,
-- with a limit of 1, the function can only return that very letter: this transaction holds
-- its lock (SKIP LOCKED does not skip our own) and it matches the other filters.
SELECT r.dlq_msg_id, r.campaign_message_id, r.run_id, r.reason, r.previous_status, r.action
  FROM unnest(%(msg_ids)s::bigint[]) WITH ORDINALITY AS t(msg_id, ord)
 CROSS JOIN LATERAL campaignq_replay_dead_letters(
           p_limit        => 1,
           p_after_msg_id => t.msg_id - 1) AS r
 ORDER BY t.ord;

-- name: console_set_run_status
-- An operator's pause / resume / cancel: a plain status change (the run's triggers carry the
-- side effects), only from the statuses the action makes sense from
-- (`campaignq_console_set_run_status`, 0019: the console role cannot update runs itself).
SELECT previous_status, new_status
  FROM campaignq_console_set_run_status(%(run_id)s::uuid, %(status)s::text, %(allowed_from)s::text[]);

-- name: console_run_status
SELECT status FROM campaign_runs WHERE id = %(run_id)s::uuid;

-- name: console_set_workspace_weight
-- Only for a workspace something names (a config, an inbox or a lead): no row back means
-- there is no such workspace (issue 22: a typo'd id used to get a weight of its own).
INSERT INTO workspace_weights (workspace_id, weight)
SELECT %(workspace_id)s::uuid, %(weight)s::integer
 WHERE EXISTS (SELECT 1 FROM campaign_configs WHERE workspace_id = %(workspace_id)s::uuid)
    OR EXISTS (SELECT 1 FROM inboxes WHERE workspace_id = %(workspace_id)s::uuid)
    OR EXISTS (SELECT 1 FROM leads WHERE workspace_id = %(workspace_id)s::uuid)
ON CONFLICT (workspace_id) DO UPDATE SET weight = EXCLUDED.weight
RETURNING weight;

-- name: console_set_rate_limit
INSERT INTO rate_limits (name, requests_per_minute) VALUES (%(name)s::text, %(rpm)s::integer)
ON CONFLICT (name) DO UPDATE SET requests_per_minute = EXCLUDED.requests_per_minute
RETURNING requests_per_minute;

-- name: console_delete_rate_limit
DELETE FROM rate_limits WHERE name = %(name)s::text RETURNING name;

-- name: console_pause_inbox
UPDATE inboxes SET paused_at = coalesce(paused_at, now()), pause_reason = %(reason)s::text
 WHERE id = %(inbox_id)s::uuid
RETURNING paused_at;

-- name: console_resume_inbox
UPDATE inboxes SET paused_at = NULL, pause_reason = NULL
 WHERE id = %(inbox_id)s::uuid
RETURNING id;

-- name: console_set_connection_state
-- The gateway's webhook: every inbox on that instance takes the reported state, stamped with
-- the event's own time (never later than now: a gateway clock ahead of ours must not freeze the
-- state) — unless a state reported later is already there (deliveries arrive out of order).
WITH reported AS (SELECT LEAST(COALESCE(%(at)s::timestamptz, now()), now()) AS at)
UPDATE inboxes i SET connection_state = %(state)s::text, connection_state_at = reported.at
  FROM reported
 WHERE i.instance = %(instance)s::text
   AND (i.connection_state_at IS NULL OR i.connection_state_at <= reported.at)
RETURNING i.id;

-- name: console_record_opt_out
SELECT campaignq_record_opt_out(p_instance => %(instance)s::text, p_phone => %(phone)s::text,
                                p_reason => %(reason)s::text);

-- name: console_session_create
-- A login: the new session, and every session idle past the expiry removed on the way.
WITH expired AS (
    DELETE FROM campaignq_console_sessions
     WHERE last_seen_at < now() - make_interval(secs => %(idle_s)s::double precision)
)
INSERT INTO campaignq_console_sessions (id_hash, role, token_fingerprint, client)
VALUES (%(id_hash)s, %(role)s, %(fingerprint)s, %(client)s);

-- name: console_session_touch
-- A request with a session cookie: the session's role and token fingerprint when it is not
-- idle past the expiry (its last use moves to now), else no row.
UPDATE campaignq_console_sessions
   SET last_seen_at = now()
 WHERE id_hash = %(id_hash)s
   AND last_seen_at >= now() - make_interval(secs => %(idle_s)s::double precision)
RETURNING role, token_fingerprint;

-- name: console_session_end
-- Logout, or a session whose token was rotated.
DELETE FROM campaignq_console_sessions WHERE id_hash = %(id_hash)s;

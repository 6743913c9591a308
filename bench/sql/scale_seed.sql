-- bench/scale.py: a database at issue 25's size, seeded set-based with generate_series (one
-- INSERT … SELECT per table, no row-by-row round trips). Ids are md5-derived uuids so
-- statements can reference each other's rows without reading them back.
-- Parameters: workspaces, leads, running_runs, pending, history_runs, history,
-- history_days, archived, dead.

-- name: seed_inboxes
INSERT INTO inboxes (id, workspace_id, name, instance, max_sends_per_minute)
SELECT md5('inbox' || w)::uuid, md5('ws' || w)::uuid, 'inbox ' || w, 'instance-' || w,
       CASE WHEN w %% 2 = 0 THEN 60 END
  FROM generate_series(1, %(workspaces)s::integer) AS w;

-- name: seed_configs
INSERT INTO campaign_configs (id, workspace_id, name, ai_model, inbox_id)
SELECT md5('cfg' || w)::uuid, md5('ws' || w)::uuid, 'campaign ' || w, 'openai/gpt-4o-mini',
       md5('inbox' || w)::uuid
  FROM generate_series(1, %(workspaces)s::integer) AS w;

-- name: seed_leads
-- One lead in a thousand opted out two days ago.
INSERT INTO leads (id, workspace_id, name, phone, opted_out_at)
SELECT md5('lead' || i)::uuid, md5('ws' || (i %% %(workspaces)s::integer + 1))::uuid, 'Lead ' || i,
       '5511' || lpad(i::text, 9, '0'),
       CASE WHEN i %% 1000 = 0 THEN now() - interval '2 days' END
  FROM generate_series(0, %(leads)s::integer - 1) AS i;

-- name: seed_running_runs
-- Runs started within the last two hours, spread over the workspaces.
INSERT INTO campaign_runs (id, config_id, status, leads_total, started_at)
SELECT md5('run' || k)::uuid, md5('cfg' || (k %% %(workspaces)s::integer + 1))::uuid, 'running',
       %(pending)s::integer / %(running_runs)s::integer,
       now() - interval '2 hours' + k * interval '1 second'
  FROM generate_series(0, %(running_runs)s::integer - 1) AS k;

-- name: seed_pending
-- Pending and not yet due (scheduled a day or two ahead, so none falls due while the
-- benchmark runs): the producer finds nothing to do until the benchmark makes some of it due.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT md5('run' || (i %% %(running_runs)s::integer))::uuid,
       md5('lead' || (i %% %(leads)s::integer))::uuid,
       'pending',
       now() + interval '1 day' + (i %% 86400) * interval '1 second'
  FROM generate_series(0, %(pending)s::integer - 1) AS i;

-- name: seed_history_runs
-- Completed runs, run k holding a contiguous slice of the history, newest first.
INSERT INTO campaign_runs (id, config_id, status, leads_total, leads_processed, started_at, finished_at)
SELECT md5('hrun' || k)::uuid, md5('cfg' || (k %% %(workspaces)s::integer + 1))::uuid, 'completed',
       %(history)s::integer / %(history_runs)s::integer,
       %(history)s::integer / %(history_runs)s::integer,
       now() - (k + 1) * (%(history_days)s::integer * interval '1 day' / %(history_runs)s::integer),
       now() - k * (%(history_days)s::integer * interval '1 day' / %(history_runs)s::integer)
  FROM generate_series(0, %(history_runs)s::integer - 1) AS k;

-- name: seed_history
-- Finished rows over history_days: mostly sent, 4 %% failed, 2 %% skipped (a tenth of them
-- opted out); 5 %% without a stored cost (stats prices them); 10 %% retried once, some after a
-- timeout recorded in attempt_history.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at, retry_count, error_class,
                               generated_message, parts, parts_sent, ai_tokens_used, ai_prompt_tokens,
                               ai_completion_tokens, ai_cached_tokens, ai_cost_usd, ai_calls,
                               generation_mode, ai_ms, send_ms, generated_at, sent_at, finished_at,
                               queued_at, attempt_history)
SELECT md5('hrun' || (i / (%(history)s::integer / %(history_runs)s::integer)))::uuid,
       md5('lead' || (i %% %(leads)s::integer))::uuid,
       s.status,
       t.at - interval '5 minutes',
       CASE WHEN i %% 10 = 0 THEN 1 ELSE 0 END,
       CASE WHEN s.status = 'skipped' AND i %% 500 = 1 THEN 'opted_out'
            WHEN s.status = 'skipped' THEN 'stale'
            WHEN s.status = 'failed' THEN 'permanent' END,
       CASE WHEN s.status = 'sent' THEN 'Hello, this is a generated message' END,
       CASE WHEN s.status = 'sent' THEN '["Hello, this is a generated message"]'::jsonb END,
       CASE WHEN s.status = 'sent' THEN 1 ELSE 0 END,
       300, 250, 50, 100,
       CASE WHEN i %% 20 = 0 THEN NULL ELSE 0.000120 END,
       1, 'plain',
       700 + i %% 600, 150 + i %% 200,
       t.at - interval '2 seconds',
       CASE WHEN s.status = 'sent' THEN t.at END,
       t.at,
       t.at - interval '1 minute',
       CASE WHEN i %% 30 = 0 THEN '[{"error_class": "timeout"}]'::jsonb ELSE '[]'::jsonb END
  FROM generate_series(0, %(history)s::integer - 1) AS i
 CROSS JOIN LATERAL (
        SELECT now() - i * (%(history_days)s::integer * interval '1 day' / greatest(%(history)s::integer, 1))
               AS at) t
 CROSS JOIN LATERAL (
        SELECT CASE WHEN i %% 50 IN (1, 2) THEN 'skipped'
                    WHEN i %% 25 = 3 THEN 'failed'
                    ELSE 'sent' END AS status) s;

-- name: seed_archive
-- The main queue's archive: every message ever processed, archived over history_days.
INSERT INTO pgmq.a_campaign_messages (msg_id, read_ct, enqueued_at, archived_at, vt, message)
SELECT i, 1, t.at - interval '1 minute', t.at, t.at,
       jsonb_build_object('v', 1, 'campaign_message_id', md5('arch' || i)::uuid,
                          'run_id', md5('hrun' || (i %% %(history_runs)s::integer))::uuid,
                          'lead_id', md5('lead' || (i %% %(leads)s::integer))::uuid)
  FROM generate_series(1, %(archived)s::integer) AS i
 CROSS JOIN LATERAL (
        SELECT now() - interval '1 minute'
               - i * (%(history_days)s::integer * interval '1 day' / greatest(%(archived)s::integer, 1)) AS at) t;

-- name: seed_dead_letters
-- Dead letters of the completed runs, four reasons; one in a thousand with a payload that
-- is not a uuid (the views must show it, not break).
INSERT INTO pgmq.q_campaign_messages_dlq (read_ct, enqueued_at, vt, message)
SELECT 0, now() - i * interval '3 seconds', now() - i * interval '3 seconds',
       jsonb_build_object('v', 1,
                          'campaign_message_id', CASE WHEN i %% 1000 = 0 THEN 'not-a-uuid'
                                                      ELSE md5('dead' || i)::uuid::text END,
                          'run_id', md5('hrun' || (i %% %(history_runs)s::integer))::uuid,
                          'lead_id', md5('lead' || (i %% %(leads)s::integer))::uuid,
                          'reason', (ARRAY['max_attempts', 'permanent_error', 'deferred_too_long',
                                           'invalid_payload'])[i %% 4 + 1],
                          'error_class', (ARRAY['timeout', 'bad_request', 'rate_limited', 'invalid_payload'])[i %% 4 + 1],
                          'error', 'provider said no',
                          'attempts', 3,
                          'failed_at', now() - i * interval '3 seconds',
                          'history', '[]'::jsonb)
  FROM generate_series(1, %(dead)s::integer) AS i;

-- name: make_due
-- The "tick that queues 500" case: the oldest pending rows of some runs become due now
-- (run inside a transaction the benchmark rolls back).
UPDATE campaign_messages m
   SET scheduled_at = now() - interval '1 minute'
  FROM (SELECT id FROM campaign_messages
         WHERE run_id IN (SELECT md5('run' || k)::uuid FROM generate_series(0, %(runs)s::integer - 1) AS k)
           AND status = 'pending'
         ORDER BY run_id, scheduled_at
         LIMIT %(rows)s::integer) d
 WHERE m.id = d.id;

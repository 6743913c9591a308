-- Seed data for bench/producer.py (one statement per ';' at the end of a line).
-- Parameters are bench.producer.Sizes fields, bound by psycopg: the modulo operator is written %%.
-- Realistic shape: a few running runs hold the due rows, most of the table is terminal
-- history of completed runs (wide rows: generated text and parts), plus rows both
-- producers must leave alone (not yet due, paused run) or skip (stale).
CREATE TEMP TABLE ws AS SELECT gen_random_uuid() AS id FROM generate_series(1, 3);
INSERT INTO inboxes (workspace_id, name, provider, instance)
SELECT (SELECT id FROM ws ORDER BY id OFFSET g %% 3 LIMIT 1), 'inbox ' || g, 'evolution', 'inst-' || g
  FROM generate_series(1, %(configs)s) g;
INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id,
                              split_messages, max_parts)
SELECT i.workspace_id, 'campaign ' || i.instance, 'openai/gpt-4o-mini',
       'You write short, friendly WhatsApp messages in Brazilian Portuguese for {name}.',
       i.id, (row_number() OVER ()) %% 2 = 0, 3
  FROM inboxes i;
CREATE TEMP TABLE config_seq AS
SELECT (row_number() OVER (ORDER BY id)) - 1 AS rn, id FROM campaign_configs;

CREATE TEMP TABLE run_seq (kind text, rn int, id uuid);
WITH spec(kind, status, n) AS (
    VALUES ('running', 'running', %(running_runs)s), ('history', 'completed', %(history_runs)s),
           ('paused', 'paused', 1)
), made AS (
    INSERT INTO campaign_runs (config_id, status, started_at, finished_at)
    SELECT c.id, s.status, now() - interval '2 hours' - (s.kind = 'history')::int * interval '30 days',
           CASE WHEN s.status = 'completed' THEN now() - interval '1 day' END
      FROM spec s
     CROSS JOIN LATERAL generate_series(0, s.n - 1) g
      JOIN config_seq c ON c.rn = g %% %(configs)s
    RETURNING id, status
)
INSERT INTO run_seq
SELECT CASE status WHEN 'running' THEN 'running' WHEN 'completed' THEN 'history' ELSE 'paused' END,
       (row_number() OVER (PARTITION BY status ORDER BY id)) - 1, id
  FROM made;

INSERT INTO leads (workspace_id, name, phone, custom_fields)
SELECT (SELECT id FROM ws ORDER BY id LIMIT 1), 'Lead ' || g, '+5511' || (900000000 + g),
       jsonb_build_object('city', 'São Paulo', 'segment', 'retail', 'score', g %% 100)
  FROM generate_series(1, %(leads)s) g;
CREATE TEMP TABLE lead_seq AS SELECT (row_number() OVER (ORDER BY id)) - 1 AS rn, id FROM leads;
CREATE UNIQUE INDEX ON lead_seq (rn);

-- Terminal history: run k holds a contiguous block of leads, so no lead repeats in a run.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at, retry_count, error_message,
                               generated_message, parts, parts_sent, ai_tokens_used, ai_ms, send_ms,
                               sent_at, finished_at)
SELECT r.id, l.id, x.status, x.scheduled_at, (x.status = 'failed')::int * 3,
       CASE x.status WHEN 'failed' THEN 'OpenRouter error: 502' WHEN 'skipped' THEN 'too old' END,
       CASE WHEN x.status = 'sent' THEN x.text END,
       CASE WHEN x.status = 'sent' THEN jsonb_build_array(x.text) END,
       (x.status = 'sent')::int, 180 + g %% 120, 900 + g %% 1500, 150 + g %% 300,
       CASE WHEN x.status = 'sent' THEN x.scheduled_at + interval '3 seconds' END,
       x.scheduled_at + interval '3 seconds'
  FROM generate_series(0, %(history)s - 1) g
  JOIN run_seq r ON r.kind = 'history' AND r.rn = g / (%(history)s / %(history_runs)s)
  JOIN lead_seq l ON l.rn = g %% %(leads)s
 CROSS JOIN LATERAL (
       SELECT CASE WHEN g %% 50 = 0 THEN 'failed' WHEN g %% 50 = 1 THEN 'skipped' ELSE 'sent' END AS status,
              now() - interval '1 day' * (1 + g %% 60) - interval '1 second' * (g %% 3600) AS scheduled_at,
              'Oi Lead ' || g || '! Vi que você trabalha com varejo em São Paulo e pensei que nossa '
              || 'nova condição para lojistas pode ajudar neste fim de ano. Posso te mandar os detalhes?'
              AS text) x;

-- The live part: due (1-40 min ago), not yet due, stale (2-3 h ago), and a paused run's due rows.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '1 minute' - interval '1 second' * ((g * 7919) %% 2340)
  FROM generate_series(0, %(due)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = g %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() + interval '1 hour' + interval '1 second' * (g %% 18000)
  FROM generate_series(0, %(not_due)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = (%(due)s + g) %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '2 hours' - interval '1 second' * (g %% 3600)
  FROM generate_series(0, %(stale)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = (%(due)s + %(not_due)s + g) %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '10 minutes'
  FROM generate_series(0, %(paused_due)s - 1) g
  JOIN run_seq r ON r.kind = 'paused'
  JOIN lead_seq l ON l.rn = g %% %(leads)s;

UPDATE campaign_runs r
   SET leads_total = c.n,
       leads_processed = CASE WHEN r.status = 'completed' THEN c.n ELSE 0 END
  FROM (SELECT run_id, count(*)::int AS n FROM campaign_messages GROUP BY run_id) c
 WHERE c.run_id = r.id;

ALTER TABLE campaign_messages SET (autovacuum_enabled = false);
ALTER TABLE campaign_runs SET (autovacuum_enabled = false);
ALTER TABLE pgmq.q_campaign_messages SET (autovacuum_enabled = false);

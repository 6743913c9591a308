-- 0012_console: what the operator console (`campaignq serve`) stores beyond the contract.
--
-- The audit: every action taken from the console or its API (run pause/resume/cancel, a
-- replay or its dry run, weight and budget edits, inbox pause/resume, a login, a webhook's
-- effect) is one row, written in the same transaction as the change it describes where
-- there is one, so the page never shows an action that did not happen (or hides one that
-- did). `actor` is the token's name ('admin', 'read', 'evolution-webhook'), never the token.
CREATE TABLE campaignq_console_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    filter  jsonb NOT NULL DEFAULT '{}'::jsonb,
    result  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX campaignq_console_audit_at_idx ON campaignq_console_audit (at DESC);

-- The gateway's last word on an inbox's connection (Evolution's `connection.update` webhook:
-- 'open', 'connecting', 'close'…). NULL = never reported; consumers keep asking the gateway.
ALTER TABLE inboxes
    ADD COLUMN connection_state     text,
    ADD COLUMN connection_state_at  timestamptz;

-- Messages sent per minute over the last hour (the overview's throughput chart), one row
-- per minute including empty ones; walks campaign_messages_finished_idx only.
CREATE OR REPLACE VIEW campaignq_throughput_last_hour AS
SELECT m.minute,
       coalesce(c.sent, 0)   AS sent,
       coalesce(c.failed, 0) AS failed
  FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                       date_trunc('minute', now()), interval '1 minute') AS m(minute)
  LEFT JOIN (SELECT date_trunc('minute', finished_at)             AS minute,
                    count(*) FILTER (WHERE status = 'sent')       AS sent,
                    count(*) FILTER (WHERE status = 'failed')     AS failed
               FROM campaign_messages
              WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
              GROUP BY 1) c USING (minute);

-- One row per inbox: its pace and cap (0006), pause, the gateway's connection state, and
-- what it used: sends in the last minute (against max_sends_per_minute) and since midnight
-- UTC (against daily_send_cap).
CREATE OR REPLACE VIEW campaignq_inbox_overview AS
SELECT i.id AS inbox_id, i.workspace_id, i.name, i.instance,
       i.connection_state, i.connection_state_at,
       i.max_sends_per_minute, i.daily_send_cap, i.paused_at, i.pause_reason,
       coalesce(u.sent_last_minute, 0) AS sent_last_minute,
       coalesce(u.sent_today, 0)       AS sent_today
  FROM inboxes i
  LEFT JOIN (SELECT c.inbox_id,
                    count(*) FILTER (WHERE m.finished_at >= now() - interval '1 minute') AS sent_last_minute,
                    count(*) AS sent_today
               FROM campaign_messages m
               JOIN campaign_runs r ON r.id = m.run_id
               JOIN campaign_configs c ON c.id = r.config_id
              WHERE m.finished_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                AND m.status = 'sent'
              GROUP BY c.inbox_id) u ON u.inbox_id = i.id;

-- Fair share as configured and as it happened: every workspace with a weight row or a run
-- not finished; `configured_share` is its weight over the weights of workspaces with a
-- running run, `recent_share` its part of everything sent in the last five minutes.
CREATE OR REPLACE VIEW campaignq_workspace_share AS
WITH ws AS (
    SELECT c.workspace_id,
           count(*) FILTER (WHERE r.status = 'running') AS running_runs,
           count(*) FILTER (WHERE r.status = 'paused')  AS paused_runs
      FROM campaign_runs r
      JOIN campaign_configs c ON c.id = r.config_id
     WHERE r.status IN ('scheduled', 'running', 'paused')
     GROUP BY c.workspace_id
), ids AS (
    SELECT workspace_id FROM ws UNION SELECT workspace_id FROM workspace_weights
), sent AS (
    SELECT c.workspace_id, count(*) AS sent_5m
      FROM campaign_messages m
      JOIN campaign_runs r ON r.id = m.run_id
      JOIN campaign_configs c ON c.id = r.config_id
     WHERE m.finished_at >= now() - interval '5 minutes' AND m.status = 'sent'
     GROUP BY c.workspace_id
), joined AS (
    SELECT ids.workspace_id,
           coalesce(w.weight, 1)         AS weight,
           w.workspace_id IS NOT NULL    AS weight_set,
           coalesce(ws.running_runs, 0)  AS running_runs,
           coalesce(ws.paused_runs, 0)   AS paused_runs,
           coalesce(sent.sent_5m, 0)     AS sent_5m
      FROM ids
      LEFT JOIN workspace_weights w ON w.workspace_id = ids.workspace_id
      LEFT JOIN ws ON ws.workspace_id = ids.workspace_id
      LEFT JOIN sent ON sent.workspace_id = ids.workspace_id
)
SELECT workspace_id, weight, weight_set, running_runs, paused_runs, sent_5m,
       CASE WHEN running_runs > 0
            THEN round(weight::numeric / nullif(sum(weight) FILTER (WHERE running_runs > 0) OVER (), 0), 4)
       END AS configured_share,
       round(sent_5m::numeric / nullif(sum(sent_5m) OVER (), 0), 4) AS recent_share
  FROM joined;

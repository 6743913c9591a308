-- bench/scale.py: what an operator reads by hand in psql (the views, whole), and the
-- producer's tick. The `stats --json` document's, the console's and the metrics sampler's
-- own statements are timed from db/*queries.sql as the code runs them.

-- name: view_queue_overview
SELECT * FROM campaignq_queue_overview;

-- name: view_run_progress
SELECT * FROM campaignq_run_progress;

-- name: view_run_progress_one
SELECT * FROM campaignq_run_progress WHERE run_id = md5('run0')::uuid;

-- name: view_workspace_totals
SELECT * FROM campaignq_workspace_totals;

-- name: view_dead_letters_page
SELECT * FROM campaignq_dead_letters ORDER BY dlq_msg_id LIMIT 100;

-- name: view_dead_letters_by_reason
SELECT * FROM campaignq_dead_letters_by_reason;

-- name: view_dead_letters_by_run
SELECT * FROM campaignq_dead_letters_by_run;

-- name: view_run_ai_costs
SELECT * FROM campaignq_run_ai_costs;

-- name: view_workspace_ai_costs
SELECT * FROM campaignq_workspace_ai_costs;

-- name: view_workspace_ai_costs_today
SELECT * FROM campaignq_workspace_ai_costs WHERE day = (now() AT TIME ZONE 'UTC')::date;

-- name: view_inbox_safety
SELECT * FROM campaignq_inbox_safety;

-- name: view_throughput_last_hour
SELECT * FROM campaignq_throughput_last_hour;

-- name: view_inbox_overview
SELECT * FROM campaignq_inbox_overview;

-- name: view_workspace_share
SELECT * FROM campaignq_workspace_share;

-- name: view_fair_share
SELECT * FROM campaignq_fair_share;

-- name: producer_tick
SELECT enqueue_due_campaign_messages(5000);

-- name: producer_sweep
SELECT campaignq_sweep_stale_pending();

-- name: drop_history_messages
-- "After, no history": the finished rows of the completed runs go, everything else stays.
DELETE FROM campaign_messages m USING campaign_runs r WHERE r.id = m.run_id AND r.status = 'completed';

-- name: drop_history_runs
DELETE FROM campaign_runs WHERE status = 'completed';

-- name: table_sizes
SELECT relname, round(pg_total_relation_size(oid) / 1048576.0, 1)
  FROM pg_class
 WHERE relname IN ('campaign_messages', 'a_campaign_messages', 'q_campaign_messages_dlq', 'leads');

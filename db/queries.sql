-- Named queries used by consumer/db.py. Each begins with a "-- name: x" line.
-- Every value is a bind parameter; nothing here is ever formatted into a string.

-- name: enqueue_due
SELECT enqueue_due_campaign_messages(%(limit)s::integer);

-- name: finalize_run
SELECT finalize_campaign_run_if_complete(%(run_id)s::uuid);

-- name: grant_worker_role
-- Least privilege for `campaignq consume`: read context, update its messages and their
-- runs, and drive the two queues. No DDL, no DELETE on business tables.
GRANT USAGE ON SCHEMA public, pgmq TO campaignq_worker;
GRANT SELECT ON leads, inboxes, campaign_configs, campaign_runs TO campaignq_worker;
GRANT SELECT, UPDATE ON campaign_messages TO campaignq_worker;
GRANT UPDATE (status, leads_processed, finished_at, updated_at) ON campaign_runs TO campaignq_worker;
GRANT SELECT ON pgmq.meta TO campaignq_worker;
GRANT SELECT, UPDATE, DELETE ON pgmq.q_campaign_messages TO campaignq_worker;
GRANT SELECT, INSERT ON pgmq.a_campaign_messages TO campaignq_worker;
GRANT SELECT, INSERT ON pgmq.q_campaign_messages_dlq TO campaignq_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgmq TO campaignq_worker;

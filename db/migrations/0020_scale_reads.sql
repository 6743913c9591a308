-- 0020_scale_reads: operator reads and the producer's tick at 1M pending / 5M archived / 2M
-- finished (issue 25, measured by `python -m bench scale`). Same names, columns and meaning
-- as before; only how PostgreSQL gets there changes:
--   * the producer never JIT-compiles (its statements take milliseconds; compiling took 150+);
--   * the periods, days and opt-outs the views filter on are index bounds, not filters applied
--     after reading everything;
--   * per-run AI costs read only the rows that have a generation, from a covering index.
-- What still grows with history is said where it does (whole-history views by design).

-- === The producer ===========================================================================
-- The stale sweep runs with p_limit NULL on every tick: its LIMIT is unknown to the planner,
-- which then costs the lateral walk of every running run at ~1.4M and JIT-compiles it (150-200 ms
-- every tick for ~6 ms of work). JIT off on the function, not a body rewrite: 0015 owns the
-- sweep's body (lock order), and a function's SET clause survives its CREATE OR REPLACE only
-- if restated, so it is set here, after 0015, with ALTER.
ALTER FUNCTION campaignq_sweep_stale_pending(integer) SET jit = off;
ALTER FUNCTION enqueue_due_campaign_messages(integer) SET jit = off;

-- === Indexes ================================================================================
-- inbox_safety's "opted out in the last day": a handful of rows, found without walking the
-- day's finished rows (or, as the planner chose at 3M rows, the whole table).
CREATE INDEX campaign_messages_opted_out_idx ON campaign_messages (finished_at) INCLUDE (run_id)
    WHERE status = 'skipped' AND error_class = 'opted_out';

-- `stats`'s unpriced tokens per period: rows finished with tokens but no stored cost (rare:
-- a provider that reports no cost and a model missing from the price table).
CREATE INDEX campaign_messages_unpriced_idx ON campaign_messages (finished_at)
    INCLUDE (run_id, ai_prompt_tokens, ai_completion_tokens)
    WHERE ai_cost_usd IS NULL AND ai_tokens_used IS NOT NULL;

-- campaignq_workspace_ai_costs groups by the UTC day of generation; a filter on that day (the
-- metrics sampler's "today", stats' "today and yesterday") is pushed below the GROUP BY and
-- becomes this index's bound. Covering (generated_at included, so the day can be recomputed)
-- so the day's rows are read from the index alone.
CREATE INDEX campaign_messages_generated_day_idx
    ON campaign_messages (((generated_at AT TIME ZONE 'UTC')::date))
    INCLUDE (generated_at, run_id, generation_mode, ai_calls, ai_prompt_tokens, ai_cached_tokens, ai_cost_usd)
    WHERE generated_at IS NOT NULL;

-- Rows that carry anything campaignq_run_ai_costs sums: exactly the rows where one of its
-- columns is set. A running run's pending rows are not in it, so the per-run costs of the
-- running runs (the metrics sampler, every 30 s per consumer) cost one probe per run plus
-- its generated rows, read from the index alone.
CREATE INDEX campaign_messages_run_ai_idx ON campaign_messages (run_id)
    INCLUDE (generated_at, generation_mode, ai_calls, ai_prompt_tokens, ai_cached_tokens,
             ai_cache_write_tokens, ai_cost_usd)
    WHERE generated_at IS NOT NULL OR generation_mode IS NOT NULL OR ai_calls IS NOT NULL
       OR ai_prompt_tokens IS NOT NULL OR ai_cached_tokens IS NOT NULL
       OR ai_cache_write_tokens IS NOT NULL OR ai_cost_usd IS NOT NULL;

-- === Views ==================================================================================
-- Per run AI costs, as 0010's, reading only the rows that can add to a sum (the predicate of
-- campaign_messages_run_ai_idx): a row with none of these columns set adds 0 to every sum and
-- is counted by no FILTER, so the numbers are the same.
CREATE OR REPLACE VIEW campaignq_run_ai_costs AS
SELECT r.id AS run_id,
       c.workspace_id,
       c.ai_model,
       r.status AS run_status,
       r.pause_reason,
       r.ai_cost_cap_usd,
       s.generated,
       s.batch_generated,
       s.ai_calls,
       CASE WHEN s.generated > 0 THEN round(s.ai_calls::numeric / s.generated, 3) END AS ai_calls_per_message,
       s.prompt_tokens,
       s.cached_tokens,
       s.cache_write_tokens,
       CASE WHEN s.prompt_tokens > 0 THEN round(s.cached_tokens::numeric / s.prompt_tokens, 4) END
           AS cached_token_share,
       round(s.cost_usd, 6) AS cost_usd,
       CASE WHEN s.priced > 0 THEN round(1000 * s.cost_usd / s.priced, 6) END AS cost_per_1000_messages_usd,
       (r.status = 'paused' AND r.pause_reason = 'budget_exhausted') AS budget_exhausted
  FROM campaign_runs r
  JOIN campaign_configs c ON c.id = r.config_id
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE m.generated_at IS NOT NULL)              AS generated,
               count(*) FILTER (WHERE m.generation_mode = 'batch')             AS batch_generated,
               coalesce(sum(m.ai_calls), 0)::bigint                            AS ai_calls,
               coalesce(sum(m.ai_prompt_tokens), 0)::bigint                    AS prompt_tokens,
               coalesce(sum(m.ai_cached_tokens), 0)::bigint                    AS cached_tokens,
               coalesce(sum(m.ai_cache_write_tokens), 0)::bigint               AS cache_write_tokens,
               coalesce(sum(m.ai_cost_usd), 0)                                 AS cost_usd,
               count(*) FILTER (WHERE m.ai_cost_usd IS NOT NULL)               AS priced
          FROM campaign_messages m
         WHERE m.run_id = r.id
           AND (m.generated_at IS NOT NULL OR m.generation_mode IS NOT NULL OR m.ai_calls IS NOT NULL
                OR m.ai_prompt_tokens IS NOT NULL OR m.ai_cached_tokens IS NOT NULL
                OR m.ai_cache_write_tokens IS NOT NULL OR m.ai_cost_usd IS NOT NULL)
       ) s;

-- Per workspace and period, as 0005's. Each period is its own branch with a constant lower
-- bound on finished_at (0005 joined a VALUES list, so the bound was a join filter checked on
-- every finished row: a 3M-row scan, disk sorts and JIT). An attempt history is unpacked only
-- when it has entries (most rows have none).
CREATE OR REPLACE VIEW campaignq_workspace_totals AS
SELECT c.workspace_id,
       f.period,
       count(*)                                          AS finished,
       count(*) FILTER (WHERE f.status = 'sent')         AS sent,
       count(*) FILTER (WHERE f.status = 'failed')       AS failed,
       count(*) FILTER (WHERE f.status = 'skipped')      AS skipped,
       coalesce(sum(f.retry_count), 0)::bigint           AS retries,
       coalesce(sum(CASE WHEN f.attempt_history = '[]'::jsonb THEN 0
                         ELSE (SELECT count(*) FROM jsonb_array_elements(f.attempt_history) AS e
                                WHERE e->>'error_class' = 'timeout') END), 0)::bigint AS timeouts,
       coalesce(sum(CASE WHEN f.attempt_history = '[]'::jsonb THEN 0
                         ELSE (SELECT count(*) FROM jsonb_array_elements(f.attempt_history) AS e
                                WHERE e->>'error_class' = 'rate_limited') END), 0)::bigint AS rate_limited,
       coalesce(sum(f.ai_tokens_used), 0)::bigint        AS tokens,
       round(coalesce(sum(f.ai_cost_usd), 0), 6)         AS cost_usd,
       count(*) FILTER (WHERE f.ai_cost_usd IS NULL AND f.ai_tokens_used IS NOT NULL) AS unpriced_messages,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY f.ai_ms)    AS ai_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY f.ai_ms)   AS ai_ms_p95,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY f.send_ms)  AS send_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY f.send_ms) AS send_ms_p95,
       round(count(*) FILTER (WHERE f.status = 'sent') / (extract(epoch FROM f.length) / 60), 2)
                                                         AS sent_per_minute
  FROM (SELECT '1h'::text AS period, interval '1 hour' AS length, m.run_id, m.status, m.retry_count,
               m.attempt_history, m.ai_tokens_used, m.ai_cost_usd, m.ai_ms, m.send_ms
          FROM campaign_messages m
         WHERE m.finished_at >= now() - interval '1 hour'
        UNION ALL
        SELECT '24h'::text, interval '1 day', m.run_id, m.status, m.retry_count,
               m.attempt_history, m.ai_tokens_used, m.ai_cost_usd, m.ai_ms, m.send_ms
          FROM campaign_messages m
         WHERE m.finished_at >= now() - interval '1 day') AS f
  JOIN campaign_runs r ON r.id = f.run_id
  JOIN campaign_configs c ON c.id = r.config_id
 GROUP BY c.workspace_id, f.period, f.length;

-- Dead letters per reason and per run, as 0005's. 0005 took every letter's ids apart (a uuid
-- regex per id) before grouping: ~1-2 s at 100,000 letters. The letters are grouped on the
-- raw payload text first (a cheap hash aggregate), and the ids of the few groups checked
-- after; groups whose texts name the same uuid (or none) are merged by the outer GROUP BY,
-- so the rows are the same.
CREATE OR REPLACE VIEW campaignq_dead_letters_by_reason AS
WITH raw AS (
    SELECT coalesce(d.message->>'reason', 'unknown')      AS reason,
           coalesce(d.message->>'error_class', 'unknown') AS error_class,
           d.message->>'run_id'                           AS run_text,
           count(*)                                       AS n,
           min(d.enqueued_at)                             AS oldest_at,
           max(d.enqueued_at)                             AS newest_at
      FROM pgmq.q_campaign_messages_dlq d
     GROUP BY 1, 2, 3
)
SELECT reason,
       error_class,
       sum(n)::bigint                              AS dead_letters,
       count(DISTINCT campaignq_try_uuid(run_text)) AS runs,
       min(oldest_at)                              AS oldest_at,
       max(newest_at)                              AS newest_at
  FROM raw
 GROUP BY reason, error_class;

CREATE OR REPLACE VIEW campaignq_dead_letters_by_run AS
WITH raw AS (
    SELECT d.message->>'run_id'                      AS run_text,
           coalesce(d.message->>'reason', 'unknown') AS reason,
           count(*)                                  AS n,
           min(d.enqueued_at)                        AS oldest_at,
           max(d.enqueued_at)                        AS newest_at
      FROM pgmq.q_campaign_messages_dlq d
     GROUP BY 1, 2
), ided AS (
    SELECT campaignq_try_uuid(raw.run_text) AS run_id, raw.reason, raw.n, raw.oldest_at, raw.newest_at
      FROM raw
)
SELECT i.run_id,
       c.workspace_id,
       i.reason,
       sum(i.n)::bigint  AS dead_letters,
       min(i.oldest_at)  AS oldest_at,
       max(i.newest_at)  AS newest_at
  FROM ided i
  LEFT JOIN campaign_runs r ON r.id = i.run_id
  LEFT JOIN campaign_configs c ON c.id = r.config_id
 GROUP BY i.run_id, c.workspace_id, i.reason;

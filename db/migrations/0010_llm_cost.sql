-- 0010_llm_cost: what the LLM bill needs (issue 14) — per-message cache and cost figures,
-- spend caps per run and per workspace per day, and batch pre-generation bookkeeping.
-- Every new column is NULL-able or defaulted (rows stay insertable with the contract's
-- columns only). Older functions and views are left as they are; new ones sit beside them.

-- What the provider reported for the generation of one message.
ALTER TABLE campaign_messages
    ADD COLUMN ai_cached_tokens      integer CHECK (ai_cached_tokens >= 0),
    ADD COLUMN ai_cache_write_tokens integer CHECK (ai_cache_write_tokens >= 0),
    ADD COLUMN ai_calls              smallint CHECK (ai_calls >= 0),
    ADD COLUMN generation_mode       text CHECK (generation_mode IN
                                         ('plain', 'structured', 'generate_split', 'batch')),
    ADD COLUMN generated_at          timestamptz,
    ADD COLUMN ai_batch_id           uuid;

-- Spend caps (NULL = no cap). Reaching one pauses the run with pause_reason
-- 'budget_exhausted' (0006); raising or removing it resumes the run.
ALTER TABLE campaign_runs
    ADD COLUMN ai_cost_cap_usd   numeric(12, 6) CHECK (ai_cost_cap_usd >= 0),
    ADD COLUMN ai_cost_spent_usd numeric(14, 6) NOT NULL DEFAULT 0;

-- Spend per workspace and UTC day, kept as a running total while the workspace has a cap
-- (like ai_cost_spent_usd per capped run) so that checking a cap costs one row read.
CREATE TABLE workspace_ai_spend (
    workspace_id  uuid NOT NULL,
    day           date NOT NULL,
    cost_usd      numeric(14, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, day)
);

CREATE TABLE workspace_budgets (
    workspace_id           uuid PRIMARY KEY,
    daily_ai_cost_cap_usd  numeric(12, 6) CHECK (daily_ai_cost_cap_usd >= 0),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER workspace_budgets_touch BEFORE UPDATE ON workspace_budgets
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();

-- One provider batch (OpenAI batch shape). `id` is ours, given to the rows before the
-- upload, so a crash between "rows claimed" and "batch created" never loses track of them.
CREATE TABLE ai_batches (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_batch_id  text UNIQUE,
    input_file_id      text,
    output_file_id     text,
    error_file_id      text,
    status             text NOT NULL DEFAULT 'preparing'
                       CHECK (status IN ('preparing', 'submitted', 'completed', 'failed', 'expired',
                                         'cancelled')),
    requests           integer NOT NULL DEFAULT 0,
    stored             integer NOT NULL DEFAULT 0,
    failed_items       integer NOT NULL DEFAULT 0,
    discarded          integer NOT NULL DEFAULT 0,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    submitted_at       timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER ai_batches_touch BEFORE UPDATE ON ai_batches
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();
CREATE INDEX ai_batches_open_idx ON ai_batches (created_at) WHERE status IN ('preparing', 'submitted');

-- The workspace cost view and `stats` read recent generations by day.
CREATE INDEX campaign_messages_generated_at_idx ON campaign_messages (generated_at)
    WHERE generated_at IS NOT NULL;
-- The pre-generation scan: pending rows not yet given to a batch, by due time.
CREATE INDEX campaign_messages_pregen_idx ON campaign_messages (scheduled_at)
    WHERE status = 'pending' AND parts IS NULL AND ai_batch_id IS NULL;

-- --- spend ---------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION campaignq_utc_day() RETURNS date
LANGUAGE sql STABLE AS $$ SELECT (now() AT TIME ZONE 'UTC')::date; $$;

CREATE OR REPLACE FUNCTION campaignq_run_ai_spend(p_run_id uuid)
RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT ai_cost_spent_usd FROM campaign_runs WHERE id = p_run_id), 0);
$$;

-- Spend of a workspace since midnight UTC (by when the generation was stored).
CREATE OR REPLACE FUNCTION campaignq_workspace_ai_spend_today(p_workspace_id uuid)
RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT cost_usd FROM workspace_ai_spend
                      WHERE workspace_id = p_workspace_id AND day = campaignq_utc_day()), 0);
$$;

-- Add one generation's cost to the running totals of the caps that apply to it. Only capped
-- scopes keep a total: an uncapped run takes no extra row lock per message (the run row is
-- hot). A total starts from the rows' own costs when its cap is set (triggers below). Lock
-- order (message row, then run row, then workspace-day row) matches the outcome functions.
CREATE OR REPLACE FUNCTION campaignq_record_ai_spend(p_run_id uuid, p_cost_usd numeric)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_workspace uuid;
    v_run_capped boolean;
BEGIN
    SELECT c.workspace_id, r.ai_cost_cap_usd IS NOT NULL INTO v_workspace, v_run_capped
      FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id WHERE r.id = p_run_id;
    IF v_run_capped THEN
        UPDATE campaign_runs SET ai_cost_spent_usd = ai_cost_spent_usd + p_cost_usd WHERE id = p_run_id;
    END IF;
    IF EXISTS (SELECT 1 FROM workspace_budgets
                WHERE workspace_id = v_workspace AND daily_ai_cost_cap_usd IS NOT NULL) THEN
        INSERT INTO workspace_ai_spend AS s (workspace_id, day, cost_usd)
        VALUES (v_workspace, campaignq_utc_day(), p_cost_usd)
        ON CONFLICT (workspace_id, day) DO UPDATE SET cost_usd = s.cost_usd + excluded.cost_usd;
    END IF;
END;
$$;

-- A run gets a cap: its total starts from what its rows already cost.
CREATE OR REPLACE FUNCTION campaignq_run_cap_set() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ai_cost_cap_usd IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.ai_cost_cap_usd IS NULL) THEN
        NEW.ai_cost_spent_usd := coalesce(
            (SELECT sum(ai_cost_usd) FROM campaign_messages WHERE run_id = NEW.id), 0);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER campaign_runs_cap_set BEFORE INSERT OR UPDATE OF ai_cost_cap_usd ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION campaignq_run_cap_set();

-- A workspace gets a daily cap: today's total starts from today's rows.
CREATE OR REPLACE FUNCTION campaignq_workspace_cap_set() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.daily_ai_cost_cap_usd IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.daily_ai_cost_cap_usd IS NULL) THEN
        INSERT INTO workspace_ai_spend AS s (workspace_id, day, cost_usd)
        SELECT NEW.workspace_id, campaignq_utc_day(), coalesce(sum(m.ai_cost_usd), 0)
          FROM campaign_messages m
          JOIN campaign_runs r ON r.id = m.run_id
          JOIN campaign_configs c ON c.id = r.config_id
         WHERE c.workspace_id = NEW.workspace_id
           AND m.generated_at >= (campaignq_utc_day()::timestamp AT TIME ZONE 'UTC')
        ON CONFLICT (workspace_id, day) DO UPDATE SET cost_usd = excluded.cost_usd;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER workspace_budgets_cap_set BEFORE INSERT OR UPDATE ON workspace_budgets
    FOR EACH ROW EXECUTE FUNCTION campaignq_workspace_cap_set();

-- Which cap a run has reached, or NULL: 'run' or 'workspace'. Free when nothing is capped.
CREATE OR REPLACE FUNCTION campaignq_ai_cap_reached(p_run_id uuid)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_run_cap numeric;
    v_workspace uuid;
    v_day_cap numeric;
BEGIN
    SELECT r.ai_cost_cap_usd, c.workspace_id INTO v_run_cap, v_workspace
      FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id
     WHERE r.id = p_run_id;
    IF v_run_cap IS NOT NULL AND campaignq_run_ai_spend(p_run_id) >= v_run_cap THEN
        RETURN 'run';
    END IF;
    SELECT daily_ai_cost_cap_usd INTO v_day_cap FROM workspace_budgets WHERE workspace_id = v_workspace;
    IF v_day_cap IS NOT NULL AND campaignq_workspace_ai_spend_today(v_workspace) >= v_day_cap THEN
        RETURN 'workspace';
    END IF;
    RETURN NULL;
END;
$$;

-- Pause the run when a cap is reached: a plain status UPDATE (so status triggers see it).
-- Messages already queued are released to pending by the consumer (run not running), none
-- is dead-lettered. Returns true when this call paused the run.
CREATE OR REPLACE FUNCTION campaignq_enforce_ai_budget(p_run_id uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_which text := campaignq_ai_cap_reached(p_run_id);
BEGIN
    IF v_which IS NULL THEN
        RETURN false;
    END IF;
    UPDATE campaign_runs SET status = 'paused', pause_reason = 'budget_exhausted'
     WHERE id = p_run_id AND status IN ('running', 'scheduled');
    IF FOUND THEN
        RAISE LOG 'campaignq run % paused: % AI cost cap reached', p_run_id, v_which;
    END IF;
    RETURN FOUND;
END;
$$;

-- Resume every run paused for budget whose caps now leave room (a cap raised or removed,
-- or a new UTC day for a workspace cap). Called by the cap triggers below and by the
-- producer and pregenerate loops. Returns how many runs resumed.
CREATE OR REPLACE FUNCTION campaignq_resume_within_budget(p_workspace_id uuid DEFAULT NULL, p_run_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_count integer := 0;
BEGIN
    FOR v_run IN
        SELECT r.id FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id
         WHERE r.status = 'paused' AND r.pause_reason = 'budget_exhausted'
           AND (p_workspace_id IS NULL OR c.workspace_id = p_workspace_id)
           AND (p_run_id IS NULL OR r.id = p_run_id)
    LOOP
        IF campaignq_ai_cap_reached(v_run) IS NULL THEN
            UPDATE campaign_runs SET status = 'running', pause_reason = NULL
             WHERE id = v_run AND status = 'paused' AND pause_reason = 'budget_exhausted';
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- A cap changed: a budget-paused run with room again resumes; a running run whose new cap
-- is already reached pauses now rather than at its next generation.
CREATE OR REPLACE FUNCTION campaignq_run_cap_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'paused' AND NEW.pause_reason = 'budget_exhausted' THEN
        PERFORM campaignq_resume_within_budget(NULL, NEW.id);
    ELSIF NEW.status IN ('running', 'scheduled') THEN
        PERFORM campaignq_enforce_ai_budget(NEW.id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER campaign_runs_cap_changed AFTER UPDATE OF ai_cost_cap_usd ON campaign_runs
    FOR EACH ROW WHEN (NEW.ai_cost_cap_usd IS DISTINCT FROM OLD.ai_cost_cap_usd)
    EXECUTE FUNCTION campaignq_run_cap_changed();

CREATE OR REPLACE FUNCTION campaignq_workspace_cap_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM campaignq_resume_within_budget(NEW.workspace_id, NULL);
    PERFORM campaignq_enforce_ai_budget(r.id)
       FROM campaign_runs r JOIN campaign_configs c ON c.id = r.config_id
      WHERE c.workspace_id = NEW.workspace_id AND r.status IN ('running', 'scheduled');
    RETURN NULL;
END;
$$;
CREATE TRIGGER workspace_budgets_cap_changed AFTER INSERT OR UPDATE ON workspace_budgets
    FOR EACH ROW EXECUTE FUNCTION campaignq_workspace_cap_changed();

-- --- storing generations --------------------------------------------------------------------

-- campaignq_store_generation (0004) plus the cache figures, the call count and the mode,
-- then the budget check. Same guards: lease held, row not generated yet, not terminal.
CREATE OR REPLACE FUNCTION campaignq_store_ai_generation(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_text text, p_parts jsonb,
    p_prompt_tokens integer, p_completion_tokens integer, p_cost_usd numeric,
    p_ai_ms integer, p_split_ms integer,
    p_cached_tokens integer, p_cache_write_tokens integer, p_ai_calls integer, p_mode text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    PERFORM 1 FROM pgmq.q_campaign_messages
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct
       FOR SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages m
       SET generated_message = p_text,
           parts = p_parts,
           parts_sent = 0,
           status = 'sending',
           ai_prompt_tokens = p_prompt_tokens,
           ai_completion_tokens = p_completion_tokens,
           ai_tokens_used = p_prompt_tokens + p_completion_tokens,
           ai_cost_usd = p_cost_usd,
           ai_ms = p_ai_ms,
           split_ms = p_split_ms,
           ai_cached_tokens = p_cached_tokens,
           ai_cache_write_tokens = p_cache_write_tokens,
           ai_calls = p_ai_calls,
           generation_mode = p_mode,
           generated_at = now()
     WHERE m.id = p_message_id
       AND m.parts IS NULL
       AND m.status IN ('queued', 'generating', 'sending')
    RETURNING m.run_id INTO v_run;
    IF v_run IS NULL THEN
        RETURN false;
    END IF;
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_record_ai_spend(v_run, p_cost_usd);
        PERFORM campaignq_enforce_ai_budget(v_run);
    END IF;
    RETURN true;
END;
$$;

-- A batch result, stored on a row nobody holds yet (pending or queued, not generated, given
-- to this batch). First writer wins: a row the consumer already generated keeps its text.
CREATE OR REPLACE FUNCTION campaignq_store_pregenerated(
    p_message_id uuid, p_batch_id uuid, p_text text, p_parts jsonb,
    p_prompt_tokens integer, p_completion_tokens integer, p_cost_usd numeric,
    p_cached_tokens integer, p_cache_write_tokens integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    UPDATE campaign_messages m
       SET generated_message = p_text,
           parts = p_parts,
           parts_sent = 0,
           ai_prompt_tokens = p_prompt_tokens,
           ai_completion_tokens = p_completion_tokens,
           ai_tokens_used = p_prompt_tokens + p_completion_tokens,
           ai_cost_usd = p_cost_usd,
           ai_cached_tokens = p_cached_tokens,
           ai_cache_write_tokens = p_cache_write_tokens,
           ai_calls = 0,
           generation_mode = 'batch',
           generated_at = now()
     WHERE m.id = p_message_id
       AND m.ai_batch_id = p_batch_id
       AND m.parts IS NULL
       AND m.status IN ('pending', 'queued')
    RETURNING m.run_id INTO v_run;
    IF v_run IS NULL THEN
        RETURN false;
    END IF;
    IF p_cost_usd IS NOT NULL AND p_cost_usd > 0 THEN
        PERFORM campaignq_record_ai_spend(v_run, p_cost_usd);
        PERFORM campaignq_enforce_ai_budget(v_run);
    END IF;
    RETURN true;
END;
$$;

-- Claim rows for a new batch: pending, not generated, not in a batch, due between
-- now + p_min_ahead and now + p_horizon, of a running or scheduled run within budget, lead
-- not opted out. Each row is given to at most one batch, ever.
CREATE OR REPLACE FUNCTION campaignq_claim_for_batch(
    p_batch_id uuid, p_min_ahead interval, p_horizon interval, p_limit integer)
RETURNS TABLE (message_id uuid, config_id uuid, lead_name text, custom_fields jsonb)
LANGUAGE sql AS $$
    WITH picked AS (
        SELECT m.id
          FROM campaign_messages m
          JOIN campaign_runs r ON r.id = m.run_id
          JOIN leads l ON l.id = m.lead_id
         WHERE m.status = 'pending' AND m.parts IS NULL AND m.ai_batch_id IS NULL
           AND m.scheduled_at >= now() + p_min_ahead
           AND m.scheduled_at <  now() + p_horizon
           AND r.status IN ('running', 'scheduled')
           AND l.opted_out_at IS NULL
           AND campaignq_ai_cap_reached(r.id) IS NULL
         ORDER BY m.scheduled_at
         LIMIT p_limit
           FOR UPDATE OF m SKIP LOCKED
    ), claimed AS (
        UPDATE campaign_messages m SET ai_batch_id = p_batch_id
          FROM picked WHERE m.id = picked.id
        RETURNING m.id, m.run_id, m.lead_id
    )
    SELECT c.id, r.config_id, l.name, l.custom_fields
      FROM claimed c
      JOIN campaign_runs r ON r.id = c.run_id
      JOIN leads l ON l.id = c.lead_id;
$$;

-- --- views ----------------------------------------------------------------------------------

-- Per run: calls, cache share and cost per 1,000 generated messages, and the cap state.
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
       ) s;

-- Per workspace and UTC day of generation, with today's cap and spend.
CREATE OR REPLACE VIEW campaignq_workspace_ai_costs AS
SELECT c.workspace_id,
       (m.generated_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS generated,
       count(*) FILTER (WHERE m.generation_mode = 'batch') AS batch_generated,
       coalesce(sum(m.ai_calls), 0)::bigint AS ai_calls,
       coalesce(sum(m.ai_prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(m.ai_cached_tokens), 0)::bigint AS cached_tokens,
       CASE WHEN sum(m.ai_prompt_tokens) > 0
            THEN round(sum(m.ai_cached_tokens)::numeric / sum(m.ai_prompt_tokens), 4) END AS cached_token_share,
       round(coalesce(sum(m.ai_cost_usd), 0), 6) AS cost_usd,
       CASE WHEN count(m.ai_cost_usd) > 0
            THEN round(1000 * sum(m.ai_cost_usd) / count(m.ai_cost_usd), 6) END AS cost_per_1000_messages_usd,
       b.daily_ai_cost_cap_usd,
       count(DISTINCT r.id) FILTER (WHERE r.status = 'paused' AND r.pause_reason = 'budget_exhausted')
           AS runs_budget_exhausted
  FROM campaign_messages m
  JOIN campaign_runs r ON r.id = m.run_id
  JOIN campaign_configs c ON c.id = r.config_id
  LEFT JOIN workspace_budgets b ON b.workspace_id = c.workspace_id
 WHERE m.generated_at IS NOT NULL
 GROUP BY c.workspace_id, (m.generated_at AT TIME ZONE 'UTC')::date, b.daily_ai_cost_cap_usd;

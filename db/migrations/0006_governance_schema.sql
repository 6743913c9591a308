-- 0006_governance_schema: the contract's governance columns and tables (DESIGN.md,
-- "Governance", added 2026-11-29), in one place so that fair share, the shared AI budget,
-- sender safety and the console all build on the same names. Behaviour lives in later
-- migrations; this file only adds storage. Every new column is NULL-able or defaulted, so
-- rows stay insertable with only the contract's older columns.

-- The LLM provider's request budget shared by every consumer process on every host
-- (row 'ai'). No row: each process keeps only its own CAMPAIGNQ_AI_REQUESTS_PER_MINUTE.
CREATE TABLE rate_limits (
    name                 text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    requests_per_minute  integer NOT NULL CHECK (requests_per_minute > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER rate_limits_touch BEFORE UPDATE ON rate_limits
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();

-- Fair share: a workspace without a row weighs 1; its running runs share its part.
CREATE TABLE workspace_weights (
    workspace_id  uuid PRIMARY KEY,
    weight        integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER workspace_weights_touch BEFORE UPDATE ON workspace_weights
    FOR EACH ROW EXECUTE FUNCTION campaignq_touch_updated_at();

-- Sender safety. Pace across every process and host (NULL = unpaced); an optional daily cap;
-- an inbox paused by an operator or automatically (ban/logout signals) says why.
ALTER TABLE inboxes
    ADD COLUMN max_sends_per_minute integer CHECK (max_sends_per_minute > 0),
    ADD COLUMN daily_send_cap       integer CHECK (daily_send_cap > 0),
    ADD COLUMN paused_at            timestamptz,
    ADD COLUMN pause_reason         text;

-- Send windows in the lead's local time (may wrap midnight; both NULL = any time) and the
-- campaign's default zone for leads whose own zone is unknown.
ALTER TABLE campaign_configs
    ADD COLUMN send_window_start time,
    ADD COLUMN send_window_end   time,
    ADD COLUMN timezone          text,
    ADD CONSTRAINT campaign_configs_send_window_pair
        CHECK ((send_window_start IS NULL) = (send_window_end IS NULL));

ALTER TABLE leads
    ADD COLUMN timezone      text,
    ADD COLUMN opted_out_at  timestamptz;

-- Why a run stopped when the system (not an operator) paused it, e.g. 'budget_exhausted'.
ALTER TABLE campaign_runs
    ADD COLUMN pause_reason text;

-- The opt-out ingestion path (a STOP-like reply, the gateway's webhook, an operator): every
-- lead of the inbox's workspace with this phone number (compared on digits only) is opted
-- out at once; the consumer skips their messages before any AI call. Returns how many leads
-- changed (0 when already opted out or unknown). Later migrations may extend its effects,
-- never its signature.
CREATE OR REPLACE FUNCTION campaignq_record_opt_out(
    p_instance text,
    p_phone    text,
    p_reason   text DEFAULT 'reply')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_digits text := regexp_replace(coalesce(p_phone, ''), '\D', '', 'g');
    v_count  integer;
BEGIN
    IF v_digits = '' THEN
        RAISE EXCEPTION 'campaignq_record_opt_out: phone % has no digits', p_phone
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE leads AS l
       SET opted_out_at = now()
     WHERE l.opted_out_at IS NULL
       AND regexp_replace(coalesce(l.phone, ''), '\D', '', 'g') = v_digits
       AND l.workspace_id IN (SELECT i.workspace_id FROM inboxes AS i WHERE i.instance = p_instance);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RAISE LOG 'campaignq opt-out: instance=% reason=% leads=%', p_instance, p_reason, v_count;
    RETURN v_count;
END;
$$;

-- 0009_sender_safety (issue 13): per-inbox pacing across every process and host, daily cap
-- and warm-up, automatic pause on trouble, send windows, and opt-outs that take effect at once.
--
-- The maths (jittered gaps, warm-up curve, window openings, time zones) lives in the pure
-- Python modules consumer/pacing.py and consumer/send_window.py; this file only holds the
-- shared state and the short atomic statements that several processes must agree on.

-- Optional warm-up of a new number: from `warmup_started_at`, the daily cap starts at
-- `warmup_first_day_cap` and grows by `warmup_daily_growth` per day until it reaches
-- `daily_send_cap` (or forever grows when that is NULL). All NULL = no warm-up.
ALTER TABLE inboxes
    ADD COLUMN warmup_started_at     timestamptz,
    ADD COLUMN warmup_first_day_cap  integer CHECK (warmup_first_day_cap > 0),
    ADD COLUMN warmup_daily_growth   double precision NOT NULL DEFAULT 1.5
                                     CHECK (warmup_daily_growth >= 1.0 AND warmup_daily_growth <= 10.0);

-- Why a queued message is waiting without having failed (send window, pace, daily cap, paused
-- inbox) and until when: read by `campaignq stats` and the view below; never by the producer.
-- `send_slot_at` is the pace booking this message holds on its inbox (see below).
ALTER TABLE campaign_messages
    ADD COLUMN held_until   timestamptz,
    ADD COLUMN held_reason  text,
    ADD COLUMN send_slot_at timestamptz;

-- Only messages waiting right now are in it (a sent or skipped row leaves it), so the
-- operators' view below counts them without touching the rest of a large table.
CREATE INDEX campaign_messages_held_idx ON campaign_messages (held_until)
    WHERE status = 'queued' AND held_until IS NOT NULL;

-- One row per paced (or capped) inbox: the next free send time, shared by every consumer
-- process on every host. A message books its whole span (all its remaining bubbles plus the
-- jittered gap after the last one) with one short UPDATE, so bubbles of one message stay
-- together and in order, and two processes can never hand out the same slot (the row lock
-- serialises them; the lock is held for one statement only).
CREATE TABLE inbox_pacing (
    inbox_id               uuid PRIMARY KEY REFERENCES inboxes (id) ON DELETE CASCADE,
    next_slot_at           timestamptz NOT NULL DEFAULT '-infinity',
    day                    date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    messages_today         integer NOT NULL DEFAULT 0,
    bubbles_booked         bigint NOT NULL DEFAULT 0,
    rate_limited_since     timestamptz,
    rate_limited_count     integer NOT NULL DEFAULT 0,
    last_rate_limited_at   timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Book the next free span of an inbox for one message.
--   p_span_s       seconds the message occupies (its bubbles' gaps + the gap after the last)
--   p_daily_cap    effective cap for today (warm-up applied by the caller), NULL = none
--   p_first_bubble true when nothing of the message was sent yet (only those count toward
--                  the cap, so a started message is never cut in half by it)
-- Returns booked=false (cap reached today) or the booked slot and how far away it is, in
-- the database's clock (so consumers on hosts with skewed clocks still agree).
-- The booking is stored on the message (`send_slot_at`): a message handed back to the queue
-- until its slot keeps it, and does not count toward the cap twice the same day.
CREATE OR REPLACE FUNCTION campaignq_book_send_slot(
    p_inbox_id uuid, p_message_id uuid, p_span_s double precision,
    p_daily_cap integer, p_first_bubble boolean, p_bubbles integer)
RETURNS TABLE (booked boolean, slot_at timestamptz, wait_s double precision, messages_today integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_today   date := (v_now AT TIME ZONE 'UTC')::date;
    v_row     inbox_pacing%ROWTYPE;
    v_counts  boolean;
    v_slot    timestamptz;
BEGIN
    INSERT INTO inbox_pacing (inbox_id) VALUES (p_inbox_id) ON CONFLICT (inbox_id) DO NOTHING;
    SELECT * INTO v_row FROM inbox_pacing WHERE inbox_id = p_inbox_id FOR UPDATE;
    IF v_row.day <> v_today THEN
        v_row.day := v_today;
        v_row.messages_today := 0;
    END IF;
    SELECT p_first_bubble
           AND (m.send_slot_at IS NULL OR (m.send_slot_at AT TIME ZONE 'UTC')::date <> v_today)
      INTO v_counts
      FROM campaign_messages m WHERE m.id = p_message_id;
    v_counts := coalesce(v_counts, p_first_bubble);
    IF v_counts AND p_daily_cap IS NOT NULL AND v_row.messages_today >= p_daily_cap THEN
        UPDATE inbox_pacing SET day = v_row.day, messages_today = v_row.messages_today, updated_at = v_now
         WHERE inbox_id = p_inbox_id;
        RETURN QUERY SELECT false, NULL::timestamptz, NULL::double precision, v_row.messages_today;
        RETURN;
    END IF;
    v_slot := greatest(v_now, v_row.next_slot_at);
    UPDATE inbox_pacing
       SET next_slot_at = v_slot + make_interval(secs => greatest(p_span_s, 0)),
           day = v_row.day,
           messages_today = v_row.messages_today + CASE WHEN v_counts THEN 1 ELSE 0 END,
           bubbles_booked = bubbles_booked + greatest(p_bubbles, 0),
           updated_at = v_now
     WHERE inbox_id = p_inbox_id;
    UPDATE campaign_messages SET send_slot_at = v_slot WHERE id = p_message_id;
    RETURN QUERY SELECT true, v_slot, extract(epoch FROM v_slot - v_now)::double precision,
                        v_row.messages_today + CASE WHEN v_counts THEN 1 ELSE 0 END;
END;
$$;

-- Hand a claimed message back to the queue without it having failed: visible again in
-- p_delay_s, row back to `queued`, no attempt burnt, no deferral counted, and the time held
-- is added to `first_deferred_at` so the `deferred_too_long` clock does not run while the
-- message waits for its window, its slot, its inbox's cap or an operator. Guarded by the
-- (msg_id, read_ct) lease like every outcome in 0004. A queued row is never touched by the
-- producer's stale sweep (it only skips `pending` rows), so waiting here is never "stale".
CREATE OR REPLACE FUNCTION campaignq_hold_back(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid,
    p_delay_s double precision, p_reason text, p_detail text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_delay interval := make_interval(secs => greatest(p_delay_s, 0));
BEGIN
    UPDATE pgmq.q_campaign_messages
       SET vt = clock_timestamp() + v_delay
     WHERE msg_id = p_msg_id AND read_ct = p_read_ct;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE campaign_messages m
       SET status = 'queued',
           held_until = clock_timestamp() + v_delay,
           held_reason = p_reason,
           first_deferred_at = m.first_deferred_at + v_delay,
           error_message = left(p_detail, 2000)
     WHERE m.id = p_message_id
       AND m.status IN ('queued', 'generating', 'sending');
    RETURN true;
END;
$$;

-- Trouble reported by a consumer about an inbox. 'banned' / 'logged_out' pause it at once;
-- 'rate_limited' (a 429 / 130429 from the gateway) pushes its next free slot past the
-- Retry-After for every process and pauses it when p_threshold of them arrive within
-- p_window_s. A paused inbox stays paused until an operator clears `paused_at` (see
-- docs/operations.md); its messages wait in the queue meanwhile, burning nothing.
-- Returns the pause reason when this call paused the inbox, else NULL.
CREATE OR REPLACE FUNCTION campaignq_report_inbox_trouble(
    p_inbox_id uuid, p_kind text, p_detail text,
    p_retry_after_s double precision, p_threshold integer, p_window_s double precision)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_row    inbox_pacing%ROWTYPE;
    v_reason text;
BEGIN
    IF p_kind IN ('banned', 'logged_out') THEN
        v_reason := p_kind || ': ' || left(coalesce(p_detail, ''), 300);
    ELSIF p_kind = 'rate_limited' THEN
        INSERT INTO inbox_pacing (inbox_id) VALUES (p_inbox_id) ON CONFLICT (inbox_id) DO NOTHING;
        SELECT * INTO v_row FROM inbox_pacing WHERE inbox_id = p_inbox_id FOR UPDATE;
        IF v_row.rate_limited_since IS NULL
           OR v_row.rate_limited_since < v_now - make_interval(secs => p_window_s) THEN
            v_row.rate_limited_since := v_now;
            v_row.rate_limited_count := 0;
        END IF;
        UPDATE inbox_pacing
           SET rate_limited_since = v_row.rate_limited_since,
               rate_limited_count = v_row.rate_limited_count + 1,
               last_rate_limited_at = v_now,
               next_slot_at = greatest(next_slot_at,
                                       v_now + make_interval(secs => greatest(coalesce(p_retry_after_s, 0), 0))),
               updated_at = v_now
         WHERE inbox_id = p_inbox_id;
        IF v_row.rate_limited_count + 1 >= p_threshold THEN
            v_reason := format('rate_limited: %s rate-limit answers within %s s',
                               v_row.rate_limited_count + 1, round(p_window_s::numeric));
        END IF;
    ELSE
        RAISE EXCEPTION 'campaignq_report_inbox_trouble: unknown kind %', p_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_reason IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE inboxes SET paused_at = v_now, pause_reason = v_reason
     WHERE id = p_inbox_id AND paused_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;  -- already paused (by an operator or another process): keep the first reason
    END IF;
    RAISE LOG 'campaignq inbox % paused: %', p_inbox_id, v_reason;
    RETURN v_reason;
END;
$$;

-- A skip that also completes the run when it was the run's last open message. 0004's
-- campaignq_skip served only cancelled / completed runs (nothing to finalise); an opted-out
-- lead's message is skipped inside a running run, and may be its last. Used by the `skip`
-- named query for every skip (finalising a run that is not running is a no-op).
CREATE OR REPLACE FUNCTION campaignq_skip_and_finalize(
    p_msg_id bigint, p_read_ct integer, p_message_id uuid, p_error_class text, p_error text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run_id uuid;
BEGIN
    IF NOT campaignq_skip(p_msg_id, p_read_ct, p_message_id, p_error_class, p_error) THEN
        RETURN false;
    END IF;
    SELECT run_id INTO v_run_id FROM campaign_messages WHERE id = p_message_id;
    IF v_run_id IS NOT NULL THEN
        PERFORM finalize_campaign_run_if_complete(v_run_id);
    END IF;
    RETURN true;
END;
$$;

-- The opt-out ingestion path, extended (same signature as 0006): besides marking the leads,
-- their messages that are not being worked on right now end `skipped` with error class
-- `opted_out` at once — pending ones (not in the queue) and queued ones (their queue message,
-- when it next becomes visible, finds the row terminal and is only archived). A message a
-- worker holds right now is skipped by that worker at its next read, or completes if its
-- bubbles are already on their way (a lead is never left with half a message).
CREATE OR REPLACE FUNCTION campaignq_record_opt_out(
    p_instance text,
    p_phone    text,
    p_reason   text DEFAULT 'reply')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_digits text := regexp_replace(coalesce(p_phone, ''), '\D', '', 'g');
    v_count  integer;
    v_run    uuid;
BEGIN
    IF v_digits = '' THEN
        RAISE EXCEPTION 'campaignq_record_opt_out: phone % has no digits', p_phone
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH opted AS (
        UPDATE leads AS l
           SET opted_out_at = now()
         WHERE l.opted_out_at IS NULL
           AND regexp_replace(coalesce(l.phone, ''), '\D', '', 'g') = v_digits
           AND l.workspace_id IN (SELECT i.workspace_id FROM inboxes AS i WHERE i.instance = p_instance)
        RETURNING l.id
    ), skipped AS (
        UPDATE campaign_messages m
           SET status = 'skipped', finished_at = now(), error_class = 'opted_out',
               error_message = left('the lead opted out (' || coalesce(p_reason, 'reply') || ')', 2000),
               held_until = NULL, held_reason = NULL
          FROM opted
         WHERE m.lead_id = opted.id
           AND m.status IN ('pending', 'queued')
        RETURNING m.run_id
    ), counted AS (
        UPDATE campaign_runs r
           SET leads_processed = r.leads_processed + s.n
          FROM (SELECT run_id, count(*) AS n FROM skipped GROUP BY run_id) AS s
         WHERE r.id = s.run_id
        RETURNING r.id
    )
    SELECT (SELECT count(*) FROM opted) INTO v_count;
    FOR v_run IN
        SELECT DISTINCT m.run_id FROM campaign_messages m JOIN leads l ON l.id = m.lead_id
         WHERE l.opted_out_at >= now() AND regexp_replace(coalesce(l.phone, ''), '\D', '', 'g') = v_digits
    LOOP
        PERFORM finalize_campaign_run_if_complete(v_run);
    END LOOP;
    RAISE LOG 'campaignq opt-out: instance=% reason=% leads=%', p_instance, p_reason, v_count;
    RETURN v_count;
END;
$$;

-- Operators' view of sender safety, one row per inbox: its pace, cap (warm-up applied is
-- shown by `campaignq stats`), pause and why, today's usage, and how many messages wait and
-- why. `campaignq stats` prints it; the console can show it as is.
CREATE OR REPLACE VIEW campaignq_inbox_safety AS
WITH held AS (
    SELECT c.inbox_id,
           count(*) AS held,
           count(*) FILTER (WHERE m.held_reason = 'send_window') AS held_window,
           count(*) FILTER (WHERE m.held_reason = 'pace') AS held_pace,
           count(*) FILTER (WHERE m.held_reason = 'daily_cap') AS held_cap,
           count(*) FILTER (WHERE m.held_reason = 'inbox_paused') AS held_paused
      FROM campaign_messages m
      JOIN campaign_runs r ON r.id = m.run_id
      JOIN campaign_configs c ON c.id = r.config_id
     WHERE m.status = 'queued' AND m.held_until IS NOT NULL AND m.held_until > now()
     GROUP BY c.inbox_id
), opted AS (
    SELECT c.inbox_id, count(*) AS opted_out
      FROM campaign_messages m
      JOIN campaign_runs r ON r.id = m.run_id
      JOIN campaign_configs c ON c.id = r.config_id
     WHERE m.finished_at >= now() - interval '1 day'
       AND m.status = 'skipped' AND m.error_class = 'opted_out'
     GROUP BY c.inbox_id
)
SELECT i.id AS inbox_id,
       i.workspace_id,
       i.name,
       i.instance,
       i.max_sends_per_minute,
       i.daily_send_cap,
       i.warmup_started_at,
       i.warmup_first_day_cap,
       i.warmup_daily_growth,
       i.paused_at,
       i.pause_reason,
       p.next_slot_at,
       CASE WHEN p.day = (now() AT TIME ZONE 'UTC')::date THEN p.messages_today ELSE 0 END AS messages_today,
       coalesce(p.bubbles_booked, 0) AS bubbles_booked,
       coalesce(p.rate_limited_count, 0) AS rate_limited_recent,
       p.last_rate_limited_at,
       coalesce(h.held, 0) AS held,
       coalesce(h.held_window, 0) AS held_send_window,
       coalesce(h.held_pace, 0) AS held_pace,
       coalesce(h.held_cap, 0) AS held_daily_cap,
       coalesce(h.held_paused, 0) AS held_inbox_paused,
       coalesce(o.opted_out, 0) AS skipped_opted_out_24h
  FROM inboxes i
  LEFT JOIN inbox_pacing p ON p.inbox_id = i.id
  LEFT JOIN held h ON h.inbox_id = i.id
  LEFT JOIN opted o ON o.inbox_id = i.id;

-- 0008_fair_share_budget: fair share across workspaces (the producer) and one AI budget shared
-- by every consumer process (leased slices of a rate_limits row). Builds on the storage of
-- 0006 (rate_limits, workspace_weights); the pure maths is mirrored in consumer/fairshare.py.

-- Weighted max-min fair split ("water-filling") of p_total units: nobody gets more than its
-- demand, what one does not need goes to the others in proportion to their weights, integer
-- remainders go by largest fractional part, ties to the first key at or after p_rotation
-- (0-based), so that over many ticks no key wins by its position. Same steps as
-- consumer.fairshare.fair_split (tests/integration/test_fair_share.py checks they agree).
CREATE OR REPLACE FUNCTION campaignq_fair_split(
    p_total    integer,
    p_weights  numeric[],
    p_demands  integer[],
    p_rotation integer DEFAULT 0)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n            integer := coalesce(cardinality(p_demands), 0);
    v_shares     numeric[];
    v_alloc      integer[];
    v_active     boolean[];
    v_fitting    boolean[];
    v_any        boolean;
    v_remaining  numeric := p_total;
    v_wsum       numeric;
    v_sum_demand bigint := 0;
    v_leftover   integer;
    i            integer;
BEGIN
    IF n = 0 THEN
        RETURN ARRAY[]::integer[];
    END IF;
    IF coalesce(cardinality(p_weights), 0) <> n OR p_total IS NULL OR p_total < 0 THEN
        RAISE EXCEPTION 'campaignq_fair_split: % weights for % demands, total %', cardinality(p_weights), n, p_total
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1..n LOOP
        v_sum_demand := v_sum_demand + greatest(0, p_demands[i]);
    END LOOP;
    IF v_sum_demand <= p_total THEN
        RETURN ARRAY(SELECT greatest(0, d) FROM unnest(p_demands) WITH ORDINALITY AS u(d, k) ORDER BY k);
    END IF;
    v_shares := array_fill(0::numeric, ARRAY[n]);
    v_active := array_fill(false, ARRAY[n]);
    FOR i IN 1..n LOOP
        v_active[i] := p_demands[i] > 0 AND p_weights[i] > 0;
    END LOOP;
    LOOP
        v_wsum := 0;
        FOR i IN 1..n LOOP
            IF v_active[i] THEN v_wsum := v_wsum + p_weights[i]; END IF;
        END LOOP;
        EXIT WHEN v_wsum = 0;
        v_fitting := array_fill(false, ARRAY[n]);
        v_any := false;
        FOR i IN 1..n LOOP
            IF v_active[i] AND p_demands[i] <= v_remaining * p_weights[i] / v_wsum THEN
                v_fitting[i] := true;
                v_any := true;
            END IF;
        END LOOP;
        IF NOT v_any THEN
            FOR i IN 1..n LOOP
                IF v_active[i] THEN v_shares[i] := v_remaining * p_weights[i] / v_wsum; END IF;
            END LOOP;
            EXIT;
        END IF;
        FOR i IN 1..n LOOP
            IF v_fitting[i] THEN
                v_shares[i] := p_demands[i];
                v_remaining := v_remaining - p_demands[i];
                v_active[i] := false;
            END IF;
        END LOOP;
    END LOOP;
    v_alloc := array_fill(0, ARRAY[n]);
    FOR i IN 1..n LOOP
        v_alloc[i] := floor(v_shares[i])::integer;
    END LOOP;
    v_leftover := p_total - (SELECT sum(a) FROM unnest(v_alloc) AS a);
    FOR i IN
        SELECT k FROM generate_series(1, n) AS k
         WHERE v_alloc[k] < p_demands[k] AND v_shares[k] > v_alloc[k]
         ORDER BY v_shares[k] - v_alloc[k] DESC, (((k - 1 - p_rotation) % n) + n) % n
         LIMIT greatest(v_leftover, 0)
    LOOP
        v_alloc[i] := v_alloc[i] + 1;
    END LOOP;
    RETURN v_alloc;
END;
$$;

-- The producer, fair and just in time (issue 12). Same signature and contract as 0002/0007:
-- one transaction, one PGMQ message per queued row, SKIP LOCKED, index-only paths, and the
-- stale rule — which lives in ONE place, 0007's campaignq_sweep_stale_pending: it runs first,
-- in this transaction, and skips every stale row, so whatever is still pending and due
-- afterwards is queued, however old its schedule (a half-sent row, an uncertain one, a row of
-- a just-resumed run: whatever the sweep's rule protects). The selection therefore has no
-- lower bound of its own to keep in step with 0007. (A stale row the sweep could not lock
-- is locked by another transaction, and FOR UPDATE SKIP LOCKED below skips it too, or
-- re-checks its committed status.)
-- What changed:
-- 1. Just in time: it keeps the queue's *visible* depth near what the consumers take in the
--    next `campaignq.queue_horizon_s` seconds (default 15; measured from the archive's last
--    10 s), at least `campaignq.queue_min_depth` (default 500). PGMQ reads FIFO, so fairness
--    can only be decided at enqueue time, and it holds only if the queue stays short:
--    whatever is queued is served in order, however fast the consumers are.
--    `SET campaignq.queue_horizon_s = 0` (session, role or `ALTER DATABASE … SET`) turns
--    just-in-time off: every due row up to p_limit, fairly split, as a bulk load would want.
-- 2. Fair: each tick's room is split over the workspaces with due work by weight
--    (`workspace_weights`, default 1), then each workspace's part over its running runs
--    equally (campaignq_fair_split), and queued interleaved (workspace by workspace in
--    proportion to their parts), so ten runs of one workspace get one workspace's share.
CREATE OR REPLACE FUNCTION enqueue_due_campaign_messages(p_limit integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now           timestamptz := now();
    v_horizon_s     numeric := coalesce(nullif(current_setting('campaignq.queue_horizon_s', true), '')::numeric, 15);
    v_min_depth     integer := coalesce(nullif(current_setting('campaignq.queue_min_depth', true), '')::integer, 500);
    v_rate_per_s    numeric;
    v_target        integer;
    v_visible       integer;
    v_room          integer;
    v_rotation      integer;
    v_run_ids       uuid[];
    v_run_ws        uuid[];
    v_run_weights   numeric[];
    v_run_demands   integer[];
    v_run_allocs    integer[] := ARRAY[]::integer[];
    v_ws_weights    numeric[] := ARRAY[]::numeric[];
    v_ws_demands    integer[] := ARRAY[]::integer[];
    v_ws_first      integer[] := ARRAY[]::integer[];
    v_ws_allocs     integer[];
    v_part          integer[];
    v_last          integer;
    n_runs          integer;
    j               integer;
    k               integer;
    v_msgs          jsonb[];
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'enqueue_due_campaign_messages: p_limit must be a positive integer, got %',
            coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Stale sweep: issue 9's function (0007), as 0007's producer calls it.
    PERFORM campaignq_sweep_stale_pending();

    -- Room in the queue. Both counts are bounded: the archive's last 10 s through its
    -- archived_at index, the visible messages through the vt index, stopping at the target.
    IF v_horizon_s > 0 THEN
        SELECT count(*) / 10.0 INTO v_rate_per_s
          FROM pgmq.a_campaign_messages a
         WHERE a.archived_at > v_now - interval '10 seconds';
        v_target := greatest(v_min_depth, ceil(v_rate_per_s * v_horizon_s))::integer;
        SELECT count(*) INTO v_visible
          FROM (SELECT 1 FROM pgmq.q_campaign_messages q WHERE q.vt <= v_now LIMIT v_target) AS visible;
        v_room := least(p_limit, v_target - v_visible);
    ELSE
        v_room := p_limit;
    END IF;
    IF v_room <= 0 THEN
        RETURN 0;
    END IF;

    -- Demand per running run, counted up to the room (index-only on the pending index),
    -- grouped by workspace (runs of a workspace are contiguous in the arrays).
    SELECT array_agg(d.run_id ORDER BY d.workspace_id, d.run_id),
           array_agg(d.workspace_id ORDER BY d.workspace_id, d.run_id),
           array_agg(d.weight ORDER BY d.workspace_id, d.run_id),
           array_agg(d.n ORDER BY d.workspace_id, d.run_id)
      INTO v_run_ids, v_run_ws, v_run_weights, v_run_demands
      FROM (
            SELECT r.id AS run_id, c.workspace_id, coalesce(w.weight, 1)::numeric AS weight, due.n
              FROM campaign_runs r
              JOIN campaign_configs c ON c.id = r.config_id
              LEFT JOIN workspace_weights w ON w.workspace_id = c.workspace_id
              CROSS JOIN LATERAL (
                    SELECT count(*)::integer AS n
                      FROM (SELECT 1
                              FROM campaign_messages m
                             WHERE m.run_id = r.id
                               AND m.status = 'pending'
                               AND m.scheduled_at <= v_now
                             LIMIT v_room) AS capped
              ) due
             WHERE r.status = 'running'
               AND due.n > 0
      ) d;
    n_runs := coalesce(cardinality(v_run_ids), 0);
    IF n_runs = 0 THEN
        RETURN 0;
    END IF;

    -- Deficit round robin with a quantum of one tick: workspaces by weight, then runs equally.
    FOR k IN 1..n_runs LOOP
        IF k = 1 OR v_run_ws[k] <> v_run_ws[k - 1] THEN
            v_ws_first := v_ws_first || k;
            v_ws_weights := v_ws_weights || v_run_weights[k];
            v_ws_demands := v_ws_demands || 0;
        END IF;
        j := cardinality(v_ws_first);
        v_ws_demands[j] := least(v_room, v_ws_demands[j] + v_run_demands[k]);
    END LOOP;
    v_rotation := (floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint % 1000003)::integer;
    v_ws_allocs := campaignq_fair_split(v_room, v_ws_weights, v_ws_demands, v_rotation);
    FOR j IN 1..cardinality(v_ws_first) LOOP
        v_last := CASE WHEN j < cardinality(v_ws_first) THEN v_ws_first[j + 1] - 1 ELSE n_runs END;
        v_part := campaignq_fair_split(
            v_ws_allocs[j],
            array_fill(1::numeric, ARRAY[v_last - v_ws_first[j] + 1]),
            v_run_demands[v_ws_first[j]:v_last],
            v_rotation);
        v_run_allocs := v_run_allocs || v_part;
    END LOOP;

    -- Selection: each run's share through campaign_messages_pending_due_idx, oldest first,
    -- claimed with SKIP LOCKED; queued round robin (workspace by workspace, `weight` messages
    -- a turn; runs in turn within a workspace), so a FIFO read serves every workspace from
    -- the first message on and a small workspace's part is done first, not spread over the tick.
    WITH alloc AS (
        SELECT a.run_id, a.n, a.ws, a.w
          FROM unnest(v_run_ids, v_run_allocs, v_run_ws, v_run_weights) AS a(run_id, n, ws, w)
         WHERE a.n > 0
    ), picked AS (
        SELECT due.id, alloc.ws, alloc.w
          FROM alloc
          CROSS JOIN LATERAL (
                SELECT m.id
                  FROM campaign_messages m
                 WHERE m.run_id = alloc.run_id
                   AND m.status = 'pending'
                   AND m.scheduled_at <= v_now
                 ORDER BY m.scheduled_at
                 LIMIT alloc.n
                   FOR UPDATE OF m SKIP LOCKED
          ) due
    ), marked AS (
        UPDATE campaign_messages m
           SET status = 'queued', queued_at = v_now
          FROM picked
         WHERE m.id = picked.id
        RETURNING m.id, m.run_id, m.lead_id, picked.ws, picked.w
    ), by_run AS (
        SELECT marked.*, row_number() OVER (PARTITION BY marked.run_id ORDER BY marked.id) AS rn_run
          FROM marked
    ), by_ws AS (
        SELECT by_run.*, row_number() OVER (PARTITION BY by_run.ws ORDER BY by_run.rn_run, by_run.run_id) AS rn_ws
          FROM by_run
    )
    SELECT array_agg(jsonb_build_object(
               'v', 1, 'campaign_message_id', by_ws.id,
               'run_id', by_ws.run_id, 'lead_id', by_ws.lead_id)
             ORDER BY by_ws.rn_ws / by_ws.w, by_ws.ws)
      INTO v_msgs
      FROM by_ws;

    IF v_msgs IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM pgmq.send_batch('campaign_messages', v_msgs);
    -- One wake-up for idle consumers (PGMQ's own channel name), as in 0002.
    PERFORM pg_notify('pgmq.q_campaign_messages.INSERT', NULL);
    RETURN cardinality(v_msgs);
END;
$$;

-- === One AI budget shared by every consumer ==================================================
-- Each consumer process holds a slice of a rate_limits row, refreshed about once a second by
-- one statement (campaignq_lease_rate_limit). A slice expires when its holder stops
-- refreshing (SIGKILL, network loss): its budget returns to the others within the lease.
CREATE TABLE rate_limit_slices (
    name            text NOT NULL,
    holder          text NOT NULL,
    host            text,
    pid             integer,
    cap_rpm         integer NOT NULL CHECK (cap_rpm > 0),
    wanted_rpm      integer NOT NULL CHECK (wanted_rpm >= 0),
    granted_rpm     integer NOT NULL DEFAULT 0 CHECK (granted_rpm >= 0),
    used_rpm        integer NOT NULL DEFAULT 0 CHECK (used_rpm >= 0),
    requests_total  bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    seen_at         timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (name, holder)
);

-- A provider's "slow down" (429, in-flight budget 402), seen by one process, paused for all.
CREATE TABLE rate_limit_cooldowns (
    name        text PRIMARY KEY,
    until       timestamptz NOT NULL,
    reason      text,
    set_by      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One refresh of one holder's slice; returns the budget (NULL: no rate_limits row, only the
-- process's own cap applies), this holder's grant, the live holders and any shared cooldown.
-- Serialised per budget by an advisory lock, so grants never add up above the budget: a
-- holder's fair target (water-filling over what the live holders want) only becomes its
-- grant once the others have handed that budget back at their own refresh.
CREATE OR REPLACE FUNCTION campaignq_lease_rate_limit(
    p_name        text,
    p_holder      text,
    p_host        text,
    p_pid         integer,
    p_cap_rpm     integer,
    p_wanted_rpm  integer,
    p_used_rpm    integer,
    p_requests    bigint,
    p_lease_s     double precision)
RETURNS TABLE (budget_rpm integer, granted_rpm integer, holders integer, cooldown_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_budget   integer;
    v_cooldown timestamptz;
    v_holders  text[];
    v_wanted   integer[];
    v_targets  integer[];
    v_others   bigint;
    v_grant    integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('campaignq.rate_limit:' || p_name, 0));
    SELECT c.until INTO v_cooldown FROM rate_limit_cooldowns c WHERE c.name = p_name AND c.until > now();
    SELECT rl.requests_per_minute INTO v_budget FROM rate_limits rl WHERE rl.name = p_name;
    DELETE FROM rate_limit_slices s
     WHERE s.name = p_name
       AND (s.expires_at < clock_timestamp() OR (v_budget IS NULL AND s.holder = p_holder));
    IF v_budget IS NULL THEN
        RETURN QUERY SELECT NULL::integer, NULL::integer, 0, v_cooldown;
        RETURN;
    END IF;
    INSERT INTO rate_limit_slices AS s
           (name, holder, host, pid, cap_rpm, wanted_rpm, used_rpm, requests_total, seen_at, expires_at)
    VALUES (p_name, p_holder, p_host, p_pid, p_cap_rpm, least(p_wanted_rpm, p_cap_rpm), p_used_rpm,
            p_requests, clock_timestamp(), clock_timestamp() + make_interval(secs => p_lease_s))
    ON CONFLICT (name, holder) DO UPDATE
       SET cap_rpm = excluded.cap_rpm, wanted_rpm = excluded.wanted_rpm, used_rpm = excluded.used_rpm,
           requests_total = excluded.requests_total, seen_at = excluded.seen_at,
           expires_at = excluded.expires_at;
    SELECT array_agg(s.holder ORDER BY s.holder), array_agg(s.wanted_rpm ORDER BY s.holder)
      INTO v_holders, v_wanted
      FROM rate_limit_slices s WHERE s.name = p_name;
    v_targets := campaignq_fair_split(
        v_budget, array_fill(1::numeric, ARRAY[cardinality(v_holders)]), v_wanted, 0);
    SELECT coalesce(sum(s.granted_rpm), 0) INTO v_others
      FROM rate_limit_slices s WHERE s.name = p_name AND s.holder <> p_holder;
    v_grant := greatest(0, least(v_targets[array_position(v_holders, p_holder)], v_budget - v_others))::integer;
    UPDATE rate_limit_slices s SET granted_rpm = v_grant WHERE s.name = p_name AND s.holder = p_holder;
    RETURN QUERY SELECT v_budget, v_grant, cardinality(v_holders), v_cooldown;
END;
$$;

-- A provider cooldown for every holder of the budget; only ever extends an existing one.
CREATE OR REPLACE FUNCTION campaignq_rate_limit_cooldown(
    p_name text, p_seconds double precision, p_set_by text, p_reason text)
RETURNS timestamptz
LANGUAGE sql AS $$
    INSERT INTO rate_limit_cooldowns AS c (name, until, reason, set_by, updated_at)
    VALUES (p_name, clock_timestamp() + make_interval(secs => p_seconds), p_reason, p_set_by, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
       SET until = greatest(c.until, excluded.until),
           reason = CASE WHEN excluded.until > c.until THEN excluded.reason ELSE c.reason END,
           set_by = CASE WHEN excluded.until > c.until THEN excluded.set_by ELSE c.set_by END,
           updated_at = excluded.updated_at
    RETURNING until;
$$;

-- === What operators see ======================================================================
-- Each budget: its size, live holders, what they hold, want and use, any shared cooldown.
CREATE OR REPLACE VIEW campaignq_rate_limit_usage AS
SELECT rl.name,
       rl.requests_per_minute,
       count(s.holder)::integer AS holders,
       coalesce(sum(s.granted_rpm), 0)::integer AS granted_rpm,
       coalesce(sum(s.wanted_rpm), 0)::integer AS wanted_rpm,
       coalesce(sum(s.used_rpm), 0)::integer AS used_rpm,
       round(100.0 * coalesce(sum(s.used_rpm), 0) / rl.requests_per_minute, 1) AS used_pct,
       CASE WHEN c.until > now() THEN c.until END AS cooldown_until,
       rl.updated_at
  FROM rate_limits rl
  LEFT JOIN rate_limit_slices s ON s.name = rl.name AND s.expires_at >= now()
  LEFT JOIN rate_limit_cooldowns c ON c.name = rl.name
 GROUP BY rl.name, rl.requests_per_minute, rl.updated_at, c.until;

-- Who holds slices now (live leases only).
CREATE OR REPLACE VIEW campaignq_rate_limit_holders AS
SELECT s.name, s.holder, s.host, s.pid, s.cap_rpm, s.wanted_rpm, s.granted_rpm, s.used_rpm,
       s.requests_total, s.joined_at, s.seen_at,
       round(extract(epoch FROM now() - s.seen_at)::numeric, 1) AS seen_s_ago
  FROM rate_limit_slices s
 WHERE s.expires_at >= now();

-- Fair share now: each workspace with running runs, its weight, its share of the weight of
-- the workspaces with due work, and what it has due and in the queue.
CREATE OR REPLACE VIEW campaignq_fair_share AS
WITH per_ws AS (
    SELECT c.workspace_id,
           coalesce(max(w.weight), 1) AS weight,
           count(DISTINCT r.id)::integer AS running_runs,
           coalesce(sum(due.n), 0)::bigint AS due,
           coalesce(sum(moving.n), 0)::bigint AS in_queue
      FROM campaign_runs r
      JOIN campaign_configs c ON c.id = r.config_id
      LEFT JOIN workspace_weights w ON w.workspace_id = c.workspace_id
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM campaign_messages m
             WHERE m.run_id = r.id AND m.status = 'pending'
               AND m.scheduled_at <= now() AND m.scheduled_at >= now() - interval '1 hour') due
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM campaign_messages m
             WHERE m.run_id = r.id AND m.status IN ('queued', 'generating', 'sending')) moving
     WHERE r.status = 'running'
     GROUP BY c.workspace_id
)
SELECT workspace_id, weight, running_runs, due, in_queue,
       CASE WHEN due > 0 OR in_queue > 0
            THEN round(100.0 * weight / sum(weight) FILTER (WHERE due > 0 OR in_queue > 0) OVER (), 1)
            ELSE 0 END AS share_pct
  FROM per_ws;

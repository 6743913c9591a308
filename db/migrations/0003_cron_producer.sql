-- 0003_cron_producer: a producer "tick" for pg_cron versions without second-level schedules.
-- pg_cron < 1.5 fires at most once a minute; this procedure, scheduled every minute, calls
-- the producer every p_every_s seconds for p_for_s seconds, committing after each call so
-- queued messages become visible at once and no transaction stays open across the sleep.
CREATE OR REPLACE PROCEDURE campaignq_run_producer(
    p_limit   integer DEFAULT 5000,
    p_every_s integer DEFAULT 5,
    p_for_s   integer DEFAULT 55)
LANGUAGE plpgsql AS $$
DECLARE
    v_until timestamptz := clock_timestamp() + make_interval(secs => p_for_s);
BEGIN
    IF p_every_s < 1 OR p_for_s < 0 THEN
        RAISE EXCEPTION 'campaignq_run_producer: p_every_s must be >= 1 and p_for_s >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        PERFORM enqueue_due_campaign_messages(p_limit);
        COMMIT;
        EXIT WHEN clock_timestamp() + make_interval(secs => p_every_s) > v_until;
        PERFORM pg_sleep(p_every_s);
        COMMIT;
    END LOOP;
END;
$$;

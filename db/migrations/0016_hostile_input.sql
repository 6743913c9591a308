-- 0016_hostile_input (issue 22): hostile input is quarantined, never fatal.
--
-- A queue payload the claim may trust is now also at most 1,024 bytes as PostgreSQL prints
-- it. A contract payload is about 170 bytes (producer and replay build exactly the four
-- fields), so nothing we send is refused; what the bound buys is agreement with the
-- consumer's parser (consumer/core/models.py `parse_payload`: the same 1,024 bytes, and any
-- document that short nests at most 512 levels, which it accepts). Before, a valid payload
-- with a 3,000-deep array in an extra field was trusted and claimed here (row `generating`),
-- then stopped the consumer while it decoded the batch; now it is not claimed, and the
-- consumer dead-letters it (`invalid_payload`) without touching any row.
CREATE OR REPLACE FUNCTION campaignq_payload_ok(p_message jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_typeof(p_message) = 'object'
       AND octet_length(p_message::text) <= 1024
       AND jsonb_typeof(p_message -> 'v') = 'number' AND (p_message ->> 'v') = '1'
       AND jsonb_typeof(p_message -> 'campaign_message_id') = 'string'
       AND jsonb_typeof(p_message -> 'run_id') = 'string'
       AND jsonb_typeof(p_message -> 'lead_id') = 'string'
       AND (p_message ->> 'campaign_message_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
       AND (p_message ->> 'run_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
       AND (p_message ->> 'lead_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
$$;

-- Console login sessions (issue 22). Before, the cookie was `role.HMAC(token)`: the same at
-- every login, valid forever, still valid after logout. Now the cookie holds a random id and
-- this table its SHA-256 (a leaked row cannot be replayed as a cookie), the role, when it
-- was last used (idle expiry, `CAMPAIGNQ_CONSOLE_SESSION_IDLE_S`) and a fingerprint of the
-- role's token at login (a rotated token ends every session opened with the old one).
CREATE TABLE campaignq_console_sessions (
    id_hash           text PRIMARY KEY,
    role              text NOT NULL CHECK (role IN ('admin', 'read')),
    token_fingerprint text NOT NULL,
    client            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaignq_console_sessions_seen_idx ON campaignq_console_sessions (last_seen_at);

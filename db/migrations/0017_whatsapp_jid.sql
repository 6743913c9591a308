-- 0017_whatsapp_jid (issue 21, point 3): the chat a message went to, as the gateway named it.
--
-- Evolution stores a sent message under its own jid for the number (createJid drops the 9th
-- digit of most Brazilian mobiles; WhatsApp may answer a LID), and `findMessages` matches
-- `key.remoteJid` exactly. The worker keeps the `key.remoteJid` of the gateway's answer here
-- when it is not the plain `<digits>@s.whatsapp.net` and parts remain to send, and reconciles
-- an unanswered part of that message in this chat first (runtime/whatsapp.py `find_sent`).
-- NULL (the default, so a row is insertable with DESIGN's minimum columns): no answer yet, or
-- the plain form; reconciliation then asks every jid the number may map to (core/jid.py).

ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS whatsapp_jid text NULL
        CHECK (whatsapp_jid IS NULL OR length(whatsapp_jid) BETWEEN 3 AND 200);

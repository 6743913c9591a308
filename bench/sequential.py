"""The audited design, rebuilt faithfully enough to race: one message at a time, batches of 5.

What the audit describes of ``campaign-process-queue`` (shared/seed, sections 1.1 to 2.3 and
4.4), in the order the Edge Function did it, per invocation:

1. the "too old" sweep (``IN (subquery)``), then ``get_and_lock_campaign_messages(5)``
   (the reconstructed original from ``bench/sql/original_producer.sql``, with the
   audit's indexes instead of ours — see ``bench.producer.prepare_original``);
2. fresh per-invocation caches for the model and the inbox status (problem 8);
3. ``for (const msg of messages)``, strictly sequential (problem 1):
   ``get_lead_full_context`` (one query per message, problem 5) → generate (no timeout,
   problem 7) → check the text is not empty → split when the config asks (the same
   structured-output request as ours, so the simulator answers alike; the answer parsed
   with a regex, problem 13) → send each part in order, stopping at the first failure
   (problem 3) → mark the row sent / failed, count the run's processed lead, finalise.

It talks to the same simulator over the same loopback HTTP with one keep-alive session
(as Deno's fetch does) and to the database directly: the original went through PostgREST,
one HTTP round trip per query, so this baseline is if anything faster than the original.
Invocations run back to back, which is generous too: the original waited for a scheduler.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg

from bench.producer import ORIGINAL_SQL

BATCH_SIZE = 5  # the Edge Function's default (validated 1..100); the audit says 5-10 fit in 60 s
_JSON_ARRAY = re.compile(r"\[.*\]", re.DOTALL)


@dataclass
class SequentialResult:
    messages: int = 0
    sent: int = 0
    failed: int = 0
    invocations: int = 0
    seconds: float = 0.0
    finish_offsets_s: list[float] = field(default_factory=list)
    per_message_s: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def run_sequential(
    url: str,
    *,
    ai_base_url: str,
    whatsapp_base_url: str,
    ai_key: str,
    whatsapp_key: str,
    max_messages: int,
    batch_size: int = BATCH_SIZE,
) -> SequentialResult:
    """Invoke the old processor back to back until `max_messages` are done (whole batches)."""
    result = SequentialResult()
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None)  # problem 7: no timeout on any call
    async with aiohttp.ClientSession(timeout=timeout) as session:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            worker = _OldProcessor(conn, session, ai_base_url, whatsapp_base_url, ai_key, whatsapp_key)
            while result.messages < max_messages:
                rows = await worker.select_batch(batch_size)
                if not rows:
                    break
                result.invocations += 1
                worker.new_invocation()
                for row in rows:
                    message_started = time.perf_counter()
                    ok = await worker.process(row)
                    now = time.perf_counter()
                    result.messages += 1
                    result.sent += ok
                    result.failed += not ok
                    result.per_message_s.append(now - message_started)
                    result.finish_offsets_s.append(now - started)
    result.seconds = result.finish_offsets_s[-1] if result.finish_offsets_s else 0.0
    return result


class _OldProcessor:
    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        session: aiohttp.ClientSession,
        ai_base_url: str,
        whatsapp_base_url: str,
        ai_key: str,
        whatsapp_key: str,
    ) -> None:
        self.conn = conn
        self.session = session
        self.ai_url = f"{ai_base_url}/chat/completions"
        self.wa_url = whatsapp_base_url
        self.ai_headers = {"Authorization": f"Bearer {ai_key}"}
        self.wa_headers = {"apikey": whatsapp_key}
        self.model_cache: dict[Any, str] = {}
        self.inbox_cache: dict[Any, tuple[str, bool]] = {}

    def new_invocation(self) -> None:
        """Problem 8: the caches lived in the function's scope, rebuilt every invocation."""
        self.model_cache = {}
        self.inbox_cache = {}

    async def select_batch(self, batch_size: int) -> list[tuple[Any, ...]]:
        params = {"batch_size": batch_size, "one_hour_ago": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)}
        await self.conn.execute(ORIGINAL_SQL["original_stale_sweep"], params)
        cur = await self.conn.execute(
            "SELECT * FROM get_and_lock_campaign_messages(%(batch_size)s, %(one_hour_ago)s)", params
        )
        return await cur.fetchall()

    async def process(self, row: tuple[Any, ...]) -> bool:
        (
            message_id,
            run_id,
            lead_id,
            _sched,
            _retry,
            config_id,
            _ws,
            _model,
            system_prompt,
            inbox_id,
            split,
        ) = row
        try:
            text, parts = await self._generate(lead_id, config_id, system_prompt, split)
            instance = await self._inbox(inbox_id)
            phone = await self._phone(lead_id)
            all_sent = True
            for part in parts:  # problem 3: stop at the first failure, nothing recorded per part
                async with self.session.post(
                    f"{self.wa_url}/message/sendText/{instance}",
                    json={"number": phone, "text": part},
                    headers=self.wa_headers,
                ) as response:
                    await response.read()
                    if response.status >= 300:
                        all_sent = False
                        break
            ok = all_sent
        except (aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError):
            text, ok = None, False
        await self.conn.execute(
            "UPDATE campaign_messages SET status = %s, generated_message = %s, "
            "sent_at = CASE WHEN %s THEN now() END, "
            "retry_count = retry_count + CASE WHEN %s THEN 0 ELSE 1 END "
            "WHERE id = %s",
            ("sent" if ok else "failed", text, ok, ok, message_id),
        )
        await self.conn.execute(
            "UPDATE campaign_runs SET leads_processed = leads_processed + 1 WHERE id = %s", (run_id,)
        )
        await self.conn.execute("SELECT finalize_campaign_run_if_complete(%s)", (run_id,))
        return ok

    async def _generate(
        self, lead_id: Any, config_id: Any, system_prompt: str, split: bool
    ) -> tuple[str, list[str]]:
        context = await self._lead_context(lead_id)  # problem 5: one RPC per message
        model = await self._model(config_id)
        async with self.session.post(
            self.ai_url,
            json={
                "model": model,
                "messages": [
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": context},
                ],
            },
            headers=self.ai_headers,
        ) as response:
            data = json.loads(await response.read())
        text = data["choices"][0]["message"]["content"]
        if not text:  # problem 13: the only check
            raise ValueError("empty message")
        if not split:
            return text, [text]
        async with self.session.post(
            self.ai_url,
            json={
                "model": model,
                "messages": [
                    {"role": "system", "content": "Split this WhatsApp message into at most 3 messages."},
                    {"role": "user", "content": text},
                ],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "whatsapp_parts",
                        "schema": {
                            "type": "object",
                            "properties": {"parts": {"type": "array", "maxItems": 3}},
                        },
                    },
                },
            },
            headers=self.ai_headers,
        ) as response:
            answer = json.loads(await response.read())
        content = answer["choices"][0]["message"]["content"]
        match = _JSON_ARRAY.search(content or "")
        try:
            parts = [str(p) for p in json.loads(match.group(0))] if match else [text]
        except ValueError:
            parts = [text]
        return text, parts or [text]

    async def _lead_context(self, lead_id: Any) -> str:
        cur = await self.conn.execute(
            "SELECT name, phone, custom_fields FROM leads WHERE id = %s", (lead_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise KeyError("lead")
        fields = "\n".join(f"{k}: {v}" for k, v in (row[2] or {}).items())
        return f"Lead name: {row[0]}\n{fields}"

    async def _phone(self, lead_id: Any) -> str:
        cur = await self.conn.execute("SELECT phone FROM leads WHERE id = %s", (lead_id,))
        row = await cur.fetchone()
        return re.sub(r"\D", "", str(row[0])) if row else ""

    async def _model(self, config_id: Any) -> str:
        if config_id not in self.model_cache:
            cur = await self.conn.execute("SELECT ai_model FROM campaign_configs WHERE id = %s", (config_id,))
            row = await cur.fetchone()
            self.model_cache[config_id] = str(row[0]) if row else ""
        return self.model_cache[config_id]

    async def _inbox(self, inbox_id: Any) -> str:
        if inbox_id not in self.inbox_cache:
            cur = await self.conn.execute("SELECT instance FROM inboxes WHERE id = %s", (inbox_id,))
            row = await cur.fetchone()
            instance = str(row[0]) if row else ""
            async with self.session.get(
                f"{self.wa_url}/instance/connectionState/{instance}", headers=self.wa_headers
            ) as response:
                state = json.loads(await response.read())
            self.inbox_cache[inbox_id] = (instance, state.get("instance", {}).get("state") == "open")
        instance, connected = self.inbox_cache[inbox_id]
        if not connected:
            raise ValueError("inbox not connected")
        return instance


def run(url: str, **kwargs: Any) -> SequentialResult:
    return asyncio.run(run_sequential(url, **kwargs))

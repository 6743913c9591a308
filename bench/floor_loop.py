"""The Python floor's loop: ``python -m bench.floor_loop`` (a child process, so /proc times it).

Why: the issue's yardstick for the consumer's CPU per message is "a minimal loop in
bench/": the least any asyncio + aiohttp + psycopg program can spend moving one campaign
message through PGMQ, the AI and the WhatsApp gateway. It is a *floor*, not a competitor:
no validation, no retries, no logging, no metrics, no leases, no governance, no triage.

How: one process, two database connections (reader, writer), one aiohttp session.
The reader takes up to ``--batch`` messages with one statement (``pgmq.read`` joined to
the message, lead, config and inbox rows) whenever at least a quarter of the
``--concurrency`` slots is free. Each message is one task: the AI call with campaignq's
JSON shape (model, system + user messages, max_tokens, the strict ``{"parts": [...]}``
``response_format`` when the campaign splits), then one ``/message/sendText`` per part,
one after another. The writer collects finished messages and, per flush, runs one
``pgmq.archive(queue, ids[])`` and one ``UPDATE … FROM unnest(...)`` (status, parts, text,
sent_at, finished_at) in one transaction. An empty queue is polled every 20 ms. It runs
until SIGTERM/SIGINT and prints ``floor: N messages`` at exit.

Sizes: ``--concurrency`` (64), ``--batch`` (64), as the consumer measured beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import aiohttp
import psycopg

QUEUE = "campaign_messages"
VISIBILITY_S = 300
EMPTY_POLL_S = 0.02

READ = """
WITH r AS (
    SELECT msg_id, (message->>'campaign_message_id')::uuid AS mid
      FROM pgmq.read(queue_name => %(queue)s::text, vt => %(vt)s::integer, qty => %(qty)s::integer)
)
SELECT r.msg_id, m.id, l.name, l.phone, l.custom_fields, c.ai_model, c.system_prompt,
       c.max_tokens, c.split_messages, c.max_parts, i.instance
  FROM r
  JOIN campaign_messages m ON m.id = r.mid
  JOIN leads l ON l.id = m.lead_id
  JOIN campaign_runs ru ON ru.id = m.run_id
  JOIN campaign_configs c ON c.id = ru.config_id
  JOIN inboxes i ON i.id = c.inbox_id
"""

ARCHIVE = "SELECT pgmq.archive(%(queue)s::text, %(ids)s::bigint[])"

UPDATE = """
UPDATE campaign_messages m
   SET status = 'sent', generated_message = d.text, parts = d.parts::jsonb,
       parts_sent = jsonb_array_length(d.parts::jsonb), sent_at = now(), finished_at = now()
  FROM unnest(%(ids)s::uuid[], %(texts)s::text[], %(parts)s::text[]) AS d(id, text, parts)
 WHERE m.id = d.id
"""

SPLIT_INSTRUCTIONS = (
    "Write the message as 1 to {max_parts} consecutive WhatsApp chat bubbles, each at most 4096 "
    "characters, cut at paragraph or sentence boundaries, in reading order. "
    'Answer only with JSON: {{"parts": ["first bubble", "second bubble"]}}.'
)


def _parts_format(max_parts: int) -> dict[str, Any]:
    """The strict ``response_format`` campaignq sends with a one-call split generation."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "whatsapp_message_parts",  # consumer.core.llmcost.PARTS_SCHEMA_NAME
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "parts": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": max_parts,
                    }
                },
                "required": ["parts"],
                "additionalProperties": False,
            },
        },
    }


class Floor:
    def __init__(
        self,
        *,
        database_url: str,
        ai_url: str,
        ai_key: str,
        whatsapp_url: str,
        whatsapp_key: str,
        concurrency: int,
        batch: int,
    ) -> None:
        self.database_url = database_url
        self.ai_url = f"{ai_url.rstrip('/')}/chat/completions"
        self.ai_headers = {"Authorization": f"Bearer {ai_key}"}
        self.whatsapp_url = whatsapp_url.rstrip("/")
        self.whatsapp_headers = {"apikey": whatsapp_key}
        self.concurrency = concurrency
        self.batch = batch
        self.in_flight = 0
        self.done: list[tuple[int, Any, str, str]] = []  # (msg_id, message id, text, parts JSON)
        self.finished = 0
        self.slot_freed = asyncio.Event()
        self.work_done = asyncio.Event()
        self.stop = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as self.http,
            await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as reader,
            await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as writer,
        ):
            flusher = asyncio.create_task(self._flush_loop(writer))
            print("floor: ready", flush=True)  # the benchmark starts its CPU clock after this line
            await self._read_loop(reader)
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            self.work_done.set()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush(writer)

    async def _read_loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        low_water = max(1, self.concurrency // 4)
        while not self.stop.is_set():
            free = self.concurrency - self.in_flight
            if free < low_water:
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            cur = await conn.execute(READ, {"queue": QUEUE, "vt": VISIBILITY_S, "qty": min(free, self.batch)})
            rows = await cur.fetchall()
            if not rows:
                await asyncio.sleep(EMPTY_POLL_S)
                continue
            for row in rows:
                self.in_flight += 1
                task = asyncio.create_task(self._one(row))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _one(self, row: tuple[Any, ...]) -> None:
        (
            msg_id,
            message_id,
            name,
            phone,
            fields,
            model,
            system_prompt,
            max_tokens,
            split,
            max_parts,
            instance,
        ) = row
        try:
            details = "\n".join(f"- {k}: {v}" for k, v in sorted(fields.items()))
            body: dict[str, Any] = {
                "model": model,
                "messages": [
                    {
                        "role": "system",
                        "content": system_prompt
                        + ("\n\n" + SPLIT_INSTRUCTIONS.format(max_parts=max_parts) if split else ""),
                    },
                    {"role": "user", "content": f"Lead name: {name}\nLead details:\n{details}"},
                ],
                "max_tokens": max_tokens,
            }
            if split:
                body["response_format"] = _parts_format(max_parts)
                body["provider"] = {"require_parameters": True}
            body["session_id"] = body["prompt_cache_key"] = f"cq-{model}"  # campaignq's default fields
            async with self.http.post(self.ai_url, json=body, headers=self.ai_headers) as response:
                answer = await response.json()
            text = answer["choices"][0]["message"]["content"]
            parts = json.loads(text)["parts"] if split else [text]
            url = f"{self.whatsapp_url}/message/sendText/{instance}"
            for part in parts:
                async with self.http.post(
                    url, json={"number": phone, "text": part}, headers=self.whatsapp_headers
                ):
                    pass
            self.done.append((msg_id, message_id, "\n\n".join(parts), json.dumps(parts)))
            self.work_done.set()
        finally:
            self.in_flight -= 1
            self.slot_freed.set()

    async def _flush_loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            await self.work_done.wait()
            self.work_done.clear()
            await self._flush(conn)

    async def _flush(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self.done:
            return
        done, self.done = self.done, []
        async with conn.transaction():
            await conn.execute(ARCHIVE, {"queue": QUEUE, "ids": [d[0] for d in done]})
            await conn.execute(
                UPDATE,
                {"ids": [d[1] for d in done], "texts": [d[2] for d in done], "parts": [d[3] for d in done]},
            )
        self.finished += len(done)


async def _main(args: argparse.Namespace) -> int:
    floor = Floor(
        database_url=args.database_url,
        ai_url=args.ai_base_url,
        ai_key=args.ai_key,
        whatsapp_url=args.whatsapp_base_url,
        whatsapp_key=args.whatsapp_key,
        concurrency=args.concurrency,
        batch=args.batch,
    )
    loop = asyncio.get_running_loop()

    def stop() -> None:
        floor.stop.set()
        floor.slot_freed.set()  # a reader waiting for a free slot sees the stop at once

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await floor.run()
    print(f"floor: {floor.finished} messages", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--ai-base-url", required=True)
    parser.add_argument("--ai-key", required=True)
    parser.add_argument("--whatsapp-base-url", required=True)
    parser.add_argument("--whatsapp-key", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

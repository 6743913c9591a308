"""The peer side of ``python -m bench peer``: campaignq's split-off message as a procrastinate task.

One job = one message, doing what a campaignq consumer does for a split-off message, the way a
procrastinate user would write it:

1. one query reads the lead context from the same seeded tables (message → run → config →
   inbox, lead);
2. one chat completion to the simulator, with the body campaignq sends (built by the same pure
   helpers: `build_user_prompt`, `prompt_layout`, `cache_key`), checked by
   `validate_generated_text`;
3. one ``sendText`` to the simulator's gateway with campaignq's body (``number`` normalised by
   `normalize_phone`, ``text``; no ``delay`` for a first bubble);
4. one statement records the outcome as campaignq's ``campaignq_complete_sent`` does: the row
   ``sent`` (with the text and timings), the run's ``leads_processed`` + 1, the run finalised
   when complete.

Run as its own process (``python -m bench.peer_app``, configured by ``PEER_*`` variables): a
procrastinate worker at ``PEER_CONCURRENCY`` with an ``aiohttp`` session and a Prometheus
histogram ``peer_message_seconds`` (the task's own duration, as ``campaignq_message_seconds``
is the pipeline's) on ``PEER_METRICS_PORT``. procrastinate itself is a bench-only dependency
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, LiteralString
from urllib.parse import quote

import aiohttp
import procrastinate
from prometheus_client import Histogram, start_http_server

from consumer.core.llmcost import cache_key, prompt_layout
from consumer.core.prompt import build_user_prompt
from consumer.core.validation import normalize_phone, validate_generated_text

TASK_NAME = "campaignq_bench_send_message"
QUEUE = "campaign_messages"
MAX_PART_CHARS = 4096  # campaignq's default `max_part_chars` (only in the prompt of split configs)
AI_TIMEOUT_S = 30.0  # campaignq's defaults for the two requests
SEND_TIMEOUT_S = 10.0

LEAD_CONTEXT: LiteralString = """
SELECT l.name AS lead_name, l.phone, l.custom_fields, cf.id AS config_id, cf.ai_model,
       cf.system_prompt, cf.max_tokens, i.instance
  FROM campaign_messages m
  JOIN campaign_runs r ON r.id = m.run_id
  JOIN campaign_configs cf ON cf.id = r.config_id
  JOIN inboxes i ON i.id = cf.inbox_id
  JOIN leads l ON l.id = m.lead_id
 WHERE m.id = %(message_id)s::uuid
"""

# What campaignq_complete_sent does to the rows (0004), in one statement; the queue's own
# bookkeeping (PGMQ archive there, the job's status here) is each side's business.
COMPLETE_SENT: LiteralString = """
WITH sent AS (
    UPDATE campaign_messages m
       SET status = 'sent', sent_at = now(), finished_at = now(),
           generated_message = %(text)s, parts = %(parts)s::jsonb, parts_sent = 1,
           ai_ms = %(ai_ms)s, send_ms = %(send_ms)s, error_class = NULL, error_message = NULL
     WHERE m.id = %(message_id)s::uuid AND m.status NOT IN ('sent', 'failed', 'skipped')
    RETURNING m.run_id
), counted AS (
    UPDATE campaign_runs r SET leads_processed = r.leads_processed + 1
      FROM sent WHERE r.id = sent.run_id
    RETURNING r.id
)
SELECT count(*) AS sent, bool_or(finalize_campaign_run_if_complete(id)) AS finalized FROM counted
"""


@dataclass(frozen=True)
class PeerConfig:
    database_url: str
    ai_base_url: str
    ai_key: str
    whatsapp_base_url: str
    whatsapp_key: str
    concurrency: int
    pool_max_size: int
    metrics_port: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> PeerConfig:
        return cls(
            database_url=env["PEER_DATABASE_URL"],
            ai_base_url=env["PEER_AI_BASE_URL"].rstrip("/"),
            ai_key=env["PEER_AI_KEY"],
            whatsapp_base_url=env["PEER_WHATSAPP_BASE_URL"].rstrip("/"),
            whatsapp_key=env["PEER_WHATSAPP_KEY"],
            concurrency=int(env["PEER_CONCURRENCY"]),
            pool_max_size=int(env["PEER_POOL_MAX_SIZE"]),
            metrics_port=int(env["PEER_METRICS_PORT"]),
        )

    def env(self) -> dict[str, str]:
        return {
            "PEER_DATABASE_URL": self.database_url,
            "PEER_AI_BASE_URL": self.ai_base_url,
            "PEER_AI_KEY": self.ai_key,
            "PEER_WHATSAPP_BASE_URL": self.whatsapp_base_url,
            "PEER_WHATSAPP_KEY": self.whatsapp_key,
            "PEER_CONCURRENCY": str(self.concurrency),
            "PEER_POOL_MAX_SIZE": str(self.pool_max_size),
            "PEER_METRICS_PORT": str(self.metrics_port),
        }


def make_app(config: PeerConfig, session: aiohttp.ClientSession, seconds: Histogram) -> procrastinate.App:
    """A procrastinate app with the one task; `session` is the process's HTTP client."""
    connector = procrastinate.PsycopgConnector(
        conninfo=config.database_url, min_size=1, max_size=config.pool_max_size
    )
    app = procrastinate.App(connector=connector)
    ai_headers = {"Authorization": f"Bearer {config.ai_key}"}
    send_headers = {"apikey": config.whatsapp_key}

    @app.task(name=TASK_NAME, queue=QUEUE)
    async def send_message(message_id: str) -> None:
        started = time.perf_counter()
        lead = await connector.execute_query_one_async(LEAD_CONTEXT, message_id=message_id)
        body = chat_body(lead)
        async with session.post(
            f"{config.ai_base_url}/chat/completions",
            json=body,
            headers=ai_headers,
            timeout=aiohttp.ClientTimeout(total=AI_TIMEOUT_S),
        ) as response:
            response.raise_for_status()
            answer = json.loads(await response.read())
        text = validate_generated_text(answer["choices"][0]["message"]["content"])
        ai_done = time.perf_counter()
        async with session.post(
            f"{config.whatsapp_base_url}/message/sendText/{quote(lead['instance'], safe='')}",
            json={"number": normalize_phone(lead["phone"]), "text": text},
            headers=send_headers,
            timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S),
        ) as response:
            response.raise_for_status()
            await response.read()
        sent_at = time.perf_counter()
        await connector.execute_query_one_async(
            COMPLETE_SENT,
            message_id=message_id,
            text=text,
            parts=json.dumps([text]),
            ai_ms=round((ai_done - started) * 1000),
            send_ms=round((sent_at - ai_done) * 1000),
        )
        seconds.observe(time.perf_counter() - started)

    del send_message  # registered on the app by the decorator
    return app


def chat_body(lead: dict[str, Any]) -> dict[str, Any]:
    """campaignq's split-off request (`generation.request_body` → `AIClient.generate`), field by field."""
    layout = prompt_layout(
        system_prompt=lead["system_prompt"],
        lead_prompt=build_user_prompt(lead_name=lead["lead_name"], custom_fields=lead["custom_fields"]),
        structured=False,
        max_parts=1,
        max_chars=MAX_PART_CHARS,
    )
    key = cache_key(config_id=str(lead["config_id"]), model=lead["ai_model"], shared_prefix=layout.shared)
    return {
        "model": lead["ai_model"],
        "messages": layout.messages(),
        "max_tokens": lead["max_tokens"],
        "session_id": key,  # campaignq's defaults: OpenRouter fields and prompt_cache_key on
        "prompt_cache_key": key,
    }


async def run_worker(config: PeerConfig) -> None:
    """The worker until SIGTERM/SIGINT (procrastinate's own handlers stop it gracefully)."""
    seconds = Histogram("peer_message_seconds", "One job, from the task's start to its outcome written")
    start_http_server(config.metrics_port, addr="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        app = make_app(config, session, seconds)
        async with app.open_async():
            await app.run_worker_async(
                concurrency=config.concurrency,
                queues=[QUEUE],
                name="bench-peer",
                shutdown_graceful_timeout=5.0,
            )


def main() -> int:
    # procrastinate logs each job's start and end at INFO, as campaignq logs each outcome:
    # both sides pay for their per-message log lines.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_worker(PeerConfig.from_env(dict(os.environ))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

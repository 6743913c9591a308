"""Batch pre-generation: messages due hours ahead are generated through the provider's Batch API.

Batch requests cost about half of synchronous ones and results arrive within 24 h (usually
minutes), which suits campaigns scheduled ahead. The OpenAI batch shape that OpenRouter and
others follow: ``POST /files`` (JSONL of chat requests, purpose ``batch``), ``POST /batches``
(``completion_window: "24h"``), poll ``GET /batches/{id}``, read the output file.

Guarantees, and where they come from:

- Each message is given to at most one batch, ever (`campaignq_claim_for_batch` sets
  ``ai_batch_id`` on pending rows that have none, in the same transaction that records the
  batch). So nothing is submitted twice, even with two `pregenerate` loops.
- A result is stored only on a row that is still pending or queued and not generated
  (`campaignq_store_pregenerated`, first writer wins). A row that came due before its batch
  finished was generated synchronously by the consumer; the late result is discarded and
  counted, never sent.
- Failed, expired or invalid items leave the row as it was: at due time the consumer
  generates it synchronously, as if there were no batch.
- Requests are built by `generation.request_body` (same prompt layout, schema and cache
  key as the synchronous path) and answers checked by the same validation.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from loguru import logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..core.costs import estimate_cost_usd
from ..core.llmcost import StructuredOutputMemory
from ..core.models import CampaignConfig
from ..core.split import plan_parts
from ..core.validation import validate_generated_text
from ..errors import CampaignqError, ProviderUnavailableError, RateLimitedError
from ..settings import Settings
from ..sql import query
from .ai import AIClient
from .db import Database
from .generation import parts_from_structured, request_body, uses_structured_output

PREPARING_ABANDONED_AFTER_S = 3600.0
"""A submission takes seconds; a batch still 'preparing' after an hour lost its process."""
_OPEN_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_ENDED_WITHOUT_OUTPUT = {"failed": "failed", "expired": "expired", "cancelled": "cancelled"}


class BatchClient:
    """The provider's files and batches endpoints; every failure is a `CampaignqError`."""

    def __init__(
        self, *, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float = 60.0
    ):
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def upload_jsonl(self, content: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="campaignq-batch.jsonl", content_type="application/jsonl")
        data = await self._json("POST", "/files", data=form)
        return str(data["id"])

    async def create_batch(self, input_file_id: str) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        return await self._json("POST", "/batches", json_body=body)

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def file_content(self, file_id: str) -> bytes:
        return await self._raw("GET", f"/files/{file_id}/content")

    async def _json(
        self, method: str, path: str, *, data: Any = None, json_body: Any = None
    ) -> dict[str, Any]:
        raw = await self._raw(method, path, data=data, json_body=json_body)
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise ProviderUnavailableError(f"batch API {method} {path}: answer is not JSON") from exc
        if not isinstance(parsed, dict):
            raise ProviderUnavailableError(f"batch API {method} {path}: answer is not an object")
        return parsed

    async def _raw(self, method: str, path: str, *, data: Any = None, json_body: Any = None) -> bytes:
        try:
            async with self._session.request(
                method,
                self._base + path,
                data=data,
                json=json_body,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ProviderUnavailableError(f"batch API {method} {path}: {type(exc).__name__}") from exc
        if status == 429:
            raise RateLimitedError(f"batch API {method} {path} rate limited", retry_after_s=5.0)
        if status >= 300:
            text = body.decode("utf-8", "replace")[:200]
            raise ProviderUnavailableError(f"batch API {method} {path} answered {status}: {text}")
        return body


@dataclass
class TickReport:
    """What one `Pregenerator.tick` did (for logs, tests and the benchmark)."""

    submitted_batches: int = 0
    submitted_requests: int = 0
    finished_batches: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    failed_items: int = 0
    discarded: int = 0
    resumed_runs: int = 0


class Pregenerator:
    """One `tick` = resume runs within budget, poll open batches, submit one new batch."""

    def __init__(
        self,
        *,
        db: Database,
        ai: AIClient,
        batches: BatchClient,
        settings: Settings,
        memory: StructuredOutputMemory | None = None,
    ) -> None:
        self.db = db
        self.ai = ai
        self.batches = batches
        self.settings = settings
        self.memory = memory or StructuredOutputMemory()

    async def tick(self) -> TickReport:
        report = TickReport()
        report.resumed_runs = int(await self._scalar("resume_within_budget", {}) or 0)
        await self.poll(report)
        await self.submit(report)
        return report

    # --- submitting -----------------------------------------------------------------------

    async def submit(self, report: TickReport) -> None:
        batch_id = uuid.uuid4()
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO ai_batches (id, status) VALUES (%s, 'preparing')", (batch_id,))
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                query("pregen_claim"),
                {
                    "batch_id": batch_id,
                    "min_ahead_s": self.settings.pregen_min_ahead_s,
                    "horizon_s": self.settings.pregen_horizon_s,
                    "limit": self.settings.pregen_batch_size,
                },
            )
            rows = await cur.fetchall()
            if not rows:
                await conn.execute("DELETE FROM ai_batches WHERE id = %s", (batch_id,))
                return
        try:
            configs = await self._configs({row["config_id"] for row in rows})
            lines = []
            for row in rows:
                config = configs.get(row["config_id"])
                if config is None or not config.system_prompt.strip():
                    continue  # left for the synchronous path, which reports the bad config
                body = request_body(
                    self.ai,
                    config,
                    self.settings,
                    lead_name=row["lead_name"],
                    custom_fields=row["custom_fields"],
                    structured=uses_structured_output(config, self.settings, self.memory),
                )
                line = {
                    "custom_id": str(row["message_id"]),
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
                lines.append(json.dumps(line, ensure_ascii=False))
            if not lines:
                raise ProviderUnavailableError("no request could be built")
            file_id = await self.batches.upload_jsonl(("\n".join(lines) + "\n").encode())
            created = await self.batches.create_batch(file_id)
        except (CampaignqError, KeyError) as exc:
            await self._execute("pregen_abandon", {"batch_id": batch_id, "error": str(exc)[:500]})
            logger.warning("batch of {} messages not submitted ({}); rows released", len(rows), exc)
            return
        await self._execute(
            "pregen_submitted",
            {
                "batch_id": batch_id,
                "provider_batch_id": str(created["id"]),
                "input_file_id": file_id,
                "requests": len(lines),
            },
        )
        report.submitted_batches += 1
        report.submitted_requests += len(lines)
        logger.info("submitted batch {} ({} requests) as {}", batch_id, len(lines), created["id"])

    # --- collecting ----------------------------------------------------------------------

    async def poll(self, report: TickReport) -> None:
        await self._execute("pregen_expire_preparing", {"older_than_s": PREPARING_ABANDONED_AFTER_S})
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query("pregen_open_batches"))
            open_batches = await cur.fetchall()
        for batch in open_batches:
            if batch["status"] != "submitted" or not batch["provider_batch_id"]:
                continue
            try:
                await self._poll_one(batch["id"], str(batch["provider_batch_id"]), report)
            except CampaignqError as exc:
                logger.warning("batch {} not polled this tick: {}", batch["id"], exc)

    async def _poll_one(self, batch_id: uuid.UUID, provider_batch_id: str, report: TickReport) -> None:
        state = await self.batches.get_batch(provider_batch_id)
        status = str(state.get("status"))
        if status in _OPEN_STATUSES:
            return
        if status in _ENDED_WITHOUT_OUTPUT:
            await self._finished(batch_id, _ENDED_WITHOUT_OUTPUT[status], state, 0, 0, 0, f"batch {status}")
            report.finished_batches[status] = report.finished_batches.get(status, 0) + 1
            logger.warning("batch {} ended {}: its messages are generated at due time", batch_id, status)
            return
        if status != "completed":
            return
        stored = failed = discarded = 0
        configs_by_message = await self._configs_by_message(batch_id)
        output_id = state.get("output_file_id")
        if output_id:
            content = await self.batches.file_content(str(output_id))
            for line in content.decode("utf-8").splitlines():
                if not line.strip():
                    continue
                outcome = await self._store_line(batch_id, json.loads(line), configs_by_message)
                stored += outcome == "stored"
                failed += outcome == "failed"
                discarded += outcome == "discarded"
        error_id = state.get("error_file_id")
        if error_id:
            errors = await self.batches.file_content(str(error_id))
            failed += sum(1 for line in errors.decode("utf-8").splitlines() if line.strip())
        await self._finished(batch_id, "completed", state, stored, failed, discarded, None)
        report.finished_batches["completed"] = report.finished_batches.get("completed", 0) + 1
        report.stored += stored
        report.failed_items += failed
        report.discarded += discarded
        logger.info(
            "batch {} completed: {} stored, {} failed (sync at due time), {} discarded (already generated)",
            batch_id,
            stored,
            failed,
            discarded,
        )

    async def _store_line(
        self, batch_id: uuid.UUID, line: Mapping[str, Any], configs: Mapping[str, CampaignConfig]
    ) -> str:
        message_id = str(line.get("custom_id"))
        config = configs.get(message_id)
        response = line.get("response")
        if config is None or not isinstance(response, Mapping) or response.get("status_code") != 200:
            return "failed"
        try:
            body = json.dumps(response.get("body")).encode()
            completion = self.ai.parse_completion(body, requested_model=config.ai_model)
            if config.split_messages:
                text, parts = parts_from_structured(completion.content, config=config, settings=self.settings)
            else:
                text = validate_generated_text(completion.content, min_chars=self.settings.min_message_chars)
                parts = plan_parts(
                    text,
                    split_enabled=False,
                    llm_parts=None,
                    max_parts=1,
                    max_chars=self.settings.max_part_chars,
                )
        except CampaignqError as exc:
            logger.info("batch answer for {} unusable ({}); generated at due time", message_id, exc)
            return "failed"
        usage = completion.usage
        cost = usage.cost_usd
        if cost is None:
            sync_cost = estimate_cost_usd(
                model=config.ai_model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                reported_cost_usd=None,
                prices=self.settings.model_prices,
            )
            cost = None if sync_cost is None else sync_cost * self.settings.ai_batch_price_factor
        stored = await self._scalar(
            "pregen_store",
            {
                "message_id": message_id,
                "batch_id": batch_id,
                "text": text,
                "parts": Jsonb(parts),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": cost,
                "cached_tokens": usage.cached_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
            },
        )
        return "stored" if stored else "discarded"

    # --- database helpers ----------------------------------------------------------------

    async def _finished(
        self,
        batch_id: uuid.UUID,
        status: str,
        state: Mapping[str, Any],
        stored: int,
        failed: int,
        discarded: int,
        error: str | None,
    ) -> None:
        await self._execute(
            "pregen_finished",
            {
                "batch_id": batch_id,
                "status": status,
                "output_file_id": state.get("output_file_id"),
                "error_file_id": state.get("error_file_id"),
                "stored": stored,
                "failed_items": failed,
                "discarded": discarded,
                "error": error,
            },
        )

    async def _configs(self, config_ids: set[uuid.UUID]) -> dict[uuid.UUID, CampaignConfig]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query("pregen_configs"), {"config_ids": list(config_ids)})
            rows = await cur.fetchall()
        return {
            row["id"]: CampaignConfig(
                id=row["id"],
                workspace_id=row["workspace_id"],
                ai_model=row["ai_model"],
                system_prompt=row["system_prompt"],
                split_messages=row["split_messages"],
                max_parts=row["max_parts"],
                max_tokens=row["max_tokens"],
                inbox_id=row["inbox_id"],
                instance=row["instance"],
            )
            for row in rows
        }

    async def _configs_by_message(self, batch_id: uuid.UUID) -> dict[str, CampaignConfig]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT m.id, r.config_id FROM campaign_messages m JOIN campaign_runs r ON r.id = m.run_id "
                "WHERE m.ai_batch_id = %s",
                (batch_id,),
            )
            pairs = await cur.fetchall()
        configs = await self._configs({config_id for _, config_id in pairs})
        return {
            str(message_id): configs[config_id] for message_id, config_id in pairs if config_id in configs
        }

    async def _scalar(self, name: str, params: dict[str, Any]) -> Any:
        async with self.db.connection() as conn:
            cur = await conn.execute(query(name), params)
            row = await cur.fetchone()
        return row[0] if row else None

    async def _execute(self, name: str, params: dict[str, Any]) -> None:
        async with self.db.connection() as conn:
            await conn.execute(query(name), params)


async def run_pregenerate(
    settings: Settings, url: str, *, once: bool, stop: asyncio.Event | None = None
) -> int:
    """The `campaignq pregenerate` loop: a tick every `pregen_interval_s` until stopped."""
    stop = stop or asyncio.Event()
    db = await Database.open(
        url,
        max_size=2,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        transaction_pooled=settings.transaction_pooled(url),
    )
    try:
        async with aiohttp.ClientSession() as session:
            pregenerator = Pregenerator(
                db=db,
                ai=AIClient.from_settings(settings, session),
                batches=BatchClient(
                    session=session, base_url=settings.ai_base_url, api_key=settings.ai_key()
                ),
                settings=settings,
            )
            while True:
                report = await pregenerator.tick()
                if report.submitted_batches or report.finished_batches or report.resumed_runs:
                    logger.info("pregenerate tick: {}", report)
                if once or stop.is_set():
                    return 0
                try:
                    await asyncio.wait_for(stop.wait(), timeout=settings.pregen_interval_s)
                except TimeoutError:
                    continue
                return 0
    finally:
        await db.close()

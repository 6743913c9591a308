"""Batch pre-generation: messages due hours ahead are generated through the provider's Batch API.

Batch requests cost about half of synchronous ones and results arrive within 24 h (usually
minutes), which suits campaigns scheduled ahead. Two Batch APIs exist (issue 21), chosen by
`consumer.core.providers.batch_api_for` from ``CAMPAIGNQ_AI_BATCH_API``:

- **OpenRouter** (``OpenRouterTeam/docs`` c26125a, ``batch-quickstart.mdx``): ``POST
  {root}/api/beta/batches`` with ``{"endpoint", "model", "requests": [{"custom_id",
  "body"}]}`` — ``endpoint`` and ``model`` serialised *before* ``requests`` (the API
  stream-parses and answers 400 otherwise), one model per batch, 202 ``validating``; poll
  ``GET …/batches/{id}``; once ``completed``, ``results`` come inline (``response.body``
  or ``error`` per item). No files: ``/files`` is 404 there.
- **OpenAI** (also Groq): ``POST /files`` (JSONL, purpose ``batch``), ``POST /batches``
  (``completion_window: "24h"``), poll ``GET /batches/{id}``, read the output file — also
  of an *expired* or *cancelled* batch, whose finished items are paid for already.

Guarantees, and where they come from:

- Each message is given to at most one batch, ever (`campaignq_claim_for_batch` sets
  ``ai_batch_id`` on pending rows that have none, in the same transaction that records the
  batch). So nothing is submitted twice, even with two `pregenerate` loops. A claim holding
  several models (or schemas) is split into one batch per model and schema.
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
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from loguru import logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .. import safejson
from ..core.costs import estimate_cost_usd
from ..core.llmcost import StructuredOutputMemory
from ..core.models import CampaignConfig
from ..core.providers import batch_api_for, batch_group_key, openrouter_batches_url
from ..core.split import plan_parts
from ..core.validation import validate_generated_text
from ..errors import CampaignqError, ProviderRejectedError, ProviderUnavailableError, RateLimitedError
from ..settings import Settings
from ..sql import query
from .ai import AIClient, parse_retry_after_s
from .db import Database
from .generation import parts_from_structured, request_body, uses_structured_output
from .provider_http import JSON_CONTENT_TYPE, json_body

PREPARING_ABANDONED_AFTER_S = 3600.0
"""A submission takes seconds; a batch still 'preparing' after an hour lost its process."""
BATCH_ANSWER_MAX_BYTES = 512 * 1024**2
"""A completed OpenRouter batch carries every result inline: far above one chat answer's cap."""
CHAT_COMPLETIONS_ENDPOINT = "/v1/chat/completions"
_OPEN_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_ENDED_WITHOUT_OUTPUT = {"failed": "failed", "expired": "expired", "cancelled": "cancelled"}


@dataclass(frozen=True)
class BatchState:
    """A provider batch as both APIs report it: status, and the result items once there are any.

    ``results`` holds items shaped ``{"custom_id", "response": {"status_code", "body"},
    "error"}`` (OpenRouter's inline results, OpenAI's output-file lines); None while the
    batch runs or when it ended with nothing to read. ``failed_items`` counts failures that
    are not among ``results`` (OpenAI's error file).
    """

    status: str
    results: list[Mapping[str, Any]] | None = None
    failed_items: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class SubmittedBatch:
    provider_batch_id: str
    input_file_id: str | None = None


class BatchNotFoundError(ProviderRejectedError):
    """The provider answered 404 for a batch or file we created: it will not appear later."""


class BatchApi(Protocol):
    """What `Pregenerator` needs from a Batch API; every failure is a `CampaignqError`."""

    async def submit(
        self, *, model: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> SubmittedBatch: ...

    async def state(self, provider_batch_id: str) -> BatchState: ...


class _HttpBatchClient:
    def __init__(self, *, session: aiohttp.ClientSession, api_key: str, timeout_s: float = 60.0) -> None:
        self._session = session
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _json(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = safejson.DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        raw = await self._raw(method, url, data=data, headers=headers)
        try:
            return safejson.loads_object(raw, max_bytes=max_bytes)
        except safejson.UnsafeJSON as exc:
            raise ProviderUnavailableError(f"batch API {method} {url}: {exc}") from None

    async def _raw(
        self, method: str, url: str, *, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        try:
            async with self._session.request(
                method, url, data=data, headers={**self._headers, **(headers or {})}, timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
                retry_after_s = parse_retry_after_s(response.headers, now_epoch_s=0.0)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ProviderUnavailableError(f"batch API {method} {url}: {type(exc).__name__}") from exc
        if status == 404 and method == "GET":
            raise BatchNotFoundError(f"batch API {method} {url} answered 404")
        if status == 429:
            raise RateLimitedError(
                f"batch API {method} {url} rate limited", retry_after_s=retry_after_s or 5.0
            )
        if status >= 300:
            text = body.decode("utf-8", "replace")[:200]
            raise ProviderUnavailableError(f"batch API {method} {url} answered {status}: {text}")
        return body


class OpenRouterBatchClient(_HttpBatchClient):
    """OpenRouter's Batch API (beta): one JSON request in, results inline, no files.

    Assumptions (issue 21), because the API is beta and absent from ``openapi/openapi.yaml``
    at the commit read: the shapes are those of ``batch-quickstart.mdx`` only; the endpoint
    sits at the chat base URL with ``/v1`` replaced by ``/beta`` (`openrouter_batches_url`);
    a ``failed``, ``expired`` or ``cancelled`` batch has ``results: null`` (as the page says),
    so nothing of it can be kept and its rows go synchronous at due time; errors other than
    429 are answered like the chat API's (``{"error": {"code", "message"}}``).
    """

    def __init__(
        self, *, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float = 60.0
    ):
        super().__init__(session=session, api_key=api_key, timeout_s=timeout_s)
        self.url = openrouter_batches_url(base_url)

    @staticmethod
    def request_body(model: str, requests: Sequence[tuple[str, Mapping[str, Any]]]) -> bytes:
        """The submission, ``endpoint`` and ``model`` first: the order is part of the contract."""
        payload = {
            "endpoint": CHAT_COMPLETIONS_ENDPOINT,
            "model": model,
            "requests": [{"custom_id": custom_id, "body": body} for custom_id, body in requests],
        }
        return json_body(payload)  # orjson keeps insertion order

    async def submit(
        self, *, model: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> SubmittedBatch:
        raw = await self._raw(
            "POST",
            self.url,
            data=self.request_body(model, requests),
            headers={"Content-Type": JSON_CONTENT_TYPE},
        )
        try:
            created = safejson.loads_object(raw)
        except safejson.UnsafeJSON as exc:
            raise ProviderUnavailableError(f"batch API POST {self.url}: {exc}") from None
        if not isinstance(created.get("id"), str):
            raise ProviderUnavailableError(f"batch API POST {self.url}: answer without an id")
        return SubmittedBatch(provider_batch_id=created["id"])

    async def state(self, provider_batch_id: str) -> BatchState:
        data = await self._json("GET", f"{self.url}/{provider_batch_id}", max_bytes=BATCH_ANSWER_MAX_BYTES)
        status = str(data.get("status"))
        results = data.get("results")
        items = [item for item in results if isinstance(item, Mapping)] if isinstance(results, list) else None
        return BatchState(status=status, results=items if status == "completed" else None)


class BatchClient(_HttpBatchClient):
    """OpenAI's files and batches endpoints (also Groq's)."""

    def __init__(
        self, *, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float = 60.0
    ):
        super().__init__(session=session, api_key=api_key, timeout_s=timeout_s)
        self._base = base_url.rstrip("/")

    async def upload_jsonl(self, content: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="campaignq-batch.jsonl", content_type="application/jsonl")
        data = await self._json("POST", f"{self._base}/files", data=form)
        return str(data["id"])

    async def create_batch(self, input_file_id: str) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id,
            "endpoint": CHAT_COMPLETIONS_ENDPOINT,
            "completion_window": "24h",
        }
        return await self._json(
            "POST", f"{self._base}/batches", data=json_body(body), headers={"Content-Type": JSON_CONTENT_TYPE}
        )

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"{self._base}/batches/{batch_id}")

    async def file_content(self, file_id: str) -> bytes:
        return await self._raw("GET", f"{self._base}/files/{file_id}/content")

    async def submit(
        self, *, model: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> SubmittedBatch:
        lines = [
            json.dumps(
                {"custom_id": custom_id, "method": "POST", "url": CHAT_COMPLETIONS_ENDPOINT, "body": body},
                ensure_ascii=False,
            )
            for custom_id, body in requests
        ]
        file_id = await self.upload_jsonl(("\n".join(lines) + "\n").encode())
        try:
            created = await self.create_batch(file_id)
            return SubmittedBatch(provider_batch_id=str(created["id"]), input_file_id=file_id)
        except KeyError:
            raise ProviderUnavailableError("batch API: created batch without an id") from None

    async def state(self, provider_batch_id: str) -> BatchState:
        """An expired or cancelled batch may still have an output file: its finished items are
        paid for, so they are read like a completed batch's instead of generated again."""
        data = await self.get_batch(provider_batch_id)
        status = str(data.get("status"))
        output_id, error_id = data.get("output_file_id"), data.get("error_file_id")
        if status not in ("completed", "expired", "cancelled") or (status != "completed" and not output_id):
            return BatchState(status=status)
        results: list[Mapping[str, Any]] = []
        if output_id:
            content = await self.file_content(str(output_id))
            for line in content.decode("utf-8", "replace").splitlines():
                if not line.strip():
                    continue
                try:
                    results.append(safejson.loads_object(line))
                except safejson.UnsafeJSON:
                    results.append({})  # counted as a failed item
        failed = 0
        if error_id:
            errors = await self.file_content(str(error_id))
            failed = sum(1 for line in errors.decode("utf-8", "replace").splitlines() if line.strip())
        return BatchState(
            status=status,
            results=results,
            failed_items=failed,
            output_file_id=str(output_id) if output_id else None,
            error_file_id=str(error_id) if error_id else None,
        )


OpenAIBatchClient = BatchClient


def batch_client_for(settings: Settings, session: aiohttp.ClientSession) -> BatchApi | None:
    """The Batch API client `CAMPAIGNQ_AI_BATCH_API` selects for the AI base URL, or None (off)."""
    api = batch_api_for(settings.ai_batch_api, settings.ai_base_url)
    if api == "openrouter":
        return OpenRouterBatchClient(
            session=session, base_url=settings.ai_base_url, api_key=settings.ai_key()
        )
    if api == "openai":
        return BatchClient(session=session, base_url=settings.ai_base_url, api_key=settings.ai_key())
    return None


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
        batches: BatchApi | None,
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
        if self.batches is None:  # CAMPAIGNQ_AI_BATCH_API off (or auto on an unknown host)
            return report
        await self.poll(report)
        await self.submit(report)
        return report

    @property
    def _api(self) -> BatchApi:
        if self.batches is None:
            raise ProviderUnavailableError("no Batch API configured (CAMPAIGNQ_AI_BATCH_API)")
        return self.batches

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
        groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
        try:
            configs = await self._configs({row["config_id"] for row in rows})
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
                groups.setdefault(batch_group_key(body), []).append((str(row["message_id"]), body))
            if not groups:
                raise ProviderUnavailableError("no request could be built")
        except (CampaignqError, KeyError) as exc:
            await self._execute("pregen_abandon", {"batch_id": batch_id, "error": str(exc)[:500]})
            logger.warning("batch of {} messages not submitted ({}); rows released", len(rows), exc)
            return
        # One model (and schema) per provider batch: the first group keeps the claimed batch,
        # each other group moves to a batch of its own before anything is sent.
        batch_ids = [batch_id]
        for _, requests in list(groups.items())[1:]:
            batch_ids.append(uuid.uuid4())
            await self._execute(
                "pregen_regroup",
                {
                    "batch_id": batch_id,
                    "new_batch_id": batch_ids[-1],
                    "message_ids": [message_id for message_id, _ in requests],
                },
            )
        for group_batch_id, ((model, _), requests) in zip(batch_ids, groups.items(), strict=True):
            await self._submit_group(group_batch_id, model, requests, report)

    async def _submit_group(
        self,
        batch_id: uuid.UUID,
        model: str,
        requests: list[tuple[str, dict[str, Any]]],
        report: TickReport,
    ) -> None:
        try:
            created = await self._api.submit(model=model, requests=requests)
        except CampaignqError as exc:
            await self._execute("pregen_abandon", {"batch_id": batch_id, "error": str(exc)[:500]})
            logger.warning("batch of {} messages not submitted ({}); rows released", len(requests), exc)
            return
        await self._execute(
            "pregen_submitted",
            {
                "batch_id": batch_id,
                "provider_batch_id": created.provider_batch_id,
                "input_file_id": created.input_file_id,
                "requests": len(requests),
            },
        )
        report.submitted_batches += 1
        report.submitted_requests += len(requests)
        logger.info(
            "submitted batch {} ({} requests, {}) as {}",
            batch_id,
            len(requests),
            model,
            created.provider_batch_id,
        )

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
            except BatchNotFoundError as exc:
                # The provider does not know it (another Batch API since, or purged): polling
                # again cannot help; its rows go synchronous at due time.
                await self._finished(batch["id"], "failed", BatchState("failed"), 0, 0, 0, str(exc)[:500])
                report.finished_batches["failed"] = report.finished_batches.get("failed", 0) + 1
                logger.warning(
                    "batch {} unknown to the provider: {}; generated at due time", batch["id"], exc
                )
            except CampaignqError as exc:
                logger.warning("batch {} not polled this tick: {}", batch["id"], exc)

    async def _poll_one(self, batch_id: uuid.UUID, provider_batch_id: str, report: TickReport) -> None:
        state = await self._api.state(provider_batch_id)
        status = state.status
        if status in _OPEN_STATUSES:
            return
        if state.results is None:
            if status in _ENDED_WITHOUT_OUTPUT:
                await self._finished(
                    batch_id, _ENDED_WITHOUT_OUTPUT[status], state, 0, 0, 0, f"batch {status}"
                )
                report.finished_batches[status] = report.finished_batches.get(status, 0) + 1
                logger.warning("batch {} ended {}: its messages are generated at due time", batch_id, status)
                return
            if status != "completed":
                return  # a status we do not know: ask again next tick
        stored = failed = discarded = 0
        configs_by_message = await self._configs_by_message(batch_id)
        for item in state.results or []:
            outcome = await self._store_line(batch_id, item, configs_by_message)
            stored += outcome == "stored"
            failed += outcome == "failed"
            discarded += outcome == "discarded"
        failed += state.failed_items
        ended = status if status in ("completed", "expired", "cancelled") else "completed"
        await self._finished(batch_id, ended, state, stored, failed, discarded, None)
        report.finished_batches[ended] = report.finished_batches.get(ended, 0) + 1
        report.stored += stored
        report.failed_items += failed
        report.discarded += discarded
        logger.info(
            "batch {} {}: {} stored, {} failed (sync at due time), {} discarded (already generated)",
            batch_id,
            ended,
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
            body = json_body(response.get("body"))
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
        state: BatchState,
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
                "output_file_id": state.output_file_id,
                "error_file_id": state.error_file_id,
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


@functools.cache
def _warn_no_batch_api(base_url: str, setting: str) -> None:
    """Once per process: `produce --pregenerate` runs a tick every minute."""
    logger.warning(
        "no Batch API for {} (CAMPAIGNQ_AI_BATCH_API={}): nothing is pre-generated; set it to "
        "openrouter or openai if this provider has one",
        base_url,
        setting,
    )


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
            batches = batch_client_for(settings, session)
            if batches is None:
                _warn_no_batch_api(settings.ai_base_url, settings.ai_batch_api)
            pregenerator = Pregenerator(
                db=db, ai=AIClient.from_settings(settings, session), batches=batches, settings=settings
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

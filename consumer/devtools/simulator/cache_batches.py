"""The simulator's model of issue 14's cost levers: the provider prompt cache and the batch API.

Issue 21: the cache follows `consumer.core.llmcost.cache_rule` (families that cache only
behind a ``cache_control`` breakpoint get no cache without one), and the batch API speaks
either OpenAI's files + batches or OpenRouter's ``/api/beta/batches`` (``Faults.batch_api``),
as OpenRouter documents it (OpenRouterTeam/docs c26125a, batch-quickstart.mdx).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from ...core.llmcost import cache_rule
from .answers import _ai_error, _json_body
from .faults import _Script, _take_script

if TYPE_CHECKING:
    from .server import Simulator


CACHE_MIN_PREFIX_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
SIM_PROVIDERS = 3


class PromptCacheModel:
    """OpenAI-style automatic prefix caching behind an OpenRouter-style router.

    The cacheable prefix is the system message (the campaign's shared text), counted from
    1,024 tokens in blocks of 128. Models whose `cache_rule` is ``explicit`` (Anthropic,
    Gemini before 2.5, Alibaba's explicit models) cache only when the prefix carries a
    ``cache_control`` breakpoint (or the body a top-level one), as OpenRouter documents.
    Each (model, provider) keeps its own cache; a request with a routing key
    (``session_id`` / ``prompt_cache_key``) always reaches the same provider for that key,
    one without is routed at random among `SIM_PROVIDERS`, so its hit rate is what routing
    luck gives. First sight of a prefix on a provider is a cache write.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[tuple[str, int, int]] = set()
        self.hits = 0
        self.misses = 0
        self.uncacheable = 0
        """Requests of an explicit-cache family sent without a breakpoint."""

    def lookup(self, body: Mapping[str, Any]) -> tuple[int, int]:
        """(cached_tokens, cache_write_tokens) for this request; records the prefix as seen."""
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, Mapping) or first.get("role") != "system":
            return 0, 0
        text, marked = _content_text(first.get("content"))
        if cache_rule(str(body.get("model"))) == "explicit" and not (marked or body.get("cache_control")):
            self.uncacheable += 1
            return 0, 0
        prefix_tokens = math.ceil(len(text) / 4)
        cacheable = (prefix_tokens // CACHE_BLOCK_TOKENS) * CACHE_BLOCK_TOKENS
        if prefix_tokens < CACHE_MIN_PREFIX_TOKENS or cacheable == 0:
            return 0, 0
        key = body.get("session_id") or body.get("prompt_cache_key")
        provider = (
            int.from_bytes(str(key).encode()[-4:].rjust(4, b"\0"), "big") % SIM_PROVIDERS
            if key
            else self._rng.randrange(SIM_PROVIDERS)
        )
        entry = (str(body.get("model")), provider, hash(text))
        if entry in self._seen:
            self.hits += 1
            return cacheable, 0
        self._seen.add(entry)
        self.misses += 1
        return 0, cacheable

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "uncacheable": self.uncacheable}


def _content_text(content: object) -> tuple[str, bool]:
    """A message's text (a string or content parts) and whether a part carries ``cache_control``."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return str(content or ""), False
    texts = [str(part.get("text", "")) for part in content if isinstance(part, Mapping)]
    marked = any(isinstance(part, Mapping) and part.get("cache_control") for part in content)
    return "".join(texts), marked


@dataclass
class _Batch:
    id: str
    input_file_id: str | None
    created_monotonic_s: float
    fate: str  # ok, failed, expired, expired_partial, item_errors, late
    requests: list[dict[str, Any]] = field(default_factory=list)
    """``{"custom_id", "body"}`` per request (OpenAI: parsed from the input file)."""
    model: str | None = None
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: list[dict[str, Any]] | None = None
    """OpenRouter: the result items, inline once completed."""
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class BatchStore:
    """The OpenAI batch shape: files in, batch object, output and error files out.

    A batch completes at the first poll `batch_latency_s` after creation (see `latency_s`);
    ``late`` batches never complete until `release_late` is called (or the test moves on),
    ``expired`` ones end expired with no output, ``failed`` ones fail validation, and
    ``item_errors`` ones answer every other request with an error line,
    ``expired_partial`` ones expire with the first half of their items done.

    With ``Faults.batch_api == "openrouter"`` it speaks OpenRouter's API instead: one JSON
    submission (``endpoint`` and ``model`` before ``requests``, else 400; one model; a body's
    own ``model`` must match), 202 ``validating``, results inline once completed, and the
    OpenAI routes answer 404 — as the real one does.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    scripts: list[_Script] = field(default_factory=list)
    latency_s: float = 0.0
    sequence: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def stats(self) -> dict[str, Any]:
        return {"batches": len(self.batches), "by_event": dict(self.counts)}

    def release_late(self) -> None:
        for batch in self.batches.values():
            if batch.fate == "late":
                batch.fate = "ok"

    def _next_id(self, prefix: str) -> str:
        self.sequence += 1
        return f"{prefix}-sim-{self.sequence}"

    async def upload(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openai")) is not None:
            return fault
        reader = await request.multipart()
        purpose, content, filename = "", b"", "input.jsonl"
        async for part in reader:
            if not isinstance(part, BodyPartReader):  # nested multipart: not for us
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                content = bytes(await part.read())
        if purpose != "batch" or not content:
            return _ai_error(400, "multipart needs purpose=batch and a non-empty file")
        file_id = self._next_id("file")
        self.files[file_id] = content
        self.counts["file_uploaded"] += 1
        return web.json_response(
            {"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch", "filename": filename}
        )

    async def content(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openai")) is not None:
            return fault
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return _ai_error(404, f"No such File object: {file_id}")
        return web.Response(body=self.files[file_id], content_type="application/jsonl")

    async def create(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openai")) is not None:
            return fault
        body = await _json_body(request)
        if (
            body is None
            or body.get("input_file_id") not in self.files
            or body.get("endpoint") != "/v1/chat/completions"
            or body.get("completion_window") != "24h"
        ):
            return _ai_error(400, "need input_file_id (uploaded), endpoint /v1/chat/completions, window 24h")
        lines = [json.loads(line) for line in self.files[body["input_file_id"]].splitlines() if line.strip()]
        for index, line in enumerate(lines):
            if (invalid := sim._contract_violation(line.get("body") or {})) is not None:
                return _ai_error(
                    400, f"line {index + 1}: {json.loads(invalid.text or '{}')['error']['message']}"
                )
        batch = self._new_batch(str(body["input_file_id"]), lines, model=None)
        return web.json_response(self._view(batch))

    def _new_batch(
        self, input_file_id: str | None, requests: list[dict[str, Any]], *, model: str | None
    ) -> _Batch:
        script = _take_script(self.scripts, lambda s: s.kind not in ("500", "429"))
        batch = _Batch(
            id=self._next_id("batch"),
            input_file_id=input_file_id,
            created_monotonic_s=time.monotonic(),
            fate=script.kind if script else "ok",
            requests=requests,
            model=model,
            total=len(requests),
        )
        self.batches[batch.id] = batch
        self.counts["batch_created"] += 1
        return batch

    async def get(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openai")) is not None:
            return fault
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None or batch.input_file_id is None:
            return _ai_error(404, "No such batch")
        self._advance(batch, sim)
        return web.json_response(self._view(batch))

    # --- OpenRouter's shape -------------------------------------------------------------------

    async def openrouter_create(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openrouter")) is not None:
            return fault
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _ai_error(400, "Invalid JSON body")
        if not isinstance(body, dict):
            return _ai_error(400, "Body must be a JSON object")
        keys = list(body)
        if "requests" in keys and any(
            name in keys and keys.index(name) > keys.index("requests") for name in ("endpoint", "model")
        ):
            self.counts["batch_rejected_key_order"] += 1
            return _ai_error(400, "'endpoint' and 'model' must appear before 'requests' in the request body")
        problem = _openrouter_batch_problem(body)
        if problem is not None:
            self.counts["batch_rejected"] += 1
            return _ai_error(400, problem)
        requests = [{"custom_id": r["custom_id"], "body": r["body"]} for r in body["requests"]]
        for index, item in enumerate(requests):  # each body is a chat request (model inherited)
            if (invalid := sim._contract_violation({"model": body["model"], **item["body"]})) is not None:
                self.counts["batch_rejected"] += 1
                return _ai_error(
                    400, f"requests[{index}]: {json.loads(invalid.text or '{}')['error']['message']}"
                )
        batch = self._new_batch(None, requests, model=str(body["model"]))
        return web.json_response(self._openrouter_view(batch), status=202)

    async def openrouter_get(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request, "openrouter")) is not None:
            return fault
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None or batch.input_file_id is not None:
            return _ai_error(404, "Batch not found")
        self._advance(batch, sim)
        return web.json_response(self._openrouter_view(batch))

    @staticmethod
    def _openrouter_view(batch: _Batch) -> dict[str, Any]:
        done = batch.status in ("completed", "failed", "expired", "cancelled")
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "model": batch.model,
            "completion_window": "24h",
            "status": batch.status,
            "created_at": int(time.time()),
            "finalized_at": int(time.time()) if done else None,
            "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
            "usage": None,
            "results": batch.results if batch.status == "completed" else None,
            "error": {"message": "Batch validation failed"} if batch.status == "failed" else None,
        }

    def _advance(self, batch: _Batch, sim: Simulator) -> None:
        if batch.status not in ("validating", "in_progress"):
            return
        if batch.fate == "failed":
            batch.status = "failed"
            self.counts["batch_failed"] += 1
            return
        if batch.fate == "late" or time.monotonic() - batch.created_monotonic_s < self.latency_s:
            batch.status = "in_progress"
            return
        if batch.fate == "expired":
            batch.status = "expired"
            self.counts["batch_expired"] += 1
            return
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, request_line in enumerate(batch.requests):
            custom_id = request_line.get("custom_id")
            if batch.fate == "expired_partial" and index >= (len(batch.requests) + 1) // 2:
                continue  # not reached before the window closed
            if batch.fate == "item_errors" and index % 2 == 1:
                errors.append(
                    {
                        "id": f"req-{index}",
                        "custom_id": custom_id,
                        "response": None,
                        "error": {"code": "server_error", "message": "Simulated item failure"},
                    }
                )
                continue
            answer = sim.batch_answer(request_line["body"], model=batch.model)
            outputs.append(
                {
                    "id": f"req-{index}",
                    "custom_id": custom_id,
                    "response": {"status_code": 200, "request_id": f"r-{index}", "body": answer},
                    "error": None,
                }
            )
        batch.completed, batch.failed = len(outputs), len(errors)
        batch.status = "expired" if batch.fate == "expired_partial" else "completed"
        self.counts[f"batch_{batch.status}"] += 1
        if batch.input_file_id is None:  # OpenRouter: inline, errors among the results
            batch.results = outputs + errors
            return
        batch.output_file_id = self._next_id("file")
        self.files[batch.output_file_id] = _jsonl(outputs)
        if errors:
            batch.error_file_id = self._next_id("file")
            self.files[batch.error_file_id] = _jsonl(errors)

    @staticmethod
    def _view(batch: _Batch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        }


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n").encode()


def _openrouter_batch_problem(body: Mapping[str, Any]) -> str | None:
    """What OpenRouter's validation would refuse in a submission, or None."""
    if body.get("endpoint") != "/v1/chat/completions":
        return "endpoint must be one of /v1/chat/completions, /v1/responses, /v1/messages, /v1/embeddings"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model is required"
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        return "requests must be a non-empty array"
    seen: set[str] = set()
    for index, item in enumerate(requests):
        if not isinstance(item, Mapping) or not isinstance(item.get("body"), Mapping):
            return f"requests[{index}] must be an object with custom_id and body"
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or custom_id in seen:
            return f"requests[{index}].custom_id must be a unique string"
        seen.add(custom_id)
        own_model = item["body"].get("model")
        if own_model is not None and own_model != model:
            return f"requests[{index}].body.model does not match the batch model"
    return None

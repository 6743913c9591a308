"""The simulator's model of issue 14's cost levers: the provider prompt cache and the batch API."""

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
    1,024 tokens in blocks of 128. Each (model, provider) keeps its own cache; a request with
    a routing key (``session_id`` / ``prompt_cache_key``) always reaches the same provider
    for that key, one without is routed at random among `SIM_PROVIDERS`, so its hit rate is
    what routing luck gives. First sight of a prefix on a provider is a cache write.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[tuple[str, int, int]] = set()
        self.hits = 0
        self.misses = 0

    def lookup(self, body: Mapping[str, Any]) -> tuple[int, int]:
        """(cached_tokens, cache_write_tokens) for this request; records the prefix as seen."""
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, Mapping) or first.get("role") != "system":
            return 0, 0
        prefix_tokens = math.ceil(len(str(first.get("content", ""))) / 4)
        cacheable = (prefix_tokens // CACHE_BLOCK_TOKENS) * CACHE_BLOCK_TOKENS
        if prefix_tokens < CACHE_MIN_PREFIX_TOKENS or cacheable == 0:
            return 0, 0
        key = body.get("session_id") or body.get("prompt_cache_key")
        provider = (
            int.from_bytes(str(key).encode()[-4:].rjust(4, b"\0"), "big") % SIM_PROVIDERS
            if key
            else self._rng.randrange(SIM_PROVIDERS)
        )
        entry = (str(body.get("model")), provider, hash(first.get("content")))
        if entry in self._seen:
            self.hits += 1
            return cacheable, 0
        self._seen.add(entry)
        self.misses += 1
        return 0, cacheable

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


@dataclass
class _Batch:
    id: str
    input_file_id: str
    created_monotonic_s: float
    fate: str  # ok, failed, expired, item_errors, late
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class BatchStore:
    """The OpenAI batch shape: files in, batch object, output and error files out.

    A batch completes at the first poll `batch_latency_s` after creation (see `latency_s`);
    ``late`` batches never complete until `release_late` is called (or the test moves on),
    ``expired`` ones end expired with no output, ``failed`` ones fail validation, and
    ``item_errors`` ones answer every other request with an error line.
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
        if (fault := sim._batch_api_fault(request)) is not None:
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
        if (fault := sim._batch_api_fault(request)) is not None:
            return fault
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return _ai_error(404, f"No such File object: {file_id}")
        return web.Response(body=self.files[file_id], content_type="application/jsonl")

    async def create(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request)) is not None:
            return fault
        body = await _json_body(request)
        if (
            body is None
            or body.get("input_file_id") not in self.files
            or body.get("endpoint") != "/v1/chat/completions"
            or body.get("completion_window") != "24h"
        ):
            return _ai_error(400, "need input_file_id (uploaded), endpoint /v1/chat/completions, window 24h")
        script = _take_script(self.scripts, lambda s: s.kind not in ("500", "429"))
        batch = _Batch(
            id=self._next_id("batch"),
            input_file_id=str(body["input_file_id"]),
            created_monotonic_s=time.monotonic(),
            fate=script.kind if script else "ok",
        )
        self.batches[batch.id] = batch
        self.counts["batch_created"] += 1
        return web.json_response(self._view(batch))

    async def get(self, request: web.Request, sim: Simulator) -> web.StreamResponse:
        if (fault := sim._batch_api_fault(request)) is not None:
            return fault
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _ai_error(404, "No such batch")
        self._advance(batch, sim)
        return web.json_response(self._view(batch))

    def _advance(self, batch: _Batch, sim: Simulator) -> None:
        if batch.status not in ("validating", "in_progress"):
            return
        if batch.fate == "failed":
            batch.status = "failed"
            self.counts["batch_failed"] += 1
            return
        lines = [line for line in self.files[batch.input_file_id].splitlines() if line.strip()]
        batch.total = len(lines)
        if batch.fate == "late" or time.monotonic() - batch.created_monotonic_s < self.latency_s:
            batch.status = "in_progress"
            return
        if batch.fate == "expired":
            batch.status = "expired"
            self.counts["batch_expired"] += 1
            return
        outputs: list[str] = []
        errors: list[str] = []
        for index, line in enumerate(lines):
            request_line = json.loads(line)
            custom_id = request_line.get("custom_id")
            if batch.fate == "item_errors" and index % 2 == 1:
                errors.append(
                    json.dumps(
                        {
                            "id": f"req-{index}",
                            "custom_id": custom_id,
                            "response": None,
                            "error": {"code": "server_error", "message": "Simulated item failure"},
                        }
                    )
                )
                continue
            answer = sim.batch_answer(request_line["body"])
            outputs.append(
                json.dumps(
                    {
                        "id": f"req-{index}",
                        "custom_id": custom_id,
                        "response": {"status_code": 200, "request_id": f"r-{index}", "body": answer},
                        "error": None,
                    },
                    ensure_ascii=False,
                )
            )
        batch.completed, batch.failed = len(outputs), len(errors)
        batch.output_file_id = self._next_id("file")
        self.files[batch.output_file_id] = ("\n".join(outputs) + "\n").encode()
        if errors:
            batch.error_file_id = self._next_id("file")
            self.files[batch.error_file_id] = ("\n".join(errors) + "\n").encode()
        batch.status = "completed"
        self.counts["batch_completed"] += 1

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

"""Both providers in one loopback aiohttp server: an OpenAI-compatible LLM and an Evolution gateway.

The tests, the demo and the benchmarks all talk to this instead of the real services, so
it has to be (a) faithful where our clients make decisions — status codes, Retry-After
forms, 200s that are failures, dead sockets behind an "open" instance — (b) scriptable
for deterministic tests (`fail_next_ai`, `fail_next_send`, `fail_next_state`), (c) random
but reproducible for chaos runs (`Faults` with a `seed`), and (d) fast: latency is an
`asyncio.sleep`, so one process serves hundreds of requests per second.

It records every send it accepted, in order, so a test can prove "no duplicates" by
counting (`duplicate_sends()`) rather than by trusting the code under test.

Routes:
    POST {base}/v1/chat/completions                 the LLM (generate; split or one-call
                                                     "structured" parts with a response_format;
                                                     a model named *no-structured-output*
                                                     refuses schemas; prompt-cache model)
    POST {base}/v1/files, GET {base}/v1/files/{id}/content   batch input / output files
    POST {base}/v1/batches, GET {base}/v1/batches/{id}       the OpenAI batch shape
    POST {base}/[api/]beta/batches, GET …/beta/batches/{id}   OpenRouter's batch shape (issue 21;
                                                     which one answers: `Faults.batch_api`)
    GET  {base}/instance/connectionState/{instance}  the gateway's instance state
    POST {base}/message/sendText/{instance}          the gateway's send
    POST {base}/chat/findMessages/{instance}         the chat's messages we sent, newest
                                                     first (how uncertain sends reconcile)
    GET|POST {base}/_sim/faults     read / patch the random faults (JSON object)
    POST {base}/_sim/fail-next/{ai|send|state|find|batch}  script one-shot faults (kwargs as JSON)
    GET  {base}/_sim/sends          accepted sends (``?number=`` filters)
    GET  {base}/_sim/stats          counts by outcome, accepted sends, duplicates
    POST {base}/_sim/reset          forget records and scripts (``{"keep_faults": true}``)
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, get_args

from aiohttp import web
from pydantic import ValidationError

from .answers import _ai_error, _json_body
from .cache_batches import BatchStore, PromptCacheModel
from .contract import validate
from .evolution_contract import SENDTEXT_SCHEMA, lid_for, schema_errors, stored_jid
from .faults import (
    _AI_KINDS,
    _FIND_KINDS,
    _SEND_KINDS,
    _STATE_KINDS,
    AIFaultKind,
    BatchApiKind,
    BatchFaultKind,
    Faults,
    FindFaultKind,
    RetryAfterForm,
    SendFaultKind,
    StateFaultKind,
    _check_kind,
    _draw,
    _Script,
    _take_script,
)
from .texts import (
    AIRequestKind,
    _last_user_text,
    _lead_name,
    _max_items,
    _message_texts,
    _paragraph_parts,
    _personalised_message,
    _request_kind,
    _split_parts,
)

_FIND_PAGE_SIZE = 50
_UNKNOWN_INSTANCE_PREFIX = "unknown-"
_AI_RECORDS_KEPT = 10_000  # bounded: a benchmark makes hundreds of thousands of requests
_PROMPT_PRICE_PER_TOKEN_USD = 0.15e-6
CACHED_PRICE_FACTOR = 0.5
"""Cached prompt tokens cost this share of the prompt price (gpt-4o-mini: $0.075 vs $0.15 / M)."""
BATCH_PRICE_FACTOR = 0.5
"""Batch requests cost this share of the synchronous price (OpenAI / OpenRouter batch)."""
NO_STRUCTURED_OUTPUT_MARK = "no-structured-output"
"""A model whose name contains this refuses ``response_format: json_schema`` (tests the fallback)."""
_COMPLETION_PRICE_PER_TOKEN_USD = 0.60e-6


@dataclass(frozen=True)
class SentMessage:
    sequence: int
    instance: str
    number: str
    text: str
    delay_ms: int
    message_id: str
    at: float  # epoch seconds, for people reading /_sim/sends
    monotonic_s: float  # time.monotonic(), comparable with the clients' default clock


@dataclass(frozen=True)
class AIRequest:
    sequence: int
    kind: AIRequestKind
    model: str
    max_tokens: int | None
    outcome: str
    monotonic_s: float
    body: dict[str, Any]


@dataclass
class _Counts:
    ai: Counter[str] = field(default_factory=Counter)
    state: Counter[str] = field(default_factory=Counter)
    send: Counter[str] = field(default_factory=Counter)
    find: Counter[str] = field(default_factory=Counter)
    send_by_instance: Counter[tuple[str, str]] = field(default_factory=Counter)


class Simulator:
    """Both fake providers; ``async with Simulator() as sim:``, then use `ai_base_url` / `whatsapp_base_url`.

    ``ai_api_key`` / ``whatsapp_api_key``: when set, only that key is accepted; otherwise
    any non-empty key is. A missing or wrong key is a 401, as from the real services.

    ``request_contract`` (class-wide; the test suite sets it from tests/contract/openrouter/):
    the JSON Schema every chat-completions body must satisfy; a body that does not gets
    OpenRouter's 400 and is listed in ``contract_violations``.
    """

    request_contract: ClassVar[Mapping[str, Any] | None] = None

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        ai_api_key: str | None = None,
        whatsapp_api_key: str | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._initial_faults = faults or Faults()
        self._faults = self._initial_faults
        self._ai_api_key = ai_api_key
        self._whatsapp_api_key = whatsapp_api_key
        self._rng = random.Random(self._faults.seed)  # noqa: S311 - fault injection, not secrets
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._reset_records()

    def _reset_records(self) -> None:
        self._sends: list[SentMessage] = []
        self._send_counts: Counter[tuple[str, str]] = Counter()
        self._chats: dict[tuple[str, str], list[SentMessage]] = {}  # (instance, stored jid)
        self._invalid_sends: list[Any] = []
        self._duplicates: list[SentMessage] = []
        self._ai_requests: deque[AIRequest] = deque(maxlen=_AI_RECORDS_KEPT)
        self._ai_sequence = 0
        self._counts = _Counts()
        self._ai_scripts: list[_Script] = []
        self._send_scripts: list[_Script] = []
        self._state_scripts: list[_Script] = []
        self._find_scripts: list[_Script] = []
        self._prompt_cache = PromptCacheModel(self._rng)
        self._batches = BatchStore()
        self._recent_accepts: dict[str, deque[float]] = {}
        self.contract_violations: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # Batch input files are megabytes (OpenAI accepts up to 200 MB); the default cap is 1 MB.
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/instance/connectionState/{instance}", self._connection_state)
        app.router.add_post("/message/sendText/{instance}", self._send_text)
        app.router.add_post("/chat/findMessages/{instance}", self._find_messages)
        app.router.add_post("/v1/files", self._files_upload)
        app.router.add_get("/v1/files/{file_id}/content", self._files_content)
        app.router.add_post("/v1/batches", self._batches_create)
        app.router.add_get("/v1/batches/{batch_id}", self._batches_get)
        for prefix in ("/beta", "/api/beta"):  # sibling of {base}/v1 and of OpenRouter's /api/v1
            app.router.add_post(f"{prefix}/batches", self._openrouter_batches_create)
            app.router.add_get(f"{prefix}/batches/{{batch_id}}", self._openrouter_batches_get)
        app.router.add_get("/_sim/faults", self._get_faults)
        app.router.add_post("/_sim/faults", self._patch_faults)
        app.router.add_post("/_sim/fail-next/{target}", self._fail_next)
        app.router.add_get("/_sim/sends", self._get_sends)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_get("/_sim/ai-requests", self._get_ai_requests)
        app.router.add_post("/_sim/reset", self._post_reset)
        # handler_cancellation: a client that timed out and hung up cancels its hanging
        # handler, so "hang" faults do not pile up sleeping tasks. A short shutdown
        # timeout keeps `stop()` quick while a hang is still in progress.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("simulator not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def ai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def whatsapp_base_url(self) -> str:
        return self.base_url

    # --- faults -----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        if faults.seed != self._faults.seed:
            self._rng.seed(faults.seed)
        self._faults = faults

    def set_faults(self, **changes: Any) -> Faults:
        """Replace some fields of the current faults (validated); returns the new faults."""
        self.faults = Faults.model_validate({**self._faults.model_dump(), **changes})
        return self._faults

    def fail_next_ai(
        self,
        kind: AIFaultKind,
        *,
        times: int = 1,
        retry_after_s: float | None = None,
        retry_after_form: RetryAfterForm = "seconds",
        only: AIRequestKind | None = None,
    ) -> None:
        """The next `times` AI requests (of kind `only`, if given) fail as `kind`."""
        _check_kind(kind, _AI_KINDS)
        self._ai_scripts.append(
            _Script(kind, times, retry_after_s=retry_after_s, retry_after_form=retry_after_form, only=only)
        )

    def fail_next_send(
        self,
        kind: SendFaultKind = "500",
        *,
        times: int = 1,
        instance: str | None = None,
        number: str | None = None,
        text_contains: str | None = None,
        retry_after_s: float | None = None,
        graph_code: int | None = None,
    ) -> None:
        """The next `times` sends matching every filter given fail as `kind`
        (`graph_code`: the Graph error code of a `cloud_graph_error_201`)."""
        _check_kind(kind, _SEND_KINDS)
        self._send_scripts.append(
            _Script(
                kind,
                times,
                retry_after_s=retry_after_s,
                instance=instance,
                number=number,
                text_contains=text_contains,
                graph_code=graph_code,
            )
        )

    def fail_next_state(
        self, kind: StateFaultKind = "500", *, times: int = 1, instance: str | None = None
    ) -> None:
        """The next `times` connection-state requests (for `instance`, if given) fail as `kind`."""
        _check_kind(kind, _STATE_KINDS)
        self._state_scripts.append(_Script(kind, times, instance=instance))

    def fail_next_find(
        self, kind: FindFaultKind = "500", *, times: int = 1, instance: str | None = None
    ) -> None:
        """The next `times` findMessages requests (for `instance`, if given) fail as `kind`."""
        _check_kind(kind, _FIND_KINDS)
        self._find_scripts.append(_Script(kind, times, instance=instance))

    def reset(self, *, keep_faults: bool = False) -> None:
        """Forget sends, requests, counts and scripted faults; faults back to the initial ones."""
        self._reset_records()
        if not keep_faults:
            self.faults = self._initial_faults
        self._rng.seed(self._faults.seed)

    # --- what happened ----------------------------------------------------------------------

    @property
    def sends(self) -> list[SentMessage]:
        """Every send the gateway accepted, in order."""
        return list(self._sends)

    def sends_to(self, number: str) -> list[SentMessage]:
        wanted = _digits(number)
        return [sent for sent in self._sends if _digits(sent.number) == wanted]

    def duplicate_sends(self) -> list[SentMessage]:
        """Each accepted send that repeats an earlier one (same number and text): len() = extras."""
        return list(self._duplicates)

    @property
    def ai_requests(self) -> list[AIRequest]:
        """The latest AI requests received (bounded), in order, with what the simulator did."""
        return list(self._ai_requests)

    @property
    def ai_request_count(self) -> int:
        return self._ai_sequence

    def state_request_count(self, instance: str | None = None) -> int:
        counts = self._counts.state
        return counts[instance] if instance is not None else sum(counts.values())

    def stats(self) -> dict[str, Any]:
        return {
            "ai": {"requests": self._ai_sequence, "by_outcome": dict(self._counts.ai)},
            "prompt_cache": self._prompt_cache.stats(),
            "batch": self._batches.stats(),
            "state": {"requests": self.state_request_count(), "by_instance": dict(self._counts.state)},
            "send": {
                "requests": sum(self._counts.send.values()),
                "accepted": len(self._sends),
                "duplicates": len(self._duplicates),
                "by_outcome": dict(self._counts.send),
            },
            "find": {"requests": sum(self._counts.find.values()), "by_outcome": dict(self._counts.find)},
            "send_by_instance": {
                f"{i}:{o}": n for (i, o), n in sorted(self._counts.send_by_instance.items())
            },
        }

    def send_outcomes(self, instance: str) -> dict[str, int]:
        """Send answers given to one instance, by outcome (accepted, rate_limited_130429, …)."""
        return {o: n for (i, o), n in self._counts.send_by_instance.items() if i == instance}

    # --- the LLM ------------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        if not _bearer_ok(request.headers.get("Authorization"), self._ai_api_key):
            self._counts.ai["401_auth"] += 1
            return _ai_error(401, "No auth credentials found")
        body = await _json_body(request)
        messages = body.get("messages") if body else None
        if body is None or not isinstance(messages, list) or not isinstance(body.get("model"), str):
            self._counts.ai["400_malformed"] += 1
            return _ai_error(400, "body must be a JSON object with 'model' and 'messages'")
        kind = _request_kind(body)
        if (refusal := self._structured_refusal(body)) is not None:
            self._record_ai(kind, body, "refused_schema")
            return refusal
        if (invalid := self._contract_violation(body)) is not None:
            self._record_ai(kind, body, "400_contract")
            return invalid
        if self._faults.moderation_marker and any(
            self._faults.moderation_marker in text for text in _message_texts(body)
        ):
            self._record_ai(kind, body, "moderation_403")
            return _moderation_403(str(body.get("model")))
        script = _take_script(self._ai_scripts, lambda s: s.only in (None, kind))
        outcome = script.kind if script else self._random_ai_fault(kind)
        self._record_ai(kind, body, outcome)
        retry_after_s = script.retry_after_s if script and script.retry_after_s is not None else None
        form: RetryAfterForm = script.retry_after_form if script else "seconds"
        return await self._ai_answer(outcome, kind, body, retry_after_s, form)

    def _random_ai_fault(self, kind: AIRequestKind) -> str:
        faults = self._faults
        chances = [
            ("429", faults.ai_rate_limited_p),
            (self._rng.choice(("500", "502", "503")), faults.ai_server_error_p),
            ("hang", faults.ai_hang_p),
            ("error_body", faults.ai_error_body_p),
            ("empty", faults.ai_empty_p),
            ("bad_json", faults.split_bad_json_p if kind != "generate" else 0.0),
        ]
        return _draw(self._rng, chances)

    def _record_ai(self, kind: AIRequestKind, body: dict[str, Any], outcome: str) -> None:
        self._ai_sequence += 1
        self._counts.ai[outcome] += 1
        max_tokens = body.get("max_tokens")
        self._ai_requests.append(
            AIRequest(
                sequence=self._ai_sequence,
                kind=kind,
                model=str(body.get("model")),
                max_tokens=max_tokens if isinstance(max_tokens, int) else None,
                outcome=outcome,
                monotonic_s=time.monotonic(),
                body=body,
            )
        )

    async def _ai_answer(
        self,
        outcome: str,
        kind: AIRequestKind,
        body: dict[str, Any],
        retry_after_s: float | None,
        form: RetryAfterForm,
    ) -> web.StreamResponse:
        faults = self._faults
        if outcome == "429":
            wait_s = faults.ai_retry_after_s if retry_after_s is None else retry_after_s
            return _ai_error(429, "Rate limit exceeded", headers=_retry_after_headers(wait_s, form))
        if outcome == "402_in_flight":
            wait_s = faults.ai_retry_after_s if retry_after_s is None else retry_after_s
            return _ai_error(
                402,
                "Too many requests in flight for your budget",
                metadata={"limit_source": "openrouter_in_flight_budget"},
                headers=_retry_after_headers(wait_s, form),
            )
        if outcome == "402":
            return _ai_error(402, "Insufficient credits")
        if outcome == "moderation_403":
            return _moderation_403(str(body.get("model")))
        if outcome == "guardrail_403":
            return _ai_error(
                403,
                "Request blocked: prompt injection patterns detected",
                metadata={"patterns": ["ignore all previous instructions"]},
            )
        if outcome.isdigit() and int(outcome) < 500:
            return _ai_error(int(outcome), f"Simulated provider error {outcome}")
        await asyncio.sleep(self._ai_latency_s())
        if outcome == "hang":
            await asyncio.sleep(faults.hang_s)
        elif outcome.isdigit():
            headers = _retry_after_headers(retry_after_s, form) if retry_after_s is not None else None
            return _ai_error(int(outcome), "Upstream provider unavailable", headers=headers)
        elif outcome == "not_json":
            return web.Response(
                status=200, text="<html><body>upstream hiccup</body></html>", content_type="text/html"
            )
        elif outcome == "error_body":
            return web.json_response(
                {"error": {"code": 502, "message": "Upstream provider returned an error", "metadata": {}}}
            )
        return web.json_response(self._completion(outcome, kind, body))

    def _ai_latency_s(self) -> float:
        jitter = self._faults.ai_latency_jitter_s
        return max(0.0, self._faults.ai_latency_s + (self._rng.uniform(-jitter, jitter) if jitter else 0.0))

    def _completion(self, outcome: str, kind: AIRequestKind, body: dict[str, Any]) -> dict[str, Any]:
        prompt_text = "\n".join(_message_texts(body))
        finish_reason = "stop"
        choice_error: dict[str, Any] | None = None
        if outcome == "empty":
            content, finish_reason = " \n ", "length"
        elif outcome == "bad_json":
            content = 'Sure! Here are the parts: parts: ["first part", "second'
        elif outcome == "choice_error":
            content, finish_reason = "", "error"
            choice_error = {"code": 502, "message": "Provider stream ended unexpectedly"}
        elif kind == "split":
            content = json.dumps({"parts": _split_parts(body)}, ensure_ascii=False)
        elif outcome == "too_many_parts":
            message = _personalised_message(self._rng, _lead_name(_last_user_text(body)))
            words = message.split(" ")
            chunks = [" ".join(words[i : i + 4]) for i in range(0, len(words), 4)]  # > maxItems bubbles
            content = json.dumps({"parts": chunks}, ensure_ascii=False)
        elif kind == "structured":
            message = _personalised_message(self._rng, _lead_name(_last_user_text(body)))
            content = json.dumps({"parts": _paragraph_parts(message, _max_items(body))}, ensure_ascii=False)
        else:
            content = _personalised_message(self._rng, _lead_name(_last_user_text(body) or prompt_text))
        if outcome == "finish_error":
            finish_reason = "error"
        if outcome == "no_choices":
            choices: list[dict[str, Any]] = []
        else:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
            if choice_error is not None:
                choice["error"] = choice_error
            choices = [choice]
        prompt_tokens = max(1, math.ceil(len(prompt_text) / 4))
        completion_tokens = math.ceil(len(content) / 4)
        cached_tokens, cache_write_tokens = self._prompt_cache.lookup(body)
        answer: dict[str, Any] = {
            "id": f"gen-sim-{self._ai_sequence}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": None,  # required by OpenRouter's ChatResult schema (issue 21)
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {
                    "cached_tokens": cached_tokens,
                    "cache_write_tokens": cache_write_tokens,
                },
                "cost": round(
                    (prompt_tokens - cached_tokens * (1 - CACHED_PRICE_FACTOR)) * _PROMPT_PRICE_PER_TOKEN_USD
                    + completion_tokens * _COMPLETION_PRICE_PER_TOKEN_USD,
                    10,
                ),
            },
        }
        if outcome == "no_usage":
            del answer["usage"]
        return answer

    # --- the WhatsApp gateway -------------------------------------------------------------------

    async def _connection_state(self, request: web.Request) -> web.StreamResponse:
        if not _key_ok(request.headers.get("apikey"), self._whatsapp_api_key):
            return _evolution_error(401, "Unauthorized")
        instance = request.match_info["instance"]
        self._counts.state[instance] += 1
        script = _take_script(self._state_scripts, lambda s: s.instance in (None, instance))
        fault = script.kind if script else None
        if instance.startswith(_UNKNOWN_INSTANCE_PREFIX) or fault == "404":
            return _evolution_error(404, [f'The "{instance}" instance does not exist'])
        if fault == "401":
            return _evolution_error(401, "Unauthorized")
        await asyncio.sleep(self._faults.state_latency_s)
        if fault == "hang":
            await asyncio.sleep(self._faults.hang_s)
        if fault == "500":
            return _evolution_error(500, "Internal Server Error")
        state = "close" if instance in self._faults.disconnected_instances else "open"
        if fault in ("close", "connecting"):
            state = fault
        return web.json_response({"instance": {"instanceName": instance, "state": state}})

    async def _send_text(self, request: web.Request) -> web.StreamResponse:
        if not _key_ok(request.headers.get("apikey"), self._whatsapp_api_key):
            self._counts.send["401_auth"] += 1
            return _evolution_error(401, "Unauthorized")
        instance = request.match_info["instance"]
        body = await _json_body(request)
        # Issue 21: Evolution's router validates the body against textMessageSchema first.
        violations = schema_errors(body, SENDTEXT_SCHEMA) if body is not None else ["Bad Request"]
        if violations:
            self._counts.send["400_schema"] += 1
            self._invalid_sends.append(body)
            return _evolution_error(400, violations)
        number = body.get("number") if body else None
        text = body.get("text") if body else None
        delay = body.get("delay", 0) if body else 0
        if not (
            isinstance(number, str) and number and isinstance(text, str) and text and isinstance(delay, int)
        ):
            self._counts.send["400_malformed"] += 1
            return _evolution_error(400, ["number and text must be non-empty strings, delay an integer"])
        return await self._answer_send(instance, number, text, delay)

    async def _answer_send(self, instance: str, number: str, text: str, delay: int) -> web.StreamResponse:
        outcome, script = self._send_outcome(instance, number, text)
        limited_for_s = 0.0
        if outcome == "accepted":
            outcome, limited_for_s = self._instance_limits(instance)
        self._counts.send[outcome] += 1
        self._counts.send_by_instance[(instance, outcome)] += 1
        refusal = _number_refusal(outcome, limited_for_s)
        if refusal is not None:
            return refusal
        if outcome == "404":
            return _evolution_error(404, [f'The "{instance}" instance does not exist'])
        if outcome in ("400", "401", "403", "422"):
            return _evolution_error(int(outcome), [f"Simulated gateway error {outcome}"])
        if outcome == "429":
            wait_s = script.retry_after_s if script and script.retry_after_s is not None else 1.0
            return _evolution_error(429, "Too Many Requests", headers=_retry_after_headers(wait_s, "seconds"))
        await asyncio.sleep(self._faults.send_latency_s)
        failed = self._failed_send(outcome, number, script)
        if failed is not None:
            return failed
        if outcome == "500":
            return _evolution_error(500, "Internal Server Error")
        if outcome == "502_html":
            return web.Response(status=502, text=_BAD_GATEWAY_PAGE, content_type="text/html")
        if outcome == "hang":
            await asyncio.sleep(self._faults.hang_s)
            return _evolution_error(500, "Internal Server Error")
        await asyncio.sleep(max(0, delay) / 1000.0)
        sent = self._accept(instance, number, text, delay)
        if outcome == "hang_after_accept":
            await asyncio.sleep(self._faults.hang_s)
        return web.json_response(
            {
                "key": {"remoteJid": self._stored_jid(number), "fromMe": True, "id": sent.message_id},
                "message": {"conversation": text},
                "messageTimestamp": int(sent.at),
                "status": "PENDING",
            },
            status=201,
        )

    def _failed_send(self, outcome: str, number: str, script: _Script | None) -> web.Response | None:
        """The answers of a gateway that got the request and did not send (issue 21 shapes)."""
        if outcome == "not_on_whatsapp":
            return _evolution_error(
                400, [{"jid": f"{number}@s.whatsapp.net", "exists": False, "number": number}]
            )
        if outcome in ("connection_closed", "dead_socket_400"):
            # Evolution 2.3 wraps the send's exception as a 400 (sendMessageWithTyping's catch).
            return _evolution_error(400, ["Error: Connection Closed"])
        if outcome == "cloud_graph_error_201":
            code = script.graph_code if script and script.graph_code else self._faults.graph_error_code
            return web.json_response(_graph_error(code), status=201)
        return None

    def _send_outcome(self, instance: str, number: str, text: str) -> tuple[str, _Script | None]:
        if instance.startswith(_UNKNOWN_INSTANCE_PREFIX):
            return "404", None
        script = _take_script(
            self._send_scripts,
            lambda s: (
                s.instance in (None, instance)
                and (s.number is None or _digits(s.number) == _digits(number))
                and (s.text_contains is None or s.text_contains in text)
            ),
        )
        if script is not None:
            return script.kind, script
        faults = self._faults
        if instance in faults.disconnected_instances or instance in faults.dead_socket_instances:
            return "connection_closed", None
        if _digits(number) in {_digits(phone) for phone in faults.reject_phones}:
            return "not_on_whatsapp", None
        chances = [
            ("cloud_graph_error_201", faults.send_graph_error_p),
            ("502_html", faults.send_server_error_p),
            ("hang", faults.send_hang_p),
            ("hang_after_accept", faults.send_hang_after_accept_p),
        ]
        return _draw(self._rng, chances, default="accepted"), None

    def _instance_limits(self, instance: str) -> tuple[str, float]:
        """("accepted", 0) or the number's own refusal: banned, logged out, or over its rate."""
        faults = self._faults
        if instance in faults.banned_instances:
            return "banned", 0.0
        if instance in faults.logged_out_instances:
            return "logged_out", 0.0
        limit = faults.instance_rate_limits.get(instance)
        if limit is None:
            return "accepted", 0.0
        now = time.monotonic()
        recent = self._recent_accepts.setdefault(instance, deque())
        while recent and recent[0] <= now - faults.instance_rate_window_s:
            recent.popleft()
        if len(recent) >= limit:
            return "rate_limited_130429", recent[0] + faults.instance_rate_window_s - now
        # Counted when let through (before the typing delay), as a gateway's limiter would.
        recent.append(now)
        return "accepted", 0.0

    def _accept(self, instance: str, number: str, text: str, delay_ms: int) -> SentMessage:
        sequence = len(self._sends) + 1
        sent = SentMessage(
            sequence=sequence,
            instance=instance,
            number=number,
            text=text,
            delay_ms=delay_ms,
            message_id=f"3EB0{sequence:016X}",
            at=time.time(),
            monotonic_s=time.monotonic(),
        )
        self._sends.append(sent)
        self._chats.setdefault((instance, self._stored_jid(number)), []).append(sent)
        key = (_digits(number), text)
        self._send_counts[key] += 1
        if self._send_counts[key] > 1:
            self._duplicates.append(sent)
        return sent

    def _stored_jid(self, number: str) -> str:
        """The chat this gateway files a send to `number` under (faults `lid_sender`, `br_jid_rewrite`)."""
        if self._faults.lid_sender:
            return lid_for(number)
        return stored_jid(number, rewrite=self._faults.br_jid_rewrite)

    @property
    def invalid_send_requests(self) -> list[Any]:
        """sendText bodies that failed Evolution's schema (answered 400, as Evolution does)."""
        return list(self._invalid_sends)

    async def _find_messages(self, request: web.Request) -> web.StreamResponse:
        """Evolution v2's findMessages for the one filter we use (``where.key.remoteJid``):
        the messages this gateway accepted for that chat, newest first, paged."""
        if not _key_ok(request.headers.get("apikey"), self._whatsapp_api_key):
            self._counts.find["401_auth"] += 1
            return _evolution_error(401, "Unauthorized")
        instance = request.match_info["instance"]
        body = await _json_body(request)
        where = body.get("where") if body else None
        key = where.get("key") if isinstance(where, Mapping) else None
        jid = key.get("remoteJid") if isinstance(key, Mapping) else None
        if not isinstance(jid, str) or not jid:
            self._counts.find["400_malformed"] += 1
            return _evolution_error(400, ["where.key.remoteJid is required"])
        script = _take_script(self._find_scripts, lambda s: s.instance in (None, instance))
        outcome = "ok"
        if script is not None:
            outcome = script.kind
        elif self._faults.find_unavailable_p > 0:  # no roll otherwise: seeded send faults stay put
            outcome = _draw(self._rng, [("500", self._faults.find_unavailable_p)])
        self._counts.find[outcome] += 1
        await asyncio.sleep(self._faults.state_latency_s)
        if outcome == "hang":
            await asyncio.sleep(self._faults.hang_s)
            return _evolution_error(500, "Internal Server Error")
        if outcome == "500":
            return _evolution_error(500, "Internal Server Error")
        if outcome == "bad_json":
            return web.Response(status=200, text=_BAD_GATEWAY_PAGE, content_type="text/html")
        page_size = body.get("offset") if body else None
        page_size = page_size if isinstance(page_size, int) and page_size > 0 else _FIND_PAGE_SIZE
        page = body.get("page") if body else None
        page = page if isinstance(page, int) and page > 0 else 1
        # Evolution matches `key.remoteJid` exactly (channel.service.ts fetchMessages).
        chat = list(reversed(self._chats.get((instance, jid), [])))
        records = [
            {
                "id": sent.message_id,
                "key": {"id": sent.message_id, "fromMe": True, "remoteJid": jid},
                "message": {"conversation": sent.text},
                "messageType": "conversation",
                "messageTimestamp": int(sent.at),
                "instanceId": instance,
            }
            for sent in chat[(page - 1) * page_size : page * page_size]
        ]
        return web.json_response(
            {
                "messages": {
                    "total": len(chat),
                    "pages": max(1, math.ceil(len(chat) / page_size)),
                    "currentPage": page,
                    "records": records,
                }
            }
        )

    # --- control endpoints --------------------------------------------------------------------

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._faults.model_dump(mode="json"))

    async def _patch_faults(self, request: web.Request) -> web.StreamResponse:
        patch = await _json_body(request)
        if patch is None:
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            faults = self.set_faults(**patch)
        except ValidationError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(faults.model_dump(mode="json"))

    async def _fail_next(self, request: web.Request) -> web.StreamResponse:
        kwargs = await _json_body(request)
        target = request.match_info["target"]
        scripts: dict[str, Callable[..., None]] = {
            "ai": self.fail_next_ai,
            "send": self.fail_next_send,
            "state": self.fail_next_state,
            "find": self.fail_next_find,
            "batch": self.fail_next_batch,
        }
        if kwargs is None or target not in scripts:
            return web.json_response(
                {"error": "POST a JSON object to /_sim/fail-next/{ai|send|state|find|batch}"}, status=400
            )
        try:
            scripts[target](**kwargs)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"scripted": target})

    async def _get_sends(self, request: web.Request) -> web.StreamResponse:
        number = request.query.get("number")
        sends = self.sends_to(number) if number else self._sends
        return web.json_response({"sends": [asdict(sent) for sent in sends]})

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _get_ai_requests(self, request: web.Request) -> web.StreamResponse:
        """When each recent AI request arrived (CLOCK_MONOTONIC, comparable across processes on
        one host) and what it got: the shared-budget tests and benchmark count requests per
        window from these."""
        return web.json_response(
            {
                "requests": [
                    {"t": r.monotonic_s, "kind": r.kind, "outcome": r.outcome} for r in self._ai_requests
                ]
            }
        )

    async def _post_reset(self, request: web.Request) -> web.StreamResponse:
        options = await _json_body(request) if request.can_read_body else {}
        self.reset(keep_faults=bool((options or {}).get("keep_faults", False)))
        return web.json_response({"reset": True})

    # --- structured output and the batch API (issue 14) ------------------------------------

    def _structured_refusal(self, body: Mapping[str, Any]) -> web.Response | None:
        """What a provider says to a schema it cannot honour (a model named `NO_STRUCTURED_OUTPUT_MARK`).

        With OpenRouter's ``provider.require_parameters`` no endpoint qualifies (404); without
        it the provider itself refuses the parameter (400), as OpenAI does.
        """
        if NO_STRUCTURED_OUTPUT_MARK not in str(body.get("model")) or not body.get("response_format"):
            return None
        self._counts.ai["refused_schema"] += 1
        provider = body.get("provider")
        if isinstance(provider, Mapping) and provider.get("require_parameters"):
            return _ai_error(404, "No endpoints found that can handle the requested parameters.")
        return _ai_error(
            400,
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
        )

    @property
    def batches(self) -> BatchStore:
        """The batch API's state: files, batches, `latency_s`, `release_late()`."""
        return self._batches

    @property
    def prompt_cache(self) -> PromptCacheModel:
        return self._prompt_cache

    def fail_next_batch(self, kind: BatchFaultKind, *, times: int = 1) -> None:
        """The next `times` batches created end as `kind` (failed, expired, item_errors, late),
        or the next batch API calls answer 500 / 429."""
        _check_kind(kind, frozenset(get_args(BatchFaultKind)))
        self._batches.scripts.append(_Script(kind, times))

    def batch_answer(self, body: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
        """One batch line's chat completion: the synchronous answer at `BATCH_PRICE_FACTOR`.

        ``model``: the batch's (OpenRouter), which a body may leave out to inherit."""
        if model is not None and "model" not in body:
            body = {**body, "model": model}
        kind = _request_kind(body)
        answer = self._completion("ok", kind, body)
        usage = answer["usage"]
        usage["cost"] = round(usage["cost"] * BATCH_PRICE_FACTOR, 10)
        return answer

    async def _files_upload(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.upload(request, self)

    async def _files_content(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.content(request, self)

    async def _batches_create(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.create(request, self)

    async def _batches_get(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.get(request, self)

    async def _openrouter_batches_create(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.openrouter_create(request, self)

    async def _openrouter_batches_get(self, request: web.Request) -> web.StreamResponse:
        return await self._batches.openrouter_get(request, self)

    def _contract_violation(self, body: Mapping[str, Any]) -> web.Response | None:
        """400 as OpenRouter answers an invalid body, when a request contract is loaded
        (`request_contract`: the JSON Schema of tests/contract/openrouter/)."""
        if self.request_contract is None:
            return None
        problems = validate(body, self.request_contract)
        if not problems:
            return None
        self.contract_violations.append("; ".join(problems))
        return _ai_error(
            400, f"Invalid request body: {problems[0]}", metadata={"error_type": "invalid_request"}
        )

    def _batch_api_fault(self, request: web.Request, api: BatchApiKind) -> web.Response | None:
        if self._faults.batch_api != api:  # the other provider's routes do not exist
            return _ai_error(404, "Not Found")
        if not _bearer_ok(request.headers.get("Authorization"), self._ai_api_key):
            return _ai_error(401, "No auth credentials found")
        script = _take_script(self._batches.scripts, lambda s: s.kind in ("500", "429"))
        kind = (
            script.kind
            if script
            else _draw(
                self._rng, [("429", self._faults.ai_rate_limited_p), ("500", self._faults.ai_server_error_p)]
            )
        )
        if kind == "429":
            return _ai_error(
                429,
                "Rate limit exceeded",
                headers=_retry_after_headers(self._faults.ai_retry_after_s, "seconds"),
            )
        if kind == "500":
            return _ai_error(500, "Upstream provider unavailable")
        return None


_BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


def _moderation_403(model: str) -> web.Response:
    """OpenRouter's moderation refusal (errors-and-debugging.mdx, "Moderation errors")."""
    return _ai_error(
        403,
        f'{model} requires moderation on OpenAI. Your input was flagged for "harassment".',
        metadata={
            "reasons": ["harassment"],
            "flagged_input": "…MODERATION-FLAG…",
            "provider_name": "OpenAI",
            "model_slug": model,
        },
    )


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


def _bearer_ok(header: str | None, expected: str | None) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return _key_ok(header[len("bearer ") :].strip(), expected)


def _key_ok(key: str | None, expected: str | None) -> bool:
    if not key:
        return False
    return expected is None or key == expected


def _retry_after_headers(wait_s: float | None, form: RetryAfterForm) -> dict[str, str]:
    if wait_s is None or form == "none":
        return {}
    if form == "ms":
        # Like OpenAI: the precise value in ms, a rounded-up one for clients that only know seconds.
        return {"retry-after-ms": str(round(wait_s * 1000)), "Retry-After": str(math.ceil(wait_s))}
    if form == "http_date":
        when = datetime.now(UTC) + timedelta(seconds=wait_s)
        return {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    return {"Retry-After": f"{wait_s:g}"}


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 422: "Unprocessable"}


def _number_refusal(outcome: str, limited_for_s: float) -> web.Response | None:
    if outcome == "rate_limited_130429":
        return _cloud_rate_limited(limited_for_s)
    if outcome == "banned":
        return _evolution_error(403, ["This WhatsApp account has been banned (account locked, 131031)"])
    if outcome == "logged_out":
        return _evolution_error(500, ["Error: logged out (the session was closed by WhatsApp)"])
    return None


def _cloud_rate_limited(retry_after_s: float) -> web.Response:
    """The Cloud API's answer above a number's throughput (error 130429), with a Retry-After."""
    body = {
        "error": {
            "message": "(#130429) Rate limit hit",
            "type": "OAuthException",
            "code": 130429,
            "error_data": {"details": "Cloud API message throughput has been reached."},
        }
    }
    headers = _retry_after_headers(max(1.0, math.ceil(retry_after_s)), "seconds")
    return web.json_response(body, status=429, headers=headers)


def _graph_error(code: int) -> dict[str, Any]:
    """A Graph error object as Evolution's WHATSAPP-BUSINESS channel returns it from a send
    (whatsapp.business.service.ts `post()`: `e.response.data.error`, answered as a 201)."""
    titles = {
        130429: "Rate limit hit",
        131056: "(Business Account, Consumer Account) pair rate limit hit",
        131026: "Message undeliverable",
        131047: "Re-engagement message",
        190: "Error validating access token",
    }
    return {
        "message": f"(#{code}) {titles.get(code, 'Graph API error')}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": titles.get(code, "Graph API error")},
        "fbtrace_id": "AbCdEfGhIjKlMnOp",
    }


def _evolution_error(status: int, message: Any, *, headers: Mapping[str, str] | None = None) -> web.Response:
    reason = _REASONS.get(status, "Too Many Requests" if status == 429 else "Internal Server Error")
    return web.json_response(
        {"status": status, "error": reason, "response": {"message": message}}, status=status, headers=headers
    )

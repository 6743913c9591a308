"""All configuration, read once from the environment (prefix ``CAMPAIGNQ_``) and CLI flags.

Nothing else in the package reads ``os.environ``: every component receives a `Settings`
(or the few values it needs) through its constructor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .pooler import PoolerMode, uses_transaction_pooler


class ModelPrice(BaseModel):
    """USD per million tokens, used when the provider does not report `usage.cost`."""

    prompt_per_million_usd: float = Field(ge=0)
    completion_per_million_usd: float = Field(ge=0)


DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "openai/gpt-4o-mini": ModelPrice(prompt_per_million_usd=0.15, completion_per_million_usd=0.60),
    "openai/gpt-4.1-mini": ModelPrice(prompt_per_million_usd=0.40, completion_per_million_usd=1.60),
    "anthropic/claude-3.5-haiku": ModelPrice(prompt_per_million_usd=0.80, completion_per_million_usd=4.00),
    "google/gemini-2.0-flash-001": ModelPrice(prompt_per_million_usd=0.10, completion_per_million_usd=0.40),
}


class Settings(BaseSettings):
    """Every knob of campaignq. Units are in the names (`_s` seconds, `_ms` milliseconds)."""

    model_config = SettingsConfigDict(env_prefix="CAMPAIGNQ_", extra="ignore", populate_by_name=True)

    # --- database -----------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "CAMPAIGNQ_DATABASE_URL", "database_url"),
        description="PostgreSQL URL; when unset an embedded server under data_dir is used.",
    )
    data_dir: Path = Field(default=Path(".campaignq"), description="Where the embedded PostgreSQL lives.")
    db_pool_max_size: int = Field(default=8, ge=1, le=200, description="Connections per consumer process.")
    db_statement_timeout_ms: int = Field(
        default=15_000, ge=0, description="Server-side cap on any one statement (0 = none)."
    )
    outcome_batch_window_ms: float = Field(
        default=3.0,
        ge=0,
        le=1000,
        description=(
            "Outcome writes (generation stored, parts acknowledged, success) wait this long to share "
            "one statement with others (0 = one statement per write)."
        ),
    )
    outcome_batch_max: int = Field(
        default=64, ge=1, le=1000, description="An outcome batch is sent at once when it holds this many."
    )
    db_pooler: PoolerMode = Field(
        default="auto",
        description=(
            "`transaction` behind a transaction-mode pooler (PgBouncer, Supabase port 6543): no "
            "prepared statements or LISTEN; `none`; `auto` = transaction on port 6543."
        ),
    )
    pooled_poll_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="Idle poll behind a transaction pooler, where LISTEN cannot wake the consumer.",
    )

    # --- AI provider (OpenAI-compatible chat completions) --------------------------------
    ai_base_url: str = Field(
        default="https://openrouter.ai/api/v1", description="OpenAI-compatible chat completions base URL."
    )
    ai_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key of the AI provider.",
        validation_alias=AliasChoices("CAMPAIGNQ_AI_API_KEY", "OPENROUTER_API_KEY", "ai_api_key"),
    )
    ai_requests_per_minute: int = Field(
        default=600,
        ge=1,
        description="AI requests/min cap of ONE process; the shared budget is `campaignq limits set ai N`.",
    )
    ai_budget_refresh_s: float = Field(
        default=1.0,
        gt=0,
        le=5,
        description="How often a process refreshes its slice of the shared AI budget.",
    )
    ai_budget_lease_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="A slice not refreshed this long returns to the other processes.",
    )
    ai_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one generate call.")
    split_timeout_s: float = Field(default=20.0, gt=0, description="Timeout of one split call.")
    split_max_tokens: int = Field(default=2048, ge=16, description="max_tokens of a split call.")
    ai_max_retry_after_s: float = Field(default=120.0, gt=0, description="Cap on a provider Retry-After.")
    ai_breaker_failures: int = Field(
        default=10, ge=1, description="Consecutive AI failures that open the circuit breaker."
    )
    ai_breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="Open breaker waits this long before one trial call."
    )
    ai_structured_output: bool = Field(
        default=True,
        description="Split messages in ONE call with a strict JSON schema (else generate + split).",
    )
    ai_openrouter_fields: bool = Field(
        default=True,
        description="Send OpenRouter's provider.require_parameters and session_id (off for strict APIs).",
    )
    ai_prompt_cache_key: bool = Field(
        default=True, description="Send prompt_cache_key, a stable per-campaign key for prompt caching."
    )
    ai_batch_price_factor: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Batch price / sync price, for batch results without a reported cost.",
    )
    ai_batch_api: Literal["auto", "openrouter", "openai", "off"] = Field(
        default="auto",
        description=(
            "Batch API of `pregenerate`: `openrouter` (/api/beta/batches, results inline), `openai` "
            "(/files + /batches), `off`; `auto` = openrouter on openrouter.ai, openai on "
            "api.openai.com / api.groq.com, off elsewhere."
        ),
    )
    pregen_min_ahead_s: float = Field(
        default=7200.0, ge=0, description="Pre-generate only messages due at least this far ahead."
    )
    pregen_horizon_s: float = Field(default=86_400.0, gt=0, description="…and at most this far ahead.")
    pregen_batch_size: int = Field(default=1000, ge=1, le=50_000, description="Most requests per batch.")
    pregen_interval_s: float = Field(
        default=60.0, gt=0, description="`pregenerate` loop period: submit new batches, poll open ones."
    )
    model_prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL_PRICES),
        description="JSON {model: {prompt_per_million_usd, completion_per_million_usd}} for cost estimates.",
    )

    # --- WhatsApp gateway (Evolution API shape) ------------------------------------------
    whatsapp_base_url: str = Field(default="http://127.0.0.1:8080", description="Evolution API base URL.")
    whatsapp_api_key: SecretStr | None = Field(default=None, description="Evolution API `apikey` header.")
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret of the gateway's webhooks (`/webhooks/evolution/{secret}`, or header "
        "`apikey` / Bearer / HS256 JWT); unset: webhooks off.",
    )
    send_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one send, plus its typing delay."
    )
    typing_words_per_minute: float = Field(
        default=400.0, gt=0, description="Typing pace shown before bubbles 2..n."
    )
    typing_delay_cap_s: float = Field(
        default=3.0, ge=0, description="Longest typing delay (0 disables typing)."
    )
    uncertain_send_policy: Literal["verify", "resend", "hold"] = Field(
        default="verify",
        description="Uncertain part the gateway cannot confirm: verify later, resend, or hold (DLQ); "
        "inboxes.uncertain_send_policy overrides.",
    )
    reconcile_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of one findMessages call reconciling an uncertain part."
    )
    lease_margin_s: float = Field(
        default=2.0,
        ge=0,
        description="Lease time kept beyond a send's timeout + typing delay, to record its ack.",
    )
    inbox_state_ttl_s: float = Field(
        default=10.0, ge=0, description="How long an inbox connection state is cached."
    )
    inbox_breaker_failures: int = Field(
        default=3, ge=1, description="Dead-socket sends that open an inbox's breaker."
    )
    inbox_breaker_cooldown_s: float = Field(
        default=15.0, gt=0, description="Open inbox breaker waits this long."
    )

    # --- consumer ------------------------------------------------------------------------
    concurrency: int = Field(default=32, ge=1, le=4096, description="Messages processed at once per process.")
    batch_size: int = Field(default=50, ge=1, le=1000, description="Most messages read per round trip.")
    visibility_timeout_s: int = Field(
        default=120, ge=5, description="Lease length; the heartbeat extends it every third."
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="Failed attempts before dead letter.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="Idle poll (NOTIFY wakes earlier for new messages)."
    )
    refill_low_water: int = Field(
        default=0,
        ge=0,
        description="Free slots that trigger a read while others are busy (0 = min(batch, concurrency / 4)).",
    )
    refill_max_wait_s: float = Field(
        default=0.1,
        ge=0,
        description=(
            "A freed slot waits at most this long for others before it is refilled anyway, "
            "and never more than 2 % of a message's usual time."
        ),
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="Event loop of `consume`: `auto` = uvloop where installed, else asyncio's own.",
    )
    backoff_base_s: float = Field(default=2.0, gt=0, description="Retry backoff base (full jitter).")
    backoff_max_s: float = Field(default=300.0, gt=0, description="Retry backoff cap.")
    max_deferral_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Deferred (not its fault) longer than this: dead letter `deferred_too_long`.",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="SIGTERM waits this long for in-flight work, then releases it."
    )
    config_cache_ttl_s: float = Field(
        default=30.0, ge=0, description="Campaign configs are cached this long per process."
    )
    min_message_chars: int = Field(
        default=10, ge=1, description="Shortest acceptable AI text after trimming."
    )
    max_part_chars: int = Field(default=4096, ge=16, le=4096, description="Longest WhatsApp bubble.")

    # --- sender safety (issue 13): per-inbox pacing, send windows, automatic pause --------
    pace_jitter: float = Field(
        default=0.3, ge=0, le=3, description="Pace gaps are stretched by a random 0..this fraction."
    )
    pace_max_wait_s: float = Field(
        default=3.0, ge=0, description="Wait this long in-process for a pace slot; longer waits queue."
    )
    pace_late_tolerance_s: float = Field(
        default=1.0, ge=0, description="A booked pace slot this late is still used, not rebooked."
    )
    window_open_spread_s: float = Field(
        default=60.0, ge=0, description="Held messages return at a window opening plus 0..this."
    )
    paused_inbox_recheck_s: float = Field(
        default=120.0, gt=0, description="Messages of a paused inbox look again after about this."
    )
    pause_after_rate_limits: int = Field(
        default=5, ge=1, description="Gateway 429s within the window below that pause an inbox."
    )
    rate_limit_pause_window_s: float = Field(
        default=300.0, gt=0, description="Window in which those 429s are counted."
    )

    # --- producer ------------------------------------------------------------------------
    producer_batch_size: int = Field(default=5000, ge=1, description="Most rows one producer call queues.")
    producer_interval_s: float = Field(
        default=5.0, gt=0, description="Producer loop period (`produce --every`)."
    )
    queue_horizon_s: float = Field(
        default=15.0,
        ge=0,
        description="Fair share: the producer keeps this many seconds of consumption queued (0 = all due).",
    )
    queue_min_depth: int = Field(
        default=500, ge=1, description="Fair share: the producer's visible-queue target is never below this."
    )

    # --- observability -------------------------------------------------------------------
    log_json: bool = Field(default=False, description="JSON log lines instead of readable ones.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics here (consume)."
    )

    # --- console (`campaignq serve`) ----------------------------------------------------
    console_token: SecretStr | None = Field(
        default=None, description="Admin token of the console: every action (POST) needs it."
    )
    console_read_token: SecretStr | None = Field(
        default=None, description="View-only token of the console (pages and GET API)."
    )
    console_host: str = Field(
        default="127.0.0.1", description="Console bind address; non-loopback needs a token."
    )
    console_port: int = Field(default=8900, ge=0, le=65535, description="Console port (`serve --port`).")
    console_sample_interval_s: float = Field(
        default=2.0, gt=0, description="How often the console's one shared reader refreshes open pages."
    )
    console_session_idle_s: float = Field(
        default=12 * 3600,
        gt=0,
        le=30 * 86400,
        description="A console login session ends after this long without a request (12 h).",
    )
    console_trust_proxy: bool = Field(
        default=False,
        description=(
            "Behind a TLS-terminating proxy: trust its X-Forwarded-Proto (Secure cookie) and "
            "X-Forwarded-For (the client address login throttling counts)."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _a_postgresql_url(cls, value: str | None) -> str | None:
        """A malformed URL is refused here, in one line, instead of deep in the driver with a
        20-line traceback from whichever command touched it first."""
        if value is None:
            return None
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            raise ValueError(
                f"not a PostgreSQL URL ({' '.join(str(exc).split())}); expected postgresql://user:password@host:5432/dbname"
            ) from None
        return value

    @field_validator("ai_base_url", "whatsapp_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _lease_fits_a_send(self) -> Settings:
        """A worker sends a part only while its lease leaves room for the whole send; a lease
        shorter than one send could never send anything."""
        one_send_s = self.send_timeout_s + self.typing_delay_cap_s + self.lease_margin_s
        if self.visibility_timeout_s <= one_send_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed send_timeout_s + "
                f"typing_delay_cap_s + lease_margin_s ({one_send_s:g}): a lease must fit a whole send"
            )
        return self

    def transaction_pooled(self, url: str | None = None) -> bool:
        """Whether connections to `url` (default: DATABASE_URL) go through a transaction pooler."""
        target = url if url is not None else self.database_url
        return bool(target) and uses_transaction_pooler(self.db_pooler, str(target))

    def ai_key(self) -> str:
        return self.ai_api_key.get_secret_value() if self.ai_api_key else ""

    def whatsapp_key(self) -> str:
        return self.whatsapp_api_key.get_secret_value() if self.whatsapp_api_key else ""


def env_names(field_name: str) -> list[str]:
    """The environment variables that set one field (for docs and the README check)."""
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices if isinstance(choice, str) and choice.isupper()]
    return [f"CAMPAIGNQ_{field_name.upper()}"]


def secret_value(secret: SecretStr | None) -> str | None:
    """The text of an optional secret; an empty one counts as unset."""
    return secret.get_secret_value() or None if secret else None

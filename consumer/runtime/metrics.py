"""Prometheus metrics of a consumer process (served by `campaignq consume --metrics-port`).

Collectors live in one registry built per process (`ConsumerMetrics`), injected into the
worker, so tests can run several workers in one interpreter without sharing counters.
Counters and histograms move as messages are processed; the queue gauges are sampled every
few seconds by `observability.QueueSampler` (one query, never per message).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "campaignq_stage_seconds",
            "Latency of one stage of one message",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.message_seconds = Histogram(
            "campaignq_message_seconds",
            "Wall time of one attempt, read to outcome",
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.outcomes = Counter(
            "campaignq_outcomes",
            "Attempt outcomes by kind and error class",
            ["outcome", "error_class"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "campaignq_rate_limit_waits",
            "Times the process paused reading for a provider cooldown",
            registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "campaignq_rate_limit_wait_seconds",
            "Seconds spent paused for provider cooldowns",
            registry=r,
        )
        self.in_flight = Gauge("campaignq_in_flight", "Messages being processed now", registry=r)
        self.batch_fill_ratio = Histogram(
            "campaignq_batch_fill_ratio",
            "Messages read / messages asked for, per read",
            buckets=(0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self.circuit_open = Gauge(
            "campaignq_circuit_open",
            "1 when a circuit breaker is open (0.5 half-open)",
            ["circuit"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "campaignq_queue_depth",
            "Messages in the queue (sampled)",
            ["queue"],
            registry=r,
        )
        self.queue_visible = Gauge(
            "campaignq_queue_visible",
            "Messages visible now (sampled)",
            ["queue"],
            registry=r,
        )
        self.queue_oldest_age_seconds = Gauge(
            "campaignq_queue_oldest_age_seconds",
            "Age of the oldest message (sampled)",
            ["queue"],
            registry=r,
        )
        self.queue_in_flight = Gauge(
            "campaignq_queue_in_flight",
            "Messages read and invisible now: being processed or waiting out a retry delay (sampled)",
            ["queue"],
            registry=r,
        )
        self.samples_failed = Counter(
            "campaignq_metrics_samples_failed",
            "Queue samples that could not be taken (the database did not answer)",
            registry=r,
        )
        self.leases_lost = Counter(
            "campaignq_leases_lost",
            "Messages whose visibility timeout ran out while held",
            registry=r,
        )
        self.ack_record_seconds = Histogram(
            "campaignq_ack_record_seconds",
            "From the gateway's answer to the commit that records the part: the window in which "
            "a crash leaves an acknowledged part unrecorded (its next holder reconciles it)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.uncertain_sends = Counter(
            "campaignq_uncertain_sends",
            "Sends whose outcome was unknown (timeout or reset after the request was written)",
            registry=r,
        )
        self.reconciliations = Counter(
            "campaignq_reconciliations",
            "Uncertain parts checked against the gateway's message list, by what it said "
            "(found, absent, unavailable)",
            ["result"],
            registry=r,
        )
        self.uncertain_decisions = Counter(
            "campaignq_uncertain_decisions",
            "What was done with an uncertain part, by policy (verify/resend/hold) and decision",
            ["policy", "decision"],
            registry=r,
        )
        self.tokens = Counter("campaignq_ai_tokens", "AI tokens used", ["kind"], registry=r)
        # LLM cost (issue 14). Per workspace, not per run: run ids are unbounded label values
        # (per-run figures are in the campaignq_run_ai_costs view and `campaignq stats`).
        self.ai_calls = Counter(
            "campaignq_ai_calls",
            "AI requests made for messages, by kind (plain, structured, generate, split)",
            ["kind"],
            registry=r,
        )
        self.structured_output_fallbacks = Counter(
            "campaignq_structured_output_fallbacks",
            "Models found to refuse structured output (then generate + split for the process life)",
            ["model"],
            registry=r,
        )
        self.generated_messages = Counter(
            "campaignq_ai_generated_messages",
            "Messages generated, by workspace and mode (plain, structured, generate_split, batch)",
            ["workspace_id", "mode"],
            registry=r,
        )
        self.workspace_prompt_tokens = Counter(
            "campaignq_ai_workspace_prompt_tokens", "Prompt tokens by workspace", ["workspace_id"], registry=r
        )
        self.workspace_cached_tokens = Counter(
            "campaignq_ai_workspace_cached_tokens",
            "Prompt tokens served from the provider's cache, by workspace",
            ["workspace_id"],
            registry=r,
        )
        # Sampled (observability.QueueSampler) from the 0010 views, for running/paused runs only.
        self.run_cached_token_share = Gauge(
            "campaignq_run_ai_cached_token_share",
            "Share of prompt tokens served from the provider's cache, per active run (sampled)",
            ["run_id"],
            registry=r,
        )
        self.run_cost_per_1000_usd = Gauge(
            "campaignq_run_ai_cost_per_1000_messages_usd",
            "AI cost per 1,000 generated messages, per active run (sampled)",
            ["run_id"],
            registry=r,
        )
        self.run_budget_exhausted = Gauge(
            "campaignq_run_budget_exhausted",
            "1 when the run is paused because a spend cap was reached (sampled)",
            ["run_id"],
            registry=r,
        )
        self.workspace_cached_token_share = Gauge(
            "campaignq_workspace_ai_cached_token_share",
            "Cached share of prompt tokens generated today (UTC), per workspace (sampled)",
            ["workspace_id"],
            registry=r,
        )
        self.workspace_cost_per_1000_usd = Gauge(
            "campaignq_workspace_ai_cost_per_1000_messages_usd",
            "AI cost per 1,000 messages generated today (UTC), per workspace (sampled)",
            ["workspace_id"],
            registry=r,
        )
        self.workspace_cost_usd = Counter(
            "campaignq_ai_workspace_cost_usd", "AI cost in USD by workspace", ["workspace_id"], registry=r
        )
        # The shared AI budget (rate_limits row 'ai'), refreshed about once a second.
        self.ai_budget_rpm = Gauge(
            "campaignq_ai_budget_rpm",
            "Shared AI budget in requests/min across every process (-1: none, own cap only)",
            registry=r,
        )
        self.ai_budget_slice_rpm = Gauge(
            "campaignq_ai_budget_slice_rpm",
            "Requests/min of the shared AI budget this process holds now",
            registry=r,
        )
        self.ai_budget_holders = Gauge(
            "campaignq_ai_budget_holders", "Processes holding a slice of the shared AI budget", registry=r
        )
        self.ai_budget_requests = Counter(
            "campaignq_ai_budget_requests",
            "AI requests admitted by this process (spent from its slice when a budget is set)",
            registry=r,
        )
        # Children bound once (issue 15, P6): `labels(...)` validates its arguments and takes
        # the family's lock on every call; the hot path uses these instead.
        self.send_seconds = self.stage_seconds.labels(stage="send")
        self.generate_seconds = self.stage_seconds.labels(stage="generate")
        self.split_seconds = self.stage_seconds.labels(stage="split")
        self._outcome_children: dict[tuple[str, str], Counter] = {}
        # The generation side's children (issue 15): every message used to pay ~9 `labels()`.
        self.ai_call_kinds = {
            kind: self.ai_calls.labels(kind=kind) for kind in ("structured", "generate", "split")
        }
        self.prompt_tokens = self.tokens.labels(kind="prompt")
        self.completion_tokens = self.tokens.labels(kind="completion")
        self.cached_tokens = self.tokens.labels(kind="cached")
        self.cache_write_tokens = self.tokens.labels(kind="cache_write")
        self._workspace_children: dict[object, WorkspaceCounters] = {}

    def ai_call(self, kind: str) -> Counter:
        """The `campaignq_ai_calls` child of `kind` (bound once for the kinds the consumer makes)."""
        child = self.ai_call_kinds.get(kind)
        if child is None:
            child = self.ai_call_kinds[kind] = self.ai_calls.labels(kind=kind)
        return child

    def workspace(self, workspace_id: object) -> WorkspaceCounters:
        """The per-workspace children, bound on first use of a workspace.

        Keyed by the id as given (a UUID or its text); the label is its text. Workspaces are
        few and long-lived (they are the label values of these families anyway), so the cache
        grows no faster than the families themselves."""
        children = self._workspace_children.get(workspace_id)
        if children is None:
            label = str(workspace_id)
            children = self._workspace_children[workspace_id] = WorkspaceCounters(
                prompt_tokens=self.workspace_prompt_tokens.labels(workspace_id=label),
                cached_tokens=self.workspace_cached_tokens.labels(workspace_id=label),
                cost_usd=self.workspace_cost_usd.labels(workspace_id=label),
                modes={},
                _family=self.generated_messages,
                _label=label,
            )
        return children

    def outcome(self, outcome: str, error_class: str) -> Counter:
        """The `campaignq_outcomes` child of (outcome, error_class), bound on first use.

        Both label values come from closed vocabularies (`Outcome`, `ErrorClass`), so the
        cache stays as small as the family itself."""
        key = (outcome, error_class)
        child = self._outcome_children.get(key)
        if child is None:
            child = self._outcome_children[key] = self.outcomes.labels(
                outcome=outcome, error_class=error_class
            )
        return child


@dataclass
class WorkspaceCounters:
    """One workspace's bound children of the LLM cost families (`ConsumerMetrics.workspace`)."""

    prompt_tokens: Counter
    cached_tokens: Counter
    cost_usd: Counter
    modes: dict[str, Counter]
    _family: Counter
    _label: str

    def generated(self, mode: str) -> Counter:
        """The `campaignq_ai_generated_messages` child of this workspace and `mode`."""
        child = self.modes.get(mode)
        if child is None:
            child = self.modes[mode] = self._family.labels(workspace_id=self._label, mode=mode)
        return child

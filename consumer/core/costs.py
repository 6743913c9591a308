"""Estimated AI cost: the provider's reported cost when present, else the configured price table."""

from __future__ import annotations

from collections.abc import Mapping

from ..settings import ModelPrice


def estimate_cost_usd(
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    reported_cost_usd: float | None,
    prices: Mapping[str, ModelPrice],
) -> float | None:
    if reported_cost_usd is not None:
        return reported_cost_usd
    price = prices.get(model)
    if price is None:
        return None
    return (
        prompt_tokens * price.prompt_per_million_usd + completion_tokens * price.completion_per_million_usd
    ) / 1_000_000

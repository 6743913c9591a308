"""Answers both fake providers share: a JSON request body read leniently, an OpenAI-shaped error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    try:
        data = await request.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _ai_error(
    status: int,
    message: str,
    *,
    metadata: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return web.json_response({"error": error}, status=status, headers=headers)

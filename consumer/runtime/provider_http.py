"""What the two HTTP clients (`ai.py`, `whatsapp.py`) share: reading a provider's answer.

A provider's body is JSON when things go well and anything at all when they do not; the
error text we log and store is the provider's own words, short, on one line, with our key
and any phone number masked.
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import safejson
from ..logs import redact

PROVIDER_TEXT_MAX_CHARS = 300
JSON_CONTENT_TYPE = "application/json"


def json_body(payload: Any) -> bytes:
    """A request body: orjson writes compact UTF-8 bytes directly, several times faster than
    ``json=`` (which goes through ``json.dumps`` to a str and encodes it again)."""
    return orjson.dumps(payload)


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (not JSON, a list, a string…)."""
    try:
        return safejson.loads_object(body)
    except safejson.UnsafeJSON:  # not JSON, not an object, too large or nested too deep
        return None


def provider_text(text: str, body: bytes, *, api_key: str | None) -> str:
    """`text` (else the raw body, else "no details") folded, masked and cut for a log line."""
    if not text:
        text = body.decode("utf-8", "replace").strip() or "no details"
    if api_key:
        text = text.replace(api_key, "***")
    return redact(" ".join(text.split()))[:PROVIDER_TEXT_MAX_CHARS]

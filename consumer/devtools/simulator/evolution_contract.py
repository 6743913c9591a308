"""What the fake gateway checks requests against and answers with: Evolution API 2.3.6's shapes.

The schema is tests/contract/evolution/sendtext.schema.json (Evolution's `textMessageSchema`,
src/validate/message.schema.ts; a test keeps the two equal). Every sendText body the
simulator receives is validated with it, and an invalid one gets the 400 Evolution's router
answers, so a client that drifts from the real contract fails the tests instead of passing
against a lenient fake. The validator covers the subset of JSON Schema that schema uses
(no dependency on `jsonschema`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...core.jid import create_jid

SENDTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "number": {"type": "string", "description": "Invalid format"},
        "text": {"type": "string"},
        "linkPreview": {"type": "boolean"},
        "delay": {"type": "integer", "description": "Enter a value in milliseconds"},
        "quoted": {
            "properties": {
                "key": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "minLength": 1},
                        "remoteJid": {"type": "string"},
                        "fromMe": {"type": "boolean", "enum": [True, False]},
                    },
                    "required": ["id"],
                },
                "message": {"type": "object"},
            }
        },
        "everyOne": {"type": "boolean", "enum": [True, False]},
        "mentioned": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {
                "type": "string",
                "pattern": "^\\d+",
                "description": '"mentioned" must be an array of numeric strings',
            },
        },
    },
    "required": ["number", "text"],
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "number" and isinstance(value, float):
        return value == value  # NaN is not a JSON number
    return isinstance(value, _TYPES.get(name, (object,)))


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "instance") -> list[str]:
    """Evolution's 400 messages for `value`: each failing schema's `description`, else the
    jsonschema npm package's stack text without the leading `instance.`."""
    expected = schema.get("type")
    if isinstance(expected, str) and not _is_type(value, expected):
        return [_message(schema, f"{path} is not of a type(s) {expected}")]
    found: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(_message(schema, f"{path} is not one of enum values"))
    if isinstance(value, str):
        found += _string_errors(value, schema, path)
    elif isinstance(value, list):
        found += _array_errors(value, schema, path)
    elif isinstance(value, dict):
        found += [
            _message({}, f'{path} requires property "{name}"')
            for name in schema.get("required", ())
            if name not in value
        ]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += schema_errors(value[name], sub, f"{path}.{name}")
    return found


def _message(schema: Mapping[str, Any], stack: str) -> str:
    description = schema.get("description")
    return description if isinstance(description, str) else stack.replace("instance.", "", 1)


def _string_errors(value: str, schema: Mapping[str, Any], path: str) -> list[str]:
    found = []
    if len(value) < schema.get("minLength", 0):
        found.append(_message(schema, f"{path} does not meet minimum length of {schema['minLength']}"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        found.append(_message(schema, f'{path} does not match pattern "{pattern}"'))
    return found


def _array_errors(value: list[Any], schema: Mapping[str, Any], path: str) -> list[str]:
    found = []
    if len(value) < schema.get("minItems", 0):
        found.append(_message(schema, f"{path} does not meet minimum length of {schema['minItems']}"))
    if schema.get("uniqueItems") and len({repr(item) for item in value}) != len(value):
        found.append(_message(schema, f"{path} contains duplicate item"))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            found += schema_errors(item, items, f"{path}[{index}]")
    return found


def stored_jid(number: str, *, rewrite: bool) -> str:
    """The chat Evolution stores a send to `number` under: its createJid form when
    `rewrite` (the `br_jid_rewrite` fault: Brazil's 9th digit, Mexico, Argentina), else the
    plain `<digits>@s.whatsapp.net` (what a gateway that kept the digits would do)."""
    digits = re.sub(r"[^0-9]", "", number)
    return create_jid(digits) if rewrite else f"{digits}@s.whatsapp.net"


def lid_for(number: str) -> str:
    """A stable, made-up LID for a number (the `lid_sender` fault): 15 digits, `@lid`."""
    digits = re.sub(r"[^0-9]", "", number)
    return f"{int(digits or '0') * 7919 % 10**15:015d}@lid"


def inbound_message_event(
    instance: str, number: str, text: str, *, lid: bool = False, message_id: str = "3A0F00000000000001"
) -> dict[str, Any]:
    """A messages.upsert body as Evolution 2.3 posts it (tests/contract/evolution/
    webhook_events.json): under LID addressing `remoteJid` is the LID and the phone is in
    `remoteJidAlt`."""
    phone_jid = create_jid(number)
    key: dict[str, Any] = {"remoteJid": phone_jid, "fromMe": False, "id": message_id}
    if lid:
        key = {
            "remoteJid": lid_for(number),
            "remoteJidAlt": phone_jid,
            "addressingMode": "lid",
            "fromMe": False,
            "id": message_id,
        }
    return {
        "event": "messages.upsert",
        "instance": instance,
        "data": {
            "key": key,
            "pushName": "Lead",
            "message": {"conversation": text},
            "messageType": "conversation",
            "messageTimestamp": 1765152100,
            "source": "android",
        },
        "date_time": "2026-12-08T00:01:40.000Z",
        "sender": "553199990000@s.whatsapp.net",
        "server_url": "http://127.0.0.1",
        "apikey": None,
    }

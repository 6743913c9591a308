"""OpenRouter's contract files (tests/contract/openrouter/): loading them, and regenerating the
chat-completions request schema from OpenRouter's ``openapi/openapi.yaml``.

Regenerate (after ``fetch github:OpenRouterTeam/docs``)::

    git -C <docs> show <commit>:openapi/openapi.yaml > /tmp/openapi.yaml
    python -m tests.openrouter_contract /tmp/openapi.yaml <commit>
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTRACT_DIR = Path(__file__).resolve().parent / "contract" / "openrouter"
SCHEMA_FILE = CONTRACT_DIR / "chat_request.schema.json"
RESULT_SCHEMA_FILE = CONTRACT_DIR / "chat_result.schema.json"
DOCS_REPO = "OpenRouterTeam/docs"
DOCS_COMMIT = "c26125a5fa92cb52ac67f0c75b717229567db716"

# The ChatRequest properties campaignq sends; the others stay allowed (the schema does not
# forbid additional properties) but are not checked.
USED_PROPERTIES = (
    "model",
    "messages",
    "max_tokens",
    "response_format",
    "provider",
    "session_id",
    "prompt_cache_key",
    "cache_control",
    "temperature",
    "stream",
)


def chat_request_schema() -> dict[str, Any]:
    """The JSON Schema every chat-completions body must satisfy (the simulator enforces it)."""
    document = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return document  # type: ignore[no-any-return]


def chat_result_schema() -> dict[str, Any]:
    """The JSON Schema of a chat completion answer (``ChatResult``): the simulator's 200s obey it."""
    document = json.loads(RESULT_SCHEMA_FILE.read_text(encoding="utf-8"))
    return document  # type: ignore[no-any-return]


def load(name: str) -> Any:
    """A contract file's content (its ``examples`` for error and batch files)."""
    return json.loads((CONTRACT_DIR / name).read_text(encoding="utf-8"))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _clean(node: Any) -> Any:
    """Drop `example` keys and point `$ref`s at ``$defs``."""
    if isinstance(node, dict):
        return {
            key: (
                value.replace("#/components/schemas/", "#/$defs/")
                if key == "$ref" and isinstance(value, str)
                else _clean(value)
            )
            for key, value in node.items()
            if key != "example"
        }
    if isinstance(node, list):
        return [_clean(value) for value in node]
    return node


def _closure(schemas: dict[str, Any], roots: Any) -> list[str]:
    seen: set[str] = set()
    todo = list(_refs(roots))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(schemas[name]))
    return sorted(seen)


def extract(openapi: dict[str, Any], commit: str, *, name: str = "ChatRequest") -> dict[str, Any]:
    """``ChatRequest`` restricted to `USED_PROPERTIES`, or another schema (``ChatResult``) whole."""
    schemas = openapi["components"]["schemas"]
    root = dict(schemas[name])
    if name == "ChatRequest":
        root["properties"] = {prop: root["properties"][prop] for prop in USED_PROPERTIES}
        what = "only the properties campaignq sends, and the schemas they reference"
    else:
        what = "and the schemas it references"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"Extracted from {DOCS_REPO}@{commit} openapi/openapi.yaml, components.schemas.{name} "
            f"({what}; `example` keys dropped). OpenAPI info.license: MIT. "
            f"Regenerate: python -m tests.openrouter_contract."
        ),
        **_clean({key: value for key, value in root.items() if key != "example"}),
        "$defs": {ref: _clean(schemas[ref]) for ref in _closure(schemas, root)},
    }


def main(argv: list[str]) -> int:
    import yaml

    path, commit = argv
    openapi = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for name, target in (("ChatRequest", SCHEMA_FILE), ("ChatResult", RESULT_SCHEMA_FILE)):
        document = extract(openapi, commit, name=name)
        target.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

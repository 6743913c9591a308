"""A small JSON Schema validator for the subset our provider contracts use (issue 21).

The simulator checks every chat-completions body against the schema extracted from
OpenRouter's ``openapi/openapi.yaml`` (tests/contract/openrouter/), so a request our client
builds that the real API would refuse fails the test suite instead of production. A full
validator would be a new dependency for a few keywords; this one knows exactly: ``type``
(one or a list), ``properties``, ``required``, ``additionalProperties`` (bool or schema),
``items``, ``minItems``/``maxItems``, ``minLength``/``maxLength``, ``minimum``/``maximum``,
``enum``, ``const``, ``anyOf``, ``oneOf``, ``allOf`` and local ``$ref`` (``#/$defs/…``).
Unknown keywords (``description``, ``format``, ``example``…) are ignored, as the spec says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_MAX_PROBLEMS = 20


def validate(instance: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way `instance` breaks `schema` (empty when it is valid), as ``path: problem``."""
    problems: list[str] = []
    _check(instance, schema, schema, "$", problems)
    return problems[:_MAX_PROBLEMS]


def _type_ok(instance: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(instance, bool):
        return False
    if name == "integer" and isinstance(instance, float):
        return instance.is_integer()
    return isinstance(instance, _TYPES.get(name, (object,)))


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node  # type: ignore[no-any-return]


def _check(  # noqa: C901 - one branch per keyword reads better than a dispatch table here
    instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str, problems: list[str]
) -> None:
    if len(problems) >= _MAX_PROBLEMS:
        return
    if "$ref" in schema:
        _check(instance, _resolve(root, schema["$ref"]), root, path, problems)
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_type_ok(instance, name) for name in names):
            problems.append(f"{path}: expected {' or '.join(names)}, got {type(instance).__name__}")
            return
    if "enum" in schema and instance not in schema["enum"]:
        problems.append(f"{path}: {instance!r} is not one of {schema['enum']!r}")
    if "const" in schema and instance != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}")
    for sub in schema.get("allOf", ()):
        _check(instance, sub, root, path, problems)
    if "anyOf" in schema and not any(_valid(instance, sub, root) for sub in schema["anyOf"]):
        problems.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        matched = sum(_valid(instance, sub, root) for sub in schema["oneOf"])
        if matched != 1:
            problems.append(f"{path}: matches {matched} of oneOf (exactly one needed)")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            problems.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            problems.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            problems.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            problems.append(f"{path}: above {schema['maximum']}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            problems.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            problems.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), Mapping):
            for index, item in enumerate(instance):
                _check(item, schema["items"], root, f"{path}[{index}]", problems)
    if isinstance(instance, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        problems.extend(
            f"{path}: '{name}' is required" for name in schema.get("required", ()) if name not in instance
        )
        extra = schema.get("additionalProperties", True)
        for name, value in instance.items():
            if name in properties:
                _check(value, properties[name], root, f"{path}.{name}", problems)
            elif extra is False:
                problems.append(f"{path}: unexpected property '{name}'")
            elif isinstance(extra, Mapping):
                _check(value, extra, root, f"{path}.{name}", problems)


def _valid(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> bool:
    found: list[str] = []
    _check(instance, schema, root, "$", found)
    return not found

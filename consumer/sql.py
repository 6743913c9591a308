"""Loads the SQL that lives in ``db/``: ordered migrations and named queries.

In a source checkout the files are read from the top-level ``db/`` folder; an installed
wheel carries the same folder as ``consumer/_db`` (see pyproject's force-include).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString

_QUERY_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


def db_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "_db"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "db"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: LiteralString

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """All migrations in version order; a malformed file name is an error, not a skip."""
    found: list[Migration] = []
    for path in sorted((db_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        sql = cast_literal(path.read_text(encoding="utf-8"))
        found.append(Migration(int(match["version"]), match["name"], sql))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise ValueError(f"two migrations share a version number: {versions}")
    return found


# Named-query files, read in this order; a name may be defined only once across all of them.
# The console's and migrate's queries live in their own files so the worker's stay easy to read.
QUERY_FILES = ("queries.sql", "console_queries.sql", "migrate_queries.sql")


@functools.cache
def queries() -> dict[str, LiteralString]:
    """Named queries from ``db/*queries.sql``: each starts with a ``-- name: x`` line."""
    named: dict[str, LiteralString] = {}
    for file_name in QUERY_FILES:
        path = db_dir() / file_name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        headers = list(_QUERY_HEADER.finditer(text))
        for index, header in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            body = text[header.end() : end].strip()
            if header["name"] in named:
                raise ValueError(f"query {header['name']} is defined twice ({file_name})")
            named[header["name"]] = cast_literal(body)
    return named


def query(name: str) -> LiteralString:
    return queries()[name]


def cast_literal(text: str) -> LiteralString:
    """Vetted SQL text that did not come from a literal (a packaged file): say so once, here.

    mypy treats ``LiteralString`` as ``str``; the annotation still documents the promise for
    type checkers that enforce it.
    """
    return text

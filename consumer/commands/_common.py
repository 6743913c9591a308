"""What every command shares: settings from env + flags, logging, the database URL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..logs import configure_logging, register_secret
from ..runtime.embedded import resolve_database_url
from ..settings import Settings

# argparse dest -> Settings field, for flags that override the environment
_COMMON_OVERRIDES = {
    "database_url": "database_url",
    "data_dir": "data_dir",
    "log_json": "log_json",
    "log_level": "log_level",
}


def settings_from(args: argparse.Namespace, **field_for_dest: str) -> Settings:
    """Settings from the environment, overridden by every flag the user actually gave."""
    overrides: dict[str, Any] = {}
    for dest, field in {**_COMMON_OVERRIDES, **field_for_dest}.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[field] = value
    settings = Settings(**overrides)
    configure_logging(json_lines=settings.log_json, level=settings.log_level)
    register_secret(settings.ai_key())
    register_secret(settings.whatsapp_key())
    return settings


def database_url(settings: Settings, *, keep_running: bool = False) -> str:
    return resolve_database_url(settings.database_url, Path(settings.data_dir), keep_running=keep_running)

"""`campaignq` command line: one sub-command per module in `consumer.commands`.

Every failure the user can fix (bad flag, unreachable database, bad config) ends as one
line on stderr and a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from pydantic import ValidationError

from . import __version__
from .errors import CampaignqError, ConfigurationError, DatabaseUnavailableError


class CommandModule(Protocol):
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# Each name is a module in consumer.commands exposing HELP, add_arguments(parser), run(args) -> int.
# A command line that names one imports only that module (issue 15: `campaignq consume` does not
# load the demo, the console or rich); `--help` and mistakes import them all.
COMMANDS = (
    "migrate",
    "produce",
    "consume",
    "pregenerate",
    "replay",
    "stats",
    "prune",
    "limits",
    "demo",
    "simulate",
    "bench",
    "serve",
)


def load_command(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(f"{__package__}.commands.{name}"))


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, CommandModule]]:
    """The parser of every command, or of `only` (enough to parse a line that names it)."""
    parser = argparse.ArgumentParser(
        prog="campaignq",
        description="AI-personalised outbound WhatsApp campaigns on PostgreSQL + PGMQ.",
    )
    parser.add_argument("--version", action="version", version=f"campaignq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules: dict[str, CommandModule] = {}
    for name in (only,) if only else COMMANDS:
        module = modules[name] = load_command(name)
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        add_common_arguments(command_parser)
        module.add_arguments(command_parser)
    return parser, modules


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common")
    group.add_argument("--database-url", help="PostgreSQL URL (env DATABASE_URL); default: embedded server")
    group.add_argument("--data-dir", help="embedded PostgreSQL folder (env CAMPAIGNQ_DATA_DIR, ./.campaignq)")
    group.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    group.add_argument("--log-level", help="DEBUG, INFO, WARNING… (env CAMPAIGNQ_LOG_LEVEL)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only --version and --help come before the command, and neither takes a value.
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    parser, modules = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except KeyboardInterrupt:
        _stderr_line("campaignq: interrupted")
        return 130
    except ValidationError as exc:
        _stderr_line(f"campaignq: error: invalid configuration: {_first_validation_error(exc)}")
        return 2
    except ConfigurationError as exc:
        _stderr_line(f"campaignq: error: {exc}")
        return 2
    except DatabaseUnavailableError as exc:
        _stderr_line(f"campaignq: error: {exc}")
        return 1
    except CampaignqError as exc:
        _stderr_line(f"campaignq: error: {exc}")
        return 1


def _stderr_line(text: str) -> None:
    """One line on stderr in a single write: `print` writes the text and its newline
    separately, so two processes failing together interleaved as "…sendcampaignq: error: …"."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _first_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"{where}: {first['msg']}"


if __name__ == "__main__":
    sys.exit(main())

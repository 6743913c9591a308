"""`campaignq migrate`: install PGMQ, apply ``db/migrations`` in order, optionally schedule.

A hand-written runner rather than yoyo-migrations: yoyo serialises runners with a lock
*table* and leaves PGMQ's install (extension or bundled SQL, decided at run time) outside
its model. Ours is small: one session advisory lock around everything (two migrates at
once queue up, the second finds nothing to do), one transaction per migration, and a
sha256 per applied file so an edited released migration is refused instead of ignored.

Before it changes anything, `migrate` reads which PGMQ the database has and decides
(`decide_pgmq`; the same table is in docs/supabase.md):

===================================  =============================================
PGMQ found                           what migrate does
===================================  =============================================
extension >= 1.4.4 (< 2)             uses it as it is (never updates or alters it)
extension < 1.4.4 or >= 2            stops, one line: ``ALTER EXTENSION pgmq UPDATE``
schema ``pgmq`` without extension    uses it when every function we call is there
(bundled SQL)                        (checked by signature), else stops, one line
none, extension default >= 1.4.4     ``CREATE EXTENSION pgmq VERSION '<default>'``
none, default missing or too old     installs the SQL bundled in the ``pgmq`` package
===================================  =============================================

It needs a direct (session) connection: through a transaction pooler its advisory lock
would not hold, so a pooled URL is refused in one line before connecting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from loguru import logger
from psycopg import sql

from .. import sql as sqlfiles
from ..errors import ConfigurationError, DatabaseUnavailableError, one_line
from ..pooler import PoolerMode, uses_transaction_pooler

# pg_advisory_lock key shared by every `campaignq migrate` (any constant unique to us).
MIGRATION_LOCK_KEY = 0x43414D51  # "CAMQ"
PRODUCER_CRON_JOB = "campaignq-producer"
WORKER_ROLE = "campaignq_worker"  # `consume`, `produce`: only the consumer's definer functions
CONSOLE_ROLE = "campaignq_console"  # `serve`, `replay`, `limits`: the console's reads and actions
READER_ROLE = "campaignq_reader"  # `stats`, dashboards: read-only
# Each role created by `migrate --create-roles`, with the named query that grants it exactly
# its set (db/queries.sql; revoke-then-grant, so re-running converges).
ROLE_GRANTS = (
    (WORKER_ROLE, "grant_worker_role"),
    (CONSOLE_ROLE, "grant_console_role"),
    (READER_ROLE, "grant_reader_role"),
)

# Supported PGMQ: 1.4.4 (what Supabase shipped for a long time) up to the 1.x line. Tested
# in CI at 1.4.4, 1.5.1, 1.4.4 updated to 1.5.1 under a migrated database, and the bundled
# SQL (1.13). Nothing we run depends on a queue table's column list, only on the functions
# below and on the columns msg_id, read_ct, vt, message and archived_at (all in 1.4.4).
PGMQ_MIN_VERSION = (1, 4, 4)
PGMQ_MAX_MAJOR = 1
# Every PGMQ function campaignq calls, as the signatures (any one suffices) that accept our
# call: 1.4.4's send/send_batch end with a defaulted `delay`, 1.5's read with a defaulted
# `conditional`. Checked with to_regprocedure; all of them exist in pgmq--1.4.4.sql.
PGMQ_FUNCTIONS = (
    "pgmq.create(text)",
    "pgmq.read(text,integer,integer)|pgmq.read(text,integer,integer,jsonb)",
    "pgmq.archive(text,bigint)",
    "pgmq.archive(text,bigint[])",
    "pgmq.send(text,jsonb)|pgmq.send(text,jsonb,integer)",
    "pgmq.send_batch(text,jsonb[])|pgmq.send_batch(text,jsonb[],integer)",
    "pgmq.list_queues()",
    "pgmq.metrics(text)",
)
# Released migrations whose text was later corrected, by version: the checksums of the
# superseded texts. A database that applied one of them gets the current file re-applied
# (only allowed for files made of CREATE OR REPLACE statements) and its checksum updated.
SUPERSEDED_CHECKSUMS: dict[int, dict[str, str]] = {
    4: {
        # campaignq_archive_leased listed queue columns of PGMQ >= 1.10 (headers, last_read_at):
        # rewritten to lock the leased row and call pgmq.archive (issue 10).
        "d6f727fa00d55f72c5dd6436d0db43efc499edecdf68501deb619f7d5ed350d8": "archive_leased needed PGMQ 1.10",
    },
}

BUNDLED_NOTE = "PGMQ {} (SQL bundled in the pgmq Python package, installed by campaignq migrate)"
BUNDLED_COMMENT = re.compile(r"^PGMQ (?P<version>[0-9][0-9.]*) \(SQL bundled")

PgmqAction = Literal["use", "create-extension", "bundled-sql"]


@dataclass(frozen=True)
class PgmqFound:
    """What the database has of PGMQ, read before anything is changed."""

    extension_version: str | None  # pg_extension.extversion, None when not an extension
    schema_exists: bool
    missing_functions: tuple[str, ...]  # of PGMQ_FUNCTIONS, when the schema exists
    available_default: str | None  # pg_available_extensions.default_version
    bundled_version: str | None = None  # what our COMMENT ON SCHEMA pgmq records of a bundled install


def decide_pgmq(found: PgmqFound) -> PgmqAction:
    """The decision table of this module's docstring; raises ConfigurationError to stop."""
    if found.extension_version is not None:
        if not _supported(found.extension_version):
            raise ConfigurationError(
                f"PGMQ {found.extension_version} is installed but campaignq needs 1.4.4 or newer (1.x): "
                "run ALTER EXTENSION pgmq UPDATE as the extension's owner, then migrate again"
            )
        if found.missing_functions:
            raise ConfigurationError(
                f"PGMQ {found.extension_version} lacks {', '.join(found.missing_functions)}; "
                "run ALTER EXTENSION pgmq UPDATE as the extension's owner, then migrate again"
            )
        return "use"
    if found.schema_exists:
        if found.bundled_version is not None and not _supported(found.bundled_version):
            raise ConfigurationError(
                f"schema pgmq holds PGMQ {found.bundled_version} (bundled SQL) but campaignq needs 1.4.4 or "
                "newer (1.x): update that PGMQ install, then migrate again"
            )
        if found.missing_functions:
            raise ConfigurationError(
                f"schema pgmq exists without the extension and lacks {', '.join(found.missing_functions)} "
                "(PGMQ older than 1.4.4?): update that PGMQ install to 1.4.4 or newer, then migrate again"
            )
        return "use"
    if found.available_default is not None and _supported(found.available_default):
        return "create-extension"
    return "bundled-sql"


def _supported(version: str) -> bool:
    parts = _version_tuple(version)
    return bool(parts) and PGMQ_MIN_VERSION <= parts and parts[0] <= PGMQ_MAX_MAJOR


@dataclass
class MigrationReport:
    pgmq_installed_by: str | None = None  # "extension", "bundled-sql" or None (already there)
    applied: list[str] = field(default_factory=list)
    reapplied: list[str] = field(default_factory=list)  # superseded migrations brought up to date
    cron_job_id: int | None = None
    roles_created: list[str] = field(default_factory=list)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """The CLI commands' connection. Never prepares statements server-side, so it works the
    same through a transaction-mode pooler (a prepared statement lives on one server
    connection; the pooler may run the next execution on another)."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        reason = (
            " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        )
        raise DatabaseUnavailableError(f"cannot connect to the database: {reason}") from exc


def migrate(
    url: str,
    *,
    schedule_producer: bool = False,
    producer_interval_s: float = 5.0,
    producer_batch_size: int = 5000,
    create_roles: bool = False,
    pooler: PoolerMode = "auto",
) -> MigrationReport:
    if uses_transaction_pooler(pooler, url):
        raise ConfigurationError(
            "migrate needs a direct connection, not a transaction pooler (CAMPAIGNQ_DB_POOLER / port 6543): "
            "use the database's direct connection string (Supabase: port 5432)"
        )
    report = MigrationReport()
    try:
        with connect(url) as conn:
            conn.execute(sqlfiles.query("migrate_lock"), (MIGRATION_LOCK_KEY,))
            try:
                # Everything that can refuse runs before the first change: a database this
                # migrate cannot finish is left exactly as it was.
                action = decide_pgmq(_inspect_pgmq(conn))
                reapply = _check_history(conn)
                _ensure_history_table(conn)
                report.pgmq_installed_by = _ensure_pgmq(conn, action)
                report.reapplied = _reapply_superseded(conn, reapply)
                report.applied = _apply_pending(conn)
                if create_roles:
                    report.roles_created = _create_roles(conn)
                if schedule_producer:
                    report.cron_job_id = _schedule_producer(conn, producer_interval_s, producer_batch_size)
            finally:
                if not conn.closed:
                    conn.execute(sqlfiles.query("migrate_unlock"), (MIGRATION_LOCK_KEY,))
    # What the steps above do not translate themselves, as one line (the CLI prints it).
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            f"migrate lacks a privilege ({exc.diag.message_primary}): run it as the role that owns "
            "the database and its campaignq objects (on Supabase: postgres)"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"lost the database during migrate: {one_line(exc)}") from exc
    except psycopg.Error as exc:
        raise ConfigurationError(f"migrate failed: {exc.diag.message_primary or one_line(exc)}") from exc
    return report


def _ensure_history_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(sqlfiles.query("migrate_history_table"))


def _inspect_pgmq(conn: psycopg.Connection[tuple[object, ...]]) -> PgmqFound:
    ext = conn.execute(sqlfiles.query("pgmq_extension_version")).fetchone()
    schema = conn.execute(sqlfiles.query("pgmq_schema_exists")).fetchone() is not None
    missing: tuple[str, ...] = ()
    if schema:
        missing = tuple(
            str(r[0]) for r in conn.execute(sqlfiles.query("pgmq_missing_functions"), (list(PGMQ_FUNCTIONS),))
        )
    comment = conn.execute(sqlfiles.query("pgmq_schema_comment"))
    note = comment.fetchone()
    bundled = BUNDLED_COMMENT.match(str(note[0])) if note and note[0] else None
    available = conn.execute(sqlfiles.query("pgmq_available_default")).fetchone()
    return PgmqFound(
        extension_version=str(ext[0]) if ext else None,
        schema_exists=schema,
        missing_functions=missing,
        available_default=str(available[0]) if available and available[0] is not None else None,
        bundled_version=bundled["version"] if bundled else None,
    )


def _ensure_pgmq(conn: psycopg.Connection[tuple[object, ...]], action: PgmqAction) -> str | None:
    if action == "use":
        return None
    if action == "create-extension":
        # The version is named: a later default on the server must not change what we get.
        default = conn.execute(sqlfiles.query("pgmq_available_default")).fetchone()
        version = str(default[0]) if default else ""
        try:
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS pgmq VERSION {}").format(sql.Literal(version))
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot create the pgmq extension as {_current_user(conn)} ({exc.diag.message_primary}): "
                "enable it as an administrator (Supabase: Integrations → Queues), then migrate again"
            ) from exc
        logger.info("installed PGMQ {} as an extension", version)
        return "extension"
    from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

    version = get_embedded_sql_version()
    with conn.transaction():
        conn.execute(sqlfiles.cast_literal(get_embedded_install_sql()))
        # The bundled SQL records no version of its own (an extension has pg_extension): keep
        # one where the next migrate reads it.
        conn.execute(
            sql.SQL("COMMENT ON SCHEMA pgmq IS {}").format(sql.Literal(BUNDLED_NOTE.format(version)))
        )
    logger.info("installed PGMQ {} from the SQL bundled in the pgmq package", version)
    return "bundled-sql"


def _check_history(conn: psycopg.Connection[tuple[object, ...]]) -> list[sqlfiles.Migration]:
    """Refuses an edited migration; returns the superseded ones to re-apply. Reads only."""
    history = conn.execute(sqlfiles.query("migrate_history_exists")).fetchone()
    applied: dict[int, str] = {}
    if history is not None and history[0] is not None:
        applied = {
            int(str(version)): str(checksum)
            for version, checksum in conn.execute(sqlfiles.query("migrate_history_checksums"))
        }
    reapply: list[sqlfiles.Migration] = []
    for migration in sqlfiles.migrations():
        checksum = applied.get(migration.version)
        if checksum is None or checksum == migration.checksum:
            continue
        if checksum in SUPERSEDED_CHECKSUMS.get(migration.version, {}):
            reapply.append(migration)
            continue
        raise ConfigurationError(
            f"migration {migration.version:04d}_{migration.name} was edited after it was applied; "
            "add a new migration instead"
        )
    return reapply


def _reapply_superseded(
    conn: psycopg.Connection[tuple[object, ...]], migrations: list[sqlfiles.Migration]
) -> list[str]:
    done: list[str] = []
    for migration in migrations:
        _run_migration(conn, migration, update=True)
        label = f"{migration.version:04d}_{migration.name}"
        logger.info("re-applied migration {} (its released text was superseded)", label)
        done.append(label)
    return done


def _run_migration(
    conn: psycopg.Connection[tuple[object, ...]], migration: sqlfiles.Migration, *, update: bool
) -> None:
    label = f"{migration.version:04d}_{migration.name}"
    try:
        with conn.transaction():
            conn.execute(migration.sql)
            if update:
                conn.execute(
                    sqlfiles.query("migrate_history_update"), (migration.checksum, migration.version)
                )
            else:
                conn.execute(
                    sqlfiles.query("migrate_history_insert"),
                    (migration.version, migration.name, migration.checksum),
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            f"migration {label} needs a privilege {_current_user(conn)} lacks ({exc.diag.message_primary}); "
            "it was rolled back"
        ) from exc
    except psycopg.DatabaseError as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise DatabaseUnavailableError(f"migration {label} was interrupted: {one_line(exc)}") from exc
        raise ConfigurationError(
            f"migration {label} failed and was rolled back: {exc.diag.message_primary or one_line(exc)}"
        ) from exc


def _apply_pending(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    applied = {int(str(r[0])) for r in conn.execute(sqlfiles.query("migrate_history_versions"))}
    done: list[str] = []
    for migration in sqlfiles.migrations():
        if migration.version in applied:
            continue
        _run_migration(conn, migration, update=False)
        label = f"{migration.version:04d}_{migration.name}"
        logger.info("applied migration {}", label)
        done.append(label)
    return done


def _current_user(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute(sqlfiles.query("migrate_current_user")).fetchone()
    return str(row[0]) if row else "this role"


def _schedule_producer(
    conn: psycopg.Connection[tuple[object, ...]], interval_s: float, batch_size: int
) -> int:
    if not conn.execute(sqlfiles.query("pg_cron_installed")).fetchone():
        if not conn.execute(sqlfiles.query("pg_cron_available")).fetchone():
            raise ConfigurationError(
                "pg_cron is not available on this server; run `campaignq produce --every 5s` instead"
            )
        try:
            conn.execute(sqlfiles.query("pg_cron_create"))
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"cannot enable pg_cron here ({exc.diag.message_primary}); it must be in "
                "shared_preload_libraries and this must be its cron.database_name"
            ) from exc
    seconds = max(1, min(59, round(interval_s)))
    version = conn.execute(sqlfiles.query("pg_cron_version")).fetchone()
    if version is not None and _version_tuple(str(version[0])) >= (1, 5):
        schedule = f"{seconds} seconds"
        command = sql.SQL("SELECT enqueue_due_campaign_messages({})").format(sql.Literal(batch_size))
    else:  # pg_cron < 1.5 has no second-level schedules: a one-minute tick that loops inside
        schedule = "* * * * *"
        command = sql.SQL("CALL campaignq_run_producer({}, {}, 55)").format(
            sql.Literal(batch_size), sql.Literal(seconds)
        )
    try:
        row = conn.execute(
            sqlfiles.query("pg_cron_schedule"),
            (PRODUCER_CRON_JOB, schedule, command.as_string(conn)),
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            f"cannot schedule the producer with pg_cron as {_current_user(conn)} "
            f"({exc.diag.message_primary}); grant it USAGE on schema cron or run `campaignq produce` instead"
        ) from exc
    if row is None:
        raise ConfigurationError("cron.schedule returned no job id")
    job_id = int(str(row[0]))
    logger.info("scheduled the producer with pg_cron every {} s (job {})", seconds, job_id)
    return job_id


def _create_roles(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Create the missing roles (LOGIN, no password: set one with ALTER ROLE) and grant each
    its set, all in one transaction. Needs CREATEROLE, not superuser (Supabase's postgres)."""
    created: list[str] = []
    role = WORKER_ROLE
    try:
        with conn.transaction():
            for role, grants in ROLE_GRANTS:
                if not conn.execute(sqlfiles.query("migrate_role_exists"), (role,)).fetchone():
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
                    created.append(role)
                conn.execute(sqlfiles.query(grants))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            f"cannot create or grant the {role} role as {_current_user(conn)} "
            f"({exc.diag.message_primary}); it needs CREATEROLE — the migration itself is done, "
            "run every process as this role instead"
        ) from exc
    return created


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())

"""`campaignq migrate`: install PGMQ, apply ``db/migrations`` in order, optionally schedule.

A hand-written runner rather than yoyo-migrations: yoyo serialises runners with a lock
*table* and leaves PGMQ's install (extension or bundled SQL, decided at run time) outside
its model. Ours is ~100 lines: one session advisory lock around everything (two migrates at
once queue up, the second finds nothing to do), one transaction per migration, and a
sha256 per applied file so an edited released migration is refused instead of ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from loguru import logger
from psycopg import sql

from . import sql as sqlfiles
from .errors import ConfigurationError, DatabaseUnavailableError

# pg_advisory_lock key shared by every `campaignq migrate` (any constant unique to us).
MIGRATION_LOCK_KEY = 0x43414D51  # "CAMQ"
PRODUCER_CRON_JOB = "campaignq-producer"
WORKER_ROLE = "campaignq_worker"


@dataclass
class MigrationReport:
    pgmq_installed_by: str | None = None  # "extension", "bundled-sql" or None (already there)
    applied: list[str] = field(default_factory=list)
    cron_job_id: int | None = None
    roles_created: list[str] = field(default_factory=list)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
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
) -> MigrationReport:
    report = MigrationReport()
    with connect(url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            _ensure_history_table(conn)
            report.pgmq_installed_by = _ensure_pgmq(conn)
            report.applied = _apply_pending(conn)
            if create_roles:
                report.roles_created = _create_worker_role(conn)
            if schedule_producer:
                report.cron_job_id = _schedule_producer(conn, producer_interval_s, producer_batch_size)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return report


def _ensure_history_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS campaignq_schema_migrations (
               version     integer PRIMARY KEY,
               name        text NOT NULL,
               checksum    text NOT NULL,
               applied_at  timestamptz NOT NULL DEFAULT now())"""
    )


def _ensure_pgmq(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'").fetchone():
        return None
    if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'").fetchone():
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
        logger.info("installed PGMQ as an extension")
        return "extension"
    from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

    with conn.transaction():
        conn.execute(sqlfiles.cast_literal(get_embedded_install_sql()))
    logger.info("installed PGMQ {} from the SQL bundled in the pgmq package", get_embedded_sql_version())
    return "bundled-sql"


def _apply_pending(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    applied = {
        int(str(version)): str(checksum)
        for version, checksum in conn.execute("SELECT version, checksum FROM campaignq_schema_migrations")
    }
    done: list[str] = []
    for migration in sqlfiles.migrations():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise ConfigurationError(
                    f"migration {migration.version:04d}_{migration.name} was edited after it was applied; "
                    "add a new migration instead"
                )
            continue
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO campaignq_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        label = f"{migration.version:04d}_{migration.name}"
        logger.info("applied migration {}", label)
        done.append(label)
    return done


def _schedule_producer(
    conn: psycopg.Connection[tuple[object, ...]], interval_s: float, batch_size: int
) -> int:
    if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'").fetchone():
        if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'").fetchone():
            raise ConfigurationError(
                "pg_cron is not available on this server; run `campaignq produce --every 5s` instead"
            )
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"cannot enable pg_cron here ({exc.diag.message_primary}); it must be in "
                "shared_preload_libraries and this must be its cron.database_name"
            ) from exc
    seconds = max(1, min(59, round(interval_s)))
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    if version is not None and _version_tuple(str(version[0])) >= (1, 5):
        schedule = f"{seconds} seconds"
        command = sql.SQL("SELECT enqueue_due_campaign_messages({})").format(sql.Literal(batch_size))
    else:  # pg_cron < 1.5 has no second-level schedules: a one-minute tick that loops inside
        schedule = "* * * * *"
        command = sql.SQL("CALL campaignq_run_producer({}, {}, 55)").format(
            sql.Literal(batch_size), sql.Literal(seconds)
        )
    row = conn.execute(
        "SELECT cron.schedule(%s, %s, %s)",
        (PRODUCER_CRON_JOB, schedule, command.as_string(conn)),
    ).fetchone()
    if row is None:
        raise ConfigurationError("cron.schedule returned no job id")
    job_id = int(str(row[0]))
    logger.info("scheduled the producer with pg_cron every {} s (job {})", seconds, job_id)
    return job_id


def _create_worker_role(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(WORKER_ROLE)))
        conn.execute(sqlfiles.query("grant_worker_role"))
    return [] if exists else [WORKER_ROLE]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())

"""Whether a database URL goes through a transaction-mode connection pooler.

Supabase's pooler in transaction mode (Supavisor, port 6543) and PgBouncer with
``pool_mode = transaction`` hand each *transaction* to whichever server connection is free.
What lives longer than one transaction is lost or, worse, lands on another client's
session: server-side prepared statements (psycopg prepares a query after 5 executions),
session advisory locks, plain ``SET``, ``LISTEN`` and startup ``options``. campaignq then
runs without them: no prepared statements, settings with ``set_config(..., true)`` (that
is ``SET LOCAL``) inside each statement's transaction, and polling instead of LISTEN.

A pooler cannot be recognised reliably from the client side (it speaks the server's
protocol), so the decision is the setting ``CAMPAIGNQ_DB_POOLER``: ``transaction``,
``none``, or ``auto`` (the default), which means "transaction" only for Supabase's
transaction-pooler port 6543.
"""

from __future__ import annotations

from typing import Literal

from psycopg.conninfo import conninfo_to_dict

PoolerMode = Literal["auto", "none", "transaction"]

SUPABASE_TRANSACTION_POOLER_PORT = 6543


def uses_transaction_pooler(mode: PoolerMode, url: str) -> bool:
    """True when connections to `url` must be treated as transaction-pooled."""
    if mode == "transaction":
        return True
    if mode == "none":
        return False
    try:
        port = str(conninfo_to_dict(url).get("port") or "")
    except Exception:  # a malformed URL fails later with the driver's own clear message
        return False
    return port.split(",")[0] == str(SUPABASE_TRANSACTION_POOLER_PORT)

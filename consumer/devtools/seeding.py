"""One way to seed a campaign — inbox → config → run → leads → messages — for the demo,
the benchmarks and the tests.

Inserts contract rows with only the columns the contract names, as the application that
owns campaigns would; `Seeder.campaign` does all five steps, the others one each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


@dataclass
class Campaign:
    workspace_id: uuid.UUID
    inbox_id: uuid.UUID
    config_id: uuid.UUID
    run_id: uuid.UUID
    lead_ids: list[uuid.UUID] = field(default_factory=list)
    message_ids: list[uuid.UUID] = field(default_factory=list)


class Seeder:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def inbox(
        self,
        workspace_id: uuid.UUID,
        instance: str = "inst-1",
        *,
        name: str | None = None,
        max_sends_per_minute: int | None = None,
    ) -> uuid.UUID:
        if max_sends_per_minute is None:
            return self._id(
                "INSERT INTO inboxes (workspace_id, name, provider, instance) "
                "VALUES (%s, %s, 'evolution', %s) RETURNING id",
                (workspace_id, name or f"inbox {instance}", instance),
            )
        return self._id(
            "INSERT INTO inboxes (workspace_id, name, provider, instance, max_sends_per_minute) "
            "VALUES (%s, %s, 'evolution', %s, %s) RETURNING id",
            (workspace_id, name or f"inbox {instance}", instance, max_sends_per_minute),
        )

    def config(
        self,
        workspace_id: uuid.UUID,
        inbox_id: uuid.UUID,
        *,
        split: bool = False,
        max_parts: int = 3,
        model: str = "test/model",
        prompt: str = "You write short friendly WhatsApp messages.",
        name: str = "campaign",
    ) -> uuid.UUID:
        return self._id(
            "INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id, "
            "split_messages, max_parts) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (workspace_id, name, model, prompt, inbox_id, split, max_parts),
        )

    def run(
        self,
        config_id: uuid.UUID,
        *,
        status: str = "running",
        leads_total: int = 0,
        run_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """A run; `run_id` fixes its id (the database makes one otherwise)."""
        return self._id(
            "INSERT INTO campaign_runs (id, config_id, status, leads_total, leads_processed, started_at) "
            "VALUES (coalesce(%s, gen_random_uuid()), %s, %s, %s, 0, now()) RETURNING id",
            (run_id, config_id, status, leads_total),
        )

    def leads(
        self,
        workspace_id: uuid.UUID,
        n: int,
        *,
        phones: Sequence[str | None] | None = None,
        custom_fields: dict[str, Any] | None = None,
        names: Sequence[str] | None = None,
        fields: Sequence[dict[str, Any]] | None = None,
    ) -> list[uuid.UUID]:
        """`n` leads; `names` and per-lead `fields` (else 'Lead N' and `custom_fields` for all)."""
        phones = phones if phones is not None else [f"+5511{9000_0000 + i:08d}" for i in range(n)]
        names = names if names is not None else [f"Lead {i + 1}" for i in range(n)]
        shared = custom_fields or {"city": "São Paulo"}
        fields = fields if fields is not None else [shared] * n
        rows = self.conn.execute(
            "INSERT INTO leads (workspace_id, name, phone, custom_fields) "
            "SELECT %s, name, phone, custom_fields "
            "  FROM unnest(%s::text[], %s::text[], %s::jsonb[]) WITH ORDINALITY "
            "       AS t(name, phone, custom_fields, ord) "
            " ORDER BY ord RETURNING id",
            (workspace_id, list(names), list(phones), [Jsonb(f) for f in fields]),
        ).fetchall()
        return [r[0] for r in rows]

    def messages(
        self,
        run_id: uuid.UUID,
        lead_ids: list[uuid.UUID],
        *,
        status: str = "pending",
        scheduled_offset: timedelta = timedelta(minutes=-1),
    ) -> list[uuid.UUID]:
        rows = self.conn.execute(
            "INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at) "
            "SELECT %s, lead_id, %s, now() + %s FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(lead_id, ord) "
            "ORDER BY ord RETURNING id",
            (run_id, status, scheduled_offset, lead_ids),
        ).fetchall()
        return [r[0] for r in rows]

    def campaign(
        self,
        n: int = 5,
        *,
        split: bool = False,
        max_parts: int = 3,
        run_status: str = "running",
        instance: str = "inst-1",
        model: str = "test/model",
        prompt: str = "You write short friendly WhatsApp messages.",
        phones: Sequence[str | None] | None = None,
        scheduled_offset: timedelta = timedelta(minutes=-1),
        workspace_id: uuid.UUID | None = None,
    ) -> Campaign:
        workspace_id = workspace_id or uuid.uuid4()
        inbox_id = self.inbox(workspace_id, instance)
        config_id = self.config(
            workspace_id, inbox_id, split=split, max_parts=max_parts, model=model, prompt=prompt
        )
        run_id = self.run(config_id, status=run_status, leads_total=n)
        lead_ids = self.leads(workspace_id, n, phones=phones)
        message_ids = self.messages(run_id, lead_ids, scheduled_offset=scheduled_offset)
        return Campaign(workspace_id, inbox_id, config_id, run_id, lead_ids, message_ids)

    def statuses(self, run_id: uuid.UUID | None = None) -> dict[str, int]:
        if run_id is None:
            rows = self.conn.execute(
                "SELECT status, count(*) FROM campaign_messages GROUP BY status"
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT status, count(*) FROM campaign_messages WHERE run_id = %s GROUP BY status", (run_id,)
            ).fetchall()
        return {str(s): int(c) for s, c in rows}

    def _id(self, statement: Any, params: tuple[Any, ...]) -> uuid.UUID:
        row = self.conn.execute(statement, params).fetchone()
        if row is None:  # pragma: no cover - INSERT … RETURNING always returns the row
            raise RuntimeError("an INSERT … RETURNING id returned nothing")
        return uuid.UUID(str(row[0]))

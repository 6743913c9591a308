"""`campaignq replay` on a real PostgreSQL + PGMQ: filters, dry run, twice, rows gone or sent."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.cli import main as cli_main
from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.ops.replay import ReplayFilters, replay_dead_letters
from tests.cli import run_cli
from tests.harness import consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import _phones, produce, terminal

CONTRACT_KEYS = {"v", "campaign_message_id", "run_id", "lead_id"}


def dead_letter_all(
    db: psycopg.Connection[Any], reasons: dict[uuid.UUID, tuple[str, str]] | None = None
) -> dict[uuid.UUID, int]:
    """Queue every due row and dead-letter each through the consumer's own SQL function.

    `reasons` maps a message id to (reason, error_class); others get max_attempts/timeout.
    Returns the DLQ msg_id of each message.
    """
    produce(db)
    reasons = reasons or {}
    read = db.execute(
        "SELECT msg_id, read_ct, (message->>'campaign_message_id')::uuid "
        "FROM pgmq.read('campaign_messages', 30, 10000) ORDER BY msg_id"
    ).fetchall()
    letters: dict[uuid.UUID, int] = {}
    for msg_id, read_ct, message_id in read:
        reason, error_class = reasons.get(message_id, ("max_attempts", "timeout"))
        row = db.execute(
            "SELECT campaignq_dead_letter(%s, %s, %s, %s, %s, 'simulated failure', 'generate', true)",
            (msg_id, read_ct, message_id, reason, error_class),
        ).fetchone()
        assert row is not None and row[0] is not None
        letters[message_id] = int(row[0])
    return letters


def queue_payloads(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [r[0] for r in db.execute("SELECT message FROM pgmq.q_campaign_messages ORDER BY msg_id")]


def dlq_ids(db: psycopg.Connection[Any]) -> set[int]:
    return {int(r[0]) for r in db.execute("SELECT msg_id FROM pgmq.q_campaign_messages_dlq")}


def archived_dlq_ids(db: psycopg.Connection[Any]) -> set[int]:
    return {int(r[0]) for r in db.execute("SELECT msg_id FROM pgmq.a_campaign_messages_dlq")}


def row(db: psycopg.Connection[Any], message_id: uuid.UUID) -> dict[str, Any]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    found = cur.execute("SELECT * FROM campaign_messages WHERE id = %s", (message_id,)).fetchone()
    assert found is not None
    return found


def run_row(db: psycopg.Connection[Any], run_id: uuid.UUID) -> tuple[Any, ...]:
    found = db.execute(
        "SELECT status, leads_processed, finished_at FROM campaign_runs WHERE id = %s", (run_id,)
    ).fetchone()
    assert found is not None
    return tuple(found)


def replay(database_url: str, dry_run: bool = False, batch_size: int = 500, **filters: Any) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return replay_dead_letters(conn, ReplayFilters(**filters), dry_run=dry_run, batch_size=batch_size)


def ids(letters: Iterable[Any]) -> set[uuid.UUID]:
    return {letter.campaign_message_id for letter in letters}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=5)) as simulator:
        yield simulator


async def test_replay_resets_attempts_keeps_generation_and_a_consumer_finishes_the_job(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str, sim: Simulator
) -> None:
    campaign = seed.campaign(3, split=True)
    partial = campaign.message_ids[0]
    parts = ["Hello Ana, the first bubble went out.", "This second bubble never did."]
    db.execute(
        "UPDATE campaign_messages SET generated_message = %s, parts = %s, parts_sent = 1, "
        "deferral_count = 2, first_deferred_at = now() WHERE id = %s",
        (" ".join(parts), Jsonb(parts), partial),
    )
    letters = dead_letter_all(db)
    assert run_row(db, campaign.run_id)[:2] == ("completed", 3)  # every row failed: run finalised

    report = replay(database_url)

    assert [letter.action for letter in report.letters] == ["replayed"] * 3
    assert dlq_ids(db) == set() and archived_dlq_ids(db) == set(letters.values())
    payloads = queue_payloads(db)
    assert all(set(p) == CONTRACT_KEYS and p["v"] == 1 for p in payloads)
    assert {uuid.UUID(p["campaign_message_id"]) for p in payloads} == set(campaign.message_ids)
    kept = row(db, partial)
    assert (kept["status"], kept["retry_count"], kept["deferral_count"], kept["first_deferred_at"]) == (
        "queued",
        0,
        0,
        None,
    )
    assert (kept["parts"], kept["parts_sent"], kept["finished_at"]) == (parts, 1, None)
    assert kept["attempt_history"][-1]["outcome"] == "replayed"
    status, processed, finished_at = run_row(db, campaign.run_id)
    assert (status, processed, finished_at) == ("running", 0, None)  # reopened, counters given back

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="replayed messages sent")

    assert seed.statuses(campaign.run_id) == {"sent": 3}
    assert run_row(db, campaign.run_id)[:2] == ("completed", 3)
    phone = _phones(db, campaign)[0]
    assert [s.text for s in sim.sends_to(phone)] == parts[1:]  # only the part never acknowledged
    generated = [r for r in sim.ai_requests if r.kind in ("generate", "structured")]
    assert len(generated) == 2  # the two others were generated; the partial one was not
    assert sim.duplicate_sends() == []


def test_each_filter_selects_only_its_letters(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    first = seed.campaign(4)
    second = seed.campaign(2)
    permanent = {first.message_ids[0]: ("permanent", "provider_rejected")}
    letters = dead_letter_all(db, permanent)
    old_letter = letters[first.message_ids[1]]
    db.execute(
        "UPDATE pgmq.q_campaign_messages_dlq SET enqueued_at = now() - interval '3 hours' WHERE msg_id = %s",
        (old_letter,),
    )
    everything = set(first.message_ids) | set(second.message_ids)

    by_run = replay(database_url, dry_run=True, run_id=second.run_id)
    by_reason = replay(database_url, dry_run=True, reason="permanent")
    older = replay(database_url, dry_run=True, older_than_s=3600)
    newer = replay(database_url, dry_run=True, newer_than_s=3600)
    limited = replay(database_url, dry_run=True, limit=4, batch_size=3)  # spans two batches
    combined = replay(
        database_url, dry_run=True, run_id=first.run_id, reason="max_attempts", newer_than_s=3600
    )

    assert ids(by_run.replayed) == set(second.message_ids)
    assert ids(by_reason.replayed) == {first.message_ids[0]}
    assert ids(older.replayed) == {first.message_ids[1]}
    assert ids(newer.replayed) == everything - {first.message_ids[1]}
    assert [letter.dlq_msg_id for letter in limited.letters] == sorted(letters.values())[:4]
    assert ids(combined.replayed) == set(first.message_ids[2:])
    assert dlq_ids(db) == set(letters.values())  # dry runs changed nothing

    moved = replay(database_url, run_id=second.run_id)

    assert ids(moved.replayed) == set(second.message_ids)
    assert dlq_ids(db) == {letters[m] for m in first.message_ids}
    assert seed.statuses(second.run_id) == {"queued": 2}
    assert seed.statuses(first.run_id) == {"failed": 4}


def _snapshot(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    return (
        db.execute("SELECT * FROM campaign_messages ORDER BY id").fetchall(),
        db.execute(
            "SELECT id, status, leads_processed, finished_at FROM campaign_runs ORDER BY id"
        ).fetchall(),
        db.execute("SELECT msg_id, message FROM pgmq.q_campaign_messages ORDER BY msg_id").fetchall(),
        db.execute("SELECT msg_id, message FROM pgmq.q_campaign_messages_dlq ORDER BY msg_id").fetchall(),
        db.execute("SELECT count(*) FROM pgmq.a_campaign_messages_dlq").fetchall(),
    )


def test_dry_run_cli_prints_counts_by_reason_and_run_and_changes_nothing(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    campaign = seed.campaign(3)
    dead_letter_all(db, {campaign.message_ids[0]: ("permanent", "invalid_lead")})
    before = _snapshot(db)

    result = run_cli("replay", "--dry-run", database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert _snapshot(db) == before
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: nothing was changed"
    assert lines[1] == "would replay 3 dead letter(s) to campaign_messages"
    assert lines[3].split() == ["2", "max_attempts", str(campaign.run_id)]
    assert lines[4].split() == ["1", "permanent", str(campaign.run_id)]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--run", "not-a-uuid"], "argument --run: invalid UUID value"),
        (["--older-than", "5 parsecs"], "argument --older-than: not a duration"),
        (["--limit", "0"], "argument --limit: must be a positive integer"),
    ],
)
def test_cli_rejects_bad_filters_with_one_line(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["replay", *args])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"campaignq replay: error: {complaint}")


def test_replaying_twice_or_concurrently_never_duplicates(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    campaign = seed.campaign(30)
    letters = dead_letter_all(db)

    results: list[Any] = []

    def worker() -> None:
        results.append(replay(database_url, batch_size=2))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    again = replay(database_url)

    replayed = [letter for report in results for letter in report.replayed]
    assert sorted(letter.dlq_msg_id for letter in replayed) == sorted(letters.values())
    assert again.letters == []
    payloads = queue_payloads(db)
    assert Counter(p["campaign_message_id"] for p in payloads) == Counter(
        str(m) for m in campaign.message_ids
    )
    assert seed.statuses(campaign.run_id) == {"queued": 30}
    assert run_row(db, campaign.run_id)[:2] == ("running", 0)


def test_letters_whose_row_is_gone_sent_or_in_flight_are_archived_never_resent(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    campaign = seed.campaign(4)
    gone, sent, in_flight, fine = campaign.message_ids
    letters = dead_letter_all(db)
    db.execute("DELETE FROM campaign_messages WHERE id = %s", (gone,))
    db.execute("UPDATE campaign_messages SET status = 'sent', sent_at = now() WHERE id = %s", (sent,))
    db.execute("UPDATE campaign_messages SET status = 'queued' WHERE id = %s", (in_flight,))
    garbage = db.execute(
        "SELECT pgmq.send('campaign_messages_dlq', %s)",
        (
            Jsonb(
                {"original": "not a payload", "reason": "invalid_payload", "error_class": "invalid_payload"}
            ),
        ),
    ).fetchone()
    assert garbage is not None

    report = replay(database_url)

    actions = {letter.dlq_msg_id: letter.action for letter in report.letters}
    assert actions == {
        letters[gone]: "archived_missing",
        letters[sent]: "archived_sent",
        letters[in_flight]: "archived_in_flight",
        letters[fine]: "replayed",
        int(garbage[0]): "archived_missing",
    }
    assert dlq_ids(db) == set()
    assert archived_dlq_ids(db) == set(actions)
    assert [p["campaign_message_id"] for p in queue_payloads(db)] == [str(fine)]
    assert row(db, sent)["status"] == "sent"

    cli = run_cli("replay", database_url=database_url)
    assert cli.returncode == 0 and cli.stdout.strip() == "no dead letters match"


def test_letters_of_paused_runs_stay_in_the_dlq_until_the_run_resumes(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    campaign = seed.campaign(2)
    letters = dead_letter_all(db)
    db.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (campaign.run_id,))

    kept = replay(database_url)

    assert {letter.action for letter in kept.letters} == {"kept_run_paused"}
    assert dlq_ids(db) == set(letters.values()) and queue_payloads(db) == []
    assert seed.statuses(campaign.run_id) == {"failed": 2}

    db.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (campaign.run_id,))
    resumed = replay(database_url)

    assert {letter.action for letter in resumed.letters} == {"replayed"}
    assert len(queue_payloads(db)) == 2

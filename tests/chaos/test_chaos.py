"""The contract's Invariants under faults: 2,000 messages, real processes, a hostile world.

One producer (`campaignq produce --every 1s`) and two `campaignq consume` processes work
through two runs of 1,000 messages (one split into bubbles) while the simulator, in its own
process, injects 5 % AI 429 with Retry-After, 3 % AI 5xx, 2 % AI hangs past the timeout,
1 % permanent 400 (leads not on WhatsApp), 2 % unusable split answers, 1 % gateway 502
pages, 3 % sends the gateway accepts and then never answers (`hang_after_accept`: the
ambiguous timeout) and 2 % findMessages calls that fail; the gateway files the split run's
Brazilian numbers under Evolution's jid, without the 9th digit (`br_jid_rewrite`, issue 21).
During the run, in this order: the split run is paused for a few seconds and resumed; one
inbox disconnects for a few seconds; one consumer is SIGKILLed and a new one started; the
PostgreSQL server is stopped, kept down for longer than the visibility timeout while parts
are being sent, and started again (every connection dies and every lease expires; nobody
may exit). Then every Invariant is checked, faults are turned off and `campaignq replay`
must drive the dead-letter queue to zero.

Duplicates: none, whatever the fault (issue 9). A send whose answer never came is recorded
*uncertain* and reconciled with the gateway's message list before any resend; a holder that
stopped mid-message (SIGKILL, or a lease that ran out while the database was down) leaves
its row `sending`, and the next holder reconciles its next part the same way — which also
closes the window between the gateway's answer and our commit, the one a SIGKILL used to
turn into a duplicate. No worker sends a part unless its lease has room for the whole send,
so an old holder never sends after a new one took over. The run measures that
answer-to-commit window (consumer metric `campaignq_ack_record_seconds`) and counts the parts
reconciled via the gateway; the summary is written to build/test-artifacts/chaos_summary.json
(`python -m bench.publish` copies it into bench/out/).

Deselect locally with ``-m "not chaos"``; `.ci/run` runs it once per build. The figures are
printed at the end of the session (tests/chaos/conftest.py).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from consumer.devtools.processes import Child, Simulator, simulator_env
from consumer.devtools.seeding import Seeder
from tests.artifacts import artifact
from tests.chaos.tools import Restart, can_restart_server, processes, restart_server
from tests.cli import run_cli, spawn_logged
from tests.harness import AI_KEY, WHATSAPP_KEY

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

MESSAGES_PER_RUN = 1000
TOTAL = 2 * MESSAGES_PER_RUN
CONCURRENCY = 16
VISIBILITY_TIMEOUT_S = 8
OUTAGE_S = VISIBILITY_TIMEOUT_S + 2.0  # every lease held when the server stops runs out
SUMMARY = artifact("chaos_summary.json")  # published into bench/out by `python -m bench.publish`
REJECTED_PER_RUN = 10  # 1 % permanent 400: "not on WhatsApp"
SCHEDULE_SPREAD_S = 15.0  # due times spread so the producer keeps working through the faults
# A duplicate's first copy must have been accepted between this long before the SIGKILL and
# shortly after it (a request already on the wire when the process died is still accepted).
KILL_WINDOW_BEFORE_S = 10.0
KILL_WINDOW_AFTER_S = 2.0
FIGURES: dict[str, Any] = {}  # printed in the terminal summary (tests/chaos/conftest.py)

CHAOS_FAULTS: dict[str, Any] = {
    "ai_latency_s": 0.05,
    "ai_latency_jitter_s": 0.04,
    "send_latency_s": 0.02,
    "hang_s": 4.0,  # past the 1.5 s AI timeout below
    "ai_rate_limited_p": 0.05,
    "ai_retry_after_s": 0.5,
    "ai_server_error_p": 0.03,
    "ai_hang_p": 0.02,
    "split_bad_json_p": 0.02,
    "send_server_error_p": 0.01,
    "send_hang_after_accept_p": 0.03,  # accepted, then no answer before the 2 s send timeout
    "find_unavailable_p": 0.02,
    "br_jid_rewrite": True,  # issue 21: sends filed under Evolution's jid, with the hung sends above
}
NO_FAULTS: dict[str, Any] = {
    **{key: 0.0 for key in CHAOS_FAULTS if key.endswith("_p")},
    "reject_phones": [],
    "disconnected_instances": [],
}
CONSUMER_ENV = {
    "CAMPAIGNQ_CONCURRENCY": str(CONCURRENCY),
    "CAMPAIGNQ_BATCH_SIZE": str(CONCURRENCY),
    "CAMPAIGNQ_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "CAMPAIGNQ_AI_TIMEOUT_S": "1.5",
    "CAMPAIGNQ_SPLIT_TIMEOUT_S": "1.5",
    "CAMPAIGNQ_SEND_TIMEOUT_S": "2",
    "CAMPAIGNQ_AI_REQUESTS_PER_MINUTE": "60000",
    "CAMPAIGNQ_AI_BREAKER_COOLDOWN_S": "1",
    "CAMPAIGNQ_INBOX_BREAKER_COOLDOWN_S": "1",
    "CAMPAIGNQ_INBOX_STATE_TTL_S": "0.5",
    "CAMPAIGNQ_POLL_INTERVAL_S": "0.2",
    "CAMPAIGNQ_BACKOFF_BASE_S": "0.2",
    "CAMPAIGNQ_BACKOFF_MAX_S": "2",
    "CAMPAIGNQ_TYPING_DELAY_CAP_S": "0",
    "CAMPAIGNQ_DRAIN_TIMEOUT_S": "20",
}


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    events: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        now = time.time()
        self.events.append((now - self.started, what))
        print(f"[chaos +{now - self.started:6.1f}s] {what}", flush=True)
        return now


class Probe:
    """Short-lived connections: the server restarts under our feet, a kept one would die."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, statement: Any, params: Any = None) -> list[dict[str, Any]]:
        for attempt in range(60):
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    return conn.cursor(row_factory=dict_row).execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def statuses(self) -> dict[str, int]:
        rows = self.rows("SELECT status, count(*) AS n FROM campaign_messages GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) AS n FROM pgmq.{table}")[0]["n"])

    def with_history(self, error_class: str) -> set[uuid.UUID]:
        """Messages whose attempt history holds an entry of this error class."""
        rows = self.rows(
            "SELECT id FROM campaign_messages WHERE attempt_history @> jsonb_build_array(jsonb_build_object("
            "'error_class', %s::text))",
            (error_class,),
        )
        return {r["id"] for r in rows}


def wait_for(
    what: str, predicate: Callable[[], bool], *, timeout_s: float, watch: list[Child], probe: Probe
) -> None:
    """Poll until `predicate`; every watched process must stay alive meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for proc in watch:
            assert proc.alive(), f"{proc.name} exited ({proc.process.returncode}):\n{proc.log()[-3000:]}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; statuses {probe.statuses()}")
        time.sleep(0.25)


def digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


def seed_campaigns(db: psycopg.Connection[Any]) -> tuple[uuid.UUID, list[str]]:
    """Two runs (the second split into up to 3 bubbles); returns the split run and the phones
    the gateway will reject as not on WhatsApp."""
    seeder = Seeder(db)
    plain_phones = [f"+5511{9100_0000 + i:08d}" for i in range(MESSAGES_PER_RUN)]
    # Belo Horizonte mobiles (DDD 31, 9 + 8xxxxxxx): with `br_jid_rewrite` the gateway files
    # them under createJid's form without the 9th digit, as Evolution 2.3 does (issue 21).
    split_phones = [f"+55319{8200_0000 + i:08d}" for i in range(MESSAGES_PER_RUN)]
    seeder.campaign(MESSAGES_PER_RUN, instance="chaos-plain", phones=list(plain_phones))
    split = seeder.campaign(
        MESSAGES_PER_RUN, split=True, max_parts=3, instance="chaos-split", phones=list(split_phones)
    )
    # Due over the next seconds, so the producer still has work when the faults hit.
    db.execute(
        "UPDATE campaign_messages m SET scheduled_at = now() + mod(o.ord, 30) * %s::interval "
        "FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM campaign_messages) o WHERE o.id = m.id",
        (timedelta(seconds=SCHEDULE_SPREAD_S / 30),),
    )
    step = MESSAGES_PER_RUN // REJECTED_PER_RUN
    rejected = [p for phones in (plain_phones, split_phones) for p in phones[step // 2 :: step]]
    return split.run_id, rejected


def test_chaos_two_runs_survive_kills_restarts_pauses_and_faults(
    db: psycopg.Connection[Any], database_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    split_run, rejected = seed_campaigns(db)
    probe = Probe(database_url)
    restart_note = can_restart_server(pg_admin_url)
    timeline = Timeline()
    restart: Restart | None = None
    simulator_args = ["--ai-key", AI_KEY, "--whatsapp-key", WHATSAPP_KEY]

    with (
        Simulator(log_dir=tmp_path, args=["--seed", "20240601", *simulator_args]) as sim,
        processes() as procs,
    ):
        sim.set_faults(**CHAOS_FAULTS, reject_phones=rejected)
        env = {
            "DATABASE_URL": database_url,
            **simulator_env(sim.base_url, ai_key=AI_KEY, whatsapp_key=WHATSAPP_KEY),
            **CONSUMER_ENV,
        }

        def spawn(name: str, *args: str) -> Child:
            proc = spawn_logged(name, list(args), env=env, log_dir=tmp_path)
            procs.append(proc)
            return proc

        ports: dict[str, int] = {}

        def consumer(name: str) -> Child:
            ports[name] = free_port()
            return spawn(name, "consume", "--metrics-port", str(ports[name]))

        producer = spawn("producer", "produce", "--every", "1s")
        first, second = consumer("consumer-1"), consumer("consumer-2")
        timeline.mark("producer and two consumers started")

        def wait_sent(n: int, *watch: Child) -> None:
            wait_for(
                f"{n} sent",
                lambda: probe.statuses().get("sent", 0) >= n,
                timeout_s=180,
                watch=list(watch),
                probe=probe,
            )

        # 1. pause the split run for a few seconds, then resume it
        wait_sent(200, producer, first, second)
        db.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (split_run,))
        timeline.mark("split run paused")
        time.sleep(3)
        # Due rows the producer left alone while the run was paused (the pause's other half,
        # besides consumers releasing what was already queued).
        held_back = int(
            probe.rows(
                "SELECT count(*) AS n FROM campaign_messages "
                "WHERE run_id = %s AND status = 'pending' AND scheduled_at <= now()",
                (split_run,),
            )[0]["n"]
        )
        db.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (split_run,))
        timeline.mark("split run resumed")

        # 2. one inbox disconnects for a few seconds
        wait_sent(500, producer, first, second)
        sim.set_faults(disconnected_instances=["chaos-plain"])
        timeline.mark("inbox chaos-plain disconnected")
        time.sleep(4)
        sim.set_faults(disconnected_instances=[])
        timeline.mark("inbox chaos-plain reconnected")

        # 3. SIGKILL a consumer mid-flight; start a new one
        wait_sent(800, producer, first, second)
        first.process.send_signal(signal.SIGKILL)
        kill_at = timeline.mark("consumer-1 SIGKILLed")
        first.process.wait()
        third = consumer("consumer-3")
        timeline.mark("consumer-3 started")

        # 4. the PostgreSQL server goes down and comes back
        wait_sent(1100, producer, second, third)
        if restart_note is None:
            db.close()  # the fixture's connection would die anyway
            timeline.mark("PostgreSQL stopping")
            restart = restart_server(pg_admin_url, down_s=OUTAGE_S)
            timeline.mark(f"PostgreSQL back after {restart.down_s:.1f} s")
        else:
            timeline.mark(f"PostgreSQL restart skipped: {restart_note}")

        # 5. everything settles, with nobody having exited
        def settled() -> bool:
            statuses = probe.statuses()
            done = sum(statuses.get(s, 0) for s in ("sent", "failed", "skipped"))
            return done == TOTAL and probe.count("q_campaign_messages") == 0

        wait_for(
            "every message terminal", settled, timeout_s=300, watch=[producer, second, third], probe=probe
        )
        chaos_done = timeline.mark("all messages terminal")
        sends = sim.sends()
        sim_stats = sim.stats()
        duplicates, crashed = check_invariants(probe, sends=sends, rejected=rejected, kill_at=kill_at)
        check_faults_were_exercised(probe, [first, second, third], held_back=held_back)

        # 6. faults off: replay drives the DLQ to zero, each replayed message sent once
        dead = probe.rows(
            "SELECT (message->>'campaign_message_id')::uuid AS id, message->>'reason' AS reason "
            "FROM pgmq.q_campaign_messages_dlq"
        )
        sim.set_faults(**NO_FAULTS)
        replay = run_cli("replay", database_url=database_url, timeout=60)
        assert replay.returncode == 0, replay.stderr
        timeline.mark(f"campaignq replay: {replay.stdout.splitlines()[0]}")
        wait_for(
            "replayed messages sent",
            lambda: probe.statuses() == {"sent": TOTAL} and probe.count("q_campaign_messages_dlq") == 0,
            timeout_s=120,
            watch=[producer, second, third],
            probe=probe,
        )
        timeline.mark("DLQ empty, every message sent")
        sends_after = sim.sends()
        check_replayed_sent_once(probe, [r["id"] for r in dead], before=sends, after=sends_after)

        # the survivors' own figures, before they stop
        windows = [scrape(ports[proc.name]) for proc in (second, third)]
        # every survivor stops cleanly on SIGTERM
        for proc in (second, third, producer):
            code = proc.stop()
            assert code == 0, f"{proc.name} exited {code}:\n{proc.log()[-3000:]}"
        if restart is not None:
            assert "producer reconnected to the database" in producer.log()
        check_no_secret_or_phone_in_logs(
            procs, phones=[r["phone"] for r in probe.rows("SELECT phone FROM leads")]
        )

    reconciled = reconciliations([first, second, third])
    assert reconciled.get("delivered -> Acknowledged", 0) > 0, reconciled  # hang_after_accept was met
    totals = probe.rows(
        "SELECT coalesce(sum(retry_count), 0) AS burnt, coalesce(sum(deferral_count), 0) AS deferred, "
        "count(*) FILTER (WHERE retry_count > 0 OR deferral_count > 0) AS retried "
        "FROM campaign_messages"
    )[0]
    FIGURES.update(
        {
            "messages": TOTAL,
            "dead letters (before replay)": dict(Counter(r["reason"] for r in dead)),
            "replayed and then sent": len(dead),
            "retries (attempts burnt)": int(totals["burnt"]),
            "deferrals (no attempt burnt)": int(totals["deferred"]),
            "messages retried or deferred": int(totals["retried"]),
            "parts accepted by the gateway": len(sends_after),
            "duplicates": len(duplicates),
            "messages caught mid-message by the SIGKILL or the outage (rows found sending)": len(crashed),
            "uncertain parts reconciled via the gateway (found, not resent)": reconciled.get(
                "delivered -> Acknowledged", 0
            ),
            "reconciliations by outcome": reconciled,
            "answer-to-commit window (s), consumers 2 and 3": merge_windows(windows),
            "visibility timeout (s)": VISIBILITY_TIMEOUT_S,
            "PostgreSQL down (s)": round(restart.down_s, 1) if restart else f"skipped: {restart_note}",
            "AI answers": sim_stats["ai"]["by_outcome"],
            "gateway answers": sim_stats["send"]["by_outcome"],
            "time to all terminal (s)": round(chaos_done - timeline.started, 1),
            "total time (s)": round(time.time() - timeline.started, 1),
            "timeline": [f"+{t:5.1f}s {what}" for t, what in timeline.events],
        }
    )
    SUMMARY.write_text(json.dumps(FIGURES, indent=2, default=str) + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_SAMPLE = re.compile(r'^campaignq_ack_record_seconds_(bucket|sum|count)(?:\{le="([^"]+)"\})? ([0-9.e+-]+)$')


def scrape(port: int) -> dict[str, Any]:
    """The answer-to-commit histogram of one consumer, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    total = count = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        kind, le, value = match.groups()
        if kind == "bucket":
            buckets[float(le)] = float(value)
        elif kind == "sum":
            total = float(value)
        else:
            count = float(value)
    return {"buckets": buckets, "sum": total, "count": count}


def merge_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parts recorded, mean, and the bucket bounds holding the median, the 99th percentile and
    the slowest part (a Prometheus histogram gives bounds, not exact values)."""
    count = sum(w["count"] for w in windows)
    buckets: dict[float, float] = {}
    for w in windows:
        for le, n in w["buckets"].items():
            buckets[le] = buckets.get(le, 0.0) + n

    def bound(q: float) -> float | None:
        for le in sorted(buckets):
            if buckets[le] >= q * count:
                return le
        return None

    return {
        "parts recorded": int(count),
        "mean": round(sum(w["sum"] for w in windows) / count, 4) if count else None,
        "p50 at most": bound(0.5),
        "p99 at most": bound(0.99),
        "max at most": bound(1.0),
    }


def reconciliations(consumers: list[Child]) -> dict[str, int]:
    """What the gateway said about uncertain parts, and what was done, from every consumer's log."""
    found: Counter[str] = Counter()
    for proc in consumers:
        for match in re.finditer(r"gateway says ([a-z ]+) -> (\w+)", proc.log()):
            found[f"{match.group(1)} -> {match.group(2)}"] += 1
    return dict(found)


def check_invariants(
    probe: Probe, *, sends: list[dict[str, Any]], rejected: list[str], kill_at: float
) -> tuple[list[dict[str, Any]], set[uuid.UUID]]:
    """Every Invariant of the contract; returns (duplicate sends, messages caught by the SIGKILL)."""
    rows = probe.rows(
        "SELECT m.id, m.status, m.parts, m.parts_sent, l.phone, r.status AS run "
        "FROM campaign_messages m JOIN leads l ON l.id = m.lead_id JOIN campaign_runs r ON r.id = m.run_id"
    )
    assert len(rows) == TOTAL
    # every due message ends sent, failed (and dead-lettered) or skipped; none generating/sending
    assert Counter(r["status"] for r in rows).keys() <= {"sent", "failed", "skipped"}
    assert {r["run"] for r in rows} == {"completed"}
    # queue + archive + DLQ account for every queued row
    assert probe.count("q_campaign_messages") == 0
    archived = Counter(
        r["id"]
        for r in probe.rows(
            "SELECT (message->>'campaign_message_id')::uuid AS id FROM pgmq.a_campaign_messages"
        )
    )
    letters = [r["message"] for r in probe.rows("SELECT message FROM pgmq.q_campaign_messages_dlq")]
    dead = {uuid.UUID(letter["campaign_message_id"]): letter for letter in letters}
    assert len(dead) == len(letters), "a message was dead-lettered twice"
    assert set(archived) <= {r["id"] for r in rows}
    for row in rows:
        if row["status"] == "sent":
            assert archived[row["id"]] >= 1, f"sent message {row['id']} has no archived queue message"
        if row["status"] == "failed":
            letter = dead.get(row["id"])
            assert letter is not None, f"failed message {row['id']} is not in the DLQ"
            assert letter["reason"] and letter["error_class"] and letter["history"] and letter["attempts"], (
                letter
            )
    assert set(dead) == {r["id"] for r in rows if r["status"] == "failed"}
    # permanent failures: every lead not on WhatsApp is dead-lettered with its reason
    rejected_digits = {digits(p) for p in rejected}
    for row in rows:
        if digits(row["phone"]) in rejected_digits:
            assert row["status"] == "failed", row
            letter = dead[row["id"]]
            assert (letter["reason"], letter["error_class"]) == ("permanent", "invalid_lead"), letter
    # every sent lead received all its parts, in order; duplicates only from the crash window
    by_phone: dict[str, list[dict[str, Any]]] = {}
    for s in sends:
        by_phone.setdefault(digits(s["number"]), []).append(s)
    crashed = probe.with_history("crashed")
    assert crashed, "the SIGKILL hit no message in flight: the crash path was not exercised"
    duplicates: list[dict[str, Any]] = []
    for row in rows:
        first_copy: dict[str, float] = {}
        for s in by_phone.get(digits(row["phone"]), []):
            if s["text"] not in first_copy:
                first_copy[s["text"]] = s["at"]
                continue
            duplicates.append(s)
            assert row["id"] in crashed, f"duplicate of a message the SIGKILL did not catch: {row['id']} {s}"
            first_at = first_copy[s["text"]]
            assert kill_at - KILL_WINDOW_BEFORE_S <= first_at <= kill_at + KILL_WINDOW_AFTER_S, (
                f"duplicate outside the crash window ({first_at - kill_at:+.3f} s from the kill): {s}"
            )
        received = list(first_copy)
        if row["status"] == "sent":
            assert received == row["parts"], (
                f"lead of {row['id']} received {received}, expected {row['parts']}"
            )
            assert row["parts_sent"] == len(row["parts"])
        else:
            assert received == (row["parts"] or [])[: len(received)], (
                f"{row['id']} got its parts out of order"
            )
    # Issue 9: the bound is 0. The checks above would say where a duplicate came from.
    assert duplicates == [], duplicates
    return duplicates, crashed


def check_faults_were_exercised(probe: Probe, consumers: list[Child], *, held_back: int) -> None:
    """The run really went through each fault (a quiet run would prove nothing)."""
    for error_class in ("rate_limited", "timeout", "provider_unavailable", "inbox_unavailable"):
        assert probe.with_history(error_class), f"no message met a {error_class} fault"
    logs = "".join(proc.log() for proc in consumers)
    # The queue is often empty when the pause lands (consumers keep up): then the pause shows
    # as due rows the producer held back instead of messages the consumers released.
    assert "released_to_pending" in logs or held_back > 0, "the pause held back and released nothing"
    assert "database unavailable while recording" in logs or "cannot read from the queue" in logs


def check_replayed_sent_once(
    probe: Probe, replayed_ids: list[uuid.UUID], *, before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> None:
    """After replay each dead-lettered message is sent, and every one of its parts exactly once."""
    assert replayed_ids, "nothing was dead-lettered: the permanent faults did not happen"
    rows = probe.rows(
        "SELECT m.id, m.status, m.parts, l.phone FROM campaign_messages m JOIN leads l ON l.id = m.lead_id "
        "WHERE m.id = ANY(%s)",
        (replayed_ids,),
    )
    counts = Counter((digits(s["number"]), s["text"]) for s in after)
    for row in rows:
        assert row["status"] == "sent"
        for part in row["parts"]:
            copies = counts[(digits(row["phone"]), part)]
            assert copies == 1, f"replayed {row['id']}: a part was sent {copies} times"
    new_numbers = {digits(s["number"]) for s in after[len(before) :]}
    assert new_numbers <= {digits(r["phone"]) for r in rows}, "replay re-sent a message that was not dead"


def check_no_secret_or_phone_in_logs(procs: list[Child], *, phones: list[str]) -> None:
    wanted = {digits(p) for p in phones}
    for proc in procs:
        text = proc.log()
        assert AI_KEY not in text and WHATSAPP_KEY not in text, f"{proc.name} logged an API key"
        assert not any(p in text for p in wanted), f"{proc.name} logged a full phone number"

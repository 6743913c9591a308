"""The console in a real Chromium (Playwright) against a real `campaignq serve`, consumer and
PostgreSQL: live numbers, replay from the page, pause/resume, refused actions, inert markup.

One console process and one database for the module keep the browser part of CI short; each
test seeds its own campaign and asserts on that campaign only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from consumer.devtools.processes import SIMULATOR_READY, simulator_env
from consumer.devtools.seeding import Seeder
from tests import pg
from tests.artifacts import artifact
from tests.console.helpers import ADMIN_TOKEN, READ_TOKEN, cli_process, console_process, dead_letter_bulk

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
AI_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def module_db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    name = pg.clone_template(pg_admin_url, template_db)
    yield pg.with_dbname(pg_admin_url, name)
    pg.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def console_url(module_db_url: str) -> Iterator[str]:
    with console_process(module_db_url) as url:
        yield url


@pytest.fixture
def db(module_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def seed(db: psycopg.Connection[Any]) -> Seeder:
    return Seeder(db)


@pytest.fixture
def errors(page: Page) -> Iterator[list[str]]:
    """Every console error and uncaught exception of the page; the test ends with none."""
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: found.append(f"pageerror: {exc}"))
    yield found
    assert found == []


def login(page: Page, base: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{base}/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def produce(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone()
    return int(row[0]) if row else 0


def metric(page: Page, key: str) -> int:
    return int(page.inner_text(f"#metric-{key}").replace(",", "") or 0)


def test_overview_numbers_change_while_a_consumer_works(
    page: Page,
    errors: list[str],
    console_url: str,
    module_db_url: str,
    db: psycopg.Connection[Any],
    seed: Seeder,
) -> None:
    campaign = seed.campaign(60)
    login(page, console_url)
    expect(page.locator("#chart svg rect.sent")).to_have_count(60)
    produce(db)
    expect(page.locator("#metric-depth")).to_have_text("60")
    assert metric(page, "sent-hour") == 0
    with cli_process(
        ["simulate", "--port", "0", "--ai-latency", "150ms", "--send-latency", "20ms"],
        module_db_url,
        {},
        SIMULATOR_READY,
    ) as sim_url:
        env = {
            **simulator_env(sim_url, ai_key=AI_KEY, whatsapp_key="wa-test-key-0123456789"),
            "CAMPAIGNQ_CONCURRENCY": "4",
            "CAMPAIGNQ_POLL_INTERVAL_S": "0.2",
            "CAMPAIGNQ_TYPING_DELAY_CAP_S": "0",
        }
        with cli_process(["consume"], module_db_url, env, r"(.)"):
            # while it works: the depth falls and the sent count rises, without a reload
            page.wait_for_function(
                "() => { const v = t => Number(document.getElementById('metric-' + t).textContent"
                ".replace(/,/g, '')); return v('sent-hour') > 0 && v('depth') < 60 && v('depth') > 0; }",
                timeout=60_000,
            )
            expect(page.locator("#metric-depth")).to_have_text("0", timeout=90_000)
            expect(page.locator("#metric-sent-hour")).to_have_text("60", timeout=30_000)
    assert seed.statuses(campaign.run_id) == {"sent": 60}


def test_replay_from_the_page_empties_exactly_the_matching_letters(
    page: Page, errors: list[str], console_url: str, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    permanent = seed.campaign(3, instance="inst-replay-a")
    timeouts = seed.campaign(4, instance="inst-replay-b")
    dead_letter_bulk(db, permanent, reason="permanent", error_class="bad_request", error="400 bad number")
    dead_letter_bulk(db, timeouts, reason="max_attempts", error_class="timeout")
    login(page, console_url)
    page.goto(f"{console_url}/dead-letters")
    page.fill("#f-reason", "permanent")
    page.fill("#f-class", "bad_request")
    expect(page.locator("#matching")).to_have_text("3")
    page.click("#preview")
    expect(page.locator("#outcome-title")).to_contain_text("Preview (nothing changed): 3 letter(s)")
    assert _dlq(db, permanent.run_id) == 3
    page.click("#replay")
    expect(page.locator("#outcome-title")).to_contain_text("Replayed: 3 letter(s)")
    expect(page.locator("#outcome tbody tr")).to_have_count(3)
    expect(page.locator("#matching")).to_have_text("0")
    assert _dlq(db, permanent.run_id) == 0 and _dlq(db, timeouts.run_id) == 4
    assert seed.statuses(permanent.run_id) == {"queued": 3}
    page.fill("#f-reason", "")
    page.fill("#f-class", "")
    page.fill("#f-run", str(timeouts.run_id))
    expect(page.locator("#matching")).to_have_text("4")
    expect(page.locator("#audit")).to_contain_text("replay")
    page.screenshot(path=str(artifact("console-dead-letters.png")), full_page=True)


def test_pause_and_resume_from_the_page_change_what_the_producer_queues(
    page: Page, errors: list[str], console_url: str, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(5, instance="inst-pause")
    login(page, console_url)
    page.goto(f"{console_url}/runs")
    row = page.locator(f'tr[data-id="{campaign.run_id}"]')
    expect(row.locator('[data-field="status"]')).to_have_text("running")
    page.click(f"#pause-{campaign.run_id}")
    expect(row.locator('[data-field="status"]')).to_have_text("paused")
    produce(db)
    assert seed.statuses(campaign.run_id) == {"pending": 5}  # the producer leaves a paused run alone
    page.click(f"#resume-{campaign.run_id}")
    expect(row.locator('[data-field="status"]')).to_have_text("running")
    produce(db)
    assert seed.statuses(campaign.run_id) == {"queued": 5}
    expect(page.locator("#audit")).to_contain_text("run_resume")
    page.screenshot(path=str(artifact("console-runs.png")), full_page=True)


def test_an_action_without_the_admin_token_is_refused(
    page: Page, errors: list[str], console_url: str, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(1, instance="inst-readonly")
    anonymous = page.request.post(f"{console_url}/api/runs/{campaign.run_id}/pause")
    assert anonymous.status == 401
    login(page, console_url, READ_TOKEN)
    page.goto(f"{console_url}/runs")
    button = page.locator(f"#pause-{campaign.run_id}")
    expect(button).to_be_disabled()
    status = page.evaluate(
        "async (id) => (await fetch(`/api/runs/${id}/pause`, {method: 'POST'})).status", str(campaign.run_id)
    )
    assert status == 401
    # the browser logs the refused request itself; that one error is the point of this test
    assert all("401" in error for error in errors)
    errors.clear()
    assert db.execute("SELECT status FROM campaign_runs WHERE id = %s", (campaign.run_id,)).fetchone() == (
        "running",
    )
    expect(page.locator("#who")).to_contain_text("view only")


def test_markup_in_a_lead_name_or_an_error_is_inert(
    page: Page, errors: list[str], console_url: str, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(1, instance="inst-markup")
    db.execute("UPDATE leads SET name = %s WHERE id = %s", (XSS, campaign.lead_ids[0]))
    db.execute("UPDATE campaign_configs SET name = %s WHERE id = %s", (XSS, campaign.config_id))
    dead_letter_bulk(
        db, campaign, reason="permanent", error_class="bad_request", error=f"provider said {XSS}"
    )
    login(page, console_url)
    page.goto(f"{console_url}/dead-letters?run={campaign.run_id}")
    expect(page.locator("#letters tbody tr")).to_have_count(1)
    cells = page.locator("#letters tbody tr td")
    expect(cells.nth(2)).to_have_text(XSS)  # the lead name, shown as the text it is
    expect(cells.nth(6)).to_have_text(f"provider said {XSS}")
    assert page.locator("#letters script, #letters img").count() == 0
    page.goto(f"{console_url}/runs")
    expect(page.locator(f'tr[data-id="{campaign.run_id}"]')).to_contain_text(XSS)
    assert page.evaluate("() => window.__pwned") is None


def test_every_page_renders_without_errors(
    page: Page, errors: list[str], console_url: str, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(2, instance="inst-pages")
    db.execute(
        "UPDATE inboxes SET max_sends_per_minute = 30, daily_send_cap = 1000, connection_state = 'open', "
        "connection_state_at = now() WHERE id = %s",
        (campaign.inbox_id,),
    )
    login(page, console_url)
    page.goto(f"{console_url}/workspaces")
    page.fill("#ai-rpm", "300")
    page.click("#ai-save")
    expect(page.locator("#budget")).to_contain_text("used in the last minute")
    weight = page.locator(f"#weight-{campaign.workspace_id}")
    weight.fill("7")
    page.click(f"#save-weight-{campaign.workspace_id}")
    expect(page.locator("#audit")).to_contain_text("workspace_weight")
    expect(page.locator(f'tr[data-id="{campaign.workspace_id}"]')).not_to_contain_text("(default)")
    assert db.execute(
        "SELECT weight FROM workspace_weights WHERE workspace_id = %s", (campaign.workspace_id,)
    ).fetchone() == (7,)
    page.screenshot(path=str(artifact("console-workspaces.png")), full_page=True)

    page.goto(f"{console_url}/inboxes")
    page.fill(f"#reason-{campaign.inbox_id}", "too many blocks")
    page.click(f"#pause-{campaign.inbox_id}")
    row = page.locator(f'tr[data-id="{campaign.inbox_id}"]')
    expect(row.locator('[data-field="paused"]')).to_contain_text("too many blocks")
    page.screenshot(path=str(artifact("console-inboxes.png")), full_page=True)
    page.click(f"#resume-{campaign.inbox_id}")
    expect(row.locator('[data-field="paused"]')).to_have_text("no")

    page.goto(f"{console_url}/audit")
    expect(page.locator("#audit tbody tr").first).to_contain_text("inbox_resume")
    for path in ("/runs", "/dead-letters", "/"):
        page.goto(f"{console_url}{path}")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        assert re.match(r"\w[\w ]* · campaignq console$", page.title())
    # the README's picture: after the earlier tests there is a worked run, letters and actions
    expect(page.locator("#dead-by-reason tbody tr").first).to_be_visible()
    page.screenshot(path=str(artifact("console-overview.png")), full_page=True)


def _dlq(db: psycopg.Connection[Any], run_id: uuid.UUID) -> int:
    row = db.execute("SELECT count(*) FROM campaignq_dead_letters WHERE run_id = %s", (run_id,)).fetchone()
    return int(row[0]) if row else 0

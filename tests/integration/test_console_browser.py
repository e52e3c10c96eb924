"""The console in a real browser (Debian's Chromium driven by Playwright) against a real worker,
Redis and PostgreSQL: sign in, watch a paused queue's depth hold and then fall live while the
worker drains it, find a dead letter by expense ID, replay it and see its row written, and a
viewer refused an action. Screenshots go to the test's directory (and to
``CONSOLE_SCREENSHOTS`` when set)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support import data
from tests.support.console import Console
from tests.support.services import WorkerProcess, enqueue, isolated_settings, row_count, wait_for
from workers.harness.processes import free_port
from workers.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
USERS = "ann:ann-pw:admin,vic:vic-pw:viewer"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Settings, Console]]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: run scripts/ensure-services (as root in CI)")
    with isolated_settings(
        console_users=USERS, fleet_beat_ms=200, console_refresh_ms=300, batch_size=10
    ) as s:
        with psycopg.connect(s.database_url, autocommit=True) as c:
            data.seed_patterns(c, data.reset(c))
            c.execute(data.POISON)
        console = Console(s, tmp_path / "console.log", free_port())
        try:
            yield s, console
        finally:
            console.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def shot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if out := os.environ.get("CONSOLE_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


def sign_in(browser: Browser, console: Console, name: str, password: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{console.url}/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page.locator("#who")).to_contain_text(name)
    return page


def test_an_operator_works_the_fleet_from_the_browser(
    fleet: tuple[Settings, Console], browser: Browser, tmp_path: Path
) -> None:
    s, console = fleet
    with psycopg.connect(s.database_url, autocommit=True) as c:
        ids = data.bulk_expenses(c, 300)
        [poisoned] = data.add_expenses(c, ["SQ *BLUE BOTTLE COFFEE"], user_id=7)
        c.execute("INSERT INTO poison VALUES (%s)", (poisoned,))
    worker = WorkerProcess(s, tmp_path / "worker.log", processes=1, threads=2)
    try:
        worker.wait_ready()
        page = sign_in(browser, console, "ann", "ann-pw")
        categorize = page.locator('tr[data-queue="categorize"]')

        # pause from the page: the worker stops taking messages, the depth holds
        categorize.locator("button.pause").click()
        expect(categorize.locator(".state")).to_contain_text("paused by ann")
        time.sleep(0.5)  # a beat: every process has the pause
        enqueue(s, ids)  # 30 messages
        expect(categorize.locator(".ready")).to_have_text("30", timeout=10_000)  # live, no reload
        time.sleep(1.5)
        assert row_count(s) == 0
        expect(categorize.locator(".ready")).to_have_text("30")
        shot(page, tmp_path, "overview-paused")

        # resume: the depth falls while the worker drains it, seen through server-sent events
        seen: list[int] = []
        categorize.locator("button.resume").click()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(int(categorize.locator(".ready").inner_text()))
            if seen[-1] == 0 and row_count(s) == 300:
                break
            time.sleep(0.05)
        assert seen[-1] == 0 and row_count(s) == 300, seen[-10:]
        assert page.url.endswith("/")  # one page load after the resume's redirect, then live only
        shot(page, tmp_path, "overview-drained")

        # the workers page shows the live process
        page.click("nav >> text=Workers")
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(page.locator("#processes")).to_contain_text("categorize, categorize_bulk, learn")
        shot(page, tmp_path, "workers")

        # a poisoned expense is dead-lettered; find it by its expense id
        enqueue(s, [poisoned])
        page.click("nav >> text=Dead letters")
        wait_for(lambda: _dead(s) == 1, timeout=30, what="the poisoned batch dead-lettered")
        page.fill("input[name=expense_id]", str(poisoned))
        page.click("#filters button[type=submit]")
        expect(page.locator("#count")).to_contain_text("1 dead letter(s) match")
        shot(page, tmp_path, "dead-letters")
        page.locator("#letters tbody tr a").first.click()
        expect(page.locator("#final-error")).to_contain_text("poisoned expense")
        expect(page.locator("#expense-ids")).to_contain_text(str(poisoned))
        expect(page.locator("#history tbody tr")).to_have_count(3)  # 2 retries, then dead
        shot(page, tmp_path, "dead-letter")

        # cure it, replay it after the dry run, and its row is written
        with psycopg.connect(s.database_url, autocommit=True) as c:
            c.execute("DELETE FROM poison")
        page.click("button.replay-one")
        expect(page.locator("#preview")).to_contain_text("1 would be replayed")
        page.click("#confirm")
        expect(page.locator("#done")).to_contain_text("1 of 1 replayed")
        wait_for(lambda: row_count(s) == 301, timeout=30, what="the replayed expense's row")
        page.click("nav >> text=Audit")
        expect(page.locator("#dead-letter-audit tbody tr").first).to_contain_text("ann@console")
        expect(page.locator("#queue-audit tbody tr")).to_have_count(2)
        shot(page, tmp_path, "audit")

        # a viewer looks, but may not act
        viewer = sign_in(browser, console, "vic", "vic-pw")
        expect(viewer.locator('tr[data-queue="categorize"] button')).to_have_count(0)
        token = viewer.locator("input[name=csrf]").first.get_attribute("value")
        refused = viewer.request.post(f"{console.url}/queues/categorize/pause", form={"csrf": token or ""})
        assert refused.status == 403 and "viewer" in refused.text()
        forged = page.request.post(f"{console.url}/queues/categorize/pause", form={"csrf": "forged"})
        assert forged.status == 403 and "CSRF" in forged.text()  # an admin's session without its token
        viewer.goto(f"{console.url}/dead-letters")
        expect(viewer.locator("button.replay-selected")).to_have_count(0)
        shot(viewer, tmp_path, "viewer")
        assert "ann-pw" not in console.log() and s.database_url not in page.content()
    finally:
        worker.stop()


def _dead(s: Settings) -> int:
    from workers.backends import backend_for

    backend = backend_for(s)
    try:
        return sum(q.dead for q in backend.queue_stats())
    finally:
        backend.close()

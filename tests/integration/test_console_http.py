"""The console's security model over HTTP, against a real ``catfleet console`` process: loopback
by default, refused elsewhere without users, a start link when there are none, every request
signed in, viewers refused actions, no secret in any answer."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import msgspec
import pytest

from tests.support.console import Console
from tests.support.services import run_catfleet
from workers.backends.base import FLEET_QUEUES
from workers.harness.processes import free_port
from workers.settings import Settings

#: PostgreSQL trusts loopback here, so a password in the URL is accepted and ignored: it must
#: still never be shown.
DB_PASSWORD = "db-sekrit-4711"


def opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def call(
    url: str,
    *,
    data: dict[str, str] | None = None,
    user: tuple[str, str] | None = None,
    via: urllib.request.OpenerDirector | None = None,
) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method="POST" if data is not None else "GET")
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with (via or opener()).open(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def own(settings: Settings, cats: dict[str, int]) -> Settings:
    url = f"{settings.database_url} password={DB_PASSWORD}"
    return msgspec.structs.replace(
        settings, database_url=url, console_users="ann:ann-pw:admin,vic:vic-pw:viewer"
    )


def test_every_request_is_signed_in_and_a_viewer_only_looks(own: Settings, tmp_path: Path) -> None:
    console = Console(own, tmp_path / "console.log", free_port())
    try:
        base = console.url
        status, _ = call(f"{base}/api/status")
        assert status == 401
        status, body = call(f"{base}/api/status", user=("ann", "wrong"))
        assert status == 401
        status, body = call(f"{base}/api/status", user=("vic", "vic-pw"))
        assert status == 200
        shown = json.loads(body)
        assert [q["queue"] for q in shown["queues"]] == list(FLEET_QUEUES)
        # the numbers are catfleet status --json's
        cli = json.loads(run_catfleet(own, "status", "--json").stdout)
        assert [q["ready"] for q in shown["queues"]] == [q["ready"] for q in cli["queues"]]

        status, body = call(f"{base}/api/queues/categorize/pause", data={}, user=("vic", "vic-pw"))
        assert status == 403 and "viewer" in body
        status, body = call(f"{base}/api/queues/categorize/pause", data={}, user=("ann", "ann-pw"))
        assert status == 200 and json.loads(body)["changed"] is True
        status, body = call(f"{base}/api/queues/nosuch/pause", data={}, user=("ann", "ann-pw"))
        assert status == 400 and "no such queue" in body
        status, body = call(f"{base}/api/queues/categorize/explode", data={}, user=("ann", "ann-pw"))
        assert status == 404
        status, body = call(f"{base}/api/queues/categorize/resume", data={}, user=("ann", "ann-pw"))
        assert status == 200
        status, body = call(f"{base}/api/dead-letters/replay", data={}, user=("ann", "ann-pw"))
        assert status == 400  # an empty filter would act on everything
        status, body = call(f"{base}/api/dead-letters?expense_id=abc", user=("ann", "ann-pw"))
        assert status == 400 and "bad filter" in body

        # pages: a redirect to the sign-in form, then a session; a post needs the session's token
        session = opener()
        status, page = call(f"{base}/dead-letters", via=session)
        assert status == 200 and 'name="password"' in page  # followed the redirect to /login
        status, page = call(
            f"{base}/login?next=/patterns", data={"username": "ann", "password": "ann-pw"}, via=session
        )
        assert status == 200 and "<h1>Patterns</h1>" in page
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token
        status, body = call(f"{base}/queues/learn/pause", data={}, via=session)
        assert status == 403 and "CSRF" in body
        status, page = call(f"{base}/queues/learn/pause", data={"csrf": token.group(1)}, via=session)
        assert status == 200 and "paused</span> by ann" in page

        # nothing secret anywhere
        for path in ("/", "/workers", "/dead-letters", "/patterns", "/audit"):
            status, page = call(f"{base}{path}", via=session)
            assert status == 200, path
            assert DB_PASSWORD not in page and "ann-pw" not in page and "dbname=" not in page, path
        for path in ("/api/status", "/api/overview", "/api/workers", "/api/audit", "/api/patterns"):
            status, body = call(f"{base}{path}", user=("ann", "ann-pw"))
            assert status == 200 and DB_PASSWORD not in body and "ann-pw" not in body, path
        settings_out = run_catfleet(own, "settings").stdout
        assert "ann-pw" not in settings_out and "ann:***:admin" in settings_out
    finally:
        console.stop()
    assert DB_PASSWORD not in console.log()


def test_loopback_without_users_gives_a_start_link_and_elsewhere_is_refused(
    settings: Settings, cats: dict[str, int], tmp_path: Path
) -> None:
    refused = run_catfleet(settings, "console", "--host", "0.0.0.0", "--port", str(free_port()), timeout=30)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "without CATFLEET_CONSOLE_USERS" in refused.stderr

    console = Console(settings, tmp_path / "console.log", free_port())
    try:
        [link] = re.findall(r"open (http://\S+/login\?token=\S+)", console.log())
        session = opener()
        status, page = call(link.replace("token=", "token=x"), via=session)
        assert status == 403
        status, page = call(f"{console.url}/api/status")
        assert status == 401
        status, page = call(link, via=session)
        assert status == 200 and "local-admin (admin)" in page
    finally:
        console.stop()

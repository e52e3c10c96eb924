"""The console's web application (Starlette): pages rendered on the server with Jinja2, live parts
pushed as server-sent events (sse-starlette) and swapped in by htmx's SSE extension, a JSON API
behind every page.

Security: every request needs a signed-in session (a form) or HTTP Basic credentials of a user
in ``CATFLEET_CONSOLE_USERS``; a viewer may look, only an admin may act; every action is a POST,
and a POST made with a session cookie must carry the session's CSRF token (a form field or the
``X-CSRF-Token`` header), so another site cannot make a signed-in browser act. Basic credentials
are never asked for with a challenge, so a browser never sends them on its own. No DSN, URL
password or secret appears in any answer (the broker URL is shown redacted)."""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import html
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import anyio
import msgspec
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pipeline.errors import CatfleetError, UnknownPattern
from schemas import PatternKind
from workers.backends.base import FLEET_QUEUES
from workers.commands.args import duration
from workers.console.service import Console, LiveFeed
from workers.console.users import User, check
from workers.display import format_age, format_time
from workers.dlq.base import DeadLetterFilter, parse_cursor
from workers.fleet.state import BUCKETS

Endpoint = Callable[[Request], Awaitable[Response]]
Method = Callable[["ConsoleWeb", Request], Awaitable[Response]]

#: The user a start link signs in (no ``CATFLEET_CONSOLE_USERS`` on loopback).
LINK_USER = User("local-admin", "", "admin")

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sparkline(values: list[int], width: int = 360, height: int = 48) -> str:
    """An inline SVG polyline of ``values`` (the last hour's buckets), scaled to its maximum."""
    top = max(values) if values and max(values) > 0 else 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - (v / top) * (height - 2):.1f}" for i, v in enumerate(values))
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-label="messages per {BUCKETS}-bucket hour, max {top}"><polyline fill="none" stroke="currentColor"'
        f' stroke-width="1.5" points="{html.escape(points)}"/></svg>'
    )


def _filter(params: Any) -> DeadLetterFilter:
    """A dead-letter filter from query or form fields (empty fields: no condition)."""

    def text(name: str) -> str | None:
        value = str(params.get(name) or "").strip()
        return value or None

    try:
        expense = text("expense_id")
        older, newer = text("older_than"), text("newer_than")
        ids = tuple(str(i) for i in params.getlist("id")) if hasattr(params, "getlist") else ()
        return DeadLetterFilter(
            ids=ids,
            queue=text("queue"),
            actor=text("actor"),
            error=text("error"),
            error_type=text("error_type"),
            expense_id=int(expense) if expense else None,
            correlation_id=text("correlation_id"),
            older_than_s=duration(older) if older else None,
            newer_than_s=duration(newer) if newer else None,
        )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise HttpError(400, f"bad filter: {exc}") from None


def _cursor(params: Any) -> str | None:
    """The ``after`` cursor of a dead-letter page (a page's ``next_cursor``), checked."""
    value = str(params.get("after") or "").strip()
    if not value:
        return None
    try:
        parse_cursor(value)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return value


def _int(params: Any, name: str, default: int) -> int:
    try:
        return int(params.get(name) or default)
    except ValueError:
        raise HttpError(400, f"{name} must be a whole number") from None


def guarded(*, act: bool = False, api: bool = False) -> Callable[[Method], Method]:
    """Sign-in (redirect pages to /login, 401 for the API), role for actions, CSRF for posts
    made with the session cookie, errors as one line."""

    def wrap(endpoint: Method) -> Method:
        @functools.wraps(endpoint)
        async def handler(self: ConsoleWeb, request: Request) -> Response:
            user, by_session = self.user_of(request)
            if user is None:
                if api or request.method == "POST":
                    return JSONResponse({"error": "sign in first"}, status_code=401)
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            request.state.user = user
            try:
                if request.method == "POST":
                    if by_session:
                        form = await request.form()
                        sent = request.headers.get("x-csrf-token") or form.get("csrf")
                        if not sent or not secrets.compare_digest(str(sent), self.csrf_token(request)):
                            raise HttpError(403, "missing or wrong CSRF token: reload the page")
                    if act and not user.may_act:
                        raise HttpError(403, f"{user.name} is a viewer: only an admin may do this")
                return await endpoint(self, request)
            except HttpError as exc:
                return self.error(request, exc.status, exc.message, api=api)
            except (CatfleetError, UnknownPattern) as exc:
                return self.error(request, 400, str(exc), api=api)

        return handler

    return wrap


class ConsoleWeb:
    """The console's pages and API on one ``Console`` (its endpoints are methods)."""

    def __init__(self, console: Console, *, users: dict[str, User], link_token: str | None):
        self.console = console
        self.users = users
        self.link_token = link_token
        self.settings = self.console.settings
        self.feed = LiveFeed(self.console, self.settings.console_refresh_ms / 1000)
        self.templates = Jinja2Templates(
            directory=str(resources.files("workers.console").joinpath("templates"))
        )
        self.templates.env.globals.update(
            ms=format_time,
            age=format_age,
            sparkline=sparkline,
            queues=FLEET_QUEUES,
            kinds=[k.value for k in PatternKind],
        )

    # who is asking -----------------------------------------------------------------------------

    def user_of(self, request: Request) -> tuple[User | None, bool]:
        """(the user, signed in by the session cookie?)"""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, False
            return check(self.users, name, password), False
        who = request.session.get("user")
        if who == LINK_USER.name and self.link_token is not None:
            return LINK_USER, True
        user = self.users.get(who) if isinstance(who, str) else None
        if user is not None and request.session.get("role") != user.role:
            return None, True  # the role changed since the session began: sign in again
        return user, True

    def csrf_token(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def error(self, request: Request, status: int, message: str, *, api: bool) -> Response:
        if api or request.headers.get("hx-request"):
            return JSONResponse({"error": message}, status_code=status)
        return self.page(request, "error.html", {"status": status, "message": message}, status=status)

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        user = getattr(request.state, "user", None)
        context = {
            **context,
            "user": user,
            "csrf": self.csrf_token(request) if user else "",
            "refresh_ms": self.settings.console_refresh_ms,
            "path": request.url.path,
        }
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def api(self, data: Any, status: int = 200) -> Response:
        return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")

    def operator(self, request: Request) -> str:
        return f"{request.state.user.name}@console"

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def act(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``run`` for an action: the live pages read afresh afterwards."""
        try:
            return await self.run(fn, *args, **kwargs)
        finally:
            self.feed.invalidate()

    # sign in -----------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        token = request.query_params.get("token")
        nxt = request.query_params.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if token is not None:
            if self.link_token is None or not secrets.compare_digest(token, self.link_token):
                return self.page(
                    request, "login.html", {"message": "that link is not valid", "next": nxt}, 403
                )
            request.session.clear()
            request.session.update({"user": LINK_USER.name, "role": LINK_USER.role})
            return RedirectResponse(nxt, status_code=303)
        if request.method == "GET":
            return self.page(request, "login.html", {"message": None, "next": nxt})
        form = await request.form()
        user = check(self.users, str(form.get("username") or ""), str(form.get("password") or ""))
        if user is None:
            return self.page(request, "login.html", {"message": "wrong name or password", "next": nxt}, 401)
        request.session.clear()
        request.session.update({"user": user.name, "role": user.role, "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse(nxt, status_code=303)

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # pages -------------------------------------------------------------------------------------

    @guarded()
    async def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", {"o": await self.run(self.feed.get)})

    @guarded()
    async def workers(self, request: Request) -> Response:
        return self.page(request, "workers.html", {"o": await self.run(self.feed.get)})

    @guarded()
    async def events(self, request: Request) -> Response:
        """``event: overview`` and ``event: workers``: the live fragments, once per refresh."""
        which = request.query_params.get("page", "overview")
        fragment = {"overview": "_overview.html", "workers": "_workers.html"}.get(which)
        if fragment is None:
            raise HttpError(400, "page must be overview or workers")
        template = self.templates.get_template(fragment)
        user = request.state.user

        async def stream() -> AsyncIterator[dict[str, str]]:
            while True:
                o = await self.run(self.feed.get)
                body = template.render(o=o, user=user, csrf=self.csrf_token(request), ms=format_time, age=format_age,
                                       sparkline=sparkline, queues=FLEET_QUEUES)  # fmt: skip
                yield {"event": which, "data": body}
                await anyio.sleep(self.feed.refresh_s)

        return EventSourceResponse(stream(), ping=15, headers=SECURITY_HEADERS)

    @guarded()
    async def dead_letters(self, request: Request) -> Response:
        q = request.query_params
        flt = _filter(q)
        offset, limit = _int(q, "offset", 0), _int(q, "limit", 50)
        found = await self.run(self.console.dead_letters, flt, offset=offset, limit=limit, after=_cursor(q))
        facets = await self.run(self.console.facets)
        query = {k: v for k, v in q.items() if k not in ("offset", "after") and v}
        return self.page(
            request, "dead_letters.html", {"page": found, "facets": facets, "f": q, "query": query}
        )

    @guarded()
    async def dead_letter(self, request: Request) -> Response:
        letter = await self.run(self.console.dead_letter, request.path_params["message_id"])
        if letter is None:
            raise HttpError(404, "no such dead letter (replayed, purged or expired?)")
        return self.page(request, "dead_letter.html", {"d": letter})

    @guarded(act=True)
    async def dead_letter_action(self, request: Request) -> Response:
        """Preview (a dry run: how many, which) unless ``confirm`` is set; then act."""
        form = await request.form()
        action = str(form.get("action") or "")
        if action not in ("replay", "purge"):
            raise HttpError(400, "action must be replay or purge")
        flt = _filter(form)
        if form.get("scope") == "selected" and not flt.ids:
            raise HttpError(400, "select some dead letters first")
        if flt.is_empty:
            raise HttpError(400, "choose letters or a filter first (an empty filter would act on everything)")
        rate_text = str(form.get("rate") or "").strip()
        rate = float(rate_text) if rate_text else None
        if rate is not None and rate <= 0:
            raise HttpError(400, "rate must be > 0")
        confirm = form.get("confirm") == "yes"
        report = await self.act(
            self.console.act, action, flt, dry_run=not confirm, operator=self.operator(request), rate=rate
        )
        fields = [(k, str(v)) for k, v in form.multi_items() if k not in ("csrf", "confirm")]
        return self.page(
            request, "action.html", {"r": report, "confirm": confirm, "fields": fields, "action": action}
        )

    @guarded(act=True)
    async def queue_action(self, request: Request) -> Response:
        queue, verb = request.path_params["queue"], request.path_params["verb"]
        fn = self.console.pause if verb == "pause" else self.console.resume
        await self.act(fn, queue, self.operator(request))
        return RedirectResponse("/", status_code=303)

    @guarded()
    async def patterns(self, request: Request) -> Response:
        q = request.query_params
        rows = await self.run(self.console.pattern_page, **_pattern_filters(q))
        query = {k: v for k, v in q.items() if k != "offset" and v}
        return self.page(request, "patterns.html", {"rows": rows, "f": q, "query": query,
                                               "offset": _int(q, "offset", 0), "limit": _int(q, "limit", 50)})  # fmt: skip

    @guarded(act=True)
    async def pattern_action(self, request: Request) -> Response:
        await self.act(
            self.console.set_pattern,
            int(request.path_params["pattern_id"]),
            request.path_params["verb"] == "enable",
        )
        return RedirectResponse(request.headers.get("referer") or "/patterns", status_code=303)

    @guarded()
    async def audit(self, request: Request) -> Response:
        entries = await self.run(
            self.console.dead_letter_audit, limit=_int(request.query_params, "limit", 50)
        )
        actions = await self.run(self.console.queue_actions, 50)
        return self.page(request, "audit.html", {"entries": entries, "actions": actions})

    # API ---------------------------------------------------------------------------------------

    @guarded(api=True)
    async def api_status(self, request: Request) -> Response:
        return self.api((await self.run(self.feed.get)).status)

    @guarded(api=True)
    async def api_overview(self, request: Request) -> Response:
        return self.api(await self.run(self.feed.get))

    @guarded(api=True)
    async def api_workers(self, request: Request) -> Response:
        return self.api((await self.run(self.feed.get)).status.processes)

    @guarded(api=True)
    async def api_dead_letters(self, request: Request) -> Response:
        q = request.query_params
        return self.api(
            await self.run(
                self.console.dead_letters,
                _filter(q),
                offset=_int(q, "offset", 0),
                limit=_int(q, "limit", 50),
                after=_cursor(q),
            )
        )

    @guarded(api=True)
    async def api_dead_letter(self, request: Request) -> Response:
        letter = await self.run(self.console.dead_letter, request.path_params["message_id"])
        return self.api(letter) if letter is not None else self.api({"error": "no such dead letter"}, 404)

    @guarded(act=True, api=True)
    async def api_dead_letter_action(self, request: Request) -> Response:
        """JSON body: the filter's fields (``ids`` a list), ``dry_run``, ``limit``, ``rate``."""
        try:
            body = msgspec.json.decode(await request.body()) if await request.body() else {}
            options = {k: body.pop(k) for k in ("dry_run", "limit", "rate") if k in body}
            flt = msgspec.convert({**body, "ids": tuple(body.get("ids", ()))}, DeadLetterFilter)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            raise HttpError(400, f"bad request body: {exc}") from None
        if flt.is_empty:
            raise HttpError(400, "give ids or a filter (an empty filter would act on everything)")
        report = await self.act(self.console.act, request.path_params["verb"], flt, dry_run=bool(options.get("dry_run")),
                           operator=self.operator(request), limit=options.get("limit"), rate=options.get("rate"))  # fmt: skip
        return self.api(report)

    @guarded(act=True, api=True)
    async def api_queue_action(self, request: Request) -> Response:
        queue, verb = request.path_params["queue"], request.path_params["verb"]
        changed = await self.act(
            self.console.pause if verb == "pause" else self.console.resume, queue, self.operator(request)
        )
        return self.api({"queue": queue, "action": verb, "changed": changed})

    @guarded(api=True)
    async def api_patterns(self, request: Request) -> Response:
        return self.api(await self.run(self.console.pattern_page, **_pattern_filters(request.query_params)))

    @guarded(act=True, api=True)
    async def api_pattern_action(self, request: Request) -> Response:
        pid, verb = int(request.path_params["pattern_id"]), request.path_params["verb"]
        await self.act(self.console.set_pattern, pid, verb == "enable")
        return self.api({"id": pid, "active": verb == "enable"})

    @guarded(api=True)
    async def api_audit(self, request: Request) -> Response:
        q = request.query_params
        entries = await self.run(
            self.console.dead_letter_audit, limit=_int(q, "limit", 50), offset=_int(q, "offset", 0)
        )
        return self.api({"dead_letters": entries, "queues": await self.run(self.console.queue_actions, 50)})

    def app(self, secret: str) -> Starlette:
        verbs = "{verb:str}"
        routes = [
            Route("/healthz", _healthz),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.overview),
            Route("/workers", self.workers),
            Route("/events", self.events),
            Route("/dead-letters", self.dead_letters),
            Route("/dead-letters/action", self.dead_letter_action, methods=["POST"]),
            Route("/dead-letters/{message_id:str}", self.dead_letter),
            Route(f"/queues/{{queue:str}}/{verbs}", _verb(self.queue_action, "pause", "resume"), methods=["POST"]),
            Route("/patterns", self.patterns),
            Route(f"/patterns/{{pattern_id:int}}/{verbs}", _verb(self.pattern_action, "enable", "disable"), methods=["POST"]),
            Route("/audit", self.audit),
            Route("/api/status", self.api_status),
            Route("/api/overview", self.api_overview),
            Route("/api/workers", self.api_workers),
            Route("/api/dead-letters", self.api_dead_letters),
            Route(f"/api/dead-letters/{verbs}", _verb(self.api_dead_letter_action, "replay", "purge"), methods=["POST"]),
            Route("/api/dead-letters/{message_id:str}", self.api_dead_letter),
            Route(f"/api/queues/{{queue:str}}/{verbs}", _verb(self.api_queue_action, "pause", "resume"), methods=["POST"]),
            Route("/api/patterns", self.api_patterns),
            Route(f"/api/patterns/{{pattern_id:int}}/{verbs}", _verb(self.api_pattern_action, "enable", "disable"), methods=["POST"]),
            Route("/api/audit", self.api_audit),
            Mount("/static", StaticFiles(packages=[("workers.console", "static")]), name="static"),
        ]  # fmt: skip
        middleware = [
            Middleware(SessionMiddleware, secret_key=secret, session_cookie="catfleet-console-session", same_site="strict",
                       https_only=False, max_age=12 * 3600),
        ]  # fmt: skip
        return Starlette(routes=routes, middleware=middleware)


def create_app(console: Console, *, users: dict[str, User], link_token: str | None, secret: str) -> Starlette:
    """The console's ASGI app. ``link_token``: the start link's token (no users configured)."""
    return ConsoleWeb(console, users=users, link_token=link_token).app(secret)


async def _healthz(request: Request) -> Response:
    """Liveness for a probe: the console answers (says nothing else, needs no credential)."""
    return Response("ok\n", media_type="text/plain")


def _verb(endpoint: Endpoint, *allowed: str) -> Endpoint:
    async def handler(request: Request) -> Response:
        if request.path_params["verb"] not in allowed:
            return JSONResponse({"error": f"unknown action: use {' or '.join(allowed)}"}, status_code=404)
        return await endpoint(request)

    return handler


def _pattern_filters(q: Any) -> dict[str, Any]:
    def text(name: str) -> str | None:
        return str(q.get(name) or "").strip() or None

    active = {"yes": True, "no": False}.get(str(q.get("active") or ""))
    user = text("user")
    try:
        return {
            "user_id": int(user) if user else None,
            "source": text("source"),
            "kind": text("kind"),
            "active": active,
            "category": text("category"),
            "search": text("search"),
            "offset": _int(q, "offset", 0),
            "limit": _int(q, "limit", 50),
        }
    except ValueError:
        raise HttpError(400, "user must be a whole number") from None

"""``catfleet console``: the operator console in a browser (``workers.console``), served by uvicorn.
Loopback by default; a non-loopback address is refused without ``CATFLEET_CONSOLE_USERS``."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import sys
from typing import Any

from pipeline.errors import CatfleetError
from workers.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from workers.console.service import Console
    from workers.console.users import parse_users
    from workers.console.web import create_app

    host = args.host or settings.console_host
    port = args.port or settings.console_port
    users = parse_users(settings.console_users)
    if not users and not is_loopback(host):
        raise CatfleetError(
            f"refusing to serve the console on {host} without CATFLEET_CONSOLE_USERS"
            " (name:password:role,...): anyone who reaches the port could act on the fleet"
        )
    link = None if users else secrets.token_urlsafe(24)
    console = Console(settings)
    try:
        app = create_app(
            console, users=users, link_token=link, secret=settings.console_secret or secrets.token_hex(32)
        )
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        how = f"open {url}login?token={link} (signs you in as admin)" if link else f"open {url} and sign in"
        print(f"catfleet console on {url}: {how}", flush=True)
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )
        server.run()
        if not server.started:
            print(f"catfleet console: could not listen on {host}:{port}", file=sys.stderr)
            return 2
        return 0
    finally:
        console.close()


def register(sub: Any) -> None:
    p = sub.add_parser("console", help="the operator console in a browser")
    p.add_argument("--host", help="address to listen on (default: CATFLEET_CONSOLE_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: CATFLEET_CONSOLE_PORT, 9400)")
    p.set_defaults(func=cmd_console)

"""``catfleet relay``: the outbox relay process (a Procfile process type)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from workers.settings import Settings


def cmd_relay(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from workers.app import build_app
    from workers.producer import Producer
    from workers.relay import Relay

    app = build_app(settings)
    relay = Relay(
        settings.database_url,
        Producer(app.broker, batch_size=settings.batch_size),
        claim_size=settings.relay_claim_size,
        poll_seconds=settings.relay_poll_seconds,
        retention_seconds=settings.relay_retention_seconds,
    )
    try:
        if args.once:
            print(f"relayed {relay.drain()} request(s)")
            return 0
        if settings.relay_metrics_port:
            start_http_server(settings.relay_metrics_port, addr=settings.metrics_host)
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        relay.run(stop)
        return 0
    finally:
        relay.close()
        app.close()


def register(sub: Any) -> None:
    p = sub.add_parser("relay", help="send committed categorization requests from the outbox to the broker")
    p.add_argument("--once", action="store_true", help="send what is pending now, then exit")
    p.set_defaults(func=cmd_relay)

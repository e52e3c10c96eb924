"""A private RabbitMQ virtual host per test run on the shared local server (via rabbitmqctl)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import uuid4

RABBIT = "amqp://guest:guest@127.0.0.1:5672"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    """Yields an amqp:// URL of a fresh vhost; deletes it afterwards."""
    vhost = f"catfleet-test-{uuid4().hex[:8]}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{RABBIT}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)

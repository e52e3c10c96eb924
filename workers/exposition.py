"""The host's one HTTP server, run by Dramatiq as a fork process of ``catfleet worker``:

- ``/metrics``: every worker process's metrics (Dramatiq's per-actor ones and catfleet's own,
  merged from the multiprocess directory) plus the broker's queue statistics read now;
- ``/healthz``: liveness, 200 while this server answers;
- ``/readyz``: readiness, 200 when the broker and PostgreSQL answer (``degraded`` when the L2
  cache breaker is open: lookups go to PostgreSQL), 503 otherwise; a JSON body says which
  dependency failed and the error's class, never a host, port or DSN (it is unauthenticated:
  the details go to this process's log).

Host, port and directory are Dramatiq's (``dramatiq_prom_host`` / ``_port`` / ``_db``), which
``catfleet worker`` maps from ``CATFLEET_METRICS_HOST`` / ``_PORT`` / ``_DIR``.
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from workers.multiproc import use_multiproc_dir

log = logging.getLogger(__name__)


class ExpositionServer(HTTPServer):
    """Single-threaded on purpose: scrapes and probes are rare, and the broker and database
    clients it uses are then never shared between threads."""

    def __init__(self, address: tuple[str, int], *, settings: Any, backend: Any, registry: Any, workers: Any):
        super().__init__(address, _Handler)
        self.settings = settings
        self.backend = backend
        self.registry = registry
        self.workers = workers  # the worker processes' metrics only (for the breaker state)


class _Handler(BaseHTTPRequestHandler):
    server: ExpositionServer

    def do_GET(self) -> None:
        import msgspec
        import prometheus_client as prom

        from workers.health import readiness

        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, prom.CONTENT_TYPE_LATEST, prom.generate_latest(self.server.registry))
        elif path == "/healthz":
            self._send(200, "application/json", b'{"status":"ok"}')
        elif path == "/readyz":
            ready = readiness(self.server.settings, self.server.backend, self.server.workers.collect())
            self._send(200 if ready.ready else 503, "application/json", msgspec.json.encode(ready))
        else:
            self._send(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def serve() -> int:
    """Dramatiq fork function: serve until SIGTERM (Dramatiq raises SystemExit in here)."""
    use_multiproc_dir()  # before prometheus_client is imported in this process
    from dramatiq.middleware.prometheus import DB_PATH, HTTP_HOST, HTTP_PORT
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from workers import metrics
    from workers.backends import backend_for
    from workers.collector import BrokerCollector
    from workers.config import settings_from_env
    from workers.logs import setup_logging

    settings = settings_from_env()
    setup_logging(settings)
    metrics.zero_series()  # every known counter series at 0 from the first scrape (not "No data")
    backend = backend_for(settings)
    registry = CollectorRegistry()
    workers = MultiProcessCollector(registry, path=DB_PATH)
    registry.register(BrokerCollector(backend))
    try:
        server = ExpositionServer(
            (HTTP_HOST, HTTP_PORT), settings=settings, backend=backend, registry=registry, workers=workers
        )
    except OSError as exc:
        log.error("metrics server cannot listen on %s:%s: %s", HTTP_HOST, HTTP_PORT, exc)
        return 1
    log.info("metrics and health on http://%s:%s/ (/metrics, /healthz, /readyz)", HTTP_HOST, HTTP_PORT)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        backend.close()
    return 0

"""The broker module each worker process of ``catfleet worker`` boots (``workers.boot:broker``;
Dramatiq's CLI takes it too: ``dramatiq workers.boot:broker``).

Settings are read from the environment here, at the edge, once per process.
"""

from workers.config import settings_from_env
from workers.multiproc import use_multiproc_dir

settings = settings_from_env()
if settings.metrics_port:
    use_multiproc_dir()  # before anything imports prometheus_client (a bare `dramatiq` run too)

from workers.app import build_app  # noqa: E402
from workers.logs import setup_logging  # noqa: E402

setup_logging(settings)
app = build_app(settings)
broker = app.broker

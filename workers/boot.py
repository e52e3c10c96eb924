"""Entry module for Dramatiq's CLI (``dramatiq workers.boot:broker``), run by ``catfleet worker``.

Settings are read from the environment here, at the edge, once per process.
"""

from workers.app import build_app
from workers.config import settings_from_env
from workers.logs import setup_logging

settings = settings_from_env()
setup_logging(settings)
app = build_app(settings)
broker = app.broker

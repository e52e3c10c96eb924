"""The runtime shell: broker bootstrap, actors, middleware, producer API and the CLI."""

from workers.app import App, build_app
from workers.config import settings_from_env
from workers.producer import EnqueueReport, Producer

__all__ = ["App", "EnqueueReport", "Producer", "build_app", "settings_from_env"]

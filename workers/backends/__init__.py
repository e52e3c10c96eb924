"""Broker backends: everything that differs between brokers lives behind ``Backend``.

One backend per broker, chosen once from the broker URL: building its Dramatiq broker (with
batched enqueue), the failure log, the delivery counter and the dead-letter store, queue
statistics, the health check and maintenance. Nothing outside this package asks which broker it
is. This module stays light (no broker client is imported until a backend is chosen)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from workers.backends.registry import BACKENDS, SCHEMES, supports

if TYPE_CHECKING:
    from workers.backends.base import Backend
    from workers.settings import Settings


def backend_class(url: str) -> type[Backend]:
    """The backend class for a broker URL; ValueError for a scheme no backend serves."""
    for scheme, target in BACKENDS.items():
        if url.startswith(scheme):
            module, _, name = target.partition(":")
            cls: type[Backend] = getattr(importlib.import_module(module), name)
            return cls
    raise ValueError(f"no broker backend for {url.split('://', 1)[0]!r} URLs; known: {', '.join(SCHEMES)}")


def backend_for(settings: Settings) -> Backend:
    """The backend of the configured broker (nothing connects until it is used)."""
    return backend_class(settings.broker_url)(settings)


__all__ = ["BACKENDS", "SCHEMES", "backend_class", "backend_for", "supports"]

"""The demo: realistic data, real workers, a summary."""

from workers.demo.run import run_demo

__all__ = ["run_demo"]

"""``catfleet console`` as a child process, answering once its health endpoint does."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.support.services import ChildProcess, wait_for
from workers.harness.processes import start_catfleet
from workers.settings import Settings


class Console(ChildProcess):
    def __init__(self, settings: Settings, log_path: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            log_path, lambda log: start_catfleet(["console", "--port", str(port)], settings, log=log)
        )

        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"console exited:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, timeout=30, interval=0.1, what="the console answering")

"""``catfleet settings``: the effective settings, passwords redacted."""

from __future__ import annotations

import argparse
import json
from typing import Any

from workers.settings import Settings


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("settings", help="print the effective settings (passwords redacted)")
    p.set_defaults(func=cmd_settings)

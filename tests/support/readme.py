"""Code blocks of the README that tests run verbatim, so the documented steps cannot drift."""

from __future__ import annotations

import re

from workers.harness.processes import ROOT


def readme_block(marker: str, lang: str = "sh") -> str:
    """The one ```lang block of README.md that starts with the line ``marker``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", text, re.S | re.M)
    [block] = [b for b in blocks if b.startswith(marker)]
    return str(block)

"""``catfleet schema``: the JSON Schema of the wire payloads, for other services."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workers.settings import Settings


def cmd_schema(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.jsonschema import PAYLOADS, payload_schema, schema_filename, schema_text

    names = [args.name] if args.name else sorted(PAYLOADS)
    if args.name and args.name not in PAYLOADS:
        raise SystemExit(
            f"catfleet schema: unknown message {args.name!r}; known: {', '.join(sorted(PAYLOADS))}"
        )
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / schema_filename(name)).write_text(schema_text(name), encoding="utf-8")
            print(out / schema_filename(name))
    elif args.name:
        print(schema_text(args.name), end="")
    else:
        print(json.dumps({name: payload_schema(name) for name in names}, indent=2))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a wire payload (all of them without NAME)")
    p.add_argument(
        "name", nargs="?", help="actor name: categorize_batch, categorize_batch_bulk or learn_from_correction"
    )
    p.add_argument("--write", metavar="DIR", help="write NAME.schema.json file(s) into DIR instead")
    p.set_defaults(func=cmd_schema)

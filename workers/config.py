"""Settings from ``CATFLEET_*`` environment variables: the only place that reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from pipeline.errors import SettingsError
from workers.settings import Settings

ENV_PREFIX = "CATFLEET_"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build and validate the settings; a bad value raises SettingsError naming its variable."""
    environ = os.environ if environ is None else environ
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    unknown = sorted(
        k for k in environ if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() not in fields
    )
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    raw: dict[str, object] = {f: environ[env_name(f)] for f in fields if env_name(f) in environ}
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc))) from exc
    except ValueError as exc:  # __post_init__ cross-field checks
        raise SettingsError(f"invalid settings: {exc}") from exc


def _explain(message: str) -> str:
    # msgspec says "Expected `int` >= 1, got ... - at `$.batch_size`": name the env var instead.
    text, sep, where = message.rpartition(" - at `$.")
    if sep:
        return f"{env_name(where.rstrip('`'))}: {text}"
    return f"invalid settings: {message}"

"""Broker URLs naming a Redis primary through its Sentinels.

``redis+sentinel://[[user]:password@]host1[:26379],host2,host3/service[/db][?sentinel_password=…]``:
the Sentinels' addresses (comma separated, port 26379 unless given), the name of the monitored
service (``sentinel monitor <service> …``) and the database (0 unless given). The user and
password are the Redis servers'; ``sentinel_password`` is the Sentinels' own (``requirepass`` in
sentinel.conf), when they have one. Every Redis client of the broker side (workers, producers,
the relay, the wake-up subscription, the dead-letter tool, fleet state, status) asks the
Sentinels for the primary on each new connection, and a connection that meets a demoted
primary (``READONLY``) or a dead one is dropped and asked for again: they follow a failover.

Light on purpose (no redis import): the settings check a broker URL with it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from pipeline.errors import SettingsError

SENTINEL_SCHEME = "redis+sentinel://"
#: A Sentinel's port when the URL gives none.
DEFAULT_SENTINEL_PORT = 26379
#: One host: a name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]:/@,?#\s]+)(?::(\d{1,5}))?$")
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_OPTIONS = frozenset({"sentinel_password"})


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL names (``repr`` never shows the passwords)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url[: len(SENTINEL_SCHEME)].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` URL; ``SettingsError`` in one line naming
    ``CATFLEET_BROKER_URL`` (a password is never shown) for anything else."""
    if not is_sentinel_url(url):
        raise SettingsError(f"CATFLEET_BROKER_URL: a Sentinel URL starts with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise SettingsError("CATFLEET_BROKER_URL: a Sentinel URL has no fragment (#)")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = [_host(h) for h in hosts.split(",")]
    parts = path.split("/") if slash else []
    if parts and parts[-1] == "":  # a trailing slash
        parts.pop()
    if not parts or not _SERVICE.match(parts[0]):
        raise SettingsError(
            "CATFLEET_BROKER_URL: a Sentinel URL names its service after the hosts"
            " (redis+sentinel://host1,host2,host3/service[/db])"
        )
    if len(parts) > 2 or (len(parts) == 2 and not (parts[1].isdigit() and int(parts[1]) < 1_000_000)):
        raise SettingsError(
            "CATFLEET_BROKER_URL: after the service comes only the database number (/service/db)"
        )
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise SettingsError(
                f"CATFLEET_BROKER_URL: unknown Sentinel URL option {key[:40]!r} (known: {', '.join(sorted(_OPTIONS))})"
            )
        options[key] = value
    return SentinelURL(
        sentinels=sentinels,
        service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _host(text: str) -> tuple[str, int]:
    found = _HOST.match(text)
    port = int(found.group(2)) if found and found.group(2) else DEFAULT_SENTINEL_PORT
    if found is None or not 0 < port < 65536:
        # a port that is not a number may be a password whose '@' was forgotten: not shown
        shown = text if re.fullmatch(r"[^:@]{0,80}(:\d*)?", text) else text.partition(":")[0][:80] + ":…"
        raise SettingsError(
            f"CATFLEET_BROKER_URL: bad Sentinel host {shown!r} (hosts are host[:port], comma separated)"
        )
    return found.group(1).strip("[]"), port

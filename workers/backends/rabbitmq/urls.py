"""Broker URLs naming several RabbitMQ nodes of one cluster.

``amqp://user:pass@node1:5672,node2:5672,node3/vhost?heartbeat=30`` (hosts comma separated, one
user, vhost and query for all), or Dramatiq's form, whole URLs separated by ``;``. Every client
(workers, producers, the relay, the dead-letter tool, the health check) gets the list and pika
tries the nodes in that order on each new connection: a consumer whose node died reconnects to
the next one that answers."""

from __future__ import annotations

import re

from pipeline.errors import SettingsError

_SCHEME = re.compile(r"^(amqps?)://", re.IGNORECASE)
#: One host: a name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]:/@,?#\s]+)(:\d{1,5})?$")


def node_urls(url: str) -> list[str]:
    """One URL per node, in the order given. ``SettingsError`` (naming ``CATFLEET_BROKER_URL``,
    password never shown) for an empty host, a bad port or a part that is not ``amqp(s)://``."""
    urls: list[str] = []
    for part in url.split(";"):
        urls.extend(_expand(part.strip()))
    return urls


def _expand(url: str) -> list[str]:
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise SettingsError("CATFLEET_BROKER_URL: each ';'-separated URL must start with amqp:// or amqps://")
    rest = url[scheme.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, _, hosts = netloc.rpartition("@")
    prefix = f"{scheme.group(1).lower()}://" + (f"{userinfo}@" if userinfo else "")
    out = []
    for host in hosts.split(","):
        found = _HOST.match(host)
        if found is None or (found.group(2) and not 0 < int(found.group(2)[1:]) < 65536):
            raise SettingsError(
                f"CATFLEET_BROKER_URL: bad RabbitMQ host {host!r} (hosts are host[:port], comma separated)"
            )
        out.append(prefix + host + tail)
    return out

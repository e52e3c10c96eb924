"""The console's users, from ``CATFLEET_CONSOLE_USERS`` (``name:password:role,...``)."""

from __future__ import annotations

import hmac
from typing import Literal

import msgspec

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")


class User(msgspec.Struct, frozen=True):
    name: str
    password: str
    role: Role

    @property
    def may_act(self) -> bool:
        return self.role == "admin"


def parse_users(text: str) -> dict[str, User]:
    """``name:password:role`` entries, comma separated (a password may not hold a comma; it may
    hold colons). ValueError names the bad entry by position, never its password."""
    users: dict[str, User] = {}
    for i, entry in enumerate(e.strip() for e in text.split(",") if e.strip()):
        name, sep, rest = entry.partition(":")
        password, sep2, role = rest.rpartition(":")
        if not (sep and sep2 and name and password):
            raise ValueError(f"console_users entry {i + 1} is not name:password:role")
        if role not in ROLES:
            raise ValueError(
                f"console_users entry {i + 1} ({name}): role must be admin or viewer, not {role!r}"
            )
        if name in users:
            raise ValueError(f"console_users names {name!r} twice")
        users[name] = User(name, password, role)  # type: ignore[arg-type]
    return users


def redact_users(text: str) -> str:
    try:
        return ",".join(f"{u.name}:***:{u.role}" for u in parse_users(text).values())
    except ValueError:
        return "***"


def check(users: dict[str, User], name: str, password: str) -> User | None:
    """The user if the password is theirs (constant-time compare; an unknown name costs the same)."""
    user = users.get(name)
    expected = user.password if user is not None else "\0" * max(len(password), 1)
    ok = hmac.compare_digest(expected.encode(), password.encode())
    return user if ok and user is not None else None

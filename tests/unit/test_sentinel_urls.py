"""``redis+sentinel://`` broker URLs: what they name, and one line naming the variable for a bad
one (never the password)."""

from __future__ import annotations

import pytest

from pipeline.errors import SettingsError
from workers.backends import backend_class
from workers.backends.redis_urls import SentinelURL, is_sentinel_url, parse_sentinel_url
from workers.config import settings_from_env


def test_hosts_service_database_and_passwords() -> None:
    url = "redis+sentinel://app:p%40ss@s1:26380,10.0.0.2,[::1]:26381/catfleet/3?sentinel_password=sp"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=[("s1", 26380), ("10.0.0.2", 26379), ("::1", 26381)],
        service="catfleet",
        db=3,
        username="app",
        password="p@ss",
        sentinel_password="sp",
    )
    assert "p@ss" not in repr(parse_sentinel_url(url)) and "sp'" not in repr(parse_sentinel_url(url))


def test_defaults_database_0_no_user_password_only() -> None:
    got = parse_sentinel_url("redis+sentinel://:secret@s1/mymaster/")
    assert (got.sentinels, got.service, got.db, got.username, got.password) == (
        [("s1", 26379)],
        "mymaster",
        0,
        None,
        "secret",
    )
    assert parse_sentinel_url("REDIS+SENTINEL://s1/m").sentinel_password is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1,,s2/svc", "bad Sentinel host ''"),
        ("redis+sentinel://s1:99999/svc", "bad Sentinel host 's1:99999'"),
        ("redis+sentinel://s1:0/svc", "bad Sentinel host"),
        ("redis+sentinel://:hunter2@/svc", "bad Sentinel host ''"),
        ("redis+sentinel://s1", "names its service"),
        ("redis+sentinel://s1/", "names its service"),
        ("redis+sentinel://s1/bad name", "names its service"),
        ("redis+sentinel://s1/svc/x", "only the database number"),
        ("redis+sentinel://s1/svc/1/2", "only the database number"),
        ("redis+sentinel://s1/svc?socket_timeout=1", "unknown Sentinel URL option 'socket_timeout'"),
        ("redis+sentinel://s1/svc#frag", "no fragment"),
        ("redis://s1/svc", "starts with redis+sentinel://"),
    ],
)
def test_bad_urls_get_one_line_naming_the_variable(url: str, says: str) -> None:
    with pytest.raises(SettingsError, match=r"^CATFLEET_BROKER_URL: ") as caught:
        parse_sentinel_url(url)
    message = str(caught.value)
    assert says in message and "\n" not in message and "hunter2" not in message


def test_the_settings_refuse_a_bad_sentinel_url_without_showing_the_password() -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from_env({"CATFLEET_BROKER_URL": "redis+sentinel://:hunter2@s1,s2:x/svc"})
    message = str(caught.value)
    assert "CATFLEET_BROKER_URL: bad Sentinel host 's2:…'" in message
    assert "hunter2" not in message and "\n" not in message
    ok = settings_from_env({"CATFLEET_BROKER_URL": "redis+sentinel://s1,s2,s3/catfleet/0"})
    assert is_sentinel_url(ok.broker_url)


def test_a_sentinel_url_is_served_by_the_redis_backend_and_others_are_not_sentinel() -> None:
    assert backend_class("redis+sentinel://s1/svc").__name__ == "RedisBackend"
    assert not is_sentinel_url("redis://127.0.0.1:6379/0")
    assert not is_sentinel_url("rediss://h/0")


def test_a_password_without_its_at_sign_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_sentinel_url("redis+sentinel://s1:hunter2/svc")  # the '@' forgotten
    assert "hunter2" not in str(caught.value) and "'s1:…'" in str(caught.value)

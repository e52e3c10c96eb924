import pytest

from pipeline.errors import SettingsError
from pipeline.settings import DEFAULT_DATABASE_URL, redact
from workers.config import settings_from_env


def test_defaults_point_at_the_local_services() -> None:
    s = settings_from_env({})
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.broker_url.startswith("redis://127.0.0.1")
    assert s.batch_size == 500 and s.pool_size == s.worker_threads + 2


def test_values_are_parsed_from_strings() -> None:
    s = settings_from_env(
        {"CATFLEET_BATCH_SIZE": "200", "CATFLEET_AUTO_THRESHOLD": "0.9", "CATFLEET_LOG_FORMAT": "text"}
    )
    assert (s.batch_size, s.auto_threshold, s.log_format) == (200, 0.9, "text")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CATFLEET_BATCH_SIZE": "0"}, "CATFLEET_BATCH_SIZE: Expected `int` >= 1"),
        ({"CATFLEET_BATCH_SIZE": "lots"}, "CATFLEET_BATCH_SIZE: Expected `int`"),
        ({"CATFLEET_BATCH_SIZE": "10001"}, "CATFLEET_BATCH_SIZE: Expected `int` <= 10000"),
        ({"CATFLEET_LOG_LEVEL": "LOUD"}, "CATFLEET_LOG_LEVEL: Invalid enum value 'LOUD'"),
        ({"CATFLEET_AUTO_THRESHOLD": "0.5"}, "suggest_threshold must not exceed auto_threshold"),
        ({"CATFLEET_BROKER_URL": "http://x"}, "broker_url must start with"),
        ({"CATFLEET_BATCHSIZE": "5"}, "unknown setting(s): CATFLEET_BATCHSIZE"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_env(env)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("postgresql://app:s3cr3t@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("host=db password=s3cr3t user=app", "host=db password=*** user=app"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
    ],
)
def test_redact_hides_passwords(raw: str, safe: str) -> None:
    assert redact(raw) == safe


def test_redacted_settings_never_show_a_password() -> None:
    s = settings_from_env({"CATFLEET_DATABASE_URL": "postgresql://u:topsecret@h/db"})
    assert "topsecret" not in str(s.redacted())

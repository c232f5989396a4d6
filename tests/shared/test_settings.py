"""Settings: DESIGN's defaults, parsing DOWNLINK_* variables, errors that name them, masking."""

from __future__ import annotations

import os

import pytest

from shared.errors import ConfigError
from shared.settings import GIB, Settings


def test_defaults_match_the_configuration_table() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.database_url == "postgresql://postgres@localhost:5432/downlink"
    assert settings.storage_url == "file://./data"
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert settings.download_concurrency == 16
    assert settings.per_host_concurrency == 4
    assert settings.max_tries == 3
    assert settings.retry_backoff_s == 5.0
    assert settings.claim_idle_s == 30.0
    assert settings.lease_renew_s == 5.0
    assert settings.max_file_size_bytes == 50 * 1024**3 == 50 * GIB
    assert settings.allow_private_networks is False
    assert settings.allowed_networks == ()
    assert settings.retention_days == 7
    assert settings.process_workers == (os.cpu_count() or 1)
    assert settings.shutdown_grace_s == 30.0
    assert settings.metrics_port is None
    assert settings.log_level == "INFO"


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_other_and_blank_variables_are_ignored() -> None:
    settings = Settings.from_env({"HOME": "/root", "DOWNLINK_HTTP_PORT": "  ", "PORT": "1"})
    assert settings.http_port == 8000


def test_from_env_parses_every_type() -> None:
    settings = Settings.from_env(
        {
            "DOWNLINK_REDIS_URL": "redis://127.0.0.1:6390/2",
            "DOWNLINK_DATABASE_URL": "postgres://app:pw@127.0.0.1:5433/dl",
            "DOWNLINK_STORAGE_URL": "file:///srv/downlink",
            "DOWNLINK_HTTP_PORT": "8123",
            "DOWNLINK_DOWNLOAD_CONCURRENCY": "32",
            "DOWNLINK_RETRY_BACKOFF": "0.5",
            "DOWNLINK_CLAIM_IDLE": "3",
            "DOWNLINK_MAX_FILE_SIZE": "1048576",
            "DOWNLINK_ALLOW_PRIVATE_NETWORKS": "true",
            "DOWNLINK_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.1.7 ,,fd00::/8",
            "DOWNLINK_SHUTDOWN_GRACE": "2.5",
            "DOWNLINK_METRICS_PORT": "9100",
            "DOWNLINK_LOG_LEVEL": "debug",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.database_url == "postgres://app:pw@127.0.0.1:5433/dl"
    assert settings.storage_url == "file:///srv/downlink"
    assert settings.http_port == 8123
    assert settings.download_concurrency == 32
    assert settings.retry_backoff_s == 0.5
    assert settings.claim_idle_s == 3.0
    assert settings.lease_renew_s == 1.0  # renewed well inside the idle threshold
    assert settings.max_file_size_bytes == 1048576
    assert settings.allow_private_networks is True
    assert settings.allowed_networks == ("10.0.0.0/8", "192.168.1.7", "fd00::/8")
    assert settings.shutdown_grace_s == 2.5
    assert settings.metrics_port == 9100
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("1", True)])
def test_booleans_parse(raw: str, expected: bool) -> None:
    assert Settings.from_env({"DOWNLINK_ALLOW_PRIVATE_NETWORKS": raw}).allow_private_networks is (
        expected
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DOWNLINK_HTTP_PORT", "eighty"),
        ("DOWNLINK_MAX_TRIES", "2.5"),
        ("DOWNLINK_RETRY_BACKOFF", "soon"),
        ("DOWNLINK_MAX_FILE_SIZE", "50G"),
        ("DOWNLINK_ALLOW_PRIVATE_NETWORKS", "maybe"),
        ("DOWNLINK_LOG_LEVEL", "verbose"),
        ("DOWNLINK_REDIS_URL", "http://127.0.0.1:6379"),
        ("DOWNLINK_DATABASE_URL", "mysql://127.0.0.1/dl"),
        ("DOWNLINK_STORAGE_URL", "/srv/data"),
        ("DOWNLINK_DOWNLOAD_CONCURRENCY", "0"),
        ("DOWNLINK_PER_HOST_CONCURRENCY", "-1"),
        ("DOWNLINK_CLAIM_IDLE", "0"),
        ("DOWNLINK_RETRY_BACKOFF", "-1"),
        ("DOWNLINK_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network"),
        ("DOWNLINK_ALLOWED_NETWORKS", "10.0.0.0/33"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(variable), message
    assert "$." not in message  # users know the variable, not the field path


def test_describe_masks_passwords_and_names_variables() -> None:
    settings = Settings(
        redis_url="redis://:hunter2@127.0.0.1:6379/0",
        database_url="postgresql://app:s3cret@127.0.0.1:5432/dl",
    )
    described = settings.describe()
    assert described["DOWNLINK_REDIS_URL"] == "redis://:***@127.0.0.1:6379/0"
    assert described["DOWNLINK_DATABASE_URL"] == "postgresql://app:***@127.0.0.1:5432/dl"
    assert "hunter2" not in repr(described)
    assert "s3cret" not in repr(described)
    assert described["DOWNLINK_MAX_FILE_SIZE"] == 50 * GIB
    assert described["DOWNLINK_CLAIM_IDLE"] == 30.0
    assert set(described) == {
        "DOWNLINK_" + name.upper().removesuffix("_S").removesuffix("_BYTES")
        for name in Settings.__struct_fields__
    }


def test_describe_leaves_urls_without_password_alone() -> None:
    assert Settings().describe()["DOWNLINK_DATABASE_URL"] == (
        "postgresql://postgres@localhost:5432/downlink"
    )


def test_replace_overrides_fields_and_keeps_the_rest() -> None:
    base = Settings.from_env({"DOWNLINK_MAX_TRIES": "5"})
    changed = base.replace(http_port="9001", download_concurrency=2)
    assert changed.http_port == 9001
    assert changed.download_concurrency == 2
    assert changed.max_tries == 5
    assert base.http_port == 8000  # frozen: the original is untouched


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"http_port": "x"}, "DOWNLINK_HTTP_PORT"),
        ({"download_concurrency": 0}, "DOWNLINK_DOWNLOAD_CONCURRENCY"),
        ({"log_level": "LOUD"}, "DOWNLINK_LOG_LEVEL"),
    ],
)
def test_replace_validates_like_from_env(changes: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}"):
        Settings().replace(**changes)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.http_port = 1  # type: ignore[misc]

"""Settings.from_env: defaults, parsing, bounds, and settings that must come in pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketd.config import ConfigError, Settings

SECRET = "s" * 32


def test_nothing_set_gives_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = Settings.from_env({})
    assert settings == Settings(database_url=None, data_dir=tmp_path / "ticketing")
    assert settings.listen == "127.0.0.1:50051"
    assert (settings.db_pool_size, settings.db_pool_timeout_seconds) == (20, 5)
    assert (settings.statement_timeout_ms, settings.lock_timeout_ms) == (10_000, 2_000)
    assert (settings.bcrypt_rounds, settings.token_ttl_seconds) == (12, 3600)
    assert (settings.max_concurrent_rpcs, settings.max_message_bytes) == (1000, 4 * 1024 * 1024)
    assert (settings.gate_scan_rate, settings.gate_scan_burst) == (100, 200)
    assert settings.grace_seconds == 10
    assert settings.jwt_secret is None and settings.tls_enabled is False


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://u@db:5432/t",
        "TICKETING_LISTEN": "0.0.0.0:0",
        "TICKETING_DATA_DIR": str(tmp_path),
        "TICKETING_JWT_SECRET": SECRET,
        "TICKETING_TOKEN_TTL": "600",
        "TICKETING_BCRYPT_ROUNDS": "4",
        "TICKETING_ADMIN_EMAIL": "admin@example.test",
        "TICKETING_ADMIN_PASSWORD": "change-me-please",
        "TICKETING_TLS_CERT": "/etc/t/cert.pem",
        "TICKETING_TLS_KEY": "/etc/t/key.pem",
        "TICKETING_DB_POOL_SIZE": " 7 ",
        "TICKETING_DB_POOL_TIMEOUT": "9",
        "TICKETING_STATEMENT_TIMEOUT_MS": "5000",
        "TICKETING_LOCK_TIMEOUT_MS": "250",
        "TICKETING_MAX_CONCURRENT_RPCS": "64",
        "TICKETING_MAX_MESSAGE_BYTES": "2097152",
        "TICKETING_SHUTDOWN_GRACE": "0",
        "TICKETING_GATE_SCAN_RATE": "5",
        "TICKETING_GATE_SCAN_BURST": "6",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        database_url="postgresql://u@db:5432/t",
        listen="0.0.0.0:0",
        data_dir=tmp_path,
        jwt_secret=SECRET,
        token_ttl_seconds=600,
        bcrypt_rounds=4,
        admin_email="admin@example.test",
        admin_password="change-me-please",
        tls_cert=Path("/etc/t/cert.pem"),
        tls_key=Path("/etc/t/key.pem"),
        db_pool_size=7,
        db_pool_timeout_seconds=9,
        statement_timeout_ms=5000,
        lock_timeout_ms=250,
        max_concurrent_rpcs=64,
        max_message_bytes=2097152,
        grace_seconds=0,
        gate_scan_rate=5,
        gate_scan_burst=6,
    )
    assert settings.tls_enabled is True


def test_empty_values_mean_unset(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "", "TICKETING_DB_POOL_SIZE": "", "TICKETING_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert (settings.database_url, settings.db_pool_size) == (None, 20)


def test_the_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETING_DB_POOL_SIZE", "3")
    assert Settings.from_env().db_pool_size == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "TICKETING_DB_POOL_SIZE",
            "twenty",
            "TICKETING_DB_POOL_SIZE must be an integer, got 'twenty'",
        ),
        ("TICKETING_DB_POOL_SIZE", "0", "TICKETING_DB_POOL_SIZE must be between 1 and 500, got 0"),
        (
            "TICKETING_DB_POOL_SIZE",
            "501",
            "TICKETING_DB_POOL_SIZE must be between 1 and 500, got 501",
        ),
        ("TICKETING_BCRYPT_ROUNDS", "3", "TICKETING_BCRYPT_ROUNDS must be between 4 and 16, got 3"),
        ("TICKETING_TOKEN_TTL", "59", "TICKETING_TOKEN_TTL must be between 60 and 604800, got 59"),
        (
            "TICKETING_LOCK_TIMEOUT_MS",
            "1.5",
            "TICKETING_LOCK_TIMEOUT_MS must be an integer, got '1.5'",
        ),
        (
            "TICKETING_SHUTDOWN_GRACE",
            "-1",
            "TICKETING_SHUTDOWN_GRACE must be between 0 and 600, got -1",
        ),
    ],
)
def test_bad_numbers_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "env",
    [
        {"TICKETING_TLS_CERT": "/c.pem"},
        {"TICKETING_TLS_KEY": "/k.pem"},
    ],
)
def test_tls_cert_and_key_come_together(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TICKETING_TLS_CERT and TICKETING_TLS_KEY"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "env", [{"TICKETING_ADMIN_EMAIL": "a@b.co"}, {"TICKETING_ADMIN_PASSWORD": "password!"}]
)
def test_admin_email_and_password_come_together(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TICKETING_ADMIN_EMAIL and TICKETING_ADMIN_PASSWORD"):
        Settings.from_env(env)


def test_the_jwt_secret_is_at_least_32_bytes() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"TICKETING_JWT_SECRET": "s" * 31})
    # Bytes, not characters: 11 three-byte characters are 33 bytes.
    assert Settings.from_env({"TICKETING_JWT_SECRET": "€" * 11}).jwt_secret == "€" * 11


def test_outbox_retention_and_pruning_interval() -> None:
    default = Settings.from_env({})
    assert (default.outbox_retention_seconds, default.outbox_prune_interval_seconds) == (
        7 * 86_400,
        60.0,
    )
    off = Settings.from_env(
        {"TICKETING_OUTBOX_RETENTION": "0", "TICKETING_OUTBOX_PRUNE_INTERVAL": "0.5"}
    )
    assert (off.outbox_retention_seconds, off.outbox_prune_interval_seconds) == (0, 0.5)
    with pytest.raises(ConfigError, match="TICKETING_OUTBOX_RETENTION must be an integer"):
        Settings.from_env({"TICKETING_OUTBOX_RETENTION": "7d"})
    with pytest.raises(ConfigError, match="TICKETING_OUTBOX_PRUNE_INTERVAL must be between"):
        Settings.from_env({"TICKETING_OUTBOX_PRUNE_INTERVAL": "-1"})

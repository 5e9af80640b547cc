"""The supervisor's pure parts: worker counts, divided limits, the port guard (real sockets)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ticketd.config import ConfigError, Settings, parse_workers, usable_cores
from ticketd.supervisor import PortGuard, PortInUse, split_listen, worker_environment


def test_worker_counts() -> None:
    assert parse_workers(None) == 1
    assert parse_workers("") == 1
    assert parse_workers("3") == 3
    assert parse_workers(" AUTO ") == usable_cores() >= 1
    assert Settings.from_env({"TICKETING_WORKERS": "2"}).workers == 2
    for bad in ("0", "257", "two", "-1", "1.5"):
        with pytest.raises(ConfigError, match="TICKETING_WORKERS"):
            parse_workers(bad)


def test_limits_are_divided_and_never_zero() -> None:
    settings = Settings(database_url=None, data_dir=Path("/nonexistent"), db_pool_size=20)
    two = worker_environment(settings, 2)
    assert two["TICKETING_DB_POOL_SIZE"] == "10"
    assert two["TICKETING_MAX_CONCURRENT_RPCS"] == "500"
    assert two["TICKETING_GATE_SCAN_RATE"] == "50"
    assert float(two["TICKETING_AUTH_PEER_RATE"]) == pytest.approx(0.25)
    many = worker_environment(settings, 64)
    assert many["TICKETING_DB_POOL_SIZE"] == "1"
    assert many["TICKETING_AUTH_CONCURRENCY"] == "2"
    assert float(many["TICKETING_AUTH_PEER_RATE"]) > 0
    # Every divided value is one a worker accepts.
    assert Settings.from_env(many).db_pool_size == 1


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert split_listen("[::]:0") == ("::", 0)


def test_the_guard_keeps_the_port_from_others_until_released() -> None:
    guard = PortGuard("127.0.0.1", 0)
    port = guard.acquire()
    try:
        assert port > 0
        # Another supervisor of this user: the reuseport bind works, the lock does not.
        with pytest.raises(PortInUse, match="already served by another ticketd supervisor"):
            PortGuard("127.0.0.1", port).acquire()
        # A plain bind (a ticketd without --workers): the kernel refuses it.
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        # A worker binds with SO_REUSEPORT and listens beside the guard.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
    finally:
        guard.release()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))


def test_a_port_held_by_a_plain_server_is_refused_clearly() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(PortInUse, match="already in use by another process"):
            PortGuard("127.0.0.1", port).acquire()


def test_observability_settings() -> None:
    assert Settings.from_env({}).metrics_listen is None
    assert Settings.from_env({}).log_format == "text"
    env = {"TICKETING_METRICS_LISTEN": "127.0.0.1:9464", "TICKETING_LOG_FORMAT": "JSON"}
    settings = Settings.from_env(env)
    assert (settings.metrics_listen, settings.log_format) == ("127.0.0.1:9464", "json")
    for bad in ("9464", "host:", "host:99999", "host:port"):
        with pytest.raises(ConfigError, match="TICKETING_METRICS_LISTEN"):
            Settings.from_env({"TICKETING_METRICS_LISTEN": bad})
    with pytest.raises(ConfigError, match="TICKETING_LOG_FORMAT"):
        Settings.from_env({"TICKETING_LOG_FORMAT": "xml"})

"""TLS: the server serves over TLS when given a cert and key; the SDK sends the token as
call credentials there (gRPC refuses call credentials on plaintext channels)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, second_server
from tests.support import PASSWORD, Account, Stubs, unique_email
from tests.test_offline_gates import enrolled, open_event
from ticketd.db.database import PoolOptions
from ticketing import connect
from ticketing.v1 import auth_pb2, auth_pb2_grpc, gate_pb2


@pytest.fixture
async def tls_server(running: RunningServer, tmp_path: Path) -> AsyncIterator[tuple[int, bytes]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    # A server of its own (not the shared server's components): stopping it ends its
    # streams, which must not end the shared server's.
    async with second_server(running, PoolOptions(pool_size=4), tls_cert=cert, tls_key=key) as tls:
        yield tls.port, cert.read_bytes()


async def test_tls_round_trip_with_call_credentials(tls_server: tuple[int, bytes]) -> None:
    port, root = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    email = unique_email("tls")
    async with connect(f"localhost:{port}", tls=creds) as client:
        await client.auth.Register(
            auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="T")
        )
        await client.login(email, PASSWORD)
        me = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        assert me.user.email == email
    # A plaintext client cannot talk to the TLS port.
    async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(aio.AioRpcError) as err:
            await auth_pb2_grpc.AuthServiceStub(ch).Login(
                auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=3
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_sends_a_device_credential_as_call_credentials(
    tls_server: tuple[int, bytes], stubs: Stubs, admin: Account
) -> None:
    event_id, _, _, _ = await open_event(stubs, admin, 1)
    _, credential = await enrolled(stubs, admin, event_id, "tls-gate")
    port, root = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    request = gate_pb2.GetVerificationKeysRequest(event_id=event_id)
    async with connect(f"localhost:{port}", tls=creds, device_credential=credential) as client:
        keys = await client.gate.GetVerificationKeys(request)
        assert keys.event_id == event_id and keys.keys
    async with connect(f"localhost:{port}", tls=creds, device_credential="tkd_forged") as client:
        with pytest.raises(aio.AioRpcError) as err:
            await client.gate.GetVerificationKeys(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ValueError):
        connect(f"localhost:{port}", "a-token", device_credential=credential)

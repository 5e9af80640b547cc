"""The policy table covers every RPC the server exposes (default deny must never surprise)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import ticketing.v1  # noqa: F401
from tests.support import Stubs
from ticketd.app import SERVICE_NAMES
from ticketd.auth.policy import POLICY
from ticketing.v1 import auth_pb2


def _all_methods() -> set[str]:
    pool = descriptor_pool.Default()
    names: set[str] = set()
    files = [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    for service_name in SERVICE_NAMES:
        files.append(pool.FindServiceByName(service_name).file)
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                names.add(f"/{service.full_name}/{method.name}")
    return names


def test_every_rpc_has_a_policy_entry() -> None:
    methods = _all_methods()
    missing = sorted(m for m in methods if m not in POLICY)
    assert missing == [], f"RPCs without a policy entry (they would be refused): {missing}"


def test_every_policy_entry_names_a_real_rpc() -> None:
    known = _all_methods() | {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}
    stale = sorted(m for m in POLICY if m not in known)
    assert stale == []


def test_every_ticketing_service_is_served() -> None:
    import pkgutil

    import ticketing.v1 as v1

    declared: set[str] = set()
    for mod in pkgutil.iter_modules(v1.__path__):
        if mod.name.endswith("_pb2"):
            module = __import__(f"ticketing.v1.{mod.name}", fromlist=["DESCRIPTOR"])
            declared |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
    assert declared == set(SERVICE_NAMES)


async def test_method_without_policy_is_refused(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(POLICY, "/ticketing.v1.AuthService/Login")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Login(auth_pb2.LoginRequest(email="a@b.cd", password="x" * 10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_health_is_serving_without_token(stubs: Stubs) -> None:
    from grpc_health.v1 import health_pb2_grpc

    health = health_pb2_grpc.HealthStub(stubs.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="ticketing.v1.AuthService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING

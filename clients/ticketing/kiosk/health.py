"""Is the gate service there? One grpc.health.v1 Check, and the start-up wait built on it.

A poll with a short deadline rather than Health/Watch: a stream on a frozen server or a
silently dropped connection just goes quiet, while a Check times out. The kiosk polls while it
runs (`Kiosk.maintain`) and, before it signs in, until the server serves
(`ticketing.kiosk.signin.wait_for_server`).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2

from ticketing.errors import decode_error

GATE_SERVICE = "ticketing.v1.GateService"
NOT_SERVING = (
    "NOT_SERVING: the server is up but not serving (shutting down, or its database is away)"
)
# Statuses that say "the server is not reachable" rather than "it answered".
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


async def check_gate_service(health: Any, check_timeout: float) -> str:
    """One Health/Check of the gate service: "" when it serves, else why not ("CODE: ...").

    A refusal (e.g. UNAUTHENTICATED for an expired token, UNIMPLEMENTED on a server without
    health) counts as serving: the server did answer, and the real call will say the rest.
    """
    request = health_pb2.HealthCheckRequest(service=GATE_SERVICE)
    try:
        reply = await health.Check(request, timeout=check_timeout)
    except aio.AioRpcError as err:
        error = decode_error(err)
        return f"{error.code.name}: {error.message}" if error.code in UNREACHABLE else ""
    return "" if reply.status == health_pb2.HealthCheckResponse.SERVING else NOT_SERVING

"""The typed SDK entry point: `connect(target, token)` -> stubs with auth, deadlines and retry.

gRPC refuses call credentials on insecure channels, so on plaintext (loopback development)
the bearer token is attached by a client interceptor, and over TLS by call credentials.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from ticketing.v1 import auth_pb2_grpc

DEFAULT_TIMEOUT_SECONDS = 10.0

# Retry only UNAVAILABLE (server or database briefly away): such calls never reached a
# servicer or were refused before doing anything. ABORTED is retried by the SDK's booking
# helpers, which resend the same request_id so a retry never acts twice.
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "ticketing.v1.AuthService"}, {}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _AuthAndDeadline(aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization: Bearer` (plaintext only) and a default deadline to each call."""

    def __init__(self, token: Callable[[], str | None], timeout: float, add_token: bool) -> None:
        self._token = token
        self._timeout = timeout
        self._add_token = add_token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = list(client_call_details.metadata or [])
        token = self._token()
        if self._add_token and token and not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {token}"))
        details = aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout
            if client_call_details.timeout is not None
            else self._timeout,
            metadata=aio.Metadata(*metadata),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


class _TokenCallCredentials(grpc.AuthMetadataPlugin):
    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        token = self._token()
        callback((("authorization", f"Bearer {token}"),) if token else (), None)


class Client:
    """Connected stubs for every service. `login()` sets `token`; close when done."""

    def __init__(self, channel: aio.Channel, token: str | None = None) -> None:
        self.channel = channel
        self.token = token
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(channel)

    async def login(self, email: str, password: str) -> str:
        """Sign in and remember the token for later calls; returns it."""
        from ticketing.v1 import auth_pb2

        response = await self.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        self.token = response.access_token
        return self.token

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(
    target: str,
    token: str | None = None,
    *,
    tls: bool | grpc.ChannelCredentials = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    options: Sequence[tuple[str, Any]] = (),
) -> Client:
    """Open a channel to `target` (host:port) and return ready-to-use stubs.

    `tls=True` uses the system roots; pass ChannelCredentials for a private CA. Every call
    gets `timeout` seconds unless it passes its own, and UNAVAILABLE is retried with backoff.
    """
    holder: dict[str, Client] = {}

    def current_token() -> str | None:
        return holder["client"].token if "client" in holder else token

    channel_options = [
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        *options,
    ]
    if tls:
        base = grpc.ssl_channel_credentials() if tls is True else tls
        creds = grpc.composite_channel_credentials(
            base, grpc.metadata_call_credentials(_TokenCallCredentials(current_token))
        )
        interceptor = _AuthAndDeadline(current_token, timeout, add_token=False)
        channel = aio.secure_channel(
            target,
            creds,
            options=channel_options,
            interceptors=[interceptor],  # type: ignore[list-item]
        )
    else:
        interceptor = _AuthAndDeadline(current_token, timeout, add_token=True)
        channel = aio.insecure_channel(
            target,
            options=channel_options,
            interceptors=[interceptor],  # type: ignore[list-item]
        )
    client = Client(channel=channel, token=token)
    holder["client"] = client
    return client

"""The server interceptor: authenticates, applies the policy table, and maps errors.

It wraps each method handler rather than only inspecting metadata, so that the principal is
bound in the same task that runs the servicer, and so that every domain or database error,
whichever service raised it, is turned into a status in one place (`ticketd.edge.status`).
It also records the caller's deadline for the database layer (`ticketd.deadline`), and
admits each call against its class's in-flight budget (`ticketd.edge.admission`) before
anything else runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias

import grpc
from grpc import aio

from ticketd import errors
from ticketd.auth.cache import AUTH_CHANGING_METHODS, PrincipalCache
from ticketd.auth.credentials import Credential, Scheme, parse_authorization
from ticketd.auth.policy import Access, access_for
from ticketd.auth.principal import PartnerScope, Principal, bind_principal, unbind_principal
from ticketd.auth.tokens import TokenClaims, TokenService
from ticketd.deadline import reset_call_deadline, set_call_deadline
from ticketd.edge.admission import Admission, Admitted
from ticketd.edge.contract_rules import ContractRules
from ticketd.edge.convert import time_remaining
from ticketd.edge.decoding import Deserializer, decode_request, decoding_handler
from ticketd.edge.status import internal_status, to_status
from ticketd.edge.textcheck import nul_field
from ticketd.observability import logs, metrics, tracing

log = logging.getLogger("ticketd.rpc")


# What a stream's write raises once its reader has gone (cancelled, disconnected): grpc core
# refuses the send before the cancellation shows in context.cancelled() (grpc/grpc#24758).
# grpc exports no public name for it, hence the lookup.
def _peer_gone_errors() -> tuple[type[BaseException], ...]:
    cygrpc = getattr(getattr(grpc, "_cython", None), "cygrpc", None)
    found = getattr(cygrpc, "ExecuteBatchError", None)
    return (found,) if isinstance(found, type) and issubclass(found, BaseException) else ()


_PEER_GONE = _peer_gone_errors()

# Methods of the contract (server streaming ones get the full treatment; other streaming
# methods are infrastructure: health Watch, reflection).
OUR_PACKAGE = "/ticketing.v1."
# A held refusal is still answered this long before the caller's deadline.
_HOLD_DEADLINE_MARGIN_S = 0.05

# grpc's runtime class is not generic; only its stubs are.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class PrincipalLoader(Protocol):
    """Reads the current roles of a token's user; None if the user no longer exists.
    Raises UNAUTHENTICATED for a disabled account or a revoked token generation."""

    async def __call__(self, claims: TokenClaims) -> Principal | None: ...


class SecretLoader(Protocol):
    """The principal behind a high-entropy secret of one scheme (a device credential, an
    API key); None if unknown. Raises UNAUTHENTICATED with its own reason for a revoked or
    suspended one (DEVICE_REVOKED, API_KEY_REVOKED, PARTNER_SUSPENDED)."""

    async def __call__(self, secret: str, /) -> Principal | None: ...


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Default-deny role checks plus error mapping for every RPC."""

    def __init__(
        self,
        tokens: TokenService,
        load_principal: PrincipalLoader,
        contract: ContractRules,
        admission: Admission | None = None,
        secret_loaders: Mapping[Scheme, SecretLoader] | None = None,
        max_streams: int = 1000,
        partner_hint: Callable[[str], PartnerScope | None] | None = None,
        principals: PrincipalCache | None = None,
        refusal_hold: float = 0.0,
        max_held: int = 10_000,
    ) -> None:
        """`secret_loaders` maps each non-Bearer scheme to its loader; a scheme without one
        authenticates nobody. `principals` (optional) answers repeat credentials from
        memory, revocation-safe (ticketd.auth.cache). `refusal_hold`: seconds an over-budget
        partner's refusal is held before it is sent (`_hold_refusal`)."""
        self._refusal_hold = refusal_hold
        self._max_held = max_held
        self._held = 0
        self._principals = principals or PrincipalCache(None)
        self._tokens = tokens
        self._load_principal = load_principal
        self._contract = contract
        self._admission = admission
        self._secret_loaders = dict(secret_loaders or {})
        self._partner_hint = partner_hint
        self._max_streams = max_streams
        self._streams = 0

    @staticmethod
    def _credential(rule: Access, metadata: Any) -> Credential | None:
        """The call's credential, parsed once; None for a public method, whose calls ignore
        any token: no servicer of a public method reads the caller, and a health check must
        answer without the database and without failing on the expired token a kiosk's SDK
        attaches to every call."""
        return None if rule.public else parse_authorization(metadata)

    async def _authorize(
        self, method: str, rule: Access, credential: Credential | None
    ) -> Principal | None:
        if rule.public:
            return None
        if credential is None:
            raise errors.Unauthenticated("this call needs 'authorization: Bearer <token>'")
        principal = await self._authenticate(credential)
        if not rule.allows(principal.roles, principal.kind):
            raise errors.PermissionDenied(
                f"your roles do not allow {method.rsplit('/', 1)[-1]}",
                reason=errors.Reason.ROLE_NOT_ALLOWED,
                metadata={"method": method},
            )
        return principal

    def _known_partner(self, credential: Credential | None) -> PartnerScope | None:
        """The partner budget hint of an API key call; None for anything else."""
        if credential is None or credential.scheme is not Scheme.API_KEY:
            return None
        if self._partner_hint is None:
            return None
        return self._partner_hint(credential.secret)

    async def _authenticate(self, credential: Credential) -> Principal:
        cache = self._principals
        principal: Principal | None = None
        key: object
        if credential.scheme is Scheme.BEARER:
            # The token is verified on every call (signature, expiry); only the row read
            # behind it is cached, per user and token generation.
            claims = self._tokens.verify(credential.secret)
            key = cache.user_key(claims.user_id, claims.generation)
            principal = cache.get(key)
            if principal is None:
                epoch = cache.epoch()
                principal = await self._load_principal(claims)
                if principal is not None:
                    cache.put(key, principal, epoch)
        else:
            loader = self._secret_loaders.get(credential.scheme)
            if loader is not None:
                key = cache.key(credential.scheme.value, credential.secret)
                principal = cache.get(key)
                if principal is None:
                    epoch = cache.epoch()
                    principal = await loader(credential.secret)
                    if principal is not None:
                        cache.put(key, principal, epoch)
        if principal is None:
            raise errors.Unauthenticated(
                "invalid or expired access token", reason=errors.Reason.INVALID_TOKEN
            )
        return principal

    @property
    def open_streams(self) -> int:
        """Server streams this process is serving right now."""
        return self._streams

    @property
    def held_refusals(self) -> int:
        """Refusals being held right now (`_hold_refusal`)."""
        return self._held

    async def _hold_refusal(self, context: aio.ServicerContext[Any, Any]) -> None:
        """Answer an over-budget partner's call only after `refusal_hold` seconds (never
        past its deadline), holding nothing but its stream: a client that ignores RetryInfo
        then cannot make this process refuse faster than its own calls in flight divided by
        the hold, so a flood's refusals stop taking the CPU other callers need. A client
        that honours RetryInfo waits about as long anyway. At most `max_held` refusals are
        held at once; beyond that they are answered at once."""
        hold = self._refusal_hold
        if hold <= 0 or self._held >= self._max_held:
            return
        remaining = time_remaining(context)
        if remaining is not None:
            hold = min(hold, remaining - _HOLD_DEADLINE_MARGIN_S)
        if hold <= 0:
            return
        self._held += 1
        try:
            await asyncio.sleep(hold)
        finally:
            self._held -= 1

    async def _after_auth_change(self, method: str) -> None:
        """After a call that changed credentials succeeded, and before its answer goes out:
        this process forgets every cached principal at once, and waits until it has seen
        the change's own NOTIFY (which every other process is sent at the same commit)."""
        if method in AUTH_CHANGING_METHODS:
            self._principals.invalidate()
            await self._principals.barrier()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        rule = access_for(method)
        if rule is None:
            return _deny_handler(handler, method)
        if handler.unary_unary is not None:
            # No deserializer here: the wrapper decodes the raw bytes itself (ticketd.edge.
            # decoding), so bad bytes are INVALID_ARGUMENT rather than grpc's UNKNOWN.
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(
                    method,
                    rule,
                    handler.unary_unary,  # type: ignore[arg-type]
                    handler.request_deserializer,
                ),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and method.startswith(OUR_PACKAGE):
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(
                    method,
                    rule,
                    handler.unary_stream,  # type: ignore[arg-type]
                    handler.request_deserializer,
                ),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if rule.public:
            # Streaming infrastructure (health Watch, reflection): nothing to bind, but its
            # requests are decoded the same way.
            return decoding_handler(handler, method)
        return _deny_handler(handler, method)

    def _checked_request(self, raw: Any, deserializer: Deserializer | None) -> Any:
        """The request's checks, after the policy's (a refused caller learns only that): its
        bytes, NUL characters and declared rules. Returns the decoded request."""
        request = decode_request(raw, deserializer)
        bad = nul_field(request)
        if bad is not None:
            raise errors.InvalidArgument.one(bad, "must not contain NUL characters")
        declared = self._contract.violations(request)
        if declared:
            raise errors.InvalidArgument([v.field_violation() for v in declared])
        return request

    def _wrap_stream(
        self,
        method: str,
        rule: Access,
        behavior: Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[None]],
        deserializer: Deserializer | None = None,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[None]]:
        """Server streaming: the same checks and error mapping as a unary call. A stream
        lives long, so it takes no place of the per-call admission budget: it counts toward
        the server's `max_streams` instead."""

        async def wrapped(raw: Any, context: aio.ServicerContext[Any, Any]) -> None:
            bound: object | None = None
            counted = False
            partner_stream: Admitted | None = None
            started = time.perf_counter()
            code = "OK"
            reason: str | None = None
            deadline = set_call_deadline(time_remaining(context))
            try:
                if self._streams >= self._max_streams:
                    raise errors.ResourceExhausted(
                        f"this server already serves {self._max_streams} streams",
                        reason=errors.Reason.STREAM_LIMIT_EXCEEDED,
                        retry_after=1.0,
                    )
                self._streams += 1
                counted = True
                metrics.STREAMS_ACTIVE.labels(method).inc()
                credential = self._credential(rule, context.invocation_metadata())
                principal = await self._authorize(method, rule, credential)
                scope = principal.partner if principal is not None else None
                if self._admission is not None and scope is not None:
                    # A partner's streams count against its own budget too (docs/partners.md).
                    try:
                        partner_stream = self._admission.enter_partner_stream(
                            scope.partner_id, rate=scope.rate_per_second
                        )
                    except errors.ResourceExhausted:
                        await self._hold_refusal(context)
                        raise
                request = self._checked_request(raw, deserializer)
                bound = bind_principal(principal)
                await behavior(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:
                if context.cancelled() or isinstance(exc, _PEER_GONE):
                    # The reader went away (cancelled, disconnected, deadline): a write
                    # then fails inside grpc, and there is no one left to tell, so this is
                    # the stream's normal end, not an internal error to log.
                    log.info("%s: the reader left mid-stream (%s)", method, type(exc).__name__)
                    code = "CANCELLED"
                    return
                if isinstance(exc, errors.DomainError):
                    status = to_status(exc)
                    reason = exc.reason.value
                else:
                    status = internal_status(exc, method)
                    reason = errors.Reason.INTERNAL.value
                code = status.code.name
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if counted:
                    self._streams -= 1
                    metrics.STREAMS_ACTIVE.labels(method).dec()
                if partner_stream is not None:
                    partner_stream.release()
                metrics.observe_rpc(method, code, time.perf_counter() - started, reason)
                reset_call_deadline(deadline)
                if bound is not None:
                    unbind_principal(bound)

        return wrapped

    def _wrap_unary(
        self,
        method: str,
        rule: Access,
        behavior: Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]],
        deserializer: Deserializer | None = None,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def wrapped(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            bound: object | None = None
            admitted: Admitted | None = None
            principal: Principal | None = None
            partner_admitted: Admitted | None = None
            started = time.perf_counter()
            code = "OK"
            reason: str | None = None
            correlation_id: str | None = None
            recorded = False

            def record() -> None:
                nonlocal recorded
                if recorded:
                    return
                recorded = True
                elapsed = time.perf_counter() - started
                metrics.observe_rpc(method, code, elapsed, reason)
                if logs.access_enabled():
                    logs.access(
                        method=method,
                        principal=_principal_label(principal),
                        duration_s=elapsed,
                        code=code,
                        reason=reason,
                        correlation_id=correlation_id or tracing.current_trace_id(),
                    )

            deadline = set_call_deadline(time_remaining(context))
            try:
                if self._admission is not None:
                    admitted = self._admission.enter(method)
                credential = self._credential(rule, context.invocation_metadata())
                if self._admission is not None:
                    # A partner known from an earlier call is held to its budget before its
                    # key is looked up: a flood's refusals cost no database connection.
                    hint = self._known_partner(credential)
                    if hint is not None:
                        try:
                            partner_admitted = self._admission.enter_partner(
                                hint.partner_id,
                                max_in_flight=hint.max_in_flight,
                                rate=hint.rate_per_second,
                            )
                        except errors.ResourceExhausted:
                            if admitted is not None:
                                admitted.release()
                            await self._hold_refusal(context)
                            raise
                principal = await self._authorize(method, rule, credential)
                scope = principal.partner if principal is not None else None
                if self._admission is not None and scope is not None and partner_admitted is None:
                    # Only now is the partner known: its own budget, on top of the shared one.
                    try:
                        partner_admitted = self._admission.enter_partner(
                            scope.partner_id,
                            max_in_flight=scope.max_in_flight,
                            rate=scope.rate_per_second,
                        )
                    except errors.ResourceExhausted:
                        if admitted is not None:
                            admitted.release()
                        await self._hold_refusal(context)
                        raise
                request = self._checked_request(raw, deserializer)
                bound = bind_principal(principal)
                response = await behavior(request, context)
                await self._after_auth_change(method)
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except aio.AbortError:
                # The servicer aborted with its own status (rare: the edge maps errors).
                code = _code_name(context)
                raise
            except Exception as exc:
                # A refused call gives its admission place back before its status is sent:
                # writing thousands of refusals must not fill the budget it protects.
                if admitted is not None:
                    admitted.release()
                if partner_admitted is not None:
                    partner_admitted.release()
                if isinstance(exc, errors.DomainError):
                    status = to_status(exc)
                    reason = exc.reason.value
                else:
                    # With tracing on, the trace id is the correlation id: the client's
                    # message leads the operator straight to the trace.
                    correlation_id = tracing.current_trace_id() or uuid.uuid4().hex
                    status = internal_status(exc, method, correlation_id=correlation_id)
                    reason = errors.Reason.INTERNAL.value
                code = status.code.name
                # Recorded before the status goes out: whoever sees the answer can already
                # see the access line and the counters.
                record()
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if admitted is not None:
                    admitted.release()
                if partner_admitted is not None:
                    partner_admitted.release()
                reset_call_deadline(deadline)
                if bound is not None:
                    unbind_principal(bound)
                record()

        return wrapped


def _code_name(context: aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"


def _principal_label(principal: Principal | None) -> str | None:
    """Who called, for logs: kind and id, never the email (logs are not a user directory)."""
    if principal is None:
        return None
    return f"{principal.kind.value.lower()}:{principal.user_id}"


def _deny_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that refuses the call: used for methods with no policy entry."""
    status = to_status(
        errors.PermissionDenied(
            "this method has no access policy",
            reason=errors.Reason.NO_POLICY,
            metadata={"method": method},
        )
    )

    async def deny_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def deny_stream(
        request: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield None  # pragma: no cover - abort raises

    # The request is never read: leave it undecoded, so no bytes can turn the refusal into
    # a decoding error.
    kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)

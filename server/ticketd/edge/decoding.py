"""Request decoding at the edge: bytes that are not a valid message are INVALID_ARGUMENT.

grpc runs a method's request deserializer before any interceptor code, and a DecodeError
there (a string field that is not valid UTF-8, broken framing) reaches the client as UNKNOWN
"Unexpected DecodeError". The interceptor therefore registers its handlers without a
deserializer, receives the raw bytes, and decodes them here, inside its own error mapping:
a failure becomes `InvalidArgument`, naming the string field that holds bad UTF-8 when one
does (found by a walk over the wire format, only on the failure path).

`decode_request` is for unary requests; `decode_stream` wraps a request iterator for
client-streaming methods; `decoding_handler` gives any handler (all four RPC kinds) its own
decoding, for the methods the interceptor passes through unwrapped (health Watch, reflection).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc import aio

from ticketd import errors
from ticketd.edge.status import to_status
from ticketd.observability import metrics

Deserializer = Callable[[bytes], Any]

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


def decode_request(raw: Any, deserializer: Deserializer | None) -> Any:
    """The request message from its wire bytes; raises InvalidArgument if they are not one.

    Anything but bytes (a handler registered with its own deserializer) is returned as is.
    """
    if deserializer is None or not isinstance(raw, bytes | bytearray | memoryview):
        return raw
    data = bytes(raw)
    try:
        return deserializer(data)
    except Exception:  # the deserializer only ever sees client bytes: any failure is theirs
        raise _invalid(data, deserializer) from None


async def decode_stream(
    raw_requests: AsyncIterator[Any], deserializer: Deserializer | None
) -> AsyncIterator[Any]:
    """Each message of a request stream, decoded; the first bad one raises InvalidArgument."""
    async for raw in raw_requests:
        yield decode_request(raw, deserializer)


def _invalid(data: bytes, deserializer: Deserializer) -> errors.InvalidArgument:
    descriptor = _descriptor_of(deserializer)
    if descriptor is not None:
        path = bad_utf8_field(data, descriptor)
        if path is not None:
            return errors.InvalidArgument.one(path, "must be valid UTF-8 text")
        name = descriptor.full_name
    else:
        name = "request"
    return errors.InvalidArgument(
        [errors.FieldViolation("request", f"is not a valid {name} message")]
    )


def _descriptor_of(deserializer: Deserializer) -> Descriptor | None:
    """The message type a generated deserializer (`SomeMessage.FromString`) builds."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor if isinstance(descriptor, Descriptor) else None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def bad_utf8_field(data: bytes, descriptor: Descriptor, prefix: str = "") -> str | None:
    """The dotted path (as BadRequest names fields: `venue.sections[2].name`, `ids[0]`) of
    the first string field whose bytes are not UTF-8, or None (also when the framing itself
    is broken before one is found). Map fields are named without a key: it may be the key
    that cannot be decoded."""
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                _, pos = _varint(data, pos)
                continue
            if wire in (_I64, _I32):
                pos += 8 if wire == _I64 else 4
                continue
            if wire != _LEN:
                return None  # groups: not in this contract; nothing more to say
            size, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + size], pos + size
            if len(chunk) != size:
                return None
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue  # unknown fields are kept as bytes, never decoded as text
            index = seen.get(number, 0)
            seen[number] = index + 1
            path = prefix + field.name
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{path}[{index}]" if field.is_repeated else path
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                entry = field.message_type
                if entry.GetOptions().map_entry:
                    if bad_utf8_field(chunk, entry) is not None:
                        return path
                    continue
                inner = f"{path}[{index}]." if field.is_repeated else f"{path}."
                found = bad_utf8_field(chunk, entry, inner)
                if found is not None:
                    return found
    except ValueError:
        return None
    return None


async def _refuse(exc: errors.InvalidArgument, context: aio.ServicerContext[Any, Any]) -> None:
    status = to_status(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)


def decoding_handler(
    handler: grpc.RpcMethodHandler[Any, Any], name: str = ""
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, decoding its requests itself: bad bytes end the call with
    INVALID_ARGUMENT instead of UNKNOWN. For handlers the interceptor does not otherwise wrap
    (public streaming infrastructure); every RPC kind keeps its kind and its response side.
    Open server-streaming calls of `name` are counted (ticketd_streams_active)."""
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    serializer = handler.response_serializer
    request_streaming = handler.stream_unary is not None or handler.stream_stream is not None
    method: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    assert method is not None

    def request_of(raw: Any) -> Any:
        if request_streaming:
            return decode_stream(raw, deserializer)
        return decode_request(raw, deserializer)

    behavior: Any
    if inspect.isasyncgenfunction(method):
        # grpc tells a servicer that yields its responses from one that writes them with
        # context.write by the function's kind: the wrapper must be of the same kind.
        async def generator(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with _open_stream(name, bool(handler.response_streaming)):
                try:
                    async for response in method(request_of(raw), context):
                        yield response
                except errors.InvalidArgument as exc:
                    await _refuse(exc, context)

        behavior = generator
    else:

        async def coroutine(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            with _open_stream(name, bool(handler.response_streaming)):
                try:
                    return await method(request_of(raw), context)
                except errors.InvalidArgument as exc:
                    await _refuse(exc, context)

        behavior = coroutine
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make: Any = kinds[(request_streaming, bool(handler.response_streaming))]
    return make(behavior, request_deserializer=None, response_serializer=serializer)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _open_stream(name: str, streaming: bool) -> Iterator[None]:
    """Count a server-streaming call as open while it runs."""
    if not streaming:
        yield
        return
    gauge = metrics.STREAMS_ACTIVE.labels(name or "unknown")
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()

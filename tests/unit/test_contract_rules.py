"""The server's compiled contract rules agree with protovalidate itself.

protovalidate-python is the reference (too slow for the request path: it evaluates CEL in pure
Python); here it judges hypothesis-generated requests of every RPC, and the server's compiled
rules (ticketd.edge.contract_rules) must find exactly the same broken rules at the same paths.
"""

from __future__ import annotations

import uuid
from typing import Any

import protovalidate
import pytest
from buf.validate import validate_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ticketd.app import _SERVICES, contract_rules
from ticketd.edge.contract_rules import ContractRules, UnsupportedRule

RULES = contract_rules()
# protovalidate ships no type hints (ignore_missing_imports in pyproject.toml).
VALIDATOR = protovalidate.Validator()  # type: ignore[no-untyped-call]
REQUESTS = sorted(
    {m.input_type.full_name: m.input_type for s in _SERVICES for m in s.methods}.items()
)

_INTS = [-(2**31), -101, -1, 0, 1, 2, 99, 100, 101, 9_999, 10_000, 10_001, 2**31 - 1]
_STRINGS = ["", "a", " ", "x" * 8, "é" * 37, str(uuid.uuid4()), "not-a-uuid", "Z" * 300]


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.sampled_from(_INTS)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.sampled_from([*_INTS, -(2**63), 2**63 - 1])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        return st.sampled_from([0, 1, 100, 101, 2**32 - 1])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(_STRINGS) | st.text(max_size=20)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8)
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([*field.enum_type.values_by_number, 99])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    raise AssertionError(f"no strategy for {field.full_name}")


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    msg = GetMessageClass(descriptor)()
    oneof_choice = {
        o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
        for o in descriptor.oneofs
        if not o.name.startswith("_")
    }
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if (
            oneof is not None
            and not oneof.name.startswith("_")
            and oneof_choice[oneof.name] != field.name
        ):
            continue
        if field.has_presence and draw(st.booleans()):
            continue  # leave unset
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            keys = draw(st.lists(_scalar(entry.fields_by_name["key"]), max_size=3, unique=True))
            value_field = entry.fields_by_name["value"]
            for key in keys:
                if value_field.message_type is None:
                    getattr(msg, field.name)[key] = draw(_scalar(value_field))
            continue
        if field.is_repeated:
            if field.message_type is not None:
                if field.message_type.full_name == "google.protobuf.Timestamp":
                    continue
                if depth < 2:
                    items = draw(st.lists(_message(field.message_type, depth + 1), max_size=3))
                    getattr(msg, field.name).extend(items)
                continue
            size = draw(st.sampled_from([0, 1, 2, 3, 100, 101]))
            item = _scalar(field)
            values = draw(st.lists(item, min_size=min(size, 3), max_size=min(size, 3)))
            if size > 3:
                values = (values * (size // max(len(values), 1) + 1))[:size] if values else []
            getattr(msg, field.name).extend(values)
            continue
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                # Only valid instants: protovalidate cannot even read an out-of-range one
                # inside a list it checks (UploadOfflineScansRequest.scans[].scan_time).
                ts = getattr(msg, field.name)
                ts.seconds = draw(st.integers(-62135596800, 253402300799))
                ts.nanos = draw(st.integers(0, 999_999_999))
            elif depth < 2:
                getattr(msg, field.name).CopyFrom(draw(_message(field.message_type, depth + 1)))
            continue
        setattr(msg, field.name, draw(_scalar(field)))
    return msg


def _path(field_path: validate_pb2.FieldPath) -> str:
    out = ""
    for element in field_path.elements:
        out += ("." if out else "") + element.field_name
        which = element.WhichOneof("subscript")
        if which == "index":
            out += f"[{element.index}]"
        elif which is not None:
            out += f"[{getattr(element, which)}]"
    return out


def _reference(msg: Message) -> set[tuple[str, str]]:
    return {(_path(v.proto.field), v.proto.rule_id) for v in VALIDATOR.collect_violations(msg)}


def _ours(msg: Message) -> set[tuple[str, str]]:
    return {(v.path, v.rule_id) for v in RULES.violations(msg)}


# protovalidate evaluates CEL in pure Python: ~1 min for every RPC, so not in the quick loop.
@pytest.mark.slow
@pytest.mark.parametrize("descriptor", [d for _, d in REQUESTS], ids=[n for n, _ in REQUESTS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_same_verdict_as_protovalidate(descriptor: Descriptor, data: st.DataObject) -> None:
    msg = data.draw(_message(descriptor))
    assert _ours(msg) == _reference(msg)


def test_the_contract_declares_rules_at_all() -> None:
    """Guards the conformance test against passing vacuously."""
    from ticketing.v1 import booking_pb2

    assert RULES.violations(booking_pb2.BookSeatsRequest()) != []
    assert _reference(booking_pb2.BookSeatsRequest()) == _ours(booking_pb2.BookSeatsRequest())


def test_a_rule_the_server_cannot_enforce_stops_it_at_start() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    fd = descriptor_pb2.FileDescriptorProto(
        name="tests/probe_unsupported_rule.proto",
        package="probe",
        dependency=["buf/validate/validate.proto"],
        syntax="proto3",
    )
    message = fd.message_type.add(name="Probe")
    field = message.field.add(
        name="email",
        number=1,
        type=FieldDescriptor.TYPE_STRING,
        label=FieldDescriptor.LABEL_OPTIONAL,
    )
    field.options.Extensions[validate_pb2.field].string.email = True
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(fd.SerializeToString())
    with pytest.raises(UnsupportedRule, match="email"):
        ContractRules([pool.FindMessageTypeByName("probe.Probe")])


def test_every_page_size_is_declared_non_negative() -> None:
    """resolve_page_size relies on it (AIP-158: negative is INVALID_ARGUMENT)."""
    sizes = [d.fields_by_name["page_size"] for _, d in REQUESTS if "page_size" in d.fields_by_name]
    assert len(sizes) >= 6
    for field in sizes:
        rules = field.GetOptions().Extensions[validate_pb2.field]
        assert rules.int32.HasField("gte") and rules.int32.gte == 0, field.full_name

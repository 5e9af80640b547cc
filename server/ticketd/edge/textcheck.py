"""Refuse text PostgreSQL cannot store, for every RPC, before any work is done.

A NUL character is valid in a protobuf string but not in a PostgreSQL text value: without
this check it would surface deep inside a transaction as an error. One walk over the request
in the interceptor names the field instead.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The dotted path of the first string field (or map key/value) holding a NUL, or None."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.type == _STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    if "\x00" in item:
                        return f"{path}[{i}]"
            elif "\x00" in value:
                return path
        elif field.type == _MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and "\x00" in key:
                        return f"{path}[{key!r}]"
                    if isinstance(item, str) and "\x00" in item:
                        return f"{path}[{key!r}]"
                    if isinstance(item, Message):
                        found = nul_field(item, f"{path}[{key!r}].")
                        if found:
                            return found
            elif field.is_repeated:
                for i, item in enumerate(value):
                    found = nul_field(item, f"{path}[{i}].")
                    if found:
                        return found
            else:
                found = nul_field(value, path + ".")
                if found:
                    return found
    return None

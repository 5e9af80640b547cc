"""Records from result rows: one mapping for every repository, where columns are named as
the record's fields."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


class Row(Protocol):
    """What a result row offers (an asyncpg Record): a value by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


@functools.cache
def _init_fields(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def record_from_row(cls: type[R], row: Row, /, **overrides: Any) -> R:
    """`cls` with each field taken from the row's column of the same name, except those in
    `overrides` (a converted enum, a nested record, a column named otherwise). Every other
    field must be a column (KeyError otherwise): a record never takes a default silently."""
    values = {name: row[name] for name in _init_fields(cls) if name not in overrides}
    return cls(**values, **overrides)

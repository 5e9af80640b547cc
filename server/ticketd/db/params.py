"""Numbered parameters for SQL assembled from optional filters."""

from __future__ import annotations

from typing import Any


class Params(list[Any]):
    """Collects values and names their placeholders: `where.append(f"x = {p(value)}")`,
    then `conn.fetch(sql, *p)`. Values never enter the SQL text."""

    def __call__(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}"

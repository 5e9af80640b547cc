"""Per-transaction bounds that keep database work inside the caller's deadline."""

from __future__ import annotations

from typing import Any


async def bound_waits(conn: Any, remaining_seconds: float | None, lock_timeout_ms: int) -> None:
    """Keep lock waits and statements inside the caller's deadline.

    The connection already carries the configured lock_timeout; a caller with less time
    left gets a tighter bound so that no transaction outlives the RPC that started it.
    """
    if remaining_seconds is None:
        return
    budget_ms = int(remaining_seconds * 1000)
    if budget_ms >= lock_timeout_ms * 2:
        return
    lock_ms = max(20, min(lock_timeout_ms, budget_ms // 2))
    stmt_ms = max(50, budget_ms)
    await conn.execute(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
        f"{lock_ms}ms",
        f"{stmt_ms}ms",
    )

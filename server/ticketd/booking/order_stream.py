"""SQL of the order-change stream (WatchOrders): reads of `order_changes` (migration 0014).

The records themselves are written by triggers on `orders`, so no booking statement knows
about them. This is the booking domain's repository for that stream, kept apart from
repository.py (the booking statements) so each can change without touching the other.
"""

from __future__ import annotations

import uuid
from typing import Any

from ticketd.booking.rules import OrderChangeRecord, OrderStatus, OrderWatchScope
from ticketd.db import outbox
from ticketd.db.params import Params


async def event_exists(conn: Any, event_id: uuid.UUID) -> bool:
    """Whether the event exists (a filter naming an unknown one is NOT_FOUND)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)", event_id))


async def last_sequence(conn: Any) -> int:
    """The order stream's last numbered change (0: none yet)."""
    return await outbox.last_sequence(conn, outbox.ORDERS, outbox.ALL)


async def pruned_through(conn: Any) -> int:
    """Up to where the order stream's changes may have been pruned (0: none was)."""
    return await outbox.pruned_through(conn, outbox.ORDERS, outbox.ALL)


async def changes_after(
    conn: Any,
    scope: OrderWatchScope,
    event_id: uuid.UUID | None,
    after: int,
    limit: int,
) -> tuple[list[OrderChangeRecord], int, bool]:
    """The changes numbered after `after` this scope may see (optionally of one event), in
    order, at most `limit`; the sequence read up to (the stream's last when fewer came
    back: the rest belongs to others); whether more may be there."""
    arg = Params()
    key = arg(outbox.ALL)
    clauses = [f"c.stream_key = {key}", f"c.sequence > {arg(after)}", "c.sequence <= top.n"]
    if event_id is not None:
        clauses.append(f"c.event_id = {arg(event_id)}")
    if not scope.everyone:
        either = []
        if scope.partner_id is not None:
            either.append(f"c.partner_id = {arg(scope.partner_id)}")
        if scope.organizer_id is not None:
            either.append(f"c.organizer_id = {arg(scope.organizer_id)}")
        if scope.customer_id is not None:
            either.append(f"(c.partner_id IS NULL AND c.customer_id = {arg(scope.customer_id)})")
        clauses.append("(" + (" OR ".join(either) or "false") + ")")
    # The counter and the records in one snapshot: every number up to top.n is visible.
    rows = await conn.fetch(
        f"""
        WITH top AS (
            SELECT coalesce((SELECT last_sequence FROM outbox_streams
                             WHERE stream = 'orders' AND key = {key}), 0) AS n
        )
        SELECT c.sequence, c.order_id, c.event_id, c.status, c.partner_id, c.total_minor,
               c.currency_code, c.change_time, top.n AS top
        FROM top LEFT JOIN order_changes c ON {" AND ".join(clauses)}
        ORDER BY c.sequence LIMIT {arg(limit)}
        """,
        *arg,
    )
    top = int(rows[0]["top"]) if rows else after
    records = [record_of(r) for r in rows if r["sequence"] is not None]
    if len(records) == limit:
        return records, records[-1].sequence, True
    return records, max(after, top), False


async def stream_page(conn: Any, after: int, limit: int) -> tuple[list[Any], bool]:
    """Every change numbered after `after`, whoever may see it, in order, at most `limit`
    (the page WatchOrders' readers share and each filters with OrderWatchScope.admits);
    whether more may be there."""
    rows: list[Any] = await conn.fetch(
        "SELECT sequence, order_id, event_id, organizer_id, customer_id, status, partner_id, "
        "total_minor, currency_code, change_time FROM order_changes "
        "WHERE stream_key = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        outbox.ALL,
        after,
        limit,
    )
    return rows, len(rows) == limit


def record_of(row: Any) -> OrderChangeRecord:
    """The change as WatchOrders sends it (the buyer left out)."""
    return OrderChangeRecord(
        sequence=row["sequence"],
        order_id=row["order_id"],
        event_id=row["event_id"],
        status=OrderStatus(row["status"]),
        partner_id=row["partner_id"],
        total_minor=row["total_minor"],
        currency_code=row["currency_code"],
        change_time=row["change_time"],
    )

"""All SQL for orders, tickets and refunds, and all seat locking for sales.

Sales, holds and confirmations are ONE statement each, run in autocommit (`sell`, `hold`,
`confirm`; see _locking_statement): lock, check and write in one round trip whatever the
order size, on asyncpg prepared statements with no ORM work per row. The statement-by-
statement versions below remain the transaction path (per-customer caps).
Lock order everywhere: event (KEY SHARE; CancelEvent takes it FOR UPDATE), then seats
(one statement, ORDER BY id), then orders/tickets. Specific seats never deadlock because
every buyer locks in id order; best available never queues because it SKIPs LOCKED rows.

"Has the event started?" is decided twice: early, to refuse cheaply, and finally inside the
statement that writes (the sale's CTE, the refund's CTE), on `clock_timestamp()` read once
by that statement. A call that waited on a lock across the start instant is refused then,
and the time it records (create_time, refund_time) is that same instant, so a stored time is
always one at which the write was allowed. (`now()` would be the transaction's start: a
lock wait later it can be seconds in the past.)
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from ticketd.booking.rules import (
    PUBLIC,
    AllocationRecord,
    Channel,
    EventRefunds,
    OrderRecord,
    OrderStatus,
    TicketRecord,
    TicketStatus,
    seat_locked,
)
from ticketd.db.database import Connection as Conn
from ticketd.db.idempotency import earlier_request
from ticketd.db.params import Params
from ticketd.db.records import record_from_row
from ticketd.observability import metrics
from ticketd.shared import EndCustomer


@dataclass(frozen=True)
class EventForSale:
    currency_code: str
    max_tickets_per_order: int
    max_tickets_per_customer: int | None
    cancelled: bool
    started: bool
    section_names: dict[uuid.UUID, str]
    existing_order_id: uuid.UUID | None
    existing_hash: str | None


# The sale terms of event `e`, read with its KEY SHARE lock by BookSeats, HoldSeats and
# ConfirmHold (their first statement), and the join that lists its sections.
_SALE_TERMS = """
    e.currency_code AS sale_currency_code, e.max_tickets_per_order, e.max_tickets_per_customer,
    e.cancel_time IS NOT NULL AS cancelled, e.start_time <= clock_timestamp() AS started,
    es.section_ids, es.section_names"""
_SECTIONS_OF_E = """
    CROSS JOIN LATERAL (
        SELECT array_agg(section_id ORDER BY position) AS section_ids,
               array_agg(name ORDER BY position) AS section_names
        FROM event_sections WHERE event_id = e.id
    ) es"""


def _sale_terms(row: Any) -> EventForSale:
    return EventForSale(
        currency_code=row["sale_currency_code"],
        max_tickets_per_order=row["max_tickets_per_order"],
        max_tickets_per_customer=row["max_tickets_per_customer"],
        cancelled=row["cancelled"],
        started=row["started"],
        section_names=dict(zip(row["section_ids"] or [], row["section_names"] or [], strict=True)),
        existing_order_id=row["existing_id"],
        existing_hash=row["existing_hash"],
    )


async def event_for_sale(
    conn: Conn,
    event_id: uuid.UUID,
    customer_id: uuid.UUID,
    request_id: uuid.UUID,
    *,
    made: Literal["orders", "holds"] = "orders",
) -> EventForSale | None:
    """The event's sale terms under KEY SHARE (so a cancel waits for us, and we for it),
    plus any order (or, with made="holds", hold) this caller already made with this
    request_id."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SALE_TERMS}, o.id AS existing_id, o.request_hash AS existing_hash
        FROM events e {_SECTIONS_OF_E}
        LEFT JOIN {made} o ON o.customer_id = $2 AND o.request_id = $3
        WHERE e.id = $1
        FOR KEY SHARE OF e
        """,
        event_id,
        customer_id,
        request_id,
    )
    return None if row is None else _sale_terms(row)


async def existing_request(
    conn: Conn, customer_id: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, str] | None:
    """(order id, request fingerprint) of an order this caller made with request_id."""
    return await earlier_request(conn, "orders", "customer_id", customer_id, request_id)


async def serialize_customer(
    conn: Conn,
    event_id: uuid.UUID,
    customer_id: uuid.UUID,
    *,
    except_hold: uuid.UUID | None = None,
) -> int:
    """Take this customer's per-event lock, then count the places they have: live tickets
    plus the seats of their live holds (but `except_hold`, the one being confirmed).

    The per-customer cap must hold even when one customer books from many connections at
    once: their bookings for one event take turns on a transaction-scoped advisory lock
    (hash collisions only serialize a little more, never allow more). The count runs in a
    separate statement so its snapshot is taken after the lock is ours.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1::text), hashtext($2::text))",
        str(event_id),
        str(customer_id),
    )
    held: int = await conn.fetchval(
        "SELECT (SELECT coalesce(sum(ticket_count), 0) FROM orders "
        "        WHERE customer_id = $1 AND event_id = $2 AND status = 'CONFIRMED') "
        "     + (SELECT coalesce(sum(seat_count), 0) FROM holds "
        "        WHERE customer_id = $1 AND event_id = $2 AND status = 'ACTIVE' "
        "        AND NOT hold_expired(expire_time) AND id IS DISTINCT FROM $3)",
        customer_id,
        event_id,
        except_hold,
    )
    return held


# `free` is THE condition (SQL function seat_is_free, migration 0011): AVAILABLE, or HELD by
# a hold that has expired. Computed on the row version the lock returns.
# With allocations (issue 13) "free" depends on who asks: seat_is_free_for (migration 0012)
# adds the channel to seat_is_free; `caller` and `public` are the placeholders of the
# caller's partner id and public-pool permission in the statement at hand.
def _free_for(caller: str, public: str, s: str = "s.") -> str:
    return (
        f"seat_is_free_for({s}status, {s}held_until, {s}allocation_partner_id, "
        f"{s}allocated_until, {caller}::uuid, {public}::boolean)"
    )


def _seat_columns(caller: str, public: str) -> str:
    return (
        f"s.id, s.status, s.hold_id, {_free_for(caller, public)} AS free, "
        "s.price_minor, s.section_id, s.row_label, s.seat_number, s.seat_label"
    )


async def lock_seats(
    conn: Conn, event_id: uuid.UUID, seat_ids: Sequence[int], channel: Channel = PUBLIC
) -> list[Any]:
    """Lock the requested places of this event in one statement, in id order (so two
    buyers with overlapping selections queue instead of deadlocking), waiting at most
    lock_timeout. Seats of other events are simply not returned. `free` is judged for
    `channel`."""
    try:
        return list(
            await conn.fetch(
                f"SELECT {_seat_columns('$3', '$4')} FROM seats s "
                "WHERE s.id = ANY($2::bigint[]) AND s.event_id = $1 "
                "ORDER BY s.id FOR UPDATE",
                event_id,
                list(seat_ids),
                channel.partner_id,
                channel.public_pool,
            )
        )
    except asyncpg.LockNotAvailableError:
        raise seat_locked() from None


async def claim_best_available(
    conn: Conn,
    event_id: uuid.UUID,
    section_id: uuid.UUID,
    quantity: int,
    channel: Channel = PUBLIC,
) -> list[Any]:
    """The lowest free places of a section (row by row, seat by seat), skipping places
    other buyers have locked right now, so concurrent buyers never queue behind each
    other. Served by the partial index on places not SOLD; held places whose hold is live
    are passed over, and so are places `channel` may not take. A partner's own allocated
    places come first."""
    order = "s.ordinal"
    if channel.partner_id is not None:
        order = "(s.allocation_partner_id = $4 AND allocation_open(s.allocated_until)) "
        order += "IS TRUE DESC, s.ordinal"
    rows = await conn.fetch(
        f"SELECT {_seat_columns('$4', '$5')} FROM seats s "
        "WHERE s.event_id = $1 AND s.section_id = $2 AND s.status <> 'SOLD' "
        f"AND {_free_for('$4', '$5')} "
        f"ORDER BY {order} LIMIT $3 FOR UPDATE SKIP LOCKED",
        event_id,
        section_id,
        quantity,
        channel.partner_id,
        channel.public_pool,
    )
    return sorted(rows, key=lambda r: r["id"])


async def count_available(
    conn: Conn, event_id: uuid.UUID, section_id: uuid.UUID, channel: Channel = PUBLIC
) -> int:
    """Free places for `channel` including those locked by in-flight buyers (who may still
    roll back)."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM seats WHERE event_id = $1 AND section_id = $2 "
        f"AND status <> 'SOLD' AND {_free_for('$3', '$4', '')}",
        event_id,
        section_id,
        channel.partner_id,
        channel.public_pool,
    )
    return value


@dataclass(frozen=True)
class NewTicket:
    id: uuid.UUID
    seat_id: int
    code: str
    price_minor: int


@dataclass(frozen=True)
class OrderWrite:
    """What the sale's one statement did."""

    on_sale: bool
    """False: at the instant of the write the event had started or was cancelled; nothing
    was written."""
    create_time: dt.datetime | None
    """The order's create_time (the write's instant); None when nothing was written."""


async def insert_order(
    conn: Conn,
    *,
    order_id: uuid.UUID,
    event_id: uuid.UUID,
    customer_id: uuid.UUID,
    request_id: uuid.UUID,
    request_hash: str,
    currency_code: str,
    tickets: Sequence[NewTicket],
    hold_id: uuid.UUID | None = None,
    payment_reference: str | None = None,
    partner_id: uuid.UUID | None = None,
) -> OrderWrite:
    """Write the order, mark its seats SOLD and insert its tickets in ONE statement, only if
    the event is still on sale at the instant of the write.

    Nothing is written when `on_sale` is False (the event had started or was cancelled at
    the write), nor when `create_time` is None (the same caller's request_id was committed
    by a concurrent call first: ON CONFLICT waited for it; return that order instead).
    With `hold_id` (ConfirmHold), the same statement marks that hold CONFIRMED with this
    order; the seats, locked by the caller and checked free or still this hold's, lose their
    hold either way.
    """
    row = await conn.fetchrow(
        """
        WITH clock AS (
            SELECT clock_timestamp() AS t
        ), sale AS (
            -- Re-checked here, not only before the seat locks: a lock wait may have
            -- carried this call past the start.
            SELECT clock.t FROM events e, clock
            WHERE e.id = $2 AND e.cancel_time IS NULL AND e.start_time > clock.t
        ), o AS (
            INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, status,
                                total_minor, currency_code, ticket_count, create_time,
                                payment_reference, partner_id)
            SELECT $1, $2, $3, $4, $5, 'CONFIRMED', $6, $7, $8, sale.t, $14, $15 FROM sale
            ON CONFLICT (customer_id, request_id) DO NOTHING
            RETURNING id, create_time
        ), s AS (
            UPDATE seats SET status = 'SOLD', hold_id = NULL, held_until = NULL
            WHERE id = ANY($10::bigint[]) AND EXISTS (SELECT 1 FROM o)
            RETURNING id
        ), h AS (
            UPDATE holds SET status = 'CONFIRMED', order_id = o.id
            FROM o WHERE holds.id = $13
            RETURNING 1
        ), t AS (
            INSERT INTO tickets (id, order_id, event_id, seat_id, code, status, price_minor)
            SELECT u.tid, o.id, $2, u.sid, u.code, 'VALID', u.price
            FROM o, unnest($9::uuid[], $10::bigint[], $11::text[], $12::bigint[])
                 AS u(tid, sid, code, price)
            RETURNING 1
        ), changes AS (
            SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'SOLD') AS n FROM o
        )
        SELECT EXISTS (SELECT 1 FROM sale) AS on_sale,
               (SELECT create_time FROM o) AS create_time,
               (SELECT count(*) FROM s) AS sold, (SELECT count(*) FROM t) AS issued,
               (SELECT n FROM changes) AS recorded
        """,
        order_id,
        event_id,
        customer_id,
        request_id,
        request_hash,
        sum(t.price_minor for t in tickets),
        currency_code,
        len(tickets),
        [t.id for t in tickets],
        [t.seat_id for t in tickets],
        [t.code for t in tickets],
        [t.price_minor for t in tickets],
        hold_id,
        payment_reference,
        partner_id,
    )
    if not row["on_sale"]:
        return OrderWrite(on_sale=False, create_time=None)
    if row["create_time"] is None:
        return OrderWrite(on_sale=True, create_time=None)
    if row["sold"] != len(tickets) or row["issued"] != len(tickets):
        # Unreachable while the seats are locked by us; refuse rather than half-write.
        raise RuntimeError(f"order {order_id}: sold {row['sold']}, issued {row['issued']}")
    return OrderWrite(on_sale=True, create_time=row["create_time"])


# Sales and holds in ONE statement (issue 16). BookSeats used to be BEGIN; the event; the
# seats; the write; COMMIT: five round trips, each costing the server its Python, a socket
# write and a wake-up, and PostgreSQL a statement cycle (HoldSeats the same). Here the same
# locks, in the same order, and the same checks are one statement that runs as its own
# transaction (autocommit): it writes only when every check holds, and otherwise returns
# what the service needs to say why.
#   ev      the event's sale terms under KEY SHARE (a cancel waits for us, and we for it), and
#           what the caller already made with this request_id (an order, or a hold);
#   go      whether seats may be locked at all: nothing made with the request_id yet, on
#           sale, within the per-order limit, no per-customer cap (a capped event takes the
#           transaction path: its count must see every commit made before its advisory lock,
#           which one statement's snapshot cannot), and (best available) a section of it;
#   locked  the seats, locked in id order (specific) or SKIP LOCKED (best available), `free`
#           judged on the locked row version; a one-time filter on `go` runs before the seat
#           scan, so the event lock is taken (and a cancel waited for) before any seat lock;
#   clock   read once every seat lock is ours: a lock wait may have carried the call past
#           the start, and create_time is this instant ("has it started?" is judged on it;
#           start_time never changes once the event exists, so the locked row's copy is it);
#   sale    one row iff every check holds; the write CTEs below act only then.
# Parameters: $1 event, $2 customer, $3 request_id, $4 the new row's id, $5 request hash,
# $6 the buyer's partner, $7 seat ids (specific) or section (best available), $8/$9 the
# caller's channel (partner id, public pool), $10 the quantity; the write's own from $11.
def _locking_statement(made: str, locked: str, go_extra: str, write: str, results: str) -> str:
    return f"""
    WITH ev AS MATERIALIZED (
        SELECT {_SALE_TERMS}, e.start_time AS sale_start_time,
               o.id AS existing_id, o.request_hash AS existing_hash
        FROM events e {_SECTIONS_OF_E}
        LEFT JOIN {made} o ON o.customer_id = $2 AND o.request_id = $3
        WHERE e.id = $1
        FOR KEY SHARE OF e
    ), go AS MATERIALIZED (
        SELECT 1 FROM ev
        WHERE ev.existing_id IS NULL AND NOT ev.cancelled AND NOT ev.started
          AND ev.max_tickets_per_customer IS NULL AND $10::int <= ev.max_tickets_per_order
          {go_extra}
    ), locked AS MATERIALIZED (
        {locked}
    ), clock AS MATERIALIZED (
        SELECT clock_timestamp() AS t FROM (SELECT count(*) FROM locked) AS every_lock_ours
    ), sale AS MATERIALIZED (
        SELECT clock.t FROM ev, clock
        WHERE EXISTS (SELECT 1 FROM go) AND ev.sale_start_time > clock.t
          AND (SELECT count(*) FILTER (WHERE free) FROM locked) = $10::int
    ), {write}
    SELECT ev.*, (SELECT t FROM sale) AS sale_time, {results},
           l.id, l.status, l.hold_id, l.free, l.price_minor, l.section_id, l.row_label,
           l.seat_number, l.seat_label
    FROM ev LEFT JOIN locked l ON TRUE
    ORDER BY l.id
    """


_LOCK_SPECIFIC = (
    f"SELECT {_seat_columns('$8', '$9')} FROM seats s "
    "WHERE s.id = ANY($7::bigint[]) AND s.event_id = $1 AND EXISTS (SELECT 1 FROM go) "
    "ORDER BY s.id FOR UPDATE"
)


def _lock_best(partner_first: bool) -> str:
    """As claim_best_available: $7 the section, $10 the quantity."""
    order = "s.ordinal"
    if partner_first:
        order = "(s.allocation_partner_id = $8 AND allocation_open(s.allocated_until)) "
        order += "IS TRUE DESC, s.ordinal"
    return (
        f"SELECT {_seat_columns('$8', '$9')} FROM seats s "
        "WHERE s.event_id = $1 AND s.section_id = $7 AND s.status <> 'SOLD' "
        f"AND {_free_for('$8', '$9')} AND EXISTS (SELECT 1 FROM go) "
        f"ORDER BY {order} LIMIT $10 FOR UPDATE SKIP LOCKED"
    )


# The write of insert_order (order, seats SOLD, tickets, the seat-change record), its
# tickets ($11 ids, $12 codes) given to the locked seats in id order.
_SALE_WRITE = """o AS (
        INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, status,
                            total_minor, currency_code, ticket_count, create_time,
                            payment_reference, partner_id)
        SELECT $4, $1, $2, $3, $5, 'CONFIRMED', (SELECT sum(price_minor) FROM locked),
               ev.sale_currency_code, $10, sale.t, NULL, $6
        FROM sale, ev
        ON CONFLICT (customer_id, request_id) DO NOTHING
        RETURNING id, create_time
    ), s AS (
        UPDATE seats SET status = 'SOLD', hold_id = NULL, held_until = NULL
        WHERE id = ANY(ARRAY(SELECT id FROM locked)) AND EXISTS (SELECT 1 FROM o)
        RETURNING id
    ), t AS (
        INSERT INTO tickets (id, order_id, event_id, seat_id, code, status, price_minor)
        SELECT u.tid, o.id, $1, l.id, u.code, 'VALID', l.price_minor
        FROM o, (SELECT id, price_minor, row_number() OVER (ORDER BY id) AS n FROM locked) l
        JOIN unnest($11::uuid[], $12::text[]) WITH ORDINALITY AS u(tid, code, n) ON u.n = l.n
        RETURNING 1
    ), changes AS (
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'SOLD') AS n FROM o
    )"""
_SALE_RESULTS = """(SELECT create_time FROM o) AS create_time, NULL::timestamptz AS expire_time,
           (SELECT count(*) FROM s) AS marked, (SELECT count(*) FROM t) AS listed,
           (SELECT n FROM changes) AS recorded"""

# The write of insert_hold (the hold, its seats listed, seats HELD, the seat-change record);
# it expires $11 after the write's instant.
_HOLD_WRITE = """h AS (
        INSERT INTO holds (id, event_id, customer_id, request_id, request_hash, status,
                           seat_count, total_minor, currency_code, create_time, expire_time,
                           partner_id)
        SELECT $4, $1, $2, $3, $5, 'ACTIVE', $10, (SELECT sum(price_minor) FROM locked),
               ev.sale_currency_code, sale.t, sale.t + $11::interval, $6
        FROM sale, ev
        ON CONFLICT (customer_id, request_id) DO NOTHING
        RETURNING id, create_time, expire_time
    ), hs AS (
        INSERT INTO hold_seats (hold_id, seat_id, price_minor)
        SELECT h.id, l.id, l.price_minor FROM h, locked l
        RETURNING seat_id
    ), s AS (
        UPDATE seats SET status = 'HELD', hold_id = h.id, held_until = h.expire_time
        FROM h WHERE seats.id = ANY(ARRAY(SELECT id FROM locked))
        RETURNING seats.id
    ), changes AS (
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'HELD') AS n FROM h
    )"""
_HOLD_RESULTS = """(SELECT create_time FROM h) AS create_time,
           (SELECT expire_time FROM h) AS expire_time,
           (SELECT count(*) FROM s) AS marked, (SELECT count(*) FROM hs) AS listed,
           (SELECT n FROM changes) AS recorded"""

_BEST_SECTION = "AND $7 = ANY(ev.section_ids)"
# (kind, selection, partner first) -> statement text: a handful of constants, each prepared
# once per connection by asyncpg.
_LOCKING_STATEMENTS = {
    (kind, best, partner_first): _locking_statement(
        made,
        _lock_best(partner_first) if best else _LOCK_SPECIFIC,
        _BEST_SECTION if best else "",
        write,
        results,
    )
    for kind, made, write, results in (
        ("sale", "orders", _SALE_WRITE, _SALE_RESULTS),
        ("hold", "holds", _HOLD_WRITE, _HOLD_RESULTS),
    )
    for best in (False, True)
    for partner_first in ((False, True) if best else (False,))
}


@dataclass(frozen=True)
class Taken:
    """What a sale's or hold's one statement saw and did. `event` None: no such event.
    `seats`: the places it locked, in id order (none when it locked none), `free` judged for
    the caller's channel. The row was written iff `create_time` is set; else `sale_time`
    None with every check passed means the event started during the lock waits, and a
    `sale_time` means the caller's request_id was committed by a concurrent call first."""

    event: EventForSale | None
    seats: list[Any]
    sale_time: dt.datetime | None
    create_time: dt.datetime | None
    expire_time: dt.datetime | None

    @property
    def written(self) -> bool:
        return self.create_time is not None


async def _take(
    conn: Conn,
    kind: Literal["sale", "hold"],
    new_id: uuid.UUID,
    head: tuple[uuid.UUID, uuid.UUID, uuid.UUID, str, uuid.UUID | None],
    seat_ids: Sequence[int] | None,
    best_available: tuple[uuid.UUID, int] | None,
    channel: Channel,
    write_args: tuple[Any, ...],
) -> Taken:
    event_id, customer_id, request_id, request_hash, partner_id = head
    if seat_ids is not None:
        selection: Any = list(seat_ids)
        quantity = len(seat_ids)
    else:
        assert best_available is not None
        selection, quantity = best_available
    statement = _LOCKING_STATEMENTS[
        (kind, best_available is not None, best_available is not None and bool(channel.partner_id))
    ]
    try:
        with metrics.lock_wait(kind):
            rows = await conn.fetch(
                statement,
                event_id,
                customer_id,
                request_id,
                new_id,
                request_hash,
                partner_id,
                selection,
                channel.partner_id,
                channel.public_pool,
                quantity,
                *write_args,
            )
    except asyncpg.LockNotAvailableError:
        # The seats' locks (or, rarely, the event's, held by a cancel): retry either way.
        raise seat_locked() from None
    if not rows:
        return Taken(None, [], None, None, None)
    first = rows[0]
    seats = [r for r in rows if r["id"] is not None]
    if first["create_time"] is not None and not (
        first["marked"] == first["listed"] == len(seats) == quantity
    ):
        # Unreachable: the write marks and lists exactly the seats it locked, all of them
        # (and the unique live-ticket and live-hold indexes refuse a double sale within it).
        raise RuntimeError(f"{kind} {new_id}: marked {first['marked']}, listed {first['listed']}")
    return Taken(
        _sale_terms(first), seats, first["sale_time"], first["create_time"], first["expire_time"]
    )


async def sell(
    conn: Conn,
    *,
    order_id: uuid.UUID,
    head: tuple[uuid.UUID, uuid.UUID, uuid.UUID, str, uuid.UUID | None],
    seat_ids: Sequence[int] | None,
    best_available: tuple[uuid.UUID, int] | None,
    ticket_ids: Sequence[uuid.UUID],
    codes: Sequence[str],
    channel: Channel = PUBLIC,
) -> Taken:
    """BookSeats in ONE statement, its own transaction (see _locking_statement): the locks,
    the checks and, only when every check holds, the write. `head` is (event, customer,
    request_id, request hash, the buyer's partner). Exactly one of `seat_ids` (locked in id
    order, waiting at most lock_timeout) and `best_available` (section, quantity: SKIP
    LOCKED) is given; `ticket_ids` and `codes` are as many as the places asked for, and go
    to the seats in id order."""
    return await _take(
        conn,
        "sale",
        order_id,
        head,
        seat_ids,
        best_available,
        channel,
        (list(ticket_ids), list(codes)),
    )


async def hold(
    conn: Conn,
    *,
    hold_id: uuid.UUID,
    head: tuple[uuid.UUID, uuid.UUID, uuid.UUID, str, uuid.UUID | None],
    seat_ids: Sequence[int] | None,
    best_available: tuple[uuid.UUID, int] | None,
    ttl: dt.timedelta,
    channel: Channel = PUBLIC,
) -> Taken:
    """HoldSeats in ONE statement, as `sell`; the hold expires `ttl` after the write."""
    return await _take(conn, "hold", hold_id, head, seat_ids, best_available, channel, (ttl,))


_ORDER_COLUMNS = (
    "o.id, o.event_id, o.customer_id, o.request_id, o.status, o.total_minor, "
    "o.currency_code, o.create_time, o.refund_time, o.refund_reason, o.payment_reference, "
    "o.partner_id, pc.external_customer_id, pc.display_name AS end_customer_name, "
    "pc.email AS end_customer_email"
)
# The end customer of a partner's order or hold (issue 13); no row for public ones.
_END_CUSTOMER_OF_ORDER = "LEFT JOIN partner_customers pc ON pc.id = o.end_customer_id"
_END_CUSTOMER_OF_HOLD = "LEFT JOIN partner_customers pc ON pc.id = h.end_customer_id"


def end_customer_of(row: Any) -> EndCustomer | None:
    """The end customer columns of an order or hold row, or None on the public channel."""
    if row["external_customer_id"] is None:
        return None
    return EndCustomer(
        row["external_customer_id"], row["end_customer_name"], row["end_customer_email"]
    )


def _order(row: Any, tickets: tuple[TicketRecord, ...]) -> OrderRecord:
    return record_from_row(
        OrderRecord,
        row,
        status=OrderStatus(row["status"]),
        tickets=tickets,
        end_customer=end_customer_of(row),
    )


async def _tickets_of(
    conn: Conn, order_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[TicketRecord]]:
    rows = await conn.fetch(
        """
        SELECT t.order_id, t.id, t.seat_id, t.code, t.status, t.price_minor,
               s.section_id, es.name AS section_name, s.row_label, s.seat_number, s.seat_label
        FROM tickets t
        JOIN seats s ON s.id = t.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE t.order_id = ANY($1::uuid[])
        ORDER BY t.order_id, t.seat_id
        """,
        order_ids,
    )
    out: dict[uuid.UUID, list[TicketRecord]] = {}
    for r in rows:
        out.setdefault(r["order_id"], []).append(
            # Signed codes are derived on read, for the owner only (BookingService.get_order).
            record_from_row(TicketRecord, r, status=TicketStatus(r["status"]), signed_code="")
        )
    return out


@dataclass(frozen=True)
class OrderWithEvent:
    order: OrderRecord
    organizer_id: uuid.UUID
    event_started: bool
    event_cancelled: bool
    request_hash: str


async def get_order(
    conn: Conn, order_id: uuid.UUID, *, lock: bool = False
) -> OrderWithEvent | None:
    """The order with its tickets and its event's owner. With `lock`, the order row is
    locked FOR UPDATE (two refunds of one order take turns) after the event row is
    KEY SHARE locked (a cancel of the event waits, and the order of locks matches booking)."""
    suffix = " FOR KEY SHARE OF e FOR UPDATE OF o" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_ORDER_COLUMNS}, o.request_hash, e.organizer_id, "
        "e.start_time <= clock_timestamp() AS started, e.cancel_time IS NOT NULL AS cancelled "
        f"FROM orders o JOIN events e ON e.id = o.event_id {_END_CUSTOMER_OF_ORDER} "
        "WHERE o.id = $1" + suffix,
        order_id,
    )
    if row is None:
        return None
    tickets = await _tickets_of(conn, [order_id])
    return OrderWithEvent(
        order=_order(row, tuple(tickets.get(order_id, ()))),
        organizer_id=row["organizer_id"],
        event_started=row["started"],
        event_cancelled=row["cancelled"],
        request_hash=row["request_hash"],
    )


async def lock_tickets(conn: Conn, order_id: uuid.UUID) -> list[str]:
    """Lock the order's tickets (a gate scan of one of them waits, then sees VOID)."""
    rows = await conn.fetch(
        "SELECT status FROM tickets WHERE order_id = $1 ORDER BY seat_id FOR UPDATE", order_id
    )
    return [r["status"] for r in rows]


async def refund_request_of(conn: Conn, order_id: uuid.UUID) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval(
        "SELECT request_id FROM refunds WHERE order_id = $1", order_id
    )
    return value


# Order REFUNDED, its VALID tickets VOID, their seats AVAILABLE, a refund record: one
# statement, stamped with the write's own clock. An order with a USED ticket is never
# refunded (someone was admitted on it) and a USED ticket never changes: the conditions say
# so here too, under the ticket locks the callers take first. {guard} adds the per-order
# rule "refunds close when the event starts", judged at this write.
_REFUND = """
    WITH clock AS (
        SELECT clock_timestamp() AS t
    ), o AS (
        UPDATE orders o SET status = 'REFUNDED', refund_time = clock.t, refund_reason = $3
        FROM clock, events e
        WHERE {where} AND o.status = 'CONFIRMED' AND e.id = o.event_id {guard}
          AND NOT EXISTS (SELECT 1 FROM tickets u WHERE u.order_id = o.id AND u.status = 'USED')
        RETURNING o.id, o.total_minor, clock.t AS at
    ), t AS (
        UPDATE tickets SET status = 'VOID'
        WHERE order_id IN (SELECT id FROM o) AND status = 'VALID'
        RETURNING seat_id
    ), s AS (
        UPDATE seats SET status = 'AVAILABLE'
        WHERE id IN (SELECT seat_id FROM t)
        RETURNING id
    ), r AS (
        INSERT INTO refunds (order_id, request_id, refunded_by, refunded_by_partner, reason,
                             amount_minor, create_time)
        SELECT id, $4, $2, $5, $3, total_minor, at FROM o
        RETURNING 1
    ), changes AS (
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'AVAILABLE') AS n
    )
    SELECT (SELECT count(*) FROM o) AS orders, (SELECT count(*) FROM t) AS tickets,
           (SELECT count(*) FROM s) AS seats, (SELECT n FROM changes) AS recorded
"""


async def refund_order(
    conn: Conn,
    order_id: uuid.UUID,
    *,
    refunded_by: uuid.UUID | None,
    reason: str,
    request_id: uuid.UUID | None,
    refunded_by_partner: uuid.UUID | None = None,
) -> bool:
    """Refund one order (caller holds the order and its tickets locked). False when the
    event had started at the instant of the write: then nothing was written. Exactly one
    of `refunded_by` (an account) and `refunded_by_partner` is set."""
    row = await conn.fetchrow(
        _REFUND.format(where="o.id = $1", guard="AND e.start_time > clock.t"),
        order_id,
        refunded_by,
        reason,
        request_id,
        refunded_by_partner,
    )
    refunded: bool = row["orders"] == 1
    return refunded


async def lock_event_tickets(conn: Conn, event_id: uuid.UUID) -> int:
    """Lock every VALID ticket of the event (caller holds the event FOR UPDATE): a gate scan
    in flight finishes first (its ticket is then USED, and stays so), and none can start on
    these tickets until the caller commits. Returns how many were locked."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM tickets WHERE event_id = $1 AND status = 'VALID' "
        "FOR UPDATE) locked",
        event_id,
    )
    return value


async def refund_event_orders(
    conn: Conn, event_id: uuid.UUID, *, refunded_by: uuid.UUID, reason: str, report_limit: int
) -> EventRefunds:
    """Refund every live order of an event being cancelled, except orders with a used ticket.

    The caller holds the event FOR UPDATE and has locked its VALID tickets
    (`lock_event_tickets`), so this statement's snapshot sees every scan that will ever
    count. There is no start-time guard here: the cancel itself was judged at its write.
    """
    row = await conn.fetchrow(
        _REFUND.format(where="o.event_id = $1", guard=""),
        event_id,
        refunded_by,
        reason,
        None,
        None,
    )
    # After the refund, the event's CONFIRMED orders are exactly the attended ones.
    kept = await conn.fetchrow(
        """
        SELECT count(*) AS n,
               (SELECT array_agg(id ORDER BY create_time, id) FROM (
                    SELECT id, create_time FROM orders
                    WHERE event_id = $1 AND status = 'CONFIRMED'
                    ORDER BY create_time, id LIMIT $2) first) AS ids
        FROM orders WHERE event_id = $1 AND status = 'CONFIRMED'
        """,
        event_id,
        report_limit,
    )
    return EventRefunds(
        refunded_orders=row["orders"],
        attended_orders=kept["n"],
        attended_order_ids=tuple(kept["ids"] or ()),
    )


async def rotation_of(
    conn: Conn, requested_by: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, int] | None:
    """(order id, tickets rotated) of this caller's code rotation with request_id, if any."""
    row = await conn.fetchrow(
        "SELECT order_id, rotated_count FROM code_rotations "
        "WHERE requested_by = $1 AND request_id = $2",
        requested_by,
        request_id,
    )
    return None if row is None else (row["order_id"], row["rotated_count"])


async def lock_valid_tickets(conn: Conn, order_id: uuid.UUID) -> list[uuid.UUID]:
    """Lock the order's VALID tickets, in seat order like every other ticket lock, and
    return their ids. A gate scan of one of them waits for us, then sees the new code (so
    the old one is UNKNOWN_CODE); a ticket burned first is USED and left out."""
    rows = await conn.fetch(
        "SELECT id FROM tickets WHERE order_id = $1 AND status = 'VALID' "
        "ORDER BY seat_id FOR UPDATE",
        order_id,
    )
    return [r["id"] for r in rows]


async def event_started_now(conn: Conn, event_id: uuid.UUID) -> bool:
    """Whether the event has started at this instant (clock_timestamp(), not the start of
    the transaction: the check must hold at the moment of the write that follows)."""
    started: bool = await conn.fetchval(
        "SELECT start_time <= clock_timestamp() FROM events WHERE id = $1", event_id
    )
    return started


async def record_rotation(
    conn: Conn,
    *,
    order_id: uuid.UUID,
    requested_by: uuid.UUID,
    request_id: uuid.UUID,
    rotated_count: int,
) -> bool:
    """Record a rotation; False when this caller's request_id was committed meanwhile by a
    concurrent call (ON CONFLICT waits for it): then the caller must not rotate."""
    row = await conn.fetchrow(
        "INSERT INTO code_rotations (order_id, requested_by, request_id, rotated_count) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (requested_by, request_id) DO NOTHING "
        "RETURNING id",
        order_id,
        requested_by,
        request_id,
        rotated_count,
    )
    return row is not None


async def replace_codes(
    conn: Conn, order_id: uuid.UUID, ticket_ids: Sequence[uuid.UUID], codes: Sequence[str]
) -> int:
    """New codes for the given (locked, VALID) tickets of the order, in one statement; the
    unique index on tickets.code proves no two tickets share one. Returns the rows changed."""
    result: str = await conn.execute(
        "UPDATE tickets t SET code = u.code "
        "FROM unnest($2::uuid[], $3::text[]) AS u(id, code) "
        "WHERE t.id = u.id AND t.order_id = $1 AND t.status = 'VALID'",
        order_id,
        list(ticket_ids),
        list(codes),
    )
    return int(result.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class OrderFilter:
    customer_id: uuid.UUID | None
    event_id: uuid.UUID | None
    partner_id: uuid.UUID | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None


async def list_orders(
    conn: Conn,
    filters: OrderFilter,
    *,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[OrderRecord]:
    """Orders newest first, keyset on (create_time, id), with their tickets."""
    clauses = ["TRUE"]
    arg = Params()
    if filters.customer_id is not None:
        clauses.append(f"o.customer_id = {arg(filters.customer_id)}")
    if filters.event_id is not None:
        clauses.append(f"o.event_id = {arg(filters.event_id)}")
    if filters.partner_id is not None:
        clauses.append(f"o.partner_id = {arg(filters.partner_id)}")
    if filters.created_after is not None:
        clauses.append(f"o.create_time >= {arg(filters.created_after)}")
    if filters.created_before is not None:
        clauses.append(f"o.create_time < {arg(filters.created_before)}")
    if before is not None:
        clauses.append(f"(o.create_time, o.id) < ({arg(before[0])}, {arg(before[1])})")
    rows = await conn.fetch(
        f"SELECT {_ORDER_COLUMNS} FROM orders o {_END_CUSTOMER_OF_ORDER} "
        f"WHERE {' AND '.join(clauses)} "
        f"ORDER BY o.create_time DESC, o.id DESC LIMIT {arg(limit)}",
        *arg,
    )
    tickets = await _tickets_of(conn, [r["id"] for r in rows]) if rows else {}
    return [_order(r, tuple(tickets.get(r["id"], ()))) for r in rows]


# Holds (issue 12). Lock order as everywhere: event (KEY SHARE), then the hold row (FOR
# UPDATE: confirm, extend and release of one hold take turns), then seats (ORDER BY id),
# then orders/tickets. HoldSeats and BookSeats never lock another customer's hold row: they
# read the seat's own copy of its hold's expiry (seats.held_until) under the seat lock.

_HOLD_COLUMNS = (
    "h.partner_id, pc.external_customer_id, pc.display_name AS end_customer_name, "
    "pc.email AS end_customer_email, "
    "h.id, h.event_id, h.customer_id, h.request_id, h.seat_count, h.total_minor, "
    "h.currency_code, h.create_time, h.expire_time, h.order_id, h.release_time, "
    "CASE WHEN h.status = 'ACTIVE' AND hold_expired(h.expire_time) THEN 'EXPIRED' "
    "ELSE h.status END AS status"
)


@dataclass(frozen=True)
class NewHoldSeat:
    seat_id: int
    price_minor: int


@dataclass(frozen=True)
class HoldWrite:
    on_sale: bool
    """False: the event had started or was cancelled at the write; nothing was written."""
    create_time: dt.datetime | None
    """None when nothing was written (the caller's request_id was committed meanwhile)."""
    expire_time: dt.datetime | None


async def insert_hold(
    conn: Conn,
    *,
    hold_id: uuid.UUID,
    event_id: uuid.UUID,
    customer_id: uuid.UUID,
    request_id: uuid.UUID,
    request_hash: str,
    currency_code: str,
    ttl: dt.timedelta,
    seats: Sequence[NewHoldSeat],
    partner_id: uuid.UUID | None = None,
) -> HoldWrite:
    """Write the hold, list its seats and mark them HELD by it in ONE statement, only if the
    event is on sale at the instant of the write; the hold expires `ttl` after that instant.
    The caller holds the seats locked and has checked them free."""
    row = await conn.fetchrow(
        """
        WITH clock AS (
            SELECT clock_timestamp() AS t
        ), sale AS (
            SELECT clock.t FROM events e, clock
            WHERE e.id = $2 AND e.cancel_time IS NULL AND e.start_time > clock.t
        ), h AS (
            INSERT INTO holds (id, event_id, customer_id, request_id, request_hash, status,
                               seat_count, total_minor, currency_code, create_time, expire_time,
                               partner_id)
            SELECT $1, $2, $3, $4, $5, 'ACTIVE', $6, $7, $8, sale.t, sale.t + $9::interval, $12
            FROM sale
            ON CONFLICT (customer_id, request_id) DO NOTHING
            RETURNING id, create_time, expire_time
        ), hs AS (
            INSERT INTO hold_seats (hold_id, seat_id, price_minor)
            SELECT h.id, u.sid, u.price
            FROM h, unnest($10::bigint[], $11::bigint[]) AS u(sid, price)
            RETURNING seat_id
        ), s AS (
            UPDATE seats SET status = 'HELD', hold_id = h.id, held_until = h.expire_time
            FROM h WHERE seats.id = ANY($10::bigint[])
            RETURNING seats.id
        ), changes AS (
            SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'HELD') AS n FROM h
        )
        SELECT EXISTS (SELECT 1 FROM sale) AS on_sale,
               (SELECT create_time FROM h) AS create_time,
               (SELECT expire_time FROM h) AS expire_time,
               (SELECT count(*) FROM hs) AS listed, (SELECT count(*) FROM s) AS held,
               (SELECT n FROM changes) AS recorded
        """,
        hold_id,
        event_id,
        customer_id,
        request_id,
        request_hash,
        len(seats),
        sum(s.price_minor for s in seats),
        currency_code,
        ttl,
        [s.seat_id for s in seats],
        [s.price_minor for s in seats],
        partner_id,
    )
    if not row["on_sale"]:
        return HoldWrite(on_sale=False, create_time=None, expire_time=None)
    if row["create_time"] is None:
        return HoldWrite(on_sale=True, create_time=None, expire_time=None)
    if row["listed"] != len(seats) or row["held"] != len(seats):
        raise RuntimeError(f"hold {hold_id}: listed {row['listed']}, held {row['held']}")
    return HoldWrite(on_sale=True, create_time=row["create_time"], expire_time=row["expire_time"])


async def existing_hold_request(
    conn: Conn, customer_id: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, str] | None:
    """(hold id, request fingerprint) of a hold this caller made with request_id."""
    return await earlier_request(conn, "holds", "customer_id", customer_id, request_id)


async def _hold_seats_of(conn: Conn, hold_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    rows = await conn.fetch(
        """
        SELECT hs.hold_id, hs.seat_id, hs.price_minor, s.section_id, es.name AS section_name,
               s.row_label, s.seat_number, s.seat_label
        FROM hold_seats hs
        JOIN seats s ON s.id = hs.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE hs.hold_id = ANY($1::uuid[])
        ORDER BY hs.hold_id, hs.seat_id
        """,
        hold_ids,
    )
    out: dict[uuid.UUID, list[Any]] = {}
    for r in rows:
        out.setdefault(r["hold_id"], []).append(r)
    return out


@dataclass(frozen=True)
class HoldRow:
    """A hold as stored, with its derived status (EXPIRED when ACTIVE past expire_time on
    the database clock), its seats, and what the checks around it need."""

    hold: Any
    seats: list[Any]
    organizer_id: uuid.UUID
    request_hash: str
    db_time: dt.datetime
    """clock_timestamp() when the row was read (after its lock, if locked)."""


async def get_hold(conn: Conn, hold_id: uuid.UUID, *, lock: bool = False) -> HoldRow | None:
    """The hold with its seats; with `lock`, the event KEY SHARE then the hold FOR UPDATE."""
    suffix = " FOR KEY SHARE OF e FOR UPDATE OF h" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_HOLD_COLUMNS}, h.request_hash, e.organizer_id, "
        "clock_timestamp() AS db_time "
        f"FROM holds h JOIN events e ON e.id = h.event_id {_END_CUSTOMER_OF_HOLD} "
        "WHERE h.id = $1" + suffix,
        hold_id,
    )
    if row is None:
        return None
    seats = await _hold_seats_of(conn, [hold_id])
    return HoldRow(
        hold=row,
        seats=seats.get(hold_id, []),
        organizer_id=row["organizer_id"],
        request_hash=row["request_hash"],
        db_time=row["db_time"],
    )


@dataclass(frozen=True)
class HoldToConfirm:
    """ConfirmHold's first read: the hold (status derived as in get_hold) and its event's
    sale terms, whose `existing_order_id` is the caller's order made with the request_id."""

    hold: Any
    event: EventForSale


async def hold_to_confirm(
    conn: Conn, hold_id: uuid.UUID, customer_id: uuid.UUID, request_id: uuid.UUID
) -> HoldToConfirm | None:
    """One statement: the event KEY SHARE and the hold FOR UPDATE (the order get_hold(lock)
    takes them in), the sale terms, and the caller's order already made with request_id."""
    row = await conn.fetchrow(
        f"""
        SELECT {_HOLD_COLUMNS}, {_SALE_TERMS},
               o.id AS existing_id, o.request_hash AS existing_hash
        FROM holds h JOIN events e ON e.id = h.event_id {_SECTIONS_OF_E}
        {_END_CUSTOMER_OF_HOLD}
        LEFT JOIN orders o ON o.customer_id = $2 AND o.request_id = $3
        WHERE h.id = $1
        FOR KEY SHARE OF e FOR UPDATE OF h
        """,
        hold_id,
        customer_id,
        request_id,
    )
    return None if row is None else HoldToConfirm(hold=row, event=_sale_terms(row))


# ConfirmHold in ONE statement (issue 16), as sales are (see _locking_statement): the event
# KEY SHARE and the hold FOR UPDATE (hl), then its seats in id order, then the write of
# insert_order with the hold. `go` is exactly the service's checks: the caller's own hold
# ($2 the buyer, $6 the buyer's partner: is_owner and the end customer the hold was made
# for), nothing confirmed with the request_id yet, ACTIVE or EXPIRED (a late confirmation;
# expired under a per-customer cap takes the transaction path, which recounts), on sale.
# `sale` adds: no seat taken by someone else since (free, or still this hold's), and
# tickets enough ($10 ids, $11 codes: the caller guesses the hold's size and, when short,
# runs it again with as many as it locked). $7 the payment reference, $8/$9 the channel.
_CONFIRM = f"""
    WITH hl AS MATERIALIZED (
        SELECT {_HOLD_COLUMNS}, {_SALE_TERMS}, e.start_time AS sale_start_time,
               o.id AS existing_id, o.request_hash AS existing_hash
        FROM holds h JOIN events e ON e.id = h.event_id {_SECTIONS_OF_E}
        {_END_CUSTOMER_OF_HOLD}
        LEFT JOIN orders o ON o.customer_id = $2 AND o.request_id = $3
        WHERE h.id = $1
        FOR KEY SHARE OF e FOR UPDATE OF h
    ), go AS MATERIALIZED (
        SELECT 1 FROM hl
        WHERE hl.customer_id = $2 AND hl.partner_id IS NOT DISTINCT FROM $6::uuid
          AND hl.existing_id IS NULL AND NOT hl.cancelled AND NOT hl.started
          AND (hl.status = 'ACTIVE'
               OR (hl.status = 'EXPIRED' AND hl.max_tickets_per_customer IS NULL))
    ), locked AS MATERIALIZED (
        SELECT {_seat_columns("$8", "$9")}, hs.price_minor AS held_price FROM seats s
        JOIN hold_seats hs ON hs.seat_id = s.id
        WHERE hs.hold_id = $1 AND EXISTS (SELECT 1 FROM go)
        ORDER BY s.id FOR UPDATE OF s
    ), clock AS MATERIALIZED (
        SELECT clock_timestamp() AS t FROM (SELECT count(*) FROM locked) AS every_lock_ours
    ), sale AS MATERIALIZED (
        SELECT clock.t FROM hl, clock
        WHERE EXISTS (SELECT 1 FROM go) AND hl.sale_start_time > clock.t
          AND NOT EXISTS (SELECT 1 FROM locked WHERE hold_id IS DISTINCT FROM $1 AND NOT free)
          AND (SELECT count(*) FROM locked) <= cardinality($10::uuid[])
    ), o AS (
        INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, status,
                            total_minor, currency_code, ticket_count, create_time,
                            payment_reference, partner_id)
        SELECT $4, hl.event_id, $2, $3, $5, 'CONFIRMED', (SELECT sum(held_price) FROM locked),
               hl.currency_code, (SELECT count(*) FROM locked), sale.t, $7, $6
        FROM sale, hl
        ON CONFLICT (customer_id, request_id) DO NOTHING
        RETURNING id, create_time
    ), s AS (
        UPDATE seats SET status = 'SOLD', hold_id = NULL, held_until = NULL
        WHERE id = ANY(ARRAY(SELECT id FROM locked)) AND EXISTS (SELECT 1 FROM o)
        RETURNING id
    ), h AS (
        UPDATE holds SET status = 'CONFIRMED', order_id = o.id
        FROM o WHERE holds.id = $1
        RETURNING 1
    ), t AS (
        INSERT INTO tickets (id, order_id, event_id, seat_id, code, status, price_minor)
        SELECT u.tid, o.id, hl.event_id, l.id, u.code, 'VALID', l.held_price
        FROM o, hl,
             (SELECT id, held_price, row_number() OVER (ORDER BY id) AS n FROM locked) l
        JOIN unnest($10::uuid[], $11::text[]) WITH ORDINALITY AS u(tid, code, n) ON u.n = l.n
        RETURNING 1
    ), changes AS (
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'SOLD') AS n FROM o
    )
    SELECT hl.*, (SELECT t FROM sale) AS sale_time, (SELECT create_time FROM o) AS order_time,
           (SELECT count(*) FROM s) AS marked, (SELECT count(*) FROM t) AS listed,
           (SELECT count(*) FROM h) AS confirmed, (SELECT n FROM changes) AS recorded,
           l.id AS seat_id, l.status AS seat_status, l.hold_id AS seat_hold_id, l.free,
           l.held_price, l.price_minor, l.section_id, l.row_label, l.seat_number, l.seat_label
    FROM hl LEFT JOIN locked l ON TRUE
    ORDER BY l.id
"""


@dataclass(frozen=True)
class Confirmation:
    """What ConfirmHold's one statement saw and did. `hold` None: no such hold. `seats` the
    hold's places it locked, in id order (keys as lock_hold_seats: id, hold_id, free,
    held_price, ...). Written iff `create_time` is set; else, with every check passed, a
    `sale_time` None means the event started during the lock waits, more `seats` than
    tickets given means run again with as many, and otherwise the request_id was committed
    by a concurrent call first."""

    hold: Any
    event: EventForSale | None
    seats: list[dict[str, Any]]
    sale_time: dt.datetime | None
    create_time: dt.datetime | None

    @property
    def written(self) -> bool:
        return self.create_time is not None


async def confirm(
    conn: Conn,
    *,
    hold_id: uuid.UUID,
    order_id: uuid.UUID,
    head: tuple[uuid.UUID, uuid.UUID, str, uuid.UUID | None],
    payment_reference: str | None,
    ticket_ids: Sequence[uuid.UUID],
    codes: Sequence[str],
    channel: Channel = PUBLIC,
) -> Confirmation:
    """ConfirmHold in ONE statement, its own transaction (see _CONFIRM). `head` is (buyer,
    request_id, request hash, the buyer's partner)."""
    customer_id, request_id, request_hash, partner_id = head
    try:
        with metrics.lock_wait("confirm"):
            rows = await conn.fetch(
                _CONFIRM,
                hold_id,
                customer_id,
                request_id,
                order_id,
                request_hash,
                partner_id,
                payment_reference,
                channel.partner_id,
                channel.public_pool,
                list(ticket_ids),
                list(codes),
            )
    except asyncpg.LockNotAvailableError:
        raise seat_locked() from None
    if not rows:
        return Confirmation(None, None, [], None, None)
    first = rows[0]
    seats = [
        {
            "id": r["seat_id"],
            "status": r["seat_status"],
            "hold_id": r["seat_hold_id"],
            **{k: r[k] for k in _CONFIRMED_SEAT_KEYS},
        }
        for r in rows
        if r["seat_id"] is not None
    ]
    if first["order_time"] is not None and not (
        first["marked"] == first["listed"] == len(seats) and first["confirmed"] == 1
    ):
        raise RuntimeError(f"hold {hold_id}: marked {first['marked']}, listed {first['listed']}")
    return Confirmation(first, _sale_terms(first), seats, first["sale_time"], first["order_time"])


_CONFIRMED_SEAT_KEYS = (
    "free",
    "held_price",
    "price_minor",
    "section_id",
    "row_label",
    "seat_number",
    "seat_label",
)


async def lock_hold_seats(conn: Conn, hold_id: uuid.UUID, channel: Channel = PUBLIC) -> list[Any]:
    """Lock every place the hold listed, in id order, whoever has it now; `free` (for the
    hold's channel) and `hold_id` tell whether it can still be this hold's (a late
    confirmation re-takes it); `held_price` is the price the hold keeps."""
    try:
        return list(
            await conn.fetch(
                f"SELECT {_seat_columns('$2', '$3')}, hs.price_minor AS held_price FROM seats s "
                "JOIN hold_seats hs ON hs.seat_id = s.id WHERE hs.hold_id = $1 "
                "ORDER BY s.id FOR UPDATE OF s",
                hold_id,
                channel.partner_id,
                channel.public_pool,
            )
        )
    except asyncpg.LockNotAvailableError:
        raise seat_locked() from None


async def extend_hold(conn: Conn, hold_id: uuid.UUID, expire_time: dt.datetime) -> int:
    """Move the (locked, active) hold's expiry and its seats' copy; returns how many of its
    seats still pointed at it (fewer: one was re-taken after expiry, and the caller rolls
    back). Waits for the seat locks, so a taker in flight either finished first (and the
    count says so) or sees the new expiry."""
    row = await conn.fetchrow(
        """
        WITH h AS (
            UPDATE holds SET expire_time = $2 WHERE id = $1 RETURNING id
        ), s AS (
            UPDATE seats SET held_until = $2 WHERE hold_id = $1 RETURNING id
        )
        SELECT (SELECT count(*) FROM s) AS seats
        """,
        hold_id,
        expire_time,
    )
    count: int = row["seats"]
    return count


async def release_hold(conn: Conn, hold_id: uuid.UUID) -> None:
    """RELEASED now, and every seat still under it AVAILABLE again (caller holds the hold
    locked, ACTIVE)."""
    await conn.execute(
        """
        WITH h AS (
            UPDATE holds SET status = 'RELEASED', release_time = clock_timestamp()
            WHERE id = $1 RETURNING id
        ), s AS (
            UPDATE seats SET status = 'AVAILABLE', hold_id = NULL, held_until = NULL
            WHERE hold_id = $1 RETURNING id
        )
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'AVAILABLE')
        """,
        hold_id,
    )


async def release_event_holds(conn: Conn, event_id: uuid.UUID) -> int:
    """Release every ACTIVE hold of an event being cancelled (the caller holds the event FOR
    UPDATE, so no hold, confirm or release of it is in flight). Returns the holds released."""
    row = await conn.fetchrow(
        """
        WITH h AS (
            UPDATE holds SET status = 'RELEASED', release_time = clock_timestamp()
            WHERE event_id = $1 AND status = 'ACTIVE' RETURNING id
        ), s AS (
            UPDATE seats SET status = 'AVAILABLE', hold_id = NULL, held_until = NULL
            WHERE event_id = $1 AND status = 'HELD' RETURNING id
        )
        SELECT (SELECT count(*) FROM h) AS holds,
               record_seat_changes(ARRAY(SELECT id FROM s), 'AVAILABLE') AS recorded
        """,
        event_id,
    )
    count: int = row["holds"]
    return count


async def sweep_expired_holds(conn: Conn, limit: int) -> int:
    """Turn up to `limit` places of expired holds AVAILABLE and record that (so watchers
    see expiry); places someone is locking right now are skipped (SKIP LOCKED), so several
    sweepers and the sales never wait for each other. Only tidies: an expired hold's place
    is free by seat_is_free whether or not this ran. Returns the places swept."""
    row = await conn.fetchrow(
        """
        WITH due AS (
            SELECT id FROM seats
            WHERE status = 'HELD' AND held_until <= clock_timestamp()
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
        ), s AS (
            UPDATE seats SET status = 'AVAILABLE', hold_id = NULL, held_until = NULL
            FROM due WHERE seats.id = due.id RETURNING seats.id
        )
        SELECT record_seat_changes(ARRAY(SELECT id FROM s), 'AVAILABLE') AS swept
        """,
        limit,
    )
    swept: int = row["swept"]
    return swept


@dataclass(frozen=True)
class HoldFilter:
    customer_id: uuid.UUID | None
    event_id: uuid.UUID | None
    partner_id: uuid.UUID | None = None


async def list_holds(
    conn: Conn,
    filters: HoldFilter,
    *,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[tuple[Any, list[Any]]]:
    """Holds newest first, keyset on (create_time, id), with their seats."""
    clauses = ["TRUE"]
    arg = Params()
    if filters.customer_id is not None:
        clauses.append(f"h.customer_id = {arg(filters.customer_id)}")
    if filters.event_id is not None:
        clauses.append(f"h.event_id = {arg(filters.event_id)}")
    if filters.partner_id is not None:
        clauses.append(f"h.partner_id = {arg(filters.partner_id)}")
    if before is not None:
        clauses.append(f"(h.create_time, h.id) < ({arg(before[0])}, {arg(before[1])})")
    rows = await conn.fetch(
        f"SELECT {_HOLD_COLUMNS} FROM holds h {_END_CUSTOMER_OF_HOLD} "
        f"WHERE {' AND '.join(clauses)} "
        f"ORDER BY h.create_time DESC, h.id DESC LIMIT {arg(limit)}",
        *arg,
    )
    seats = await _hold_seats_of(conn, [r["id"] for r in rows]) if rows else {}
    return [(r, seats.get(r["id"], [])) for r in rows]


# Allocations (issue 13). The same locks as a sale: the event KEY SHARE, then the seats in
# id order (specific ids) or SKIP LOCKED (best available), judged free for the public pool;
# then one statement writes the allocation, lists its seats and marks them.

_ALLOCATION_COLUMNS = (
    "a.id, a.event_id, a.partner_id, a.request_id, a.create_time, a.release_time, "
    "a.release_time IS NOT NULL AND NOT allocation_open(a.release_time) AS released, "
    "ARRAY(SELECT seat_id FROM allocation_seats x WHERE x.allocation_id = a.id "
    "ORDER BY seat_id) AS seat_ids"
)


def _allocation(row: Any) -> AllocationRecord:
    return record_from_row(AllocationRecord, row, seat_ids=tuple(row["seat_ids"]))


@dataclass(frozen=True)
class AllocationEvent:
    cancelled: bool
    started: bool
    section_ids: frozenset[uuid.UUID]
    existing_id: uuid.UUID | None
    existing_hash: str | None


async def allocation_event(
    conn: Conn, event_id: uuid.UUID, created_by: uuid.UUID, request_id: uuid.UUID
) -> AllocationEvent | None:
    """The event under KEY SHARE (a cancel waits for us), and any allocation this caller
    already made with this request_id."""
    row = await conn.fetchrow(
        """
        SELECT e.cancel_time IS NOT NULL AS cancelled,
               e.start_time <= clock_timestamp() AS started,
               ARRAY(SELECT section_id FROM event_sections WHERE event_id = e.id) AS sections,
               a.id AS existing_id, a.request_hash AS existing_hash
        FROM events e
        LEFT JOIN allocations a ON a.created_by = $2 AND a.request_id = $3
        WHERE e.id = $1
        FOR KEY SHARE OF e
        """,
        event_id,
        created_by,
        request_id,
    )
    if row is None:
        return None
    return AllocationEvent(
        cancelled=row["cancelled"],
        started=row["started"],
        section_ids=frozenset(row["sections"]),
        existing_id=row["existing_id"],
        existing_hash=row["existing_hash"],
    )


async def insert_allocation(
    conn: Conn,
    *,
    allocation_id: uuid.UUID,
    event_id: uuid.UUID,
    partner_id: uuid.UUID,
    created_by: uuid.UUID,
    request_id: uuid.UUID,
    request_hash: str,
    seat_ids: Sequence[int],
    release_time: dt.datetime | None,
) -> bool:
    """Write the allocation, list its seats and give them to the partner in ONE statement
    (the caller holds them locked and judged them free). False: the caller's request_id
    was committed by a concurrent call first (nothing written)."""
    row = await conn.fetchrow(
        """
        WITH a AS (
            INSERT INTO allocations (id, event_id, partner_id, created_by, request_id,
                                     request_hash, seat_count, create_time, release_time)
            VALUES ($1, $2, $3, $4, $5, $6, cardinality($7::bigint[]), clock_timestamp(), $8)
            ON CONFLICT (created_by, request_id) DO NOTHING
            RETURNING id
        ), l AS (
            INSERT INTO allocation_seats (allocation_id, seat_id)
            SELECT a.id, u.sid FROM a, unnest($7::bigint[]) AS u(sid)
            RETURNING seat_id
        ), s AS (
            UPDATE seats SET allocation_id = a.id, allocation_partner_id = $3,
                             allocated_until = $8
            FROM a WHERE seats.id = ANY($7::bigint[])
            RETURNING seats.id
        )
        SELECT (SELECT count(*) FROM a) AS written, (SELECT count(*) FROM l) AS listed,
               (SELECT count(*) FROM s) AS marked,
               record_seat_changes(ARRAY(SELECT id FROM s), 'ALLOCATED') AS recorded
        """,
        allocation_id,
        event_id,
        partner_id,
        created_by,
        request_id,
        request_hash,
        list(seat_ids),
        release_time,
    )
    if row["written"] == 0:
        return False
    if row["listed"] != len(seat_ids) or row["marked"] != len(seat_ids):
        raise RuntimeError(f"allocation {allocation_id}: {row['listed']}/{row['marked']}")
    return True


async def get_allocation(
    conn: Conn, allocation_id: uuid.UUID, *, lock: bool = False
) -> AllocationRecord | None:
    suffix = " FOR UPDATE OF a" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_ALLOCATION_COLUMNS} FROM allocations a WHERE a.id = $1{suffix}", allocation_id
    )
    return _allocation(row) if row else None


async def release_allocation(conn: Conn, allocation_id: uuid.UUID) -> None:
    """Return its places now: release_time becomes this instant (unless already past) and
    the seats still marked as its own leave it (sold ones keep their tickets)."""
    await conn.execute(
        "UPDATE allocations SET release_time = clock_timestamp() WHERE id = $1 "
        "AND (release_time IS NULL OR release_time > clock_timestamp())",
        allocation_id,
    )
    freed = await conn.fetch(
        "UPDATE seats SET allocation_id = NULL, allocation_partner_id = NULL, "
        "allocated_until = NULL WHERE allocation_id = $1 "
        "RETURNING id, seat_is_free(status, held_until) AS free",
        allocation_id,
    )
    await _record_returned(conn, [r["id"] for r in freed if r["free"]])


async def _record_returned(conn: Conn, seat_ids: list[int]) -> None:
    """Record places that left an allocation as AVAILABLE. A statement of its own, after
    the one that cleared their allocation: record_seat_changes reads the place's allocation
    to record the public view, and must see it gone."""
    if seat_ids:
        await conn.execute("SELECT record_seat_changes($1::bigint[], 'AVAILABLE')", seat_ids)


async def sweep_expired_allocations(conn: Conn, limit: int) -> int:
    """Let up to `limit` places whose allocation's release_time has passed leave it, and
    record the free ones AVAILABLE (so watchers see the release). Like the hold sweep it
    only tidies: such a place is public by allocation_open whether or not this ran, and
    places someone is locking are skipped (SKIP LOCKED), so sweepers and sales never wait
    for each other; a place leaves once, so two sweepers never record it twice. Call it
    inside a transaction. Returns the places swept."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM seats
            WHERE allocation_id IS NOT NULL AND allocated_until IS NOT NULL
              AND allocated_until <= clock_timestamp()
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        UPDATE seats SET allocation_id = NULL, allocation_partner_id = NULL,
                         allocated_until = NULL
        FROM due WHERE seats.id = due.id
        RETURNING seats.id, seat_is_free(seats.status, seats.held_until) AS free
        """,
        limit,
    )
    await _record_returned(conn, [r["id"] for r in rows if r["free"]])
    return len(rows)


async def list_allocations(
    conn: Conn, event_id: uuid.UUID, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[AllocationRecord]:
    """Oldest first, keyset on (create_time, id)."""
    arg = Params()
    clauses = [f"a.event_id = {arg(event_id)}"]
    if after is not None:
        clauses.append(f"(a.create_time, a.id) > ({arg(after[0])}, {arg(after[1])})")
    rows = await conn.fetch(
        f"SELECT {_ALLOCATION_COLUMNS} FROM allocations a WHERE {' AND '.join(clauses)} "
        f"ORDER BY a.create_time, a.id LIMIT {arg(limit)}",
        *arg,
    )
    return [_allocation(r) for r in rows]


async def db_clock(conn: Conn) -> dt.datetime:
    value: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value

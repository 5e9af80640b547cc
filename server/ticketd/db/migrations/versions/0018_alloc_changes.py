"""Allocations in the seat streams (issue 15): watchers see ALLOCATED and its end.

A free place inside an open allocation is ALLOCATED on a public seat map (migration 0012,
computed at read), but until now no seat change said so: a watcher's map drifted from
ListSeats whenever an allocation was made, released, or reached its release_time.

- `seat_changes.status` may be ALLOCATED.
- `record_seat_changes(seats, status)` records the public view of a place that becomes
  free: 'AVAILABLE' is recorded as ALLOCATED when the place is still inside an open
  allocation (a hold released or expired, a refund, on an allocated place). One place
  decides, so no writer has to know about allocations. Making an allocation records
  ALLOCATED explicitly; releasing one, or its release_time passing (swept by the server,
  like expired holds), records AVAILABLE for the places that are free.
- A partial index finds the allocations whose release_time has passed for the sweep.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def _record_seat_changes(status_expr: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION record_seat_changes(p_seats bigint[], p_status text)
        RETURNS integer
        LANGUAGE plpgsql VOLATILE
        AS $$
        DECLARE
            n integer;
        BEGIN
            -- Off only where the writing server opted out (TICKETING_SEAT_STREAMS=off).
            IF current_setting('ticketing.seat_streams', true) IS NOT DISTINCT FROM 'off' THEN
                RETURN 0;
            END IF;
            IF cardinality(p_seats) = 0 THEN
                RETURN 0;
            END IF;
            -- Unnumbered (sequence NULL): no shared row, so writers of one event never
            -- wait for each other here. The sequencer numbers it once this commits.
            WITH ins AS (
                INSERT INTO seat_changes (event_id, seat_id, section_id, status, change_time)
                SELECT s.event_id, s.id, s.section_id, {status_expr}, clock_timestamp()
                FROM seats s WHERE s.id = ANY(p_seats)
                ORDER BY s.id
                RETURNING event_id
            )
            SELECT count(*) INTO n FROM ins;
            RETURN n;
        END
        $$
    """


# The public view of a place that becomes free (see the module docstring).
_PUBLIC_STATUS = (
    "CASE WHEN p_status = 'AVAILABLE' AND s.allocation_partner_id IS NOT NULL "
    "AND allocation_open(s.allocated_until) THEN 'ALLOCATED' ELSE p_status END"
)


def _check(statuses: str) -> None:
    op.execute("ALTER TABLE seat_changes DROP CONSTRAINT seat_changes_status_check")
    op.execute(
        "ALTER TABLE seat_changes ADD CONSTRAINT seat_changes_status_check "
        f"CHECK (status IN ({statuses}))"
    )


def upgrade() -> None:
    _check("'AVAILABLE', 'HELD', 'SOLD', 'ALLOCATED'")
    op.execute(
        "CREATE INDEX seats_allocated_until ON seats (allocated_until) "
        "WHERE allocation_id IS NOT NULL AND allocated_until IS NOT NULL"
    )
    op.execute(_record_seat_changes(_PUBLIC_STATUS))


def downgrade() -> None:
    op.execute(_record_seat_changes("p_status"))
    op.execute("DROP INDEX seats_allocated_until")
    op.execute("DELETE FROM seat_changes WHERE status = 'ALLOCATED'")
    _check("'AVAILABLE', 'HELD', 'SOLD'")

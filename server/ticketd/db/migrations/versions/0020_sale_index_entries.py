"""Fewer index entries per sale (issue 16: half the CPU per booking).

Every sold or held seat is a non-HOT update (its `status` is indexed and is the predicate
of partial indexes), so each index on `seats` that holds every row gets a new entry per
sale; every recorded change gets an entry in each of its table's indexes.

- `seats_event_status (event_id, status)` is dropped. EXPLAIN ANALYZE on a benchmark-sized
  event (30,000 places, 5% sold) of every query on `seats` by event: the event's counts,
  the seat-stream snapshot and ListSeats without a filter read all of the event's rows
  either way (8.7-9.0 ms from `seats_event_section_ordinal` against 11.5-12.2 ms from it);
  ListSeats of AVAILABLE places planned a BitmapOr on it and a join per row (65 ms; 8.3 ms
  from `seats_available` without it); HELD filters and CancelEvent's release of held
  places are served by `seats_held_until` (status = 'HELD') ANDed with the event index;
  best available and its counts use `seats_available`. Only ListSeats of SOLD places
  reads a little more without it (4.1 -> 5.1 ms: the event's places filtered, against the
  sold ones found directly), a public read that is not on the sale path.
  The unique `(event_id, section_id, ordinal)` index, the invariant, stays.
- The `*_changes_sequence (key, sequence)` unique indexes of the outbox tables become
  partial (`WHERE sequence IS NOT NULL`): a writer inserts its record unnumbered, and a NULL
  entry in a unique index is never found (readers ask for `sequence > n` or `<= n`, which
  implies NOT NULL, so the planner uses the partial index) nor conflicts with anything;
  the sequencer's update adds the numbered entry as before. Uniqueness of the numbers per
  stream is unchanged. One entry fewer per recorded seat change and order change.
- `record_seat_changes` plans its insert generically (`SET plan_cache_mode =
  force_generic_plan` on the function). Left to choose, PostgreSQL re-planned it at every
  call: its generic estimate for `id = ANY(p_seats)` is above the custom plan's for the one
  or two seats a sale passes, so it never switched (perf on the sale in pgbench: 7% of
  PostgreSQL's CPU in planning, all of it under this function). The plan is the same either
  way (seats by primary key); seat_changes has no foreign keys or triggers, so no other
  query runs under the setting. A later CREATE OR REPLACE of the function drops the
  setting unless it repeats it.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from ticketd.db.migrations.sqlscript import run_script

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# (index, table, key column) of each outbox stream's numbering.
_SEQUENCES = (
    ("seat_changes_sequence", "seat_changes", "event_id"),
    ("order_changes_sequence", "order_changes", "stream_key"),
    ("gate_changes_sequence", "gate_changes", "event_id"),
)


_RECORD_SEAT_CHANGES = "record_seat_changes(bigint[], text)"


def upgrade() -> None:
    run_script(
        "DROP INDEX seats_event_status;\n"
        + "".join(
            f"DROP INDEX {index};\n"
            f"CREATE UNIQUE INDEX {index} ON {table} ({key}, sequence) "
            "WHERE sequence IS NOT NULL;\n"
            for index, table, key in _SEQUENCES
        )
        + f"ALTER FUNCTION {_RECORD_SEAT_CHANGES} SET plan_cache_mode = force_generic_plan;\n"
    )


def downgrade() -> None:
    run_script(
        f"ALTER FUNCTION {_RECORD_SEAT_CHANGES} RESET plan_cache_mode;\n"
        + "".join(
            f"DROP INDEX {index};\nCREATE UNIQUE INDEX {index} ON {table} ({key}, sequence);\n"
            for index, table, key in _SEQUENCES
        )
        + "CREATE INDEX seats_event_status ON seats (event_id, status);\n"
    )

"""Seat changes outbox (issue 15): every change of a seat's status, in the transaction that
makes it, numbered per event, for WatchSeats.

- `seat_streams`: one row per event, `last_sequence` the number of its last recorded change.
- `seat_changes`: (event_id, sequence) -> seat, section, new status, when.
- `record_seat_changes(seat_ids, status)`: THE way a change is recorded. It bumps the
  event's counter row (an UPDATE: the row stays locked until the writer commits) and writes
  one numbered record per seat, then NOTIFYs `ticketing_seat_changes` with the event id.

Why the sequence is commit-order safe: the counter row is locked from the moment a writer
takes its numbers until it commits or rolls back, so a second writer of the same event gets
its numbers only after the first one's fate is decided. A reader that has seen sequence n
therefore never misses a record numbered below n that commits later: there is none. The
lock is taken in each sale's last statement, so writers of one event queue only for the
commit itself. A rolled-back writer's numbers are rolled back with it (the counter update
is undone), so sequences are dense: no gaps at all.

- Recording is on only for connections with `ticketing.seat_streams = on` (ticketd sets it
  from TICKETING_SEAT_STREAMS): it serializes each event's writers from their last statement
  to their commit, which cost 75% of the booking statements' pgbench rate on the 2-core test
  machine (docs/streams.md), so a deployment opts in.
- `seats_held_until`: the sweeper's index (HELD places by expiry): a sweeper turns expired
  holds' places AVAILABLE and records that, so watchers see expiry; correctness never
  depends on it (seat_is_free stays the condition).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE seat_streams (
            event_id      uuid PRIMARY KEY REFERENCES events (id),
            last_sequence bigint NOT NULL CHECK (last_sequence >= 0)
        );
        CREATE TABLE seat_changes (
            event_id    uuid NOT NULL,
            sequence    bigint NOT NULL CHECK (sequence > 0),
            seat_id     bigint NOT NULL,
            section_id  uuid NOT NULL,
            status      text NOT NULL CHECK (status IN ('AVAILABLE', 'HELD', 'SOLD')),
            change_time timestamptz NOT NULL,
            PRIMARY KEY (event_id, sequence)
        );
        CREATE INDEX seats_held_until ON seats (held_until) WHERE status = 'HELD';
        """
    )
    op.execute(
        """
        CREATE FUNCTION record_seat_changes(p_seats bigint[], p_status text) RETURNS integer
        LANGUAGE plpgsql VOLATILE
        AS $$
        DECLARE
            ev record;
            n integer;
            last bigint;
            total integer := 0;
        BEGIN
            -- Off unless the writing server turned seat streams on (TICKETING_SEAT_STREAMS):
            -- recording serializes each event's writers up to their commit.
            IF current_setting('ticketing.seat_streams', true) IS DISTINCT FROM 'on' THEN
                RETURN 0;
            END IF;
            FOR ev IN
                SELECT s.event_id, array_agg(s.id ORDER BY s.id) AS ids,
                       array_agg(s.section_id ORDER BY s.id) AS sections
                FROM seats s WHERE s.id = ANY(p_seats)
                GROUP BY s.event_id ORDER BY s.event_id
            LOOP
                n := array_length(ev.ids, 1);
                INSERT INTO seat_streams AS ss (event_id, last_sequence)
                VALUES (ev.event_id, n)
                ON CONFLICT (event_id) DO UPDATE SET last_sequence = ss.last_sequence + n
                RETURNING ss.last_sequence INTO last;
                INSERT INTO seat_changes (event_id, sequence, seat_id, section_id, status,
                                          change_time)
                SELECT ev.event_id, last - n + u.ord, u.id, u.section, p_status,
                       clock_timestamp()
                FROM unnest(ev.ids, ev.sections) WITH ORDINALITY AS u(id, section, ord);
                PERFORM pg_notify('ticketing_seat_changes', ev.event_id::text);
                total := total + n;
            END LOOP;
            RETURN total;
        END
        $$
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP FUNCTION record_seat_changes(bigint[], text);
        DROP INDEX seats_held_until;
        DROP TABLE seat_changes;
        DROP TABLE seat_streams;
        """
    )

"""Holds (issue 12): seats locked for a customer at selection, confirmed at payment.

- `hold_expired(expire_time)` and `seat_is_free(status, held_until)`: THE definition of
  "this hold no longer holds" and "this seat can be taken", on the database clock (`now()`).
  Booking, holding, best-available, the seat map and the per-customer caps all call them;
  nothing else spells the condition out. Expiry is a query condition: no job has to run for
  an expired hold's seats to be free (a sweeper, if one is ever added, only tidies).
  Both are one-expression SQL functions, so PostgreSQL inlines them into the callers' plans.
- `holds`: one row per hold; `status` is what was decided (ACTIVE, CONFIRMED, RELEASED);
  EXPIRED is not stored, it is ACTIVE with `hold_expired(expire_time)`.
- `hold_seats`: which places a hold took, at which price (what a late confirmation re-takes).
- `seats.hold_id` / `seats.held_until`: the hold a HELD place belongs to right now, and
  until when (a copy of that hold's expire_time, so "is this seat free" reads one row).
  One column, so a place is under at most one hold; HELD <=> hold_id, and the composite
  foreign key proves the hold really lists the seat. HELD and SOLD exclude each other, and
  `tickets_one_live_per_seat` already allows one live ticket per place: together, a place
  is in at most one live hold or one live ticket, whatever the application does.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

HOLD_EXPIRED = """
CREATE FUNCTION hold_expired(expire_time timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT expire_time <= now() $$
"""

SEAT_IS_FREE = """
CREATE FUNCTION seat_is_free(status text, held_until timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT status = 'AVAILABLE' OR (status = 'HELD' AND hold_expired(held_until)) $$
"""


def upgrade() -> None:
    op.execute(HOLD_EXPIRED)
    op.execute(SEAT_IS_FREE)
    run_script(
        """
        CREATE TABLE holds (
            id            uuid PRIMARY KEY,
            event_id      uuid NOT NULL REFERENCES events (id),
            customer_id   uuid NOT NULL REFERENCES users (id),
            request_id    uuid NOT NULL,
            request_hash  text NOT NULL,
            status        text NOT NULL CHECK (status IN ('ACTIVE', 'CONFIRMED', 'RELEASED')),
            seat_count    integer NOT NULL CHECK (seat_count BETWEEN 1 AND 100),
            total_minor   bigint NOT NULL CHECK (total_minor >= 0),
            currency_code text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
            create_time   timestamptz NOT NULL,
            expire_time   timestamptz NOT NULL CHECK (expire_time > create_time),
            order_id      uuid UNIQUE REFERENCES orders (id),
            release_time  timestamptz,
            CHECK ((status = 'CONFIRMED') = (order_id IS NOT NULL)),
            CHECK ((status = 'RELEASED') = (release_time IS NOT NULL)),
            -- A retried request_id finds the first hold: unique per caller.
            UNIQUE (customer_id, request_id)
        );
        CREATE INDEX holds_customer ON holds (customer_id, create_time, id);
        CREATE INDEX holds_event ON holds (event_id, create_time, id);
        -- The per-customer cap counts live holds; CancelEvent releases them.
        CREATE INDEX holds_active ON holds (event_id, customer_id) WHERE status = 'ACTIVE';

        CREATE TABLE hold_seats (
            hold_id     uuid NOT NULL REFERENCES holds (id),
            seat_id     bigint NOT NULL REFERENCES seats (id),
            price_minor bigint NOT NULL CHECK (price_minor >= 0),
            PRIMARY KEY (hold_id, seat_id)
        );

        ALTER TABLE orders ADD COLUMN payment_reference text
            CHECK (char_length(payment_reference) <= 200);

        ALTER TABLE seats DROP CONSTRAINT seats_status_check;
        ALTER TABLE seats
            ADD COLUMN hold_id uuid,
            ADD COLUMN held_until timestamptz,
            ADD CONSTRAINT seats_status_check CHECK (status IN ('AVAILABLE', 'HELD', 'SOLD')),
            ADD CONSTRAINT seats_held_by_one_hold
                CHECK ((status = 'HELD') = (hold_id IS NOT NULL)
                       AND (hold_id IS NULL) = (held_until IS NULL)),
            ADD CONSTRAINT seats_hold_lists_seat FOREIGN KEY (hold_id, id)
                REFERENCES hold_seats (hold_id, seat_id);
        CREATE INDEX seats_hold ON seats (hold_id) WHERE hold_id IS NOT NULL;
        -- Best available scans the places not sold (free ones, and held ones whose hold may
        -- have expired), lowest ordinal first.
        DROP INDEX seats_available;
        CREATE INDEX seats_available ON seats (event_id, section_id, ordinal)
            WHERE status <> 'SOLD'
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP INDEX seats_available;
        UPDATE seats SET status = 'AVAILABLE', hold_id = NULL, held_until = NULL
            WHERE status = 'HELD';
        ALTER TABLE seats DROP CONSTRAINT seats_hold_lists_seat,
            DROP CONSTRAINT seats_held_by_one_hold, DROP CONSTRAINT seats_status_check,
            DROP COLUMN hold_id, DROP COLUMN held_until;
        ALTER TABLE seats ADD CONSTRAINT seats_status_check
            CHECK (status IN ('AVAILABLE', 'SOLD'));
        CREATE INDEX seats_available ON seats (event_id, section_id, ordinal)
            WHERE status = 'AVAILABLE';
        ALTER TABLE orders DROP COLUMN payment_reference;
        DROP TABLE hold_seats;
        DROP TABLE holds;
        DROP FUNCTION seat_is_free(text, timestamptz);
        DROP FUNCTION hold_expired(timestamptz)
        """
    )

"""Orders, tickets and refunds, with the invariants enforced by the database.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE orders (
            id            uuid PRIMARY KEY,
            event_id      uuid NOT NULL REFERENCES events (id),
            customer_id   uuid NOT NULL REFERENCES users (id),
            request_id    uuid NOT NULL,
            request_hash  text NOT NULL,
            status        text NOT NULL CHECK (status IN ('CONFIRMED', 'REFUNDED')),
            total_minor   bigint NOT NULL CHECK (total_minor >= 0),
            currency_code text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
            ticket_count  integer NOT NULL CHECK (ticket_count BETWEEN 1 AND 100),
            create_time   timestamptz NOT NULL DEFAULT now(),
            refund_time   timestamptz,
            refund_reason text,
            CHECK ((status = 'REFUNDED') = (refund_time IS NOT NULL)),
            -- A retried request_id finds the first order: unique per caller.
            UNIQUE (customer_id, request_id)
        );
        CREATE INDEX orders_event ON orders (event_id, create_time, id);
        CREATE INDEX orders_customer ON orders (customer_id, create_time, id);
        CREATE INDEX orders_live_customer_event ON orders (customer_id, event_id)
            WHERE status = 'CONFIRMED';
        CREATE INDEX orders_created ON orders (create_time, id);

        CREATE TABLE tickets (
            id          uuid PRIMARY KEY,
            order_id    uuid NOT NULL REFERENCES orders (id),
            event_id    uuid NOT NULL,
            seat_id     bigint NOT NULL REFERENCES seats (id),
            code        text NOT NULL CHECK (char_length(code) >= 22),
            status      text NOT NULL CHECK (status IN ('VALID', 'USED', 'VOID')),
            price_minor bigint NOT NULL CHECK (price_minor >= 0)
        );
        CREATE UNIQUE INDEX tickets_code ON tickets (code);
        -- The invariant itself: a place is held by at most one live ticket, whatever
        -- the application does. Locks are the fast path; this is the proof.
        CREATE UNIQUE INDEX tickets_one_live_per_seat ON tickets (seat_id)
            WHERE status <> 'VOID';
        CREATE INDEX tickets_order ON tickets (order_id);
        CREATE INDEX tickets_event ON tickets (event_id);

        CREATE TABLE refunds (
            id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            order_id     uuid NOT NULL UNIQUE REFERENCES orders (id),
            request_id   uuid,
            refunded_by  uuid NOT NULL REFERENCES users (id),
            reason       text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 1100),
            amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
            create_time  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    for table in ("refunds", "tickets", "orders"):
        op.execute(f"DROP TABLE {table}")

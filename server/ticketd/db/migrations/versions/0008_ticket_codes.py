"""Ticket code rotations: who replaced an order's codes, when, and with which request_id.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from ticketd.db.migrations.sqlscript import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        -- One row per RotateTicketCodes that rotated: the audit trail of "support re-sent
        -- the codes", and the idempotency record (a retried request_id finds it).
        CREATE TABLE code_rotations (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            order_id      uuid NOT NULL REFERENCES orders (id),
            requested_by  uuid NOT NULL REFERENCES users (id),
            request_id    uuid NOT NULL,
            rotated_count integer NOT NULL CHECK (rotated_count BETWEEN 0 AND 100),
            create_time   timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- A request_id belongs to its caller, once (AIP-155).
            UNIQUE (requested_by, request_id)
        );
        CREATE INDEX code_rotations_order ON code_rotations (order_id, create_time)
        """
    )


def downgrade() -> None:
    run_script("DROP TABLE code_rotations")

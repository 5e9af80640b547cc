"""Retry-safe creation of venues and events (AIP-155 request_id), who created a venue.

A repeated CreateVenue/CreateEvent with the same caller and request_id must find the first
result instead of creating a second one; two concurrent twins are told apart by the unique
constraints below (NULL request_ids, from callers that send none, never conflict).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from ticketd.db.migrations.sqlscript import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE venues ADD COLUMN created_by uuid REFERENCES users (id),
            ADD COLUMN request_id uuid,
            ADD COLUMN request_hash text,
            ADD CONSTRAINT venues_request_has_hash
                CHECK ((request_id IS NULL) = (request_hash IS NULL)),
            ADD CONSTRAINT venues_request_has_creator
                CHECK (request_id IS NULL OR created_by IS NOT NULL),
            ADD CONSTRAINT venues_one_per_request UNIQUE (created_by, request_id);

        ALTER TABLE events ADD COLUMN request_id uuid,
            ADD COLUMN request_hash text,
            ADD CONSTRAINT events_request_has_hash
                CHECK ((request_id IS NULL) = (request_hash IS NULL)),
            ADD CONSTRAINT events_one_per_request UNIQUE (organizer_id, request_id)
        """
    )


def downgrade() -> None:
    run_script(
        """
        ALTER TABLE events DROP CONSTRAINT events_one_per_request,
            DROP CONSTRAINT events_request_has_hash,
            DROP COLUMN request_hash, DROP COLUMN request_id;
        ALTER TABLE venues DROP CONSTRAINT venues_one_per_request,
            DROP CONSTRAINT venues_request_has_creator,
            DROP CONSTRAINT venues_request_has_hash,
            DROP COLUMN request_hash, DROP COLUMN request_id, DROP COLUMN created_by
        """
    )

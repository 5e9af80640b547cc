"""Gate entry: doors-open time, ticket burn columns, the scan log.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from ticketd.db.migrations.sqlscript import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE events ADD COLUMN doors_open_time timestamptz,
            ADD CONSTRAINT events_doors_before_start CHECK (doors_open_time < start_time);

        ALTER TABLE tickets ADD COLUMN used_time timestamptz,
            ADD COLUMN used_gate_id text,
            ADD COLUMN used_scan_id uuid,
            ADD CONSTRAINT tickets_used_has_time CHECK (status <> 'USED' OR used_time IS NOT NULL);

        CREATE TABLE scans (
            scan_id          uuid PRIMARY KEY,
            event_id         uuid NOT NULL REFERENCES events (id),
            gate_id          text NOT NULL CHECK (char_length(gate_id) BETWEEN 1 AND 64),
            entry_manager_id uuid NOT NULL REFERENCES users (id),
            code_hash        text NOT NULL,
            ticket_id        uuid REFERENCES tickets (id),
            result           text NOT NULL CHECK (result IN ('ADMITTED', 'ALREADY_USED', 'VOID',
                                                           'WRONG_EVENT', 'UNKNOWN_CODE',
                                                           'NOT_OPEN')),
            scan_time        timestamptz NOT NULL DEFAULT now(),
            repeat_count     integer NOT NULL DEFAULT 0,
            CHECK (result <> 'ADMITTED' OR ticket_id IS NOT NULL)
        );
        -- The proof behind "no ticket admits two people": one ADMITTED scan per ticket.
        CREATE UNIQUE INDEX scans_one_admission ON scans (ticket_id) WHERE result = 'ADMITTED';
        CREATE INDEX scans_event_time ON scans (event_id, scan_time DESC, scan_id DESC);
        CREATE INDEX scans_event_gate_time
            ON scans (event_id, gate_id, scan_time DESC, scan_id DESC)
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP TABLE scans;
        ALTER TABLE tickets DROP CONSTRAINT tickets_used_has_time, DROP COLUMN used_scan_id,
            DROP COLUMN used_gate_id, DROP COLUMN used_time;
        ALTER TABLE events DROP CONSTRAINT events_doors_before_start, DROP COLUMN doors_open_time
        """
    )

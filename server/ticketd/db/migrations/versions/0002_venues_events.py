"""Venues with layouts, events with their own copy of the layout, seat inventory.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE venues (
            id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
            address     text NOT NULL CHECK (char_length(address) <= 500),
            time_zone   text NOT NULL,
            capacity    integer NOT NULL CHECK (capacity BETWEEN 1 AND 200000),
            create_time timestamptz NOT NULL DEFAULT now(),
            update_time timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX venues_name ON venues (name, id);

        CREATE TABLE venue_sections (
            id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            venue_id  uuid NOT NULL REFERENCES venues (id) ON DELETE CASCADE,
            position  integer NOT NULL,
            name      text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
            kind      text NOT NULL CHECK (kind IN ('RESERVED', 'GENERAL_ADMISSION')),
            capacity  integer NOT NULL CHECK (capacity > 0),
            UNIQUE (venue_id, name),
            UNIQUE (venue_id, position)
        );

        -- seat_offset = seats in earlier rows of the section, so a seat's place in
        -- "best available" order is seat_offset + number, computed in SQL.
        CREATE TABLE venue_rows (
            section_id  uuid NOT NULL REFERENCES venue_sections (id) ON DELETE CASCADE,
            position    integer NOT NULL,
            label       text NOT NULL CHECK (char_length(label) BETWEEN 1 AND 20),
            seat_count  integer NOT NULL CHECK (seat_count > 0),
            seat_labels text[],
            seat_offset integer NOT NULL CHECK (seat_offset >= 0),
            PRIMARY KEY (section_id, position),
            UNIQUE (section_id, label),
            CHECK (seat_labels IS NULL OR cardinality(seat_labels) = seat_count)
        );

        CREATE TABLE events (
            id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            venue_id                 uuid NOT NULL REFERENCES venues (id),
            organizer_id             uuid NOT NULL REFERENCES users (id),
            name                     text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
            description              text NOT NULL CHECK (char_length(description) <= 5000),
            start_time               timestamptz NOT NULL,
            end_time                 timestamptz CHECK (end_time > start_time),
            currency_code            text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
            max_tickets_per_order    integer NOT NULL
                                     CHECK (max_tickets_per_order BETWEEN 1 AND 100),
            max_tickets_per_customer integer CHECK (max_tickets_per_customer >= 1),
            capacity                 integer NOT NULL CHECK (capacity > 0),
            cancel_time              timestamptz,
            cancel_reason            text,
            create_time              timestamptz NOT NULL DEFAULT now(),
            CHECK ((cancel_time IS NULL) = (cancel_reason IS NULL))
        );
        CREATE INDEX events_start ON events (start_time, id);
        CREATE INDEX events_venue_start ON events (venue_id, start_time, id);
        CREATE INDEX events_organizer_start ON events (organizer_id, start_time, id);

        -- The event's own copy of the venue layout: venue edits never reach it.
        CREATE TABLE event_sections (
            event_id    uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            section_id  uuid NOT NULL,
            position    integer NOT NULL,
            name        text NOT NULL,
            kind        text NOT NULL CHECK (kind IN ('RESERVED', 'GENERAL_ADMISSION')),
            price_minor bigint NOT NULL CHECK (price_minor BETWEEN 0 AND 100000000),
            capacity    integer NOT NULL CHECK (capacity > 0),
            PRIMARY KEY (event_id, section_id)
        );

        -- One row per place. ordinal orders places inside a section (row by row, seat
        -- by seat) for best-available claims; general admission has no row/number.
        CREATE TABLE seats (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id    uuid NOT NULL,
            section_id  uuid NOT NULL,
            ordinal     integer NOT NULL CHECK (ordinal > 0),
            row_label   text,
            seat_number integer CHECK (seat_number > 0),
            seat_label  text,
            price_minor bigint NOT NULL CHECK (price_minor >= 0),
            status      text NOT NULL DEFAULT 'AVAILABLE' CHECK (status IN ('AVAILABLE', 'SOLD')),
            FOREIGN KEY (event_id, section_id)
                REFERENCES event_sections (event_id, section_id) ON DELETE CASCADE,
            CHECK ((row_label IS NULL) = (seat_number IS NULL))
        );
        CREATE UNIQUE INDEX seats_event_section_ordinal ON seats (event_id, section_id, ordinal);
        CREATE INDEX seats_event_status ON seats (event_id, status);
        -- Best available: the lowest free ordinals of one section, nothing else scanned.
        CREATE INDEX seats_available ON seats (event_id, section_id, ordinal)
            WHERE status = 'AVAILABLE'
        """
    )


def downgrade() -> None:
    for table in ("seats", "event_sections", "events", "venue_rows", "venue_sections", "venues"):
        op.execute(f"DROP TABLE {table}")

"""The audit log (issue 15): who did what, when, to what, from which principal.

- `audit_entries`: one row per administrative act or refund, written by
  `ticketd.audit.service.record` inside the very transaction that makes the act, so an act
  and its entry commit or roll back together.
- `create_time` is the database clock at the write (`clock_timestamp()`, not the
  transaction's start: a long transaction's entries still say when the act happened).
- The actor: `actor_kind` USER (a signed-in account: `actor_id` is the user), PARTNER_KEY
  (a partner's API key: `actor_id` the partner, `actor_key_id` the key), DEVICE (an
  enrolled kiosk: `actor_id` the device) or SYSTEM (the server itself, e.g. the bootstrap
  admin at start: no id).
- `action`: a stable `noun.verb` name (`order.refunded`, `user.role_granted`...; the
  catalogue is ticketd.audit.rules.Action). `subject_kind` + `subject_id`: what was acted
  on. `event_id`: the event the act belongs to, when there is one, so organizers can be
  shown their events' entries. `details`: a small JSON object of text values (the writer
  keeps it to 8 values of 200 characters, so the 16 KiB bound holds even for text that is
  all escapes: an act never fails for its entry's size).
- No foreign keys, on purpose: an entry must never stop an object from being deleted or
  make the act wait on another table's lock, and subjects are of many kinds.
- Append-only: a trigger refuses UPDATE and DELETE (TRUNCATE stays for operators).
- Indexes for ListAuditEntries' filters, each ending in `id`: the listing is newest first
  by id, and each filter reads its index backwards from the page token's position.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE audit_entries (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
            actor_kind   text NOT NULL
                CHECK (actor_kind IN ('USER', 'PARTNER_KEY', 'DEVICE', 'SYSTEM')),
            actor_id     uuid,
            actor_key_id uuid,
            action       text NOT NULL CHECK (action ~ '^[a-z_]+\\.[a-z_]+$'),
            subject_kind text NOT NULL CHECK (subject_kind ~ '^[a-z_]+$'),
            subject_id   text NOT NULL CHECK (length(subject_id) BETWEEN 1 AND 100),
            event_id     uuid,
            details      jsonb NOT NULL DEFAULT '{}'::jsonb
                CHECK (jsonb_typeof(details) = 'object' AND octet_length(details::text) <= 16384),
            CHECK ((actor_kind = 'SYSTEM') = (actor_id IS NULL)),
            CHECK ((actor_kind = 'PARTNER_KEY') = (actor_key_id IS NOT NULL))
        );
        CREATE INDEX audit_entries_actor ON audit_entries (actor_id, id);
        CREATE INDEX audit_entries_actor_key ON audit_entries (actor_key_id, id)
            WHERE actor_key_id IS NOT NULL;
        CREATE INDEX audit_entries_subject ON audit_entries (subject_id, subject_kind, id);
        CREATE INDEX audit_entries_subject_kind ON audit_entries (subject_kind, id);
        CREATE INDEX audit_entries_action ON audit_entries (action, id);
        CREATE INDEX audit_entries_event ON audit_entries (event_id, id)
            WHERE event_id IS NOT NULL;
        CREATE INDEX audit_entries_time ON audit_entries (create_time, id);
        """
    )
    # A body with semicolons: its own statement (run_script splits on ";\n").
    op.execute(
        """
        CREATE FUNCTION audit_entries_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = '42501';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_entries_append_only
            BEFORE UPDATE OR DELETE ON audit_entries
            FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only()
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP TRIGGER audit_entries_append_only ON audit_entries;
        DROP FUNCTION audit_entries_append_only();
        DROP TABLE audit_entries;
        """
    )

"""Offline gates: signing keys, the revocation list, kiosk devices, offline scans.

- `event_signing_keys`: per-event Ed25519 keys; the private half sealed (AES-256-GCM under a
  key derived from the server's TICKETING_KEYS_SECRET), never returned by any RPC. One key
  per event signs (`retire_time IS NULL`); retired keys still verify until the event ends,
  withdrawn ones never again.
- `ticket_code_tag(code)`: the 8-byte tag a signed code carries of the plain code it was
  derived from, defined once here (the server reads it from SQL, never recomputes it).
- `ticket_revocations`: per-event, gap-free sequence of tickets whose signed codes stopped
  admitting. Written by a trigger on `tickets`, so every path that voids a ticket or
  replaces its code (refund, cancel, rotation, and any later one) writes it in its own
  transaction, and none can forget to.
- `gate_devices`: kiosks scoped to one event and gate, with hashed enrollment tokens and
  credentials.
- `scans`: who scanned may be a device; offline uploads and conflicts are marked.

Revision ID: 0010
Revises: 0008
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

# The tag is domain-separated from the scan log's code_hash (which is a plain SHA-256 of the
# code), so the two never give each other away.
CODE_TAG = """
CREATE FUNCTION ticket_code_tag(code text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT substring(sha256(convert_to('ticketing.v1 signed-code tag:' || code, 'UTF8'))
                     FROM 1 FOR 8)
$$
"""

# Commit-order safety: the sequence is assigned under the event row's lock (FOR NO KEY
# UPDATE: bookings and refunds hold it KEY SHARE, which does not conflict, so sales never
# wait for it), held until commit. The next number is read after the lock is ours, in a new
# statement (READ COMMITTED: a fresh snapshot), so it sees every earlier holder's rows; a
# transaction numbered n+1 therefore commits after n's did, and a reader that sees n+1 sees
# n. A rollback gives its numbers back, so there are no gaps either.
# A row trigger with a WHEN clause: the gate's burn (VALID -> USED) never calls it.
REVOKE_FUNCTION = """
CREATE FUNCTION record_ticket_revocation() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    next_sequence bigint;
BEGIN
    PERFORM 1 FROM events WHERE id = NEW.event_id FOR NO KEY UPDATE;
    SELECT coalesce(max(sequence), 0) + 1 INTO next_sequence
        FROM ticket_revocations WHERE event_id = NEW.event_id;
    INSERT INTO ticket_revocations (event_id, sequence, ticket_id, cause, code_tag)
    VALUES (
        NEW.event_id, next_sequence, NEW.id,
        CASE WHEN NEW.status = 'VOID' THEN 'VOIDED' ELSE 'REISSUED' END,
        CASE WHEN NEW.status = 'VOID' THEN NULL ELSE ticket_code_tag(OLD.code) END
    );
    RETURN NULL;
END
$$
"""

REVOKE_TRIGGER = """
CREATE TRIGGER tickets_revocations
AFTER UPDATE OF status, code ON tickets
FOR EACH ROW
WHEN (OLD.status <> 'VOID'
      AND (NEW.status = 'VOID' OR (NEW.status <> 'VOID' AND NEW.code <> OLD.code)))
EXECUTE FUNCTION record_ticket_revocation()
"""

_RESULTS_OLD = (
    "'ADMITTED', 'ALREADY_USED', 'VOID', 'WRONG_EVENT', 'UNKNOWN_CODE', 'NOT_YET_OPEN', "
    "'EVENT_OVER', 'EVENT_CANCELLED'"
)
_RESULTS_NEW = _RESULTS_OLD + ", 'CONFLICT', 'REVOKED'"


def upgrade() -> None:
    op.execute(CODE_TAG)
    run_script(
        f"""
        ALTER TABLE events ADD COLUMN offline_admission boolean NOT NULL DEFAULT true;

        CREATE TABLE event_signing_keys (
            event_id       uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            key_id         integer NOT NULL CHECK (key_id BETWEEN 1 AND 65535),
            public_key     bytea NOT NULL CHECK (octet_length(public_key) = 32),
            -- nonce (12 bytes) || AES-256-GCM(private key, aad = event id || key id)
            sealed_private bytea NOT NULL CHECK (octet_length(sealed_private) = 60),
            create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
            retire_time    timestamptz,
            withdraw_time  timestamptz,
            PRIMARY KEY (event_id, key_id),
            CHECK (withdraw_time IS NULL OR retire_time IS NOT NULL)
        );
        -- Exactly one key signs new codes (at most one, by this index; the service makes
        -- one when there is none).
        CREATE UNIQUE INDEX event_signing_keys_one_active ON event_signing_keys (event_id)
            WHERE retire_time IS NULL;

        CREATE TABLE ticket_revocations (
            event_id    uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            sequence    bigint NOT NULL CHECK (sequence >= 1),
            ticket_id   uuid NOT NULL REFERENCES tickets (id),
            cause       text NOT NULL CHECK (cause IN ('VOIDED', 'REISSUED')),
            code_tag    bytea CHECK (octet_length(code_tag) = 8),
            revoke_time timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (event_id, sequence),
            CHECK ((cause = 'REISSUED') = (code_tag IS NOT NULL))
        );
        CREATE INDEX ticket_revocations_ticket ON ticket_revocations (ticket_id);

        CREATE TABLE gate_devices (
            id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            event_id               uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            gate_id                text NOT NULL CHECK (char_length(gate_id) BETWEEN 1 AND 64),
            display_name           text NOT NULL
                                   CHECK (char_length(display_name) BETWEEN 1 AND 100),
            created_by             uuid NOT NULL REFERENCES users (id),
            create_time            timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- HMAC-SHA-256 of the token / credential under a server key: a leaked table
            -- enrolls nobody and authenticates nobody.
            enrollment_hash        bytea NOT NULL UNIQUE CHECK (octet_length(enrollment_hash) = 32),
            enrollment_expire_time timestamptz NOT NULL,
            enroll_time            timestamptz,
            credential_hash        bytea UNIQUE CHECK (octet_length(credential_hash) = 32),
            revoke_time            timestamptz,
            revoked_by             uuid REFERENCES users (id),
            CHECK (enrollment_expire_time > create_time),
            -- Single use: a credential exists exactly when the token was spent, in time.
            CHECK ((enroll_time IS NULL) = (credential_hash IS NULL)),
            CHECK (enroll_time IS NULL OR enroll_time <= enrollment_expire_time),
            CHECK ((revoke_time IS NULL) = (revoked_by IS NULL))
        );
        CREATE INDEX gate_devices_event ON gate_devices (event_id, create_time, id);

        ALTER TABLE scans ALTER COLUMN entry_manager_id DROP NOT NULL,
            ADD COLUMN device_id uuid REFERENCES gate_devices (id),
            ADD COLUMN offline boolean NOT NULL DEFAULT false,
            ADD COLUMN upload_time timestamptz,
            ADD COLUMN conflict_scan_id uuid REFERENCES scans (scan_id),
            ADD CONSTRAINT scans_one_scanner
                CHECK ((entry_manager_id IS NULL) <> (device_id IS NULL)),
            ADD CONSTRAINT scans_offline_uploaded CHECK (offline = (upload_time IS NOT NULL)),
            ADD CONSTRAINT scans_conflict_names_first
                CHECK ((result = 'CONFLICT') = (conflict_scan_id IS NOT NULL)),
            ADD CONSTRAINT scans_offline_results_have_ticket
                CHECK (result NOT IN ('CONFLICT', 'REVOKED')
                       OR (ticket_id IS NOT NULL AND offline)),
            DROP CONSTRAINT scans_result_check;
        ALTER TABLE scans ADD CONSTRAINT scans_result_check CHECK (result IN ({_RESULTS_NEW}));
        CREATE INDEX scans_event_conflicts ON scans (event_id, scan_time DESC, scan_id DESC)
            WHERE result = 'CONFLICT'
        """
    )
    op.execute(REVOKE_FUNCTION)
    op.execute(REVOKE_TRIGGER)


def downgrade() -> None:
    run_script(
        f"""
        DROP TRIGGER tickets_revocations ON tickets;
        DROP FUNCTION record_ticket_revocation();
        DELETE FROM scans WHERE device_id IS NOT NULL OR offline;
        DROP INDEX scans_event_conflicts;
        ALTER TABLE scans DROP CONSTRAINT scans_result_check,
            DROP CONSTRAINT scans_offline_results_have_ticket,
            DROP CONSTRAINT scans_conflict_names_first,
            DROP CONSTRAINT scans_offline_uploaded,
            DROP CONSTRAINT scans_one_scanner,
            DROP COLUMN conflict_scan_id, DROP COLUMN upload_time, DROP COLUMN offline,
            DROP COLUMN device_id,
            ALTER COLUMN entry_manager_id SET NOT NULL;
        ALTER TABLE scans ADD CONSTRAINT scans_result_check CHECK (result IN ({_RESULTS_OLD}));
        DROP TABLE gate_devices;
        DROP TABLE ticket_revocations;
        DROP TABLE event_signing_keys;
        ALTER TABLE events DROP COLUMN offline_admission;
        DROP FUNCTION ticket_code_tag(text)
        """
    )

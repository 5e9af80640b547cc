"""Partner resellers (issue 13): partners and their API keys.

- `partners`: one row per reseller; `status` ACTIVE or SUSPENDED (a suspended partner's keys
  are refused on their next call: the key lookup reads the partner's status every time).
- `partner_api_keys`: one row per key. The secret itself is never stored, only its keyed
  hash (HMAC-SHA-256, 32 bytes, unique: a lookup is one indexed equality). `revoke_time`
  set = revoked; `last_used_time` is refreshed at most once a minute per key, so a busy key
  does not turn every call into a write.
- `partners.max_concurrent_rpcs` / `rate_per_second`: the partner's own admission budget
  (calls in flight, sustained calls per second); NULL = the server's defaults
  (TICKETING_PARTNER_MAX_CONCURRENT_RPCS, TICKETING_PARTNER_RATE). Set by the operator.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from ticketd.db.migrations.sqlscript import run_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE partners (
            id            uuid PRIMARY KEY,
            display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
            contact_email text NOT NULL CHECK (char_length(contact_email) BETWEEN 3 AND 254),
            status        text NOT NULL CHECK (status IN ('ACTIVE', 'SUSPENDED')),
            max_concurrent_rpcs integer CHECK (max_concurrent_rpcs BETWEEN 1 AND 100000),
            rate_per_second     integer CHECK (rate_per_second BETWEEN 1 AND 1000000),
            created_by    uuid NOT NULL REFERENCES users (id),
            create_time   timestamptz NOT NULL,
            update_time   timestamptz NOT NULL
        );
        CREATE INDEX partners_created ON partners (create_time, id);

        CREATE TABLE partner_api_keys (
            id             uuid PRIMARY KEY,
            partner_id     uuid NOT NULL REFERENCES partners (id),
            display_name   text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
            secret_hash    bytea NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
            create_time    timestamptz NOT NULL,
            last_used_time timestamptz,
            revoke_time    timestamptz,
            CHECK (revoke_time IS NULL OR revoke_time >= create_time)
        );
        CREATE INDEX partner_api_keys_partner ON partner_api_keys (partner_id, create_time, id)
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP TABLE partner_api_keys;
        DROP TABLE partners
        """
    )

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
- `partner_customers`: a partner's end customers, one row per (partner,
  external_customer_id). Orders and holds a partner makes store that row's id as their
  `customer_id`, so every existing rule keyed on the buyer (request_id unique per buyer,
  the per-customer cap and its advisory lock) applies per end customer within the partner
  without a second code path. `orders.partner_id` / `holds.partner_id` say who sold it.
  The former foreign key customer_id -> users is kept, split by channel, on two generated
  columns: `account_id` (a public order's user) and `end_customer_id` (a partner's end
  customer, with the composite key proving the end customer is that partner's).
- `refunds.refunded_by_partner`: a partner refunding its own order (exactly one of
  refunded_by / refunded_by_partner is set).

Downgrading with partner sales on record fails on the restored customer_id -> users keys
(those orders have no account): export and remove them first.

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
        CREATE INDEX partner_api_keys_partner ON partner_api_keys (partner_id, create_time, id);

        CREATE TABLE partner_customers (
            id                   uuid PRIMARY KEY,
            partner_id           uuid NOT NULL REFERENCES partners (id),
            external_customer_id text NOT NULL
                CHECK (char_length(external_customer_id) BETWEEN 1 AND 200),
            display_name         text NOT NULL CHECK (char_length(display_name) <= 100),
            email                text NOT NULL CHECK (char_length(email) <= 254),
            create_time          timestamptz NOT NULL,
            update_time          timestamptz NOT NULL,
            UNIQUE (partner_id, external_customer_id),
            UNIQUE (partner_id, id)
        );

        ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey,
            ADD COLUMN partner_id uuid REFERENCES partners (id),
            ADD COLUMN account_id uuid
                GENERATED ALWAYS AS (CASE WHEN partner_id IS NULL THEN customer_id END) STORED
                REFERENCES users (id),
            ADD COLUMN end_customer_id uuid
                GENERATED ALWAYS AS (CASE WHEN partner_id IS NOT NULL THEN customer_id END)
                STORED,
            ADD CONSTRAINT orders_end_customer_of_partner FOREIGN KEY (partner_id, end_customer_id)
                REFERENCES partner_customers (partner_id, id);
        CREATE INDEX orders_partner ON orders (partner_id, create_time, id)
            WHERE partner_id IS NOT NULL;

        ALTER TABLE holds DROP CONSTRAINT holds_customer_id_fkey,
            ADD COLUMN partner_id uuid REFERENCES partners (id),
            ADD COLUMN account_id uuid
                GENERATED ALWAYS AS (CASE WHEN partner_id IS NULL THEN customer_id END) STORED
                REFERENCES users (id),
            ADD COLUMN end_customer_id uuid
                GENERATED ALWAYS AS (CASE WHEN partner_id IS NOT NULL THEN customer_id END)
                STORED,
            ADD CONSTRAINT holds_end_customer_of_partner FOREIGN KEY (partner_id, end_customer_id)
                REFERENCES partner_customers (partner_id, id);
        CREATE INDEX holds_partner ON holds (partner_id, create_time, id)
            WHERE partner_id IS NOT NULL;

        ALTER TABLE refunds ALTER COLUMN refunded_by DROP NOT NULL,
            ADD COLUMN refunded_by_partner uuid REFERENCES partners (id),
            ADD CONSTRAINT refunds_one_refunder
                CHECK (num_nonnulls(refunded_by, refunded_by_partner) = 1)
        """
    )


def downgrade() -> None:
    run_script(
        """
        DELETE FROM refunds WHERE refunded_by_partner IS NOT NULL;
        ALTER TABLE refunds DROP CONSTRAINT refunds_one_refunder,
            DROP COLUMN refunded_by_partner, ALTER COLUMN refunded_by SET NOT NULL;
        ALTER TABLE holds DROP CONSTRAINT holds_end_customer_of_partner,
            DROP COLUMN end_customer_id, DROP COLUMN account_id, DROP COLUMN partner_id,
            ADD CONSTRAINT holds_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES users (id);
        ALTER TABLE orders DROP CONSTRAINT orders_end_customer_of_partner,
            DROP COLUMN end_customer_id, DROP COLUMN account_id, DROP COLUMN partner_id,
            ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES users (id);
        DROP TABLE partner_customers;
        DROP TABLE partner_api_keys;
        DROP TABLE partners
        """
    )

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

- Allocations (EventService.AllocateSeats): `allocations` (one per allocation; `release_time`
  when its unsold places return to the public pool, NULL = never; ReleaseAllocation moves
  it to now) and `allocation_seats` (which places it took). `seats.allocation_id` /
  `allocation_partner_id` / `allocated_until` are the allocation a place belongs to right
  now (one column: a place is in at most one allocation), its partner and the copy of its
  release_time, so "who may take this seat" reads one row; composite keys prove the
  allocation lists the seat and belongs to that partner.
- `allocation_open(allocated_until)` and `seat_is_free_for(...)`: THE definition of "this
  seat can be taken by this caller": seat_is_free (not sold, not under a live hold) AND
  (an open allocation's partner is the caller; else the public pool, which a partner
  reaches only with `partners.public_sales`). A release_time in the past is a query
  condition, like hold expiry: no job has to run for the places to return.

Downgrading with partner sales on record fails on the restored customer_id -> users keys
(those orders have no account): export and remove them first.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


ALLOCATION_OPEN = """
CREATE FUNCTION allocation_open(allocated_until timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT allocated_until IS NULL OR allocated_until > now() $$
"""

SEAT_IS_FREE_FOR = """
CREATE FUNCTION seat_is_free_for(status text, held_until timestamptz,
                                 allocation_partner uuid, allocated_until timestamptz,
                                 caller_partner uuid, public_pool boolean) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT seat_is_free(status, held_until) AND CASE
        WHEN allocation_partner IS NOT NULL AND allocation_open(allocated_until)
        THEN (allocation_partner = caller_partner) IS TRUE
        ELSE public_pool END $$
"""


def upgrade() -> None:
    op.execute(ALLOCATION_OPEN)
    op.execute(SEAT_IS_FREE_FOR)
    run_script(
        """
        CREATE TABLE partners (
            id            uuid PRIMARY KEY,
            display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
            contact_email text NOT NULL CHECK (char_length(contact_email) BETWEEN 3 AND 254),
            status        text NOT NULL CHECK (status IN ('ACTIVE', 'SUSPENDED')),
            public_sales  boolean NOT NULL DEFAULT true,
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
                CHECK (num_nonnulls(refunded_by, refunded_by_partner) = 1);

        CREATE TABLE allocations (
            id           uuid PRIMARY KEY,
            event_id     uuid NOT NULL REFERENCES events (id),
            partner_id   uuid NOT NULL REFERENCES partners (id),
            created_by   uuid NOT NULL REFERENCES users (id),
            request_id   uuid NOT NULL,
            request_hash text NOT NULL,
            seat_count   integer NOT NULL CHECK (seat_count BETWEEN 1 AND 100000),
            create_time  timestamptz NOT NULL,
            release_time timestamptz,
            UNIQUE (created_by, request_id),
            UNIQUE (id, partner_id)
        );
        CREATE INDEX allocations_event ON allocations (event_id, create_time, id);

        CREATE TABLE allocation_seats (
            allocation_id uuid NOT NULL REFERENCES allocations (id),
            seat_id       bigint NOT NULL REFERENCES seats (id),
            PRIMARY KEY (allocation_id, seat_id)
        );

        ALTER TABLE seats
            ADD COLUMN allocation_id uuid,
            ADD COLUMN allocation_partner_id uuid,
            ADD COLUMN allocated_until timestamptz,
            ADD CONSTRAINT seats_allocation_lists_seat FOREIGN KEY (allocation_id, id)
                REFERENCES allocation_seats (allocation_id, seat_id),
            ADD CONSTRAINT seats_allocation_of_partner
                FOREIGN KEY (allocation_id, allocation_partner_id)
                REFERENCES allocations (id, partner_id),
            ADD CONSTRAINT seats_allocation_whole
                CHECK ((allocation_id IS NULL) = (allocation_partner_id IS NULL)
                       AND (allocated_until IS NULL OR allocation_id IS NOT NULL));
        CREATE INDEX seats_allocation ON seats (allocation_id) WHERE allocation_id IS NOT NULL
        """
    )


def downgrade() -> None:
    run_script(
        """
        ALTER TABLE seats DROP CONSTRAINT seats_allocation_whole,
            DROP CONSTRAINT seats_allocation_of_partner,
            DROP CONSTRAINT seats_allocation_lists_seat,
            DROP COLUMN allocated_until, DROP COLUMN allocation_partner_id,
            DROP COLUMN allocation_id;
        DROP TABLE allocation_seats;
        DROP TABLE allocations;
        DROP FUNCTION seat_is_free_for(text, timestamptz, uuid, timestamptz, uuid, boolean);
        DROP FUNCTION allocation_open(timestamptz);
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

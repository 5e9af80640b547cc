"""All SQL of partners and their API keys. Secrets appear here only as keyed hashes.

Authenticating a key is one statement: the key's and its partner's state read together
(so a suspension or a revocation committed before the call is seen by it), and
`last_used_time` refreshed in the same round trip when it is older than the resolution.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ticketd.db.database import Connection as Conn
from ticketd.partners.rules import (
    LAST_USED_RESOLUTION,
    ApiKeyRecord,
    KeyLookup,
    PartnerRecord,
    PartnerSettings,
    PartnerStatus,
)
from ticketd.shared import EndCustomer

_PARTNER = (
    "id, display_name, contact_email, status, create_time, public_sales, max_concurrent_rpcs, "
    "rate_per_second"
)
_KEY = "id, partner_id, display_name, create_time, last_used_time, revoke_time"


def _partner(row: Any) -> PartnerRecord:
    return PartnerRecord(
        id=row["id"],
        display_name=row["display_name"],
        contact_email=row["contact_email"],
        status=PartnerStatus(row["status"]),
        create_time=row["create_time"],
        public_sales=row["public_sales"],
        max_concurrent_rpcs=row["max_concurrent_rpcs"],
        rate_per_second=row["rate_per_second"],
    )


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        partner_id=row["partner_id"],
        display_name=row["display_name"],
        create_time=row["create_time"],
        last_used_time=row["last_used_time"],
        revoke_time=row["revoke_time"],
    )


async def insert_partner(
    conn: Conn, *, display_name: str, contact_email: str, created_by: uuid.UUID
) -> PartnerRecord:
    row = await conn.fetchrow(
        "INSERT INTO partners (id, display_name, contact_email, status, created_by, "
        "create_time, update_time) "
        "VALUES ($1, $2, $3, 'ACTIVE', $4, clock_timestamp(), clock_timestamp()) "
        f"RETURNING {_PARTNER}",
        uuid.uuid4(),
        display_name,
        contact_email,
        created_by,
    )
    return _partner(row)


async def partner(conn: Conn, partner_id: uuid.UUID, *, lock: bool = False) -> PartnerRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_PARTNER} FROM partners WHERE id = $1{suffix}", partner_id)
    return _partner(row) if row else None


async def update_settings(
    conn: Conn, partner_id: uuid.UUID, settings: PartnerSettings
) -> PartnerRecord:
    """Apply UpdatePartner's changes (a NULL parameter leaves its column alone; a budget of
    0 clears the override)."""
    row = await conn.fetchrow(
        "UPDATE partners SET public_sales = coalesce($2, public_sales), "
        "max_concurrent_rpcs = CASE WHEN $3::integer IS NULL THEN max_concurrent_rpcs "
        "  ELSE nullif($3::integer, 0) END, "
        "rate_per_second = CASE WHEN $4::integer IS NULL THEN rate_per_second "
        "  ELSE nullif($4::integer, 0) END, "
        "update_time = clock_timestamp() "
        f"WHERE id = $1 RETURNING {_PARTNER}",
        partner_id,
        settings.public_sales,
        settings.max_concurrent_rpcs,
        settings.rate_per_second,
    )
    return _partner(row)


async def set_status(conn: Conn, partner_id: uuid.UUID, status: PartnerStatus) -> PartnerRecord:
    row = await conn.fetchrow(
        "UPDATE partners SET status = $2, update_time = clock_timestamp() "
        f"WHERE id = $1 RETURNING {_PARTNER}",
        partner_id,
        status.value,
    )
    return _partner(row)


async def list_partners(
    conn: Conn, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[PartnerRecord]:
    """Oldest first, keyset on (create_time, id)."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {_PARTNER} FROM partners ORDER BY create_time, id LIMIT $1", limit
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_PARTNER} FROM partners WHERE (create_time, id) > ($1, $2) "
            "ORDER BY create_time, id LIMIT $3",
            after[0],
            after[1],
            limit,
        )
    return [_partner(r) for r in rows]


async def insert_key(
    conn: Conn, *, partner_id: uuid.UUID, display_name: str, secret_hash: bytes
) -> ApiKeyRecord:
    row = await conn.fetchrow(
        "INSERT INTO partner_api_keys (id, partner_id, display_name, secret_hash, create_time) "
        f"VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING {_KEY}",
        uuid.uuid4(),
        partner_id,
        display_name,
        secret_hash,
    )
    return _key(row)


async def key(conn: Conn, key_id: uuid.UUID, *, lock: bool = False) -> ApiKeyRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_KEY} FROM partner_api_keys WHERE id = $1{suffix}", key_id)
    return _key(row) if row else None


async def revoke_key(conn: Conn, key_id: uuid.UUID) -> ApiKeyRecord:
    """Revoke once: a revoked key keeps its first revoke_time."""
    row = await conn.fetchrow(
        "UPDATE partner_api_keys SET revoke_time = coalesce(revoke_time, clock_timestamp()) "
        f"WHERE id = $1 RETURNING {_KEY}",
        key_id,
    )
    return _key(row)


async def list_keys(
    conn: Conn, partner_id: uuid.UUID, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[ApiKeyRecord]:
    """Oldest first, keyset on (create_time, id)."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {_KEY} FROM partner_api_keys WHERE partner_id = $1 "
            "ORDER BY create_time, id LIMIT $2",
            partner_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_KEY} FROM partner_api_keys WHERE partner_id = $1 "
            "AND (create_time, id) > ($2, $3) ORDER BY create_time, id LIMIT $4",
            partner_id,
            after[0],
            after[1],
            limit,
        )
    return [_key(r) for r in rows]


async def authenticate(conn: Conn, secret_hash: bytes) -> KeyLookup | None:
    """The key of a hash with its partner's status; a usable key's last_used_time is
    refreshed when older than LAST_USED_RESOLUTION (data-modifying CTE: one round trip)."""
    row = await conn.fetchrow(
        """
        WITH found AS (
            SELECT k.id, k.partner_id, k.revoke_time IS NOT NULL AS revoked, p.status,
                   k.last_used_time, p.max_concurrent_rpcs, p.rate_per_second,
                   p.public_sales
            FROM partner_api_keys k JOIN partners p ON p.id = k.partner_id
            WHERE k.secret_hash = $1
        ), touched AS (
            UPDATE partner_api_keys k SET last_used_time = clock_timestamp()
            FROM found f
            WHERE k.id = f.id AND NOT f.revoked AND f.status = 'ACTIVE'
              AND (f.last_used_time IS NULL
                   OR f.last_used_time < clock_timestamp() - $2::interval)
            RETURNING k.id
        )
        SELECT id, partner_id, revoked, status, max_concurrent_rpcs, rate_per_second,
               public_sales,
               (SELECT count(*) FROM touched) AS touched
        FROM found
        """,
        secret_hash,
        LAST_USED_RESOLUTION,
    )
    if row is None:
        return None
    return KeyLookup(
        key_id=row["id"],
        partner_id=row["partner_id"],
        revoked=row["revoked"],
        partner_status=PartnerStatus(row["status"]),
        max_in_flight=row["max_concurrent_rpcs"],
        rate_per_second=row["rate_per_second"],
        public_sales=row["public_sales"],
    )


async def upsert_end_customer(
    conn: Conn, partner_id: uuid.UUID, customer: EndCustomer
) -> uuid.UUID:
    """The id of the partner's end customer, made on first use; the latest name and email
    given are kept (one statement: concurrent first uses of one id agree on one row)."""
    value: uuid.UUID = await conn.fetchval(
        "INSERT INTO partner_customers (id, partner_id, external_customer_id, display_name, "
        "email, create_time, update_time) "
        "VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp()) "
        "ON CONFLICT (partner_id, external_customer_id) DO UPDATE "
        "SET display_name = EXCLUDED.display_name, email = EXCLUDED.email, "
        "update_time = EXCLUDED.update_time "
        "WHERE (partner_customers.display_name, partner_customers.email) "
        "IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.email) "
        "RETURNING id",
        uuid.uuid4(),
        partner_id,
        customer.external_customer_id,
        customer.display_name,
        customer.email,
    )
    if value is None:
        # Unchanged: ON CONFLICT ... WHERE skipped the write, so nothing was returned.
        value = await conn.fetchval(
            "SELECT id FROM partner_customers WHERE partner_id = $1 AND external_customer_id = $2",
            partner_id,
            customer.external_customer_id,
        )
    return value


async def end_customer_id(
    conn: Conn, partner_id: uuid.UUID, external_customer_id: str
) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM partner_customers WHERE partner_id = $1 AND external_customer_id = $2",
        partner_id,
        external_customer_id,
    )
    return value


async def partner_exists(conn: Conn, partner_id: uuid.UUID) -> bool:
    value: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1)", partner_id
    )
    return value


async def clock(conn: Conn) -> dt.datetime:
    value: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value

"""Partners and their API keys: create, list, suspend; keys shown once, hashed at rest;
and the partner principal behind a key, read on every call, so that a revocation or a
suspension is effective on the key's next call."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.audit import service as audit
from ticketd.auth.credentials import API_KEY_PREFIX, SecretHasher, new_secret
from ticketd.auth.principal import PartnerScope, Principal, PrincipalKind
from ticketd.db.database import Database
from ticketd.errors import NotFound
from ticketd.partners import repository as repo
from ticketd.partners.rules import (
    ApiKeyRecord,
    PartnerRecord,
    PartnerSettings,
    PartnerStatus,
    authentication_refusal,
    check_may_manage_partner,
    key_not_found,
    partner_not_found,
    resolve_partner_id,
    validate_end_customer,
    validate_key_name,
    validate_partner_input,
)
from ticketd.shared import EndCustomer

Keyset = tuple[dt.datetime, uuid.UUID] | None
# Keys whose budgets the edge may check before their lookup (one entry per key in use).
MAX_BUDGET_HINTS = 10_000


class PartnerService:
    """Partner resellers; secrets in and out only at CreateApiKey."""

    def __init__(self, db: Database, *, hasher: SecretHasher) -> None:
        self._db = db
        self._hasher = hasher
        # Key hash -> the partner and budgets its last accepted call had: used only to
        # REFUSE over-budget calls before any database work (never to admit one), so a
        # revoked or suspended key gains nothing from it. Bounded: dropped when full.
        self._budgets: dict[bytes, PartnerScope] = {}

    def budget_hint(self, secret: str) -> PartnerScope | None:
        """The partner and budgets behind this API key as its last accepted call saw them,
        or None when unknown: the edge admits against them before looking the key up, so a
        flooding partner's refused calls cost no database round trip."""
        if not secret.startswith(API_KEY_PREFIX):
            return None
        return self._budgets.get(self._hasher.digest(secret))

    async def create(
        self, principal: Principal, display_name: str, contact_email: str
    ) -> PartnerRecord:
        """A new ACTIVE partner (the policy table admits only ADMIN here)."""
        name, email = validate_partner_input(display_name, contact_email)
        async with self._db.transaction() as conn:
            partner = await repo.insert_partner(
                conn, display_name=name, contact_email=email, created_by=principal.user_id
            )
            await audit.record(
                conn,
                principal,
                audit.Action.PARTNER_CREATED,
                audit.Subject.of(audit.SubjectKind.PARTNER, partner.id),
            )
        return partner

    async def list_partners(self, after: Keyset, limit: int) -> list[PartnerRecord]:
        async with self._db.connection() as conn:
            return await repo.list_partners(conn, after, limit)

    async def get(self, principal: Principal, partner_id: uuid.UUID | None) -> PartnerRecord:
        pid = resolve_partner_id(principal, partner_id)
        check_may_manage_partner(principal, pid)
        async with self._db.connection() as conn:
            found = await repo.partner(conn, pid)
        if found is None:
            raise partner_not_found(pid)
        return found

    async def update_settings(
        self, partner_id: uuid.UUID, settings: PartnerSettings
    ) -> PartnerRecord:
        """Change whether the partner sells publicly and its own budget (ADMIN: policy).
        Read at each of its calls, so the next call already follows it."""
        settings.check()
        async with self._db.transaction() as conn:
            if await repo.partner(conn, partner_id, lock=True) is None:
                raise partner_not_found(partner_id)
            await audit.record(
                conn,
                audit.current_actor(),
                audit.Action.PARTNER_UPDATED,
                audit.Subject.of(audit.SubjectKind.PARTNER, partner_id),
                details={k: v for k, v in vars(settings).items() if v is not None},
            )
            return await repo.update_settings(conn, partner_id, settings)

    async def set_status(self, partner_id: uuid.UUID, status: PartnerStatus) -> PartnerRecord:
        async with self._db.transaction() as conn:
            found = await repo.partner(conn, partner_id, lock=True)
            if found is None:
                raise partner_not_found(partner_id)
            if found.status is status:
                return found
            await audit.record(
                conn,
                audit.current_actor(),
                audit.Action.PARTNER_SUSPENDED
                if status is PartnerStatus.SUSPENDED
                else audit.Action.PARTNER_ACTIVATED,
                audit.Subject.of(audit.SubjectKind.PARTNER, partner_id),
            )
            return await repo.set_status(conn, partner_id, status)

    async def create_key(
        self, principal: Principal, partner_id: uuid.UUID | None, display_name: str
    ) -> tuple[ApiKeyRecord, str]:
        """(key, secret shown once)."""
        pid = resolve_partner_id(principal, partner_id)
        check_may_manage_partner(principal, pid)
        name = validate_key_name(display_name)
        secret = new_secret(API_KEY_PREFIX)
        async with self._db.transaction() as conn:
            # Locked: a key is never added to a partner while it is being suspended.
            if await repo.partner(conn, pid, lock=True) is None:
                raise partner_not_found(pid)
            created = await repo.insert_key(
                conn, partner_id=pid, display_name=name, secret_hash=self._hasher.digest(secret)
            )
            await audit.record(
                conn,
                principal,
                audit.Action.API_KEY_CREATED,
                audit.Subject.of(audit.SubjectKind.API_KEY, created.id),
                details={"partner_id": pid},
            )
        return created, secret

    async def list_keys(
        self, principal: Principal, partner_id: uuid.UUID | None, after: Keyset, limit: int
    ) -> list[ApiKeyRecord]:
        pid = resolve_partner_id(principal, partner_id)
        check_may_manage_partner(principal, pid)
        async with self._db.connection() as conn:
            if await repo.partner(conn, pid) is None:
                raise partner_not_found(pid)
            return await repo.list_keys(conn, pid, after, limit)

    async def revoke_key(self, principal: Principal, key_id: uuid.UUID) -> ApiKeyRecord:
        """Revoke (idempotent). Another partner's key is NOT_FOUND, like an unknown one."""
        async with self._db.transaction() as conn:
            found = await repo.key(conn, key_id, lock=True)
            if found is None:
                raise key_not_found(key_id)
            try:
                check_may_manage_partner(principal, found.partner_id)
            except NotFound:
                raise key_not_found(key_id) from None
            if found.revoke_time is None:
                await audit.record(
                    conn,
                    principal,
                    audit.Action.API_KEY_REVOKED,
                    audit.Subject.of(audit.SubjectKind.API_KEY, key_id),
                    details={"partner_id": found.partner_id},
                )
            return await repo.revoke_key(conn, key_id)

    async def end_customer_id(
        self, partner_id: uuid.UUID, customer: EndCustomer
    ) -> tuple[uuid.UUID, EndCustomer]:
        """The buyer id of a partner's end customer (made on first use) and the customer as
        stored: what booking records as the customer of the partner's orders and holds."""
        valid = validate_end_customer(customer)
        async with self._db.transaction() as conn:
            return await repo.upsert_end_customer(conn, partner_id, valid), valid

    async def exists(self, partner_id: uuid.UUID) -> bool:
        """Whether the partner exists (events name partners in allocations)."""
        async with self._db.connection() as conn:
            return await repo.partner_exists(conn, partner_id)

    async def find_end_customer(
        self, partner_id: uuid.UUID, external_customer_id: str
    ) -> uuid.UUID | None:
        """The buyer id of an end customer the partner has sold to, or None."""
        async with self._db.connection() as conn:
            return await repo.end_customer_id(conn, partner_id, external_customer_id.strip())

    async def principal_for(self, secret: str) -> Principal | None:
        """The partner principal of an API key; None if unknown; API_KEY_REVOKED or
        PARTNER_SUSPENDED (UNAUTHENTICATED) if it may not be used now."""
        if not secret.startswith(API_KEY_PREFIX):
            return None
        digest = self._hasher.digest(secret)
        async with self._db.connection() as conn:
            lookup = await repo.authenticate(conn, digest)
        if lookup is None:
            self._budgets.pop(digest, None)
            return None
        refusal = authentication_refusal(lookup)
        if refusal is not None:
            self._budgets.pop(digest, None)
            raise refusal
        scope = PartnerScope(
            partner_id=lookup.partner_id,
            key_id=lookup.key_id,
            max_in_flight=lookup.max_in_flight,
            rate_per_second=lookup.rate_per_second,
            public_sales=lookup.public_sales,
        )
        if len(self._budgets) >= MAX_BUDGET_HINTS:
            self._budgets.clear()
        self._budgets[digest] = scope
        return Principal(
            user_id=lookup.partner_id,
            email="",
            roles=frozenset(),
            kind=PrincipalKind.PARTNER,
            partner=scope,
        )

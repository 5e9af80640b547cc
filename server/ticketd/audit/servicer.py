"""AuditService: protobuf <-> the audit log."""

from __future__ import annotations

from typing import Any

from ticketd.audit.rules import ActorKind, AuditEntryRecord, AuditFilter
from ticketd.audit.service import AuditService
from ticketd.auth.principal import current_principal
from ticketd.edge.convert import optional_time, optional_uuid, timestamp
from ticketd.errors import InvalidArgument
from ticketd.pagination import PageTokens, resolve_page_size
from ticketing.v1 import audit_pb2, audit_pb2_grpc

ACTOR_KIND_TO_PROTO = {
    ActorKind.USER: audit_pb2.AUDIT_ACTOR_KIND_USER,
    ActorKind.PARTNER_KEY: audit_pb2.AUDIT_ACTOR_KIND_PARTNER_KEY,
    ActorKind.DEVICE: audit_pb2.AUDIT_ACTOR_KIND_DEVICE,
    ActorKind.SYSTEM: audit_pb2.AUDIT_ACTOR_KIND_SYSTEM,
}
_PAGE_KIND = "audit_entries"


def entry_to_proto(e: AuditEntryRecord) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(
        id=str(e.id),
        create_time=timestamp(e.create_time),
        actor=audit_pb2.AuditActor(
            kind=ACTOR_KIND_TO_PROTO[e.actor_kind],
            id=str(e.actor_id) if e.actor_id else "",
            key_id=str(e.actor_key_id) if e.actor_key_id else "",
        ),
        action=e.action,
        subject_kind=e.subject_kind,
        subject_id=e.subject_id,
        event_id=str(e.event_id) if e.event_id else "",
        details=e.details,
    )


def _before_id(position: Any) -> int | None:
    if position is None:
        return None
    if not isinstance(position, int) or isinstance(position, bool) or position <= 0:
        raise InvalidArgument.one("page_token", "is not a valid page token")
    return position


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Access is in ticketd.auth.policy (ADMIN, SUPPORT, ORGANIZER); which entries, in
    ticketd.audit.rules."""

    def __init__(self, audit: AuditService, pages: PageTokens) -> None:
        self._audit = audit
        self._pages = pages

    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: Any
    ) -> audit_pb2.ListAuditEntriesResponse:
        filters = AuditFilter(
            actor_id=optional_uuid(request.actor_id, "actor_id"),
            action=request.action or None,
            subject_kind=request.subject_kind or None,
            subject_id=request.subject_id or None,
            event_id=optional_uuid(request.event_id, "event_id"),
            start_time=optional_time(request, "start_time"),
            end_time=optional_time(request, "end_time"),
        )
        size = resolve_page_size(request.page_size)
        principal = current_principal()
        # The caller is part of the fingerprint: what a page holds depends on who reads it,
        # so a token is refused on anyone else's listing.
        query = {**filters.fingerprint(), "caller": str(principal.user_id)}
        before = _before_id(self._pages.decode(_PAGE_KIND, query, request.page_token))
        rows = await self._audit.list_entries(principal, filters, before_id=before, limit=size + 1)
        entries, token = self._pages.page(
            _PAGE_KIND, query, rows, size, entry_to_proto, lambda e: e.id
        )
        return audit_pb2.ListAuditEntriesResponse(entries=entries, next_page_token=token)

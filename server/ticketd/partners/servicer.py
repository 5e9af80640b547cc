"""PartnerService: protobuf <-> the partner domain."""

from __future__ import annotations

from typing import Any

from ticketd.auth.principal import current_principal
from ticketd.edge.convert import parse_uuid, timestamp
from ticketd.errors import InvalidArgument
from ticketd.pagination import PageTokens, decode_time_keyset, resolve_page_size, time_keyset
from ticketd.partners.rules import ApiKeyRecord, PartnerRecord, PartnerSettings, PartnerStatus
from ticketd.partners.service import PartnerService
from ticketing.v1 import partner_pb2, partner_pb2_grpc

STATUS_TO_PROTO = {
    PartnerStatus.ACTIVE: partner_pb2.PARTNER_STATUS_ACTIVE,
    PartnerStatus.SUSPENDED: partner_pb2.PARTNER_STATUS_SUSPENDED,
}
PROTO_TO_STATUS = {v: k for k, v in STATUS_TO_PROTO.items()}


def partner_to_proto(p: PartnerRecord) -> partner_pb2.Partner:
    msg = partner_pb2.Partner(
        id=str(p.id),
        display_name=p.display_name,
        contact_email=p.contact_email,
        status=STATUS_TO_PROTO[p.status],
        create_time=timestamp(p.create_time),
        public_sales=p.public_sales,
    )
    if p.max_concurrent_rpcs is not None:
        msg.max_concurrent_rpcs = p.max_concurrent_rpcs
    if p.rate_per_second is not None:
        msg.rate_per_second = p.rate_per_second
    return msg


def key_to_proto(k: ApiKeyRecord) -> partner_pb2.ApiKey:
    msg = partner_pb2.ApiKey(
        key_id=str(k.id),
        display_name=k.display_name,
        create_time=timestamp(k.create_time),
        partner_id=str(k.partner_id),
    )
    if k.last_used_time is not None:
        msg.last_used_time.CopyFrom(timestamp(k.last_used_time))
    if k.revoke_time is not None:
        msg.revoke_time.CopyFrom(timestamp(k.revoke_time))
    return msg


def _own_or(value: str) -> Any:
    """An optional partner_id: empty means the calling partner (resolved in the rules)."""
    return parse_uuid(value, "partner_id") if value else None


class PartnerServicer(partner_pb2_grpc.PartnerServiceServicer):
    """Access per method is in ticketd.auth.policy; which partner, in ticketd.partners.rules."""

    def __init__(self, partners: PartnerService, pages: PageTokens) -> None:
        self._partners = partners
        self._pages = pages

    async def CreatePartner(
        self, request: partner_pb2.CreatePartnerRequest, context: Any
    ) -> partner_pb2.CreatePartnerResponse:
        created = await self._partners.create(
            current_principal(), request.display_name, request.contact_email
        )
        return partner_pb2.CreatePartnerResponse(partner=partner_to_proto(created))

    async def ListPartners(
        self, request: partner_pb2.ListPartnersRequest, context: Any
    ) -> partner_pb2.ListPartnersResponse:
        size = resolve_page_size(request.page_size, 100, 1_000)
        query: dict[str, str] = {}
        after = decode_time_keyset(self._pages, "partners", query, request.page_token)
        rows = await self._partners.list_partners(after, size + 1)
        partners, token = self._pages.page(
            "partners",
            query,
            rows,
            size,
            partner_to_proto,
            lambda p: time_keyset(p.create_time, p.id),
        )
        return partner_pb2.ListPartnersResponse(partners=partners, next_page_token=token)

    async def GetPartner(
        self, request: partner_pb2.GetPartnerRequest, context: Any
    ) -> partner_pb2.GetPartnerResponse:
        found = await self._partners.get(current_principal(), _own_or(request.partner_id))
        return partner_pb2.GetPartnerResponse(partner=partner_to_proto(found))

    async def SetPartnerStatus(
        self, request: partner_pb2.SetPartnerStatusRequest, context: Any
    ) -> partner_pb2.SetPartnerStatusResponse:
        partner_id = parse_uuid(request.partner_id, "partner_id")
        status = PROTO_TO_STATUS.get(request.status)
        if status is None:
            raise InvalidArgument.one("status", "must be ACTIVE or SUSPENDED")
        updated = await self._partners.set_status(partner_id, status)
        return partner_pb2.SetPartnerStatusResponse(partner=partner_to_proto(updated))

    async def UpdatePartner(
        self, request: partner_pb2.UpdatePartnerRequest, context: Any
    ) -> partner_pb2.UpdatePartnerResponse:
        settings = PartnerSettings(
            public_sales=request.public_sales if request.HasField("public_sales") else None,
            max_concurrent_rpcs=request.max_concurrent_rpcs
            if request.HasField("max_concurrent_rpcs")
            else None,
            rate_per_second=request.rate_per_second
            if request.HasField("rate_per_second")
            else None,
        )
        updated = await self._partners.update_settings(
            parse_uuid(request.partner_id, "partner_id"), settings
        )
        return partner_pb2.UpdatePartnerResponse(partner=partner_to_proto(updated))

    async def CreateApiKey(
        self, request: partner_pb2.CreateApiKeyRequest, context: Any
    ) -> partner_pb2.CreateApiKeyResponse:
        created, secret = await self._partners.create_key(
            current_principal(), _own_or(request.partner_id), request.display_name
        )
        return partner_pb2.CreateApiKeyResponse(api_key=key_to_proto(created), secret=secret)

    async def ListApiKeys(
        self, request: partner_pb2.ListApiKeysRequest, context: Any
    ) -> partner_pb2.ListApiKeysResponse:
        principal = current_principal()
        partner_id = _own_or(request.partner_id)
        size = resolve_page_size(request.page_size, 100, 1_000)
        # The resolved partner goes into the token's fingerprint: a token of one partner's
        # listing is refused on another's.
        query = {"partner": str(partner_id or principal.partner_id)}
        after = decode_time_keyset(self._pages, "api_keys", query, request.page_token)
        rows = await self._partners.list_keys(principal, partner_id, after, size + 1)
        keys, token = self._pages.page(
            "api_keys",
            query,
            rows,
            size,
            key_to_proto,
            lambda k: time_keyset(k.create_time, k.id),
        )
        return partner_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=token)

    async def RevokeApiKey(
        self, request: partner_pb2.RevokeApiKeyRequest, context: Any
    ) -> partner_pb2.RevokeApiKeyResponse:
        revoked = await self._partners.revoke_key(
            current_principal(), parse_uuid(request.key_id, "key_id")
        )
        return partner_pb2.RevokeApiKeyResponse(api_key=key_to_proto(revoked))

"""A partner reseller's first sale, end to end (docs/partners.md walks through it).

    export TICKETING_API_KEY=tkp_...      # from `ticketctl partners keys create`
    python clients/examples/partner_quickstart.py --target 127.0.0.1:50051 \\
        --event EVENT_ID --section SECTION_ID --customer cust-42

It checks whose key it holds, holds two places for one of the partner's own customers,
confirms them with the payment provider's reference, and reconciles: lists what was sold to
that customer. It prints one JSON object (the order and its ticket codes, which the partner
delivers to its customer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

from ticketing import TicketingError, connect, end_customer


async def run(args: argparse.Namespace, key: str) -> dict[str, object]:
    async with connect(args.target, api_key=key) as client:
        me = await client.get_partner()
        buyer = end_customer(args.customer, display_name=args.name, email=args.email)
        hold = await client.hold_seats(
            args.event, best_section_id=args.section, quantity=args.quantity, on_behalf_of=buyer
        )
        # Keep this request_id with the payment: a retry returns the same order.
        order = await client.confirm_hold(
            hold.id,
            payment_reference=f"psp-{uuid.uuid4().hex[:12]}",
            request_id=str(uuid.uuid4()),
            on_behalf_of=buyer,
        )
        sold = [o.id async for o in client.iter_orders(external_customer_id=args.customer)]
    return {
        "partner_id": me.id,
        "hold_id": hold.id,
        "order_id": order.id,
        "customer": order.end_customer.external_customer_id,
        "ticket_codes": [t.code for t in order.tickets],
        "orders_of_customer": sold,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("TICKETING_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--event", required=True, help="event id")
    parser.add_argument("--section", required=True, help="section id (best available)")
    parser.add_argument("--quantity", type=int, default=2)
    parser.add_argument("--customer", required=True, help="your own id for your customer")
    parser.add_argument("--name", default="", help="your customer's name (optional)")
    parser.add_argument("--email", default="", help="your customer's email (optional)")
    args = parser.parse_args(argv)
    key = os.environ.get("TICKETING_API_KEY")
    if not key:
        print("set TICKETING_API_KEY to your partner API key", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args, key))
    except TicketingError as err:
        print(f"{err.code.name} {err.reason}: {err.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ticketctl`: one command line for every role. Each domain adds its commands in a module."""

from __future__ import annotations

import argparse
import asyncio
import sys

from rich.markup import escape

from ticketing.cli import (
    audit_cmds,
    auth_cmds,
    booking_cmds,
    event_cmds,
    gate_cmds,
    hold_cmds,
    partner_cmds,
    qr,
    venue_cmds,
)
from ticketing.cli.common import CliError, describe_error, err_console
from ticketing.errors import TicketingError, ticketing_errors

COMMAND_MODULES = [
    auth_cmds,
    venue_cmds,
    event_cmds,
    booking_cmds,
    hold_cmds,
    gate_cmds,
    qr,
    partner_cmds,
    audit_cmds,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketctl", description="ticketing command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Raw stub calls raise AioRpcError, the SDK's helpers TicketingError: one report.
        with ticketing_errors():
            code: int = asyncio.run(args.handler(args))
        return code
    except TicketingError as err:
        # Server text may contain brackets (field paths like section_prices[x]): never
        # let rich read it as markup.
        err_console.print(f"[red]{escape(describe_error(err))}[/]", highlight=False)
        return 1
    except CliError as err:
        err_console.print(f"[red]{escape(str(err))}[/]", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

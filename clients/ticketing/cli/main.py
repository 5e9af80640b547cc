"""`ticketctl`: one command line for every role. Each domain adds its commands in a module."""

from __future__ import annotations

import argparse
import asyncio
import sys

from grpc import aio

from ticketing.cli import auth_cmds
from ticketing.cli.common import CliError, describe_rpc_error, err_console

COMMAND_MODULES = [auth_cmds]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketctl", description="ticketing command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.handler(args))
        return code
    except aio.AioRpcError as err:
        err_console.print(f"[red]{describe_rpc_error(err)}[/]", highlight=False)
        return 1
    except CliError as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

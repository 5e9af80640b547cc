"""ticketctl login / logout / whoami / register / passwd / users ..."""

from __future__ import annotations

import argparse
import getpass
import os

from rich.table import Table

from ticketing.cli.common import (
    CliError,
    add_target_args,
    console,
    open_client,
    parse_role,
    print_limited,
    role_name,
    take_listing,
)
from ticketing.client import connect
from ticketing.session import (
    SavedSession,
    clear_session,
    load_session,
    resolve_target,
    save_session,
)
from ticketing.v1 import auth_pb2, common_pb2


def _password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        import sys

        return sys.stdin.readline().rstrip("\n")
    env = os.environ.get("TICKETING_PASSWORD")
    if env:
        return env
    return getpass.getpass(prompt)


def _print_user(user: common_pb2.User) -> None:
    roles = ", ".join(role_name(r) for r in user.roles)
    status = "  [red]DISABLED[/]" if user.status == common_pb2.USER_STATUS_DISABLED else ""
    console.print(
        f"[bold]{user.display_name}[/] <{user.email}>  id={user.id}  roles={roles}{status}"
    )


async def cmd_login(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    async with connect(target, tls=args.tls) as client:
        await client.login(args.email, _password(args))
        me = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
    assert client.token is not None
    path = save_session(SavedSession(target=target, token=client.token, email=me.user.email))
    console.print(f"signed in to {target}; token saved in {path}")
    _print_user(me.user)
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    clear_session()
    console.print("signed out")
    return 0


async def cmd_whoami(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        me = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
    _print_user(me.user)
    return 0


async def cmd_register(args: argparse.Namespace) -> int:
    async with connect(resolve_target(args.target), tls=args.tls) as client:
        resp = await client.auth.Register(
            auth_pb2.RegisterRequest(
                email=args.email, password=_password(args), display_name=args.name
            )
        )
    console.print("registered:")
    _print_user(resp.user)
    return 0


async def cmd_users_list(args: argparse.Namespace) -> int:
    table = Table("email", "name", "roles", "id", "created")
    request = auth_pb2.ListUsersRequest(email_prefix=args.prefix or "")
    async with open_client(args) as client:
        users, more = await take_listing(
            client.auth.ListUsers, request, lambda page: page.users, args.limit
        )
    for u in users:
        table.add_row(
            u.email,
            u.display_name,
            ",".join(role_name(r) for r in u.roles),
            u.id,
            u.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"),
        )
    print_limited(table, len(users), more)
    return 0


async def cmd_users_set_roles(args: argparse.Namespace) -> int:
    roles = [parse_role(r) for part in args.roles for r in part.split(",") if r.strip()]
    if not roles:
        raise CliError("give at least one role")
    async with open_client(args) as client:
        resp = await client.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=args.user_id, roles=roles)
        )
    _print_user(resp.user)
    return 0


def _new_password(args: argparse.Namespace) -> str:
    """The new password: the next stdin line, $TICKETING_NEW_PASSWORD, or asked twice."""
    if args.password_stdin:
        import sys

        return sys.stdin.readline().rstrip("\n")
    env = os.environ.get("TICKETING_NEW_PASSWORD")
    if env:
        return env
    first = getpass.getpass("New password: ")
    if getpass.getpass("New password again: ") != first:
        raise CliError("the two new passwords differ; nothing changed")
    return first


async def cmd_passwd(args: argparse.Namespace) -> int:
    """ChangePassword for the signed-in user; the fresh token replaces the saved one."""
    old = _password(args, "Current password: ")
    new = _new_password(args)
    async with open_client(args) as client:
        resp = await client.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(old_password=old, new_password=new)
        )
    saved = load_session()
    target = resolve_target(getattr(args, "target", None))
    if saved is not None and saved.target == target and not os.environ.get("TICKETING_TOKEN"):
        save_session(SavedSession(target=target, token=resp.access_token, email=saved.email))
        console.print("password changed; every other session is signed out")
    else:
        # The token came from $TICKETING_TOKEN: it is revoked now, and we must not guess
        # where the caller keeps it.
        console.print("password changed; every earlier token is revoked. New token:")
        console.print(resp.access_token, highlight=False, soft_wrap=True)
    _print_user(resp.user)
    return 0


async def _set_status(args: argparse.Namespace, status: common_pb2.UserStatus.ValueType) -> int:
    async with open_client(args) as client:
        resp = await client.auth.SetUserStatus(
            auth_pb2.SetUserStatusRequest(user_id=args.user_id, status=status)
        )
    _print_user(resp.user)
    return 0


async def cmd_users_disable(args: argparse.Namespace) -> int:
    """Lock an account out at once (ADMIN): its tokens stop working, it cannot sign in."""
    return await _set_status(args, common_pb2.USER_STATUS_DISABLED)


async def cmd_users_enable(args: argparse.Namespace) -> int:
    """Let a disabled account sign in again (ADMIN); its old tokens stay revoked."""
    return await _set_status(args, common_pb2.USER_STATUS_ACTIVE)


async def cmd_users_revoke_tokens(args: argparse.Namespace) -> int:
    """Sign a user out everywhere (ADMIN; anyone for their own id)."""
    async with open_client(args) as client:
        resp = await client.auth.RevokeTokens(auth_pb2.RevokeTokensRequest(user_id=args.user_id))
    console.print("every token issued so far is revoked")
    _print_user(resp.user)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("login", help="sign in and save the token (0600)")
    p.add_argument("email")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_target_args(p)
    p.set_defaults(handler=cmd_login)

    p = sub.add_parser("logout", help="forget the saved token")
    p.set_defaults(handler=cmd_logout)

    p = sub.add_parser("whoami", help="show the signed-in user")
    add_target_args(p)
    p.set_defaults(handler=cmd_whoami)

    p = sub.add_parser("register", help="create a customer account")
    p.add_argument("email")
    p.add_argument("--name", required=True, help="display name")
    p.add_argument("--password-stdin", action="store_true")
    add_target_args(p)
    p.set_defaults(handler=cmd_register)

    p = sub.add_parser(
        "passwd",
        help="change your password (signs out every other session)",
        description="With --password-stdin, the first line is the current password and the "
        "second the new one; else $TICKETING_PASSWORD / $TICKETING_NEW_PASSWORD, else asked.",
    )
    p.add_argument("--password-stdin", action="store_true", help="read both passwords from stdin")
    add_target_args(p)
    p.set_defaults(handler=cmd_passwd)

    users = sub.add_parser("users", help="manage users (ADMIN, SUPPORT)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    p = users_sub.add_parser("list", help="list users")
    p.add_argument("--prefix", help="only emails starting with this")
    p.add_argument("--limit", type=int, default=100)
    add_target_args(p)
    p.set_defaults(handler=cmd_users_list)
    p = users_sub.add_parser("set-roles", help="replace a user's roles (ADMIN)")
    p.add_argument("user_id")
    p.add_argument("roles", nargs="+", help="e.g. organizer customer (or ORGANIZER,CUSTOMER)")
    add_target_args(p)
    p.set_defaults(handler=cmd_users_set_roles)
    for name, handler, text in (
        ("disable", cmd_users_disable, "lock an account out at once (ADMIN)"),
        ("enable", cmd_users_enable, "let a disabled account sign in again (ADMIN)"),
        ("revoke-tokens", cmd_users_revoke_tokens, "sign a user out everywhere"),
    ):
        p = users_sub.add_parser(name, help=text)
        p.add_argument("user_id")
        add_target_args(p)
        p.set_defaults(handler=handler)

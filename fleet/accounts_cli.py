"""`greengate-fleet user …` and `greengate-fleet token …` (fleet/cli.py hands these over).

Every refusal is one line on stderr and exit status 2 (no traceback, nothing secret
printed); the changes go through fleet/accounts.py and are audited with actor "cli".

    user create|add NAME --role ROLE [--district CODE] [--password-stdin]
    user list
    user disable|enable|delete NAME
    user passwd NAME [--password-stdin]
    user set NAME [--role ROLE] [--district CODE | --no-district]
    token create USER --name NAME
    token list [--user NAME]
    token revoke ID
"""

from __future__ import annotations

import getpass
import os
import sys

from .models import ROLES

ACTOR = "cli"


class _Refused(Exception):
    pass


def add_parsers(sub) -> None:
    user = sub.add_parser("user", help="dashboard and API accounts: create, list, disable, "
                                       "enable, delete, passwd, set")
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name in ("create", "add"):
        create = actions.add_parser(name, help="a new account" + (" (= create)" if name == "add"
                                                                   else ""))
        create.add_argument("name")
        create.add_argument("--role", required=True, choices=ROLES)
        create.add_argument("--district", help="district code (district officers need one)")
        create.add_argument("--ward", help="ward code (ward officers need one)")
        create.add_argument("--organisation", help="organisation code (managers need one)")
        create.add_argument("--password-stdin", action="store_true",
                            help="read the password from stdin (one line) instead of asking")
    actions.add_parser("list", help="every account: name, role, district, state")
    for name, text in (("disable", "refuse logins and tokens; ends their sessions"),
                       ("enable", "allow again"),
                       ("delete", "delete the account and its tokens (the audit log keeps "
                                  "the name)")):
        actions.add_parser(name, help=text).add_argument("name")
    passwd = actions.add_parser("passwd", help="a new password (ends their sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from stdin (one line) instead of asking")
    change = actions.add_parser("set", help="change role and/or district")
    change.add_argument("name")
    change.add_argument("--role", choices=ROLES)
    where = change.add_mutually_exclusive_group()
    where.add_argument("--district", help="district code")
    where.add_argument("--no-district", action="store_true", help="no district")
    change.add_argument("--ward", help="ward code (a ward officer's)")
    change.add_argument("--organisation", help="organisation code (a manager's)")
    user.set_defaults(handler=run_user)

    token = sub.add_parser("token", help="API tokens for automation: create, list, revoke")
    token_actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = token_actions.add_parser("create", help="a new token (printed once, never stored)")
    create.add_argument("user")
    create.add_argument("--name", required=True, help="what the token is for")
    listing = token_actions.add_parser("list", help="tokens: id, name, owner, created, last "
                                                    "used, revoked (never the token)")
    listing.add_argument("--user", help="only this user's")
    revoke = token_actions.add_parser("revoke", help="the token stops working at once")
    revoke.add_argument("id", type=int, help="the token's id (from `token list`)")
    token.set_defaults(handler=run_token)


NO_TERMINAL = ("no password given (stdin is closed or not a terminal): type it at a "
               "terminal, or pipe one line with --password-stdin")


def _terminal() -> bool:
    """Whether getpass can ask at a terminal without echoing."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return False


def _password(args) -> str:
    """From stdin (--password-stdin) or asked twice at the terminal."""
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise _Refused("no password on stdin (--password-stdin reads one line)")
        return line.rstrip("\r\n")
    if not _terminal():
        # getpass would fall back to stdin and echo the password, or die on EOFError
        raise _Refused(NO_TERMINAL)
    try:
        first = getpass.getpass(f"password for {args.name}: ")
        again = getpass.getpass("the same again: ")
    except (EOFError, KeyboardInterrupt):
        raise _Refused(NO_TERMINAL) from None
    if first != again:
        raise _Refused("the two passwords differ; nothing changed")
    return first


def _sessions(config):
    from .db import make_engine, make_sessions
    return make_sessions(make_engine(config.database_url))


def _run(config, work) -> int:
    from sqlalchemy.exc import IntegrityError

    from .accounts import AccountError
    try:
        with _sessions(config)() as session:
            message = work(session)
            session.commit()
    except (AccountError, _Refused) as exc:
        print(f"greengate-fleet: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except IntegrityError:  # the same change made at the same moment elsewhere
        print("greengate-fleet: the database refused the change: another one made at the "
              "same moment conflicts with it; look with `user list` / `token list` and try "
              "again", file=sys.stderr)
        return 2
    if message:
        print(message)
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def run_user(config, args) -> int:
    from . import accounts
    action = "create" if args.action == "add" else args.action
    try:
        password = _password(args) if action in ("create", "passwd") else None
    except _Refused as exc:
        print(f"greengate-fleet: {exc}", file=sys.stderr)
        return 2

    def work(session):
        if action == "create":
            accounts.create_user(session, ACTOR, args.name, password, args.role, args.district,
                                 ward=args.ward, organisation=args.organisation)
            return f"user {args.name} ({args.role}) created"
        if action == "list":
            rows = [["USER", "ROLE", "DISTRICT", "STATE", "CREATED"]]
            for user in accounts.list_users(session):
                d = accounts.user_dict(session, user)
                rows.append([d["username"], d["role"], d["district"] or "-",
                             "disabled" if d["disabled"] else "enabled", d["created_at"] or "-"])
            return _table(rows)
        if action in ("disable", "enable"):
            accounts.set_disabled(session, ACTOR, args.name, action == "disable")
            return f"user {args.name} {action}d"
        if action == "delete":
            tokens = accounts.delete_user(session, ACTOR, args.name)
            return f"user {args.name} deleted, with {tokens} token(s)"
        if action == "passwd":
            accounts.set_password(session, ACTOR, args.name, password)
            return f"password of {args.name} changed; their sessions have ended"
        if action == "set":
            if (args.role is None and args.district is None and not args.no_district
                    and args.ward is None and args.organisation is None):
                raise _Refused("nothing to change: give --role, --district, --no-district, "
                               "--ward or --organisation")
            district = "" if args.no_district else (
                args.district if args.district is not None else accounts._UNSET)
            user = accounts.update_user(
                session, ACTOR, args.name, args.role, district,
                ward=args.ward if args.ward is not None else accounts._UNSET,
                organisation=args.organisation if args.organisation is not None
                else accounts._UNSET)
            d = accounts.user_dict(session, user)
            extra = "".join(f", {k} {d[k]}" for k in ("ward", "organisation") if d[k])
            return f"user {args.name}: {d['role']}, district {d['district'] or '-'}{extra}"
        raise _Refused(f"unknown action {action!r}")
    return _run(config, work)


def run_token(config, args) -> int:
    from . import accounts

    def work(session):
        if args.action == "create":
            return accounts.create_token(session, ACTOR, args.user, args.name)
        if args.action == "list":
            rows = [["ID", "NAME", "USER", "CREATED", "LAST USED", "REVOKED"]]
            for token, owner in accounts.list_tokens(session, args.user):
                d = accounts.token_dict(token, owner)
                rows.append([str(d["id"]), d["name"], owner, d["created_at"] or "-",
                             d["last_used"] or "-", d["revoked_at"] or "-"])
            return _table(rows)
        if args.action == "revoke":
            token, owner = accounts.revoke_token(session, ACTOR, args.id)
            return f"token {token.id} ({token.name}) of {owner} revoked"
        raise _Refused(f"unknown action {args.action!r}")
    return _run(config, work)

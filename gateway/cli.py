"""The `gateway` command. Errors print one line to stderr and exit non-zero."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.credits import balance, pools
from gateway.credits.refill import check_credits
from gateway.foundation import config as config_module
from gateway.foundation import database
from gateway.foundation.config import Config, ConfigError
from gateway.foundation.problems import Problem
from gateway.keys import lifetime, management, organizations, validation
from gateway.policy.explain import explain, route_table
from gateway.policy.loader import PolicyError, load_dir
from gateway.policy.scopes import Catalogue
from gateway.tokens import signing
from gateway.usage.counter import COUNTS
from gateway.usage.report import parse_range
from gateway.webhooks import endpoints as webhooks
from gateway.webhooks.destinations import Destinations

CLI = Actor("cli")


class CommandError(Exception):
    """A user error: printed as one line, exit 1."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="configuration file")
    parser = argparse.ArgumentParser(prog="gateway", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, parents=[common], **kwargs)
        return sub

    serve = add(commands, "serve", help="run the gateway")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations at start (`gateway migrate` runs apart: a Job, an init step)",
    )
    serve.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="auto: uvloop when installed (measured 8-15%% more req/s, half the p99)",
    )
    add(commands, "demo", help="everything embedded, with a demo key")
    add(commands, "migrate", help="apply database migrations")

    keys_command = add(commands, "keys", help="create, list, change, rotate and revoke API keys")
    key_cmds = keys_command.add_subparsers(dest="action", required=True)
    create = add(key_cmds, "create", help="prints the key, once")
    create.add_argument("--user", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", required=True, dest="scopes")
    create.add_argument("--description")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=int)
    expiry.add_argument("--expires-at")
    _credit_flags(create)
    create.add_argument("--meta", metavar="JSON", help='metadata for upstreams: {"plan": "pro"}')
    create.add_argument("--json", action="store_true")
    listing = add(key_cmds, "list", help="newest first; every user's keys unless --user")
    listing.add_argument("--user", help="this user's keys, all of them (the admin API's listing)")
    listing.add_argument(
        "--limit", type=int, default=100, help="without --user: keys per page (1-1000)"
    )
    listing.add_argument(
        "--cursor", help="without --user: the next page, as the previous one printed it"
    )
    listing.add_argument("--json", action="store_true")
    update = add(key_cmds, "update", help="switch a key off or on, pin it to networks, rename it")
    update.add_argument("id")
    switch = update.add_mutually_exclusive_group()
    switch.add_argument("--disable", action="store_false", dest="enabled", default=None)
    switch.add_argument("--enable", action="store_true", dest="enabled", default=None)
    networks = update.add_mutually_exclusive_group()
    networks.add_argument(
        "--cidr", action="append", dest="cidrs", help="allowed network (repeat for several)"
    )
    networks.add_argument("--any-address", action="store_true", help="remove every allowed network")
    update.add_argument(
        "--limit",
        action="append",
        dest="limits",
        metavar="NAME=LIMIT/SECONDS[:BURST]",
        help="this key's numbers for a `by: key` limit of the policies (repeat for several)",
    )
    update.add_argument("--no-limits", action="store_true", help="back to the policies' numbers")
    _credit_flags(update)
    update.add_argument(
        "--unlimited-credits", action="store_true", help="no credit balance: every request passes"
    )
    update.add_argument("--name")
    update.add_argument("--description")
    metadata = update.add_mutually_exclusive_group()
    metadata.add_argument("--meta", metavar="JSON", help="replace the key's metadata")
    metadata.add_argument("--no-meta", action="store_true", help="remove the key's metadata")
    update.add_argument("--json", action="store_true")
    credits = add(key_cmds, "credits", help="set, add to or take from a key's credit balance")
    credits.add_argument("id")
    change = credits.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", type=int, metavar="N", dest="credit_set")
    change.add_argument("--increment", type=int, metavar="N")
    change.add_argument("--decrement", type=int, metavar="N")
    change.add_argument("--unlimited", action="store_true", help="no balance: every request passes")
    credits.add_argument("--json", action="store_true")
    usage = add(key_cmds, "usage", help="a key's requests per day (or hour), UTC")
    usage.add_argument("id")
    usage.add_argument("--days", type=int, default=30, help="days back from today (default 30)")
    usage.add_argument("--hourly", action="store_true", help="hours instead of days")
    usage.add_argument("--json", action="store_true")
    add(key_cmds, "revoke", help="rejected everywhere within 1 s").add_argument("id")
    rotate = add(key_cmds, "rotate", help="a new key with the same name, scopes and expiry")
    rotate.add_argument("id")
    rotate.add_argument(
        "--grace-seconds",
        type=int,
        default=0,
        metavar="N",
        help="how long the old key keeps working, up to 604800 (default: 0, it stops at once)",
    )
    rotate.add_argument(
        "--expires-in-days", type=int, metavar="N", help="else the old key's expiry"
    )
    rotate.add_argument("--json", action="store_true")

    hook_cmds = add(commands, "webhooks", help="endpoints that receive key events").add_subparsers(
        dest="action", required=True
    )
    made = add(hook_cmds, "create", help="prints the signing secret, once")
    made.add_argument("--url", required=True)
    made.add_argument(
        "--event", action="append", dest="events", help="repeat; default: every event"
    )
    made.add_argument("--description")
    made.add_argument("--json", action="store_true")
    add(hook_cmds, "list").add_argument("--json", action="store_true")
    add(hook_cmds, "delete").add_argument("id")
    rotated = add(hook_cmds, "rotate-secret", help="the old secret signs beside the new for 24 h")
    rotated.add_argument("id")
    rotated.add_argument("--json", action="store_true")
    shown = add(hook_cmds, "deliveries", help="an endpoint's last 100 deliveries")
    shown.add_argument("id")
    shown.add_argument("--json", action="store_true")
    add(hook_cmds, "retry", help="try a delivery again now").add_argument("id")

    members_command = add(commands, "members", help="who belongs to which organization or project")
    member_cmds = members_command.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        member = add(member_cmds, action, help=f"{action} a membership (effective within 1 s)")
        member.add_argument("--user", required=True)
        target = member.add_mutually_exclusive_group(required=True)
        target.add_argument("--organization")
        target.add_argument("--project")

    orgs_command = add(commands, "orgs", help="an organization's key policy")
    org_cmds = orgs_command.add_subparsers(dest="action", required=True)
    org_policy = add(org_cmds, "policy", help="show or set the longest key lifetime it accepts")
    org_policy.add_argument("organization")
    lifetime_flags = org_policy.add_mutually_exclusive_group()
    lifetime_flags.add_argument("--max-lifetime-days", type=int, metavar="N")
    lifetime_flags.add_argument("--clear", action="store_true", help="no limit of its own")
    org_policy.add_argument("--json", action="store_true")

    users_command = add(commands, "users", help="a user's credit pool")
    user_cmds = users_command.add_subparsers(dest="action", required=True)
    pool = add(user_cmds, "credits", help="show, set, add to or take from a user's credit pool")
    pool.add_argument("user")
    _credit_flags(pool)
    pool_change = pool.add_mutually_exclusive_group()
    pool_change.add_argument("--increment", type=int, metavar="N")
    pool_change.add_argument("--decrement", type=int, metavar="N")
    pool_change.add_argument(
        "--remove",
        action="store_true",
        help="no pool: keys without credits of their own are unlimited",
    )
    pool.add_argument("--json", action="store_true")

    policy_command = add(commands, "policy", help="check policy files; explain a decision")
    policy_cmds = policy_command.add_subparsers(dest="action", required=True)
    check = add(policy_cmds, "check", help="load a policy directory as the gateway would")
    check.add_argument("dir", nargs="?", type=Path, help="default: policies.dir of the config")
    explain_cmd = add(policy_cmds, "explain", help="which route decides a request, and why")
    explain_cmd.add_argument("method")
    explain_cmd.add_argument("path", help="the request target as sent: /v1/me?x=1")
    explain_cmd.add_argument("--scopes", default=None, help="comma-separated: would they pass?")

    audit_cmd = add(commands, "audit", help="key and membership changes, newest first")
    audit_cmd.add_argument("--user")
    audit_cmd.add_argument("--key")
    audit_cmd.add_argument("--action", dest="event_action")
    audit_cmd.add_argument("--since", help="RFC 3339, e.g. 2026-11-01T00:00:00Z")
    audit_cmd.add_argument("--limit", default="100")
    audit_cmd.add_argument("--json", action="store_true")
    audit_cmd.set_defaults(action="show")

    signing_command = add(commands, "signing-keys", help="keys that sign actor and identity tokens")
    signing = signing_command.add_subparsers(dest="action", required=True)
    generate = add(signing, "generate", help="a new private key as a PEM file (mode 0600)")
    generate.add_argument("--out", required=True, type=Path)
    generate.add_argument("--alg", choices=["EdDSA", "ES256", "RS256"], default="EdDSA")
    return parser


def _credit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--credits", type=int, metavar="N", help="a credit balance (§16)")
    parser.add_argument(
        "--refill",
        metavar="AMOUNT/day | AMOUNT/month@DAY",
        help="refill the balance to AMOUNT at 00:00 UTC daily, or on DAY of every month",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except (CommandError, database.DatabaseUnavailable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        more = f" (+{len(exc.problems) - 1} more: gateway policy check)" if exc.problems[1:] else ""
        print(f"gateway: policy set refused: {exc.problems[0]}{more}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"gateway: database error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a port taken, a file not readable, a server not reachable
        print(f"gateway: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "signing-keys":
        return _generate_signing_key(args.out, args.alg)
    config = config_module.load(getattr(args, "config", None))
    if args.command == "policy":
        return _policy(args, config)
    if args.command in ("serve", "demo"):
        from gateway import demo, serve

        if args.command == "demo":
            return demo.demo(config)
        if args.no_migrate:
            config = msgspec.structs.replace(
                config, database=msgspec.structs.replace(config.database, migrate_on_start=False)
            )
        return serve.serve(config, args.workers, args.loop)
    return asyncio.run(_with_database(config, args))


def _generate_signing_key(out: Path, alg: str) -> int:
    if out.exists():
        raise CommandError(f"{out} exists; refusing to overwrite a signing key")
    out.touch(mode=0o600)
    out.write_bytes(signing.generate_pem(alg))
    print(f"wrote {alg} signing key to {out}")
    return 0


def _policy(args: argparse.Namespace, config: Config) -> int:
    catalogue = Catalogue({name: d.implies for name, d in config.scopes.items()})
    directory = args.dir if args.action == "check" and args.dir else None
    directory = directory or config.resolve(config.policies.dir)
    try:
        policies = load_dir(directory, catalogue, frozenset(config.upstreams))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.action == "check":
        print(route_table(policies))
        return 0
    scopes = None if args.scopes is None else [s for s in args.scopes.split(",") if s]
    unknown = [s for s in scopes or [] if s not in catalogue.names]
    if unknown:
        raise CommandError(f"--scopes: unknown scope {unknown[0]!r} (not in the catalogue)")
    try:
        text, allowed = explain(policies, catalogue, args.method, args.path, scopes)
    except Problem as exc:
        raise CommandError(f"{args.method} {args.path}: {exc.detail}") from None
    print(text)
    return 0 if allowed else 1


async def _with_database(config: Config, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    # An embedded server the command started stops with it (unless a running gateway
    # shares it): a short command must not leave a database behind.
    url = await loop.run_in_executor(None, database.database_url, config, "stop")
    conn = await database.connect(url, config)
    try:
        applied = await database.migrate(conn, config.database.migration_lock_timeout_seconds)
        if args.command == "migrate":
            print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
            return 0
        handler = _HANDLERS[(args.command, args.action)]
        try:
            return await handler(conn, config, args)
        except Problem as exc:  # a refusal of the key policy, as the APIs say it
            raise CommandError(f"{exc.slug}: {exc.detail}") from None
    finally:
        await conn.close()


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(msgspec.json.encode(data).decode() if as_json else text(data))


def _key_line(key: dict[str, Any]) -> str:
    expires = key["expires_at"] or "never"
    line = (
        f"{key['id']}  {key['display_prefix']}…  {key['status']:<8}  {key['name']}"
        f"  scopes={','.join(key['scopes'])}  expires={expires}"
    )
    if not key.get("enabled", True):
        line += "  disabled"
    if key.get("grace_ends_at"):
        line += f"  works-until={key['grace_ends_at']}"
    if key.get("allowed_cidrs"):
        line += f"  from={','.join(key['allowed_cidrs'])}"
    if key.get("credits") is not None:
        line += f"  credits={key['credits']['remaining']}"
    return line


def _created(key: dict[str, Any]) -> str:
    return f"{_key_line(key)}\nkey (shown once, store it now): {key['key']}"


async def _keys_create(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"user_id": args.user, "name": args.name, "scopes": args.scopes}
    if args.description is not None:
        body["description"] = args.description
    if args.expires_in_days is not None:
        body["expires_in_days"] = args.expires_in_days
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    credits = _credits_given(args)
    if credits is not None:
        body["credits"] = credits
    if args.meta is not None:
        body["meta"] = _meta_flag(args.meta)
    catalogue = Catalogue({name: d.implies for name, d in config.scopes.items()})
    spec = validation.validate_key(body, catalogue, datetime.now(UTC))
    if isinstance(spec, list):
        raise _flag_error(spec)
    lifetime.check_new(spec.expires_at, datetime.now(UTC), config.key_policy.max_lifetime_days)
    created = await management.create_key(conn, spec, config.keys.prefix, actor=CLI)
    _print(created, args.json, _created)
    return 0


async def _keys_list(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    errors = validation.validate_user_id(args.user) if args.user is not None else []
    if errors:
        raise CommandError(f"--user: {errors[0][1]}")
    if not 1 <= args.limit <= 1000:
        raise CommandError("--limit: must be from 1 to 1000")
    if args.user is not None:
        # The admin API's listing, as it answers it (`--json` is that JSON).
        keys = await management.list_keys(conn, args.user)
        _print({"keys": _blocked(keys, config)}, args.json, _key_page)
        return 0
    try:
        found, cursor = await management.page_of_keys(conn, None, args.limit, args.cursor)
    except management.NotFound:
        raise CommandError(f"--cursor: no key {args.cursor}") from None
    page: dict[str, Any] = {"keys": _blocked(found, config)}
    if cursor is not None:
        page["next_cursor"] = cursor
    _print(page, args.json, _key_page)
    return 0


def _blocked(keys: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    return [lifetime.mark_blocked(key, config.key_policy.max_lifetime_days) for key in keys]


def _key_page(page: dict[str, Any]) -> str:
    lines = [
        f"{key['user_id']}  {_key_line(key)}" if key.get("user_id") else _key_line(key)
        for key in page["keys"]
    ]
    if page.get("next_cursor"):
        lines.append(f"more: --cursor {page['next_cursor']}")
    return "\n".join(lines) or "no keys"


async def _keys_update(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    for name in ("name", "description", "enabled"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.cidrs is not None or args.any_address:
        body["allowed_cidrs"] = args.cidrs or []
    if args.limits is not None or args.no_limits:
        body["rate_limits"] = dict(_limit_flag(text) for text in args.limits or [])
    credits = _credits_given(args)
    if credits is not None and args.unlimited_credits:
        raise CommandError("--unlimited-credits: not with --credits or --refill")
    if credits is not None or args.unlimited_credits:
        body["credits"] = credits
    if args.meta is not None or args.no_meta:
        body["meta"] = None if args.no_meta else _meta_flag(args.meta)
    if not body:
        raise CommandError("nothing to change: give --disable, --enable, --cidr, --limit, …")
    errors = validation.check_update(body, management.UPDATABLE, _key_limits(config))
    if errors:
        raise _flag_error(errors)
    try:
        updated = await management.update_key(conn, args.id, None, body, actor=CLI)
        updated = lifetime.mark_blocked(updated, config.key_policy.max_lifetime_days)
    except management.NotFound:
        raise CommandError(f"no key {args.id}") from None
    _print(updated, args.json, _key_line)
    return 0


def _meta_flag(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--meta: not JSON ({exc})") from None


_REFILL_FLAG = re.compile(r"(\d+)/(day|month)(?:@(\d+))?")


def _credits_given(args: argparse.Namespace) -> dict[str, Any] | None:
    """--credits and --refill as the API's `credits` object (None when neither is given)."""
    if args.credits is None and args.refill is None:
        return None
    credits: dict[str, Any] = {} if args.credits is None else {"remaining": args.credits}
    if args.refill is not None:
        found = _REFILL_FLAG.fullmatch(args.refill)
        if found is None:
            raise CommandError(
                f"--refill: {args.refill!r}: expected AMOUNT/day or AMOUNT/month@DAY,"
                " e.g. 1000/month@1"
            )
        amount, interval, day = found.groups()
        credits["refill"] = {"interval": interval, "amount": int(amount)}
        if day is not None:
            credits["refill"]["day"] = int(day)
    return credits


def _credits_line(credits: dict[str, Any] | None) -> str:
    if credits is None:
        return "credits: unlimited"
    refill = credits["refill"]
    line = f"credits: {credits['remaining']}"
    if refill is not None:
        when = "daily" if refill["interval"] == "day" else f"monthly on day {refill['day']}"
        line += f" (refilled to {refill['amount']} {when}, 00:00 UTC)"
    return line


async def _keys_credits(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    if args.unlimited:
        body: dict[str, Any] = _balance_change({"set": None})
    elif args.credit_set is not None:
        body = _balance_change({"set": args.credit_set})
    else:
        body = _balance_change(_step(args))
    try:
        credits = await management.change_credits(conn, args.id, body, actor=CLI)
    except management.NotFound:
        raise CommandError(f"no key {args.id}") from None
    except management.Conflict as exc:
        raise CommandError(str(exc)) from None
    _print({"credits": credits}, args.json, lambda found: _credits_line(found["credits"]))
    return 0


def _step(args: argparse.Namespace) -> dict[str, Any]:
    """--increment N or --decrement N, as the API's change."""
    if args.increment is not None:
        return {"increment": args.increment}
    return {"decrement": args.decrement}


def _balance_change(body: dict[str, Any]) -> dict[str, Any]:
    """A change of a key's or a pool's balance, checked (one line naming the flag)."""
    errors = balance.check_change(body)
    if errors:
        raise CommandError(f"--{errors[0][0]}: {errors[0][1]}")
    return body


async def _user_credits(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    """The user's pool (§21): shown, made or replaced (--credits, --refill), changed
    (--increment, --decrement) or removed."""
    given = _credits_given(args)
    changed = args.increment is not None or args.decrement is not None or args.remove
    if given is not None and changed:
        raise CommandError("--credits and --refill: not with --increment, --decrement or --remove")
    if given is not None:
        errors = check_credits(given)
        if errors:
            raise CommandError(f"--{errors[0][0].rpartition('.')[2]}: {errors[0][1]}")
        found = await pools.put(conn, args.user, given, actor=CLI)
    elif args.remove:
        found = await pools.put(conn, args.user, None, actor=CLI)
    elif changed:
        try:
            found = await pools.change(conn, args.user, _balance_change(_step(args)), actor=CLI)
        except pools.NoPool:
            raise CommandError(f"{args.user} has no credit pool: set one with --credits") from None
    else:
        found = await pools.get(conn, args.user)
    shown = {"user_id": args.user, "credits": found}
    _print(shown, args.json, _pool_line)
    return 0


def _pool_line(pool: dict[str, Any]) -> str:
    if pool["credits"] is None:
        return (
            f"{pool['user_id']}: no credit pool (keys without credits of their own are unlimited)"
        )
    return f"{pool['user_id']}: pool {_credits_line(pool['credits'])}"


async def _keys_usage(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    if not 1 <= args.days <= 2000:
        raise CommandError("--days: must be from 1 to 2000")
    now = datetime.now(UTC)
    granularity = "hour" if args.hourly else "day"
    # The last N days: today and N - 1 before it, or the last N x 24 hours, this one included.
    back = timedelta(days=args.days) - (timedelta(hours=1) if args.hourly else timedelta(days=1))
    since = (now - back).replace(minute=0, second=0, microsecond=0)
    if not args.hourly:
        since = since.replace(hour=0)
    query = {"from": since.isoformat(), "granularity": granularity}
    wanted = parse_range(query, now)
    if isinstance(wanted, list):
        raise CommandError(f"--days: {wanted[0][1]}")
    try:
        found = await management.key_usage(conn, args.id, None, wanted)
    except management.NotFound:
        raise CommandError(f"no key {args.id}") from None
    _print(found, args.json, _usage_table)
    return 0


def _usage_table(found: dict[str, Any]) -> str:
    header = ("start", *COUNTS)
    rows = [header] + [
        (bucket["start"], *(str(bucket[name]) for name in COUNTS)) for bucket in found["buckets"]
    ]
    totals = ["total", *(str(sum(b[name] for b in found["buckets"])) for name in COUNTS)]
    rows.append(tuple(totals))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True)))
        for row in rows
    )  # fmt: skip


def _webhook_line(hook: dict[str, Any]) -> str:
    line = f"{hook['id']}  {hook['url']}  events={','.join(hook['events'])}"
    return line + (f"  {hook['description']}" if hook.get("description") else "")


async def _webhooks(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            body: dict[str, Any] = {"url": args.url, "events": args.events or ["*"]}
            if args.description is not None:
                body["description"] = args.description
            errors = webhooks.check_endpoint(body)
            if errors:
                raise _flag_error(errors)
            allowed = Destinations(config.webhooks.allowed_networks)
            made = await webhooks.create(conn, body, allowed, actor=CLI)
            _print(
                made, args.json, lambda h: f"{_webhook_line(h)}\nsecret (shown once): {h['secret']}"
            )
        elif args.action == "list":
            _print(await webhooks.listing(conn), args.json,
                   lambda hooks: "\n".join(map(_webhook_line, hooks)) or "no webhooks")  # fmt: skip
        elif args.action == "delete":
            await webhooks.delete(conn, args.id, actor=CLI)
            print(f"deleted {args.id}")
        elif args.action == "rotate-secret":
            rotated = await webhooks.rotate_secret(conn, args.id, actor=CLI)
            _print(rotated, args.json, lambda h: f"new secret (shown once; the old one signs"
                   f" beside it until {h['previous_secret_until']}): {h['secret']}")  # fmt: skip
        elif args.action == "deliveries":
            found = await webhooks.deliveries(conn, args.id)
            _print(found, args.json, _delivery_lines)
        else:
            again = await webhooks.retry(conn, args.id)
            print(f"delivery {again['id']} is due again now")
    except webhooks.NotFound as exc:
        raise CommandError(f"no such webhook endpoint or delivery: {exc}") from None
    except webhooks.DestinationNotAllowed as exc:
        raise CommandError(f"--url: {exc} (webhooks.allowed_networks allows it)") from None
    return 0


def _delivery_lines(found: list[dict[str, Any]]) -> str:
    lines = [
        f"{d['id']}  {d['created_at']}  {d['type']:<22} {d['status']:<9} attempts={d['attempts']}"
        + (f"  last: {d['last_status'] or d['last_error']}" if d["last_attempt_at"] else "")
        for d in found
    ]
    return "\n".join(lines) or "no deliveries"


_LIMIT_FLAG = re.compile(r"([^=]+)=(\d+)/(\d+(?:\.\d+)?)(?::(\d+))?")


def _limit_flag(text: str) -> tuple[str, dict[str, float]]:
    """`per-key=1000/1:2000` → ("per-key", {limit, per_seconds, burst})."""
    found = _LIMIT_FLAG.fullmatch(text)
    if found is None:
        raise CommandError(
            f"--limit: {text!r}: expected NAME=LIMIT/SECONDS[:BURST], e.g. per-key=100/1"
        )
    name, limit, seconds, burst = found.groups()
    numbers = {"limit": int(limit), "per_seconds": float(seconds)}
    if burst is not None:
        numbers["burst"] = int(burst)
    return name, numbers


def _key_limits(config: Config) -> list[str]:
    """The `by: key` limits of the configured policy set (what --limit may name)."""
    catalogue = Catalogue({name: d.implies for name, d in config.scopes.items()})
    policies = load_dir(config.resolve(config.policies.dir), catalogue, frozenset(config.upstreams))
    return [name for name, limit in policies.rate_limits.items() if limit.by == "key"]


async def _keys_revoke(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    try:
        await management.revoke_key(conn, args.id, actor=CLI)
    except management.NotFound:
        raise CommandError(f"no key {args.id}") from None
    print(f"revoked {args.id}")
    return 0


async def _keys_rotate(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    if args.grace_seconds < 0:
        raise CommandError("--grace-seconds must not be negative")
    expiry: object = management.SAME_EXPIRY
    if args.expires_in_days is not None:
        if not 1 <= args.expires_in_days <= 36500:
            raise CommandError("--expires-in-days: must be from 1 to 36500")
        expiry = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    try:
        created = await management.rotate_key(
            conn,
            args.id,
            args.grace_seconds,
            config.keys.prefix,
            actor=CLI,
            expires_at=expiry,
            max_lifetime_days=config.key_policy.max_lifetime_days,
        )
    except management.NotFound:
        raise CommandError(f"no key {args.id}") from None
    except management.Conflict as exc:
        raise CommandError(str(exc)) from None
    _print(created, args.json, _created)
    return 0


async def _org_policy(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    try:
        if args.max_lifetime_days is None and not args.clear:
            found = await organizations.get_policy(conn, args.organization)
        else:
            body = {"max_lifetime_days": None if args.clear else args.max_lifetime_days}
            errors = organizations.check_days(body)
            if errors:
                raise CommandError(f"--max-lifetime-days: {errors[0][1]}")
            found = await organizations.set_policy(
                conn, args.organization, body["max_lifetime_days"], actor=CLI
            )
    except organizations.UnknownOrganization:
        raise CommandError(f"no membership names organization {args.organization!r}") from None
    _print(found, args.json, _org_policy_line)
    return 0


def _org_policy_line(policy: dict[str, Any]) -> str:
    days = policy["max_lifetime_days"]
    limit = "no limit of its own" if days is None else f"keys must expire within {days} days"
    return f"{policy['organization']}: {limit}"


async def _members(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    kind, resource = (
        ("organization", args.organization) if args.organization else ("project", args.project)
    )
    parsed = validation.validate_membership(
        {"user_id": args.user, "resource_type": kind, "resource_id": resource}
    )
    if isinstance(parsed, list):
        raise CommandError("; ".join(f"{field}: {message}" for field, message in parsed))
    await management.set_membership(conn, *parsed, member=args.action == "add", actor=CLI)
    verb = "added to" if args.action == "add" else "removed from"
    print(f"{args.user} {verb} {kind} {resource}")
    return 0


async def _audit(conn: asyncpg.Connection, config: Config, args: argparse.Namespace) -> int:
    given = {"user_id": args.user, "key_id": args.key, "action": args.event_action,
             "since": args.since, "limit": args.limit}  # fmt: skip
    parsed = audit.parse_query({name: value for name, value in given.items() if value is not None})
    if isinstance(parsed, list):
        raise _flag_error(parsed)
    events, cursor = await audit.query(conn, parsed)
    _print({"events": events, "next_cursor": cursor}, args.json, _audit_lines)
    return 0


_FLAGS = {
    "allowed_cidrs": "--cidr",
    "enabled": "--enable/--disable",
    "rate_limits": "--limit",
    "user_id": "--user",
    "key_id": "--key",
    "action": "--action",
    "scopes": "--scope",
    "credits": "--credits",
    "events": "--event",
}


def _flag_error(errors: list[tuple[str, str]]) -> CommandError:
    """The first invalid field, said as the flag a person typed (`--expires-at: …`)."""
    field, message = errors[0]
    root = re.split(r"[.\[]", field)[0]  # allowed_cidrs[0], rate_limits.name
    flag = _FLAGS.get(root, "--" + root.replace("_", "-"))
    if field.startswith("credits.refill"):
        flag, root = "--refill", field
    return CommandError(f"{flag}: {message}" if field == root else f"{flag}: {field}: {message}")


def _audit_lines(page: dict[str, Any]) -> str:
    events = page["events"]
    actor = max((len(e["actor"]) for e in events), default=0)  # user:<id> actors are long
    lines = [
        f"{e['at']}  {e['actor']:<{actor}}  {e['action']:<18} user={e['user_id']}"
        f" key={e['key_id'] or '-'}  {msgspec.json.encode(e['details']).decode()}"
        for e in events
    ]
    return "\n".join(lines) or "no events"


_Handler = Callable[[asyncpg.Connection, Config, argparse.Namespace], Awaitable[int]]
_HANDLERS: dict[tuple[str, str], _Handler] = {
    ("keys", "create"): _keys_create,
    ("keys", "update"): _keys_update,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("keys", "rotate"): _keys_rotate,
    ("keys", "credits"): _keys_credits,
    ("keys", "usage"): _keys_usage,
    ("orgs", "policy"): _org_policy,
    ("users", "credits"): _user_credits,
    ("members", "add"): _members,
    ("members", "remove"): _members,
    ("audit", "show"): _audit,
    **{
        ("webhooks", action): _webhooks
        for action in ("create", "list", "delete", "rotate-secret", "deliveries", "retry")
    },
}

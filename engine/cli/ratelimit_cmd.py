"""`policyctl ratelimit status|set|reset|remove|config|stats|violations|buckets|cleanup`.

Operator commands over the rate-limit state (thin over `engine.limits.admin.RateLimitAdmin`).
Each one checks every flag first, then opens the engine on the state, does its one thing
and closes it (which writes back): a command that fails on its input never touches the
state. With `--server URL` (or `$POLICYCTL_SERVER`) the same calls go to a running
`policyctl serve` (`/v1/ratelimit/…`, engine.service.admin_routes) and its JSON answer is
printed by the same code. Output is a table by default (these are commands for people);
`--format json` gives one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.api.policy_engine import PolicyEngine
from engine.cli.common import (
    ASK_THE_SERVER,
    EXIT_OK,
    WAIT_LONGER,
    UsageError,
    add_format,
    add_lock_wait,
    add_policy,
    check_state_url,
    cli_clock,
    default_policy_path,
    dump_json,
    lock_help,
    lock_wait_s,
    render_table,
)
from engine.cli.server_client import ServerClient, add_server, server_client
from engine.language.program import Program
from engine.limits.admin import (
    DEFAULT_IDLE_MS,
    DEFAULT_VIOLATIONS,
    AdminError,
    RateLimitAdmin,
    check_key,
    check_quota,
    check_scope,
)
from engine.limits.stores import Store, default_analytics, default_state_url, open_store
from engine.units import format_timestamp as iso
from engine.units import parse_count, parse_day, parse_timestamp_s, parse_window_ms
from engine.vocabulary import MEMORY_URLS

EXAMPLE = """\
examples:
  policyctl ratelimit status --user alice
  policyctl ratelimit set --user vip --limit 1000 --window 1m --burst 100 --expires 2026-12-31
  policyctl ratelimit reset --ip 203.0.113.7
  policyctl ratelimit violations --key alice --limit 10 --format json

  policyctl ratelimit status --server http://127.0.0.1:8080   (a running `policyctl serve`)

Windows are durations (`250ms`, `30s`, `1m`, `1h`, `1d`) or plain milliseconds (`60000`).
Every action takes --state URL, --policy PATH, --lock-wait SECONDS and --format table|json
(default: table). While `policyctl serve` holds the state file, ask it instead: --server
URL (or $POLICYCTL_SERVER), with the token from $POLICYCTL_ADMIN_TOKEN; the output is the
same.
"""

SCOPE_FLAGS = (("user", "ID"), ("provider", "NAME"), ("ip", "ADDRESS"))

Action = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ratelimit",
        help="inspect and manage rate limits: status, quotas, resets, logs",
        description=textwrap.fill(
            "Inspect and manage the rate-limit state shared by `policyctl eval` runs (or any"
            " state store): bucket status, runtime quotas, resets, statistics, violations and"
            " cleanup.",
            80,
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    status = _action(
        actions, "status", run_status,
        "show the limits that apply to a key and the tokens left",
        "Show each limit that applies (a quota, else the key's own limit, else the scope's"
        " default) with its bucket right now: capacity, tokens available and when it is full"
        " again. Without a scope flag: the global bucket and every key that has a bucket, a"
        " keyed limit or a quota.",
        "policyctl ratelimit status\n  policyctl ratelimit status --user alice\n"
        "  policyctl ratelimit status --ip 203.0.113.7 --verbose --format json",
    )  # fmt: skip
    _scope_flags(status, required=False)
    status.add_argument(
        "--verbose", action="store_true", help="add bucket keys, refill rates, retry times"
    )

    set_ = _action(
        actions, "set", run_set,
        "set a runtime quota for a user (overrides the policy until it expires)",
        "Give one user their own limit. It replaces the policy's user limits for that key"
        " (requests) until --expires, or until `ratelimit remove`.",
        "policyctl ratelimit set --user vip --limit 1000 --window 1m --burst 100\n"
        "  policyctl ratelimit set --user trial-42 --limit 10 --window 1h --expires 2026-12-31",
    )  # fmt: skip
    set_.set_defaults(writes=True)
    set_.add_argument("--user", metavar="ID", required=True, help="the user to give a quota")
    set_.add_argument(
        "--limit", metavar="N", required=True, help="requests per window (> 0; `1.5k` is fine)"
    )
    set_.add_argument(
        "--window", metavar="DURATION", required=True,
        help="refill window: `1m`, `1h`, `30s`, `250ms`, `1d`, or milliseconds (`60000`)",
    )  # fmt: skip
    set_.add_argument("--burst", metavar="N", default="0", help="extra capacity (default: 0)")
    set_.add_argument(
        "--expires", metavar="DATE",
        help="when the quota ends: `2026-12-31` (midnight UTC) or `2026-12-31T18:00:00Z`",
    )  # fmt: skip

    reset = _action(
        actions, "reset", run_reset,
        "refill the buckets of a key (or the global bucket)",
        "Refill every bucket of one key: all its units and windows. --global refills the"
        " global buckets.",
        "policyctl ratelimit reset --user alice\n  policyctl ratelimit reset --global",
    )  # fmt: skip
    reset.set_defaults(writes=True)
    _scope_flags(reset, required=True)

    remove = _action(
        actions, "remove", run_remove,
        "remove a user's runtime quota (the policy applies again)",
        "Remove a quota set with `ratelimit set`; the user's policy limits apply again.",
        "policyctl ratelimit remove --user vip",
    )  # fmt: skip
    remove.set_defaults(writes=True)
    remove.add_argument("--user", metavar="ID", required=True, help="whose quota to remove")

    config = _action(
        actions, "config", run_config,
        "show the policy's limits and the runtime quotas",
        "List the limits of the policy (in file order) and the quotas set at run time.",
        "policyctl ratelimit config\n  policyctl ratelimit config --verbose --format json",
    )  # fmt: skip
    config.set_defaults(writes=True)  # (it records the policy's limits: rate_limit_configs)
    config.add_argument(
        "--verbose", action="store_true", help="add refill rates and each limit's statement"
    )

    stats = _action(
        actions, "stats", run_stats,
        "daily allowed and denied counts per scope",
        "Requests allowed and denied per day and scope, with the approval rate. A request"
        " counts as allowed for every scope that applied to it, and as denied for the scope"
        " that denied it.",
        "policyctl ratelimit stats\n  policyctl ratelimit stats --start 2026-01-01 --type user",
    )  # fmt: skip
    stats.add_argument("--start", metavar="DATE", help="first day (UTC), e.g. 2026-01-01")
    stats.add_argument("--end", metavar="DATE", help="last day (UTC), inclusive")
    stats.add_argument("--type", metavar="SCOPE", help="one scope: global, user, ip, …")
    _analytics_flag(stats)

    violations = _action(
        actions, "violations", run_violations,
        "requests denied by a limit, newest first",
        "List rate-limit violations (denied requests), newest first.",
        "policyctl ratelimit violations\n  policyctl ratelimit violations --key alice --limit 10",
    )  # fmt: skip
    violations.add_argument("--key", metavar="KEY", help="only this key (a user, an IP, …)")
    violations.add_argument(
        "--limit", metavar="N", default=str(DEFAULT_VIOLATIONS),
        help=f"at most N rows (default: {DEFAULT_VIOLATIONS})",
    )  # fmt: skip
    _analytics_flag(violations)

    buckets = _action(
        actions, "buckets", run_buckets,
        "buckets that are not full, with tokens and fill percentage",
        "List the active buckets (those not full right now) with their tokens and fill.",
        "policyctl ratelimit buckets\n  policyctl ratelimit buckets --type user --format json",
    )  # fmt: skip
    buckets.add_argument("--type", metavar="SCOPE", help="one scope: global, user, ip, …")

    cleanup = _action(
        actions, "cleanup", run_cleanup,
        "delete full buckets idle for 24 hours",
        "Delete buckets that are full again and unused for --idle (default 24h); a full"
        " bucket is the same as no bucket, so this changes no decision.",
        "policyctl ratelimit cleanup\n  policyctl ratelimit cleanup --idle 1h",
    )  # fmt: skip
    cleanup.set_defaults(writes=True)
    cleanup.add_argument(
        "--idle", metavar="DURATION", default="24h",
        help="only buckets unused this long (default: 24h)",
    )  # fmt: skip


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Action,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    p = actions.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 80),
        epilog=f"examples:\n  {examples}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_policy(p)
    p.add_argument(
        "--state",
        metavar="URL",
        help="rate-limit state: memory://, a DuckDB file path, redis://… (default:"
        " $POLICYCTL_STATE, else ~/.local/state/policyctl/state.duckdb)",
    )
    add_lock_wait(p)
    add_server(p)
    add_format(p, default="table")
    # (`writes`: set, reset, remove, cleanup and config; the others only read the state)
    p.set_defaults(run=run, analytics=None, reads_logs=False, writes=False)
    return p


def _analytics_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--analytics",
        metavar="PATH",
        help="the DuckDB file a server or `eval` on memory or Redis state records violations"
        " and stats in (default for Redis: ~/.local/state/policyctl/state.duckdb)",
    )
    p.set_defaults(reads_logs=True)


def _scope_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    for scope, metavar in SCOPE_FLAGS:
        group.add_argument(f"--{scope}", metavar=metavar, help=f"one {scope}")
    group.add_argument("--global", dest="global_", action="store_true", help="the global limit")


# ----------------------------------------------------------------------------- plumbing


def _policy(args: argparse.Namespace) -> Any:
    return args.policy if args.policy is not None else default_policy_path()


def _program(args: argparse.Namespace) -> Program | None:
    """The policy alone (no state opened), for checks that need it; None with a server,
    which checks against its own policy."""
    from engine.language.loader import load_policy

    if _server(args) is not None:
        return None
    return load_policy(_policy(args)).program


class Admin(Protocol):
    """The calls the actions make: `RateLimitAdmin` on the state, or `_Remote` on a server."""

    def status(
        self, scope: str | None = None, key: str | None = None, verbose: bool = False
    ) -> list[dict[str, Any]]: ...
    def set_quota(
        self,
        scope: str = "user",
        key: str = "",
        limit: str | float = 0,
        window_ms: str | float = 0,
        burst: str | float = 0,
        expires_at: str | float | dt.date | None = None,
    ) -> dict[str, Any]: ...
    def reset(self, scope: str, key: str | None = None) -> int: ...
    def remove_quota(self, scope: str, key: str) -> bool: ...
    def config(self, verbose: bool = False) -> dict[str, Any]: ...
    def stats(
        self,
        start: str | dt.date | None = None,
        end: str | dt.date | None = None,
        scope: str | None = None,
    ) -> list[dict[str, Any]]: ...
    def violations(
        self, key: str | None = None, limit: int = DEFAULT_VIOLATIONS, scope: str | None = None
    ) -> list[dict[str, Any]]: ...
    def buckets(self, scope: str | None = None) -> list[dict[str, Any]]: ...
    def cleanup(self, idle_ms: str | float = ...) -> int: ...


class _Remote:
    """The admin calls over HTTP (`/v1/ratelimit/…`): the server answers what
    `RateLimitAdmin` returns, as JSON."""

    BASE = "/v1/ratelimit"

    def __init__(self, client: ServerClient) -> None:
        self.client = client

    def _get(self, action: str, params: dict[str, str | None]) -> Any:
        return self.client.get(
            f"{self.BASE}/{action}", {k: v for k, v in params.items() if v is not None}
        )

    def _post(self, action: str, body: dict[str, Any]) -> Any:
        return self.client.post(f"{self.BASE}/{action}", body)

    def status(
        self, scope: str | None = None, key: str | None = None, verbose: bool = False
    ) -> list[dict[str, Any]]:
        params = _scope_params(scope, key)
        params["verbose"] = "true" if verbose else None
        rows: list[dict[str, Any]] = self._get("status", params)
        return rows

    def set_quota(
        self,
        scope: str = "user",
        key: str = "",
        limit: str | float = 0,
        window_ms: str | float = 0,
        burst: str | float = 0,
        expires_at: str | float | dt.date | None = None,
    ) -> dict[str, Any]:
        assert scope == "user"  # the only scope `ratelimit set` takes
        body = {"user": key, "limit": limit, "window": window_ms, "burst": burst}
        if expires_at is not None:
            body["expires"] = str(expires_at)
        quota: dict[str, Any] = self._post("set", body)
        return quota

    def reset(self, scope: str, key: str | None = None) -> int:
        body: dict[str, Any] = {"global": True} if scope == "global" else {scope: key}
        return int(self._post("reset", body)["reset"])

    def remove_quota(self, scope: str, key: str) -> bool:
        return bool(self._post("remove", {scope: key})["removed"])

    def config(self, verbose: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = self._get("config", {"verbose": "true" if verbose else None})
        return data

    def stats(
        self,
        start: str | dt.date | None = None,
        end: str | dt.date | None = None,
        scope: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {"start": start, "end": end, "type": scope}
        rows: list[dict[str, Any]] = self._get(
            "stats", {k: None if v is None else str(v) for k, v in params.items()}
        )
        return rows

    def violations(
        self, key: str | None = None, limit: int = DEFAULT_VIOLATIONS, scope: str | None = None
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._get(
            "violations", {"key": key, "limit": str(limit), "type": scope}
        )
        return rows

    def buckets(self, scope: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._get("buckets", {"type": scope})
        return rows

    def cleanup(self, idle_ms: str | float = DEFAULT_IDLE_MS) -> int:
        return int(self._post("cleanup", {"idle": idle_ms})["deleted"])


def _scope_params(scope: str | None, key: str | None) -> dict[str, str | None]:
    if scope is None:
        return {}
    return {"global": "true"} if scope == "global" else {scope: key}


def _server(args: argparse.Namespace) -> ServerClient | None:
    """The server to ask (`--server`, `$POLICYCTL_SERVER`); None for the state."""
    client = server_client(args)
    if client is not None and args.policy is not None:
        raise UsageError(
            "--policy is for the state file: a server (--server or $POLICYCTL_SERVER)"
            " answers with its own policy"
        )
    return client


def _run(args: argparse.Namespace, action: Callable[[Admin], int]) -> int:
    """Ask the server; or open the engine on the state, do one thing, close (which writes
    back)."""
    client = _server(args)
    if client is not None:
        return action(_Remote(client))
    if args.state is not None:
        check_state_url(args.state)
    wait_s = lock_wait_s(args)
    state: str | Store = args.state if args.state is not None else default_state_url()
    analytics = args.analytics  # stats and violations: where memory or Redis state logs
    if analytics is None and args.reads_logs:
        analytics = default_analytics(state)
    file = Path(state).expanduser()
    if "://" not in state and not args.writes and file.parent.is_dir() and not file.exists():
        # (reading a file that is not there would create it: a mistyped --state would leave
        # an empty state file behind and show every bucket full, as a fresh one does)
        print(
            f"policyctl: note: no state file at `{state}` yet: nothing recorded there"
            " (check --state or $POLICYCTL_STATE)",
            file=sys.stderr,
        )
        state = MEMORY_URLS[0]  # (buckets full, nothing logged: what a new file holds)
    with lock_help(ASK_THE_SERVER, WAIT_LONGER):
        if "://" not in state:  # a DuckDB file: opened here, with the lock wait asked for
            state = open_store(state, lock_timeout_s=wait_s)
        try:
            engine = PolicyEngine(
                _policy(args),
                state=state,
                analytics=analytics,
                clock=cli_clock(),
                lock_wait_s=wait_s,
            )
        except BaseException:
            if not isinstance(state, str):
                state.close()
            raise
    try:
        return action(RateLimitAdmin(engine))
    finally:
        engine.close()


def _chosen_scope(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(scope, key) from --user/--provider/--ip/--global, keys checked."""
    if getattr(args, "global_", False):
        return "global", ""
    for scope, _ in SCOPE_FLAGS:
        value = getattr(args, scope, None)
        if value is not None:
            return scope, check_key(scope, value)
    return None, None


def _n(value: Any) -> str | None:
    """A number for a table: whole numbers plain, others to 3 decimals."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if float(value).is_integer():
            return f"{int(value)}"
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _who(scope: str, key: str | None) -> str:
    return scope if not key else f"{scope} {key}"


# ----------------------------------------------------------------------------- actions


def run_status(args: argparse.Namespace) -> int:
    scope, key = _chosen_scope(args)

    def action(admin: Admin) -> int:
        rows = admin.status(scope, key, verbose=args.verbose)
        if args.format == "json":
            dump_json(rows)
        elif not rows:
            _print(f"no rate limits apply to {_who(scope, key)}" if scope else "no rate limits")
        else:
            _print(_status_table(rows, args.verbose))
        return EXIT_OK

    return _run(args, action)


def _status_table(rows: Sequence[dict[str, Any]], verbose: bool) -> str:
    headers = ["scope", "key", "unit", "limit", "window", "burst", "capacity", "tokens",
               "full at", "source"]  # fmt: skip
    if verbose:
        headers += ["fill %", "retry ms", "rate/s", "bucket"]
    table = []
    for r in rows:
        line = [_scope(r), r["key"], r["unit"], _n(r["limit"]), r["window"], _n(r["burst"]),
                _n(r["capacity"]), _n(r["tokens"]), _full_at(r), r["source"]]  # fmt: skip
        if verbose:
            line += [_n(r["fill_percent"]), _n(r["retry_after_ms"]), _n(r["rate_per_s"]),
                     r["bucket"]]  # fmt: skip
        table.append(line)
    return render_table(headers, table)


def _full_at(row: dict[str, Any]) -> str:
    """When the bucket is full again; for an in-flight limit, the slots held now."""
    if "in_flight" in row:
        return f"{row['in_flight']} in flight"
    return iso(row["reset_at"]) or "full"


def _scope(row: dict[str, Any]) -> str:
    """A limit's scope as the tables show it: `user (shadow)` for a `shadow limit`."""
    return f"{row['scope']} (shadow)" if row.get("shadow") else str(row["scope"])


def run_set(args: argparse.Namespace) -> int:
    fields = {
        "scope": "user",
        "key": args.user,
        "limit": args.limit,
        "window_ms": args.window,
        "burst": args.burst,
        "expires_at": args.expires,
    }
    # check every flag before the state is opened: a bad one leaves it untouched
    check_key("user", args.user)
    parse_count(args.limit, "--limit", error=AdminError)
    parse_window_ms(args.window, error=AdminError)
    parse_count(args.burst, "--burst", allow_zero=True, error=AdminError)
    if args.expires is not None:
        parse_timestamp_s(args.expires, "--expires", error=AdminError)
    program = _program(args)
    if program is not None:  # a server checks the quota against its own policy
        check_quota(program, now_s=cli_clock()(), **fields)

    def action(admin: Admin) -> int:
        quota = admin.set_quota(**fields)
        if args.format == "json":
            dump_json(quota)
        else:
            expires = iso(quota["expires_at"])
            _print(
                f"quota set for {_who('user', quota['key'])}: {_n(quota['limit'])} per"
                f" {quota['window']} burst {_n(quota['burst'])} (capacity"
                f" {_n(quota['capacity'])}), " + (f"expires {expires}" if expires else "no expiry")
            )
        return EXIT_OK

    return _run(args, action)


def run_reset(args: argparse.Namespace) -> int:
    scope, key = _chosen_scope(args)
    assert scope is not None  # the flag group is required

    def action(admin: Admin) -> int:
        count = admin.reset(scope, key or None)
        if args.format == "json":
            dump_json({"scope": scope, "key": key or None, "reset": count})
        else:
            plural = "bucket" if count == 1 else "buckets"
            _print(f"reset {count} {plural} of {_who(scope, key)}")
        return EXIT_OK

    return _run(args, action)


def run_remove(args: argparse.Namespace) -> int:
    key = check_key("user", args.user)

    def action(admin: Admin) -> int:
        removed = admin.remove_quota("user", key)
        if args.format == "json":
            dump_json({"scope": "user", "key": key, "removed": removed})
        elif removed:
            _print(f"removed the quota of user {key}; the policy's user limits apply")
        else:
            _print(f"user {key} has no quota; nothing removed")
        return EXIT_OK

    return _run(args, action)


def run_config(args: argparse.Namespace) -> int:
    def action(admin: Admin) -> int:
        data = admin.config(verbose=args.verbose)
        if args.format == "json":
            dump_json(data)
            return EXIT_OK
        headers = ["scope", "key", "unit", "limit", "window", "burst", "capacity", "when",
                   "until", "source"]  # fmt: skip
        if args.verbose:
            headers += ["rate/s", "statement"]
        rows = []
        for r in data["limits"]:
            until = iso(r["until"])
            if until is not None and r["expired"]:
                until += " (expired)"
            row = [_scope(r), r["key"], r["unit"], _n(r["limit"]), r["window"],
                   _n(r["burst"]), _n(r["capacity"]), r["when"], until, r["source"]]  # fmt: skip
            if args.verbose:
                row += [_n(r["rate_per_s"]), r["statement"]]
            rows.append(row)
        _print(render_table(headers, rows) if rows else "the policy has no limits")
        _print("")
        if not data["quotas"]:
            _print("no runtime quotas")
            return EXIT_OK
        quota_rows = []
        for q in data["quotas"]:
            expires = iso(q["expires_at"]) or "never"
            if q["expired"]:
                expires += " (expired)"
            quota_rows.append(
                [q["scope"], q["key"], _n(q["limit"]), q["window"], _n(q["burst"]),
                 _n(q["capacity"]), expires]
            )  # fmt: skip
        headers = ["quota scope", "key", "limit", "window", "burst", "capacity", "expires"]
        _print(render_table(headers, quota_rows))
        return EXIT_OK

    return _run(args, action)


def run_stats(args: argparse.Namespace) -> int:
    start = parse_day(args.start, "--start", error=AdminError)
    end = parse_day(args.end, "--end", error=AdminError)
    if start is not None and end is not None and start > end:
        raise AdminError(f"`--start` {start} is after `--end` {end}")
    program = _program(args) if args.type is not None else None
    if program is not None:  # a server checks the scope against its own policy
        check_scope(program, args.type)

    def action(admin: Admin) -> int:
        rows = admin.stats(start, end, args.type)
        if args.format == "json":
            dump_json(rows)
        elif not rows:
            _print("no statistics yet")
        else:
            table = [
                [r["day"], r["scope"], r["total"], r["allowed"], r["denied"],
                 None if r["approval_rate"] is None else f"{r['approval_rate']:.2f}%"]
                for r in rows
            ]  # fmt: skip
            _print(render_table(["day", "scope", "total", "allowed", "denied", "approval"], table))
        return EXIT_OK

    return _run(args, action)


def run_violations(args: argparse.Namespace) -> int:
    count = int(parse_count(args.limit, "--limit", integer=True, error=AdminError))
    if args.key is not None and not args.key.strip():
        raise AdminError("`--key` must not be empty")

    def action(admin: Admin) -> int:
        rows = admin.violations(args.key, count)
        if args.format == "json":
            dump_json(rows)
        elif not rows:
            _print("no violations" + (f" for {args.key}" if args.key else ""))
        else:
            table = [
                [iso(r["at"]), r["scope"], r["key"], r["unit"], _n(r["requested"]),
                 _n(r["available"]), r["request_id"]]
                for r in rows
            ]  # fmt: skip
            headers = ["at", "scope", "key", "unit", "requested", "available", "request"]
            _print(render_table(headers, table))
        return EXIT_OK

    return _run(args, action)


def run_buckets(args: argparse.Namespace) -> int:
    program = _program(args) if args.type is not None else None
    if program is not None:  # a server checks the scope against its own policy
        check_scope(program, args.type)

    def action(admin: Admin) -> int:
        rows = admin.buckets(args.type)
        if args.format == "json":
            dump_json(rows)
        elif not rows:
            _print("no active buckets (every bucket is full)")
        else:
            table = [
                [r["scope"], r["key"], r["unit"], _n(r["capacity"]), _n(r["tokens"]),
                 None if r["fill_percent"] is None else f"{r['fill_percent']:.1f}%",
                 iso(r["reset_at"]), iso(r["last_used"])]
                for r in rows
            ]  # fmt: skip
            headers = ["scope", "key", "unit", "capacity", "tokens", "fill", "full at",
                       "last used"]  # fmt: skip
            _print(render_table(headers, table))
        return EXIT_OK

    return _run(args, action)


def run_cleanup(args: argparse.Namespace) -> int:
    idle = parse_window_ms(args.idle, "--idle", allow_zero=True, error=AdminError)

    def action(admin: Admin) -> int:
        deleted = admin.cleanup(idle)
        if args.format == "json":
            dump_json({"deleted": deleted, "idle_ms": int(idle) if idle.is_integer() else idle})
        else:
            plural = "bucket" if deleted == 1 else "buckets"
            _print(f"deleted {deleted} {plural} (full and idle for {args.idle.strip()})")
        return EXIT_OK

    return _run(args, action)

"""`policyctl serve`: the HTTP decision service with hot reload."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from collections.abc import Callable

from engine.api.policy_engine import (
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_OUTCOME_QUEUE,
    DEFAULT_QUIET_MS,
    DEFAULT_REFRESH_MS,
    PolicyEngine,
)
from engine.cli import progress
from engine.cli.common import (
    EXIT_OK,
    UsageError,
    add_policy,
    add_request_log,
    cli_clock,
    default_policy_path,
)
from engine.limits.stores import default_analytics, default_state_url
from engine.limits.stores.base import StoreBusyError

log = logging.getLogger("policyctl.service")
# engine.service.logconfig's (a test checks they agree): importing it here would load the
# service package, and every `policyctl` run that builds this parser would pay for it
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

# the server's limits by default (docs/service.md, "Slow and idle clients")
READ_TIMEOUT_S = 10.0  # a request's headers and body, from its first byte
KEEP_ALIVE_S = 5.0  # an idle kept-alive connection
LIMIT_CONCURRENCY = 512  # open connections or requests in progress; past it, 503
BACKLOG = 2048  # connections the kernel queues before they are accepted

EXAMPLE = """\
examples:
  policyctl serve                                   # 127.0.0.1:8181, ./policies or defaults
  policyctl serve --port 9000 --state memory://
  curl -s localhost:8181/v1/eval -d '{"id": "r1", "user": "alice", "prompt": "hi"}'

Policies are watched and hot-reloaded; a broken edit keeps the last good policy serving
(see GET /v1/policy). Admin calls under /v1/ratelimit/ that change state need
`Authorization: Bearer TOKEN` when --admin-token (or $POLICYCTL_ADMIN_TOKEN) is set, and
are refused without one unless --open-admin is given. SIGTERM answers the requests
waiting on a `wait up to` limit at once (their denial), finishes in-flight requests and
flushes the logs. Logs go to stderr; --access-log adds a line per request (off by
default), --log-format json makes every line a JSON object.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP decision service (hot reload)",
        description="Serve decisions over HTTP: POST /v1/eval, POST /v1/outcomes, and more.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8181, help="port (default 8181; 0 picks one)")
    add_policy(p)
    p.add_argument(
        "--state",
        metavar="URL",
        help="rate-limit state, kept (unlike eval's default): memory://, a DuckDB file,"
        " redis://… (default: $POLICYCTL_STATE, else ~/.local/state/policyctl/state.duckdb)",
    )
    p.add_argument(
        "--analytics",
        metavar="PATH",
        help="DuckDB file for violations and daily stats when --state is memory or Redis"
        " (default for Redis: ~/.local/state/policyctl/state.duckdb)",
    )
    p.add_argument("--admin-token", metavar="TOKEN", help="bearer token for admin calls")
    p.add_argument(
        "--open-admin", action="store_true", help="allow admin calls without a token (unsafe)"
    )
    p.add_argument("--no-watch", action="store_true", help="do not hot-reload policies")
    p.add_argument(
        "--reload-quiet", type=float, metavar="MS", default=DEFAULT_QUIET_MS,
        help="reload once changed policy files have kept still this long (default %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--flush-interval", type=float, metavar="SECONDS", default=DEFAULT_FLUSH_INTERVAL_S,
        help="write rate-limit state, violations and stats to a DuckDB state file this often"
        " (default %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--outcome-queue", type=int, metavar="N", default=DEFAULT_OUTCOME_QUEUE,
        help="outcomes waiting to be written, at most; past it POST /v1/outcomes answers 503"
        " (default %(default)d)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-refresh", type=float, metavar="MS", default=DEFAULT_REFRESH_MS,
        help="decisions route on live measurements at most this old; 0 rebuilds them after"
        " every outcome (default %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--read-timeout", type=float, metavar="SECONDS", default=READ_TIMEOUT_S,
        help="close a connection whose request has not arrived whole in this time"
        " (default %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--keep-alive", type=float, metavar="SECONDS", default=KEEP_ALIVE_S,
        help="close an idle kept-alive connection after this long (default %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--limit-concurrency", type=int, metavar="N", default=LIMIT_CONCURRENCY,
        help="answer 503 past this many open connections or requests (default %(default)d)",
    )  # fmt: skip
    p.add_argument(
        "--backlog", type=int, metavar="N", default=BACKLOG,
        help="connections the kernel may queue before they are accepted (default %(default)d)",
    )  # fmt: skip
    p.add_argument(
        "--access-log", action="store_true",
        help="log each request (method, path, status, duration, client) to stderr",
    )  # fmt: skip
    p.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info",
        help="the least severe messages logged (default %(default)s, as uvicorn's)",
    )  # fmt: skip
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="text lines, or one JSON object a line (default %(default)s)",
    )  # fmt: skip
    add_request_log(p)
    p.add_argument(
        "--alert-webhook", metavar="URL",
        help="POST the policy's alerts here when they fire and resolve, unless an alert"
        " names its own (`to \"URL\"`) (default: $POLICYCTL_ALERT_WEBHOOK; none: the log only)",
    )  # fmt: skip
    p.add_argument("--format", choices=("json", "table"), default="table", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if not 0 < value < float("inf"):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"`{flag}` must be a positive number, got `{value}`")


def _alert_webhook(args: argparse.Namespace) -> str | None:
    url = args.alert_webhook or os.environ.get("POLICYCTL_ALERT_WEBHOOK") or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise UsageError(f"`--alert-webhook` is an http:// or https:// URL, got `{url}`")
    return url


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"`--port` must be between 0 and 65535, got `{args.port}`")
    _positive(args, "flush_interval", "outcome_queue", "read_timeout", "keep_alive")
    _positive(args, "limit_concurrency", "backlog")
    webhook = _alert_webhook(args)
    for name in ("reload_quiet", "metrics_refresh"):
        if not 0 <= getattr(args, name) < float("inf"):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"`{flag}` must be 0 or more, got `{getattr(args, name)}`")
    # imported here: eval and check never pay for the server
    from engine.service.app import create_app
    from engine.service.logconfig import Logging, configure_logging
    from engine.service.server import Limits, listening, serve

    sock = _listening(listening, args.host, args.port)  # (before the engine's warm start)
    configure_logging(Logging(args.log_level, args.log_format, args.access_log))
    token = args.admin_token or os.environ.get("POLICYCTL_ADMIN_TOKEN") or None
    policy = args.policy if args.policy is not None else default_policy_path()
    state = args.state if args.state is not None else default_state_url()
    analytics = args.analytics if args.analytics is not None else default_analytics(state)
    options = {
        "flush_interval_s": args.flush_interval,
        "outcome_queue": args.outcome_queue,
        "metrics_refresh_ms": args.metrics_refresh,
        "clock": cli_clock(),
        "log_requests": args.log_requests,
        "hash_keys": args.hash_keys,
        "warm_progress": progress.WarmStart(),  # a bar on a terminal, from 50,000 outcomes
    }
    try:
        engine = _engine(policy, state, analytics, args.analytics is not None, options)
    except BaseException:
        sock.close()
        raise
    limits = Limits(args.read_timeout, args.keep_alive, args.limit_concurrency, args.backlog)
    try:
        if not args.no_watch:
            engine.watch(quiet_ms=args.reload_quiet)
        engine.start_alerts(webhook)
        app = create_app(
            engine, admin_token=token, open_admin=args.open_admin, access_log=args.access_log
        )
        host, port = sock.getsockname()[:2]
        log.info("policyctl serving on http://%s:%d", f"[{host}]" if ":" in host else host, port)
        serve(
            app,
            sock=sock,
            limits=limits,
            on_stop=lambda: _stopping(engine, app.state.dashboard.stop),
        )
    finally:
        engine.close()
        sock.close()
    return EXIT_OK


def _stopping(engine: PolicyEngine, stop_dashboard: Callable[[], None]) -> None:
    """The stop has begun: the dashboard's event streams end, and the requests waiting for
    a limit's tokens (`wait up to D`, maybe minutes) are answered now, each with the denial
    it would get had its wait run out, so that the stop waits only for responses."""
    stop_dashboard()
    released = engine.waiters.release()
    if released:
        log.info("stopping: answered %d request(s) waiting for a limit's tokens", released)


def _engine(
    policy: str, state: str, analytics: str | None, asked: bool, options: dict[str, object]
) -> PolicyEngine:
    """The served engine; without its default analytics file when another server holds it
    (`asked`: the file was given with --analytics, and its being busy is an error). A busy
    state file is an error too: with no analytics file (a DuckDB state keeps its own), the
    file that is busy is the state's."""
    try:
        return PolicyEngine(policy, state=state, analytics=analytics, **options)  # type: ignore[arg-type]
    except StoreBusyError:
        if asked or analytics is None:
            raise
        log.warning(  # another server on this host has the default file: run without one
            "`%s` is in use by another process; this server records no violations or stats"
            " (give it its own --analytics PATH)",
            analytics,
        )
        return PolicyEngine(policy, state=state, **options)  # type: ignore[arg-type]


def _listening(listen: Callable[[str, int], socket.socket], host: str, port: int) -> socket.socket:
    """The server's socket, or a usage error that says why it cannot listen there."""
    try:
        return listen(host, port)
    except OSError as err:
        reason = err.strerror or str(err)
        hint = ""
        if err.errno == errno.EADDRINUSE:
            hint = ": another process listens there (stop it, or pick another --port; 0 picks"
            hint += " a free one)"
        elif isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
            hint = ": --host is an address or a name of this machine (127.0.0.1, 0.0.0.0, …)"
        raise UsageError(f"cannot listen on {host}:{port}: {reason.lower()}{hint}") from None

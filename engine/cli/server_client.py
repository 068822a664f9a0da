"""The admin commands' way to a running `policyctl serve`: `--server URL` (or
`$POLICYCTL_SERVER`), the token from `$POLICYCTL_ADMIN_TOKEN`.

`policyctl ratelimit …` and `policyctl metrics show` ask the server the calls of
`engine.service.admin_routes` and print its JSON answer with the code that prints the
file's: the output is the same. Standard library only (`urllib.request`), and only to the
URL given. A server that cannot be reached, a refused token and the server's own problem
answers are errors that say which.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from engine.cli.common import UsageError
from engine.errors import EXIT_ERROR, PolicyctlError

SERVER_ENV = "POLICYCTL_SERVER"
TOKEN_ENV = "POLICYCTL_ADMIN_TOKEN"
TIMEOUT_S = 30.0
REFUSED = f"the server refused the admin token: set {TOKEN_ENV}"


class ServerUnreachable(PolicyctlError, exit_code=EXIT_ERROR):
    """No answer from the server (refused connection, unknown host, timeout)."""


class ServerRefusedToken(PolicyctlError):
    """401 or 403: the admin token is missing or wrong."""


class ServerRejected(PolicyctlError):
    """Another 4xx: the server's problem message (a bad parameter, named)."""


class ServerFailed(PolicyctlError, exit_code=EXIT_ERROR):
    """A 5xx, or an answer that is not the JSON the call promises."""


def add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        help="ask a running `policyctl serve` instead of opening the state file, e.g."
        f" http://127.0.0.1:8080 (default: ${SERVER_ENV} unless --state is given); the admin"
        f" token comes from ${TOKEN_ENV}",
    )


@dataclass(frozen=True)
class ServerClient:
    """JSON calls to one server's admin API."""

    url: str  # the base, without a trailing slash
    token: str | None

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._call(urllib.request.Request(self.url + path + query, method="GET"))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(request, timeout=TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise _refusal(self.url, err.code, err.read()) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnreachable(f"cannot reach the server at {self.url}: {reason}") from None
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise ServerFailed(
                f"the server at {self.url} answered {request.full_url} with something that"
                " is not JSON (is it a `policyctl serve`?)"
            ) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Only the URL given: a redirect is an answer, not somewhere to send the token."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def _refusal(url: str, status: int, body: bytes) -> PolicyctlError:
    message = _problem(body)
    if status == 401 or (status == 403 and message is None):
        return ServerRefusedToken(REFUSED)
    if status == 403:  # no token configured there: what to do is the server's to say
        return ServerRefusedToken(f"{REFUSED} (the server says: {message})")
    message = message or "no problem message"
    text = f"the server at {url} answered {status}: {message}"
    return ServerRejected(text) if status < 500 else ServerFailed(text)


def _problem(body: bytes) -> str | None:
    """`error: field: message; …` from the service's problem JSON (engine.service.body)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    parts = [data["error"]]
    detail = data.get("detail")
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict) and "message" in item:
                field = item.get("field")
                parts.append(f"{field}: {item['message']}" if field else str(item["message"]))
    return "; ".join(parts)


def server_client(args: argparse.Namespace) -> ServerClient | None:
    """The server to ask: `--server`, else `$POLICYCTL_SERVER` when no `--state` is given;
    None for the state file. `--server` with `--state` (or `--analytics`) is a usage error."""
    given = args.server
    if given is not None and args.state is not None:
        raise UsageError("give --server or --state, not both: a server answers from its own state")
    if given is not None and getattr(args, "analytics", None) is not None:
        raise UsageError("--analytics is for the state file; a server answers from its own")
    if given is None and args.state is None:
        given = os.environ.get(SERVER_ENV) or None
        if given is not None and getattr(args, "analytics", None) is not None:
            given = None  # a file named on the command line wins over the environment
    if given is None:
        return None
    url = given.strip().rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"--server must be an http:// or https:// URL, got `{given}`")
    if parsed.query or parsed.fragment:
        raise UsageError(f"--server is the server's base URL, without ?… or #…, got `{given}`")
    return ServerClient(url, os.environ.get(TOKEN_ENV) or None)

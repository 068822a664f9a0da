"""`policyctl eval REQUEST.json|REQUESTS.jsonl|-`: requests in, decisions out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from engine.api.policy_engine import PolicyEngine
from engine.cli import progress
from engine.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_DENIED,
    EXIT_OK,
    WAIT_LONGER,
    UsageError,
    add_format,
    add_lock_wait,
    add_policy,
    add_request_log,
    check_state_url,
    cli_clock,
    default_policy_path,
    lock_help,
    lock_wait_s,
    printable,
    render_table,
)
from engine.diagnostics import Diagnostic, Source, Span
from engine.limits.records import LimitStatus
from engine.limits.stores import Store, default_state_url, open_store
from engine.routing.decision import (
    Decision,
    DeniedByPolicyRequire,
    DeniedByRule,
    NoEligibleModel,
)
from engine.routing.request import RequestError, json_limit
from engine.units import format_duration
from engine.units import format_money as money
from engine.vocabulary import MEMORY_URLS
from engine.wire import FORMATS, NATIVE

MAX_REQUEST_BYTES = 1 << 20  # one request (one JSON document or one JSONL line)
MEMORY = MEMORY_URLS[0]  # the default state: eval is a query
QUERY_INSTEAD = (
    "leave --state out for a query on fresh in-memory state (the server that holds the file"
    " decides on POST /v1/eval)"
)

EXAMPLE = """\
examples:
  policyctl eval examples/requests/chat.json
  policyctl eval --format table --explain examples/requests/vision.json
  policyctl eval examples/requests/openai-chat.json   (OpenAI, Anthropic, Gemini bodies as-is)
  policyctl eval --input gemini --model gemini-2.5-flash examples/requests/gemini.json
  cat requests.jsonl | policyctl eval - > decisions.jsonl
  policyctl eval --state ./state.duckdb examples/requests/chat.json   (limits persist)

Without --state (or $POLICYCTL_STATE) eval is a query: it decides on fresh in-memory
state, consumes no limit that outlives the command and writes no file. With a state file
it consumes its limits, logs its decisions and routes on its recorded outcomes.

exit codes: 0 allowed, 3 denied (at least one), 2 bad input, 4 state store busy
"""


class PolicyLines(str):
    """A table value written by the policy's author (a route's `when` text): its line
    breaks are the author's and are kept; each line is still escaped."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="route requests: one JSON file, JSONL, or - for stdin",
        description="Evaluate requests against the policy and print one decision per request.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="REQUEST", help="a .json file, a .jsonl file, or - for stdin")
    add_policy(p)
    p.add_argument(
        "--state",
        metavar="URL",
        help="rate-limit state: memory://, a DuckDB file path, redis://… (default:"
        " $POLICYCTL_STATE, else memory://: fresh in-memory state, nothing written)",
    )
    add_lock_wait(p)
    p.add_argument(
        "--analytics",
        metavar="PATH",
        help="DuckDB file for violations and daily stats when --state is memory or Redis",
    )
    p.add_argument("--dry-run", action="store_true", help="decide without consuming limits")
    p.add_argument(
        "--input",
        dest="input_format",
        metavar="FORMAT",
        choices=FORMATS,
        help="the request format (default: detected from its shape): " + ", ".join(FORMATS),
    )
    p.add_argument(
        "--request-id",
        metavar="ID",
        help="the request id for a body that carries none (wire bodies never do); without it"
        " the id is a hash of the body",
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="the requested model, for a format that keeps it outside the body (Gemini); it"
        " wins over a wire body's, and a native request without one takes it",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        default=None,
        help="the request streams, for a format that says so outside the body (Gemini); it"
        " wins over a wire body's, and a native request that does not say takes it",
    )
    p.add_argument("--explain", action="store_true", help="add the trace of routes and drops")
    add_request_log(p)
    add_format(p)
    p.set_defaults(run=run)


class _BadItem:
    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message


def _read_input(path: str) -> tuple[str, str]:
    """The input's name and text; raises UnicodeDecodeError for bytes that are not UTF-8
    (standard input is read as bytes: its text layer would turn them into lone surrogates).
    A UTF-8 byte order mark in front (Windows editors write one) is dropped, as the
    service drops it from a body."""
    if path == "-":
        name, raw = "<stdin>", sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            name, raw = path, f.read()
    return name, raw.decode("utf-8").removeprefix("\ufeff")  # (the byte of an error: the file's)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """JSONL lines, numbered: split on `\\n` only (a `\\r` before it dropped), so U+2028,
    U+0085 and the other characters `str.splitlines` breaks on stay inside their line."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _json_error(name: str, text: str, err: json.JSONDecodeError, line: int = 1) -> str:
    """Render a JSON syntax error with its place; `line` numbers a JSONL line in its file."""
    source = Source(name, "\n" * (line - 1) + text)
    start = (line - 1) + min(err.pos, len(text))
    message = f"invalid JSON: {err.msg[:1].lower()}{err.msg[1:]}"
    return Diagnostic("E0600", message, Span(source, start, start + 1), None).render()


_decode = msgspec.json.Decoder().decode


def _loads(text: str) -> Any:
    """`json.loads`, by msgspec when it can: it takes a subset of what `json` takes (no
    lone surrogates, NaN, Infinity or numbers past a float) and reads that subset to the
    same values; the rest, and every error message, is `json`'s."""
    try:
        return _decode(text)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return json.loads(text)


def _leading_lines(text: str, count: int) -> list[str]:
    """The first `count` lines that are not blank (split as `_lines` splits)."""
    found: list[str] = []
    start = 0
    while len(found) < count and start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end].removesuffix("\r")
        if line and not line.isspace():
            found.append(line)
        start = end + 1
    return found


def _is_json(line: str, object_only: bool = False) -> bool:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return not object_only or isinstance(value, dict)


def _several_documents(text: str) -> bool:
    """Several documents one per line (JSONL), not one document: its first line is JSON by
    itself, or (that line broken) its second is a JSON object by itself, which no line after
    a pretty-printed document's first is (`"key": value,`)."""
    first_two = _leading_lines(text, 2)
    if len(first_two) < 2:
        return False
    return _is_json(first_two[0]) or _is_json(first_two[1], object_only=True)


def _items(name: str, text: str) -> Iterator[tuple[int | None, Any]]:
    """(line, parsed JSON) per request, or (line, _BadItem). One JSON document, or JSONL
    (a `.jsonl` name, or several documents one per line: `_several_documents`). The 1 MiB
    limit is per request: per line of JSONL, whatever the input's name."""
    if not name.endswith(".jsonl"):
        if len(text) > MAX_REQUEST_BYTES // 4 and (
            len(text.encode("utf-8", "surrogatepass")) > MAX_REQUEST_BYTES
        ):
            if not _several_documents(text):
                yield None, _BadItem(None, f"{name}: request is larger than 1 MiB")
                return
        else:
            try:
                yield None, json.loads(text)
                return
            except json.JSONDecodeError as err:
                if not _several_documents(text):
                    yield None, _BadItem(None, _json_error(name, text, err))
                    return
            except (ValueError, RecursionError) as err:
                if not _several_documents(text):
                    yield None, _BadItem(None, f"{name}: invalid JSON: {json_limit(err)}")
                    return
    for number, line in _lines(text):
        if not line or line.isspace():  # (`isspace`: `strip`'s whitespace, no copy)
            continue
        if len(line) > MAX_REQUEST_BYTES // 4 and len(line.encode("utf-8")) > MAX_REQUEST_BYTES:
            yield number, _BadItem(number, f"{name}:{number}: request is larger than 1 MiB")
            continue
        try:
            yield number, _loads(line)
        except json.JSONDecodeError as err:
            yield number, _BadItem(number, _json_error(name, line, err, line=number))
        except (ValueError, RecursionError) as err:
            yield number, _BadItem(number, f"{name}:{number}: invalid JSON: {json_limit(err)}")


def run(args: argparse.Namespace) -> int:
    if args.state is not None:
        check_state_url(args.state)
    for flag, value, what in (("--model", args.model, "a model name"),
                              ("--request-id", args.request_id, "an id")):  # fmt: skip
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: give {what}, or leave the flag out")
    try:
        name, text = _read_input(args.input)
    except OSError as err:
        print(f"policyctl: error: cannot read `{args.input}`: {err.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnicodeDecodeError as err:
        print(
            f"policyctl: error: `{args.input}` is not UTF-8 text (byte {err.start})",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    wait_s = lock_wait_s(args)
    state: str | Store = args.state if args.state is not None else default_state_url(MEMORY)
    with lock_help(WAIT_LONGER, QUERY_INSTEAD):
        if "://" not in state:  # a DuckDB file: opened here, with the lock wait asked for
            state = open_store(state, lock_timeout_s=wait_s)
        try:
            engine = PolicyEngine(
                args.policy if args.policy is not None else default_policy_path(),
                state=state,
                clock=cli_clock(),
                analytics=args.analytics,
                log_requests=args.log_requests,
                hash_keys=args.hash_keys,
                warm_progress=progress.WarmStart(),  # a bar on a terminal, from 50,000 outcomes
                lock_wait_s=wait_s,
            )
        except BaseException:
            if not isinstance(state, str):
                state.close()
            raise
    try:
        return _evaluate_all(engine, args, name, text)
    finally:
        engine.close()


def _evaluate_all(engine: PolicyEngine, args: argparse.Namespace, name: str, text: str) -> int:
    decisions: list[tuple[int | None, Decision]] = []
    bad = denied = False
    as_json = args.format == "json"
    out = _Output()
    evaluate = engine.evaluate
    explain, dry_run, input_format = args.explain, args.dry_run, args.input_format
    request_id, model, stream = args.request_id, args.model, args.stream
    for line, item in _items(name, text):
        if line is not None and request_id is not None:  # (before anything is decided)
            raise UsageError(
                f"--request-id names one request, and {name} is JSONL (one request per line):"
                " leave it out (a line's id is its own `id`, else a hash of its body)"
            )
        if isinstance(item, _BadItem):
            bad = True
            out.flush()  # the decisions before it come first, as the error to stderr does
            print(item.message, file=sys.stderr)
            if as_json and line is not None:
                out.error(line, item.message.splitlines()[0])
            continue
        try:
            decision = evaluate(
                item,
                explain=explain,
                dry_run=dry_run,
                input_format=input_format,
                request_id=request_id,
                model=model,
                stream=stream,
            )
        except RequestError as err:
            bad = True
            out.flush()
            where = f"{name}:{line}" if line is not None else name
            for field_name, message in err.problems:
                prefix = f"{field_name}: " if field_name else ""
                print(f"{where}: {prefix}{message}", file=sys.stderr)
            if as_json and line is not None:
                out.error(line, str(err))
            continue
        denied = denied or not decision.allowed
        if as_json:
            out.decision(decision.to_json())
        else:
            decisions.append((line, decision))
    out.flush()
    if not as_json and decisions:
        print(_table(decisions))
    if bad:
        return EXIT_BAD_INPUT
    return EXIT_DENIED if denied else EXIT_OK


_encode = msgspec.json.Encoder().encode
_spaced = msgspec.json.format


class _Output:
    """JSON lines to standard output as bytes, written in blocks of about 64 KiB (a
    batch's decisions are one write per block, not one per line)."""

    BLOCK = 1 << 16

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.size = 0

    def decision(self, encoded: bytes) -> None:
        """One document, compact JSON, printed spaced as `dump_json` prints (`", "`,
        `": "`): the same bytes as `json.dumps`, but for integral numbers (`109`)."""
        spaced = _spaced(encoded, indent=0)
        self.pending.append(spaced)
        self.size += len(spaced) + 1
        if self.size >= self.BLOCK:
            self.flush()

    def error(self, line: int, message: str) -> None:
        """`{"line": N, "error": "…"}`, encoded as a decision is (`Decision.to_json`)."""
        document = {"line": line, "error": message}
        try:
            self.decision(_encode(document))
        except ValueError:  # a lone surrogate: escaped
            self.decision(json.dumps(document, separators=(",", ":")).encode("ascii"))

    def flush(self) -> None:
        if self.pending:
            self.pending.append(b"")  # (the last line's newline)
            data = b"\n".join(self.pending)
            self.pending.clear()
            self.size = 0
            sys.stdout.flush()  # anything printed as text before goes first
            raw = getattr(sys.stdout, "buffer", None)
            if raw is None:  # a text-only stream (an embedding app's StringIO)
                sys.stdout.write(data.decode("utf-8"))
            else:
                raw.write(data)
                raw.flush()


def _table(decisions: list[tuple[int | None, Decision]]) -> str:
    """One decision, or a batch with `--explain` (a row has no room for the trace): each
    decision's rows, a blank line between two; else a batch is one row per decision."""
    if len(decisions) == 1 or decisions[0][1].trace is not None:
        return "\n\n".join(_vertical(decision) for _, decision in decisions)
    rows = [
        (
            d.request_id if d.request_id is not None else f"line {line}",
            d.allowed,
            d.route,
            f"{d.provider}/{d.model}" if d.allowed else "-",
            d.strategy,
            money(d.estimated_cost) if d.estimated_cost is not None else None,
            f"{d.estimated_latency_ms:.0f}ms" if d.estimated_latency_ms is not None else None,
            f"{d.confidence:.2f}",
            d.reason,
        )
        for line, d in decisions
    ]
    headers = ("request", "allowed", "route", "provider/model", "strategy", "est cost",
               "est p95", "confidence", "reason")  # fmt: skip
    return render_table(headers, rows)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _feature_rows(step: dict[str, Any]) -> list[tuple[str, str]]:
    """The prompt features a policy read (`request.text.*`), and how the complexity score
    was made: each term's value × weight."""
    rows: list[tuple[str, str]] = []
    for name, value in step["values"].items():
        shown = "yes" if value is True else "no" if value is False else str(value)
        rows.append(("feature", f"request.text.{name} = {shown}"))
    for called in step.get("plugins", ()):
        value = called["value"]
        shown = "yes" if value is True else "no" if value is False else str(value)
        why = f", fallback: {called['error']} {called['detail'] or ''}".rstrip()
        rows.append(
            (
                "plugin",
                f"request.features.{called['name']} = {shown}"
                f" ({called['us']:g}µs{why if called['error'] else ''})",
            )
        )
    made = step["complexity"]
    if made is not None:
        terms = " + ".join(f"{p['term']} {p['value']:g} × {p['weight']:g}" for p in made["parts"])
        capped = " (at most 1)" if made["score"] >= 1 else ""
        rows.append(("complexity", f"{made['score']:.2f} = {terms or '0'}{capped}"))
    return rows


def _shadow_row(s: Decision) -> str:
    """`candidate → anthropic/claude-haiku-4-5 ($0.0012, 900ms)`, or the shadow's denial."""
    if not s.allowed:
        return f"{s.route}: denied ({s.reason})"
    cost = money(s.estimated_cost) if s.estimated_cost is not None else "-"
    p95 = f"{s.estimated_latency_ms:.0f}ms" if s.estimated_latency_ms is not None else "-"
    return f"{s.route} → {s.provider}/{s.model} ({cost}, {p95}; logged, not served)"


def _capacity(status: LimitStatus, amount: Callable[[float], str]) -> str:
    """'100 per 1m': a limit and its window; '+ burst' when more than the limit is left (the
    bucket holds the limit and its burst)."""
    text = f"limit {amount(status.limit)}"
    if status.window_ms:
        text = f"{amount(status.limit)} per {format_duration(status.window_ms)}"
    return f"{text} + burst" if status.remaining > status.limit else text


def _affinity_row(d: Decision) -> str:
    a = d.affinity
    assert a is not None
    if a.key_hash is None:
        return "no key"
    if a.pinned:
        cached = f", {_count(a.cached_tokens)} input tokens at the cache-read price"
        return "pinned" + (cached if a.cached_tokens else "")
    return f"broken ({a.broken})" if a.broken else "not pinned"


def _vertical(d: Decision) -> str:
    alternatives = ", ".join(f"{a.provider}/{a.model} ({a.score:.2f})" for a in d.alternatives)
    fallbacks = " → ".join(f"{f['provider']}/{f['model']}" for f in d.fallbacks)
    rows: list[tuple[str, Any]] = [
        ("request", d.request_id),
        ("allowed", d.allowed),
        ("route", d.route),
        ("strategy", d.strategy),
        ("provider/model", f"{d.provider}/{d.model}" if d.allowed else None),
        *([("format", d.input_format)] if d.input_format != NATIVE else []),
        *([("deployment of", d.deployment_of)] if d.deployment_of else []),
        *([("arm", f"{d.experiment} → {d.arm}")] if d.experiment is not None else []),
        *([("explored", True)] if d.explored else []),
        *([("affinity", _affinity_row(d))] if d.affinity is not None else []),
        ("reason", d.reason),
        ("est cost", money(d.estimated_cost) if d.estimated_cost is not None else None),
        ("est p95", f"{d.estimated_latency_ms:.0f}ms" if d.estimated_latency_ms else None),
        ("confidence", f"{d.confidence:.2f}"),
        ("alternatives", alternatives or None),
        ("fallbacks", fallbacks or None),
        ("policy", d.policy_version),
    ]
    for status in d.rate_limits:
        who = f"{status.scope} {status.key}" if status.key else status.scope
        if status.unit != "requests":
            who += f" ({status.unit})"
        amount = money if status.unit == "spend" else _count
        if status.allowed:
            left = f"{amount(status.remaining)} left ({_capacity(status, amount)})"
            rows.append(("limit", f"{who}: {left}"))
        elif status.retry_after_ms is None:
            rows.append(("limit", f"{who}: the request is larger than the limit"))
        else:
            rows.append(("limit", f"{who}: exhausted, retry after {status.retry_after_ms} ms"))
    if isinstance(d.denied_by, DeniedByRule):
        rows.append(("denied by", f"deny at {d.denied_by.location} (when {d.denied_by.when})"))
    if isinstance(d.denied_by, DeniedByPolicyRequire):
        rows.append(("denied by", f"require at {d.denied_by.location}"))
    if isinstance(d.denied_by, NoEligibleModel | DeniedByPolicyRequire):
        for c in d.denied_by.candidates:
            rows.append(("dropped", f"{c.provider}/{c.model}: {c.dropped_because}"))
    if d.trace is not None and d.shadow is not None:
        rows.append(("shadow", _shadow_row(d.shadow)))
    if d.trace is not None:
        for step in d.trace:
            if step["step"] == "request":
                for derived in step["derived"]:
                    value = derived["value"]
                    shown = "yes" if value is True else str(value)
                    rows.append(("derived", f"{derived['field']} = {shown} ← {derived['from']}"))
            elif step["step"] == "features":
                rows.extend(_feature_rows(step))
            elif step["step"] == "route":
                verdict = "matched" if step["matched"] else "no match"
                when = f" when {step['when']}" if step["when"] else ""
                # the condition is the policy's own text: its line breaks are kept (each line
                # escaped below); everything else a row shows is printed on one line
                rows.append(("trace", PolicyLines(f"route {step['route']}{when}: {verdict}")))
            elif step["step"] == "split":
                rows.append(
                    (
                        "trace",
                        f"split {step['experiment']} by {step['by']}: arm {step['arm']}",
                    )
                )
            elif step["step"] == "drop":
                rows.append(
                    ("trace", f"drop {step['provider']}/{step['model']}: {step['because']}")
                )
            elif step["step"] == "affinity":
                pin = step["pin"]
                if step["pinned"]:
                    shown = f"pinned to {pin}"
                elif step["broken"] is not None:
                    shown = f"pin to {pin} broken ({step['broken']})"
                elif step["key_hash"] is None:
                    shown = "no key in this request"
                else:
                    shown = "no live pin: the strategy chooses"
                rows.append(("trace", f"affinity by {step['by']}: {shown}"))
            elif step["step"] == "explore":
                rows.append(
                    (
                        "trace",
                        f"explore {step['provider']}/{step['model']}: {step['samples']} of"
                        f" {step['min_samples']} samples, {money(step['cost'])}"
                        f" ({money(step['budget_left'])} of the budget left)",
                    )
                )
            elif step["step"] == "policy-require":
                when = f" when {step['when']}" if step["when"] else ""
                rows.append(
                    ("trace", PolicyLines(f"require {step['require']}{when} ({step['location']})"))
                )
            elif step["step"] == "deny":
                rows.append(
                    (
                        "trace",
                        PolicyLines(f"deny at {step['location']} when {step['when']}: matched"),
                    )
                )
            elif step["step"] == "limit":
                denied = step["denied_by"]
                who = f"{denied['scope']} {denied['key']}" if denied.get("key") else denied["scope"]
                rows.append(("trace", f"rate limited by {who}"))
            elif step["step"] == "choose":
                ranking = ", ".join(
                    f"{r['provider']}/{r['model']} {r['score']:.2f}" for r in step["ranking"]
                )
                rows.append(("trace", f"{step['strategy']} ranking: {ranking}"))
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        shown = "-" if value is None else ("yes" if value is True else "no" if value is False
                                           else str(value))  # fmt: skip
        if isinstance(value, PolicyLines):
            shown = "\n".join(printable(line) for line in value.split("\n"))
        else:
            shown = printable(shown)
        lines.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(lines)

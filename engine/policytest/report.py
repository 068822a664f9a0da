"""What `policyctl test` prints: each failure with the expected and actual values side by
side and their places, the coverage per policy file, the summary line; or all of it as
one JSON document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.policytest.coverage import FileCoverage
from engine.policytest.run import Failure, Outcome, Result
from engine.units import format_money


def _columns(rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def _seconds(ms: float) -> str:
    return f"{ms / 1000:g}s"


def _where(result: Result) -> str:
    return result.case.span.location()


def _decision_line(failure: Failure) -> str:
    d = failure.decision
    if d.allowed:
        what = f"allowed: route {d.route}, {d.provider}/{d.model}"
        if d.estimated_cost is not None:
            what += f", est. {format_money(d.estimated_cost)}"
    else:
        what = f"denied: route {d.route}"
    return f"  decision: {what}; {d.reason}"


def failure_text(result: Result) -> str:
    """One failed test: its place and name, which request failed, the expectations it did
    not meet (expected and actual side by side) and the decision."""
    failure = result.failure
    assert failure is not None
    lines = [f"FAIL {_where(result)}: {result.case.name}"]
    if failure.steps > 1 or failure.repeat > 1:
        lines.append(
            f"  step {failure.step} of {failure.steps} (at {_seconds(failure.at_ms)}),"
            f" request {failure.repetition} of {failure.repeat}"
        )
    rows = [["expectation", "field", "expected", "actual"]]
    for m in failure.mismatches:
        rows.append([m.place or _where(result), m.field, m.expected, m.actual])
    lines.extend(_columns(rows, "  "))
    lines.append(_decision_line(failure))
    return "\n".join(lines)


def coverage_text(files: Sequence[FileCoverage]) -> str:
    """Per policy file: the percentage, the uncovered lines, and what each missed."""
    covered = sum(f.covered for f in files)
    total = sum(f.total for f in files)
    percent = 100.0 if not total else 100.0 * covered / total
    lines = [f"coverage: {percent:.1f}% ({covered} of {total})"]
    for f in files:
        uncovered = f.uncovered_lines
        head = f"{f.file}: {f.percent:.1f}% ({f.covered} of {f.total})"
        if uncovered:
            head += ", not covered: lines " + ", ".join(str(n) for n in uncovered)
        lines.append(head)
        rows = [
            [f"{i.line}:{i.col}", i.kind, f"`{i.text}`", missing]
            for i in f.items
            if (missing := i.missing()) is not None
        ]
        if rows:
            lines.extend(_columns(rows, "  "))
    return "\n".join(lines)


def summary(outcome: Outcome) -> str:
    return f"{outcome.passed} passed, {outcome.failed} failed"


def text(outcome: Outcome, *, verbose: bool = False) -> str:
    """Failures (and with `verbose` the passing tests, one line each), the coverage, the
    summary line; blocks apart by a blank line."""
    parts: list[str] = []
    for result in outcome.results:
        if result.failure is not None:
            parts.append(failure_text(result))
        elif verbose:
            line = f"PASS {_where(result)}: {result.case.name}"
            if parts and parts[-1].startswith("PASS "):
                parts[-1] += "\n" + line
            else:
                parts.append(line)
    if outcome.coverage is not None:
        parts.append(coverage_text(outcome.coverage))
    parts.append(summary(outcome))
    return "\n\n".join(parts)


def _result_json(result: Result) -> dict[str, Any]:
    span = result.case.span
    out: dict[str, Any] = {
        "file": result.file,
        "line": span.line,
        "col": span.col,
        "name": result.case.name,
        "passed": result.passed,
    }
    failure = result.failure
    if failure is not None:
        out["failure"] = {
            "step": failure.step,
            "steps": failure.steps,
            "repetition": failure.repetition,
            "repeat": failure.repeat,
            "at_ms": failure.at_ms,
            "mismatches": [
                {"field": m.field, "expected": m.expected, "actual": m.actual, "at": m.place}
                for m in failure.mismatches
            ],
            "decision": failure.decision.to_dict(),
        }
    return out


def as_json(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tests": [_result_json(r) for r in outcome.results],
        "passed": outcome.passed,
        "failed": outcome.failed,
    }
    if outcome.coverage is not None:
        covered = sum(f.covered for f in outcome.coverage)
        total = sum(f.total for f in outcome.coverage)
        out["coverage"] = {
            "covered": covered,
            "total": total,
            "percent": round(100.0 if not total else 100.0 * covered / total, 1),
            "files": [f.to_dict() for f in outcome.coverage],
        }
    return out

"""`policyctl diff`'s output: one block per change (table), or a JSON document."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.policydiff.changes import WHATS, Change

_MARK = {"added": "+", "removed": "-", "changed": "~", "moved": "~"}


def _where(change: Change) -> str:
    if change.old_at and change.new_at:
        return f"{change.old_at} → {change.new_at}"
    return change.old_at or change.new_at or ""


def text(changes: Sequence[Change]) -> str:
    """`~ route eu  (a.policy:3:1 → b.policy:3:1)`, its details indented, then the
    example request and what each set decides for it; a summary line last."""
    lines: list[str] = []
    for c in changes:
        where = _where(c)
        head = f"{_MARK[c.kind]} {c.what} {c.name}".rstrip()
        lines.append(head + (f"  ({where})" if where else ""))
        lines += [f"    {d}" for d in c.details]
        if c.example is not None:
            lines.append(f"    for example {json.dumps(c.example.request)}")
            lines.append(f"      before: {c.example.old}")
            lines.append(f"      after:  {c.example.new}")
    lines.append(summary(changes))
    return "\n".join(lines)


def summary(changes: Sequence[Change]) -> str:
    if not changes:
        return "no changes"
    counts = Counter((c.what, c.kind) for c in changes)
    parts = []
    for what in WHATS:
        kinds = [f"{n} {kind}" for (w, kind), n in counts.items() if w == what]
        if kinds:
            parts.append(f"{what}: {', '.join(kinds)}")
    noun = "change" if len(changes) == 1 else "changes"
    return f"{len(changes)} {noun} ({'; '.join(parts)})"


def as_json(changes: Sequence[Change]) -> dict[str, Any]:
    return {
        "changed": len(changes),
        "changes": [
            {
                "what": c.what,
                "kind": c.kind,
                "name": c.name,
                "old_at": c.old_at,
                "new_at": c.new_at,
                "details": list(c.details),
                "example": None
                if c.example is None
                else {
                    "request": c.example.request,
                    "before": c.example.old,
                    "after": c.example.new,
                },
            }
            for c in changes
        ],
    }

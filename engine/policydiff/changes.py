"""What changed between two policy sets, statement by statement, without traffic.

Routes are matched by name, limits by what they limit (scope, key and unit), policy-wide
`require`s by their text and `deny` rules by their reason. A statement's content is
compared as its items' texts in `policyctl fmt`'s layout, without comments, so a
`policyctl fmt` run alone changes nothing. `examples.py` then looks for a request that
each change affects.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.catalog.views import CatalogDiff
from engine.catalog.views import diff as catalog_diff
from engine.language import ast
from engine.language.formatter import limit_terms, one_line
from engine.language.program import Program

# what a change is about, in the order the report lists them
WHATS = ("catalog", "defaults", "deny", "require", "route", "limit", "alert")


@dataclass(frozen=True, slots=True)
class Example:
    """A request the change affects: what each policy set decides for it."""

    request: dict[str, object]  # the JSON a user sends
    old: str  # `route eu → mistral/mistral-medium-latest`, or `denied: …`
    new: str


@dataclass(frozen=True, slots=True)
class Change:
    what: str  # one of WHATS
    kind: str  # added | removed | changed | moved
    name: str  # a route's name, `user "vip" (requests)`, a deny's `"reason"`, a require's text
    old_at: str | None  # file:line:col in the old set
    new_at: str | None  # file:line:col in the new set
    details: tuple[str, ...] = ()  # `- prefer openai`, `+ prefer anthropic`, `when: a → b`
    example: Example | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A loaded policy set: its parsed files and the program compiled from them."""

    files: tuple[ast.PolicyFile, ...]
    program: Program

    def statements(self) -> Iterable[ast.Statement]:
        for f in self.files:
            yield from f.statements


def normalised(
    node: ast.Expr | ast.RouteItem | ast.Limit | ast.PolicyRequire | ast.Deny | None,
) -> str:
    """A node's text on one line in the canonical layout, without comments (None: the
    empty text): how it was written (spacing, comments, parentheses) does not count."""
    if node is None:
        return ""
    return one_line(node)


def structural_changes(old: PolicySet, new: PolicySet) -> list[Change]:
    """Every change, examples not yet looked for, in the order of `WHATS`."""
    changes: list[Change] = []
    changes += _catalog(old.program, new.program)
    changes += _defaults(old, new)
    changes += _denies(old, new)
    changes += _requires(old, new)
    changes += _routes(old, new)
    changes += _limits(old, new)
    changes += _alerts(old, new)
    return changes


def _lines_diff(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """`- x` for what went, `+ y` for what came, in order (a moved item is both)."""
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=list(before), b=list(after), autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        out += [f"- {line}" for line in before[a0:a1]]
        out += [f"+ {line}" for line in after[b0:b1]]
    return out


# ---------------------------------------------------------------- catalog and defaults


def catalog_changes(old: Program, new: Program) -> CatalogDiff:
    return catalog_diff(old.catalog, new.catalog)


def _catalog(old: Program, new: Program) -> list[Change]:
    found = catalog_changes(old, new)
    if found.same:
        return []
    details = (
        [f"+ {m.key}" for m in found.added]
        + [f"- {m.key}" for m in found.removed]
        + [
            f"~ {c.key}: " + "; ".join(f"{x.field} {x.old} → {x.new}" for x in c.changes)
            for c in found.changed
        ]
    )
    summary = (
        f"{len(found.added)} added, {len(found.removed)} removed, {len(found.changed)} changed"
    )
    return [Change("catalog", "changed", summary, None, None, tuple(details))]


def _defaults_items(s: PolicySet) -> tuple[list[str], str | None]:
    items: list[str] = []
    at: str | None = None
    for stmt in s.statements():
        if isinstance(stmt, ast.Defaults):
            items += [normalised(setting) for setting in stmt.settings]
            at = at or stmt.span.location()
    return items, at


def _defaults(old: PolicySet, new: PolicySet) -> list[Change]:
    before, old_at = _defaults_items(old)
    after, new_at = _defaults_items(new)
    if before == after:
        return []
    kind = "added" if old_at is None else "removed" if new_at is None else "changed"
    details = tuple(_lines_diff(before, after))
    return [Change("defaults", kind, "", old_at, new_at, details)]


# ---------------------------------------------------------------- policy-wide rules


def _denies(old: PolicySet, new: PolicySet) -> list[Change]:
    def rules(s: PolicySet) -> dict[str, ast.Deny]:
        return {str(d.reason.value): d for d in s.statements() if isinstance(d, ast.Deny)}

    before, after = rules(old), rules(new)
    out: list[Change] = []
    for reason, rule in after.items():
        name = f'"{reason}"'
        if reason not in before:
            out.append(Change("deny", "added", name, None, rule.span.location(),
                              (f"when {normalised(rule.when)}",)))  # fmt: skip
        elif normalised(before[reason].when) != normalised(rule.when):
            detail = f"when: {normalised(before[reason].when)} → {normalised(rule.when)}"
            out.append(Change("deny", "changed", name, before[reason].span.location(),
                              rule.span.location(), (detail,)))  # fmt: skip
    for reason, rule in before.items():
        if reason not in after:
            out.append(Change("deny", "removed", f'"{reason}"', rule.span.location(), None,
                              (f"when {normalised(rule.when)}",)))  # fmt: skip
    return out


def _requires(old: PolicySet, new: PolicySet) -> list[Change]:
    def rules(s: PolicySet) -> dict[str, ast.PolicyRequire]:
        return {
            normalised(r).removeprefix("require "): r
            for r in s.statements()
            if isinstance(r, ast.PolicyRequire)
        }

    before, after = rules(old), rules(new)
    out = [
        Change("require", "added", text, None, r.span.location())
        for text, r in after.items()
        if text not in before
    ]
    out += [
        Change("require", "removed", text, r.span.location(), None)
        for text, r in before.items()
        if text not in after
    ]
    return out


# ---------------------------------------------------------------- routes


def routes_of(s: PolicySet) -> dict[str, ast.Route]:
    return {r.name.text: r for r in s.statements() if isinstance(r, ast.Route)}


def _dispatch_order(s: PolicySet) -> list[str]:
    """The route names tried in file order (an experiment's arms are not)."""
    return [r.name for r in s.program.dispatch]


def _routes(old: PolicySet, new: PolicySet) -> list[Change]:
    before, after = routes_of(old), routes_of(new)
    out: list[Change] = []
    moved = _moved(_dispatch_order(old), _dispatch_order(new))
    for name, route in after.items():
        at = route.span.location()
        if name not in before:
            when = normalised(route.when) or "every request"
            out.append(Change("route", "added", name, None, at, (f"when {when}",)))
            continue
        was = before[name]
        details: list[str] = []
        if normalised(was.when) != normalised(route.when):
            a = normalised(was.when) or "every request"
            b = normalised(route.when) or "every request"
            details.append(f"when: {a} → {b}")
        details += _lines_diff(
            [normalised(i) for i in was.items], [normalised(i) for i in route.items]
        )
        if name in moved:
            details.append(moved[name])
        if details:
            kind = "changed" if len(details) > 1 or name not in moved else "moved"
            out.append(Change("route", kind, name, was.span.location(), at, tuple(details)))
    for name, route in before.items():
        if name not in after:
            out.append(Change("route", "removed", name, route.span.location(), None))
    return out


def _moved(before: list[str], after: list[str]) -> dict[str, str]:
    """The routes in both whose place among the others changed (the fewest: those off a
    longest common subsequence), each with where it is tried now."""
    common = set(before) & set(after)
    a = [n for n in before if n in common]
    b = [n for n in after if n in common]
    kept: set[str] = set()
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        kept.update(a[block.a : block.a + block.size])
    out: dict[str, str] = {}
    for i, name in enumerate(b):
        if name in kept:
            continue
        if i + 1 < len(b):
            out[name] = f"moved: now tried before `{b[i + 1]}`"
        else:
            out[name] = f"moved: now tried after `{b[i - 1]}`"
    return out


# ---------------------------------------------------------------- limits


def limit_name(limit: ast.Limit) -> str:
    """What a limit limits: `user`, `user "vip" (tokens)`, `team = request.metadata.team`."""
    name = limit.scope.text
    if limit.key_expr is not None:
        name += f" = {limit.key_expr.dotted}"
    if limit.key is not None:
        name += f" {limit.key.text}"
    unit = limit.unit.text if limit.unit is not None else "requests"
    return f"{name} ({unit})"


def _limit_text(limit: ast.Limit) -> str:
    """The limit's terms after what it limits: `100 per 1m burst 10 when …`, `8 lease 5m`,
    led by `shadow` for a shadow limit (which enforcing changes)."""
    return ("shadow " if limit.shadow else "") + limit_terms(limit)


def _limits(old: PolicySet, new: PolicySet) -> list[Change]:
    def by_name(s: PolicySet) -> dict[str, list[ast.Limit]]:
        out: dict[str, list[ast.Limit]] = {}
        for stmt in s.statements():
            if isinstance(stmt, ast.Limit):
                out.setdefault(limit_name(stmt), []).append(stmt)
        return out

    before, after = by_name(old), by_name(new)
    out: list[Change] = []
    for name in [*after, *(n for n in before if n not in after)]:
        was = {_limit_text(lim): lim for lim in before.get(name, [])}
        now = {_limit_text(lim): lim for lim in after.get(name, [])}
        gone = [t for t in was if t not in now]
        came = [t for t in now if t not in was]
        # pair what went with what came, in order: a changed limit; the rest added/removed
        for a, b in zip(gone, came, strict=False):
            out.append(Change("limit", "changed", name, was[a].span.location(),
                              now[b].span.location(), (f"{a} → {b}",)))  # fmt: skip
        for b in came[len(gone) :]:
            out.append(Change("limit", "added", name, None, now[b].span.location(), (b,)))
        for a in gone[len(came) :]:
            out.append(Change("limit", "removed", name, was[a].span.location(), None, (a,)))
    return out


# ---------------------------------------------------------------- alerts


def _alerts(old: PolicySet, new: PolicySet) -> list[Change]:
    """Alerts matched by name (unique in a set: E0706); what follows the name compared."""

    def by_name(s: PolicySet) -> dict[str, ast.Alert]:
        return {str(a.name.value): a for a in s.statements() if isinstance(a, ast.Alert)}

    def terms(alert: ast.Alert) -> str:  # `when p95 > 3s over 5m for 5m`
        return one_line(alert).removeprefix(f"alert {alert.name.text} ")

    before, after = by_name(old), by_name(new)
    out: list[Change] = []
    for name, alert in after.items():
        at, shown = alert.span.location(), f'"{name}"'
        if name not in before:
            out.append(Change("alert", "added", shown, None, at, (terms(alert),)))
        elif terms(before[name]) != terms(alert):
            detail = f"{terms(before[name])} → {terms(alert)}"
            out.append(Change("alert", "changed", shown, before[name].span.location(), at,
                              (detail,)))  # fmt: skip
    for name, alert in before.items():
        if name not in after:
            out.append(Change("alert", "removed", f'"{name}"', alert.span.location(), None,
                              (terms(alert),)))  # fmt: skip
    return out

"""Requests that show a change: candidates from the static analysis, decided by both sets.

For each change the candidates are the requests inside the boxes of the conditions it
touches (a route's `when` in either set, a rule's `when`, the routes tried before it), as
`check` builds its counterexamples (`engine.language.conditions`), plus the empty request.
Each candidate is decided under both policy sets, with no limits and no measurements (the
catalog's priors), and the first one whose route, model or verdict differs in a way that
involves the change is its example. A change with none found has no example: the
analysis is sound but not complete (a condition it cannot express yields no candidate),
and a change of limits alone decides nothing differently here (limits are compared as
text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import PolicyctlError
from engine.language import ast
from engine.language.conditions import DOMAINS, admits, witness
from engine.language.domain import Box, TooComplex, box_and, subtract
from engine.policydiff.changes import Change, Example, PolicySet, routes_of
from engine.routing.evaluator import evaluate
from engine.routing.request import env_of

_TRIES = 32  # boxes tried per condition
_BUDGET = 2000  # boxes one condition may grow to


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a policy set decides for a request, as far as a diff cares."""

    allowed: bool
    route: str
    model: str | None  # provider/model
    reason: str

    def differs(self, other: Outcome) -> bool:
        """Another route, model or verdict, or another reason to deny."""
        mine = (self.allowed, self.route, self.model)
        if mine != (other.allowed, other.route, other.model):
            return True
        return not self.allowed and self.reason != other.reason

    def text(self) -> str:
        if not self.allowed:
            route = f"route {self.route}: " if self.route else ""
            return f"{route}denied: {self.reason}"
        return f"route {self.route} → {self.model}"


def decide(policy: PolicySet, request: dict[str, Any]) -> Outcome | None:
    """The decision of a candidate request (None when it is not a valid request)."""
    try:
        env = env_of({**request, "id": "diff-example"})
    except PolicyctlError:
        return None
    d = evaluate(policy.program, env)
    model = f"{d.provider}/{d.model}" if d.allowed else None
    return Outcome(d.allowed, d.route, model, d.reason)


def _admitted(expr: ast.Expr | None, over: bool) -> list[Box] | None:
    try:
        return admits(expr, over=over, budget=_BUDGET)
    except TooComplex:
        return None


def _requests(boxes: list[Box] | list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for box in boxes[:_TRIES]:
        found = witness(box)
        if found is not None:
            yield found.request


def _boxes_of(expr: ast.Expr | None) -> Iterator[dict[str, Any]]:
    """Requests inside the condition's boxes, under-approximation first."""
    for over in (False, True):
        boxes = _admitted(expr, over)
        if boxes is not None:
            yield from _requests(boxes)


def _either_not_both(a: ast.Expr | None, b: ast.Expr | None) -> Iterator[dict[str, Any]]:
    """Requests one condition admits and the other does not (a changed `when`)."""
    for this, that in ((a, b), (b, a)):
        over, under = _admitted(this, True), _admitted(that, False)
        if over is None or under is None:
            continue
        try:
            left = subtract(over, under, DOMAINS, _BUDGET)
        except TooComplex:
            continue
        yield from _requests(left)


def _conditions(change: Change, old: PolicySet, new: PolicySet) -> list[ast.Expr | None]:
    """The conditions whose requests may show the change."""
    if change.what == "route":
        out: list[ast.Expr | None] = []
        for s in (old, new):
            route = routes_of(s).get(change.name)
            if route is not None:
                out.append(route.when)
                for item in route.items:  # a require reading the request
                    if isinstance(item, ast.Require):
                        out.append(item.condition)
        return out
    if change.what in ("deny", "require"):
        found: list[ast.Expr | None] = []
        for s in (old, new):
            for stmt in s.statements():
                if isinstance(stmt, ast.Deny) and f'"{stmt.reason.value}"' == change.name:
                    found.append(stmt.when)
                if isinstance(stmt, ast.PolicyRequire) and change.what == "require":
                    found.append(stmt.when)
        return found
    if change.what in ("defaults", "catalog"):
        # the requests every route takes: the routes' conditions, the default route last
        return [r.when for s in (old, new) for r in routes_of(s).values()] + [None]
    return []


def _involves(change: Change, old: Outcome, new: Outcome, unchanged: frozenset[str]) -> bool:
    if change.what == "route":
        return change.name in (old.route, new.route)
    if change.what == "deny":
        reason = change.name.strip('"')
        return any(o.reason.endswith(f": {reason}") for o in (old, new))
    if change.what in ("defaults", "catalog"):  # the same route, unchanged, decides otherwise
        return old.route == new.route and old.route in unchanged
    return True


def _overlaps(route: ast.Route, others: list[ast.Route]) -> Iterator[dict[str, Any]]:
    """Requests the route matches together with another route (a move shows on them)."""
    mine = _admitted(route.when, False) or []
    for other in others:
        theirs = _admitted(other.when, False) or []
        both = [b for x in mine[:_TRIES] for y in theirs[:_TRIES] if (b := box_and(x, y))]
        yield from _requests(both)


def _candidates(change: Change, old: PolicySet, new: PolicySet) -> Iterator[dict[str, Any]]:
    if change.what == "route":
        before, after = routes_of(old).get(change.name), routes_of(new).get(change.name)
        if before is not None and after is not None:
            yield from _either_not_both(before.when, after.when)
        for s, route in ((new, after), (old, before)):
            if route is not None:
                others = [r for n, r in routes_of(s).items() if n != change.name]
                yield from _overlaps(route, others)
    for condition in [*_conditions(change, old, new), None]:
        yield from _boxes_of(condition)


def find_example(
    change: Change, old: PolicySet, new: PolicySet, unchanged: frozenset[str] = frozenset()
) -> Example | None:
    """A candidate request decided differently in a way that involves the change; of the
    first few found, one that some set allows, if any (a denial on both sides shows less)."""
    if change.what in ("limit", "alert"):  # neither decides a request differently here
        return None
    seen: set[str] = set()
    found: list[tuple[Outcome, Outcome, dict[str, Any]]] = []
    for request in _candidates(change, old, new):
        key = json.dumps(request, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        a, b = decide(old, request), decide(new, request)
        if a is None or b is None or not a.differs(b) or not _involves(change, a, b, unchanged):
            continue
        found.append((a, b, request))
        if a.allowed or b.allowed or len(found) >= _TRIES:
            break
    if not found:
        return None
    a, b, request = max(found, key=lambda f: f[0].allowed + f[1].allowed)
    return Example(request, a.text(), b.text())


def with_examples(changes: list[Change], old: PolicySet, new: PolicySet) -> list[Change]:
    touched = {c.name for c in changes if c.what == "route"}
    unchanged = frozenset(
        {r.name for r in old.program.routes} - touched | {old.program.default_route.name}
    )
    return [replace(c, example=find_example(c, old, new, unchanged)) for c in changes]

"""Static analysis of a compiled policy set: warnings with, where one exists, a request
that shows them (a counterexample a user can pass to `policyctl eval`).

Conditions are reasoned about as unions of boxes over the typed request schema
(`engine.language.conditions`): intervals for numbers, finite and cofinite sets for strings,
booleans and tags. What a box cannot express is unknown, and unknown is never evidence:
a route is called shadowed only when an over-approximation of what it matches lies inside
an under-approximation of what the earlier routes match. Every counterexample is run
through the compiled conditions before it is shown. docs/analysis.md has the trade-off.

Codes: W0500 shadowed route, W0503 contradictory condition, W0504 a route no catalog model
can serve, W0505 requests a route takes and cannot serve, W0506 a limit that never applies
(a key no request has) or never binds (a tighter limit always denies first), W0507 a
scope's default limit that keyed limits always replace, W0508 a fallback naming what the
route excludes.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.diagnostics import Diagnostic, Span
from engine.language import ast
from engine.language.compiler import resolve_ref
from engine.language.conditions import (
    DOMAINS,
    Witness,
    admits,
    dims_of,
    environment,
    witness,
)
from engine.language.domain import Box, Budget, FinSet, TooComplex, box_and, subtract
from engine.language.program import CompiledLimit, CompiledRoute, Program
from engine.language.schema import NEEDS

BUDGET = 4000  # boxes one question may hold at a time
WORK = 20_000  # box operations one analysis may spend in all (then it says no more)
_TRIES = 64  # boxes tried for a counterexample


@dataclass
class _Analysis:
    program: Program
    work: Budget
    found: list[Diagnostic]

    def warn(
        self,
        code: str,
        message: str,
        span: Span,
        help: str,
        example: dict[str, Any] | None,
        shows: str = "for example",
    ) -> None:
        text = None if example is None else json.dumps(example)
        if text is not None:
            help = f"{help}; {shows} {text}"
        self.found.append(
            Diagnostic(code, message, span, help, severity="warning", counterexample=text)
        )


def analyse(files: Sequence[ast.PolicyFile], program: Program) -> list[Diagnostic]:
    """Every analysis warning of a policy set that compiled."""
    run = _Analysis(program, Budget(WORK), [])
    routes = [s for f in files for s in f.statements if isinstance(s, ast.Route)]
    limits = [s for f in files for s in f.statements if isinstance(s, ast.Limit)]
    for node in [r.when for r in routes] + [lim.when for lim in limits]:
        if node is not None:
            _contradictions(run, node)
    _routes(run, routes)
    _limits(run, limits)
    return run.found


# ---------------------------------------------------------------- W0503


def _contradictions(run: _Analysis, expr: ast.Expr) -> None:
    """W0503: the outermost parts of a condition that no request satisfies."""
    if not isinstance(expr, ast.BoolOp | ast.Not):
        return  # one test alone (`x in []`) says what it means; W0503 is about parts
    try:
        empty = not admits(expr, over=True, budget=BUDGET)
    except TooComplex:
        return
    if empty:
        for part in _parts(expr):
            try:
                if not admits(part, over=True, budget=BUDGET):
                    _contradictions(run, part)  # the smallest part that cannot hold
                    return
            except TooComplex:
                break
        text = " ".join(expr.span.text().split())
        shown = f"`{text}`" if len(text) <= 60 else "this condition"
        run.warn(
            "W0503",
            f"{shown} is never true",
            expr.span,
            "no request satisfies all of its parts at once",
            None,
        )
        return
    for part in _parts(expr):
        _contradictions(run, part)


def _parts(expr: ast.Expr) -> list[ast.Expr]:
    """The combined parts of a condition (tests alone are not looked into)."""
    if isinstance(expr, ast.BoolOp):
        found = list(expr.operands)
    elif isinstance(expr, ast.Not):
        found = [expr.operand]
    else:
        found = []
    return [p for p in found if isinstance(p, ast.BoolOp | ast.Not)]


# ---------------------------------------------------------------- routes


def _first(routes: Sequence[CompiledRoute], env: dict[str, Any]) -> int | None:
    for i, route in enumerate(routes):
        if route.when is None or route.when(env, None):
            return i
    return None


def _example(boxes: Iterable[Box], accept: Callable[[Witness], bool]) -> dict[str, Any] | None:
    for i, box in enumerate(boxes):
        if i >= _TRIES:
            break
        found = witness(box)
        if found is not None and accept(found):
            return found.request
    return None


def _routes(run: _Analysis, routes: list[ast.Route]) -> None:
    # the routes tried in file order: an experiment's arms are reached only through it
    routes = [r for r, c in zip(routes, run.program.routes, strict=True) if not c.arm_of]
    compiled = run.program.dispatch
    tested = [dims_of(r.when) for r in routes]
    covers: list[Box] = []  # requests an earlier route surely takes
    owners: list[tuple[ast.Route, list[Box]]] = []
    for i, (route, comp) in enumerate(zip(routes, compiled, strict=True)):
        try:
            over = admits(route.when, over=True, budget=BUDGET)
            under = admits(route.when, over=False, budget=BUDGET)
        except TooComplex:
            over, under = None, []
        if over == []:
            continue  # never matches: W0503 says so
        left: list[Box] | None = None
        if over is not None:
            try:
                left = subtract(over, covers, DOMAINS, BUDGET, run.work)
            except TooComplex:
                left = None
        if left == []:
            _shadowed(run, route, i, over or [], under, owners)
        elif comp.split is None:  # a splitting route has no models of its own
            region = left if left is not None else (over or [])
            reaches = _reaches(compiled, i)
            _unservable(run, route, comp, region, reaches)
            others = set().union(*(d for j, d in enumerate(tested) if j != i))
            _needs(run, route, comp, region, reaches, others)
            _fallbacks(run, route, comp, region, reaches)
        covers.extend(under)
        owners.append((route, under))


def _reaches(compiled: Sequence[CompiledRoute], i: int) -> Callable[[Witness], bool]:
    return lambda w: _first(compiled, w.env) == i


def _shadowed(
    run: _Analysis,
    route: ast.Route,
    i: int,
    over: list[Box],
    under: list[Box],
    owners: list[tuple[ast.Route, list[Box]]],
) -> None:
    """W0500: every request the route matches is taken by an earlier route."""
    compiled = run.program.dispatch
    takers: list[ast.Route] = []
    alone: ast.Route | None = None
    rest: list[Box] = list(over)
    for r, boxes in owners:
        if alone is None and not _left(run, over, boxes):
            alone = r
        if rest and any(box_and(a, b) is not None for a in boxes for b in rest):
            takers.append(r)
            rest = _left(run, rest, boxes)
    this = compiled[i]

    def taken(w: Witness) -> bool:  # it matches this route, and an earlier one takes it
        first = _first(compiled, w.env)
        return (this.when is None or this.when(w.env, None)) and first is not None and first < i

    example = _example(under, taken) or _example(over, taken)
    if alone is not None or len(takers) == 1:
        r = alone or takers[0]
        what = "every request" if r.when is None or _always(r.when) else "every request it matches"
        help = f"route `{r.name.text}` at {r.span.location()} takes {what} first"
    elif takers:
        names = ", ".join(f"`{r.name.text}` ({r.span.location()})" for r in takers)
        help = f"earlier routes {names} take every request it matches"
    else:  # the budget ran out naming them
        help = "the routes before it take every request it matches"
    shows = "for example"
    if example is not None:
        first = _first(compiled, environment(example))
        shows = f"this request goes to route `{compiled[first].name}`:"  # type: ignore[index]
    message = f"route `{route.name.text}` is unreachable"
    run.warn("W0500", message, route.name.span, help, example, shows)


def _left(run: _Analysis, boxes: list[Box], covers: list[Box]) -> list[Box]:
    try:
        return list(subtract(boxes, covers, DOMAINS, BUDGET, run.work))
    except TooComplex:
        return list(boxes)


def _always(expr: ast.Expr) -> bool:
    return isinstance(expr, ast.Literal) and expr.value is True


def _unservable(
    run: _Analysis,
    route: ast.Route,
    comp: CompiledRoute,
    region: list[Box],
    reaches: Callable[[Witness], bool],
) -> None:
    """W0504: prefer, exclude and catalog-only `require`s leave no model."""
    if comp.candidates or any(
        isinstance(i, ast.Require) and isinstance(i.condition, ast.Literal) for i in route.items
    ):
        return  # `require false`: a route that denies on purpose
    example = _example(region, reaches)
    run.warn(
        "W0504",
        f"no catalog model can serve route `{route.name.text}`",
        route.name.span,
        "its `prefer`, `exclude` and `require` leave no model, so every request it takes is denied",
        example,
    )


def _needs(
    run: _Analysis,
    route: ast.Route,
    comp: CompiledRoute,
    region: list[Box],
    reaches: Callable[[Witness], bool],
    routed_on: set[str],
) -> None:
    """W0505: requests the route takes that need a capability none of its models has,
    although the catalog has models that do, and another route tests (`routed_on`): the
    policy has a place for them, and this route takes them first."""
    if not comp.candidates:
        return
    catalog = run.program.catalog
    for name, capability in NEEDS.items():
        dim = "request." + name
        if dim not in routed_on:
            continue
        if any(capability in m.supports for m in comp.candidates):
            continue
        if not any(capability in m.supports for m in catalog.models):
            continue
        wants = FinSet(frozenset({True}), False, False)
        if all(box.get(dim) == wants for box in region):
            continue  # the route asks for it itself: W0501's case
        boxes = [b for box in region if (b := box_and(box, {dim: wants})) is not None]
        if not boxes:
            continue
        example = _example(boxes, lambda w, name=name: reaches(w) and w.env[name] is True)
        if example is None:
            continue
        run.warn(
            "W0505",
            f"requests that need {capability} and reach route `{route.name.text}` are denied",
            route.name.span,
            f"none of its models supports {capability}, although the catalog has models that"
            f" do: route them first, or prefer a model with {capability}",
            example,
        )


def _fallbacks(
    run: _Analysis,
    route: ast.Route,
    comp: CompiledRoute,
    region: list[Box],
    reaches: Callable[[Witness], bool],
) -> None:
    """W0508: a `fallback` entry whose every model the route excludes."""
    catalog = run.program.catalog
    excluded: set[str] = set()
    for item in route.items:
        if isinstance(item, ast.Exclude):
            for ref in item.refs:
                excluded.update(m.key for m in resolve_ref(ref, catalog))
    if not excluded:
        return
    for item in route.items:
        if not isinstance(item, ast.FallbackSetting):
            continue
        for ref in item.refs:
            models = resolve_ref(ref, catalog)
            if not models or not all(m.key in excluded for m in models):
                continue
            what = "provider" if ref.model is None else "model"
            run.warn(
                "W0508",
                f"fallback {what} `{ref.text}` is excluded by route `{route.name.text}`",
                ref.span,
                "an excluded model is never tried, not even as a fallback: drop it from"
                " `fallback` or stop excluding it",
                _example(region, reaches),
            )


# ---------------------------------------------------------------- limits


def _limits(run: _Analysis, limits: list[ast.Limit]) -> None:
    compiled = run.program.limits
    pairs = list(zip(limits, compiled, strict=True))
    for lim, comp in pairs:
        if comp.scope == "ip" and comp.key is not None and not _is_ip(comp.key):
            run.warn(
                "W0506",
                f"limit `{comp.name}` never applies: `{comp.key}` is not an IP address",
                lim.key.span if lim.key is not None else lim.span,
                "requests carry a valid IPv4 or IPv6 address in `ip`",
                None,
            )
        else:
            tighter = _tighter(comp, pairs)
            if tighter is not None:
                run.warn(
                    "W0506",
                    f"limit `{comp.name}` is never reached",
                    lim.span,
                    f"the limit at {tighter.span.location()} applies to the same requests,"
                    " holds no more and refills no faster, so it always denies first",
                    None,
                )
    _replaced(run, pairs)


def _same_reach(a: CompiledLimit, alim: ast.Limit, b: CompiledLimit, blim: ast.Limit) -> bool:
    """`a` applies to every request `b` applies to (same scope, unit and key)."""
    if (a.scope, a.unit, a.key) != (b.scope, b.unit, b.key):
        return False
    if a.scope not in ("global", "user", "ip", "provider", "model") and (
        alim.key_expr is None
        or blim.key_expr is None
        or alim.key_expr.dotted != blim.key_expr.dotted
    ):
        return False
    if alim.when is not None and (
        blim.when is None or alim.when.span.text() != blim.when.span.text()
    ):
        return False
    return a.until is None or (b.until is not None and a.until >= b.until)


def _tighter(comp: CompiledLimit, pairs: list[tuple[ast.Limit, CompiledLimit]]) -> ast.Limit | None:
    """A different limit that always applies with `comp` and never lets more through."""
    own = next(lim for lim, c in pairs if c is comp)
    for lim, other in pairs:
        if other is comp or not _same_reach(other, lim, comp, own):
            continue
        rate, own_rate = other.amount / other.window_ms, comp.amount / comp.window_ms
        if other.capacity <= comp.capacity and rate <= own_rate:
            strictly = other.capacity < comp.capacity or rate < own_rate
            earlier = pairs.index((lim, other)) < pairs.index((own, comp))
            if strictly or earlier:  # two equal limits: the later one is the idle one
                return lim
    return None


def _replaced(run: _Analysis, pairs: list[tuple[ast.Limit, CompiledLimit]]) -> None:
    """W0507: a `provider` or `model` default limit with a keyed limit (always active) for
    every key the catalog has: `applicable()` never reaches the default."""
    catalog = run.program.catalog
    universe = {
        "provider": set(catalog.providers),
        "model": {m.model_key for m in catalog.models},
    }
    for lim, comp in pairs:
        if comp.key is not None or comp.scope not in universe:
            continue
        keyed = {
            c.key
            for _, c in pairs
            if c.scope == comp.scope
            and c.unit == comp.unit
            and c.key is not None
            and c.when is None
            and c.until is None
        }
        if universe[comp.scope] and universe[comp.scope] <= keyed:
            run.warn(
                "W0507",
                f"limit `{comp.name}` never applies",
                lim.span,
                f"a keyed `{comp.scope}` limit replaces it for every {comp.scope} of the"
                " catalog: drop it, or drop a keyed limit",
                None,
            )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

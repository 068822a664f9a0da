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
route excludes, W0509 quality read over a catalog with no quality scores, W0511 a `deny`
rule that denies every request, W0512 a quality factor over models of which some have no
score, W0513 an alert that can never fire, W0514 an alert on models no route can choose,
W0515 a test its field's range decides (`request.complexity > 1.5`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.diagnostics import Diagnostic, Span
from engine.language import ast
from engine.language.compiler import paths_in, resolve_ref
from engine.language.conditions import (
    DOMAINS,
    RangeTest,
    Witness,
    admits,
    dims_of,
    environment,
    range_test,
    witness,
)
from engine.language.domain import Box, Budget, FinSet, TooComplex, box_and, subtract
from engine.language.program import AlertRule, CompiledLimit, CompiledRoute, Program
from engine.language.schema import NEEDS, REQUEST_FIELDS
from engine.language.signals import SIGNALS
from engine.vocabulary import CONCURRENT, Unit

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
    policy_wide = [
        s for f in files for s in f.statements if isinstance(s, ast.Deny | ast.PolicyRequire)
    ]
    conditions = [r.when for r in routes] + [lim.when for lim in limits]
    conditions += [rule.when for rule in policy_wide]
    decided = [_decided(run, node) for node in conditions if node is not None]
    never = {id(test) for tests in decided for test in tests}
    for node in conditions:
        if node is not None:
            _contradictions(run, node, never)
    for rule in policy_wide:
        if isinstance(rule, ast.Deny):
            _denies_all(run, rule)
    _routes(run, routes)
    _limits(run, limits)
    _quality(run, files)
    alerts = [s for f in files for s in f.statements if isinstance(s, ast.Alert)]
    for node, rule in zip(alerts, program.alerts, strict=True):
        _alert(run, node, rule)
    return run.found


def _alert(run: _Analysis, node: ast.Alert, rule: AlertRule) -> None:
    """W0513: an alert that can never fire; W0514: one on models no route can choose."""
    spec = SIGNALS[rule.signal]
    t = rule.threshold
    out_of_range = (
        (rule.op == ">" and t >= spec.highest)
        or (rule.op == ">=" and t > spec.highest)
        or (rule.op == "<" and t <= spec.lowest)
        or (rule.op == "<=" and t < spec.lowest)
    )
    if out_of_range:
        run.warn(
            "W0513",
            f"alert {node.name.text} can never fire",
            node.threshold.span,
            f"`{rule.signal}` is never {rule.op} {rule.threshold_text}",
            None,
        )
        return
    if rule.signal == "violations":
        scopes = {limit.scope for limit in run.program.limits}
        scope = rule.split_by if rule.split_by is not None else None
        if not scopes or (scope is not None and scope not in scopes):
            what = "no `limit`" if scope is None else f"no `limit {scope} …`"
            run.warn(
                "W0513",
                f"alert {node.name.text} can never fire",
                node.signal.span,
                f"the policy set has {what}: nothing counts as a violation",
                None,
            )
        return
    if rule.models:
        program = run.program
        chosen = {m.key for route in program.routes for m in route.candidates}
        if not any(route.when is None for route in program.dispatch):  # `default` is reached
            chosen |= {m.key for m in program.default_route.candidates}
        if not rule.models & chosen:
            run.warn(
                "W0514",
                f"alert {node.name.text} watches `{rule.subject}`, which no route can choose",
                node.signal.subject.span if node.signal.subject is not None else node.span,
                "it has no outcomes to measure: alert on a model a route prefers, or on"
                " `provider` or `model` to watch each one",
                None,
            )


# ---------------------------------------------------------------- W0515


def _tests(expr: ast.Expr) -> Iterable[ast.Compare]:
    """The comparisons of a condition, at any depth."""
    if isinstance(expr, ast.BoolOp):
        for operand in expr.operands:
            yield from _tests(operand)
    elif isinstance(expr, ast.Not):
        yield from _tests(expr.operand)
    elif isinstance(expr, ast.Compare):
        yield expr


def _decided(run: _Analysis, expr: ast.Expr) -> list[ast.Compare]:
    """W0515: the tests of a number field that its range alone decides (never true, or
    true for every request). Returns the ones never true (W0503 does not repeat them)."""
    never: list[ast.Compare] = []
    for test in _tests(expr):
        found = range_test(test)
        if found is None:
            continue
        if found.never():
            never.append(test)
            verdict = "never true"
        elif found.always():
            verdict = "always true"
        else:
            continue
        field = found.field.dotted
        run.warn(
            "W0515",
            f"`{' '.join(test.span.text().split())}` is {verdict}: `{field}` is"
            f" {_range_text(found)}",
            test.span,
            f"no request has such a `{field}`: compare it with a value inside that range"
            if verdict == "never true"
            else "every request passes it: drop the test, or compare with a value that splits"
            " the range",
            None,
        )
    return never


def _range_text(found: RangeTest) -> str:
    """'from 0 to 1', '0 or more', 'more than 0': a field's range, as a policy writes it."""
    (part,) = found.domain.parts
    kind = REQUEST_FIELDS.get(found.field.parts[1], (Unit.COUNT, None))[0]
    form = {Unit.MONEY: "${:g}", Unit.DURATION: "{:g}ms"}.get(kind, "{:g}")
    low = form.format(part.lo)
    if part.hi != float("inf"):
        text = f"from {low} to {form.format(part.hi)}"
    else:
        text = f"more than {low}" if part.lo_open else f"{low} or more"
    return f"{text}, or missing" if found.domain.null else text


# ---------------------------------------------------------------- W0503


def _contradictions(run: _Analysis, expr: ast.Expr, never: set[int]) -> None:
    """W0503: the outermost parts of a condition that no request satisfies (unless a test
    in it is never true on its own: W0515 says so)."""
    if not isinstance(expr, ast.BoolOp | ast.Not):
        return  # one test alone (`x in []`) says what it means; W0503 is about parts
    try:
        empty = not admits(expr, over=True, budget=BUDGET)
    except TooComplex:
        return
    if empty:
        if any(id(test) in never for test in _tests(expr)):
            return
        for part in _parts(expr):
            try:
                if not admits(part, over=True, budget=BUDGET):
                    _contradictions(run, part, never)  # the smallest part that cannot hold
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
        _contradictions(run, part, never)


def _denies_all(run: _Analysis, rule: ast.Deny) -> None:
    """W0511: a `deny` rule whose `when` holds for every request."""
    when = rule.when
    if when is None:
        return
    try:
        always = not admits(ast.Not(when, when.span), over=True, budget=BUDGET)
    except TooComplex:
        return
    if always:
        run.warn(
            "W0511",
            f"`deny {rule.reason.text}` denies every request",
            when.span,
            "its `when` holds whatever the request: no request reaches a route",
            None,
        )


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
        (
            "its `prefer`, `exclude`, `require` and `min_quality` leave no model"
            if comp.settings.min_quality is not None
            else "its `prefer`, `exclude` and `require` leave no model"
        )
        + ", so every request it takes is denied",
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


# ---------------------------------------------------------------- quality


def _quality_uses(files: Sequence[ast.PolicyFile]) -> list[tuple[Span, str]]:
    """Where a policy reads the catalog's overall quality score, with what reads it: a
    `model.quality` in a condition, a `quality` factor, a `min_quality` floor."""
    uses: list[tuple[Span, str]] = []
    for policy in files:
        for stmt in policy.statements:
            if isinstance(stmt, ast.Defaults):
                items: tuple[ast.RouteItem, ...] = stmt.settings
            elif isinstance(stmt, ast.Route):
                items = stmt.items
            elif isinstance(stmt, ast.PolicyRequire):
                items = (ast.Require(stmt.condition, stmt.span),)
            else:
                continue
            for item in items:
                if isinstance(item, ast.StrategySetting):
                    uses.extend(
                        (f.name.span, "factor") for f in item.factors if f.name.text == "quality"
                    )
                elif isinstance(item, ast.ValueSetting) and item.key.text == "min_quality":
                    uses.append((item.span, "floor"))
                elif isinstance(item, ast.Require | ast.DegradedSetting):
                    uses.extend(
                        (p.span, "condition")
                        for p in paths_in(item.condition)
                        if p.parts in (("model", "quality"), ("model", "quality", "overall"))
                    )
    return uses


_QUALITY_EFFECT = {
    "condition": "every comparison with it is false but `== null`",
    "floor": "`min_quality` drops every model",
    "factor": "the `quality` factor scores every model 0",
}


def _quality(run: _Analysis, files: Sequence[ast.PolicyFile]) -> None:
    """W0509: quality read over a catalog that scores no model; W0512: a `quality` factor
    over candidates some of which have no score (they score 0 on it)."""
    catalog = run.program.catalog
    scored = [m for m in catalog.models if m.quality is not None and m.quality.overall is not None]
    if not scored:
        uses = _quality_uses(files)
        if uses:
            span, kind = uses[0]
            more = len(uses) - 1
            run.warn(
                "W0509",
                "the catalog has no quality scores; `model.quality` is null for every model",
                span,
                f"{_QUALITY_EFFECT[kind]}"
                + (f" (and {more} more use{'s' if more > 1 else ''} of quality)" if more else "")
                + ": give models `quality: {overall: …, source: …}` in the catalog"
                " (docs/catalog.md)",
                None,
            )
        return
    routes = {r.name.text: r for f in files for r in f.statements if isinstance(r, ast.Route)}
    # the factor's place (file, offset) -> its span, and (whose, candidates, unscored)
    by_factor: dict[tuple[int, int], tuple[Span, list[tuple[str, int, list[str]]]]] = {}
    for comp in (*run.program.routes, run.program.default_route):
        settings = comp.settings
        if settings.strategy != "weighted" or "quality" not in dict(settings.factors):
            continue
        missing = [m.key for m in comp.candidates if m.quality is None or m.quality.overall is None]
        route = routes.get(comp.name) if comp is not run.program.default_route else None
        span = _factor_span(route, files)
        if missing and span is not None:
            where = "the defaults" if route is None else f"route `{comp.name}`"
            place = (id(span.source), span.start)
            by_factor.setdefault(place, (span, []))[1].append(
                (where, len(comp.candidates), missing)
            )
    for span, found in by_factor.values():
        keys = list(dict.fromkeys(k for _, _, missing in found for k in missing))
        shown = ", ".join(f"`{k}`" for k in keys[:3]) + (", …" if len(keys) > 3 else "")
        counts = "; ".join(_share(len(missing), n, where) for where, n, missing in found)
        one = len(keys) == 1
        run.warn(
            "W0512",
            "the `quality` factor ranks models without a quality score",
            span,
            f"{shown} ({counts}) {'scores' if one else 'score'} 0 on it: give"
            f" {'it' if one else 'them'} a score in the catalog, or exclude"
            f" {'it' if one else 'them'}",
            None,
        )


def _share(part: int, whole: int, where: str) -> str:
    if part == whole:
        return f"the one model of {where}" if whole == 1 else f"all {whole} models of {where}"
    return f"{part} of the {whole} models of {where}"


def _factor_span(route: ast.Route | None, files: Sequence[ast.PolicyFile]) -> Span | None:
    """The `quality` factor a route ranks by: its own `strategy` line's, else the defaults'
    (a bare `strategy weighted` keeps the defaults' factors)."""
    blocks: list[tuple[ast.RouteItem, ...]] = []
    if route is not None:
        blocks.append(route.items)
    blocks += [s.settings for f in files for s in f.statements if isinstance(s, ast.Defaults)]
    for items in blocks:
        for item in items:
            if isinstance(item, ast.StrategySetting) and item.factors:
                return next((f.name.span for f in item.factors if f.name.text == "quality"), None)
    return None


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
                    f"{'shadow ' if comp.shadow else ''}limit `{comp.name}` is never reached",
                    lim.span,
                    f"the limit at {tighter.span.location()} applies to the same requests,"
                    + (
                        " holds no more slots and keeps them no shorter (lease)"
                        if comp.unit == CONCURRENT
                        else " holds no more and refills no faster"
                    )
                    + ", so it always denies first"
                    + (
                        ": this shadow limit never sees a request it would deny"
                        if comp.shadow
                        else ""
                    ),
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
        if other is comp or (other.shadow and not comp.shadow):
            continue  # a shadow limit denies nothing: it never makes an enforced one idle
        if not _same_reach(other, lim, comp, own):
            continue
        if comp.unit == CONCURRENT:  # gauges: no more slots, held at least as long (lease)
            tight = other.amount <= comp.amount and other.window_ms >= comp.window_ms
            strictly = other.amount < comp.amount or other.window_ms > comp.window_ms
        else:
            rate, own_rate = other.amount / other.window_ms, comp.amount / comp.window_ms
            tight = other.capacity <= comp.capacity and rate <= own_rate
            strictly = other.capacity < comp.capacity or rate < own_rate
        if tight:
            earlier = pairs.index((lim, other)) < pairs.index((own, comp))
            # two equal limits: the later one is the idle one (a shadow one beside an
            # enforced one wherever it is: the enforced one denies first)
            if strictly or earlier or comp.shadow > other.shadow:
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
            and c.shadow == comp.shadow
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

"""Checked AST -> an immutable Program (its types are in `engine.language.program`):
conditions as Python closures, routes with their candidate lists resolved against the
catalog, limits ready for the limiter.

Closures are built from AST nodes; no user text is ever passed to `eval` or `exec`.
Every closure has the signature `(request_env, model_attrs) -> value`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from engine.catalog.model import Catalog, Model
from engine.diagnostics import Span
from engine.language import ast
from engine.language.program import (
    Affinity,
    AlertRule,
    CompiledLimit,
    CompiledRoute,
    CompiledSplit,
    DenyRule,
    Env,
    Exploration,
    Fn,
    HealthRule,
    PolicyRequire,
    Pred,
    Program,
    Settings,
    quality_problem,
)
from engine.language.schema import (
    COMPLEXITY_FIELD,
    FEATURES_FIELD,
    MEASURED_ATTRS,
    PROMPT_FEATURES,
    QUALITY,
    TEXT_FIELD,
)
from engine.language.signals import DEFAULT_OVER_MS, SIGNALS, SignalSpec, subject_words
from engine.strategies import STRATEGIES
from engine.vocabulary import DEFAULT_LEASE_MS, SCOPE_KEY_FIELD, Unit
from engine.wire.features import DEFAULT_WEIGHTS, Weights, conversation_of, reads_of, weights_with
from engine.wire.plugins import Plugin, active

# the complexity weights `request.complexity` is compiled with: the policy's (its `defaults`
# `complexity(…)`) while `compile_program` runs, the defaults for any other compilation
COMPLEXITY_WEIGHTS: ContextVar[Weights] = ContextVar("complexity_weights", default=DEFAULT_WEIGHTS)

# ---------------------------------------------------------------- expressions


def model_attributes(model: Model, tasks: tuple[str, ...] = ()) -> dict[str, Any]:
    """What `model.<attr>` reads; `tasks` are the catalog's quality tasks (`quality.<task>`:
    the model's score, or None when it has none for that task)."""
    attrs = {
        "id": model.id,
        "provider": model.provider,
        "key": model.key,
        "aliases": list(model.aliases),
        "context_window": float(model.context_window),
        "max_tokens": float(model.max_tokens),
        "supports": sorted(model.supports),
        "regions": list(model.regions),
        "pricing.input": model.input_price,
        "pricing.output": model.output_price,
        "pricing.cached_input": model.cached_input_price,
        "pricing.image": model.image_price,
        "latency_p50": model.latency_p50_ms,
        "latency_p95": model.latency_p95_ms,
        "quality": None if model.quality is None else model.quality.overall,
        "deprecated": model.deprecated_at,
        "retires": model.retires_at,
        # the priors; a decision reads the measurements instead (engine.routing.evaluator)
        "p50": model.latency_p50_ms,
        "p95": model.latency_p95_ms,
        "success_rate": 1.0,
        "samples": 0.0,
    }
    quality = model.quality
    for task in tasks:
        attrs[f"{QUALITY}.{task}"] = None if quality is None else quality.score(task)
    return attrs


_ORDER_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _path_getter(path: ast.Path) -> Fn:
    root, rest = path.parts[0], path.parts[1:]
    if root == "model":
        key = ".".join(rest)
        if key == f"{QUALITY}.overall":
            key = QUALITY
        return lambda r, m: m[key] if m is not None else None
    if rest[0] == "metadata":
        mkey = rest[1]
        return lambda r, m: r["metadata"].get(mkey)
    if rest[0] == TEXT_FIELD and len(rest) == 2:  # a prompt feature, derived on first read
        feature = rest[1]
        return lambda r, m: conversation_of(r).feature(feature)
    if rest[0] == FEATURES_FIELD:  # a classifier plugin, run on first read (checked: loaded)
        return plugin(rest[1]).read
    if rest[0] == COMPLEXITY_FIELD:
        weights = COMPLEXITY_WEIGHTS.get()
        return lambda r, m: conversation_of(r).complexity(weights)
    rkey = rest[0]
    return lambda r, m: r[rkey]


def plugin(name: str) -> Plugin:
    """The loaded classifier plugin `name` of the active registry (the checker refused a
    policy reading one that is missing or broken)."""
    found = active().get(name)
    if not isinstance(found, Plugin):
        raise LookupError(f"classifier plugin `{name}` is not loaded")  # the checker's E0293
    return found


def plugins_read(paths: frozenset[str]) -> tuple[Plugin, ...]:
    """The classifier plugins a policy reading `paths` runs (`request.features.*`), by name."""
    prefix = f"request.{FEATURES_FIELD}."
    names = sorted(p.removeprefix(prefix) for p in paths if p.startswith(prefix))
    return tuple(plugin(n) for n in names)


def _literal_value(expr: ast.Expr) -> tuple[bool, Any]:
    """(True, value) when the expression is a constant."""
    if isinstance(expr, ast.Literal):
        return True, expr.value
    if isinstance(expr, ast.ListLit):
        values = []
        for item in expr.items:
            ok, v = _literal_value(item)
            if not ok:
                return False, None
            values.append(v)
        return True, values
    return False, None


def compile_expr(expr: ast.Expr) -> Fn:
    if isinstance(expr, ast.Literal):
        value = expr.value
        return lambda r, m: value
    if isinstance(expr, ast.ListLit):
        ok, const = _literal_value(expr)
        if ok:
            return lambda r, m: const
        items = [compile_expr(i) for i in expr.items]
        return lambda r, m: [f(r, m) for f in items]
    if isinstance(expr, ast.Path):
        return _path_getter(expr)
    return compile_condition(expr)


def compile_condition(expr: ast.Expr) -> Pred:
    """A closure that is True only when the condition holds (null compares false)."""
    if isinstance(expr, ast.Compare):
        return _compile_compare(expr)
    if isinstance(expr, ast.Not):
        inner = compile_condition(expr.operand)
        return lambda r, m: not inner(r, m)
    if isinstance(expr, ast.BoolOp):
        parts = [compile_condition(o) for o in expr.operands]
        if expr.op == "and":
            if len(parts) == 2:
                a, b = parts
                return lambda r, m: a(r, m) and b(r, m)
            return lambda r, m: all(p(r, m) for p in parts)
        if len(parts) == 2:
            a, b = parts
            return lambda r, m: a(r, m) or b(r, m)
        return lambda r, m: any(p(r, m) for p in parts)
    if isinstance(expr, ast.Path):
        get = _path_getter(expr)
        return lambda r, m: get(r, m) is True
    if isinstance(expr, ast.Literal):
        truth = expr.value is True
        return lambda r, m: truth
    raise AssertionError(f"not a condition: {expr!r}")  # pragma: no cover


def _compile_compare(expr: ast.Compare) -> Pred:
    op = expr.op
    left, right = expr.left, expr.right
    # presence tests: `x == null`, `x != null`
    for a, b in ((left, right), (right, left)):
        if isinstance(b, ast.Literal) and b.unit is Unit.NULL:
            get = compile_expr(a)
            if op == "==":
                return lambda r, m: get(r, m) is None
            return lambda r, m: get(r, m) is not None
    if op in ("in", "not in"):
        return _compile_membership(compile_expr(left), right, negate=op == "not in")
    if op == "contains":
        hay, needle = compile_expr(left), compile_expr(right)
        return lambda r, m: _contains(hay(r, m), needle(r, m))
    lconst, lvalue = _literal_value(left)
    rconst, rvalue = _literal_value(right)
    get_l, get_r = compile_expr(left), compile_expr(right)
    if op == "==":
        if rconst and isinstance(left, ast.Path):
            return _eq_path_const(left, rvalue)
        return lambda r, m: _eq(get_l(r, m), get_r(r, m))
    if op == "!=":
        return lambda r, m: _ne(get_l(r, m), get_r(r, m))
    fn = _ORDER_OPS[op]
    if rconst and isinstance(left, ast.Path) and rvalue is not None:
        get = _path_getter(left)

        def ordered_const(r: Env, m: Mapping[str, Any] | None) -> bool:
            v = get(r, m)
            if v is None or isinstance(v, bool):
                return False
            try:
                return fn(v, rvalue)
            except TypeError:  # a metadata value of another kind
                return False

        return ordered_const
    del lconst, lvalue

    def ordered(r: Env, m: Mapping[str, Any] | None) -> bool:
        a, b = get_l(r, m), get_r(r, m)
        if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
            return False
        try:
            return fn(a, b)
        except TypeError:
            return False

    return ordered


def _eq_path_const(path: ast.Path, value: Any) -> Pred:
    root, rest = path.parts[0], path.parts[1:]
    if isinstance(value, bool):  # True == 1 in Python: compare identity for booleans
        get = _path_getter(path)
        return lambda r, m: get(r, m) is value
    if root == "request" and rest[0] not in (
        "metadata",
        TEXT_FIELD,
        COMPLEXITY_FIELD,
        FEATURES_FIELD,
    ):
        key = rest[0]
        return lambda r, m: r[key] == value
    get = _path_getter(path)
    return lambda r, m: _eq(get(r, m), value)


def _eq(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _ne(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    return not _eq(a, b)


def _contains(hay: Any, needle: Any) -> bool:
    if hay is None or needle is None:
        return False
    if isinstance(hay, str):
        return isinstance(needle, str) and needle in hay
    if isinstance(hay, list | tuple | frozenset | set):
        if isinstance(needle, bool):
            return any(item is needle for item in hay)
        return any(item == needle and not isinstance(item, bool) for item in hay)
    return False


def _compile_membership(needle: Fn, hay_expr: ast.Expr, *, negate: bool) -> Pred:
    const, value = _literal_value(hay_expr)
    if const and isinstance(value, list) and all(_hashable(v) for v in value):
        # booleans are not numbers: keep them apart (`True in {1}` is true in Python)
        members = frozenset(v for v in value if v is not None and not isinstance(v, bool))
        flags = frozenset(v for v in value if isinstance(v, bool))

        def member(v: Any) -> bool:
            return v in flags if isinstance(v, bool) else v in members

        if negate:
            return lambda r, m: (v := needle(r, m)) is not None and not member(v)
        return lambda r, m: (v := needle(r, m)) is not None and member(v)
    hay = compile_expr(hay_expr)
    if negate:
        return lambda r, m: (
            (v := needle(r, m)) is not None and (h := hay(r, m)) is not None and not _contains(h, v)
        )
    return lambda r, m: _contains(hay(r, m), needle(r, m))


def _hashable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def paths_in(expr: ast.Expr) -> Iterator[ast.Path]:
    """Every `request.…` and `model.…` path an expression reads, in text order."""
    if isinstance(expr, ast.Path):
        yield expr
    elif isinstance(expr, ast.Compare):
        yield from paths_in(expr.left)
        yield from paths_in(expr.right)
    elif isinstance(expr, ast.BoolOp):
        for operand in expr.operands:
            yield from paths_in(operand)
    elif isinstance(expr, ast.Not):
        yield from paths_in(expr.operand)
    elif isinstance(expr, ast.ListLit):
        for item in expr.items:
            yield from paths_in(item)


def measured_reads(expr: ast.Expr) -> tuple[str, ...]:
    """The measured attributes (`model.p95`, …) an expression reads, each once, in order."""
    found = [p.parts[1] for p in paths_in(expr) if p.parts[0] == "model" and len(p.parts) == 2]
    return tuple(dict.fromkeys(a for a in found if a in MEASURED_ATTRS))


def references_request(expr: ast.Expr) -> bool:
    if isinstance(expr, ast.Path):
        return expr.parts[0] == "request"
    if isinstance(expr, ast.Compare):
        return references_request(expr.left) or references_request(expr.right)
    if isinstance(expr, ast.BoolOp):
        return any(references_request(o) for o in expr.operands)
    if isinstance(expr, ast.Not):
        return references_request(expr.operand)
    if isinstance(expr, ast.ListLit):
        return any(references_request(i) for i in expr.items)
    return False


# ---------------------------------------------------------------- statements


def _merge_settings(base: Settings, items: Iterable[ast.RouteItem], catalog: Catalog) -> Settings:
    values: dict[str, Any] = {}
    for item in items:
        if isinstance(item, ast.StrategySetting):
            values["strategy"] = item.name.text
            if item.factors:
                total = sum(float(f.weight.value) for f in item.factors)  # type: ignore[arg-type]
                values["factors"] = tuple(
                    (f.name.text, float(f.weight.value) / total)  # type: ignore[arg-type]
                    for f in item.factors
                )
            else:  # a bare `weighted` inherits the factors of a `defaults` that is weighted
                name = item.name.text
                default = STRATEGIES[name].default_factors
                if default and base.strategy != name:
                    values["factors"] = default
        elif isinstance(item, ast.ValueSetting):
            key = item.key.text
            number = float(item.value.value)  # type: ignore[arg-type]
            if key == "min_success_rate":
                values["min_success_rate"] = number
            elif key == "min_samples":
                values["min_samples"] = int(number)
            elif key == "min_quality":
                values["min_quality"] = number
            else:
                values["window_ms"] = number
        elif isinstance(item, ast.FallbackSetting):
            providers: list[str] = []
            models: list[str] = []
            for ref in item.refs:
                if ref.provider.text not in providers:
                    providers.append(ref.provider.text)
                if ref.model is not None:  # a model, one of its deployments, or all of them
                    for model in catalog.resolve(ref.provider.text, ref.model.text):
                        if model.key not in models:
                            models.append(model.key)
            values["fallback"] = tuple(providers)
            values["fallback_models"] = tuple(models)
        elif isinstance(item, ast.StoreErrorSetting):
            values["on_store_error"] = item.mode.text
        elif isinstance(item, ast.DegradedSetting):
            values["degraded"] = HealthRule(
                compile_condition(item.condition),
                " ".join(item.condition.span.text().split()),
                measured_reads(item.condition),
            )
        elif isinstance(item, ast.ExploreSetting):
            assert item.budget is not None and item.window is not None  # E0270 otherwise
            values["explore"] = Exploration(
                share=float(item.share.value),  # type: ignore[arg-type]
                budget=float(item.budget.value),  # type: ignore[arg-type]
                window_ms=float(item.window.value),  # type: ignore[arg-type]
            )
        elif isinstance(item, ast.AffinitySetting):
            values["affinity"] = Affinity(
                key=_path_getter(item.key),
                key_text=item.key.dotted,
                ttl_ms=float(item.duration.value),  # type: ignore[arg-type]
            )
        elif isinstance(item, ast.WaitSetting):
            values["wait_ms"] = float(item.duration.value)  # type: ignore[arg-type]
        elif isinstance(item, ast.CooldownSetting):
            values["cooldown_failures"] = int(float(item.failures.value))  # type: ignore[arg-type]
            values["cooldown_ms"] = float(item.duration.value)  # type: ignore[arg-type]
    if not values:
        return base
    merged = {name: values.get(name, getattr(base, name)) for name in Settings.__dataclass_fields__}
    return Settings(**merged)


def _provider_rank(
    settings: Settings, catalog: Catalog, first: tuple[str, ...] = ()
) -> dict[str, int]:
    """Providers in failover order: `first` (a route's `prefer` order), then the `fallback`
    setting's, then the catalog's."""
    order = list(dict.fromkeys([*first, *settings.fallback, *catalog.providers]))
    return {p: i for i, p in enumerate(order)}


def resolve_ref(ref: ast.ModelRef, catalog: Catalog) -> list[Model]:
    """The catalog models a `prefer`, `exclude` or `fallback` reference names."""
    if ref.model is None:
        return list(catalog.by_provider(ref.provider.text))
    return list(catalog.resolve(ref.provider.text, ref.model.text))


def _one_line(expr: ast.Expr) -> str:
    return " ".join(expr.span.text().split())


def _line(span: ast.Span) -> str:
    return f"{span.source.name}:{span.line}"


def _compile_policy_require(stmt: ast.PolicyRequire) -> PolicyRequire:
    return PolicyRequire(
        holds=compile_condition(stmt.condition),
        text=_one_line(stmt.condition),
        when=None if stmt.when is None else compile_condition(stmt.when),
        when_text=None if stmt.when is None else _one_line(stmt.when),
        location=_line(stmt.span),
        reads_request=references_request(stmt.condition),
        measured=bool(measured_reads(stmt.condition)),
    )


def _compile_deny(stmt: ast.Deny) -> DenyRule:
    assert stmt.when is not None  # the checker refuses a `deny` without one (E0251)
    return DenyRule(
        reason=str(stmt.reason.value),
        when=compile_condition(stmt.when),
        when_text=_one_line(stmt.when),
        location=_line(stmt.span),
    )


def folded(requires: tuple[PolicyRequire, ...]) -> tuple[PolicyRequire, ...]:
    """The policy-wide `require`s that hold for every request and are known per model: the
    compiler drops the models failing them from every route's candidates."""
    return tuple(r for r in requires if r.when is None and r.static)


def _bind(
    models: Iterable[Model],
    requires: tuple[PolicyRequire, ...],
    attrs: Mapping[str, Mapping[str, Any]],
) -> tuple[list[Model], list[tuple[Model, PolicyRequire]]]:
    """`models` split by the folded policy-wide `require`s: those kept, those dropped."""
    kept: list[Model] = []
    dropped: list[tuple[Model, PolicyRequire]] = []
    empty: dict[str, Any] = {}
    for model in models:
        failed = next((r for r in requires if not r.holds(empty, attrs[model.key])), None)
        if failed is None:
            kept.append(model)
        else:
            dropped.append((model, failed))
    return kept, dropped


MAX_VARIANT_REQUIRES = 4  # each route gets 2**N - 1 variants (more: looked up per request)


def _variant_bits(requires: tuple[PolicyRequire, ...]) -> dict[int, int]:
    """The policy-wide `require`s with a `when` that are known per model, by index, each
    with its bit: the routes are compiled once per combination of them."""
    found = [i for i, r in enumerate(requires) if r.when is not None and r.static]
    if len(found) > MAX_VARIANT_REQUIRES:
        return {}
    return {i: 1 << n for n, i in enumerate(found)}


def _with_variants(
    route: CompiledRoute,
    requires: tuple[PolicyRequire, ...],
    bits: Mapping[int, int],
    attrs: Mapping[str, Mapping[str, Any]],
) -> CompiledRoute:
    """`route` with a variant per combination of `bits`: its candidates less the models
    those `require`s drop (a request meeting their `when`s is routed on it)."""
    if not bits:
        return route
    variants: dict[int, CompiledRoute] = {}
    for mask in range(1, 1 << len(bits)):
        chosen = tuple(requires[i] for i, bit in bits.items() if mask & bit)
        kept, dropped = _bind(route.candidates, chosen, attrs)
        variants[mask] = replace(
            route,
            candidates=tuple(kept),
            dropped=(*route.dropped, *((m, r.drop_reason) for m, r in dropped)),
            policy_dropped=(*route.policy_dropped, *dropped),
            attrs=tuple(attrs[m.key] for m in kept),
        )
    return replace(route, variants=variants)


def _arms_of(files: list[ast.PolicyFile]) -> dict[str, tuple[str, ...]]:
    """Route name -> the experiments (splitting routes) it is an arm of."""
    found: dict[str, list[str]] = {}
    for policy in files:
        for stmt in policy.statements:
            if isinstance(stmt, ast.Route):
                for item in stmt.items:
                    if isinstance(item, ast.Split):
                        for arm in item.arms:
                            found.setdefault(arm.route.text, []).append(stmt.name.text)
    return {name: tuple(experiments) for name, experiments in found.items()}


def compile_split(route: ast.Route) -> CompiledSplit | None:
    """The route's `split`, its shares as cumulative bounds (None: the route does not split)."""
    split = next((item for item in route.items if isinstance(item, ast.Split)), None)
    if split is None:
        return None
    bounds: list[float] = []
    total = 0.0
    for arm in split.arms:
        total += float(arm.share.value)  # type: ignore[arg-type]
        bounds.append(total)
    bounds[-1] = 1.0
    return CompiledSplit(
        experiment=route.name.text,
        key=_path_getter(split.key),
        key_text=split.key.dotted,
        bounds=tuple(bounds),
        arms=tuple(arm.route.text for arm in split.arms),
    )


def _compile_route(
    route: ast.Route,
    base: Settings,
    catalog: Catalog,
    attrs: Mapping[str, Mapping[str, Any]],
    policy: tuple[PolicyRequire, ...] = (),
    arm_of: tuple[str, ...] = (),
) -> CompiledRoute:
    settings = _merge_settings(base, route.items, catalog)
    weights: dict[str, float] = {}
    ordered: list[Model] = []
    for item in route.items:
        if isinstance(item, ast.Prefer):
            models = [m for m in resolve_ref(item.ref, catalog) if m.key not in weights]
            weight = float(item.weight.value) if item.weight is not None else 1.0  # type: ignore[arg-type]
            for m in models:
                weights[m.key] = weight / len(models)
                ordered.append(m)
    candidates = ordered if ordered else list(catalog.models)
    dropped: list[tuple[Model, str]] = []
    excluded: set[str] = set()
    for item in route.items:
        if isinstance(item, ast.Exclude):
            for ref in item.refs:
                excluded.update(m.key for m in resolve_ref(ref, catalog))
    requires: list[tuple[Pred, str]] = []
    static: list[tuple[Pred, str]] = []
    on_measurements: list[tuple[Pred, str]] = []  # known once per metrics snapshot
    measured = False
    for item in route.items:
        if isinstance(item, ast.Require):
            pred = compile_condition(item.condition)
            text = item.condition.span.text()
            reads = bool(measured_reads(item.condition))
            if references_request(item.condition):
                measured = measured or reads
                requires.append((pred, text))
            else:
                (on_measurements if reads else static).append((pred, text))
    kept: list[Model] = []
    empty: dict[str, Any] = {}
    for model in candidates:
        if model.key in excluded:
            dropped.append((model, f"excluded by route `{route.name.text}`"))
            continue
        failed = next((t for p, t in static if not p(empty, attrs[model.key])), None)
        if failed is not None:
            dropped.append((model, f"fails `require {failed}`"))
            continue
        short = _below_floor(model, settings, f"route `{route.name.text}`'s")
        if short is not None:
            dropped.append((model, short))
            continue
        kept.append(model)
    kept, policy_dropped = _bind(kept, folded(policy), attrs)
    dropped += [(m, r.drop_reason) for m, r in policy_dropped]
    return CompiledRoute(
        name=route.name.text,
        location=route.span.location(),
        when=None if route.when is None else compile_condition(route.when),
        when_text=None if route.when is None else route.when.span.text(),
        candidates=tuple(kept),
        weights={k: w for k, w in weights.items() if k not in excluded},
        dropped=tuple(dropped),
        requires=tuple(requires),
        settings=settings,
        provider_rank=_provider_rank(settings, catalog, _prefer_order(route, ordered)),
        measured=measured,
        measured_requires=tuple(on_measurements),
        attrs=tuple(attrs[m.key] for m in kept),
        policy_requires=policy,
        policy_dropped=tuple(policy_dropped),
        split=compile_split(route),
        arm_of=arm_of,
        shadow=next((i.route.text for i in route.items if isinstance(i, ast.Shadow)), None),
    )


def _below_floor(model: Model, settings: Settings, whose: str) -> str | None:
    """Why the route's quality floor (`min_quality`, its own or the defaults') drops a model."""
    if settings.min_quality is None:
        return None
    score = None if model.quality is None else model.quality.overall
    return quality_problem(score, settings.min_quality, whose)


def _prefer_order(route: ast.Route, preferred: list[Model]) -> tuple[str, ...]:
    """The providers of a route's `prefer` lines in their order: the route's failover order,
    unless the route gives its own `fallback` line (docs/language.md, Failover order)."""
    if any(isinstance(item, ast.FallbackSetting) for item in route.items):
        return ()
    return tuple(dict.fromkeys(m.provider for m in preferred))


def _compile_limit(limit: ast.Limit, catalog: Catalog) -> CompiledLimit:
    scope = limit.scope.text
    key = None if limit.key is None else str(limit.key.value)
    if scope == "model" and key is not None:  # the catalog model's key (a model limit
        provider, _, name = key.partition("/")  # counts every deployment of the model)
        found = catalog.resolve(provider, name)
        key = found[0].model_key if found else key
    unit = limit.unit.text if limit.unit is not None else "requests"
    name = scope if key is None else f'{scope} "{key}"'
    if unit != "requests":
        name += f" {unit}"
    return CompiledLimit(
        name=name,
        scope=scope,
        key=key,
        key_fn=None if limit.key_expr is None else compile_expr(limit.key_expr),
        key_field=SCOPE_KEY_FIELD.get(scope),
        unit=unit,
        amount=float(limit.amount.value),  # type: ignore[arg-type]
        # an in-flight limit's "window" is its lease: how long a slot is held at most
        window_ms=_window_ms(limit),
        burst=0.0 if limit.burst is None else float(limit.burst.value),  # type: ignore[arg-type]
        when=None if limit.when is None else compile_condition(limit.when),
        until=None if limit.until is None else float(limit.until.value),  # type: ignore[arg-type]
        location=limit.span.location(),
        shadow=limit.shadow,
        wait_ms=None if limit.wait is None else float(limit.wait.value),  # type: ignore[arg-type]
    )


def _window_ms(limit: ast.Limit) -> float:
    if limit.window is not None:
        return float(limit.window.value)  # type: ignore[arg-type]
    if limit.lease is not None:
        return float(limit.lease.value)  # type: ignore[arg-type]
    return DEFAULT_LEASE_MS  # `concurrent` without `lease`


def split_word(signal: ast.Signal, spec: SignalSpec, named_scopes: tuple[str, ...]) -> str | None:
    """The per-key word of an alert's subject (`provider` in `p95(provider)`), or None when
    the subject is a catalog reference or absent. A quoted subject is always a reference
    (`p95("model")` is a provider named `model`)."""
    ref = signal.subject
    if ref is None or ref.model is not None or ref.provider.span.text().startswith('"'):
        return None
    word = ref.provider.text
    return word if word in subject_words(spec, named_scopes) else None


def limit_scopes(files: Iterable[ast.PolicyFile]) -> tuple[str, ...]:
    """The named scopes of the limits of a policy set (`team` of `limit team = …`)."""
    found = {
        stmt.scope.text
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.Limit) and stmt.key_expr is not None
    }
    return tuple(sorted(found))


def _compile_alert(alert: ast.Alert, catalog: Catalog, named_scopes: tuple[str, ...]) -> AlertRule:
    spec = SIGNALS[alert.signal.name.dotted]
    split_by = split_word(alert.signal, spec, named_scopes)
    ref = alert.signal.subject
    subject: str | None = None
    models: frozenset[str] = frozenset()
    if ref is not None and split_by is None:
        subject = ref.text
        models = frozenset(m.key for m in resolve_ref(ref, catalog))
    window = DEFAULT_OVER_MS if alert.window is None else float(alert.window.value)  # type: ignore[arg-type]
    return AlertRule(
        name=str(alert.name.value),
        signal=spec.name,
        split_by=split_by,
        subject=subject,
        models=models,
        op=alert.op,
        threshold=float(alert.threshold.value),  # type: ignore[arg-type]
        threshold_text=alert.threshold.text,
        window_ms=window,
        for_ms=0.0 if alert.hold is None else float(alert.hold.value),  # type: ignore[arg-type]
        webhook=None if alert.webhook is None else str(alert.webhook.value),
        location=_line(alert.span),
        text=" ".join(alert.span.text().split()),
    )


def policy_version(texts: Iterable[tuple[str, str]], catalog: Catalog) -> str:
    """A content hash: file base names (not where they were loaded from), texts, catalog."""
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(name.replace("\\", "/").rsplit("/", 1)[-1].encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\0")
    digest.update(catalog.digest.encode())
    return digest.hexdigest()[:16]


def compile_program(
    files: list[ast.PolicyFile], catalog: Catalog, texts: list[tuple[str, str]]
) -> Program:
    """Compile a policy set that checked clean."""
    weights = complexity_weights(files)
    token = COMPLEXITY_WEIGHTS.set(weights)
    try:
        return _compile_program(files, catalog, texts, weights)
    finally:
        COMPLEXITY_WEIGHTS.reset(token)


def complexity_weights(files: list[ast.PolicyFile]) -> Weights:
    """The weights of `request.complexity`: the defaults, less what `defaults { complexity(…) }`
    sets (checked: known terms, plain numbers)."""
    given: dict[str, float] = {}
    for policy in files:
        for stmt in policy.statements:
            if isinstance(stmt, ast.Defaults):
                for item in stmt.settings:
                    if isinstance(item, ast.ComplexitySetting):
                        for factor in item.weights:
                            given[factor.name.text] = float(factor.weight.value)  # type: ignore[arg-type]
    return weights_with(given) if given else DEFAULT_WEIGHTS


def prompt_features(paths: frozenset[str], weights: Weights) -> tuple[frozenset[str], bool]:
    """The prompt features a policy reading `paths` derives, and whether it reads
    `request.complexity`."""
    prefix = f"request.{TEXT_FIELD}."
    found = {p.removeprefix(prefix) for p in paths if p.startswith(prefix)}
    reads = f"request.{COMPLEXITY_FIELD}" in paths
    if reads:
        found |= reads_of(weights)
    return frozenset(f for f in found if f in PROMPT_FEATURES), reads


def _compile_program(
    files: list[ast.PolicyFile], catalog: Catalog, texts: list[tuple[str, str]], weights: Weights
) -> Program:
    tasks = catalog.quality_tasks()
    attrs = {m.key: model_attributes(m, tasks) for m in catalog.models}
    base = Settings()
    for policy in files:
        for stmt in policy.statements:
            if isinstance(stmt, ast.Defaults):
                base = _merge_settings(base, stmt.settings, catalog)
    requires = tuple(
        _compile_policy_require(stmt)
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.PolicyRequire)
    )
    denies = tuple(
        _compile_deny(stmt)
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.Deny)
    )
    bits = _variant_bits(requires)
    arms_of = _arms_of(files)
    routes = tuple(
        _with_variants(
            _compile_route(stmt, base, catalog, attrs, requires, arms_of.get(stmt.name.text, ())),
            requires,
            bits,
            attrs,
        )
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.Route)
    )
    floored = [(m, _below_floor(m, base, "the defaults'")) for m in catalog.models]
    kept, policy_dropped = _bind(
        [m for m, short in floored if short is None], folded(requires), attrs
    )
    default_route = _with_variants(
        CompiledRoute(
            name="default",
            location="defaults",
            when=None,
            when_text=None,
            candidates=tuple(kept),
            weights={},
            dropped=(
                *((m, short) for m, short in floored if short is not None),
                *((m, r.drop_reason) for m, r in policy_dropped),
            ),
            requires=(),
            settings=base,
            provider_rank=_provider_rank(base, catalog),
            attrs=tuple(attrs[m.key] for m in kept),
            policy_requires=requires,
            policy_dropped=tuple(policy_dropped),
        ),
        requires,
        bits,
        attrs,
    )
    static = folded(requires)
    limits = tuple(
        _compile_limit(stmt, catalog)
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.Limit)
    )
    named_scopes = limit_scopes(files)
    alerts = tuple(
        _compile_alert(stmt, catalog, named_scopes)
        for policy in files
        for stmt in policy.statements
        if isinstance(stmt, ast.Alert)
    )
    paths = frozenset(request_paths(files))
    features, reads_complexity = prompt_features(paths, weights)
    return Program(
        catalog=catalog,
        routes=routes,
        default_route=default_route,
        limits=limits,
        files=tuple(p.name for p in files),
        version=policy_version(texts, catalog),
        model_attrs=attrs,
        requires=requires,
        denies=denies,
        live_requires=tuple(i for i, r in enumerate(requires) if not any(r is f for f in static)),
        variant_bits=bits,
        request_paths=paths,
        alerts=alerts,
        prompt_features=features,
        plugins=plugins_read(paths),
        complexity_weights=weights,
        reads_complexity=reads_complexity,
    )


def request_paths(files: list[ast.PolicyFile]) -> Iterator[str]:
    """Every `request.…` path the policy set reads, dotted (`request.metadata.team`)."""
    for node in _nodes(files):
        if isinstance(node, ast.Path) and node.parts[0] == "request":
            yield ".".join(node.parts)


def _nodes(value: object) -> Iterator[object]:
    """Every AST node under a value, depth first (spans and sources are not looked into)."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from _nodes(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, Span | type):
        yield value
        for f in dataclasses.fields(value):
            yield from _nodes(getattr(value, f.name))

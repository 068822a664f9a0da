"""Type-check a parsed policy set against the request schema and the catalog.

Ordered passes, each collecting diagnostics (never stopping at the first):
structure (one `defaults`, unique route names) → settings → routes (conditions, model
references, `require`) → limits → lint (prefer lists that the capability filter always
empties, retired models). The compiler runs only on a set with no errors; the analysis of
the compiled set (`engine.language.analysis`: shadowed routes, contradictions, …) follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.catalog.model import CAPABILITIES, Catalog
from engine.diagnostics import Diagnostic, Span, did_you_mean
from engine.language import ast
from engine.language.compiler import limit_scopes, paths_in, split_word
from engine.language.schema import (
    COMPLEXITY_FIELD,
    DERIVED_FIELDS,
    FEATURES_FIELD,
    MEASURED_ATTRS,
    METADATA_FIELD,
    MODEL_ATTRS,
    NEEDS,
    PLUGIN_TYPES,
    QUALITY,
    QUALITY_TASK,
    REQUEST_FIELDS,
    TEXT_FIELD,
    FieldType,
)
from engine.language.signals import (
    KEY_PLACEHOLDER,
    MAX_WINDOW_MS,
    OPERATORS,
    SIGNALS,
    SignalSpec,
    subject_words,
)
from engine.strategies import STRATEGIES
from engine.units import format_day
from engine.vocabulary import CONCURRENT, LIMIT_UNITS, STANDARD_SCOPES, Unit
from engine.wire.features import COMPLEXITY_TERMS, MAX_WEIGHT, NO_SCRIPT, SCRIPTS
from engine.wire.plugins import GROUP, Broken, active
from engine.wire.record import FORMATS

# the string fields whose values are a closed set (their homes: the wire formats, the
# scripts `engine.wire.features` tells apart): a literal outside it is an error (E0344)
CLOSED_VALUES: dict[str, tuple[str, ...]] = {
    "request.format": FORMATS,
    "request.text.script": (*SCRIPTS, NO_SCRIPT),
}


def _strings_compared(
    expr: ast.Compare, fields: Iterable[str]
) -> Iterable[tuple[str, ast.Literal]]:
    """The string literals `expr` compares with one of `fields` (either side, `==`, `!=`,
    `in`, `contains`, a list's items), each with the field."""
    for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
        if not isinstance(side, ast.Path) or side.dotted not in fields:
            continue
        items = other.items if isinstance(other, ast.ListLit) else (other,)
        for item in items:
            if isinstance(item, ast.Literal) and isinstance(item.value, str):
                yield side.dotted, item


_EXAMPLES = {
    Unit.DURATION: "`2s` or `250ms`",
    Unit.MONEY: "`$0.01`",
    Unit.PERCENT: "`80%`",
    Unit.COUNT: "`100` or `200k`",
    Unit.STRING: '`"eu"`',
    Unit.BOOL: "`true`",
    Unit.DATE: "`2026-12-31`",
}
_ORDERED = {Unit.DURATION, Unit.MONEY, Unit.PERCENT, Unit.COUNT, Unit.DATE, Unit.STRING, Unit.ANY}
_ANY: FieldType = (Unit.ANY, None)
_BOOL: FieldType = (Unit.BOOL, None)
_REQUEST_TABLE: dict[str, FieldType] = {**REQUEST_FIELDS, **DERIVED_FIELDS}

_SETTING_UNITS = {
    "min_success_rate": Unit.PERCENT,
    "min_samples": Unit.COUNT,
    "window": Unit.DURATION,
    "min_quality": Unit.COUNT,  # a quality score, 0-1 (as `model.quality`)
}


def _article(unit: Unit) -> str:
    name = unit.value
    if unit in (Unit.MONEY, Unit.NULL):
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def describe(t: FieldType) -> str:
    unit, item = t
    if unit is Unit.LIST:
        return f"a list of {item.value}s" if item not in (None, Unit.ANY) else "a list"
    if unit is Unit.ANY:
        return "a metadata value"
    return _article(unit)


@dataclass
class Checker:
    catalog: Catalog
    now: float | None = None  # epoch seconds: the clock retirement warnings are judged by
    diagnostics: list[Diagnostic] = field(default_factory=list)
    route_nodes: dict[str, ast.Route] = field(default_factory=dict)  # by name, the first
    named_scopes: tuple[str, ...] = ()  # the limits' named scopes (`team`)

    # reporting -------------------------------------------------------------

    def error(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, help))

    def warn(self, code: str, message: str, span: Span, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, help, severity="warning"))

    # entry -----------------------------------------------------------------

    def check(self, files: Iterable[ast.PolicyFile]) -> list[Diagnostic]:
        files = list(files)
        self._structure(files)
        for policy in files:
            for stmt in policy.statements:
                if isinstance(stmt, ast.Defaults):
                    self._settings(stmt.settings)
                elif isinstance(stmt, ast.Route):
                    self._route(stmt)
                elif isinstance(stmt, ast.Limit):
                    self._limit(stmt)
                elif isinstance(stmt, ast.PolicyRequire):
                    self._policy_require(stmt)
                elif isinstance(stmt, ast.Deny):
                    self._deny(stmt)
                elif isinstance(stmt, ast.Alert):
                    self._alert(stmt)
        self._lint(files)
        return self.diagnostics

    # structure -------------------------------------------------------------

    def _structure(self, files: list[ast.PolicyFile]) -> None:
        defaults_at: ast.Defaults | None = None
        routes: dict[str, ast.Route] = {}
        alerts: dict[str, ast.Alert] = {}
        self.named_scopes = limit_scopes(files)
        for policy in files:
            for stmt in policy.statements:
                if isinstance(stmt, ast.Alert):
                    first_alert = alerts.setdefault(str(stmt.name.value), stmt)
                    if first_alert is not stmt:
                        self.error(
                            "E0706",
                            f"alert {stmt.name.text} is defined twice",
                            stmt.name.span,
                            f"the first is at {first_alert.name.span.location()}; an alert's"
                            " name is what its notifications and its state are known by:"
                            " rename one",
                        )
                elif isinstance(stmt, ast.Defaults):
                    if defaults_at is not None:
                        self.error(
                            "E0201",
                            "`defaults` is set more than once",
                            Span(stmt.span.source, stmt.span.start, stmt.span.start + 8),
                            f"merge it into the `defaults` at {defaults_at.span.location()}",
                        )
                    else:
                        defaults_at = stmt
                elif isinstance(stmt, ast.Route):
                    first = routes.get(stmt.name.text)
                    if first is not None:
                        self.error(
                            "E0202",
                            f"route `{stmt.name.text}` is defined twice",
                            stmt.name.span,
                            f"the first is at {first.name.span.location()}; rename one",
                        )
                    else:
                        routes[stmt.name.text] = stmt
        self.route_nodes = routes

    # settings --------------------------------------------------------------

    def _settings(self, settings: Iterable[ast.RouteItem], route: ast.Route | None = None) -> None:
        seen: dict[str, Span] = {}
        for item in settings:
            key = _setting_key(item)
            if key is None:
                continue
            if key in seen:
                self.error(
                    "E0203",
                    f"`{key}` is set twice in this block",
                    item.span,
                    f"the first is at {seen[key].location()}; keep one",
                )
                continue
            seen[key] = item.span
            if isinstance(item, ast.StrategySetting):
                self._strategy(item)
            elif isinstance(item, ast.ValueSetting):
                self._value_setting(item)
            elif isinstance(item, ast.FallbackSetting):
                for ref in item.refs:
                    self._model_ref(ref)
            elif isinstance(item, ast.CooldownSetting):
                self._cooldown(item)
            elif isinstance(item, ast.DegradedSetting):
                self._degraded(item)
            elif isinstance(item, ast.ExploreSetting):
                self._explore(item)
            elif isinstance(item, ast.AffinitySetting):
                self._affinity(item)
            elif isinstance(item, ast.WaitSetting):
                self._wait_duration(item.duration, "a route's wait")
            elif isinstance(item, ast.ComplexitySetting):
                self._complexity(item, route)
            elif isinstance(item, ast.StoreErrorSetting) and item.mode.text not in (
                "open",
                "closed",
            ):
                guess = did_you_mean(item.mode.text, ("open", "closed"))
                self.error(
                    "E0226",
                    f"`on_store_error` is `open` or `closed`, not `{item.mode.text}`",
                    item.mode.span,
                    f"did you mean `{guess}`?"
                    if guess
                    else "`open` allows requests while the store is down, `closed` denies them",
                )

    def _degraded(self, item: ast.DegradedSetting) -> None:
        """`degraded when …`: a condition on the model alone (its health is not a request's)."""
        reads_request = next((p for p in paths_in(item.condition) if p.parts[0] == "request"), None)
        if reads_request is not None:
            self.error(
                "E0227",
                f"`degraded when` cannot read `{reads_request.dotted}`",
                reads_request.span,
                "a model is degraded or not whatever the request; compare the model's"
                " measurements, e.g. `degraded when model.p95 > 3s`",
            )
            return
        self._condition(item.condition, allow_model=True)

    def _explore(self, item: ast.ExploreSetting) -> None:
        """`explore N% budget $X per DURATION` (E0270–E0273)."""
        share = item.share
        value = float(share.value)  # type: ignore[arg-type]
        share_ok = share.unit is Unit.PERCENT and 0.0 < value <= 0.5
        shown = share.text if share_ok else "5%"
        if not share_ok:
            if share.unit is not Unit.PERCENT:
                why = "a share of requests is a percentage"
            elif value <= 0:
                why = "to explore no request, leave `explore` out"
            else:
                why = (
                    "exploring requests leave the strategy's choice to measure other models;"
                    " past half of the traffic the strategy would be the exception"
                )
            self.error(
                "E0271",
                f"`explore` takes a share of requests above 0% and at most 50%, not `{share.text}`",
                share.span,
                f"{why}: for example `explore 5% budget $2 per 1h`",
            )
        budget, window = item.budget, item.window
        if budget is None or window is None:
            self.error(
                "E0270",
                "`explore` needs a budget: what exploring may cost per window",
                item.span,
                f"write `explore {shown} budget $2 per 1h`: once the requests explored in"
                " the current hour are estimated to cost $2, requests route normally",
            )
            return
        if budget.unit is not Unit.MONEY or float(budget.value) <= 0:  # type: ignore[arg-type]
            self.error(
                "E0272",
                f"an exploration budget is an amount of money above zero, not `{budget.text}`",
                budget.span,
                f"write `explore {shown} budget $2 per 1h`",
            )
        length = float(window.value)  # type: ignore[arg-type]
        if window.unit is not Unit.DURATION or length <= 0:
            self.error(
                "E0273",
                "an exploration budget's window is a duration longer than zero,"
                f" not `{window.text}`",
                window.span,
                _setting_hint(Unit.DURATION, window)
                if window.unit is Unit.COUNT and length > 0
                else "write `per 1h` or `per 1d`",
            )

    def _affinity(self, item: ast.AffinitySetting) -> None:
        """`affinity by request.KEY for DURATION` (E0280, E0281)."""
        key = item.key
        if key.parts[0] != "request" or len(key.parts) < 2:
            self.error(
                "E0280",
                f"affinity is keyed by a request field, not `{key.dotted}`",
                key.span,
                "for example `affinity by request.metadata.session_id for 30m`",
            )
        else:
            found = self._path_type(key, allow_model=False)
            if found is not None and found[0] is Unit.LIST:
                self.error(
                    "E0280",
                    f"affinity is keyed by one value, and `{key.dotted}` is {describe(found)}",
                    key.span,
                    "key it by a field that names the session: `request.user` or"
                    " `request.metadata.session_id`",
                )
        duration = item.duration
        length = float(duration.value)  # type: ignore[arg-type]
        if duration.unit is not Unit.DURATION or length <= 0:
            self.error(
                "E0281",
                f"an affinity lasts a duration longer than zero, not `{duration.text}`",
                duration.span,
                _setting_hint(Unit.DURATION, duration)
                if duration.unit is Unit.COUNT and length > 0
                else "for example `for 30m`: a session quiet for longer starts afresh",
            )

    def _cooldown(self, item: ast.CooldownSetting) -> None:
        failures, duration = item.failures, item.duration
        if (
            failures.unit is not Unit.COUNT
            or float(failures.value) < 1
            or (  # type: ignore[arg-type]
                float(failures.value) != int(float(failures.value))  # type: ignore[arg-type]
            )
        ):
            self.error(
                "E0224",
                "a cooldown counts consecutive failures: a whole number from 1",
                failures.span,
                "for example `cooldown after 3 failures for 30s`",
            )
        if duration.unit is not Unit.DURATION or float(duration.value) <= 0:  # type: ignore[arg-type]
            self.error(
                "E0225",
                "a cooldown lasts a duration longer than zero",
                duration.span,
                "for example `cooldown after 3 failures for 30s`",
            )

    def _complexity(self, item: ast.ComplexitySetting, route: ast.Route | None) -> None:
        """`complexity(term: weight, …)` in `defaults` (E0290–E0292)."""
        if route is not None:
            self.error(
                "E0290",
                f"`complexity` weights are set in `defaults`, not in route `{route.name.text}`",
                Span(item.span.source, item.span.start, item.span.start + len("complexity")),
                "`request.complexity` is one score per request, read before a route is"
                " chosen: move the line into `defaults`",
            )
            return
        seen: dict[str, Span] = {}
        for factor in item.weights:
            term = factor.name.text
            if term not in COMPLEXITY_TERMS:
                guess = did_you_mean(term, COMPLEXITY_TERMS)
                self.error(
                    "E0291",
                    f"unknown complexity term `{term}`",
                    factor.name.span,
                    f"did you mean `{guess}`?"
                    if guess
                    else "terms: " + ", ".join(f"`{t}`" for t in COMPLEXITY_TERMS),
                )
            elif term in seen:
                self.error(
                    "E0291",
                    f"complexity term `{term}` is given twice",
                    factor.name.span,
                    f"the first is at {seen[term].location()}; keep one",
                )
            else:
                seen[term] = factor.name.span
            weight = factor.weight
            value = float(weight.value)  # type: ignore[arg-type]
            if weight.unit is not Unit.COUNT or not 0 <= value <= MAX_WEIGHT:
                self.error(
                    "E0292",
                    f"a complexity weight is a plain number from 0 to {MAX_WEIGHT:g},"
                    f" not `{weight.text}`",
                    weight.span,
                    "each term is 0-1 and the score is their weighted sum, at most 1:"
                    f" write `{term}: 0.4`; 0 leaves the term out",
                )

    def _strategy(self, item: ast.StrategySetting) -> None:
        name = item.name.text
        spec = STRATEGIES.get(name)
        if spec is None:
            guess = did_you_mean(name, STRATEGIES)
            self.error(
                "E0210",
                f"unknown strategy `{name}`",
                item.name.span,
                f"did you mean `{guess}`?"
                if guess
                else "strategies: " + ", ".join(f"`{s}`" for s in STRATEGIES),
            )
            return
        if item.factors and not spec.factors:
            takers = " or ".join(f"`{s.example}`" for s in STRATEGIES.values() if s.factors)
            self.error(
                "E0211",
                f"strategy `{name}` takes no factors",
                item.factors[0].span,
                f"only {takers} takes factors",
            )
            return
        factors = spec.factors
        total = 0.0
        units: set[Unit] = set()
        seen: set[str] = set()
        bad_weight = False
        for factor in item.factors:
            fname = factor.name.text
            if fname not in factors:
                guess = did_you_mean(fname, factors)
                self.error(
                    "E0212",
                    f"unknown factor `{fname}`",
                    factor.name.span,
                    f"did you mean `{guess}`?"
                    if guess
                    else "factors: " + ", ".join(f"`{f}`" for f in factors),
                )
            elif fname in seen:
                self.error(
                    "E0213",
                    f"factor `{fname}` is given twice",
                    factor.name.span,
                    "give each factor once",
                )
            seen.add(fname)
            if factor.weight.unit not in (Unit.PERCENT, Unit.COUNT):
                self.error(
                    "E0214",
                    f"a factor's weight is a percentage, not {_article(factor.weight.unit)}",
                    factor.weight.span,
                    "write `latency: 60%`",
                )
                bad_weight = True
                continue
            units.add(factor.weight.unit)
            total += float(factor.weight.value)  # type: ignore[arg-type]
        if bad_weight:
            return
        if len(units) > 1:
            self.error(
                "E0217",
                "factor weights mix percentages and plain numbers",
                item.span,
                f"write every weight as a percentage: `{spec.example}`",
            )
        elif units == {Unit.PERCENT} and item.factors and abs(total - 1.0) > 1e-9:
            self.error(
                "E0215",
                f"factor weights add up to {total * 100:g}%, not 100%",
                item.span,
                "make the percentages add up to 100%",
            )
        elif item.factors and total <= 0:
            self.error(
                "E0216",
                "factor weights must be greater than zero",
                item.span,
                "give at least one factor a positive weight",
            )

    def _value_setting(self, item: ast.ValueSetting) -> None:
        key, value = item.key.text, item.value
        want = _SETTING_UNITS[key]
        if value.unit is not want:
            self.error(
                "E0220",
                f"`{key}` is {_article(want)}, not {_article(value.unit)}",
                value.span,
                f"a quality score is a number from 0 to 1: write `{_plain(float(value.value))}`"  # type: ignore[arg-type]
                if key == "min_quality" and value.unit is Unit.PERCENT
                else _setting_hint(want, value),
            )
            return
        number = float(value.value)  # type: ignore[arg-type]
        if key == "min_success_rate" and not 0.0 <= number <= 1.0:
            self.error(
                "E0221",
                "`min_success_rate` must be between 0% and 100%",
                value.span,
                "for example `min_success_rate 80%`",
            )
        elif key == "min_samples" and number != int(number):
            self.error(
                "E0222",
                "`min_samples` must be a whole number",
                value.span,
                "for example `min_samples 100`",
            )
        elif key == "min_quality" and not 0.0 <= number <= 1.0:
            self.error(
                "E0228",
                "`min_quality` must be between 0 and 1",
                value.span,
                "quality scores are numbers from 0 to 1, as the catalog gives them:"
                " for example `min_quality 0.8`",
            )
        elif key == "window" and number <= 0:
            self.error(
                "E0223", "`window` must be longer than zero", value.span, "for example `window 24h`"
            )

    # routes ----------------------------------------------------------------

    def _route(self, route: ast.Route) -> None:
        if route.when is not None:
            self._condition(route.when, allow_model=False)
        self._settings(route.items, route)
        preferred: dict[str, Span] = {}
        for item in route.items:
            if isinstance(item, ast.Prefer):
                models = self._model_ref(item.ref)
                for model in models:
                    if model.key in preferred and item.ref.model is not None:
                        self.error(
                            "E0230",
                            f"`{model.key}` is preferred twice in route `{route.name.text}`",
                            item.ref.span,
                            f"the first is at {preferred[model.key].location()}",
                        )
                    preferred.setdefault(model.key, item.ref.span)
                if item.weight is not None:
                    w = item.weight
                    if w.unit not in (Unit.COUNT, Unit.PERCENT):
                        self.error(
                            "E0231",
                            f"a weight is a number, not {_article(w.unit)}",
                            w.span,
                            "write `weight 40`",
                        )
                    elif float(w.value) <= 0:  # type: ignore[arg-type]
                        self.error(
                            "E0232",
                            "a weight must be greater than zero",
                            w.span,
                            "leave the model out, or `exclude` it",
                        )
            elif isinstance(item, ast.Exclude):
                for ref in item.refs:
                    self._model_ref(ref)
            elif isinstance(item, ast.Require):
                self._condition(item.condition, allow_model=True)
            elif isinstance(item, ast.Split):
                self._split(route, item)
            elif isinstance(item, ast.Shadow):
                self._shadow(route, item)

    # experiments -----------------------------------------------------------

    def _shadow(self, route: ast.Route, shadow: ast.Shadow) -> None:
        """`shadow route b` (E0267–E0269)."""
        first = next(i for i in route.items if isinstance(i, ast.Shadow))
        if first is not shadow:
            self.error(
                "E0268",
                f"route `{route.name.text}` has more than one `shadow`",
                shadow.span,
                f"the first is at {first.span.location()}; a route has one shadow route",
            )
            return
        name = shadow.route.text
        target = self._other_route(
            route, shadow.route, "E0267", "shadows itself", "in a shadow",
            "a shadow names another route of the policy",
        )  # fmt: skip
        if target is None:
            return
        if any(isinstance(i, ast.Split | ast.Shadow) for i in target.items):
            self.error(
                "E0269",
                f"shadow route `{name}` splits or has a shadow of its own",
                shadow.route.span,
                "a shadow route decides the request as it is; shadow one of the arms instead"
                if any(isinstance(i, ast.Split) for i in target.items)
                else "shadows do not chain: shadow each route from the served one",
            )

    def _other_route(
        self, route: ast.Route, named: ast.Name, code: str, itself: str, where: str, hint: str
    ) -> ast.Route | None:
        """The route a `shadow` or a split's arm names, if it is another route of the set;
        else the error `code` (`route `x` ITSELF`, or `unknown route `x` WHERE`) and None."""
        name = named.text
        target = self.route_nodes.get(name)
        if target is not None and target is not route:
            return target
        guess = did_you_mean(name, [n for n in self.route_nodes if n != route.name.text])
        self.error(
            code,
            f"route `{name}` {itself}" if target is route else f"unknown route `{name}` {where}",
            named.span,
            f"did you mean `{guess}`?" if guess else f"{hint}: `route {name} {{ … }}`",
        )
        return None

    def _split(self, route: ast.Route, split: ast.Split) -> None:
        """`split by request.KEY { 90%: route a  10%: route b }` (E0260–E0266)."""
        others = [item for item in route.items if item is not split]
        splits = [item for item in route.items if isinstance(item, ast.Split)]
        if others and split is splits[0]:  # said once, at the first split
            first = others[0]
            self.error(
                "E0265",
                f"route `{route.name.text}` splits, so it holds nothing but its `split`",
                first.span,
                "put the settings, `prefer` and `require` lines in the arm routes",
            )
        key = split.key
        if key.parts[0] != "request" or len(key.parts) < 2:
            self.error(
                "E0263",
                f"a split is keyed by a request field, not `{key.dotted}`",
                key.span,
                "for example `split by request.user` or `split by request.metadata.team`",
            )
        else:
            self._path_type(key, allow_model=False)
        total = 0.0
        seen: dict[str, Span] = {}
        shares_ok = True
        for arm in split.arms:
            share = arm.share
            if share.unit is not Unit.PERCENT or float(share.value) <= 0:  # type: ignore[arg-type]
                shares_ok = False
                self.error(
                    "E0264",
                    f"an arm's share is a percentage above zero, not `{share.text}`",
                    share.span,
                    "write `10%: route candidate`",
                )
            else:
                total += float(share.value)  # type: ignore[arg-type]
            name = arm.route.text
            if name in seen:
                self.error(
                    "E0262",
                    f"route `{name}` is an arm of this split twice",
                    arm.route.span,
                    f"the first is at {seen[name].location()}; add their shares into one arm",
                )
                continue
            seen[name] = arm.route.span
            target = self._other_route(
                route, arm.route, "E0261", "splits into itself", "in a split",
                "an arm names a route defined in the policy",
            )  # fmt: skip
            if target is None:
                continue
            if target.when is not None or any(isinstance(i, ast.Split) for i in target.items):
                own = "`when`" if target.when is not None else "`split`"
                self.error(
                    "E0266",
                    f"arm route `{name}` has its own {own}",
                    arm.route.span,
                    "an arm route is reached only through the split, which chooses the requests:"
                    f" remove the {own} of `{name}` at {target.name.span.location()}",
                )
        if shares_ok and split.arms and abs(total - 1.0) > 1e-9:
            self.error(
                "E0260",
                f"the shares of a split add up to {_plain(round(total * 100, 6))}%, not 100%",
                split.span,
                "every request goes to one arm: make the shares add up to exactly 100%",
            )

    # policy-wide constraints -----------------------------------------------

    def _policy_require(self, stmt: ast.PolicyRequire) -> None:
        """A top-level `require`: a condition on the model (and maybe the request) and a
        `when` on the request alone."""
        if stmt.when is not None:
            self._policy_when(stmt.when, "require")
        if not any(p.parts[0] == "model" for p in paths_in(stmt.condition)):
            self.error(
                "E0253",
                "a policy-wide `require` must read a model attribute",
                stmt.condition.span,
                'it chooses among models, e.g. `require model.regions contains "eu"`;'
                ' to refuse requests, write `deny "reason" when …`',
            )
            self._condition(stmt.condition, allow_model=False)
            return
        self._condition(stmt.condition, allow_model=True)

    def _deny(self, stmt: ast.Deny) -> None:
        if not str(stmt.reason.value).strip():
            self.error(
                "E0252",
                "a `deny` rule needs a reason",
                stmt.reason.span,
                'the reason is what the denied caller reads: `deny "free tier: no images" when …`',
            )
        if stmt.when is None:
            self.error(
                "E0251",
                "a `deny` rule needs a `when`",
                Span(stmt.span.source, stmt.span.start, stmt.reason.span.end),
                'say which requests it denies: `deny "reason" when request.… == …`',
            )
            return
        self._policy_when(stmt.when, "deny")

    def _policy_when(self, when: ast.Expr, what: str) -> None:
        """The `when` of a policy-wide `require` or a `deny`: the request only."""
        reads_model = next((p for p in paths_in(when) if p.parts[0] == "model"), None)
        if reads_model is not None:
            self.error(
                "E0250",
                f"the `when` of {_RULE_NAMES[what]} cannot read `{reads_model.dotted}`",
                reads_model.span,
                "a `when` says which requests the rule applies to and reads the request only;"
                " a condition on the model goes in the `require` itself"
                if what == "require"
                else "a `deny` refuses a request before any model is chosen: its `when`"
                " reads the request only",
            )
            return
        self._condition(when, allow_model=False)

    def _model_ref(self, ref: ast.ModelRef) -> list[object]:
        provider = ref.provider.text
        if provider not in self.catalog.providers:
            # maybe `prefer gemini-2.5-flash-lite` without the provider
            owners = [p for p in self.catalog.providers if self.catalog.find(p, provider)]
            if ref.model is None and owners:
                hint = f"write it as `{reference(owners[0], provider)}`"
            else:
                guess = did_you_mean(provider, self.catalog.providers)
                hint = (
                    f"did you mean `{reference(guess)}`?"
                    if guess
                    else "providers in the catalog: "
                    + ", ".join(f"`{p}`" for p in self.catalog.providers)
                )
            self.error("E0240", f"unknown provider `{provider}`", ref.provider.span, hint)
            return []
        if ref.model is None:
            return list(self.catalog.by_provider(provider))
        models = self.catalog.resolve(provider, ref.model.text)
        if not models:
            guess = did_you_mean(ref.model.text, self.catalog.names(provider))
            hint = (
                f"did you mean `{reference(provider, guess)}`?"
                if guess
                else f"`{provider}` models: "
                + ", ".join(f"`{m.id}`" for m in self.catalog.by_provider(provider))
            )
            self.error(
                "E0241",
                f"unknown model `{ref.model.text}` for provider `{provider}`",
                ref.model.span,
                hint,
            )
            return []
        return list(models)

    # alerts ----------------------------------------------------------------

    def _alert(self, alert: ast.Alert) -> None:
        """`alert "NAME" when SIGNAL OP THRESHOLD [per|over D] [for D] [to "URL"]`
        (E0700–E0708)."""
        before = len(self.diagnostics)
        spec = self._signal(alert.signal)
        signal_ok = spec is not None and len(self.diagnostics) == before
        if alert.op not in OPERATORS:
            self.error(
                "E0705",
                f"an alert compares its signal with `>`, `>=`, `<` or `<=`, not `{alert.op}`",
                alert.op_span,
                "a signal is a measurement or a count: say which side of the threshold is"
                " trouble, e.g. `p95(provider) > 3s`",
            )
        split = None if spec is None else split_word(alert.signal, spec, self.named_scopes)
        self._alert_name(alert, split, known=signal_ok)
        if spec is not None:
            self._threshold(alert, spec)
            self._alert_window(alert, spec)
        if alert.hold is not None:
            self._duration(alert.hold, "`for`", allow_zero=True)
        if alert.webhook is not None:
            url = str(alert.webhook.value)
            if not url.startswith(("http://", "https://")) or len(url.split("//", 1)[1]) == 0:
                self.error(
                    "E0707",
                    "an alert's webhook is an `http://` or `https://` URL,"
                    f" not {alert.webhook.text}",
                    alert.webhook.span,
                    'write `to "https://hooks.example.com/policyctl"`, or leave `to` out to'
                    " post to the server's `--alert-webhook`",
                )

    def _signal(self, signal: ast.Signal) -> SignalSpec | None:
        name = signal.name.dotted
        spec = SIGNALS.get(name)
        if spec is None:
            parts = signal.name.parts
            if len(parts) == 2 and parts[1] in SIGNALS and signal.subject is None:
                hint = f"write `{parts[1]}({parts[0]})`: the subject goes in parentheses"
            else:
                guess = did_you_mean(name, tuple(SIGNALS))
                hint = (
                    f"did you mean `{guess}`?"
                    if guess
                    else "signals: " + ", ".join(f"`{s}`" for s in SIGNALS)
                )
            self.error("E0700", f"unknown alert signal `{name}`", signal.name.span, hint)
            return None
        ref = signal.subject
        if ref is None or split_word(signal, spec, self.named_scopes) is not None:
            return spec
        words = subject_words(spec, self.named_scopes)
        if spec.catalog:
            if ref.model is None and ref.provider.text not in self.catalog.providers:
                guess = did_you_mean(ref.provider.text, (*words, *self.catalog.providers))
                example = reference(self.catalog.providers[0]) if self.catalog.providers else "…"
                if guess is None or guess in words:  # `p95(provder)`, `p95(user)`
                    self.error(
                        "E0701",
                        f"`{name}` cannot be split by `{ref.provider.text}`",
                        ref.span,
                        f"did you mean `{guess}`?"
                        if guess
                        else f"`{name}` is split by "
                        + " or ".join(f"`{w}`" for w in words)
                        + f", or names a provider (`{name}({example})`) or a model of the"
                        " catalog",
                    )
                    return spec
            self._model_ref(ref)
            return spec
        guess = did_you_mean(ref.text, words)
        shown = ", ".join(f"`{w}`" for w in words)
        self.error(
            "E0701",
            f"`{name}` cannot be split by `{ref.text}`",
            ref.span,
            f"did you mean `{guess}`?" if guess else f"`{name}` is split by one of {shown}",
        )
        return spec

    def _alert_name(self, alert: ast.Alert, split: str | None, *, known: bool) -> None:
        name = str(alert.name.value)
        if not name.strip():
            self.error(
                "E0708",
                "an alert needs a name",
                alert.name.span,
                'the name is what its notifications say: `alert "slow {key}" when …`',
            )
            return
        rest = name.replace(KEY_PLACEHOLDER, "")
        if "{" in rest or "}" in rest:
            self.error(
                "E0708",
                f"an alert's name may hold `{{key}}` and no other placeholder: {alert.name.text}",
                alert.name.span,
                "`{key}` is the provider, model, user or other key of an alert split by"
                ' one: `alert "slow {key}" when p95(provider) > 3s`',
            )
        elif KEY_PLACEHOLDER in name and split is None and known:
            self.error(
                "E0708",
                f"alert {alert.name.text} has `{{key}}` in its name but one series",
                alert.name.span,
                "split its signal to have a key: `p95(provider)`, `violations(user)`;"
                " or drop `{key}`",
            )

    def _threshold(self, alert: ast.Alert, spec: SignalSpec) -> None:
        lit = alert.threshold
        if lit.unit is spec.unit:
            return
        if spec.unit is Unit.DURATION and lit.unit is Unit.COUNT:
            hint = _setting_hint(Unit.DURATION, lit)
        elif spec.unit is Unit.MONEY and lit.unit is Unit.COUNT:
            hint = f"spend is money: write `${_plain(float(lit.value))}`"  # type: ignore[arg-type]
        elif spec.unit is Unit.PERCENT and lit.unit is Unit.COUNT and float(lit.value) <= 1:  # type: ignore[arg-type]
            hint = f"write it as a percentage: `{_plain(float(lit.value) * 100)}%`"  # type: ignore[arg-type]
        else:
            hint = f"`{spec.name}` is {_article(spec.unit)}: write it like {_EXAMPLES[spec.unit]}"
        self.error(
            "E0702",
            f"unit mismatch: `{spec.name}` is {_article(spec.unit)}, `{lit.text}` is"
            f" {_article(lit.unit)}",
            lit.span,
            hint,
        )

    def _alert_window(self, alert: ast.Alert, spec: SignalSpec) -> None:
        word = alert.window_word
        if word is None:
            if spec.counted:
                self.error(
                    "E0703",
                    f"`{spec.name}` is a count: it needs the window it is counted in",
                    Span(alert.span.source, alert.signal.span.start, alert.threshold.span.end),
                    f"write `… {alert.threshold.text} per 1m`",
                )
            return
        assert alert.window is not None
        if word != spec.window_word:
            if spec.counted:
                why = f"`{spec.name}` is a count: it is counted `per` a window"
            else:
                why = f"`{spec.name}` is a measurement: it is measured `over` a window"
            where = Span(alert.span.source, alert.window.span.start - len(word) - 1,
                         alert.window.span.end)  # fmt: skip
            if alert.span.source.text[where.start : where.start + len(word)] != word:
                where = alert.window.span
            self.error(
                "E0703",
                f"`{spec.name}` takes `{spec.window_word} D`, not `{word} D`",
                where,
                f"{why}: write `{spec.window_word} {alert.window.text}`",
            )
            return
        self._duration(alert.window, f"`{word}`", allow_zero=False)

    def _duration(self, lit: ast.Literal, what: str, *, allow_zero: bool) -> None:
        value = float(lit.value)  # type: ignore[arg-type]
        if lit.unit is not Unit.DURATION:
            self.error(
                "E0704",
                f"{what} takes a duration, not {_article(lit.unit)}",
                lit.span,
                _setting_hint(Unit.DURATION, lit),
            )
        elif value <= 0 and not allow_zero:
            self.error(
                "E0704",
                f"{what} takes a duration longer than zero",
                lit.span,
                f"write {what[:-1]} 1m`",
            )
        elif value > MAX_WINDOW_MS and what != "`for`":
            self.error(
                "E0704",
                f"an alert's window is at most a day, not `{lit.text}`",
                lit.span,
                "the window is held in memory: write `per 1d` or shorter",
            )

    # expressions -----------------------------------------------------------

    def _condition(self, expr: ast.Expr, *, allow_model: bool) -> None:
        t = self.type_of(expr, allow_model=allow_model)
        if t is not None and t[0] not in (Unit.BOOL, Unit.ANY):
            self.error(
                "E0300",
                f"a condition must be true or false, but this is {describe(t)}",
                expr.span,
                _condition_hint(expr),
            )

    def type_of(self, expr: ast.Expr, *, allow_model: bool) -> FieldType | None:
        """The type of an expression, or None after reporting an error inside it."""
        if isinstance(expr, ast.Literal):
            return (expr.unit, None)
        if isinstance(expr, ast.ListLit):
            return self._list_type(expr, allow_model)
        if isinstance(expr, ast.Path):
            return self._path_type(expr, allow_model)
        if isinstance(expr, ast.Not):
            self._condition(expr.operand, allow_model=allow_model)
            return _BOOL
        if isinstance(expr, ast.BoolOp):
            for operand in expr.operands:
                self._condition(operand, allow_model=allow_model)
            return _BOOL
        if isinstance(expr, ast.Compare):
            self._compare(expr, allow_model)
            return _BOOL
        raise AssertionError(f"unknown expression {expr!r}")  # pragma: no cover

    def _list_type(self, expr: ast.ListLit, allow_model: bool) -> FieldType | None:
        item: Unit | None = None
        for element in expr.items:
            t = self.type_of(element, allow_model=allow_model)
            if t is None:
                return None
            if t[0] is Unit.LIST:
                self.error(
                    "E0310",
                    "lists cannot hold lists",
                    element.span,
                    'write one flat list, e.g. `["eu", "us"]`',
                )
                return None
            if t[0] in (Unit.NULL, Unit.ANY):
                continue
            if item is None:
                item = t[0]
            elif item is not t[0]:
                self.error(
                    "E0311",
                    f"a list holds one kind of value: {_article(item)} and {_article(t[0])}",
                    element.span,
                    "split it into two conditions",
                )
                return None
        return (Unit.LIST, item or Unit.ANY)

    def _path_type(self, path: ast.Path, allow_model: bool) -> FieldType | None:
        root, rest = path.parts[0], path.parts[1:]
        roots = ("request", "model") if allow_model else ("request",)
        if root not in roots:
            if root == "model" and not allow_model:
                self.error(
                    "E0320",
                    "`model` can only be used inside `require`",
                    path.span,
                    f"a `when` reads the request; read `{path.dotted}` in a route's `require`,"
                    " or in a health rule: `degraded when model.p95 > 3s`"
                    if len(rest) == 1 and rest[0] in MEASURED_ATTRS
                    else 'write `require model.regions contains "eu"` in a route body;'
                    " `request.model` is the model the request asked for",
                )
                return None
            guess = did_you_mean(root, roots)
            self.error(
                "E0321",
                f"unknown name `{root}`",
                Span(path.span.source, path.span.start, path.span.start + len(root)),
                f"did you mean `{guess}`?" if guess else "fields start with `request.`",
            )
            return None
        if not rest:
            self.error(
                "E0322",
                f"`{root}` needs a field",
                path.span,
                f"for example `{root}.{'region' if root == 'request' else 'regions'}`",
            )
            return None
        if root == "request":
            if rest[0] == METADATA_FIELD:
                if len(rest) == 2:
                    return _ANY
                self.error(
                    "E0323",
                    "metadata is read one key deep: `request.metadata.<key>`",
                    path.span,
                    "metadata values are strings, numbers or booleans",
                )
                return None
            if rest[0] == FEATURES_FIELD:
                return self._plugin(path, rest)
            table = _REQUEST_TABLE  # the request's own fields and the derived ones
            names = [*REQUEST_FIELDS, "metadata", *DERIVED_FIELDS]
        else:
            if len(rest) == 2 and rest[0] == QUALITY:
                return self._quality_task(path, rest[1])
            table = MODEL_ATTRS
            names = list(MODEL_ATTRS)
        dotted = ".".join(rest)
        if dotted in table:
            return table[dotted]
        guess = did_you_mean(dotted, names)
        plugins = active().names() if root == "request" else []
        if guess is None and root == "request" and len(rest) == 2:
            if did_you_mean(rest[0], [METADATA_FIELD]) is not None:  # `request.metdata.team`
                guess = f"{METADATA_FIELD}.{rest[1]}"
            elif did_you_mean(rest[0], [FEATURES_FIELD]) is not None:  # `request.feature.x`
                guess = f"{FEATURES_FIELD}.{rest[1]}"
        if root == "request" and len(rest) == 1 and rest[0] in plugins:  # `request.topic`
            guess = f"{FEATURES_FIELD}.{rest[0]}"
        if guess:
            hint = f"did you mean `{root}.{guess}`?"
        else:
            hint = f"`{root}` fields: " + ", ".join(f"`{n}`" for n in _shown_fields(names))
            if root == "request":
                hint += f", `{FEATURES_FIELD}.<name>` ({_features_help(plugins)})"
        self.error("E0324", f"unknown field `{path.dotted}`", path.span, hint)
        return None

    def _plugin(self, path: ast.Path, rest: tuple[str, ...]) -> FieldType | None:
        """`request.features.<name>`: a registered classifier plugin, typed by its
        registration (E0293 unknown, E0294 registered but unusable)."""
        registry = active()
        names = registry.names()
        if len(rest) != 2:
            self.error(
                "E0293",
                "a classifier plugin is read by its name: `request.features.<name>`",
                path.span,
                _plugins_help(names),
            )
            return None
        name = rest[1]
        found = registry.get(name)
        if found is None:
            guess = did_you_mean(name, names)
            self.error(
                "E0293",
                f"no classifier plugin `{name}` is registered",
                path.span,
                f"did you mean `request.features.{guess}`?" if guess else _plugins_help(names),
            )
            return None
        if isinstance(found, Broken):
            self.error(
                "E0294",
                f"classifier plugin `{name}` (entry point `{name} = {found.entry}`) cannot be"
                f" used: {found.error}",
                path.span,
                "fix or reinstall the plugin's package (docs/features.md), or stop reading"
                f" `request.features.{name}`",
            )
            return None
        return PLUGIN_TYPES[found.spec.type]

    def _quality_task(self, path: ast.Path, task: str) -> FieldType | None:
        """`model.quality.<task>`: a task some catalog model has a score for (null on the
        models without one), or `overall` (`model.quality`)."""
        tasks = self.catalog.quality_tasks()
        if task == "overall" or task in tasks:
            return QUALITY_TASK
        guess = did_you_mean(task, [*tasks, "overall"])
        if guess:
            hint = f"did you mean `model.{QUALITY}.{guess}`?"
        elif tasks:
            hint = "tasks the catalog scores: " + ", ".join(f"`{t}`" for t in tasks)
        else:
            hint = (
                "the catalog scores no tasks (`quality.tasks`);"
                " `model.quality` is the overall score"
            )
        self.error(
            "E0325",
            f"no model of the catalog has a quality score for task `{task}`",
            path.span,
            hint,
        )
        return None

    def _compare(self, expr: ast.Compare, allow_model: bool) -> None:
        lt = self.type_of(expr.left, allow_model=allow_model)
        rt = self.type_of(expr.right, allow_model=allow_model)
        if lt is None or rt is None:
            return
        op = expr.op
        if op in ("in", "not in"):
            self._membership(expr, needle=(expr.left, lt), hay=(expr.right, rt))
        elif op == "contains":
            self._membership(expr, needle=(expr.right, rt), hay=(expr.left, lt))
        else:
            self._binary(expr, lt, rt)
        self._capability_names(expr)
        self._closed_values(expr)

    def _closed_values(self, expr: ast.Compare) -> None:
        """`request.text.script == "klingon"`: a value a field with a closed set never has
        (`==`, `!=`, `in` and `not in` a list: `"openai" in request.format` is a substring
        test, and any substring may be meant)."""
        if not (expr.op in ("==", "!=") or isinstance(expr.right, ast.ListLit)):
            return
        for name, item in _strings_compared(expr, CLOSED_VALUES):
            values = CLOSED_VALUES[name]
            if item.value in values:
                continue
            guess = did_you_mean(str(item.value), values)
            self.error(
                "E0344",
                f"`{name}` is never `{item.value}`",
                item.span,
                f"did you mean `{guess}`?"
                if guess
                else f"`{name}` is one of " + ", ".join(f"`{v}`" for v in values),
            )

    def _capability_names(self, expr: ast.Compare) -> None:
        """`model.supports contains "vison"`: a capability no catalog can have."""
        for _, item in _strings_compared(expr, ("model.supports",)):
            if item.value in CAPABILITIES:
                continue
            guess = did_you_mean(str(item.value), CAPABILITIES)
            self.error(
                "E0343",
                f"unknown capability `{item.value}`",
                item.span,
                f"did you mean `{guess}`?"
                if guess
                else "capabilities: " + ", ".join(f"`{c}`" for c in CAPABILITIES),
            )

    def _binary(self, expr: ast.Compare, lt: FieldType, rt: FieldType) -> None:
        op = expr.op
        if Unit.NULL in (lt[0], rt[0]):
            if op not in ("==", "!="):
                self.error(
                    "E0330",
                    f"`{op}` with `null` is never true",
                    expr.op_span,
                    "use `== null` to test that a field is missing",
                )
            return
        if Unit.ANY in (lt[0], rt[0]):
            if op not in ("==", "!=") and Unit.LIST in (lt[0], rt[0]):
                self.error(
                    "E0331", f"`{op}` does not order lists", expr.op_span, "use `==` or `!=`"
                )
            return
        if lt[0] is not rt[0] or (lt[0] is Unit.LIST and not _items_match(lt[1], rt[1])):
            self._mismatch(expr, lt, rt)
            return
        if op not in ("==", "!=") and lt[0] not in _ORDERED:
            self.error(
                "E0332",
                f"`{op}` needs values with an order, not {describe(lt)}",
                expr.op_span,
                "use `==` or `!=`",
            )

    def _mismatch(self, expr: ast.Compare, lt: FieldType, rt: FieldType) -> None:
        left, right = expr.left, expr.right
        if isinstance(right, ast.Literal) and not isinstance(left, ast.Literal):
            message = (
                f"unit mismatch: `{_text(left)}` is {describe(lt)}, "
                f"`{right.text}` is {describe(rt)}"
            )
            span, want = right.span, lt
        elif isinstance(left, ast.Literal) and not isinstance(right, ast.Literal):
            message = (
                f"unit mismatch: `{left.text}` is {describe(lt)}, "
                f"`{_text(right)}` is {describe(rt)}"
            )
            span, want = left.span, rt
        else:
            message = (
                f"unit mismatch: cannot compare {describe(lt)} (`{_text(left)}`) "
                f"with {describe(rt)} (`{_text(right)}`)"
            )
            span, want = expr.span, lt
        example = _EXAMPLES.get(want[0])
        if want[0] is Unit.DURATION and rt[0] is Unit.COUNT and isinstance(right, ast.Literal):
            ms = float(right.value)  # type: ignore[arg-type]
            seconds = f" or `{ms / 1000:g}s`" if ms >= 1000 else ""
            help_text = f"durations carry a unit: write `{right.text}ms`{seconds}"
        elif example:
            help_text = f"compare {want[0].value} with {want[0].value}, e.g. {example}"
        else:
            help_text = "both sides must have the same type"
        self.error("E0333", message, span, help_text)

    def _membership(
        self,
        expr: ast.Compare,
        *,
        needle: tuple[ast.Expr, FieldType],
        hay: tuple[ast.Expr, FieldType],
    ) -> None:
        (n_expr, nt), (h_expr, ht) = needle, hay
        if ht[0] is Unit.STRING:
            if nt[0] in (Unit.STRING, Unit.ANY, Unit.NULL):
                return  # substring test
            self.error(
                "E0342",
                f"unit mismatch: `{_text(h_expr)}` is a string, `{_text(n_expr)}` is"
                f" {describe(nt)}",
                n_expr.span,
                'look for a string, e.g. `"eu"`',
            )
            return
        if ht[0] is Unit.ANY:
            return
        if ht[0] is not Unit.LIST:
            self.error(
                "E0340",
                f"`{expr.op}` needs a list or a string, but `{_text(h_expr)}` is {describe(ht)}",
                h_expr.span,
                'for example `request.region in ["eu", "us"]`',
            )
            return
        if nt[0] is Unit.LIST:
            self.error(
                "E0341",
                f"`{expr.op}` looks for one value, not a list",
                n_expr.span,
                "split it: `a in list and b in list`",
            )
            return
        if not _items_match(ht[1], nt[0]):
            self.error(
                "E0342",
                f"unit mismatch: `{_text(h_expr)}` holds {ht[1].value}s, "  # type: ignore[union-attr]
                f"`{_text(n_expr)}` is {describe(nt)}",
                n_expr.span,
                f"look for {_article(ht[1])}, e.g. {_EXAMPLES.get(ht[1], 'a value')}",  # type: ignore[arg-type]
            )

    # limits ----------------------------------------------------------------

    def _limit(self, limit: ast.Limit) -> None:
        scope = limit.scope.text
        if limit.key_expr is None and scope not in STANDARD_SCOPES:
            guess = did_you_mean(scope, STANDARD_SCOPES)
            self.error(
                "E0400",
                f"unknown scope `{scope}`",
                limit.scope.span,
                f"did you mean `{guess}`?"
                if guess
                else "scopes: `global`, `user`, `ip`, `provider`, `model`; a named scope"
                f" needs a key: `limit {scope} = {_key_example(scope)} …`",
            )
        if limit.key_expr is not None:
            if scope in STANDARD_SCOPES:
                self.error(
                    "E0401",
                    f"scope `{scope}` has its own key; a key expression names a new scope",
                    limit.key_expr.span,
                    f"choose a new name: `limit my_{scope} = {limit.key_expr.dotted} …`",
                )
            else:
                t = self._path_type(limit.key_expr, allow_model=False)
                if t is not None and t[0] not in (Unit.STRING, Unit.ANY):
                    self.error(
                        "E0402",
                        f"a limit key must be a string, but `{limit.key_expr.dotted}` is"
                        f" {describe(t)}",
                        limit.key_expr.span,
                        "key a scope by a string field, e.g. `request.metadata.team`",
                    )
        if limit.key is not None:
            if scope == "global":  # the grammar takes a key only as a string
                self.error(
                    "E0404",
                    "the `global` scope has no keys",
                    limit.key.span,
                    "remove the key, or use `user`, `ip`, `provider` or `model`",
                )
            elif scope == "provider" and str(limit.key.value) not in self.catalog.providers:
                guess = did_you_mean(str(limit.key.value), self.catalog.providers)
                self.error(
                    "E0406",
                    f"unknown provider `{limit.key.value}`",
                    limit.key.span,
                    f"did you mean `{guess}`?"
                    if guess
                    else "providers in the catalog: "
                    + ", ".join(f"`{p}`" for p in self.catalog.providers),
                )
            elif scope == "model" and self._limit_model(str(limit.key.value)) is None:
                key = str(limit.key.value)
                names = [
                    f"{m.provider}/{n}" for m in self.catalog.models for n in (m.id, *m.aliases)
                ]
                guess = did_you_mean(key, names)
                self.error(
                    "E0407",
                    f"unknown model `{key}`",
                    limit.key.span,
                    f"did you mean `{guess}`?"
                    if guess
                    else "a model limit's key is `provider/model`, e.g. `openai/gpt-4o`",
                )
            elif not str(limit.key.value).strip():
                self.error(
                    "E0405",
                    "a limit key cannot be empty",
                    limit.key.span,
                    f'name the key, e.g. `limit {scope} "vip-user" …`',
                )
        unit = limit.unit.text if limit.unit else "requests"
        assert unit in LIMIT_UNITS
        if unit == CONCURRENT:
            self._inflight(limit)
            self._wait_refused(limit)
            if limit.when is not None:
                self._condition(limit.when, allow_model=False)
            return
        want = Unit.MONEY if unit == "spend" else Unit.COUNT
        self._amount(limit.amount, want, unit, "limit")
        if limit.burst is not None:
            self._amount(limit.burst, want, unit, "burst", allow_zero=True)
        w = limit.window
        assert w is not None  # the grammar requires `per` but for `concurrent`
        if w.unit is not Unit.DURATION:
            self.error(
                "E0410",
                f"a limit's window is a duration, not {_article(w.unit)}",
                w.span,
                "write `per 1m`, `per 1h` or `per 1d`",
            )
        elif float(w.value) <= 0:  # type: ignore[arg-type]
            self.error(
                "E0411",
                "a limit's window must be longer than zero",
                w.span,
                "write `per 1m`, `per 1h` or `per 1d`",
            )
        if limit.wait is not None:
            self._wait(limit)
        if limit.when is not None:
            self._condition(limit.when, allow_model=False)

    def _wait_refused(self, limit: ast.Limit) -> bool:
        """`wait up to D` where nothing could wait: on a `shadow` limit (E0422), which never
        denies, or a `concurrent` one (E0423), whose slots come back with outcomes, not by
        the clock the waiters run on. True when refused."""
        wait = limit.wait
        if wait is None:
            return False
        if limit.unit is not None and limit.unit.text == CONCURRENT:
            self.error(
                "E0423",
                "a `concurrent` limit cannot wait: its slots come back with outcomes,"
                " not with time",
                wait.span,
                "drop `wait up to "
                f"{wait.text}`: a request that finds every slot taken is denied at once"
                " (retry after the soonest lease runs out)",
            )
            return True
        if limit.shadow:
            self.error(
                "E0422",
                "a shadow limit cannot wait",
                wait.span,
                f"a shadow limit never denies, so nothing waits: drop `wait up to {wait.text}`,"
                " or drop `shadow`",
            )
            return True
        return False

    def _wait(self, limit: ast.Limit) -> None:
        """`wait up to D` (E0420, E0421): a duration longer than zero, within the window;
        on a limit that can deny by time (E0422)."""
        wait, window = limit.wait, limit.window
        assert wait is not None and window is not None
        if self._wait_refused(limit) or not self._wait_duration(wait, "a limit's wait"):
            pass
        elif window.unit is Unit.DURATION and float(wait.value) > float(window.value):  # type: ignore[arg-type]
            self.error(
                "E0421",
                f"a limit's wait (`{wait.text}`) is longer than its window (`{window.text}`)",
                wait.span,
                f"the bucket refills within `per {window.text}`: wait at most `{window.text}`",
            )

    def _wait_duration(self, wait: ast.Literal, what: str) -> bool:
        """`wait up to D` is a duration longer than zero (E0420)."""
        if wait.unit is not Unit.DURATION or float(wait.value) <= 0:  # type: ignore[arg-type]
            self.error(
                "E0420",
                f"{what} is a duration longer than zero",
                wait.span,
                "write `wait up to 2s` (how long a denied request may wait for its tokens)",
            )
            return False
        return True

    def _inflight(self, limit: ast.Limit) -> None:
        """`limit … concurrent N [lease D]`: a whole number of slots, no window, no burst."""
        self._amount(limit.amount, Unit.COUNT, CONCURRENT, "limit")
        value = limit.amount.value
        if limit.amount.unit is Unit.COUNT and float(value) > 0 and not float(value).is_integer():  # type: ignore[arg-type]
            self.error(
                "E0416",
                "a `concurrent` limit is a whole number of requests in flight,"
                f" not `{limit.amount.text}`",
                limit.amount.span,
                f"write `concurrent {max(1, int(float(value)))}`",  # type: ignore[arg-type]
            )
        if limit.window is not None:
            self.error(
                "E0414",
                "a `concurrent` limit has no window: it counts requests in flight, not per time",
                limit.window.span,
                "remove `per …`; to bound how long a slot is held, write `lease 10m`",
            )
        if limit.burst is not None:
            self.error(
                "E0415",
                "a `concurrent` limit has no burst",
                limit.burst.span,
                "remove `burst …`; raise the limit to allow more requests in flight",
            )
        lease = limit.lease
        if lease is not None and (lease.unit is not Unit.DURATION or float(lease.value) <= 0):  # type: ignore[arg-type]
            self.error(
                "E0417",
                "a lease is a duration longer than zero",
                lease.span,
                "write `lease 10m` (a slot whose outcome never comes is released after it)",
            )

    def _amount(
        self, lit: ast.Literal, want: Unit, unit: str, what: str, allow_zero: bool = False
    ) -> None:
        if lit.unit is not want:
            if want is Unit.MONEY:
                if lit.unit is Unit.COUNT:
                    hint = f"a `spend` {what} is money: write `${_plain(float(lit.value))}`"  # type: ignore[arg-type]
                else:
                    hint = f"a `spend` {what} is money, e.g. `$5`"
            elif lit.unit is Unit.MONEY:
                hint = f"to limit money, write `spend`: `limit … spend {lit.text} per 1d`"
            else:
                hint = f"a `{unit}` {what} is a count, e.g. `100` or `200k`"
            self.error(
                "E0412",
                f"a `{unit}` {what} is {_article(want)}, not {_article(lit.unit)}",
                lit.span,
                hint,
            )
            return
        value = float(lit.value)  # type: ignore[arg-type]
        if value < 0 or (value == 0 and not allow_zero):
            self.error(
                "E0413",
                f"a {what} must be greater than zero",
                lit.span,
                "to block traffic, write a route that denies it" if what == "limit" else None,
            )

    def _limit_model(self, key: str) -> object | None:
        provider, _, name = key.partition("/")
        found = self.catalog.resolve(provider, name) if name else ()
        return found[0] if found else None

    # lint ------------------------------------------------------------------

    def _lint(self, files: list[ast.PolicyFile]) -> None:
        catch_all: ast.Route | None = None
        for policy in files:
            for stmt in policy.statements:
                if not isinstance(stmt, ast.Route):
                    continue
                self._lint_window(stmt)
                if catch_all is not None:
                    continue  # unreachable: the analysis says so (W0500)
                if stmt.when is None or _always_true(stmt.when):
                    catch_all = stmt
                self._lint_capabilities(stmt)
                self._lint_retired(stmt)

    def _lint_window(self, route: ast.Route) -> None:
        """`window` in a route: the live metrics window is one for the whole engine (the
        `defaults`' one), so a route's own has no effect."""
        for item in route.items:
            if isinstance(item, ast.ValueSetting) and item.key.text == "window":
                self.warn(
                    "W0510",
                    f"`window` in route `{route.name.text}` has no effect: the metrics window"
                    " is one for the whole engine",
                    item.span,
                    "set it in `defaults`; every route reads the measurements of that window",
                )

    def _lint_retired(self, route: ast.Route) -> None:
        """A route whose models are all retired (by `retires` in the catalog) at `now`."""
        if self.now is None:
            return
        now = self.now
        prefers = [i for i in route.items if isinstance(i, ast.Prefer)]
        models = [m for p in prefers for m in self._quiet_models(p.ref)] or list(
            self.catalog.models
        )
        if models and all(m.retired(now) for m in models):
            last = max(m.retires_at for m in models if m.retires_at is not None)
            self.warn(
                "W0502",
                f"every model route `{route.name.text}` can reach is retired"
                f" (the last on {format_day(last)})",
                route.name.span,
                "every request this route matches will be denied: prefer a current model",
            )

    def _lint_capabilities(self, route: ast.Route) -> None:
        """A route whose `when` needs a capability that none of its preferred models has."""
        if route.when is None:
            return
        needs = _required_capabilities(route.when)
        prefers = [i for i in route.items if isinstance(i, ast.Prefer)]
        if not needs or not prefers:
            return
        models = [m for p in prefers for m in self._quiet_models(p.ref)]
        if models and not any(needs <= m.supports for m in models):
            self.warn(
                "W0501",
                f"no model preferred by route `{route.name.text}` supports"
                f" {', '.join(sorted(needs))}",
                route.name.span,
                "every request this route matches will be denied: prefer a model that does",
            )

    def _quiet_models(self, ref: ast.ModelRef) -> list:  # type: ignore[type-arg]
        if ref.model is None:
            return list(self.catalog.by_provider(ref.provider.text))
        return list(self.catalog.resolve(ref.provider.text, ref.model.text))


_RULE_NAMES = {"require": "a policy-wide `require`", "deny": "a `deny` rule"}


def _key_example(scope: str) -> str:
    return f"request.{scope}" if scope in REQUEST_FIELDS else f"request.metadata.{scope}"


def _plain(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _setting_hint(want: Unit, value: ast.Literal) -> str:
    if want is Unit.DURATION and value.unit is Unit.COUNT:
        return f"durations carry a unit: write `{value.text}h`, `{value.text}m` or `{value.text}s`"
    return f"write it like {_EXAMPLES[want]}"


def _plugins_help(names: list[str]) -> str:
    if not names:
        return (
            f"no plugin is registered under the entry point group `{GROUP}`;"
            " docs/features.md shows how to write one"
        )
    return "registered plugins: " + ", ".join(f"`{n}`" for n in names)


def _features_help(names: list[str]) -> str:
    """What `request.features.<name>` can read: the registered classifier plugins, or how
    to register one (E0324's help)."""
    if names:
        return "a classifier plugin: " + ", ".join(f"`{n}`" for n in names)
    return (
        "a classifier plugin; none is registered: a package registers one under the entry"
        f" point group `{GROUP}`, docs/features.md"
    )


def _shown_fields(names: list[str]) -> list[str]:
    """Field names for a help line: the prompt features as one `text.<feature>`."""
    prefix = f"{TEXT_FIELD}."
    shown = [n for n in names if not n.startswith(prefix)]
    if len(shown) < len(names):
        shown.insert(shown.index(COMPLEXITY_FIELD), f"{prefix}<feature>")
    return shown


def _setting_key(item: ast.RouteItem) -> str | None:
    if isinstance(item, ast.StrategySetting):
        return "strategy"
    if isinstance(item, ast.ValueSetting):
        return item.key.text
    if isinstance(item, ast.FallbackSetting):
        return "fallback"
    if isinstance(item, ast.CooldownSetting):
        return "cooldown"
    if isinstance(item, ast.StoreErrorSetting):
        return "on_store_error"
    if isinstance(item, ast.DegradedSetting):
        return "degraded"
    if isinstance(item, ast.ExploreSetting):
        return "explore"
    if isinstance(item, ast.AffinitySetting):
        return "affinity"
    if isinstance(item, ast.WaitSetting):
        return "wait"
    if isinstance(item, ast.ComplexitySetting):
        return "complexity"
    return None


def _items_match(a: Unit | None, b: Unit | None) -> bool:
    return a is None or b is None or a is b or Unit.ANY in (a, b) or Unit.NULL in (a, b)


def _text(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Path):
        return expr.dotted
    if isinstance(expr, ast.Literal):
        return expr.text
    return expr.span.text()


def _condition_hint(expr: ast.Expr) -> str | None:
    if isinstance(expr, ast.Path):
        return f"compare it with a value, e.g. `{expr.dotted} == …`"
    return None


def _always_true(expr: ast.Expr) -> bool:
    return isinstance(expr, ast.Literal) and expr.value is True


def _required_capabilities(expr: ast.Expr) -> frozenset[str]:
    """Capabilities implied by a `when`: `request.requires_vision` as a top-level conjunct."""
    terms = expr.operands if isinstance(expr, ast.BoolOp) and expr.op == "and" else (expr,)
    needs: set[str] = set()
    for term in terms:
        if (
            isinstance(term, ast.Compare)
            and term.op == "=="
            and isinstance(term.right, ast.Literal)
        ) and term.right.value is True:
            term = term.left
        if (
            isinstance(term, ast.Path)
            and len(term.parts) == 2
            and term.parts[0] == "request"
            and term.parts[1] in NEEDS
        ):
            needs.add(NEEDS[term.parts[1]])
    return frozenset(needs)


def check(
    files: Iterable[ast.PolicyFile], catalog: Catalog, now: float | None = None
) -> list[Diagnostic]:
    """Every error and warning in a policy set, sorted by place; `now` (epoch seconds)
    also warns of routes that can only reach retired models."""
    return sorted(Checker(catalog, now).check(files), key=Diagnostic.sort_key)


def reference(provider: str, model: str | None = None) -> str:
    """`parser.reference`, imported when a message needs it: checking a policy does not
    import the parser (and Lark) when its parse was cached."""
    from engine.language.parser import reference as written

    return written(provider, model)

"""What the tests exercised of a policy: routes, condition branches, `require`s and limits,
each at its file:line:col.

Coverage is gathered without touching the evaluator: `Coverage` builds a second Program
whose `when` closures (of routes and limits) are wrapped by tracers that record each
condition's outcome, and each operand's of `and`/`or`/`not`, then return what the
compiled closure returns. Only `policyctl test --coverage` runs that Program; the
decisions are the same (the tracers call the original closures), and the normal
evaluation path is untouched. After each decision, `observe` records the route taken,
its `require`s (a route's filter runs whenever the route is taken), and the limits that
applied to the request (the limiter's own rule, `applicable`).

Items and what covers them:
- `route NAME` (and `defaults`, when the policy has one): a test's request took it;
- each `when` condition, and each operand of `and`, `or` and `not` inside it: two
  branches, seen true and seen false;
- each `require`: its route was taken;
- each `limit`: it applied to a test's request (its scope had a key, its `when` held);
- each policy-wide `require`: it applied to a test's request (no `deny` rule denied it
  and its `when`, if any, held);
- each `deny` rule: it denied a test's request.
The `when` of a policy-wide `require` or a `deny` counts as a condition, branch by
branch, like a route's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.language import ast
from engine.language.compiler import compile_condition
from engine.language.program import Pred, Program
from engine.limits.limiter import applicable, group_limits
from engine.limits.records import LimitDenial
from engine.routing.decision import Decision, DeniedByRule


@dataclass
class Item:
    """One thing coverage counts, at its place in a policy file."""

    file: str
    line: int
    col: int
    kind: str  # route | defaults | condition | require | limit | policy-require | deny
    text: str
    branches: bool = False  # a condition: covered by a true and a false outcome
    hits: int = 0
    true: int = 0
    false: int = 0

    @property
    def total(self) -> int:
        return 2 if self.branches else 1

    @property
    def covered(self) -> int:
        if self.branches:
            return (self.true > 0) + (self.false > 0)
        return 1 if self.hits > 0 else 0

    def missing(self) -> str | None:
        """What the tests did not exercise, in words (None: fully covered)."""
        if self.branches:
            if self.true and self.false:
                return None
            if not self.true and not self.false:
                return "never evaluated"
            return "never true" if not self.true else "never false"
        if self.hits:
            return None
        return {
            "route": "never taken",
            "defaults": "never taken",
            "require": "its route never taken",
            "limit": "never applied",
            "policy-require": "never applied",
            "deny": "never denied a request",
        }[self.kind]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "line": self.line,
            "col": self.col,
            "kind": self.kind,
            "text": self.text,
            "covered": self.covered,
            "total": self.total,
        }
        if self.branches:
            out["true"] = self.true
            out["false"] = self.false
        else:
            out["hits"] = self.hits
        return out


@dataclass(frozen=True, slots=True)
class FileCoverage:
    file: str
    items: tuple[Item, ...]

    @property
    def covered(self) -> int:
        return sum(i.covered for i in self.items)

    @property
    def total(self) -> int:
        return sum(i.total for i in self.items)

    @property
    def percent(self) -> float:
        return 100.0 if not self.total else 100.0 * self.covered / self.total

    @property
    def uncovered_lines(self) -> list[int]:
        return sorted({i.line for i in self.items if i.missing() is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "covered": self.covered,
            "total": self.total,
            "percent": round(self.percent, 1),
            "uncovered_lines": self.uncovered_lines,
            "items": [i.to_dict() for i in self.items],
        }


def _item(span: Any, kind: str, text: str, branches: bool = False) -> Item:
    return Item(span.source.name, span.line, span.col, kind, text, branches)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _traced(expr: ast.Expr, items: list[Item]) -> Pred:
    """A closure computing `expr` as the compiler does (short-circuit `and`/`or`), recording
    each condition's outcome: one item per `when`, and per operand of `and`/`or`/`not`."""
    item = _item(expr.span, "condition", _one_line(expr.span.text()), branches=True)
    items.append(item)
    if isinstance(expr, ast.BoolOp):
        parts = [_traced(o, items) for o in expr.operands]
        if expr.op == "and":

            def inner(r: Any, m: Any) -> bool:
                return all(p(r, m) for p in parts)
        else:

            def inner(r: Any, m: Any) -> bool:
                return any(p(r, m) for p in parts)
    elif isinstance(expr, ast.Not):
        operand = _traced(expr.operand, items)

        def inner(r: Any, m: Any) -> bool:
            return not operand(r, m)
    else:
        inner = compile_condition(expr)

    def traced(r: Any, m: Any) -> bool:
        value = bool(inner(r, m))
        if value:
            item.true += 1
        else:
            item.false += 1
        return value

    return traced


def _checked(original: Pred, tracer: Pred) -> Pred:
    """The tracer records; the compiled closure decides (the same value, by construction)."""

    def when(r: Any, m: Any) -> bool:
        tracer(r, m)
        return original(r, m)

    return when


@dataclass
class Coverage:
    """A policy's coverage items and the traced Program that fills them."""

    program: Program  # the traced copy: run the tests on this one
    items: list[Item]
    route_items: dict[str, Item]
    require_items: dict[str, list[Item]]
    limit_items: dict[str, Item]  # by the limit's location
    default_item: Item | None
    _groups: tuple[Any, ...] = field(default=(), repr=False)
    # the policy-wide `require`s (their untraced `when`) and `deny` rules (by location)
    policy_items: list[tuple[Pred | None, Item]] = field(default_factory=list)
    deny_items: dict[str, Item] = field(default_factory=dict)

    @classmethod
    def of(cls, program: Program, files: list[ast.PolicyFile]) -> Coverage:
        items: list[Item] = []
        route_items: dict[str, Item] = {}
        require_items: dict[str, list[Item]] = {}
        limit_items: dict[str, Item] = {}
        default_item: Item | None = None
        ast_routes = [s for f in files for s in f.statements if isinstance(s, ast.Route)]
        ast_limits = [s for f in files for s in f.statements if isinstance(s, ast.Limit)]
        defaults = [s for f in files for s in f.statements if isinstance(s, ast.Defaults)]
        if len(ast_routes) != len(program.routes) or len(ast_limits) != len(program.limits):
            raise ValueError("the policy's text and its program do not match")
        if defaults:
            default_item = _item(defaults[0].span, "defaults", "defaults")
            items.append(default_item)
        routes = []
        for node, route in zip(ast_routes, program.routes, strict=True):
            item = _item(node.span, "route", f"route {route.name}")
            items.append(item)
            route_items[route.name] = item
            when = route.when
            if node.when is not None and when is not None:
                when = _checked(when, _traced(node.when, items))
            requires = []
            for sub in node.items:
                if isinstance(sub, ast.Require):
                    text = f"require {_one_line(sub.condition.span.text())}"
                    requires.append(_item(sub.span, "require", text))
            items.extend(requires)
            require_items[route.name] = requires
            routes.append(replace(route, when=when) if when is not route.when else route)
        limits = []
        for node, limit in zip(ast_limits, program.limits, strict=True):
            item = _item(node.span, "limit", f"limit {limit.name}")
            items.append(item)
            limit_items[limit.location] = item
            when = limit.when
            if node.when is not None and when is not None:
                when = _checked(when, _traced(node.when, items))
            limits.append(replace(limit, when=when) if when is not limit.when else limit)
        ast_requires = [s for f in files for s in f.statements if isinstance(s, ast.PolicyRequire)]
        ast_denies = [s for f in files for s in f.statements if isinstance(s, ast.Deny)]
        policy_items: list[tuple[Pred | None, Item]] = []
        requires = []
        for node, require in zip(ast_requires, program.requires, strict=True):
            when_text = "" if node.when is None else f" when {_one_line(node.when.span.text())}"
            text = f"require {_one_line(node.condition.span.text())}{when_text}"
            item = _item(node.span, "policy-require", text)
            items.append(item)
            policy_items.append((require.when, item))
            if node.when is not None and require.when is not None:
                require = replace(require, when=_checked(require.when, _traced(node.when, items)))
            requires.append(require)
        deny_items: dict[str, Item] = {}
        denies = []
        for node, rule in zip(ast_denies, program.denies, strict=True):
            item = _item(node.span, "deny", f"deny {node.reason.text}")
            items.append(item)
            deny_items[rule.location] = item
            if node.when is not None:
                rule = replace(rule, when=_checked(rule.when, _traced(node.when, items)))
            denies.append(rule)
        traced = replace(
            program,
            routes=tuple(routes),
            limits=tuple(limits),
            requires=tuple(requires),
            denies=tuple(denies),
        )
        items.sort(key=lambda i: (i.file, i.line, i.col))
        return cls(
            traced, items, route_items, require_items, limit_items, default_item,
            group_limits(traced.limits), policy_items, deny_items,
        )  # fmt: skip

    def observe(self, env: Mapping[str, Any], decision: Decision, now: float) -> None:
        """Record what one decision exercised: its route, the route's requires, the limits
        that applied to the request."""
        denied = decision.denied_by
        if isinstance(denied, DeniedByRule):  # before routing: nothing else was asked
            item = self.deny_items.get(denied.location)
            if item is not None:
                item.hits += 1
            return
        for when, item in self.policy_items:
            if when is None or when(env, None):
                item.hits += 1
        route = self.route_items.get(decision.route or "")
        if route is not None:
            route.hits += 1
        elif decision.route == "default" and self.default_item is not None:
            self.default_item.hits += 1
        if decision.experiment is not None:  # the splitting route matched too
            splitting = self.route_items.get(decision.experiment)
            if splitting is not None:
                splitting.hits += 1
        for require in self.require_items.get(decision.route or "", ()):
            require.hits += 1
        if not decision.allowed and not isinstance(denied, LimitDenial):
            return  # no eligible model: the limits were not asked
        for group in self._groups:
            key = self._key(group, env, decision, denied)
            if key is None:
                continue
            for applied in applicable(group, key, None, env, now):
                item = self.limit_items.get(applied.source)
                if item is not None:
                    item.hits += 1

    def _key(
        self, group: Any, env: Mapping[str, Any], decision: Decision, denied: Any
    ) -> str | None:
        scope = group.scope
        if scope == "global":
            return ""
        if scope in ("provider", "model"):
            if decision.provider is None or decision.model is None:
                if isinstance(denied, LimitDenial) and denied.scope == scope:
                    return denied.key
                return None
            if scope == "provider":
                return decision.provider
            found = self.program.catalog.find(decision.provider, decision.model)
            return found.model_key if found is not None else None
        if group.key_field is not None:
            value = env[group.key_field]
        elif group.key_fn is not None:
            value = group.key_fn(env, None)
        else:
            return None
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def files(self) -> list[FileCoverage]:
        by_file: dict[str, list[Item]] = {}
        for item in self.items:
            by_file.setdefault(item.file, []).append(item)
        return [FileCoverage(name, tuple(found)) for name, found in by_file.items()]

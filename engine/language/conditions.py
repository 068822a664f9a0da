"""Conditions over a request as unions of boxes (`engine.language.domain`), and back.

`admits(expr, over=True)` is a union of boxes holding every request the condition admits
(an over-approximation); `admits(expr, over=False)` holds only requests it admits (an
under-approximation). A comparison the domain cannot express exactly (a substring test,
two fields compared, an ordered test on metadata, `request.ip`, `request.prompt`,
`request.format`, list equality) is *unknown*: true in the over side, false in the under
side. Every other comparison is exact, with the evaluator's null rule (a missing field
compares false, except `== null` and `!= null`).

A box turns into a request (`witness`): the JSON a user would send (`policyctl eval`) and
the evaluation environment the engine would build from it, so that the caller can check
the compiled conditions on it before showing it.

Standard library only (and the language room).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.language import ast
from engine.language.domain import (
    INF,
    Box,
    FinSet,
    Interval,
    NumSet,
    TooComplex,
    ValueSet,
    box_and,
)
from engine.language.schema import REQUEST_FIELDS
from engine.vocabulary import Unit

BUDGET = 4000  # boxes one condition or one subtraction may grow to before giving up

# numeric request fields: (integer, nullable, lower bound, lower bound open)
_NUMBERS: dict[str, tuple[bool, bool, float, bool]] = {
    "input_tokens": (True, False, 0.0, False),
    "max_tokens": (True, True, 1.0, False),
    "cached_tokens": (True, False, 0.0, False),
    "images": (True, False, 0.0, False),
    "max_cost": (False, True, 0.0, False),
    "max_latency_ms": (False, True, 0.0, True),
    "min_quality": (False, True, 0.0, False),
}
# derived numeric fields (`engine.wire.features` makes them when a condition reads them): a
# prompt feature's count and the complexity score; the same form, never null. They are not
# dimensions of a box (no request field sets them: `witness` could not write one), only
# ranges a test is held to (`range_test`)
_DERIVED_NUMBERS: dict[str, tuple[bool, bool, float, bool]] = {
    "text.tokens": (True, False, 0.0, False),
    "text.last_tokens": (True, False, 0.0, False),
    "text.turns": (True, False, 0.0, False),
    "complexity": (False, False, 0.0, False),
}
_UPPER = {"min_quality": 1.0, "complexity": 1.0}  # numeric fields with a closed upper bound
_ALIASES = {"max_latency": "max_latency_ms"}  # one request field, two names in policies
_STRINGS = ("id", "user", "model", "region")
BOOLS = tuple(f for f, t in REQUEST_FIELDS.items() if t[0] is Unit.BOOL)
_TAG = "request.tags∋"  # a dimension per tag: is it in `request.tags`
_META = "request.metadata."

_ANY_STRING = FinSet(frozenset(), True, True)
_BOOL_DOMAIN = FinSet(frozenset({True, False}), False, False)


def domain(dim: str) -> ValueSet:
    """Every value a dimension can take (null included when the field can be missing)."""
    if dim.startswith(_TAG):
        return _BOOL_DOMAIN
    if dim.startswith(_META):
        return _ANY_STRING
    name = dim.removeprefix("request.")
    if name in _NUMBERS:
        return _range(name, _NUMBERS[name])
    if name in BOOLS:
        return _BOOL_DOMAIN
    return _ANY_STRING


def _range(name: str, number: tuple[bool, bool, float, bool]) -> NumSet:
    integer, nullable, lo, lo_open = number
    hi = _UPPER.get(name)
    if hi is not None:
        return NumSet((Interval(lo, hi, lo_open, False),), nullable, integer)
    return NumSet((Interval(lo, INF, lo_open, True),), nullable, integer)


class Domains(dict[str, ValueSet]):
    """Every dimension's domain, made on first use."""

    def __missing__(self, dim: str) -> ValueSet:
        value = domain(dim)
        self[dim] = value
        return value


DOMAINS = Domains()


@dataclass(frozen=True, slots=True)
class _Atom:
    dim: str
    values: ValueSet


def _dim_of(path: ast.Path) -> str | None:
    parts = path.parts
    if parts[0] != "request" or len(parts) < 2:
        return None
    if parts[1] == "metadata" and len(parts) == 3:
        return _META + parts[2]
    name = _ALIASES.get(parts[1], parts[1])
    if name in _NUMBERS or name in _STRINGS or name in BOOLS:
        return "request." + name
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scalar_ok(dim: str, value: object) -> bool:
    if dim.startswith(_META):
        return isinstance(value, str | bool)
    if isinstance(DOMAINS[dim], NumSet):
        return _number(value) is not None
    if DOMAINS[dim] is _BOOL_DOMAIN:
        return isinstance(value, bool)
    return isinstance(value, str)


def _points(dim: str, values: list[object]) -> ValueSet:
    d = DOMAINS[dim]
    if isinstance(d, NumSet):
        nums = sorted({_number(v) for v in values})  # type: ignore[type-var]
        return NumSet(tuple(Interval(v, v) for v in nums), False, d.integer)  # type: ignore[arg-type]
    return FinSet(frozenset(values), False, False)


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def atom(expr: ast.Expr) -> _Atom | None:
    """A test on one dimension with the set of values it admits, or None (unknown)."""
    if isinstance(expr, ast.Path):
        dim = _dim_of(expr)
        if dim is not None and (DOMAINS[dim] is _BOOL_DOMAIN or dim.startswith(_META)):
            return _Atom(dim, FinSet(frozenset({True}), False, False))
        return None
    if not isinstance(expr, ast.Compare):
        return None
    op, left, right = expr.op, expr.left, expr.right
    if op in ("contains", "in", "not in"):
        return _membership(expr)
    if isinstance(left, ast.Literal) and isinstance(right, ast.Path):
        left, right, op = right, left, _FLIP[op]
    if not (isinstance(left, ast.Path) and isinstance(right, ast.Literal)):
        return None
    dim = _dim_of(left)
    if dim is None:
        return None
    d = DOMAINS[dim]
    if right.value is None:
        if op not in ("==", "!="):
            return _Atom(dim, _empty(d))
        null_only = _only_null(d)
        return _Atom(dim, null_only if op == "==" else null_only.complement(d))  # type: ignore[arg-type]
    value = right.value
    if not _scalar_ok(dim, value):
        return None
    if isinstance(d, NumSet):
        v = _number(value)
        assert v is not None
        return _Atom(dim, _compared(op, v, d))
    if op == "==":
        return _Atom(dim, FinSet(frozenset({value}), False, False))
    if op == "!=":
        return _Atom(dim, FinSet(frozenset({value}), True, False).intersect(d))  # type: ignore[arg-type]
    return None  # an order on strings or metadata: unknown


def _compared(op: str, v: float, d: NumSet) -> NumSet:
    """The values of `d` (null never) for which `value op v` holds."""
    ivs = {
        "==": (Interval(v, v),),
        "!=": (Interval(-INF, v, True, True), Interval(v, INF, True, True)),
        "<": (Interval(-INF, v, True, True),),
        "<=": (Interval(-INF, v, True, False),),
        ">": (Interval(v, INF, True, True),),
        ">=": (Interval(v, INF, False, True),),
    }[op]
    return NumSet(ivs, False, d.integer).intersect(d)


@dataclass(frozen=True, slots=True)
class RangeTest:
    """A number compared with a numeric field (a request field or a derived one): the
    field, every value it can take (`domain`, null included when it can be missing) and
    the values the test holds for (`holds`)."""

    field: ast.Path
    domain: NumSet
    holds: NumSet

    def never(self) -> bool:
        return self.holds.is_empty()

    def always(self) -> bool:
        """True for every request: every value holds and the field is never missing."""
        return not self.domain.null and self.holds.complement(self.domain).is_empty()


def range_test(expr: ast.Compare) -> RangeTest | None:
    """`expr` as a test of a numeric field against a number, or None (anything else)."""
    op, left, right = expr.op, expr.left, expr.right
    if op not in _FLIP:
        return None
    if isinstance(left, ast.Literal) and isinstance(right, ast.Path):
        left, right, op = right, left, _FLIP[op]
    if not (isinstance(left, ast.Path) and isinstance(right, ast.Literal)):
        return None
    v = _number(right.value)
    parts = left.parts
    if v is None or parts[0] != "request" or len(parts) < 2:
        return None
    name = ".".join(parts[1:])
    name = _ALIASES.get(name, name)
    number = _NUMBERS.get(name) or _DERIVED_NUMBERS.get(name)
    if number is None:
        return None
    d = _range(name, number)
    return RangeTest(left, d, _compared(op, v, d))


def _membership(expr: ast.Compare) -> _Atom | None:
    if expr.op == "contains":
        hay, needle, negate = expr.left, expr.right, False
    else:
        hay, needle, negate = expr.right, expr.left, expr.op == "not in"
    if isinstance(hay, ast.Path) and hay.dotted == "request.tags":
        if isinstance(needle, ast.Literal) and isinstance(needle.value, str):
            return _Atom(_TAG + needle.value, FinSet(frozenset({not negate}), False, False))
        return None
    if not (isinstance(needle, ast.Path) and isinstance(hay, ast.ListLit)):
        return None
    dim = _dim_of(needle)
    if dim is None:
        return None
    values: list[object] = []
    for item in hay.items:
        if not isinstance(item, ast.Literal):
            return None
        if item.value is None:
            continue
        if not _scalar_ok(dim, item.value):
            return None
        values.append(item.value)
    inside = _points(dim, values)
    d = DOMAINS[dim]
    if negate:  # present, and none of them
        outside = inside.complement(d)  # type: ignore[arg-type]
        return _Atom(dim, outside.intersect(_present(d)))  # type: ignore[arg-type]
    return _Atom(dim, inside)


def _empty(d: ValueSet) -> ValueSet:
    if isinstance(d, NumSet):
        return NumSet((), False, d.integer)
    return FinSet(frozenset(), False, False)


def _only_null(d: ValueSet) -> ValueSet:
    if isinstance(d, NumSet):
        return NumSet((), True, d.integer)
    return FinSet(frozenset(), False, True)


def _present(d: ValueSet) -> ValueSet:
    if isinstance(d, NumSet):
        return NumSet(d.parts, False, d.integer)
    return FinSet(d.values, d.cofinite, False)


def admits(expr: ast.Expr | None, *, over: bool, budget: int = BUDGET) -> list[Box]:
    """The requests a condition admits, as boxes: a superset (`over`) or a subset."""
    if expr is None:
        return [{}]
    return _dnf(expr, True, over, budget)


def _dnf(expr: ast.Expr, positive: bool, over: bool, budget: int) -> list[Box]:
    if isinstance(expr, ast.Not):
        return _dnf(expr.operand, not positive, over, budget)
    if isinstance(expr, ast.Literal) and isinstance(expr.value, bool):
        return [{}] if expr.value is positive else []
    if isinstance(expr, ast.BoolOp):
        conj = (expr.op == "and") is positive
        parts = [_dnf(o, positive, over, budget) for o in expr.operands]
        if not conj:
            return [b for part in parts for b in part]
        acc: list[Box] = [{}]
        for part in parts:
            nxt: list[Box] = []
            for a in acc:
                for b in part:
                    both = box_and(a, b)
                    if both is not None:
                        nxt.append(both)
            if len(nxt) > budget:
                raise TooComplex
            acc = nxt
            if not acc:
                break
        return acc
    found = atom(expr)
    if found is None:
        return [{}] if over else []
    values = found.values if positive else found.values.complement(DOMAINS[found.dim])  # type: ignore[arg-type]
    return [] if values.is_empty() else [{found.dim: values}]


def dims_of(expr: ast.Expr | None) -> set[str]:
    """The dimensions a condition tests exactly."""
    if expr is None:
        return set()
    if isinstance(expr, ast.Not):
        return dims_of(expr.operand)
    if isinstance(expr, ast.BoolOp):
        return set().union(*(dims_of(o) for o in expr.operands))
    found = atom(expr)
    return {found.dim} if found is not None else set()


# ---------------------------------------------------------------- witnesses

_FRESH = ("other", "other-1", "other-2", "other-3")


@dataclass(frozen=True, slots=True)
class Witness:
    request: dict[str, Any]  # the JSON a user sends
    env: dict[str, Any]  # what the engine evaluates


def witness(box: Box) -> Witness | None:
    """A request inside a box (None when a dimension offers no value we can write)."""
    request: dict[str, Any] = {}
    tags: list[str] = []
    metadata: dict[str, Any] = {}
    for dim in sorted(box):
        ok, value = _member(box[dim], dim)
        if not ok:
            return None
        if dim.startswith(_TAG):
            if value is True:
                tags.append(dim.removeprefix(_TAG))
            continue
        if value is None:
            continue
        if dim.startswith(_META):
            metadata[dim.removeprefix(_META)] = value
            continue
        name = dim.removeprefix("request.")
        if name in _NUMBERS and (_NUMBERS[name][0] or float(value).is_integer()):
            value = int(value)
        if value == _default(name) and type(value) is type(_default(name)):
            continue
        request[name] = value
    if tags:
        request["tags"] = tags
    if metadata:
        request["metadata"] = metadata
    return Witness(request, environment(request))


def _member(s: ValueSet, dim: str) -> tuple[bool, Any]:
    if isinstance(s, NumSet):
        return s.member()
    return s.member(_FRESH)


def _default(name: str) -> object:
    if name in BOOLS:
        return False
    if name in ("input_tokens", "cached_tokens", "images"):
        return 0
    return None


def environment(request: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine evaluates for a native request of these fields (as the request
    validator builds it; the witnesses only use the fields named here)."""
    tokens = float(request.get("input_tokens", 0))
    env: dict[str, Any] = {name: None for name in REQUEST_FIELDS}
    env.update({name: bool(request.get(name, False)) for name in BOOLS})
    for name in _STRINGS:
        env[name] = request.get(name)
    env["input_tokens"] = tokens
    env["cached_tokens"] = min(float(request.get("cached_tokens", 0)), tokens)
    env["images"] = float(request.get("images", 0))
    for name in ("max_tokens", "max_cost", "max_latency_ms", "min_quality"):
        value = request.get(name)
        env[name] = None if value is None else float(value)
    env["max_latency"] = env["max_latency_ms"]
    env["tags"] = list(request.get("tags", []))
    env["metadata"] = dict(request.get("metadata", {}))
    env["format"] = "native"
    env["key"] = None
    return env

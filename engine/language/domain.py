"""Sets of request values, one dimension at a time, and boxes (their products).

The condition analysis (`engine.language.conditions`) describes the requests a condition
admits as a union of boxes; a box gives each dimension (a request field, or one tag's
presence) a set of values. Two kinds of set are exact and closed under union's needs here
(intersection, complement, emptiness, a member):

- `NumSet`: a union of intervals of numbers (integers only, for counts), with or
  without null;
- `FinSet`: a finite set of values, or all values but a finite set (cofinite), with or
  without null; booleans are a finite universe.

Standard library (and the error base) only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.errors import EXIT_ERROR, PolicyctlError

INF = math.inf


@dataclass(frozen=True, slots=True)
class Interval:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def empty(self, integer: bool) -> bool:
        if self.lo == INF or self.hi == -INF:  # infinity is never a value
            return True
        lo, hi = self.bounds(integer)
        if integer:
            return lo > hi
        return lo > hi or (lo == hi and (self.lo_open or self.hi_open))

    def bounds(self, integer: bool) -> tuple[float, float]:
        """Closed integer bounds for a count (open ends stepped in), else the raw ends."""
        if not integer:
            return self.lo, self.hi
        lo, hi = self.lo, self.hi
        if not math.isinf(lo):
            lo = math.floor(lo) + 1 if self.lo_open else math.ceil(lo)
        if not math.isinf(hi):
            hi = math.ceil(hi) - 1 if self.hi_open else math.floor(hi)
        return lo, hi


@dataclass(frozen=True, slots=True)
class NumSet:
    """Numbers in any of `parts` (sorted, disjoint), and null when `null`."""

    parts: tuple[Interval, ...]
    null: bool
    integer: bool = False

    def intersect(self, other: NumSet) -> NumSet:
        out = []
        for a in self.parts:
            for b in other.parts:
                lo, lo_open = max((a.lo, a.lo_open), (b.lo, b.lo_open), key=_lo_key)
                hi, hi_open = min((a.hi, a.hi_open), (b.hi, b.hi_open), key=_hi_key)
                iv = Interval(lo, hi, lo_open, hi_open)
                if not iv.empty(self.integer):
                    out.append(iv)
        return NumSet(tuple(out), self.null and other.null, self.integer)

    def complement(self, domain: NumSet) -> NumSet:
        """The values of `domain` not in this set."""
        gaps = []
        cursor, cursor_open = -INF, False
        for iv in sorted(self.parts, key=lambda i: _lo_key((i.lo, i.lo_open))):
            gaps.append(Interval(cursor, iv.lo, cursor_open, not iv.lo_open))
            cursor, cursor_open = iv.hi, not iv.hi_open
        gaps.append(Interval(cursor, INF, cursor_open, False))
        gaps = [g for g in gaps if not g.empty(self.integer)]
        rest = NumSet(tuple(gaps), not self.null, self.integer)
        return rest.intersect(domain)

    def is_empty(self) -> bool:
        return not self.null and not self.parts

    def member(self) -> tuple[bool, float | None]:
        """(True, a value) — null first, then a round value inside the first part."""
        if self.null:
            return True, None
        if not self.parts:
            return False, None
        iv = self.parts[0]
        lo, hi = iv.bounds(self.integer)
        lo_open = iv.lo_open and not self.integer
        hi_open = iv.hi_open and not self.integer
        if lo != -INF and lo > 0 and not lo_open:
            return True, lo
        if hi != INF and not hi_open:
            return True, hi
        if (lo < 0 or (lo == 0 and not lo_open)) and hi > 0:
            return True, 0.0
        if lo != -INF and not lo_open:
            return True, lo
        if lo == -INF:
            return True, hi - 1
        if hi == INF:
            return True, lo + 1
        return True, (lo + hi) / 2


def _lo_key(end: tuple[float, bool]) -> tuple[float, int]:
    return end[0], 1 if end[1] else 0


def _hi_key(end: tuple[float, bool]) -> tuple[float, int]:
    return end[0], 0 if end[1] else 1


@dataclass(frozen=True, slots=True)
class FinSet:
    """`values` (or, when `cofinite`, every value but them), and null when `null`."""

    values: frozenset[object]
    cofinite: bool
    null: bool

    def intersect(self, other: FinSet) -> FinSet:
        null = self.null and other.null
        if self.cofinite and other.cofinite:
            return FinSet(self.values | other.values, True, null)
        if self.cofinite:
            return FinSet(other.values - self.values, False, null)
        if other.cofinite:
            return FinSet(self.values - other.values, False, null)
        return FinSet(self.values & other.values, False, null)

    def complement(self, domain: FinSet) -> FinSet:
        return FinSet(self.values, not self.cofinite, not self.null).intersect(domain)

    def is_empty(self) -> bool:
        return not self.null and not self.cofinite and not self.values

    def member(self, fresh: Iterable[object] = ()) -> tuple[bool, object]:
        """(True, a value): null first, then a listed value, then a fresh one."""
        if self.null:
            return True, None
        if not self.cofinite:
            if not self.values:
                return False, None
            return True, sorted(self.values, key=repr)[0]
        for candidate in fresh:
            if candidate not in self.values:
                return True, candidate
        return False, None


ValueSet = NumSet | FinSet


def intersect(a: ValueSet, b: ValueSet) -> ValueSet:
    return a.intersect(b)  # type: ignore[arg-type]


def complement(a: ValueSet, domain: ValueSet) -> ValueSet:
    return a.complement(domain)  # type: ignore[arg-type]


# A box: a set per dimension; a dimension it does not name is unconstrained.
Box = Mapping[str, ValueSet]


def box_and(a: Box, b: Box) -> dict[str, ValueSet] | None:
    """The intersection of two boxes, or None when it is empty."""
    out = dict(a)
    for dim, s in b.items():
        s = intersect(out[dim], s) if dim in out else s
        if s.is_empty():
            return None
        out[dim] = s
    return out


def box_minus(
    a: Box, b: Box, domains: Mapping[str, ValueSet], b_out: Box | None = None
) -> list[dict[str, ValueSet]]:
    """`a` without `b`, as disjoint boxes (`b_out`: each of `b`'s sets' complement, when
    the caller has them)."""
    if box_and(a, b) is None:
        return [dict(a)]  # apart: nothing to cut (and no needless pieces)
    if b_out is None:
        b_out = {dim: complement(bset, domains[dim]) for dim, bset in b.items()}
    out: list[dict[str, ValueSet]] = []
    rest = dict(a)
    for dim, bset in b.items():
        here = rest.get(dim, domains[dim])
        outside = intersect(here, b_out[dim])
        if not outside.is_empty():
            out.append({**rest, dim: outside})
        inside = intersect(here, bset)
        if inside.is_empty():
            return out
        rest[dim] = inside
    return out


class TooComplex(PolicyctlError, exit_code=EXIT_ERROR):
    """The analysis would need more work than its budget: it says nothing (caught inside
    the analysis; never reaches a user)."""


class Budget:
    """The box operations one analysis may still spend (shared by all its questions, so a
    policy of many overlapping routes costs a bounded time, not an exponential one)."""

    def __init__(self, ops: int) -> None:
        self.ops = ops

    def spend(self, n: int = 1) -> None:
        self.ops -= n
        if self.ops < 0:
            raise TooComplex


def subtract(
    boxes: Iterable[Box],
    covers: Iterable[Box],
    domains: Mapping[str, ValueSet],
    budget: int,
    work: Budget | None = None,
) -> list[dict[str, ValueSet]]:
    """The part of the union of `boxes` outside every box of `covers` (at most `budget`
    boxes at a time, and `work` box operations in all)."""
    left = [dict(b) for b in boxes]
    for cover in covers:
        nxt: list[dict[str, ValueSet]] = []
        cover_out = {dim: complement(s, domains[dim]) for dim, s in cover.items()}
        for box in left:
            if work is not None:
                work.spend()
            nxt.extend(box_minus(box, cover, domains, cover_out))
            if len(nxt) > budget:
                raise TooComplex
        left = nxt
        if not left:
            break
    return left


def restrict(box: Box, dim: str, s: ValueSet) -> dict[str, ValueSet] | None:
    return box_and(box, {dim: s})

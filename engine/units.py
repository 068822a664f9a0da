"""Literal syntax for units: `250ms 2s 1m 24h 1d`, `$0.001`, `80%`, `200k 1.5M`, dates.

Standard library only; the parser reads literals with it, the admin and the CLI durations.
"""

from __future__ import annotations

import datetime as dt

from engine.errors import PolicyctlError
from engine.language.ast import Unit

DURATION_MS = {"ms": 1.0, "s": 1_000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
COUNT_SCALE = {"": 1.0, "k": 1_000.0, "K": 1_000.0, "M": 1_000_000.0, "B": 1_000_000_000.0}

UNIT_HELP = (
    "durations: `250ms` `2s` `1m` `24h` `1d`; money: `$0.01`; percentages: `80%`; "
    "counts: `100` `200k` `1.5M`"
)


class UnitError(PolicyctlError, ValueError):
    """A number with a suffix that is not a unit."""


def read_number(text: str) -> tuple[float, Unit]:
    """`2s` -> (2000.0, DURATION); `80%` -> (0.8, PERCENT); `200k` -> (200000.0, COUNT)."""
    i = 0
    while i < len(text) and (text[i].isdigit() or text[i] in "._"):
        i += 1
    digits, suffix = text[:i].replace("_", ""), text[i:]
    value = float(digits)
    if len(digits) > 18 or value > 1e18:
        raise UnitError(f"number `{text}` is too large")
    if suffix in DURATION_MS:
        return value * DURATION_MS[suffix], Unit.DURATION
    if suffix == "%":
        return value / 100.0, Unit.PERCENT
    if suffix in COUNT_SCALE:
        return value * COUNT_SCALE[suffix], Unit.COUNT
    raise UnitError(f"unknown unit `{suffix}` in `{text}`")


def read_money(text: str) -> float:
    digits = text.lstrip("$").replace("_", "")
    if len(digits) > 18:
        raise UnitError(f"amount `{text}` is too large")
    return float(digits)


def read_date(text: str) -> float:
    """A date or date-time (UTC unless an offset is given) as epoch seconds."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def format_duration(ms: float) -> str:
    for suffix in ("d", "h", "m", "s"):
        scale = DURATION_MS[suffix]
        if ms >= scale and ms % scale == 0:
            return f"{int(ms // scale)}{suffix}"
    return f"{ms:g}ms"

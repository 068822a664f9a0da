"""Every spelling of a quantity, read and written in one place: policy literals (`250ms 2s
1m 24h 1d`, `$0.001`, `80%`, `200k 1.5M`, dates), the windows and durations that flags and
admin fields take, ISO timestamps, and money for people.

Standard library only; shared by the parser (to read literals), the CLI, the admin and the
service. A function's name says what it returns: `parse_window_ms` milliseconds,
`parse_duration_s` seconds, `parse_timestamp_s` epoch seconds. The `parse_*` functions for
flags raise `error` (default `UnitError`) with a message that names the flag and quotes the
value, so each caller keeps its own exception type.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal

from engine.errors import PolicyctlError
from engine.vocabulary import Unit

DURATION_MS = {"ms": 1.0, "s": 1_000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
COUNT_SCALE = {"": 1.0, "k": 1_000.0, "K": 1_000.0, "M": 1_000_000.0, "B": 1_000_000_000.0}

UNIT_HELP = (
    "durations: `250ms` `2s` `1m` `24h` `1d`; money: `$0.01`; percentages: `80%`; "
    "counts: `100` `200k` `1.5M`"
)


class UnitError(PolicyctlError, ValueError):
    """A number with a suffix that is not a unit."""


# A literal is written with at most this many characters of digits and decimal point (`_`
# not counted): `999999999999999999` is the largest number, `0.0000000000000001` (16
# decimals) the smallest above 0.
MAX_LITERAL_CHARS = 18


class TooManyDigitsError(UnitError):
    """A literal written with more than MAX_LITERAL_CHARS digits and point; `help` says
    what may be written instead."""

    def __init__(self, message: str, help: str) -> None:
        super().__init__(message)
        self.help = help


def _check_length(text: str, digits: str, what: str, prefix: str = "", suffix: str = "") -> None:
    """TooManyDigitsError when `digits` (`_` removed) is longer than MAX_LITERAL_CHARS:
    too large (its whole part does not fit), too small (a digit only past the 16th
    decimal), written with leading zeros, or with more decimals than fit after its whole
    part (the help rounds it)."""
    if len(digits) <= MAX_LITERAL_CHARS:
        return
    whole, _, decimals = digits.partition(".")
    whole = whole.lstrip("0") or "0"
    limit = f"{what}s have at most {MAX_LITERAL_CHARS} digits, the decimal point included"
    value = Decimal(digits)
    room = max(0, MAX_LITERAL_CHARS - len(whole) - 1)  # the decimals that fit after `whole.`
    rounded = (
        "" if len(whole) > MAX_LITERAL_CHARS else f"{value.quantize(Decimal(1).scaleb(-room)):f}"
    )
    if "." in rounded:
        rounded = rounded.rstrip("0").rstrip(".")
    if not rounded or len(rounded) > MAX_LITERAL_CHARS:
        raise TooManyDigitsError(f"{what} `{text}` is too large", limit)
    finest = MAX_LITERAL_CHARS - 2  # the decimals after `0.`
    if value and value.adjusted() < -finest:
        smallest = f"{prefix}0.{'0' * (finest - 1)}1{suffix}"
        message = f"{what} `{text}` is too small: the smallest above 0 is `{smallest}`"
        raise TooManyDigitsError(message, limit)
    if not value or len(decimals) <= room:
        zeros = "the zeros" if not value else "the leading zeros"
        message = f"{what} `{text}` has more digits than fit: drop {zeros}"
        raise TooManyDigitsError(message, f"{limit}: write `{prefix}{rounded}{suffix}`")
    fit = f"at most {room} after `{whole}.`" if room else f"none after `{whole}`"
    raise TooManyDigitsError(
        f"{what} `{text}` has more decimals than fit ({len(decimals)}; {fit})",
        f"{limit}: round it to `{prefix}{rounded}{suffix}`",
    )


def read_number(text: str) -> tuple[float, Unit]:
    """`2s` -> (2000.0, DURATION); `80%` -> (0.8, PERCENT); `200k` -> (200000.0, COUNT)."""
    i = 0
    while i < len(text) and (text[i].isdigit() or text[i] in "._"):
        i += 1
    digits, suffix = text[:i].replace("_", ""), text[i:]
    _check_length(text, digits, "number", suffix=suffix)
    value = float(digits)
    if suffix in DURATION_MS:
        return value * DURATION_MS[suffix], Unit.DURATION
    if suffix == "%":
        return value / 100.0, Unit.PERCENT
    if suffix in COUNT_SCALE:
        return value * COUNT_SCALE[suffix], Unit.COUNT
    raise UnitError(f"unknown unit `{suffix}` in `{text}`")


def read_money(text: str) -> float:
    digits = text.lstrip("$").replace("_", "")
    _check_length(text, digits, "amount", "$")
    return float(digits)


def read_date(text: str) -> float:
    """A date or date-time (UTC unless an offset is given) as epoch seconds."""
    return iso_timestamp_s(text)


def iso_timestamp_s(text: str) -> float:
    """An ISO 8601 date or date-time (`Z` allowed; UTC unless an offset is given) as epoch
    seconds. Raises ValueError for anything else."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def format_timestamp(epoch_s: float | None, timespec: str = "milliseconds") -> str | None:
    """Epoch seconds as ISO 8601 UTC with a `Z` (`2026-12-01T00:41:37.557Z`); None for None.
    `timespec` as `datetime.isoformat` takes it (`seconds` for a `since` line)."""
    if epoch_s is None:
        return None
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def format_day(epoch_s: float) -> str:
    """The UTC calendar day of an instant: `2026-12-01`."""
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).date().isoformat()


def format_duration(ms: float) -> str:
    for suffix in ("d", "h", "m", "s"):
        scale = DURATION_MS[suffix]
        if ms >= scale and ms % scale == 0:
            return f"{int(ms // scale)}{suffix}"
    return f"{ms:g}ms"


# ---------------------------------------------------------------- flags and fields

_WINDOW = re.compile(r"^([+-]?)(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")
MAX_QUANTITY = 1e15  # the largest count, window (ms) or token count a flag or field may give
MAX_TOKENS = 10**15  # the largest token count a request or a catalog may give (a float holds it)
_MAX_EPOCH_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last moment a timestamp can show
_COUNT = re.compile(r"^([+-]?)(\d+(?:\.\d+)?|\.\d+)([kKMB]?)$")


def _as_float(value: float) -> tuple[float, str]:
    """A JSON number as a float and as shown in a message: an integer too large for a float
    (`10**400`) is infinity, shown by its first digits, instead of an OverflowError."""
    if isinstance(value, int) and not -MAX_INT_FLOAT <= value <= MAX_INT_FLOAT:
        sign = "-" if value < 0 else ""
        return (-math.inf if sign else math.inf), f"{sign}{_long_int(abs(value))}"
    return float(value), f"{value:g}"


def _long_int(value: int) -> str:
    """A huge integer shown by its first digits and its length (str() fails past 4,300)."""
    digits = value.bit_length() * 30103 // 100000 + 1  # log10(2) per bit: exact or one over
    if value < 10 ** (digits - 1):
        digits -= 1
    return f"{value // 10 ** max(0, digits - 12)}… ({digits} digits)"


MAX_INT_FLOAT = 2**1023  # past this, float(int) raises OverflowError


def parse_window_ms(
    value: str | float,
    flag: str = "--window",
    *,
    allow_zero: bool = False,
    error: type[Exception] = UnitError,
) -> float:
    """`1m`, `1h`, `30s`, `250ms`, `1d`, or plain milliseconds (`60000`) -> milliseconds.
    A limit's window, a quota's, the admin's idle time."""
    if isinstance(value, bool):
        raise error(f"`{flag}` must be a duration such as `1m`, got `{value}`")
    if isinstance(value, int | float):
        ms, text = _as_float(value)
    else:
        text = str(value).strip()
        match = _WINDOW.match(text)
        if match is None:
            raise error(
                f"`{flag}` must be a duration such as `1m`, `30s`, `250ms`, `1h`, `1d` or"
                f" milliseconds such as `60000`, got `{value}`"
            )
        sign, digits, suffix = match.groups()
        ms = float(digits) * DURATION_MS[suffix or "ms"] * (-1.0 if sign == "-" else 1.0)
    if not math.isfinite(ms) or ms > MAX_QUANTITY:
        raise error(f"`{flag}` is too large, got `{text}`")
    if allow_zero and ms < 0:
        raise error(f"`{flag}` must be zero or more, got `{text}`")
    if not allow_zero and ms <= 0:
        raise error(f"`{flag}` must be greater than zero, got `{text}`")
    return ms


def parse_count(
    value: str | float,
    flag: str,
    *,
    allow_zero: bool = False,
    integer: bool = False,
    error: type[Exception] = UnitError,
) -> float:
    """A positive number (`1000`, `1.5k`, `2M`); with `allow_zero`, zero or more. A quota's
    limit and burst, the violations listing's length."""
    if isinstance(value, bool):
        raise error(f"`{flag}` must be a number, got `{value}`")
    if isinstance(value, int | float):
        number, text = _as_float(value)
    else:
        text = str(value).strip()
        match = _COUNT.match(text)
        if match is None:
            example = "`100`" if integer else "`100`, `1.5k` or `2M`"
            raise error(f"`{flag}` must be a number such as {example}, got `{value}`")
        sign, digits, suffix = match.groups()
        if integer and suffix:
            raise error(f"`{flag}` must be a whole number such as `100`, got `{value}`")
        number = float(digits) * COUNT_SCALE[suffix] * (-1.0 if sign == "-" else 1.0)
    if not math.isfinite(number) or number > MAX_QUANTITY:
        raise error(f"`{flag}` is too large, got `{text}`")
    if allow_zero and number < 0:
        raise error(f"`{flag}` must be zero or more, got `{text}`")
    if not allow_zero and number <= 0:
        raise error(f"`{flag}` must be greater than zero, got `{text}`")
    if integer and not number.is_integer():
        raise error(f"`{flag}` must be a whole number such as `100`, got `{text}`")
    return number


def parse_duration_s(text: str, *, error: type[Exception] = UnitError) -> float:
    """`30m` -> 1800.0 seconds: a look-back `--window`, which always carries a unit."""
    match = _DURATION.match(text)
    if match is None:
        raise error(f"invalid --window `{text}`: use a duration such as 30m, 1h, 24h or 7d")
    seconds = float(match.group(1)) * DURATION_MS[match.group(2)] / 1000.0
    if seconds <= 0:
        raise error(f"invalid --window `{text}`: a window is longer than zero")
    return seconds


def parse_timestamp_s(
    value: str | float | dt.date, flag: str, *, error: type[Exception] = UnitError
) -> float:
    """A date (`2026-12-31`, midnight UTC) or date-time (UTC unless an offset is given),
    or epoch seconds -> epoch seconds."""
    if isinstance(value, bool):
        raise error(f"`{flag}` must be a date such as `2026-12-31`, got `{value}`")
    if isinstance(value, int | float):
        seconds, text = _as_float(value)
        if not -_MAX_EPOCH_S <= seconds <= _MAX_EPOCH_S:  # also NaN and the infinities
            raise error(f"`{flag}` is out of range (epoch seconds up to year 9999), got `{text}`")
        return seconds
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    text = str(value).strip()
    try:
        if not _DATE_PREFIX.match(text):
            raise ValueError(text)
        return iso_timestamp_s(text)
    except ValueError:
        raise error(
            f"`{flag}` must be a date such as `2026-12-31` or `2026-12-31T18:00:00Z`, got `{value}`"
        ) from None


def parse_day(
    value: str | dt.date | None, flag: str, *, error: type[Exception] = UnitError
) -> dt.date | None:
    """A calendar day (`2026-01-31`) for the stats filters."""
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise error(f"`{flag}` must be a date such as `2026-01-31`, got `{value}`") from None


# ---------------------------------------------------------------- money


def format_exact_money(value: float) -> str:
    """USD as given (a limit someone wrote), without rounding it into something else."""
    return "$0" if value <= 0 else "$" + f"{value:.12f}".rstrip("0").rstrip(".")


def format_money(value: float) -> str:
    """USD for people: 4 decimals from a cent up, else two significant digits."""
    if value <= 0:
        return "$0"
    if value >= 0.01:
        return f"${value:.4f}".rstrip("0").rstrip(".")
    digits = max(7, 1 - math.floor(math.log10(value)))
    return f"${value:.{digits}f}".rstrip("0").rstrip(".")

"""One parser and formatter per unit (`engine.units`) and one vocabulary
(`engine.vocabulary`): every spelling the CLI, the admin and the language accept reads the
same through the one parser, with the words each caller has always used."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.cli.common import UsageError, check_state_url
from engine.language.loader import compile_sources
from engine.limits.admin import AdminError
from engine.limits.stores import ConfigurationError, open_store
from engine.units import (
    TooManyDigitsError,
    UnitError,
    format_exact_money,
    format_money,
    iso_timestamp_s,
    parse_count,
    parse_day,
    parse_duration_s,
    parse_timestamp_s,
    parse_window_ms,
    read_date,
    read_money,
    read_number,
)
from engine.vocabulary import (
    DEFAULT_OUTPUT_TOKENS,
    MEMORY_URLS,
    STORE_URL_PREFIXES,
    Unit,
    unknown_store_message,
)

SPELLINGS = ["250ms", "2s", "1.5s", "1m", "30m", "1h", "24h", "1d", "7d"]


def _policy_window_ms(spelling: str) -> float:
    text = f"limit user 100 per {spelling}\n"
    (limit,) = compile_sources([("t.policy", text)]).program.limits
    return limit.window_ms


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_duration_spelling_reads_the_same_everywhere(spelling: str) -> None:
    ms, unit = read_number(spelling)  # a policy literal
    assert unit is Unit.DURATION
    assert parse_window_ms(spelling) == ms  # `ratelimit set --window`, the admin, HTTP
    assert parse_duration_s(spelling) * 1000.0 == pytest.approx(ms)  # `metrics --window`
    assert _policy_window_ms(spelling) == ms  # `limit … per 1m`


def test_a_window_may_be_plain_milliseconds_a_look_back_may_not() -> None:
    assert parse_window_ms("60000") == parse_window_ms(60000) == 60_000.0
    with pytest.raises(UnitError, match=r"invalid --window `60000`: use a duration such as"):
        parse_duration_s("60000")


def test_each_caller_keeps_its_exception_and_words() -> None:
    with pytest.raises(AdminError, match=r"^`--window` must be greater than zero, got `0`$"):
        parse_window_ms("0", error=AdminError)
    with pytest.raises(AdminError, match=r"^`--idle` must be zero or more, got `-1`$"):
        parse_window_ms(-1, "--idle", allow_zero=True, error=AdminError)
    with pytest.raises(AdminError, match=r"must be a duration such as `1m`, `30s`, `250ms`"):
        parse_window_ms("soon", error=AdminError)
    with pytest.raises(AdminError, match=r"^`--window` is too large, got `1e\+20`$"):
        parse_window_ms(1e20, error=AdminError)
    with pytest.raises(UsageError, match=r"^invalid --window `0m`: a window is longer than zero$"):
        parse_duration_s("0m", error=UsageError)
    assert parse_window_ms("0", "--idle", allow_zero=True) == 0.0


def test_timestamps_have_one_reading() -> None:
    midnight = dt.datetime(2026, 12, 31, tzinfo=dt.UTC).timestamp()
    assert read_date("2026-12-31") == iso_timestamp_s("2026-12-31") == midnight
    assert parse_timestamp_s("2026-12-31", "--expires") == midnight
    assert parse_timestamp_s(dt.date(2026, 12, 31), "--expires") == midnight
    assert parse_timestamp_s(midnight, "--expires") == midnight
    evening = "2026-12-31T18:00:00Z"
    assert iso_timestamp_s(evening) == parse_timestamp_s(evening, "--expires") == midnight + 64800
    assert iso_timestamp_s("2026-12-31T18:00:00") == midnight + 64800  # naive is UTC
    assert iso_timestamp_s("2026-12-31T20:00:00+02:00") == midnight + 64800
    with pytest.raises(AdminError, match=r"^`--expires` must be a date such as `2026-12-31` or"):
        parse_timestamp_s("31/12/2026", "--expires", error=AdminError)
    with pytest.raises(ValueError):
        iso_timestamp_s("tomorrow")


def test_days() -> None:
    assert parse_day("2026-01-31", "--start") == dt.date(2026, 1, 31)
    assert parse_day(None, "--start") is None
    with pytest.raises(AdminError, match=r"^`--end` must be a date such as `2026-01-31`, got `x`$"):
        parse_day("x", "--end", error=AdminError)


@pytest.mark.parametrize(
    ("value", "people", "exact"),
    [
        (0.0, "$0", "$0"),
        (0.5, "$0.5", "$0.5"),
        (0.012345, "$0.0123", "$0.012345"),
        (0.0001518, "$0.0001518", "$0.0001518"),
        (0.00000003, "$0.00000003", "$0.00000003"),
        (12.0, "$12", "$12"),
    ],
)
def test_money(value: float, people: str, exact: str) -> None:
    assert format_money(value) == people
    assert format_exact_money(value) == exact


def test_state_store_schemes_have_one_registry() -> None:
    for prefix in STORE_URL_PREFIXES:
        assert check_state_url(prefix + "host") == prefix + "host"
    for url in MEMORY_URLS:
        assert type(open_store(url)).__name__ == "MemoryStore"
    words = unknown_store_message("ftp://x")
    assert words == (
        "unknown state store `ftp://x` (scheme `ftp`): use `memory://`, a file path,"
        " or `redis://host:port`"
    )
    with pytest.raises(UsageError) as cli:
        check_state_url("ftp://x")
    with pytest.raises(ConfigurationError) as store:
        open_store("ftp://x")
    assert str(cli.value) == str(store.value) == words


def test_the_default_output_estimate_is_one_fact() -> None:
    from engine.language import program
    from engine.limits import limiter
    from engine.routing import evaluator
    from engine.simulate import scenario

    assert DEFAULT_OUTPUT_TOKENS == 256
    for module in (program, limiter, evaluator, scenario):
        assert module.DEFAULT_OUTPUT_TOKENS is DEFAULT_OUTPUT_TOKENS


@pytest.mark.parametrize(
    ("spelling", "count"), [("100", 100.0), ("1.5k", 1500.0), ("2M", 2e6), ("1B", 1e9)]
)
def test_a_count_reads_as_the_language_reads_it(spelling: str, count: float) -> None:
    """`ratelimit set --limit 1.5k` and `limit user 1.5k per 1m` mean the same number."""
    assert parse_count(spelling, "--limit") == count
    assert read_number(spelling)[0] == count


def test_a_bad_count_says_which_flag_in_the_callers_error() -> None:
    with pytest.raises(AdminError, match=r"^`--limit` must be a number such as `100`, `1.5k`"):
        parse_count("lots", "--limit", error=AdminError)
    with pytest.raises(UnitError, match=r"^`--limit` must be a whole number such as `100`"):
        parse_count("1.5k", "--limit", integer=True)
    with pytest.raises(UnitError, match=r"^`--burst` must be zero or more, got `-1`"):
        parse_count("-1", "--burst", allow_zero=True)


@pytest.mark.parametrize(
    ("literal", "message", "help_text"),
    [
        (  # a digit only past the 16th decimal: below the smallest amount, not above a limit
            "$0.0000000000000000001",
            "amount `$0.0000000000000000001` is too small: the smallest above 0 is"
            " `$0.0000000000000001`",
            "amounts have at most 18 digits, the decimal point included",
        ),
        (
            "$0.12345678901234567",
            "amount `$0.12345678901234567` has more decimals than fit (17; at most 16 after `0.`)",
            "amounts have at most 18 digits, the decimal point included: round it to"
            " `$0.1234567890123457`",
        ),
        (
            "$1_000.000000000000001",
            "amount `$1_000.000000000000001` has more decimals than fit (15; at most 13 after"
            " `1000.`)",
            "amounts have at most 18 digits, the decimal point included: round it to `$1000`",
        ),
        (
            "$000.000000000000001",
            "amount `$000.000000000000001` has more digits than fit: drop the leading zeros",
            "amounts have at most 18 digits, the decimal point included: write"
            " `$0.000000000000001`",
        ),
        (
            "$1234567890123456789",
            "amount `$1234567890123456789` is too large",
            "amounts have at most 18 digits, the decimal point included",
        ),
        (
            "$999999999999999999.5",  # rounds to 19 digits
            "amount `$999999999999999999.5` is too large",
            "amounts have at most 18 digits, the decimal point included",
        ),
        (
            "0.1234567890123456789s",
            "number `0.1234567890123456789s` has more decimals than fit (19; at most 16 after"
            " `0.`)",
            "numbers have at most 18 digits, the decimal point included: round it to"
            " `0.1234567890123457s`",
        ),
        (
            "0.0000000000000000001",
            "number `0.0000000000000000001` is too small: the smallest above 0 is"
            " `0.0000000000000001`",
            "numbers have at most 18 digits, the decimal point included",
        ),
    ],
)
def test_a_literal_with_too_many_digits_says_which_way(
    literal: str, message: str, help_text: str
) -> None:
    """A literal has at most 18 digits and point: one past it is too large, too small, or
    has more decimals than fit (or leading zeros), and the help says what fits."""
    read = read_money if literal.startswith("$") else read_number
    with pytest.raises(TooManyDigitsError) as info:
        read(literal)
    assert (str(info.value), info.value.help) == (message, help_text)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("$0.0000000000000001", 1e-16),  # the smallest: 16 decimals
        ("$999999999999999999", 1e18),  # the largest: 18 digits
        ("$1_000_000.0000000001", 1_000_000.0000000001),  # `_` not counted
        ("0.0000000000000001", 1e-16),
    ],
)
def test_a_literal_of_18_digits_and_point_reads(literal: str, value: float) -> None:
    read = read_money if literal.startswith("$") else (lambda t: read_number(t)[0])
    assert read(literal) == value

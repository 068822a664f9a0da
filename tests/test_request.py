"""Requests at the edge: validation problems pinned exactly, IP normalisation, the input
token estimate (4 characters a token, + 4 per chat message) and the content key.

Every case goes through both `engine.routing.request.validate` and `PolicyEngine.evaluate` (which
takes the plain-dict fast path when it can), and the two must agree.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from _design import from_design
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import PolicyEngine, Request, RequestError
from engine.routing import request as request_module
from engine.routing.request import estimate_tokens, request_key, validate

FIXED_CLOCK = 1_800_000_000.0


def clock() -> float:
    return FIXED_CLOCK


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(clock=clock)


def problems(engine: PolicyEngine, data: Any) -> list[tuple[str, str]]:
    """The problems of a bad request, the same through validate and evaluate."""
    with pytest.raises(RequestError) as direct:
        validate(data)
    with pytest.raises(RequestError) as evaluated:
        engine.evaluate(data)
    assert evaluated.value.problems == direct.value.problems
    assert str(evaluated.value) == str(direct.value)
    return direct.value.problems


# ---------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # unknown fields, with a did-you-mean when one is close
        ({"max_token": 5}, [("", "unknown field `max_token` (did you mean `max_tokens`?)")]),
        ({"promt": "hi"}, [("", "unknown field `promt` (did you mean `prompt`?)")]),
        ({"colour": "red"}, [("", "unknown field `colour`")]),
        (
            {"id": "u1", "foo": 1, "bar": 2},
            [("", "unknown field `foo`"), ("", "unknown field `bar`")],
        ),
        # strict types: a string is not a number, a number is not a boolean
        ({"max_tokens": "10"}, [("field `max_tokens`", "input should be a valid integer")]),
        ({"max_tokens": 10.5}, [("field `max_tokens`", "input should be a valid integer")]),
        ({"max_tokens": True}, [("field `max_tokens`", "input should be a valid integer")]),
        ({"input_tokens": "7"}, [("field `input_tokens`", "input should be a valid integer")]),
        ({"max_cost": "0.1"}, [("field `max_cost`", "input should be a valid number")]),
        ({"max_cost": True}, [("field `max_cost`", "input should be a valid number")]),
        (
            {"requires_vision": "true"},
            [("field `requires_vision`", "input should be a valid boolean")],
        ),
        ({"stream": 1}, [("field `stream`", "input should be a valid boolean")]),
        ({"user": 42}, [("field `user`", "input should be a valid string")]),
        ({"tags": "beta"}, [("field `tags`", "input should be a valid list")]),
        # addresses
        ({"ip": "1.2.3"}, [("field `ip`", "`1.2.3` is not an IPv4 or IPv6 address")]),
        ({"ip": "256.1.1.1"}, [("field `ip`", "`256.1.1.1` is not an IPv4 or IPv6 address")]),
        ({"ip": "2001:db8::g"}, [("field `ip`", "`2001:db8::g` is not an IPv4 or IPv6 address")]),
        ({"ip": "not-an-ip"}, [("field `ip`", "`not-an-ip` is not an IPv4 or IPv6 address")]),
        ({"ip": 12}, [("field `ip`", "input should be a valid string")]),
        # ranges
        (
            {"input_tokens": -1},
            [("field `input_tokens`", "input should be greater than or equal to 0")],
        ),
        ({"max_tokens": 0}, [("field `max_tokens`", "input should be greater than or equal to 1")]),
        ({"max_cost": -0.5}, [("field `max_cost`", "input should be greater than or equal to 0")]),
        ({"max_latency_ms": 0}, [("field `max_latency_ms`", "input should be greater than 0")]),
        # several at once: fields in schema order, then unknown fields
        (
            {"max_tokens": 0, "ip": "x", "bogus": 1, "id": 5},
            [
                ("field `id`", "input should be a valid string"),
                ("field `ip`", "`x` is not an IPv4 or IPv6 address"),
                ("field `max_tokens`", "input should be greater than or equal to 1"),
                ("", "unknown field `bogus`"),
            ],
        ),
    ],
)
def test_bad_request_problems(
    engine: PolicyEngine, data: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert problems(engine, data) == expected


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ([{"id": "x"}], "an array"),
        ("hello", "a string"),
        (None, "null"),
        (3, "a number"),
        (2.5, "a number"),
        (True, "a boolean"),
    ],
)
def test_a_request_is_an_object(engine: PolicyEngine, data: Any, kind: str) -> None:
    assert problems(engine, data) == [("", f"a request is a JSON object, not {kind}")]


def test_error_text_joins_problems() -> None:
    with pytest.raises(RequestError) as err:
        validate({"ip": "1.2.3", "max_token": 1})
    assert str(err.value) == (
        "field `ip`: `1.2.3` is not an IPv4 or IPv6 address; "
        "unknown field `max_token` (did you mean `max_tokens`?)"
    )
    assert isinstance(err.value, ValueError)


def test_non_scalar_metadata_value_is_one_problem_naming_the_key(engine: PolicyEngine) -> None:
    # SPEC §4: metadata has string keys and scalar values. A list value is one mistake at
    # `metadata.team`; it should be reported once, not once per scalar type pydantic tried
    # (`metadata.team.str`, `metadata.team.int`, `metadata.team.float`, `metadata.team.bool`).
    got = problems(engine, {"metadata": {"team": ["a"]}})
    assert len(got) == 1
    assert got[0][0] == "field `metadata.team`"


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("::1", "::1"),
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
    ],
)
def test_ip_is_accepted_and_normalised(given: str, normal: str) -> None:
    assert validate({"ip": given}).ip == normal


def test_ipv6_spellings_share_one_ip_bucket_and_condition() -> None:
    policy = """
    defaults { strategy cost }
    route home when request.ip == "2001:db8::1" { strategy latency }
    limit ip 50 per 1m
    """
    e = from_design(policy, clock=clock)
    spellings = ["2001:DB8:0:0:0:0:0:1", "2001:db8::1", "2001:0db8::0001"]
    decisions = [e.evaluate({"id": f"ip-{i}", "ip": ip}) for i, ip in enumerate(spellings)]
    assert [d.route for d in decisions] == ["home", "home", "home"]
    statuses = [d.rate_limits[0] for d in decisions]
    assert [(s.scope, s.key) for s in statuses] == [("ip", "2001:db8::1")] * 3
    # one bucket: 50 per minute (no burst), one request each, the clock standing still
    assert [s.remaining for s in statuses] == [49, 48, 47]


# ---------------------------------------------------------------- token estimates


@pytest.mark.parametrize(
    ("data", "tokens"),
    [
        ({}, 0),
        ({"prompt": ""}, 0),
        ({"prompt": "hi"}, 1),  # ceil(2 / 4)
        ({"prompt": "hello world"}, 3),  # ceil(11 / 4)
        ({"prompt": "x" * 400}, 100),  # 400 / 4
        ({"prompt": "x" * 401}, 101),  # ceil(401 / 4)
        ({"prompt": "x" * 400, "input_tokens": 7}, 7),  # given tokens win
        ({"input_tokens": 0}, 0),
        ({"messages": []}, 0),
        # 14 + 33 = 47 chars -> ceil(47 / 4) = 12, + 4 per message
        (
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Summarise this paragraph, please."},
                ]
            },
            12 + 2 * 4,
        ),
        # content parts: only text counts, "abcde" + "fgh" = 8 chars -> 2, + 4
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "abcde"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                            {"type": "text", "text": "fgh"},
                        ],
                    }
                ]
            },
            2 + 4,
        ),
        # an empty message still costs its 4
        ({"messages": [{"role": "user", "content": ""}]}, 4),
    ],
)
def test_input_token_estimate(data: dict[str, Any], tokens: int) -> None:
    assert len("You are terse.") == 14
    assert len("Summarise this paragraph, please.") == 33
    assert estimate_tokens(validate(data)) == tokens


FLASH_ONLY = """
route only {
    strategy cost
    prefer gemini/gemini-1.5-flash-latest
}
"""


@pytest.mark.parametrize(
    ("data", "input_tokens"),
    [
        ({"prompt": "x" * 401}, 101),  # ceil(401 / 4), plain-dict fast path
        ({"prompt": "hello world"}, 3),
        (
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Summarise this paragraph, please."},
                ]
            },
            20,  # ceil(47 / 4) + 2 * 4
        ),
    ],
)
def test_token_estimate_prices_the_decision(data: dict[str, Any], input_tokens: int) -> None:
    e = from_design(FLASH_ONLY, clock=clock)
    for request in ({"id": "est", "max_tokens": 10, **data}, {"max_tokens": 10, **data}):
        # without an id, a body of only `messages` and `max_tokens` is also an OpenAI chat
        # body (read as one by default: tests/test_wire.py); here it is asked for as native
        d = e.evaluate(request, input_format="native")
        assert d.model == "gemini-1.5-flash-latest"
        # flash: 0.075 in, 0.30 out per 1M
        assert d.estimated_cost == pytest.approx((input_tokens * 0.075 + 10 * 0.30) / 1e6)


def test_no_max_tokens_estimates_256_output_tokens() -> None:
    e = from_design(FLASH_ONLY, clock=clock)
    d = e.evaluate({"id": "out", "prompt": "x" * 400})
    assert d.estimated_cost == pytest.approx((100 * 0.075 + 256 * 0.30) / 1e6)


# ---------------------------------------------------------------- request key


def test_request_key_is_the_id_when_given() -> None:
    assert request_key(validate({"id": "abc", "prompt": "hi"})) == "abc"


def test_request_key_without_id_is_stable_for_equal_content() -> None:
    a = {"prompt": "hi", "user": "alice", "metadata": {"team": "x", "tier": "free"}}
    b = {"metadata": {"tier": "free", "team": "x"}, "user": "alice", "prompt": "hi"}
    # explicit defaults are the same content
    c = {**a, "stream": False, "tags": [], "requires_vision": False}
    key = request_key(validate(a))
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", key)
    assert request_key(validate(b)) == key
    assert request_key(validate(c)) == key
    assert request_key(validate(dict(a))) == key
    assert request_key(Request(**a)) == key
    # different content, different key
    assert request_key(validate({**a, "prompt": "hi!"})) != key
    assert request_key(validate({**a, "metadata": {"team": "y", "tier": "free"}})) != key


def test_model_specific_pick_without_id_is_reproducible() -> None:
    policy = """
    route pick {
        strategy model-specific
        prefer gemini/gemini-1.5-flash-latest weight 50
        prefer claude/claude-3-haiku-20240307 weight 50
    }
    """
    requests = [{"prompt": f"question {i}"} for i in range(40)]
    first = from_design(policy, clock=clock)
    second = from_design(policy, clock=clock)
    picks = [first.evaluate(r).model for r in requests]
    assert picks == [second.evaluate(dict(r)).model for r in requests]
    assert picks == [first.evaluate(r).model for r in requests]
    assert len(set(picks)) == 2  # the content hash does spread the picks
    assert first.evaluate(requests[0]).request_id is None


# ------------------------------------------ found by the mutation run (bench/mutation.py)


def test_non_ascii_text_is_storable_and_a_lone_surrogate_is_located() -> None:
    from engine.routing.request import unstorable

    assert unstorable({"id": "é", "metadata": {"café": "crème"}, "tags": ["ü"]}) == []
    assert validate({"id": "é", "metadata": {"café": "crème"}}).metadata == {"café": "crème"}
    assert unstorable({"metadata": {"k": "a\ud800"}}) == [
        (
            "metadata.k",
            "a lone surrogate `\\ud800` at character 2 cannot be stored"
            " (it is not a character: it has no UTF-8 form)",
        )
    ]


def test_message_content_of_the_wrong_type_is_one_problem(engine: PolicyEngine) -> None:
    found = problems(engine, {"messages": [{"role": "user", "content": 5}]})
    assert found == [("field `messages[0].content`", "content is a string or a list of parts")]


_OCTET = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "255", "256", "0x1", "1e2", "٣", "²", " 1", "1 ", ""]),
)


@given(st.lists(_OCTET, min_size=3, max_size=5).map(".".join) | st.text(max_size=20))
@settings(max_examples=2000)
def test_ip_normalisation_agrees_with_ipaddress(text: str) -> None:
    """The dotted-quad shortcut of `_normal_ip` says what `ipaddress` says, for any text."""
    try:
        expected: str | None = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        expected = None
    assert request_module._normal_ip(text) == expected

"""The plain-Python request fast path agrees with the pydantic validator on every input.

`fast_env` may decline (return None) and leave a request to pydantic, but whatever it
accepts must produce exactly the environment pydantic's path produces, and it must never
accept a request pydantic rejects.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.routing.request import Request, RequestError, env_of, fast_env, to_env, validate

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
ips = st.one_of(
    st.sampled_from(["10.0.0.1", " 203.0.113.7 ", "::1", "2001:DB8::1", "1.2.3", "not-an-ip"]),
    st.ip_addresses().map(str),
    scalars,
)
metadata = st.one_of(
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.booleans(), st.integers(), st.text()), max_size=3
    ),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    scalars,
)
tags = st.one_of(st.lists(st.text(max_size=4), max_size=3), st.lists(scalars, max_size=2), scalars)
fields: dict[str, Any] = {
    "id": st.one_of(st.text(max_size=8), scalars),
    "user": st.one_of(st.text(max_size=8), scalars),
    "ip": ips,
    "model": scalars,
    "prompt": st.one_of(st.text(max_size=40), scalars),
    "input_tokens": scalars,
    "max_tokens": scalars,
    "requires_vision": scalars,
    "requires_tools": scalars,
    "requires_json": scalars,
    "requires_reasoning": scalars,
    "stream": scalars,
    "max_cost": scalars,
    "max_latency_ms": scalars,
    "min_quality": st.one_of(scalars, st.sampled_from([0, 0.5, 1, 1.0, -0.0, 1.0000001])),
    "region": scalars,
    "priority": st.one_of(scalars, st.sampled_from([0, 5, -1000, 1000, 1001, -1001, 2.0])),
    "tags": tags,
    "metadata": metadata,
    "messages": st.one_of(
        st.none(),
        st.just([{"role": "user", "content": "hi"}]),
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.one_of(st.text(max_size=6), scalars),
                    "content": st.one_of(
                        st.text(max_size=30),
                        scalars,
                        st.just([{"type": "text", "text": "part"}]),
                    ),
                    "name": st.text(max_size=3),
                },
            ),
            max_size=3,
        ),
        scalars,
    ),
    "unknown_field": scalars,
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(sorted(fields)), max_size=9))
    return {name: draw(fields[name]) for name in sorted(chosen)}


def _pydantic_env(data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return to_env(validate(data))
    except RequestError:
        return None


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y or type(x) is not type(y):
            return False
    return True


@settings(max_examples=1500, deadline=None)
@given(requests())
def test_fast_path_agrees_with_pydantic(data: dict[str, Any]) -> None:
    fast = fast_env(data)
    slow = _pydantic_env(data)
    if fast is not None:
        assert slow is not None, f"fast path accepted what pydantic rejects: {data!r}"
        assert _same(fast, slow), (fast, slow)


def test_fast_path_takes_the_common_request() -> None:
    data = {"id": "r1", "user": "u", "ip": "203.0.113.7", "prompt": "hello", "max_tokens": 10}
    env = fast_env(data)
    assert env is not None
    assert env == to_env(Request.model_validate(data))
    assert env_of(data) == env


def test_fast_path_declines_what_it_does_not_handle() -> None:
    assert fast_env({"prompt": "no id"}) is None  # the content-hash key is pydantic's job
    # content given as parts, or a message with more than a role and content: pydantic
    parts = [{"type": "text", "text": "hi"}]
    assert fast_env({"id": "m", "messages": [{"content": parts}]}) is None
    assert fast_env({"id": "m", "messages": [{"role": "user", "content": "hi", "x": 1}]}) is None
    assert fast_env({"id": "x", "max_tokens": True}) is None
    assert fast_env({"id": "x", "bogus": 1}) is None


# ------------------------------------------ found by the mutation run (bench/mutation.py)

EVERY_FIELD: dict[str, Any] = {
    "id": "full-1",
    "user": "ü",
    "ip": "203.0.113.7",
    "model": "gpt-4o",
    "prompt": "héllo",
    "input_tokens": 12,
    "max_tokens": 100,
    "requires_vision": True,
    "requires_tools": True,
    "requires_json": True,
    "requires_reasoning": True,
    "stream": True,
    "max_cost": 0.5,
    "max_latency_ms": 2000,
    "min_quality": 0.8,
    "region": "eu",
    "tags": ["a", "é"],
    "metadata": {"café": "crème", "n": 3, "b": False},
}


def test_fast_path_takes_a_request_with_every_field_and_agrees() -> None:
    env = fast_env(EVERY_FIELD)
    assert env is not None
    assert _same(env, to_env(validate(EVERY_FIELD)))
    assert (env["model"], env["stream"], env["max_latency"], env["tags"]) == (
        "gpt-4o",
        True,
        2000.0,
        ["a", "é"],
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"\ud800": 1}},
        {"metadata": {"k": "a\udfff"}},
        {"tags": ["ok", "b\ud800"]},
    ],
)
def test_fast_path_declines_a_lone_surrogate(extra: dict[str, Any]) -> None:
    data = {"id": "s", **extra}
    assert fast_env(data) is None
    with pytest.raises(RequestError):
        env_of(data)


def test_fast_path_takes_string_messages_and_agrees() -> None:
    data = {
        "id": "chat-1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise this paragraph, please."},
            {"content": "héllo"},
        ],
        "max_tokens": 10,
    }
    env = fast_env(data)
    assert env is not None
    assert _same(env, to_env(validate(data)))
    assert env["input_tokens"] == math.ceil((14 + 33 + 5) / 4) + 3 * 4


def test_fast_path_declines_a_lone_surrogate_in_a_message() -> None:
    data = {"id": "s", "messages": [{"role": "user", "content": "hi \ud800"}]}
    assert fast_env(data) is None
    with pytest.raises(RequestError):
        env_of(data)

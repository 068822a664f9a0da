"""The LiteLLM integration against a real `litellm.Router`: deployments answered by
LiteLLM's `mock_response` (no network), routing by a policy over a catalog v2 file, the
callback's outcomes moving routing, LiteLLM's own fallbacks, the 429 on a denial, the
unmapped-deployment error, sync and async. And `only` in the engine itself."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import litellm
from litellm import Router

from engine import PolicyEngine
from engine.integrations.litellm import (
    UnmappedDeployment,
    install,
    policyctl_router,
    wire_body,
)

ROOT = Path(__file__).resolve().parent.parent
# warnings LiteLLM's own code raises while it serves a call (not policyctl's to fix)
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
    ),
]

CATALOG = """\
version: 2
models:
  - {id: gpt-4o, provider: openai, context_window: 128000, max_tokens: 16384,
     supports: [streaming, tools, vision, json], pricing: {input: 2.5, output: 10},
     latency_prior_ms: {p50: 900, p95: 2800}}
  - {id: gpt-4o-mini, provider: openai, context_window: 128000, max_tokens: 16384,
     supports: [streaming, tools, vision, json], pricing: {input: 0.15, output: 0.6},
     latency_prior_ms: {p50: 600, p95: 1700}}
  - {id: o1-text, provider: openai, context_window: 128000, max_tokens: 16384,
     supports: [streaming], pricing: {input: 0.01, output: 0.01},
     latency_prior_ms: {p50: 600, p95: 1700}}
  - id: claude-sonnet-4-5
    provider: anthropic
    context_window: 200000
    max_tokens: 64000
    supports: [streaming, tools, vision, json]
    pricing: {input: 3.00, output: 15.00}
    latency_prior_ms: {p50: 1100, p95: 2400}
    deployments:
      - {provider: anthropic, id: claude-sonnet-4-5-20250929}
      - provider: bedrock
        id: "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        pricing: {input: 2.00, output: 10.00}
      - {provider: azure, id: claude-sonnet-eu, pricing: {input: 5.00, output: 20.00}}
"""

COST = """\
catalog "models.yaml"
defaults {
    strategy cost
    cooldown after 2 failures for 10m
}
"""


def _engine(tmp_path: Path, policy: str = COST) -> PolicyEngine:
    (tmp_path / "models.yaml").write_text(CATALOG)
    (tmp_path / "p.policy").write_text(policy)
    return PolicyEngine(tmp_path / "p.policy")


def _deployment(group: str, model: str, answer: str, **info: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model_name": group,
        "litellm_params": {"model": model, "api_key": "unused", "mock_response": answer},
    }
    if info:
        entry["model_info"] = dict(info)
    return entry


CHAT = [
    _deployment("chat", "openai/gpt-4o", "from gpt-4o"),
    _deployment("chat", "openai/gpt-4o-mini", "from gpt-4o-mini"),
]
CLAUDE = [
    _deployment("claude", "anthropic/claude-sonnet-4-5", "from anthropic"),
    _deployment("claude", "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0", "from bedrock"),
    _deployment("claude", "azure/my-sonnet", "from azure", base_model="azure/claude-sonnet-eu"),
]
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def installed() -> Iterator[list[Any]]:
    """Strategies installed by a test; their callbacks leave LiteLLM's global list after."""
    strategies: list[Any] = []
    yield strategies
    for strategy in strategies:
        strategy.uninstall()


def _router(
    engine: PolicyEngine, model_list: list[dict[str, Any]], installed: list[Any], **kwargs: Any
) -> tuple[Router, Any]:
    router = Router(model_list=model_list, num_retries=0, **kwargs)
    strategy = install(router, engine)
    installed.append(strategy)
    return router, strategy


def _wait(condition: Callable[[], bool]) -> None:
    """Until LiteLLM's logging thread or task has run the callback (a count, not a time)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the callback did not record in 30 s"
        time.sleep(0.01)


async def _recorded(strategy: Any, count: int) -> None:
    """Until LiteLLM's logging tasks on this event loop have recorded `count` outcomes."""
    deadline = time.monotonic() + 30
    while strategy.callback.recorded < count:
        assert time.monotonic() < deadline, "the callback did not record in 30 s"
        await asyncio.sleep(0.01)


def _answer(response: Any) -> str:
    return str(response.choices[0].message.content)


# ----------------------------------------------------------------------------- routing


def test_cost_policy_picks_the_cheapest_deployment_of_the_group(
    tmp_path: Path, installed: list[Any]
) -> None:
    engine = _engine(tmp_path)
    router, _ = _router(engine, CHAT + CLAUDE, installed)
    for _ in range(3):
        assert _answer(router.completion(model="chat", messages=HELLO)) == "from gpt-4o-mini"
    # catalog v2: bedrock's deployment of the same model is priced lower than anthropic's;
    # `o1-text` is cheaper still but not offered by the Router, so never chosen
    assert _answer(router.completion(model="claude", messages=HELLO)) == "from bedrock"


def test_what_the_request_needs_narrows_the_deployments(
    tmp_path: Path, installed: list[Any]
) -> None:
    """A tools request cannot go to a deployment whose catalog entry lacks tools."""
    model_list = [
        _deployment("g", "openai/o1-text", "from o1-text"),
        _deployment("g", "openai/gpt-4o", "from gpt-4o"),
    ]
    router, _ = _router(_engine(tmp_path), model_list, installed)
    assert _answer(router.completion(model="g", messages=HELLO)) == "from o1-text"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    answer = router.completion(model="g", messages=HELLO, tools=[tool])
    assert _answer(answer) == "from gpt-4o"


def test_async_routes_like_sync(tmp_path: Path, installed: list[Any]) -> None:
    router, strategy = _router(_engine(tmp_path), CHAT + CLAUDE, installed)

    async def calls() -> list[str]:
        first = await router.acompletion(model="chat", messages=HELLO)
        second = await router.acompletion(model="claude", messages=HELLO)
        await _recorded(strategy, 2)  # LiteLLM logs on tasks of this loop
        return [_answer(first), _answer(second)]

    assert asyncio.run(calls()) == ["from gpt-4o-mini", "from bedrock"]


def test_deployments_of_one_catalog_entry_share_the_picks_deterministically(
    tmp_path: Path, installed: list[Any]
) -> None:
    """Two deployments of one entry (two accounts): drawn by the request id, so a given
    request always lands on the same one, and many requests reach both."""
    model_list = [
        _deployment("chat", "openai/gpt-4o-mini", "account A"),
        _deployment("chat", "openai/gpt-4o-mini", "account B", id="second-account"),
    ]
    router, _ = _router(_engine(tmp_path), model_list, installed)
    seen = {
        _answer(router.completion(model="chat", messages=HELLO, litellm_trace_id=f"t{i}"))
        for i in range(20)
    }
    assert seen == {"account A", "account B"}
    again = [
        _answer(router.completion(model="chat", messages=HELLO, litellm_trace_id="t7"))
        for _ in range(3)
    ]
    assert len(set(again)) == 1


# ----------------------------------------------------------------------------- outcomes


def test_the_callback_records_outcomes_and_routing_moves_off_a_failing_deployment(
    tmp_path: Path, installed: list[Any]
) -> None:
    engine = _engine(tmp_path)
    model_list = [
        _deployment("chat", "openai/gpt-4o", "from gpt-4o"),
        _deployment("chat", "openai/gpt-4o-mini", "litellm.InternalServerError"),
    ]
    router, strategy = _router(engine, model_list, installed)
    callback = strategy.callback
    for n in (1, 2):  # the cheapest deployment fails twice: `cooldown after 2 failures`
        with pytest.raises(litellm.InternalServerError):
            router.completion(model="chat", messages=HELLO, user="ann")
        _wait(lambda n=n: callback.recorded == n)
    mini = engine.metrics.stats("openai/gpt-4o-mini")
    assert mini is not None and mini.samples == 2 and mini.consecutive_failures == 2
    assert callback.error_classes == {("openai/gpt-4o-mini", "InternalServerError"): 2}
    for n in (3, 4):
        assert _answer(router.completion(model="chat", messages=HELLO)) == "from gpt-4o"
        _wait(lambda n=n: callback.recorded == n)
    big = engine.metrics.stats("openai/gpt-4o")
    assert big is not None and big.samples == 2 and big.success_rate == 1.0


def test_async_outcomes_are_recorded_too(tmp_path: Path, installed: list[Any]) -> None:
    engine = _engine(tmp_path)
    model_list = [
        _deployment("chat", "openai/gpt-4o", "from gpt-4o"),
        _deployment("chat", "openai/gpt-4o-mini", "litellm.InternalServerError"),
    ]
    router, strategy = _router(engine, model_list, installed)

    async def calls() -> list[str]:
        answers = []
        for _ in range(4):
            try:
                answers.append(_answer(await router.acompletion(model="chat", messages=HELLO)))
            except litellm.InternalServerError:
                answers.append("error")
            await _recorded(strategy, len(answers))
        return answers

    assert asyncio.run(calls()) == ["error", "error", "from gpt-4o", "from gpt-4o"]


def test_a_streamed_call_is_recorded_once_it_is_read(tmp_path: Path, installed: list[Any]) -> None:
    engine = _engine(tmp_path)
    router, strategy = _router(engine, CHAT, installed)
    chunks = router.completion(model="chat", messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "from gpt-4o-mini"
    _wait(lambda: strategy.callback.recorded == 1)
    stats = engine.metrics.stats("openai/gpt-4o-mini")
    assert stats is not None and stats.samples == 1 and stats.success_rate == 1.0


def test_tokens_and_the_request_id_reach_the_outcome_log(
    tmp_path: Path, installed: list[Any]
) -> None:
    (tmp_path / "models.yaml").write_text(CATALOG)
    (tmp_path / "p.policy").write_text(COST)
    log = tmp_path / "outcomes.duckdb"
    engine = PolicyEngine(tmp_path / "p.policy", outcomes=str(log))
    try:
        router, strategy = _router(engine, CHAT, installed)
        router.completion(model="chat", messages=HELLO, user="ann", litellm_trace_id="trace-1")
        _wait(lambda: strategy.callback.recorded == 1)
    finally:
        engine.close()  # the outcome log is flushed
    with duckdb.connect(str(log), read_only=True) as db:
        rows = db.execute(
            "SELECT provider, model, success, input_tokens, output_tokens, request_id,"
            " route, user_id FROM outcomes"
        ).fetchall()
    # LiteLLM's mock answers with usage 10 prompt + 20 completion tokens
    assert rows == [("openai", "gpt-4o-mini", True, 10, 20, "trace-1", "default", "ann")]


# ----------------------------------------------------------------------------- fallbacks


def test_litellm_fallbacks_call_the_strategy_again(tmp_path: Path, installed: list[Any]) -> None:
    engine = _engine(tmp_path)
    model_list = [
        _deployment("groupA", "openai/gpt-4o-mini", "litellm.InternalServerError"),
        _deployment("groupB", "anthropic/claude-sonnet-4-5", "from anthropic"),
        _deployment("groupB", "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock"),
    ]
    router, strategy = _router(engine, model_list, installed, fallbacks=[{"groupA": ["groupB"]}])
    response = router.completion(model="groupA", messages=HELLO, litellm_trace_id="t1")
    assert _answer(response) == "bedrock"  # the policy's pick in groupB: the cheaper entry
    _wait(lambda: strategy.callback.recorded == 2)
    failed = engine.metrics.stats("openai/gpt-4o-mini")
    served = engine.metrics.stats("bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert failed is not None and failed.samples == 1 and failed.success_rate == 0.0
    assert served is not None and served.samples == 1 and served.success_rate == 1.0


# ----------------------------------------------------------------------------- denial


LIMITED = COST + "limit user 1 per 1h\n"


def test_a_denial_is_litellms_429_with_the_retry_time(tmp_path: Path, installed: list[Any]) -> None:
    router, _ = _router(_engine(tmp_path, LIMITED), CHAT, installed)
    assert _answer(router.completion(model="chat", messages=HELLO, user="ann"))
    with pytest.raises(litellm.RateLimitError) as caught:
        router.completion(model="chat", messages=HELLO, user="ann")
    err = caught.value
    assert err.status_code == 429
    assert err.decision.denied_by.scope == "user"  # type: ignore[attr-defined]
    retry_ms = err.retry_after_ms  # type: ignore[attr-defined]
    assert 3_500_000 < retry_ms <= 3_600_000
    assert err.response.headers["retry-after"] == str(-(-retry_ms // 1000))
    assert err.response.headers["retry-after-ms"] == str(retry_ms)
    # what LiteLLM's proxy forwards to its client, and who limited the call
    assert err.headers == {
        "retry-after": str(-(-retry_ms // 1000)),
        "retry-after-ms": str(retry_ms),
    }
    assert err.category == "litellm_rate_limit"
    assert "policyctl denied the request for model group `chat`: Rate limited by user" in str(err)
    # another user is not limited, and the denial consumed nothing
    assert _answer(router.completion(model="chat", messages=HELLO, user="bob"))

    async def denied() -> None:
        await router.acompletion(model="chat", messages=HELLO, user="bob")

    with pytest.raises(litellm.RateLimitError) as again:
        asyncio.run(denied())
    assert again.value.status_code == 429


def test_no_eligible_deployment_is_a_429_without_a_retry_time(
    tmp_path: Path, installed: list[Any]
) -> None:
    model_list = [_deployment("plain", "openai/o1-text", "x")]
    router, _ = _router(_engine(tmp_path), model_list, installed)
    with pytest.raises(litellm.RateLimitError) as caught:
        router.completion(model="plain", messages=HELLO, response_format={"type": "json_object"})
    assert caught.value.retry_after_ms is None  # type: ignore[attr-defined]
    assert "retry-after" not in caught.value.response.headers
    assert "No eligible model" in str(caught.value)


# ----------------------------------------------------------------------------- mapping


def test_an_unmapped_deployment_is_a_clear_error_at_install(tmp_path: Path) -> None:
    router = Router(model_list=[*CHAT, _deployment("chat", "openai/my-finetune-v2", "x")])
    with pytest.raises(UnmappedDeployment) as caught:
        install(router, _engine(tmp_path))
    text = str(caught.value)
    assert re.fullmatch(
        r"LiteLLM deployment `openai/my-finetune-v2` \(model group `chat`, id `\w+`\) is not in"
        r" the catalog `.*models\.yaml` \(looked for `openai/my-finetune-v2`\): add it to the"
        r" catalog, or name the entry it serves in the deployment's model_info, e.g\."
        r' "model_info": \{"policyctl_model": "openai/gpt-4o"\}',
        text,
    ), text


def test_a_misspelt_deployment_gets_the_entry_it_likely_means(tmp_path: Path) -> None:
    """A typo in a deployment's model is an error with the checker's did-you-mean (among the
    provider's entries), and the model_info example names that entry."""
    router = Router(model_list=[*CHAT, _deployment("chat", "openai/gpt-4o-mnii", "x")])
    with pytest.raises(UnmappedDeployment) as caught:
        install(router, _engine(tmp_path))
    text = str(caught.value)
    assert "(looked for `openai/gpt-4o-mnii`; did you mean `openai/gpt-4o-mini`?)" in text, text
    assert text.endswith('e.g. "model_info": {"policyctl_model": "openai/gpt-4o-mini"}'), text


def test_model_info_names_the_catalog_entry(tmp_path: Path, installed: list[Any]) -> None:
    model_list = [
        _deployment("chat", "openai/my-finetune", "tuned", policyctl_model="openai/gpt-4o-mini"),
        _deployment("chat", "gpt-4o", "unprefixed"),  # LiteLLM infers openai
    ]
    router, _ = _router(_engine(tmp_path), model_list, installed)
    assert _answer(router.completion(model="chat", messages=HELLO)) == "tuned"


def test_policyctl_router_builds_a_routed_router(tmp_path: Path) -> None:
    router = policyctl_router(_engine(tmp_path), CHAT, num_retries=0)
    try:
        assert _answer(router.completion(model="chat", messages=HELLO)) == "from gpt-4o-mini"
    finally:
        for callback in [c for c in litellm.callbacks if hasattr(c, "strategy")]:
            callback.strategy.uninstall()


def test_set_custom_routing_strategy_takes_the_strategy(tmp_path: Path) -> None:
    """LiteLLM's documented entry point (deprecated in 1.110 for `register_plugin`)."""
    from engine.integrations.litellm import PolicyctlStrategy

    router = Router(model_list=CHAT)
    strategy = PolicyctlStrategy(_engine(tmp_path), router)
    with pytest.warns(DeprecationWarning, match="set_custom_routing_strategy"):
        router.set_custom_routing_strategy(strategy)
    assert _answer(router.completion(model="chat", messages=HELLO)) == "from gpt-4o-mini"


# ----------------------------------------------------------------------------- the request


def test_the_call_reaches_the_engine_as_an_openai_chat_body(tmp_path: Path) -> None:
    """What routing needs is derived from the call by the engine's wire reader; LiteLLM's
    own metadata keys are left out."""
    kwargs = {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 300,
        "user": "ann",
        "stream": True,
        "temperature": 0.2,
        "metadata": {
            "team": "search", "tags": ["beta"], "model_group": "chat", "attempted_retries": 1,
            "previous_models": [{}], "user_api_key_hash": "h", "_routing_request_tags": (),
            "policyctl": {"token": "x"},
        },
    }  # fmt: skip
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
        ]},
    ]  # fmt: skip
    body, fmt = wire_body("chat", messages, None, kwargs)
    assert fmt == "openai-chat"
    assert body == {
        "model": "chat",
        "messages": messages,
        "tools": kwargs["tools"],
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 300,
        "user": "ann",
        "stream": True,
        "metadata": {"team": "search"},
    }
    assert body["messages"] is messages  # not copied
    decision = _engine(tmp_path).evaluate(body, input_format=fmt, request_id="r1", explain=True)
    assert decision.request_id == "r1"
    assert decision.trace is not None
    (step,) = [s for s in decision.trace if s["step"] == "request"]
    derived = {d["field"]: d["value"] for d in step["derived"]}
    assert step["format"] == "openai-chat"
    for name in ("requires_vision", "requires_tools", "requires_json", "stream"):
        assert derived[name] is True, name
    assert (derived["user"], derived["max_tokens"], derived["model"]) == ("ann", 300, "chat")
    assert decision.model == "gpt-4o-mini"  # o1-text has no vision, tools or json
    assert wire_body("g", None, "text", {"max_tokens": 5}) == (
        {"model": "g", "input": "text", "max_output_tokens": 5},
        "openai-responses",
    )


# ----------------------------------------------------------------------------- only


@pytest.mark.parametrize("explain", [False, True])  # the fast path, and the general one
def test_only_limits_the_decision_to_the_offered_models(tmp_path: Path, explain: bool) -> None:
    engine = _engine(tmp_path)
    request = {"id": "r1", "prompt": "hi"}
    assert engine.evaluate(request, explain=explain).model == "o1-text"
    only = frozenset({"openai/gpt-4o", "anthropic/claude-sonnet-4-5-20250929"})
    decision = engine.evaluate(request, explain=explain, only=only)
    assert (decision.provider, decision.model) == ("openai", "gpt-4o")
    assert [(a.provider, a.model) for a in decision.alternatives] == [
        ("anthropic", "claude-sonnet-4-5-20250929")
    ]
    if explain:
        assert decision.trace is not None
        dropped = {(s["model"], s["because"]) for s in decision.trace if s["step"] == "drop"}
        assert ("o1-text", "not offered by the caller") in dropped


def test_only_with_nothing_eligible_says_why(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    decision = engine.evaluate({"id": "r1", "prompt": "hi"}, only=frozenset({"openai/nope"}))
    assert not decision.allowed and decision.denied_by is not None
    reasons = {c.dropped_because for c in decision.denied_by.candidates}  # type: ignore[union-attr]
    assert reasons == {"not offered by the caller"}


# ----------------------------------------------------------------------------- the doc


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(), re.S | re.M)


def test_the_docs_switch_over_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/litellm.md's example, as written, against the packaged default policy: it
    prints the chosen deployment's answer, and the callback records the call."""
    (block,) = _python_blocks(ROOT / "docs" / "litellm.md")
    assert sum(line.endswith("# new") or "# new:" in line for line in block.splitlines()) == 3
    scope: dict[str, Any] = {}
    exec(compile(block, "docs/litellm.md", "exec"), scope)
    router = scope["router"]
    (strategy,) = [c.strategy for c in litellm.callbacks if getattr(c, "strategy", None)
                   and c.strategy.router is router]  # fmt: skip
    try:
        assert capsys.readouterr().out == "Paris.\n"
        _wait(lambda: strategy.callback.recorded == 1)
    finally:
        strategy.uninstall()


REASONING_CATALOG = """\
version: 2
models:
  - {id: gpt-4o-mini, provider: openai, context_window: 128000, max_tokens: 16384,
     supports: [streaming, tools, json], pricing: {input: 0.15, output: 0.6},
     latency_prior_ms: {p50: 600, p95: 1700}}
  - {id: claude-sonnet-4-5, provider: anthropic, context_window: 200000, max_tokens: 64000,
     supports: [streaming, tools, json, reasoning], pricing: {input: 3.0, output: 15.0},
     latency_prior_ms: {p50: 1100, p95: 2400}}
"""


@pytest.mark.parametrize(
    "reasoning",
    [
        {"reasoning_effort": "high"},
        {"reasoning_effort": "minimal"},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    ],
)
def test_a_reasoning_call_goes_to_a_deployment_that_reasons(
    tmp_path: Path, installed: list[Any], reasoning: dict[str, Any]
) -> None:
    """A Router call's reasoning_effort (or the `thinking` LiteLLM passes on) reaches the
    engine: the cheaper deployment without `reasoning` is not picked for it."""
    (tmp_path / "models.yaml").write_text(REASONING_CATALOG)
    (tmp_path / "p.policy").write_text(COST)
    engine = PolicyEngine(tmp_path / "p.policy")
    model_list = [
        _deployment("deep", "openai/gpt-4o-mini", "from gpt-4o-mini"),
        _deployment("deep", "anthropic/claude-sonnet-4-5", "from claude"),
    ]
    router, _ = _router(engine, model_list, installed)
    assert _answer(router.completion(model="deep", messages=HELLO)) == "from gpt-4o-mini"
    assert _answer(router.completion(model="deep", messages=HELLO, **reasoning)) == "from claude"
    body, fmt = wire_body("deep", HELLO, None, reasoning)
    assert fmt == "openai-chat" and body == {"model": "deep", "messages": HELLO, **reasoning}


def test_a_responses_call_keeps_its_reasoning_effort() -> None:
    assert wire_body("g", None, "text", {"reasoning_effort": "low"}) == (
        {"model": "g", "input": "text", "reasoning": {"effort": "low"}},
        "openai-responses",
    )
    given = {"reasoning": {"effort": "high", "summary": "auto"}, "reasoning_effort": "low"}
    assert wire_body("g", None, "text", given)[0]["reasoning"] == given["reasoning"]

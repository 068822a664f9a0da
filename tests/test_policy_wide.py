"""Policy-wide constraints (issue 17): a top-level `require … [when …]` binds every route,
`defaults` and the whole fallback chain; `deny "reason" when …` denies before routing.

The residency property: over random requests and random provider outages (failures
recorded through the engine, so cooldowns take providers out), an EU request is never
served, offered as an alternative or given a fallback outside the EU, and when no EU model
is left it is denied with the reason naming the `require` — never served elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _design import DESIGN_CATALOG, from_design
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.loader import compile_sources
from engine.routing import evaluator as evaluator_module
from engine.routing.decision import (
    DecisionSchema,
    DeniedByPolicyRequire,
    DeniedByRule,
    NoEligibleModel,
)

REPO = Path(__file__).resolve().parent.parent
START = 1_800_000_000.0
RESIDENCY = 'require model.regions contains "eu" when request.region == "eu"'


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def codes(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        compile_sources([("p.policy", f'catalog "{DESIGN_CATALOG.as_posix()}"\n{text}')])
    return [d.code for d in caught.value.diagnostics]


def chosen(decision: Any) -> str:
    return f"{decision.provider}/{decision.model}"


# ------------------------------------------------------------------ the checker


def test_the_checker_refuses_what_a_policy_wide_rule_cannot_mean() -> None:
    assert codes('require model.p95 < 3s when model.regions contains "eu"') == ["E0250"]
    assert codes('deny "slow" when model.p95 > 3s') == ["E0250"]
    assert codes('deny "closed"') == ["E0251"]
    assert codes('deny "" when request.user == "x"') == ["E0252"]
    assert codes('require request.region == "eu"') == ["E0253"]
    assert codes('require model.region == "eu"') == ["E0324"]
    assert codes('deny "x" when request.regoin == "eu"') == ["E0324"]
    assert codes('require model.regions contains 3 when request.region == "eu"') == ["E0342"]


def test_measured_signals_are_allowed_in_a_policy_wide_require() -> None:
    program = compile_sources(
        [("p.policy", f'catalog "{DESIGN_CATALOG.as_posix()}"\nrequire model.p95 < 3s\n')]
    ).program
    (require,) = program.requires
    assert require.measured and not require.reads_request
    assert program.live_requires == (0,)  # never folded on the priors at compile time


# ------------------------------------------------------------------ compile-time folding


def test_a_static_require_with_no_when_is_folded_into_every_candidate_list() -> None:
    engine = from_design(
        'require model.regions contains "eu"\n'
        'route chat when request.metadata.kind == "chat" {\n'
        "    prefer openai\n    strategy cost\n}\n"
    )
    program = engine.program
    assert program.live_requires == ()  # nothing left to check per request
    chat = program.routes[0]
    assert [m.key for m in chat.candidates] == ["openai/gpt-4o"]
    assert all("eu" in m.regions for m in program.default_route.candidates)
    assert {m.key for m, _ in chat.policy_dropped} == {
        "openai/gpt-4-turbo-preview",
        "openai/gpt-4",
        "openai/gpt-3.5-turbo",
    }
    decision = engine.evaluate({"id": "r", "metadata": {"kind": "chat"}}, explain=True)
    assert chosen(decision) == "openai/gpt-4o"
    drops = {t["model"]: t["because"] for t in decision.trace or () if t["step"] == "drop"}
    assert drops["gpt-4"] == (
        'fails policy-wide require at <policy>:2: model.regions contains "eu"'
    )


# ------------------------------------------------------------------ residency and fallbacks

RESIDENT = f"""{RESIDENCY}
defaults {{
    strategy cost
    fallback openai, claude, gemini
}}
route chat when request.metadata.kind == "chat" {{
    prefer openai/gpt-3.5-turbo
    prefer openai/gpt-4
    prefer openai/gpt-4o
    prefer claude/claude-3-opus
    strategy cost
    fallback openai/gpt-4, claude/claude-3-opus, gemini
}}
route us_only when request.metadata.kind == "us" {{
    prefer openai/gpt-3.5-turbo
    prefer openai/gpt-4
}}
"""


def test_an_eu_request_never_falls_back_outside_the_eu() -> None:
    engine = from_design(RESIDENT)
    us = engine.evaluate({"id": "us", "region": "us", "metadata": {"kind": "chat"}})
    assert chosen(us) == "openai/gpt-3.5-turbo"  # the cheapest, no residency for it
    assert {"provider": "openai", "model": "gpt-4"} in us.fallbacks

    eu = engine.evaluate({"id": "eu", "region": "eu", "metadata": {"kind": "chat"}})
    assert chosen(eu) == "openai/gpt-4o"
    # the route's own fallback line names gpt-4 (US only) first: it is skipped
    assert eu.fallbacks == [{"provider": "claude", "model": "claude-3-opus-20240229"}]
    assert [a.model for a in eu.alternatives] == ["claude-3-opus-20240229"]

    # the defaults' fallback (openai first) is bound as well: gpt-4o, not gpt-3.5-turbo
    us_default = engine.evaluate({"id": "us-default"})
    assert us_default.fallbacks[0] == {"provider": "openai", "model": "gpt-3.5-turbo"}
    default = engine.evaluate({"id": "eu-default", "region": "eu"})
    assert default.fallbacks[0] == {"provider": "openai", "model": "gpt-4o"}
    catalog = engine.program.catalog
    shown = [
        (default.provider, default.model),
        *((f["provider"], f["model"]) for f in default.fallbacks),
        *((a.provider, a.model) for a in default.alternatives),
    ]
    for provider, model in shown:
        found = catalog.find(str(provider), str(model))
        assert found is not None and "eu" in found.regions


def test_a_route_with_no_eu_model_denies_an_eu_request_naming_the_require() -> None:
    engine = from_design(RESIDENT, name="eu.policy")
    decision = engine.evaluate({"id": "eu", "region": "eu", "metadata": {"kind": "us"}})
    assert not decision.allowed
    assert decision.route == "us_only"
    assert decision.reason == (
        'Denied by policy-wide require at eu.policy:2: model.regions contains "eu"'
        ' (when request.region == "eu")'
    )
    denied = decision.denied_by
    assert isinstance(denied, DeniedByPolicyRequire)
    assert denied.to_dict() == {
        "reason": "policy_require",
        "rule": "require at eu.policy:2",
        "location": "eu.policy:2",
        "require": 'model.regions contains "eu"',
        "when": 'request.region == "eu"',
        "candidates": [
            {
                "provider": "openai",
                "model": model,
                "dropped_because": "fails policy-wide require at eu.policy:2: model.regions"
                ' contains "eu" (when request.region == "eu")',
            }
            for model in ("gpt-3.5-turbo", "gpt-4")
        ],
    }
    DecisionSchema.model_validate(decision.to_dict())
    # without the region the same route serves it
    assert engine.evaluate({"id": "us", "metadata": {"kind": "us"}}).allowed


def test_an_outage_of_the_eu_models_denies_rather_than_serving_elsewhere() -> None:
    clock = FakeClock()
    engine = from_design(
        RESIDENT.replace(
            "strategy cost\n    fallback openai, claude, gemini",
            "strategy cost\n    cooldown after 1 failure for 60s",
        ),
        clock=clock,
        metrics_refresh_ms=0.0,
    )
    request = {"id": "eu", "region": "eu", "metadata": {"kind": "chat"}}
    assert engine.evaluate(request).allowed
    for provider, model in (("claude", "claude-3-opus"), ("openai", "gpt-4o")):
        engine.record_outcome(provider, model, latency_ms=100.0, success=False)
    clock.now += 1.0
    general = evaluator_module.general_path_calls
    decision = engine.evaluate(request)
    assert evaluator_module.general_path_calls == general + 1  # the general path says why
    assert not decision.allowed
    assert isinstance(decision.denied_by, DeniedByPolicyRequire)
    reasons = {c.model: c.dropped_because for c in decision.denied_by.candidates}
    assert reasons["gpt-3.5-turbo"].startswith("fails policy-wide require")
    assert reasons["gpt-4o"].startswith("in cooldown after 1 consecutive failures")
    # a US request is still served by the US models
    assert engine.evaluate({**request, "region": "us"}).model == "gpt-3.5-turbo"


def test_a_policy_wide_require_with_a_when_keeps_the_shortcut() -> None:
    engine = from_design(RESIDENT)
    engine.evaluate({"id": "warm", "region": "eu", "metadata": {"kind": "chat"}})
    before = evaluator_module.general_path_calls
    for i in range(5):
        assert engine.evaluate(
            {"id": f"r{i}", "region": "eu", "metadata": {"kind": "chat"}}
        ).allowed
    assert evaluator_module.general_path_calls == before


def test_a_require_reading_the_request_binds_model_by_model() -> None:
    engine = from_design(
        "require model.regions contains request.metadata.home"
        " when request.metadata.home != null\n"
        "route openai {\n    prefer openai\n    strategy cost\n}\n"
    )
    assert engine.program.requires[0].reads_request
    assert chosen(engine.evaluate({"id": "a", "metadata": {"home": "eu"}})) == "openai/gpt-4o"
    assert chosen(engine.evaluate({"id": "b"})) == "openai/gpt-3.5-turbo"
    mars = engine.evaluate({"id": "c", "metadata": {"home": "mars"}})
    assert isinstance(mars.denied_by, DeniedByPolicyRequire)


def test_a_measured_policy_wide_require_reads_live_measurements() -> None:
    clock = FakeClock()
    engine = from_design(
        'require model.p95 < 3s when request.region == "eu"\n'
        "defaults {\n    strategy cost\n    min_samples 10\n    window 10m\n}\n"
        "route chat {\n    prefer claude/claude-3-haiku\n    prefer openai/gpt-4o\n}\n",
        clock=clock,
        metrics_refresh_ms=0.0,
    )
    eu = {"id": "eu", "region": "eu"}
    assert engine.evaluate(eu).model == "claude-3-haiku-20240307"  # the prior: 1,000 ms
    for _ in range(20):
        clock.now += 1.0
        engine.record_outcome("claude", "claude-3-haiku", latency_ms=5000.0, success=True)
    clock.now += 1.0
    before = evaluator_module.general_path_calls
    assert engine.evaluate(eu).model == "gpt-4o"  # measured at 5 s: out for EU requests
    assert evaluator_module.general_path_calls == before  # on the shortcut
    assert engine.evaluate({"id": "us"}).model == "claude-3-haiku-20240307"
    explained = engine.evaluate({"id": "why", "region": "eu"}, explain=True)
    drops = {t["model"]: t["because"] for t in explained.trace or () if t["step"] == "drop"}
    assert drops == {
        "claude-3-haiku-20240307": "fails policy-wide require at <policy>:2: model.p95 < 3s"
        ' (when request.region == "eu")'
    }


# ------------------------------------------------------------------ deny rules


def test_a_deny_rule_denies_before_routing_and_consumes_no_limit() -> None:
    engine = from_design(
        'deny "free tier: no images" when request.metadata.tier == "free"'
        " and request.requires_vision\n"
        "limit global 1 per 1m\n",
        name="deny.policy",
    )
    denied = engine.evaluate(
        {"id": "img", "requires_vision": True, "metadata": {"tier": "free"}}, explain=True
    )
    assert not denied.allowed
    assert denied.reason == "Denied by the rule at deny.policy:2: free tier: no images"
    assert isinstance(denied.denied_by, DeniedByRule)
    assert denied.denied_by.to_dict() == {
        "reason": "deny_rule",
        "rule": "deny at deny.policy:2",
        "location": "deny.policy:2",
        "message": "free tier: no images",
        "when": 'request.metadata.tier == "free" and request.requires_vision',
    }
    assert denied.rate_limits == []
    assert denied.trace == [
        {
            "step": "deny",
            "location": "deny.policy:2",
            "when": 'request.metadata.tier == "free" and request.requires_vision',
            "matched": True,
        }
    ]
    DecisionSchema.model_validate(denied.to_dict())
    assert engine.evaluate({"id": "ok", "metadata": {"tier": "free"}}).allowed  # the one slot
    assert not engine.evaluate({"id": "limited"}).allowed  # the limit: the deny took none


def test_the_first_matching_deny_rule_wins() -> None:
    engine = from_design(
        'deny "first" when request.user == "x"\ndeny "second" when request.user != null\n'
    )
    assert engine.evaluate({"id": "a", "user": "x"}).reason.endswith(": first")
    assert engine.evaluate({"id": "b", "user": "y"}).reason.endswith(": second")
    assert engine.evaluate({"id": "c"}).allowed


# ------------------------------------------------------------------ the residency property

# EU models at two providers, US-only ones at all four; cheapest first within a region
RESIDENCY_CATALOG = {
    "models": [
        {"id": id_, "provider": provider, "context_window": 128000, "max_tokens": 4096,
         "supports": supports, "pricing": {"input": price, "output": price * 4},
         "latency_prior_ms": {"p50": 400, "p95": 900}, "regions": regions}
        for id_, provider, price, regions, supports in (
            ("us-small", "alpha", 0.1, ["us"], ["streaming"]),
            ("eu-small", "alpha", 0.3, ["eu"], ["streaming"]),
            ("us-vision", "beta", 0.2, ["us"], ["streaming", "vision"]),
            ("eu-vision", "beta", 0.6, ["us", "eu"], ["streaming", "vision"]),
            ("us-large", "gamma", 1.0, ["us"], ["streaming", "vision", "tools"]),
            ("eu-tools", "delta", 2.0, ["eu"], ["streaming", "tools"]),
            ("us-tools", "delta", 0.5, ["us"], ["streaming", "tools"]),
        )
    ]
}  # fmt: skip
PROVIDERS = ("alpha", "beta", "gamma", "delta")


def residency_policy(catalog: Path, with_require: bool) -> str:
    return f"""catalog "{catalog.as_posix()}"
{RESIDENCY if with_require else ""}
defaults {{
    strategy cost
    fallback gamma, delta, alpha, beta
    cooldown after 1 failure for 60s
}}
route chat when request.metadata.kind == "chat" {{
    prefer alpha
    prefer gamma/us-large
    prefer delta
    fallback gamma/us-large, alpha/us-small, delta
}}
route vision when request.requires_vision {{
    prefer beta
    prefer gamma
    strategy cost
}}
"""


@pytest.fixture(scope="module")
def residency_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("residency") / "models.yaml"
    path.write_text(yaml.safe_dump(RESIDENCY_CATALOG))
    return path


residency_requests = st.fixed_dictionaries(
    {"id": st.text(alphabet="abcdef0123", min_size=1, max_size=6)},
    optional={
        "region": st.sampled_from(["eu", "us"]),
        "requires_vision": st.booleans(),
        "requires_tools": st.booleans(),
        "metadata": st.fixed_dictionaries({"kind": st.sampled_from(["chat", "other"])}),
        "max_cost": st.sampled_from([1e-5, 0.0001, 0.01]),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(residency_requests, min_size=1, max_size=6),
    down=st.sets(st.sampled_from(PROVIDERS)),
    explain=st.booleans(),
)
def test_no_eu_request_is_served_outside_the_eu_whatever_is_down(
    residency_catalog: Path, requests: list[dict[str, Any]], down: set[str], explain: bool
) -> None:
    clock = FakeClock()
    engines = [
        PolicyEngine.from_text(
            residency_policy(residency_catalog, with_require),
            "eu.policy",
            clock=clock,
            metrics_refresh_ms=0.0,
        )
        for with_require in (True, False)
    ]
    bound, free = engines
    catalog = bound.program.catalog
    for engine in engines:  # the outage: one failure puts every model of a provider out
        for model in catalog.models:
            if model.provider in down:
                engine.record_outcome(model.provider, model.id, latency_ms=50.0, success=False)
    clock.now += 1.0

    def in_eu(provider: str, model: str) -> bool:
        found = catalog.find(provider, model)
        assert found is not None
        return "eu" in found.regions

    for request in requests:
        decision = bound.evaluate(request, explain=explain)
        if request.get("region") != "eu":
            continue
        if decision.allowed:  # served in the EU, and every way out of it stays there
            assert decision.provider is not None and decision.model is not None
            assert in_eu(decision.provider, decision.model)
            assert all(in_eu(f["provider"], f["model"]) for f in decision.fallbacks)
            assert all(in_eu(a.provider, a.model) for a in decision.alternatives)
        # what the same request gets without the require, ranked in full
        unbound = free.evaluate(request, explain=True)
        ranking = next((t["ranking"] for t in unbound.trace or () if t["step"] == "choose"), [])
        eu_left = [r for r in ranking if in_eu(r["provider"], r["model"])]
        if eu_left:  # the cheapest EU model left is served (strategy cost)
            assert decision.allowed
            assert (decision.provider, decision.model) == (
                eu_left[0]["provider"],
                eu_left[0]["model"],
            )
        else:
            assert not decision.allowed
            if ranking:  # only models outside the EU were left: denied, naming the require
                assert isinstance(decision.denied_by, DeniedByPolicyRequire)
                assert decision.reason == (
                    'Denied by policy-wide require at eu.policy:2: model.regions contains "eu"'
                    ' (when request.region == "eu")'
                )
            else:
                assert isinstance(decision.denied_by, DeniedByPolicyRequire | NoEligibleModel)


# ------------------------------------------------------------------ the command line


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_eval_explains_both_denials_in_a_table(tmp_path: Path) -> None:
    (tmp_path / "eu.policy").write_text(
        f'catalog "{DESIGN_CATALOG.as_posix()}"\n{RESIDENCY}\n'
        'deny "suspended" when request.user == "mallory"\n'
        "limit user 1 per 1m\n"
        'route us_only when request.metadata.kind == "us" {\n    prefer openai/gpt-4\n}\n'
    )
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"id": "deny", "user": "mallory"},
                {"id": "eu", "user": "ann", "region": "eu", "metadata": {"kind": "us"}},
            )
        )
        + "\n"
    )
    for request in ("deny", "eu"):
        one = tmp_path / f"{request}.json"
        one.write_text(requests.read_text().splitlines()[0 if request == "deny" else 1])
        done = run_cli(
            "eval", "--policy", "eu.policy", "--state", "memory://", "--format", "table",
            "--explain", one.name, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr
        if request == "deny":
            assert "Denied by the rule at eu.policy:3: suspended" in done.stdout
            assert "denied by       deny at eu.policy:3" in done.stdout
        else:
            assert (
                'Denied by policy-wide require at eu.policy:2: model.regions contains "eu"'
                in done.stdout
            )
            assert "dropped         openai/gpt-4: fails policy-wide require" in done.stdout
            assert 'trace           require model.regions contains "eu" when' in done.stdout
    # a rate-limited decision explained in a table (its `limit` step)
    (tmp_path / "tokens.policy").write_text(
        f'catalog "{DESIGN_CATALOG.as_posix()}"\nlimit user tokens 10 per 1m\n'
    )
    big = tmp_path / "big.json"
    big.write_text('{"id": "big", "user": "bob", "input_tokens": 5000}')
    done = run_cli(
        "eval", "--policy", "tokens.policy", "--state", "memory://", "--format", "table",
        "--explain", big.name, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "trace           rate limited by user bob" in done.stdout
    # and as JSON, the denial's fields
    done = run_cli("eval", "--policy", "eu.policy", "--state", "memory://", requests.name,
                   cwd=tmp_path)  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [d["denied_by"]["reason"] for d in lines] == ["deny_rule", "policy_require"]


# ------------------------------------------------------------------ editors, LSP, coverage


def test_the_editors_and_the_language_server_know_the_policy_wide_words() -> None:
    from pygments.token import Keyword

    from engine.editors.pygments_lexer import PolicyLexer
    from engine.lsp import knowledge

    text = f'{RESIDENCY}\ndeny "suspended" when request.user == "mallory"\n'
    kinds = {value: kind for kind, value in PolicyLexer().get_tokens(text)}
    assert kinds["deny"] in Keyword.Declaration and kinds["require"] in Keyword

    labels = [c.label for c in knowledge.completions("de", 2, None).items]
    assert "deny" in labels and "require" in labels
    shown = knowledge.hover(text, text.index("deny") + 1, None)
    assert shown is not None and "before routing" in shown.markdown
    shown = knowledge.hover(text, 2, None)
    assert shown is not None and "fallback chain" in shown.markdown
    symbols = knowledge.symbols(Path("eu.policy"), text)
    assert [(s.kind, s.name) for s in symbols] == [
        ("require", 'require model.regions contains "eu"'),
        ("deny", 'deny "suspended"'),
    ]


def test_coverage_counts_policy_wide_requires_and_deny_rules(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(DESIGN_CATALOG.read_text())
    (tmp_path / "p.policy").write_text(
        f'catalog "models.yaml"\n{RESIDENCY}\nrequire model.p95 < 10s\n'
        'deny "suspended" when request.user == "mallory"\n'
        'deny "never" when request.user == "nobody"\n'
    )
    (tmp_path / "p.tests.yaml").write_text(
        "tests:\n"
        "  - name: eu\n"
        "    request: {id: a, region: eu}\n"
        "    expect: {allowed: true}\n"
        "  - name: mallory\n"
        "    request: {id: b, user: mallory}\n"
        "    expect: {allowed: false, denied_by: deny-rule}\n"
    )
    done = run_cli("test", "p.policy", "--coverage", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    items = json.loads(done.stdout)["coverage"]["files"][0]["items"]
    by_line = {(i["line"], i["kind"]): i for i in items}
    assert by_line[(2, "policy-require")]["hits"] == 1  # the EU request only: mallory was denied
    assert by_line[(2, "condition")]["true"] == 1
    assert by_line[(3, "policy-require")]["hits"] == 1
    assert by_line[(4, "deny")]["hits"] == 1
    assert by_line[(5, "deny")]["hits"] == 0  # never denied a request
    assert (by_line[(5, "condition")]["true"], by_line[(5, "condition")]["false"]) == (0, 1)

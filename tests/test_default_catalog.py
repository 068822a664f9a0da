"""The packaged catalog (`policies/models.json`) and the default policy set over it: the
catalog is exactly what `policyctl catalog import litellm` makes of the pinned litellm's
table, holds today's models only, and the four default routes mean what they meant."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.catalog.load import load_catalog
from engine.resources import default_catalog_path, default_policy_dir

ROOT = Path(__file__).resolve().parent.parent
GENERATED_ON = "2026-12-01"  # what policies/models.json says it was generated on
PROVIDERS = "anthropic,gemini,openai"


def pinned_litellm() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"litellm==([0-9.]+)"', text)
    assert found, "the test extra pins litellm"
    return found.group(1)


def test_the_packaged_catalog_is_what_the_import_makes_of_the_pinned_litellm(
    tmp_path: Path,
) -> None:
    import importlib.metadata

    assert importlib.metadata.version("litellm") == pinned_litellm()
    out = tmp_path / "models.json"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "catalog", "import", "litellm",
         "--providers", PROVIDERS, "--current",
         "--latency-priors", str(ROOT / "policies" / "latency-priors.yaml"),
         "--output", str(out)],
        env={"POLICYCTL_NOW": GENERATED_ON, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == default_catalog_path().read_text(encoding="utf-8")
    generated = json.loads(out.read_text(encoding="utf-8"))["generated"]
    assert f"from litellm {pinned_litellm()} (its bundled price table) on {GENERATED_ON}" in (
        generated.replace("\n", " ")
    )


def test_the_packaged_catalog_holds_current_priced_models_of_three_providers() -> None:
    catalog = load_catalog(default_catalog_path())
    assert catalog.providers == ("anthropic", "gemini", "openai")
    assert len(catalog.models) == 117
    generated = dt.datetime.fromisoformat(GENERATED_ON).replace(tzinfo=dt.UTC).timestamp()
    for model in catalog.models:
        assert model.retires_at is None or model.retires_at > generated, model.key
        assert model.input_price > 0 or model.output_price > 0, model.key
        assert model.latency_p50_ms <= model.latency_p95_ms


def default_routes() -> dict[str, list[str]]:
    """Each route's preferred `provider/model`s, read from the policy text with a regex."""
    routes: dict[str, list[str]] = {}
    current: list[str] | None = None
    text = (default_policy_dir() / "default.policy").read_text(encoding="utf-8")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if found := re.fullmatch(r"route (\S+) when .*\{", line):
            current = routes.setdefault(found[1], [])
        elif (found := re.match(r"prefer (\S+/\S+)", line)) and current is not None:
            current.append(found[1])
        elif line == "}":
            current = None
    return routes


def test_no_default_route_or_fallback_reaches_a_model_retired_within_a_quarter() -> None:
    catalog = load_catalog(default_catalog_path())
    horizon = dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
    routes = default_routes()
    assert set(routes) == {"vision", "budget", "fast", "quality"}
    for name, keys in routes.items():
        assert len(keys) == 3, name
        for key in keys:
            provider, _, model_id = key.partition("/")
            found = catalog.find(provider, model_id)
            assert found is not None, key
            assert found.retires_at is None or found.retires_at > horizon, key


ENGINE_NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(clock=lambda: ENGINE_NOW)


def test_vision_goes_to_a_strong_vision_model(engine: PolicyEngine) -> None:
    catalog = load_catalog(default_catalog_path())
    chosen = set()
    for i in range(40):
        d = engine.evaluate({"id": f"v{i}", "user": f"u{i}", "requires_vision": True}, dry_run=True)
        assert d.allowed and d.route == "vision"
        chosen.add(f"{d.provider}/{d.model}")
    assert chosen == set(default_routes()["vision"])  # drawn by weight: all three appear
    for key in chosen:
        provider, _, model_id = key.partition("/")
        model = catalog.find(provider, model_id)
        assert model is not None and "vision" in model.supports


def test_budget_picks_the_cheapest_within_the_cap(engine: PolicyEngine) -> None:
    d = engine.evaluate({"id": "b", "prompt": "hi", "max_cost": 0.001}, dry_run=True)
    assert d.route == "budget" and d.allowed
    assert d.estimated_cost is not None and d.estimated_cost <= 0.001
    catalog = load_catalog(default_catalog_path())
    costs = {}
    for key in default_routes()["budget"]:
        provider, _, model_id = key.partition("/")
        model = catalog.find(provider, model_id)
        assert model is not None
        costs[key] = (1 * model.input_price + 256 * model.output_price) / 1e6  # "hi": 1 token
    assert f"{d.provider}/{d.model}" == min(costs, key=lambda k: (costs[k], k))


def test_fast_answers_within_two_seconds(engine: PolicyEngine) -> None:
    d = engine.evaluate({"id": "f", "prompt": "hi", "max_latency_ms": 2000}, dry_run=True)
    assert d.route == "fast" and d.allowed
    assert d.estimated_latency_ms is not None and d.estimated_latency_ms <= 2000
    assert f"{d.provider}/{d.model}" in default_routes()["fast"]


def test_long_answers_go_to_the_strongest_models(engine: PolicyEngine) -> None:
    chosen = {
        (d := engine.evaluate({"id": f"q{i}", "max_tokens": 8000}, dry_run=True)).provider
        + "/"
        + str(d.model)
        for i in range(40)
    }
    assert chosen == set(default_routes()["quality"])

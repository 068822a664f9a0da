"""Catalog format v2: ids as providers spell them, cache/image prices, price tiers, quality,
lifecycle dates and deployments; every v1 catalog still loads unchanged.

Each cost oracle below is written out as tokens x price / 1e6 (no engine helper)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import PolicyEngine, PolicyError
from engine.catalog.load import load_catalog, parse_catalog
from engine.catalog.model import CatalogError

ROOT = Path(__file__).resolve().parent.parent

V2 = """
version: 2
models:
  - id: gemini-2.5-pro
    provider: gemini
    context_window: 1048576
    max_tokens: 65536
    supports: [streaming, tools, vision, json, json_schema, pdf, audio, reasoning, prompt_caching]
    pricing:
      input: 1.25
      output: 10.0
      cached_input: 0.125
      image: 0.001
      tiers:
        - {above: 200000, input: 2.5, output: 15.0, cached_input: 0.25}
    latency_prior_ms: {p50: 900, p95: 2500}
    quality: {overall: 0.9, tasks: {code: 0.92}, source: "example scores"}
    deprecated: 2026-06-01
    retires: 2026-12-01
  - id: claude-sonnet-4-5
    provider: anthropic
    aliases: [sonnet]
    context_window: 200000
    max_tokens: 64000
    supports: [streaming, tools, vision, json]
    pricing: {input: 3.0, output: 15.0, cached_input: 0.3, cache_write: 3.75}
    latency_prior_ms: {p50: 1100, p95: 2400}
    regions: [us, eu]
    deployments:
      - provider: anthropic
        id: claude-sonnet-4-5-20250929
      - provider: bedrock
        id: "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        regions: [us]
        pricing: {input: 3.3, output: 16.5}
      - provider: vertex_ai
        id: "claude-sonnet-4-5@20250929"
        regions: [eu]
        pricing: {input: 3.1, output: 15.5}
        latency_prior_ms: {p50: 1000, p95: 2000}
  - id: "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    provider: together_ai
    context_window: 131072
    max_tokens: 8192
    supports: [streaming]
    pricing: {input: 0.88, output: 0.88}
    latency_prior_ms: {p50: 500, p95: 1500}
"""

DEC_1 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(V2, encoding="utf-8")
    return tmp_path


def engine_for(directory: Path, body: str, now: float = DEC_1 - 86_400) -> PolicyEngine:
    path = directory / "p.policy"
    path.write_text('catalog "models.yaml"\n' + body, encoding="utf-8")
    return PolicyEngine(path, clock=lambda: now)


# ---------------------------------------------------------------- loading


def v1_catalogs() -> list[Path]:
    found = [
        p
        for pattern in ("policies/*.yaml", "examples/**/*.yaml", "tests/golden/**/models*.yaml")
        for p in ROOT.glob(pattern)
    ]
    import yaml

    def is_catalog(path: Path) -> bool:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        return (
            isinstance(doc, dict)
            and isinstance(doc.get("models"), list)
            and doc.get("version", 1) == 1  # a `version: 2` catalog may use v2 fields
        )

    return sorted(p for p in found if is_catalog(p))


@pytest.mark.parametrize("path", v1_catalogs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_v1_catalog_loads_unchanged(path: Path) -> None:
    catalog = load_catalog(path)
    for model in catalog.models:
        assert model.family is None and model.tiers == () and model.retires_at is None
        assert model.cached_input_price is None and model.image_price == 0.0
        assert model.cost(1000, 100) == (1000 * model.input_price + 100 * model.output_price) / 1e6


def test_v2_fields_load(catalog_dir: Path) -> None:
    catalog = load_catalog(catalog_dir / "models.yaml")
    pro = catalog.find("gemini", "gemini-2.5-pro")
    assert pro is not None
    assert pro.supports >= {"json_schema", "pdf", "audio", "reasoning", "prompt_caching"}
    assert pro.tiers[0].above == 200_000 and pro.tiers[0].input == 2.5
    assert pro.quality is not None and pro.quality.score() == 0.9
    assert pro.quality.score("code") == 0.92 and pro.quality.score("math") is None
    assert pro.retires_at == DEC_1
    assert pro.deprecated_at == dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
    llama = catalog.find("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert llama is not None and llama.key == "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
    # deployments: one routable entry each, inheriting what they do not set
    rows = catalog.resolve("anthropic", "claude-sonnet-4-5")
    assert [(m.provider, m.id) for m in rows] == [
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("vertex_ai", "claude-sonnet-4-5@20250929"),
    ]
    assert catalog.resolve("anthropic", "sonnet") == rows  # an alias of the model
    assert {m.family for m in rows} == {"anthropic/claude-sonnet-4-5"}
    first, bedrock, vertex = rows
    assert (first.input_price, first.cache_write_price, first.regions) == (3.0, 3.75, ("us", "eu"))
    assert (bedrock.input_price, bedrock.cached_input_price, bedrock.regions) == (
        3.3,
        None,
        ("us",),
    )
    assert (vertex.latency_p95_ms, vertex.input_price, vertex.regions) == (2000, 3.1, ("eu",))
    assert catalog.find("anthropic", "claude-sonnet-4-5") is None  # not itself routable
    assert [m.index for m in catalog.models] == list(range(5))


def test_a_json_catalog_loads_like_its_yaml(catalog_dir: Path) -> None:
    import yaml

    doc = yaml.safe_load(V2)
    for model in doc["models"]:
        for key in ("deprecated", "retires"):
            if key in model:
                model[key] = model[key].isoformat()
    (catalog_dir / "models.json").write_text(json.dumps(doc), encoding="utf-8")
    from_yaml = load_catalog(catalog_dir / "models.yaml")
    from_json = load_catalog(catalog_dir / "models.json")
    assert from_json.models == from_yaml.models


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("    retires: 2026-12-01", "    retires: 2026-01-01"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): `retires` (2026-01-01) is before"
            " `deprecated` (2026-06-01)",
        ),
        (
            ("{above: 200000,", "{above: 0,"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `pricing.tiers[0].above`: input"
            " should be greater than 0",
        ),
        (
            ("      tiers:\n", "      tiers:\n        - {above: 300000, input: 3, output: 20}\n"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `pricing`: tiers must be in"
            " increasing order of `above` (200000 follows 300000)",
        ),
        (
            ("cached_input: 0.125", "cached_input: -1"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `pricing.cached_input`: input"
            " should be greater than or equal to 0",
        ),
        (
            ("overall: 0.9", "overall: 1.5"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `quality.overall`: input should"
            " be less than or equal to 1",
        ),
        (
            ("tasks: {code: 0.92}", "tasks: {overall: 0.92}"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `quality`: `overall` is not a"
            " task: give it as `quality.overall`",
        ),
        (
            (', source: "example scores"', ""),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `quality.source`: field required",
        ),
        (
            ("retires: 2026-12-01", "retires: soon"),
            "c.yaml: model `gemini-2.5-pro` (models[0]): field `retires`: input should be a"
            " valid date or datetime, input is too short",
        ),
        (
            ("        regions: [eu]\n", "        regions: [eu]\n        colour: red\n"),
            "c.yaml: model `claude-sonnet-4-5` (models[1]): field `deployments[2].colour`:"
            " unknown field",
        ),
        (
            ("        regions: [eu]\n", "        regions: [eu]\n        pricng: {}\n"),
            "c.yaml: model `claude-sonnet-4-5` (models[1]): field `deployments[2].pricng`:"
            " unknown field; did you mean `pricing`?",
        ),
        (
            ("id: claude-sonnet-4-5-20250929", "id: claude-sonnet-4-5"),
            "c.yaml: model `claude-sonnet-4-5` (models[1]): `anthropic/claude-sonnet-4-5` is"
            " already defined by models[1]",
        ),
        (
            (
                'provider: vertex_ai\n        id: "claude-sonnet-4-5@20250929"',
                'provider: bedrock\n        id: "us.anthropic.claude-sonnet-4-5-20250929-v1:0"',
            ),
            "c.yaml: model `claude-sonnet-4-5` (models[1]):"
            " `bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0` is already defined by"
            " models[1].deployments[1]",
        ),
        (
            ("version: 2", "version: 3"),
            "c.yaml: field `version`: `3` is not a catalog version; use 1 or 2",
        ),
        (
            ("id: gemini-2.5-pro", "id: gemini 2.5 pro"),
            "c.yaml: model `gemini 2.5 pro` (models[0]): field `id`: `gemini 2.5 pro` is not a"
            " valid model id: an id starts with a letter, a digit or `@` and holds only"
            " letters, digits, `.`, `_`, `:`, `/`, `@`, `+` and `-`",
        ),
    ],
)
def test_v2_errors_name_the_model_and_the_field(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in V2
    with pytest.raises(CatalogError) as err:
        parse_catalog(V2.replace(old, new, 1), "c.yaml")
    assert str(err.value) == expected


def test_json_catalog_errors() -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog('{"models": [], "models": []}', "c.json")
    assert str(err.value) == "c.json: duplicate key `models` (JSON would keep only the last one)"
    with pytest.raises(CatalogError) as err:
        parse_catalog('{"models": [\n}', "c.json")
    assert str(err.value) == "c.json:2:1: invalid JSON: expecting value"
    with pytest.raises(CatalogError) as err:
        parse_catalog("[" * 100_000, "c.json")
    assert str(err.value) == "c.json: invalid JSON: nested too deeply or a number too long"


# ---------------------------------------------------------------- cost arithmetic


def test_cost_uses_tiers_cache_and_image_prices(catalog_dir: Path) -> None:
    catalog = load_catalog(catalog_dir / "models.yaml")
    pro = catalog.find("gemini", "gemini-2.5-pro")
    assert pro is not None
    assert pro.cost(200_000, 1000) == pytest.approx((200_000 * 1.25 + 1000 * 10.0) / 1e6)
    # above 200k: the tier's prices for the whole request, input and output
    assert pro.cost(200_001, 1000) == pytest.approx((200_001 * 2.5 + 1000 * 15.0) / 1e6)
    # cached tokens are part of the input, at the (tier's) cached price
    assert pro.cost(10_000, 100, cached_tokens=4000) == pytest.approx(
        (6000 * 1.25 + 4000 * 0.125 + 100 * 10.0) / 1e6
    )
    assert pro.cost(300_000, 0, cached_tokens=100_000) == pytest.approx(
        (200_000 * 2.5 + 100_000 * 0.25) / 1e6
    )
    assert pro.cost(100, 10, images=3) == pytest.approx((100 * 1.25 + 10 * 10.0) / 1e6 + 0.003)
    sonnet = catalog.find("anthropic", "claude-sonnet-4-5-20250929")
    assert sonnet is not None
    assert sonnet.cost(5000, 0, cached_tokens=1000, cache_write_tokens=2000) == pytest.approx(
        (2000 * 3.0 + 1000 * 0.3 + 2000 * 3.75) / 1e6
    )
    bedrock = catalog.find("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert bedrock is not None  # no cache prices of its own: cached tokens at the input price
    assert bedrock.cost(5000, 0, cached_tokens=1000) == pytest.approx(5000 * 3.3 / 1e6)


def test_decisions_estimate_with_tiers_and_cache(catalog_dir: Path) -> None:
    engine = engine_for(catalog_dir, "route r { prefer gemini }\n")
    small = engine.evaluate({"id": "a", "input_tokens": 1000, "max_tokens": 100})
    assert small.estimated_cost == round((1000 * 1.25 + 100 * 10.0) / 1e6, 10)
    large = engine.evaluate({"id": "b", "input_tokens": 250_000, "max_tokens": 100})
    assert large.estimated_cost == round((250_000 * 2.5 + 100 * 15.0) / 1e6, 10)
    cached = engine.evaluate(
        {"id": "c", "input_tokens": 1000, "cached_tokens": 800, "max_tokens": 100, "images": 2}
    )
    assert cached.estimated_cost == round(
        (200 * 1.25 + 800 * 0.125 + 100 * 10.0) / 1e6 + 2 * 0.001, 10
    )
    # more cached tokens than input tokens: capped at the input
    capped = engine.evaluate({"id": "d", "input_tokens": 10, "cached_tokens": 50, "max_tokens": 1})
    assert capped.estimated_cost == round((10 * 0.125 + 1 * 10.0) / 1e6, 10)


def test_a_tiered_price_can_push_a_model_over_max_cost(catalog_dir: Path) -> None:
    engine = engine_for(catalog_dir, "route r { prefer gemini }\n")
    below = (200_000 * 1.25 + 100 * 10.0) / 1e6  # $0.251
    ok = engine.evaluate({"id": "a", "input_tokens": 200_000, "max_tokens": 100, "max_cost": 0.3})
    assert ok.allowed and ok.estimated_cost == round(below, 10)
    over = engine.evaluate({"id": "b", "input_tokens": 200_001, "max_tokens": 100, "max_cost": 0.3})
    assert not over.allowed
    (dropped,) = over.denied_by.candidates  # type: ignore[union-attr]
    assert dropped.dropped_because == "estimated cost $0.5015 exceeds max_cost $0.3"


# ---------------------------------------------------------------- deployments


def test_a_model_with_deployments_routes_to_one_and_names_it(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir, "route r { strategy cost\n prefer anthropic/claude-sonnet-4-5 }\n"
    )
    decision = engine.evaluate({"id": "a", "input_tokens": 1000, "max_tokens": 100})
    assert (decision.provider, decision.model) == ("anthropic", "claude-sonnet-4-5-20250929")
    assert decision.deployment_of == "anthropic/claude-sonnet-4-5"
    assert decision.to_dict()["deployment_of"] == "anthropic/claude-sonnet-4-5"
    assert decision.estimated_cost == round((1000 * 3.0 + 100 * 15.0) / 1e6, 10)
    alternatives = [(a.provider, a.model) for a in decision.alternatives]
    assert alternatives == [
        ("vertex_ai", "claude-sonnet-4-5@20250929"),
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ]


def test_a_plain_model_decision_has_no_deployment_key(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir, 'route r { prefer together_ai/"meta-llama/Llama-3.3-70B-Instruct-Turbo" }\n'
    )
    decision = engine.evaluate({"id": "a", "prompt": "hi"})
    assert decision.model == "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert decision.deployment_of is None and "deployment_of" not in decision.to_dict()


def test_prefer_and_exclude_name_a_provider_a_model_or_a_deployment(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir,
        """
route by_deployment when request.region == "us" {
    prefer bedrock/"us.anthropic.claude-sonnet-4-5-20250929-v1:0"
}
route by_model_less_one when request.region == "eu" {
    strategy cost
    prefer anthropic/claude-sonnet-4-5
    exclude anthropic/claude-sonnet-4-5-20250929
}
route by_provider { prefer vertex_ai }
""",
    )
    us = engine.evaluate({"id": "a", "region": "us", "prompt": "hi"})
    assert (us.provider, us.model) == ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    eu = engine.evaluate({"id": "b", "region": "eu", "prompt": "hi"})
    assert (eu.provider, eu.model) == ("vertex_ai", "claude-sonnet-4-5@20250929")
    assert [(a.provider, a.model) for a in eu.alternatives] == [
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    ]
    other = engine.evaluate({"id": "c", "prompt": "hi"})
    assert other.provider == "vertex_ai" and other.deployment_of == "anthropic/claude-sonnet-4-5"


def test_a_model_limit_counts_every_deployment_a_provider_limit_one(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir,
        """
route r { strategy cost
    prefer anthropic/claude-sonnet-4-5 }
limit model "anthropic/sonnet" 2 per 1h
limit provider "anthropic" 1 per 1h
""",
    )
    first = engine.evaluate({"id": "1", "prompt": "hi"})
    second = engine.evaluate({"id": "2", "prompt": "hi"})
    third = engine.evaluate({"id": "3", "prompt": "hi"})
    assert (first.provider, second.provider) == ("anthropic", "vertex_ai")  # anthropic: 1/h
    assert not third.allowed  # the model's 2/h span all of its deployments
    assert third.denied_by is not None and third.denied_by.to_dict()["scope"] == "model"


def test_fallback_names_a_deployment(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir,
        """
route r {
    strategy cost
    prefer anthropic/claude-sonnet-4-5
    fallback bedrock/"us.anthropic.claude-sonnet-4-5-20250929-v1:0"
}
""",
    )
    decision = engine.evaluate({"id": "a", "prompt": "hi"})
    assert decision.fallbacks[0] == {
        "provider": "bedrock",
        "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    }


def test_an_unknown_quoted_model_is_an_error_with_did_you_mean(catalog_dir: Path) -> None:
    with pytest.raises(PolicyError) as err:
        engine_for(
            catalog_dir, 'route r { prefer bedrock/"us.anthropic.claude-sonnet-4-5-v1:0" }\n'
        )
    (diagnostic,) = err.value.diagnostics
    assert diagnostic.code == "E0241"
    assert diagnostic.message == (
        "unknown model `us.anthropic.claude-sonnet-4-5-v1:0` for provider `bedrock`"
    )
    assert diagnostic.help == (  # as a policy writes it: quoted
        'did you mean `bedrock/"us.anthropic.claude-sonnet-4-5-20250929-v1:0"`?'
    )


def test_a_provider_name_that_is_not_a_word_is_quoted(tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "golden" / "check" / "providers.yaml", tmp_path / "models.yaml")
    engine = engine_for(
        tmp_path,
        """
route eu when request.region == "eu" {
    strategy model-specific
    prefer "azure:eu"/gpt-4o
}
route ap when request.region == "ap" { strategy cost  fallback "azure:eu"/gpt-4o }
route not_azure when request.region == "us" { exclude "azure:eu", "01-ai"/"yi:large" }
route digit { prefer "01-ai" }
limit provider "azure:eu" 1 per 1d
""",
    )
    eu = engine.evaluate({"id": "a", "region": "eu"})
    assert (eu.provider, eu.model) == ("azure:eu", "gpt-4o")
    ap = engine.evaluate({"id": "f", "region": "ap"}, dry_run=True)
    assert (ap.provider, ap.model) == ("01-ai", "yi:large")  # the cheapest
    assert (ap.fallbacks[0]["provider"], ap.fallbacks[0]["model"]) == ("azure:eu", "gpt-4o")
    # the provider limit counts under the quoted name: the second request goes elsewhere
    again = engine.evaluate({"id": "b", "region": "eu"})
    assert (again.provider, again.model) != ("azure:eu", "gpt-4o")
    us = engine.evaluate({"id": "c", "region": "us"})
    assert (us.provider, us.model) == ("openai", "gpt-4o")
    digit = engine.evaluate({"id": "d"})
    assert (digit.provider, digit.model) == ("01-ai", "yi:large")


# ---------------------------------------------------------------- capabilities and attributes


def test_unknown_capability_in_a_policy_is_an_error(catalog_dir: Path) -> None:
    with pytest.raises(PolicyError) as err:
        engine_for(catalog_dir, 'route r { require model.supports contains "json_shema" }\n')
    (diagnostic,) = err.value.diagnostics
    assert (diagnostic.code, diagnostic.message, diagnostic.help) == (
        "E0343",
        "unknown capability `json_shema`",
        "did you mean `json_schema`?",
    )


def test_require_reads_v2_attributes(catalog_dir: Path) -> None:
    engine = engine_for(
        catalog_dir,
        """
route pdf when request.tags contains "pdf" { require model.supports contains "pdf" }
route good when request.tags contains "best" { require model.quality >= 0.85 }
route cached when request.tags contains "cache" {
    require model.pricing.cached_input != null and model.pricing.cached_input <= $0.2
}
""",
    )
    assert engine.evaluate({"id": "a", "tags": ["pdf"]}).model == "gemini-2.5-pro"
    assert engine.evaluate({"id": "b", "tags": ["best"]}).model == "gemini-2.5-pro"
    assert engine.evaluate({"id": "c", "tags": ["cache"]}).model == "gemini-2.5-pro"


def test_require_reads_per_task_quality(catalog_dir: Path) -> None:
    # only gemini-2.5-pro scores `code`: on the others `model.quality.code` is null, and a
    # comparison with null is false, as for every nullable attribute
    engine = engine_for(
        catalog_dir,
        """
route code when request.tags contains "code" { require model.quality.code >= 0.9 }
route high when request.tags contains "high" { require model.quality.code >= 0.95 }
route unscored when request.tags contains "unscored" {
    require model.quality.code == null and model.provider == "together_ai"
}
route overall when request.tags contains "overall" { require model.quality.overall >= 0.85 }
route scored when request.tags contains "scored" { require model.quality.code != null }
""",
    )
    assert engine.evaluate({"id": "a", "tags": ["code"]}).model == "gemini-2.5-pro"
    assert engine.evaluate({"id": "s", "tags": ["scored"]}).model == "gemini-2.5-pro"
    high = engine.evaluate({"id": "b", "tags": ["high"]})
    assert not high.allowed and high.reason.startswith("No eligible model")
    unscored = engine.evaluate({"id": "c", "tags": ["unscored"]})
    assert unscored.model == "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert engine.evaluate({"id": "d", "tags": ["overall"]}).model == "gemini-2.5-pro"


def test_an_unscored_quality_task_is_an_error_with_did_you_mean(catalog_dir: Path) -> None:
    with pytest.raises(PolicyError) as err:
        engine_for(catalog_dir, "route r { require model.quality.cod >= 0.5 }\n")
    (diagnostic,) = err.value.diagnostics
    assert (diagnostic.code, diagnostic.message, diagnostic.help) == (
        "E0325",
        "no model of the catalog has a quality score for task `cod`",
        "did you mean `model.quality.code`?",
    )
    with pytest.raises(PolicyError) as err:  # deeper than one task: an unknown field
        engine_for(catalog_dir, "route r { require model.quality.code.x >= 0.5 }\n")
    assert [d.code for d in err.value.diagnostics] == ["E0324"]


# ---------------------------------------------------------------- lifecycle


def test_no_decision_picks_a_model_past_its_retirement(catalog_dir: Path) -> None:
    body = (  # request `a` draws 0.254: gemini, while it serves
        "route r {\n    strategy model-specific\n    prefer gemini/gemini-2.5-pro  weight 90\n"
        "    prefer together_ai  weight 10\n}\n"
    )
    before = engine_for(catalog_dir, body, now=DEC_1 - 1)
    assert before.evaluate({"id": "a", "prompt": "hi"}).model == "gemini-2.5-pro"
    after = engine_for(catalog_dir, body, now=DEC_1)
    decision = after.evaluate({"id": "a", "prompt": "hi"}, explain=True)
    assert decision.model == "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert {
        "step": "drop",
        "provider": "gemini",
        "model": "gemini-2.5-pro",
        "because": "retired on 2026-12-01",
    } in (decision.trace or [])
    # the same without explain (the fast path must not skip the retirement)
    assert after.evaluate({"id": "a", "prompt": "hi"}).model == decision.model


def test_the_engine_clock_moves_past_a_retirement(catalog_dir: Path) -> None:
    now = [DEC_1 - 1]
    path = catalog_dir / "p.policy"
    path.write_text('catalog "models.yaml"\nroute r { prefer gemini }\n', encoding="utf-8")
    engine = PolicyEngine(path, clock=lambda: now[0])
    assert engine.evaluate({"id": "a", "prompt": "hi"}).allowed
    now[0] = DEC_1
    late = engine.evaluate({"id": "a", "prompt": "hi"})
    assert not late.allowed
    assert [c.dropped_because for c in late.denied_by.candidates] == [  # type: ignore[union-attr]
        "retired on 2026-12-01"
    ]


def run_cli(*args: str, cwd: Path, now: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLICYCTL_NOW": now, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_warns_when_a_route_can_only_reach_retired_models(catalog_dir: Path) -> None:
    (catalog_dir / "p.policy").write_text(
        'catalog "models.yaml"\nroute old {\n    prefer gemini\n}\n', encoding="utf-8"
    )
    before = run_cli("check", "p.policy", cwd=catalog_dir, now="2026-11-30")
    assert (before.returncode, before.stdout, before.stderr) == (0, "", "")
    after = run_cli("check", "p.policy", cwd=catalog_dir, now="2026-12-01")
    assert after.returncode == 0
    assert after.stderr == (
        "p.policy:2:7: warning[W0502]: every model route `old` can reach is retired (the last on"
        " 2026-12-01)\n"
        "  |\n"
        "2 | route old {\n"
        "  |       ^^^\n"
        "  = help: every request this route matches will be denied: prefer a current model\n"
    )


def test_eval_shows_the_deployment_it_chose(catalog_dir: Path) -> None:
    (catalog_dir / "p.policy").write_text(
        'catalog "models.yaml"\nroute r {\n    prefer vertex_ai\n}\n', encoding="utf-8"
    )
    (catalog_dir / "r.json").write_text('{"id": "r1", "prompt": "hi"}', encoding="utf-8")
    table = run_cli(
        "eval", "--policy", "p.policy", "--state", "memory://", "--format", "table", "r.json",
        cwd=catalog_dir, now="2026-11-30",
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "provider/model  vertex_ai/claude-sonnet-4-5@20250929" in lines
    assert "deployment of   anthropic/claude-sonnet-4-5" in lines
    as_json = run_cli(
        "eval", "--policy", "p.policy", "--state", "memory://", "--format", "json", "r.json",
        cwd=catalog_dir, now="2026-11-30",
    )  # fmt: skip
    decision = json.loads(as_json.stdout)
    assert (decision["provider"], decision["model"], decision["deployment_of"]) == (
        "vertex_ai",
        "claude-sonnet-4-5@20250929",
        "anthropic/claude-sonnet-4-5",
    )

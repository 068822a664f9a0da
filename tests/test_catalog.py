"""The model catalog: the shipped one, lookups, cost arithmetic, and errors that name
the file, the model and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog import CatalogError, load_catalog, parse_catalog
from engine.resources import default_policy_dir

PRICES = {  # USD per 1M tokens, input/output: the design's, and three more list prices
    ("claude", "claude-3-5-sonnet-20241022"): (3.00, 15.00),
    ("claude", "claude-3-opus-20240229"): (15.00, 75.00),
    ("claude", "claude-3-sonnet-20240229"): (3.00, 15.00),
    ("claude", "claude-3-haiku-20240307"): (0.25, 1.25),
    ("gemini", "gemini-1.5-pro-latest"): (1.25, 5.00),
    ("gemini", "gemini-1.5-flash-latest"): (0.075, 0.30),
    ("gemini", "gemini-1.0-pro"): (0.50, 1.50),
    ("openai", "gpt-4-turbo-preview"): (10.00, 30.00),
    ("openai", "gpt-4"): (30.00, 60.00),
    ("openai", "gpt-3.5-turbo"): (0.50, 1.50),
    ("openai", "gpt-4o"): (2.50, 10.00),
}

GOOD = """
models:
  - id: m1
    provider: acme
    aliases: [m-one]
    context_window: 1000
    max_tokens: 100
    supports: [streaming]
    pricing: {input: 1.0, output: 2.0}
    latency_prior_ms: {p50: 100, p95: 200}
"""


def test_shipped_catalog_has_the_designs_models_and_prices() -> None:
    catalog = load_catalog(default_policy_dir() / "models.yaml")
    assert len(catalog.models) == 11
    assert catalog.providers == ("claude", "gemini", "openai")
    got = {(m.provider, m.id): (m.input_price, m.output_price) for m in catalog.models}
    assert got == PRICES
    for model in catalog.models:
        assert model.latency_p50_ms <= model.latency_p95_ms
        assert model.max_tokens <= model.context_window
    assert [m.index for m in catalog.models] == list(range(11))


def test_find_by_id_and_alias_within_a_provider() -> None:
    catalog = load_catalog(default_policy_dir() / "models.yaml")
    haiku = catalog.find("claude", "claude-3-haiku")
    assert haiku is not None and haiku.id == "claude-3-haiku-20240307"
    assert catalog.find("claude", "claude-3-haiku-20240307") is haiku
    assert catalog.find("openai", "claude-3-haiku") is None
    assert haiku.key == "claude/claude-3-haiku-20240307"
    assert "claude-3-haiku" in catalog.names("claude")
    assert [m.id for m in catalog.by_provider("gemini")] == [
        "gemini-1.5-pro-latest",
        "gemini-1.5-flash-latest",
        "gemini-1.0-pro",
    ]


def test_cost_is_tokens_times_price_per_million() -> None:
    catalog = parse_catalog(GOOD, "good.yaml")
    (model,) = catalog.models
    assert model.cost(1_000, 500) == pytest.approx((1_000 * 1.0 + 500 * 2.0) / 1e6)
    sonnet = load_catalog(default_policy_dir() / "models.yaml").find(
        "claude", "claude-3-5-sonnet-20241022"
    )
    assert sonnet is not None
    assert sonnet.cost(50, 50) == pytest.approx(0.0009)  # the design's $0.0009 per request


def test_digest_changes_with_the_text() -> None:
    a = parse_catalog(GOOD, "a.yaml")
    b = parse_catalog(GOOD.replace("input: 1.0", "input: 1.5"), "a.yaml")
    assert a.digest != b.digest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "c.yaml: not a catalog: expected a mapping with a `models:` list"),
        ("- a\n- b\n", "c.yaml: not a catalog: expected a mapping with a `models:` list"),
        ("models: []\n", "c.yaml: the catalog has no models"),
        ("models: [\n", "c.yaml:2:1: invalid YAML: did not find expected node content"),
        (
            GOOD.replace("supports: [streaming]", "supports: [streaming, telepathy]"),
            "c.yaml: model `m1` (models[0]): field `supports[1]`: unknown capability;"
            " use `streaming`, `tools`, `vision`, `json`",
        ),
        (
            GOOD.replace("input: 1.0", "input: -1"),
            "c.yaml: model `m1` (models[0]): field `pricing.input`: input should be greater"
            " than or equal to 0",
        ),
        (
            GOOD.replace("p50: 100", "p50: 300"),
            "c.yaml: model `m1` (models[0]): field `latency_prior_ms`: p50 (300) is greater"
            " than p95 (200)",
        ),
        (
            GOOD.replace("max_tokens: 100", "max_tokens: 100\n    colour: red"),
            "c.yaml: model `m1` (models[0]): field `colour`: unknown field",
        ),
        (
            GOOD + GOOD.split("models:\n", 1)[1],
            "c.yaml: model `m1` (models[1]): `acme/m1` is already defined by models[0]\n"
            "c.yaml: model `m1` (models[1]): `acme/m-one` is already defined by models[0]",
        ),
    ],
)
def test_catalog_errors_name_file_model_and_field(text: str, expected: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "c.yaml")
    assert str(err.value) == expected


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.yaml: cannot read catalog: No such file"):
        load_catalog(tmp_path / "nope.yaml", "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (9 << 20))
    with pytest.raises(CatalogError, match="catalog is too large"):
        load_catalog(big, "big.yaml")

"""The model catalog: the shipped one, lookups, cost arithmetic, and errors that name
the file, the model and the field."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _design import DESIGN_CATALOG
from _golden import update_requested

from engine.catalog.load import load_catalog, parse_catalog
from engine.catalog.model import CatalogError

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


def test_the_design_catalog_has_the_designs_models_and_prices() -> None:
    catalog = load_catalog(DESIGN_CATALOG)
    assert len(catalog.models) == 11
    assert catalog.providers == ("claude", "gemini", "openai")
    got = {(m.provider, m.id): (m.input_price, m.output_price) for m in catalog.models}
    assert got == PRICES
    for model in catalog.models:
        assert model.latency_p50_ms <= model.latency_p95_ms
        assert model.max_tokens <= model.context_window
    assert [m.index for m in catalog.models] == list(range(11))


def test_find_by_id_and_alias_within_a_provider() -> None:
    catalog = load_catalog(DESIGN_CATALOG)
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
    sonnet = load_catalog(DESIGN_CATALOG).find("claude", "claude-3-5-sonnet-20241022")
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
            " use `streaming`, `tools`, `vision`, `json`, `json_schema`, `pdf`, `audio`,"
            " `reasoning`, `prompt_caching`",
        ),
        (
            GOOD.replace("input: 1.0", "input: -1"),
            "c.yaml: model `m1` (models[0]): field `pricing.input`: input should be greater"
            " than or equal to 0",
        ),
        (
            GOOD.replace("input: 1.0", "input: 1.0e+308"),  # a cost would overflow
            "c.yaml: model `m1` (models[0]): field `pricing.input`: input should be less"
            " than or equal to 1000000",
        ),
        (
            GOOD.replace("input: 1.0", "input: 1.0e-300"),  # 1 / the dearest cost would
            "c.yaml: model `m1` (models[0]): field `pricing.input`: a price"
            " above 0 is at least 1e-09 USD per 1M tokens (or 0)",
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


# ---------------------------------------------------------------- the shipped catalog, in detail

VISION = {
    "claude-3-5-sonnet-20241022",
    "claude-3-opus-20240229",
    "claude-3-sonnet-20240229",
    "claude-3-haiku-20240307",
    "gemini-1.5-pro-latest",
    "gemini-1.5-flash-latest",
    "gpt-4-turbo-preview",
    "gpt-4o",
}


def test_design_catalog_capabilities_windows_latencies_and_regions() -> None:
    catalog = load_catalog(DESIGN_CATALOG)
    by_id = {m.id: m for m in catalog.models}
    assert {m.id for m in catalog.models if "vision" in m.supports} == VISION
    assert all("streaming" in m.supports and "tools" in m.supports for m in catalog.models)
    assert {m.id for m in catalog.models if "json" not in m.supports} == {"gemini-1.0-pro"}
    windows = {m.id: (m.context_window, m.max_tokens) for m in catalog.models}
    assert windows == {
        "claude-3-5-sonnet-20241022": (200_000, 8192),
        "claude-3-opus-20240229": (200_000, 4096),
        "claude-3-sonnet-20240229": (200_000, 4096),
        "claude-3-haiku-20240307": (200_000, 4096),
        "gemini-1.5-pro-latest": (2_097_152, 8192),
        "gemini-1.5-flash-latest": (1_048_576, 8192),
        "gemini-1.0-pro": (32_760, 8192),
        "gpt-4-turbo-preview": (128_000, 4096),
        "gpt-4": (8192, 8192),
        "gpt-3.5-turbo": (16_385, 4096),
        "gpt-4o": (128_000, 16_384),
    }
    # the fast models are fast: ordered by prior p50 (ties by p95)
    fastest = sorted(catalog.models, key=lambda m: (m.latency_p50_ms, m.latency_p95_ms))
    assert [m.id for m in fastest[:3]] == [
        "gemini-1.5-flash-latest",
        "claude-3-haiku-20240307",
        "gpt-3.5-turbo",
    ]
    assert (by_id["gpt-4"].latency_p50_ms, by_id["gpt-4"].latency_p95_ms) == (2600, 5500)
    for model in catalog.models:
        expected = ("us",) if model.provider == "openai" and model.id != "gpt-4o" else ("us", "eu")
        assert model.regions == expected, model.id
        assert model.aliases, model.id


def test_every_alias_of_the_design_catalog_finds_its_model() -> None:
    catalog = load_catalog(DESIGN_CATALOG)
    for model in catalog.models:
        for name in (model.id, *model.aliases):
            assert catalog.find(model.provider, name) is model
    for provider, alias, model_id in [
        ("claude", "claude-3-5-sonnet", "claude-3-5-sonnet-20241022"),
        ("claude", "claude-3-opus", "claude-3-opus-20240229"),
        ("gemini", "gemini-1.5-flash", "gemini-1.5-flash-latest"),
        ("gemini", "gemini-1.5-pro", "gemini-1.5-pro-latest"),
        ("openai", "gpt-4-turbo", "gpt-4-turbo-preview"),
    ]:
        found = catalog.find(provider, alias)
        assert found is not None and found.id == model_id
    assert catalog.find("gemini", "GEMINI-1.5-PRO") is None  # names are exact
    assert catalog.find("mistral", "gpt-4") is None
    assert catalog.by_provider("mistral") == ()
    names = catalog.names()
    assert len(names) == len(set(names)) == 22  # 11 ids and 11 aliases
    assert catalog.names("openai")[:2] == ["gpt-4-turbo-preview", "gpt-4-turbo"]
    assert catalog.names("mistral") == []


def test_cost_of_design_models_by_hand() -> None:
    catalog = load_catalog(DESIGN_CATALOG)
    flash = catalog.find("gemini", "gemini-1.5-flash")
    opus = catalog.find("claude", "claude-3-opus")
    gpt4 = catalog.find("openai", "gpt-4")
    assert flash is not None and opus is not None and gpt4 is not None
    # 10,000 in, 2,000 out: 0.01 * 0.075 + 0.002 * 0.30 = 0.00075 + 0.0006
    assert flash.cost(10_000, 2_000) == pytest.approx(0.00135)
    # 1M in, 1M out: exactly the two list prices
    assert opus.cost(1_000_000, 1_000_000) == pytest.approx(90.0)
    # 8,192 in, 0 out: 0.008192 * 30
    assert gpt4.cost(8_192, 0) == pytest.approx(0.24576)
    assert gpt4.cost(0, 0) == 0.0


def test_catalog_is_frozen_and_its_lookups_follow_replace() -> None:
    catalog = parse_catalog(GOOD, "good.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.source = "other.yaml"  # type: ignore[misc]
    (m1,) = catalog.models
    m2 = dataclasses.replace(m1, id="m2", aliases=("m-two",), index=1)
    bigger = dataclasses.replace(catalog, models=(m1, m2))
    assert bigger.find("acme", "m-two") is m2
    assert catalog.find("acme", "m-two") is None  # the original's lookups are untouched
    assert bigger.names("acme") == ["m1", "m-one", "m2", "m-two"]
    assert bigger == dataclasses.replace(catalog, models=(m1, m2))  # lookups do not compare


def test_digest_is_the_sha256_of_the_files_bytes(tmp_path: Path) -> None:
    path = tmp_path / "crlf.yaml"
    path.write_bytes(GOOD.replace("\n", "\r\n").encode())
    catalog = load_catalog(path)
    assert catalog.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert catalog.source == str(path)
    assert parse_catalog(GOOD, "x").digest == hashlib.sha256(GOOD.encode()).hexdigest()


def test_yaml_merge_keys_share_fields_between_models() -> None:
    text = GOOD + (
        "  - <<: *m\n    id: m2\n    aliases: [m-two]\n    pricing: {input: 5, output: 6}\n"
    )
    catalog = parse_catalog(text.replace("  - id: m1", "  - &m\n    id: m1"), "m.yaml")
    m2 = catalog.find("acme", "m-two")
    assert m2 is not None and m2.index == 1
    assert (m2.context_window, m2.input_price, m2.output_price) == (1000, 5.0, 6.0)


# ---------------------------------------------------------------- error texts of catalog files

MODEL = """\
  - id: m1
    provider: acme
    context_window: 1000
    max_tokens: 100
    supports: [streaming]
    pricing: {input: 1.0, output: 2.0}
    latency_prior_ms: {p50: 100, p95: 200}
"""
ONE = "models:\n" + MODEL
NOT_A_CATALOG = "<dir>/c.yaml: not a catalog: expected a mapping with a `models:` list"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            ONE.replace("max_tokens: 100", "max_tokens: 100\n    colour: red"),
            "<dir>/c.yaml: model `m1` (models[0]): field `colour`: unknown field",
            id="unknown-field",
        ),
        pytest.param(
            ONE.replace("max_tokens: 100", "max_tokns: 100"),
            "<dir>/c.yaml: model `m1` (models[0]): field `max_tokens`: field required\n"
            "<dir>/c.yaml: model `m1` (models[0]): field `max_tokns`: unknown field;"
            " did you mean `max_tokens`?",
            id="misspelt-field",
        ),
        pytest.param(
            ONE.replace("output: 2.0", "output: -0.5"),
            "<dir>/c.yaml: model `m1` (models[0]): field `pricing.output`: input should be"
            " greater than or equal to 0",
            id="negative-price",
        ),
        pytest.param(
            ONE.replace("p95: 200", "p95: 50"),
            "<dir>/c.yaml: model `m1` (models[0]): field `latency_prior_ms`: p50 (100) is"
            " greater than p95 (50)",
            id="p50-over-p95",
        ),
        pytest.param(
            ONE.replace("[streaming]", "[streaming, vison]"),
            "<dir>/c.yaml: model `m1` (models[0]): field `supports[1]`: unknown capability;"
            " did you mean `vision`? use `streaming`, `tools`, `vision`, `json`, `json_schema`,"
            " `pdf`, `audio`, `reasoning`, `prompt_caching`",
            id="unknown-capability",
        ),
        pytest.param(
            ONE + MODEL.replace("provider: acme", "provider: other") + MODEL,
            "<dir>/c.yaml: model `m1` (models[2]): `acme/m1` is already defined by models[0]",
            id="duplicate-id",  # the same id under another provider is fine
        ),
        pytest.param(
            ONE.replace("context_window: 1000", "context_window: '1000'")
            .replace("max_tokens: 100", "max_tokens: 0")
            .replace("input: 1.0", "input: .nan"),
            "<dir>/c.yaml: model `m1` (models[0]): field `context_window`: input should be a"
            " valid integer\n"
            "<dir>/c.yaml: model `m1` (models[0]): field `max_tokens`: input should be greater"
            " than 0\n"
            "<dir>/c.yaml: model `m1` (models[0]): field `pricing.input`: input should be a"
            " finite number",
            id="strict-numbers",
        ),
        pytest.param(
            ONE.replace("id: m1", "id: m 1").replace("pricing: {input: 1.0, output: 2.0}", ""),
            "<dir>/c.yaml: model `m 1` (models[0]): field `id`: `m 1` is not a valid model id:"
            " an id starts with a letter, a digit or `@` and holds only letters, digits, `.`,"
            " `_`, `:`, `/`, `@`, `+` and `-`\n"
            "<dir>/c.yaml: model `m 1` (models[0]): field `pricing`: field required",
            id="bad-name-and-missing-field",
        ),
        pytest.param(
            ONE.replace("  - id: m1\n    provider", "  - provider").replace(
                "pricing: {input: 1.0, output: 2.0}", "pricing: 3"
            ),
            "<dir>/c.yaml: models[0]: field `id`: field required\n"
            "<dir>/c.yaml: models[0]: field `pricing`: expected a mapping with `input` and"
            " `output`",
            id="no-id",
        ),
        pytest.param(
            ONE.replace("max_tokens: 100", "max_tokens: 100\n    max_tokens: 200"),
            "<dir>/c.yaml:6:5: duplicate key `max_tokens` (YAML would keep only the last one)",
            id="duplicate-key",
        ),
        pytest.param(
            ONE.replace("[streaming]", "[streaming"),
            "<dir>/c.yaml:7:12: invalid YAML: did not find expected ',' or ']'",
            id="yaml-syntax-error",
        ),
        pytest.param(
            ONE.replace("id: m1", "id: m\x001"),
            "<dir>/c.yaml:2:10: invalid YAML: control characters are not allowed (#x0000)",
            id="yaml-control-character",
        ),
        pytest.param(
            "models: " + "[" * 70 + "]" * 70 + "\n",
            "<dir>/c.yaml:1:72: nested too deeply (a catalog may nest at most 64 levels)",
            id="deep-nesting",
        ),
        pytest.param("- id: m1\n- id: m2\n", NOT_A_CATALOG, id="list-not-mapping"),
        pytest.param("just text\n", NOT_A_CATALOG, id="string"),
        pytest.param("", NOT_A_CATALOG, id="empty-file"),
        pytest.param("# only a comment\n", NOT_A_CATALOG, id="only-comments"),
        pytest.param("models:\n", NOT_A_CATALOG, id="models-null"),
        pytest.param(
            ONE.replace("models:", "model:"), NOT_A_CATALOG + "; found `model:`", id="model-key"
        ),
        pytest.param(
            "modles: 1\n" + ONE,
            "<dir>/c.yaml: unknown top-level field `modles`; did you mean `models`?",
            id="unknown-top-level",
        ),
        pytest.param("models: []\n", "<dir>/c.yaml: the catalog has no models", id="no-models"),
    ],
)
def test_error_text_of_a_catalog_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    got = [line.replace(str(tmp_path), "<dir>") for line in err.value.messages]
    assert "\n".join(got) == expected
    assert str(err.value) == "\n".join(err.value.messages)


def test_error_text_of_unreadable_files(tmp_path: Path) -> None:
    def error(path: Path) -> str:
        with pytest.raises(CatalogError) as err:
            load_catalog(path)
        return str(err.value).replace(str(tmp_path), "<dir>")

    assert error(tmp_path / "missing.yaml") == (
        "<dir>/missing.yaml: cannot read catalog: No such file or directory"
    )
    assert error(tmp_path) == "<dir>: cannot read catalog: Is a directory"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"models: [caf\xe9]\n")
    assert error(latin1) == "<dir>/latin1.yaml: cannot read catalog: not UTF-8 text (byte 12)"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (9 << 20))
    assert error(big) == (
        "<dir>/big.yaml: catalog is too large (9,437,184 bytes; the limit is 8 MiB)"
    )
    with pytest.raises(CatalogError) as err:
        parse_catalog("#" * ((8 << 20) + 1), "text.yaml")
    assert str(err.value) == (
        "text.yaml: catalog is too large (8,388,609 bytes; the limit is 8 MiB)"
    )


def test_deep_nesting_is_refused_without_crashing() -> None:
    # libyaml composes recursively: a document this deep would overflow the C stack.
    for text in ("[" * 200_000 + "]" * 200_000, "- " * 200_000 + "x", "{a: " * 200_000):
        with pytest.raises(CatalogError, match="nested too deeply"):
            parse_catalog(text, "deep.yaml")


GOLDEN = Path(__file__).parent / "golden" / "catalog"


@pytest.mark.parametrize("case", sorted(p.stem for p in GOLDEN.glob("*.yaml")))
def test_golden_catalog_errors(case: str) -> None:
    """Every problem of every model, in file order. Regenerate with UPDATE_GOLDEN=1."""
    with pytest.raises(CatalogError) as err:
        load_catalog(GOLDEN / f"{case}.yaml", f"{case}.yaml")
    got = str(err.value) + "\n"
    expected = GOLDEN / f"{case}.expected"
    if update_requested():
        expected.write_text(got, encoding="utf-8")
        return
    assert got == expected.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- catalog cache

CATALOG_PROBE = """\
import sys
from engine.language.loader import load_policy
loaded = load_policy(sys.argv[1])
catalog = loaded.program.catalog
print(catalog.digest, len(catalog.models), repr(catalog.models[0]))
print("validated:", "engine.catalog.load" in sys.modules, "yaml" in sys.modules)
"""


def _load_in_subprocess(tmp_path: Path, policy: Path, cache: Path) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", CATALOG_PROBE, str(policy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "POLICYCTL_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown, validated = done.stdout.rstrip("\n").rsplit("\n", 1)
    return shown, validated


def test_an_unchanged_catalog_is_read_back_without_validating_it(tmp_path: Path) -> None:
    """The second process to load the same catalog file reads the validated catalog from
    the cache directory: the same catalog, and neither the validation models nor YAML are
    imported; a changed file (or a damaged cache file) is validated again."""
    models = tmp_path / "models.yaml"
    models.write_text(GOOD, encoding="utf-8")
    policy = tmp_path / "p.policy"
    policy.write_text('catalog "models.yaml"\nroute r { prefer acme/m1 }\n', encoding="utf-8")
    cache = tmp_path / "cache"
    first, validated = _load_in_subprocess(tmp_path, policy, cache)
    assert validated == "validated: True True"
    assert len(list(cache.glob("catalog-*"))) == 1
    assert _load_in_subprocess(tmp_path, policy, cache) == (first, "validated: False False")
    models.write_text(models.read_text(encoding="utf-8").replace("1000", "9000"), "utf-8")
    changed, validated = _load_in_subprocess(tmp_path, policy, cache)
    assert changed != first and "9000" in changed and validated == "validated: True True"
    assert _load_in_subprocess(tmp_path, policy, cache) == (changed, "validated: False False")
    for damaged in cache.glob("catalog-*"):
        damaged.write_bytes(b"not a pickle\n")
    assert _load_in_subprocess(tmp_path, policy, cache) == (changed, "validated: True True")

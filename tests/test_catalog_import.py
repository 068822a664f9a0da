"""`policyctl catalog import litellm`, `catalog show`, `catalog diff`, and the converter
under them (`engine.catalog.litellm`).

The converter runs on tests/data/litellm_excerpt.json (352 entries of litellm 1.110.2's
table, chosen by tests/data/make_litellm_excerpt.py to cover every case) and on the whole
table of the installed litellm, which the `test` extra pins to the version the figures
below come from. Cost agreement: the imported catalog's `Model.cost` equals
`litellm.cost_per_token` for every imported model at several sizes (below and above each
price tier, with cache reads and cache writes), to 1e-9 relative. litellm is imported with
`LITELLM_LOCAL_MODEL_COST_MAP=True` and with every socket refused, and the tests assert that
it tried none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from engine.catalog.litellm import (
    DEFAULT_LATENCY_PRIOR,
    LATENCY_PRIORS,
    ImportResult,
    bundled_table,
    convert,
    read_latency_priors,
    read_table,
    render_json,
    render_yaml,
)
from engine.catalog.load import load_catalog, parse_catalog
from engine.catalog.model import CAPABILITIES, Catalog, CatalogError, Model
from engine.catalog.views import diff

ROOT = Path(__file__).resolve().parent.parent
EXCERPT = ROOT / "tests" / "data" / "litellm_excerpt.json"
PINNED = "1.110.2"  # pyproject.toml's `test` extra: litellm==1.110.2
NOW = "2026-11-28T17:46:05Z"
# litellm's lookup without the provider starts GitHub's device-code login: a network call
NEEDS_PROVIDER = {"github_copilot"}
# litellm prices a lemonade model by asking the local Lemonade server (localhost:8000) for
# it, with or without the provider: its answer depends on that server, not on the table
NOT_FROM_THE_TABLE = {"lemonade"}


@pytest.fixture(scope="module")
def excerpt() -> dict[str, Any]:
    return read_table(EXCERPT).data


@pytest.fixture(scope="module")
def imported(excerpt: dict[str, Any]) -> ImportResult:
    return convert(excerpt)


def _catalog(result: ImportResult) -> Catalog:
    return parse_catalog(render_json(result.document), "imported.json")


def _model(result: ImportResult, provider: str, model_id: str) -> dict[str, Any]:
    (found,) = [
        m for m in result.document["models"] if (m["provider"], m["id"]) == (provider, model_id)
    ]
    return found


# ---------------------------------------------------------------- the report


def test_excerpt_report(imported: ImportResult) -> None:
    report = imported.report
    assert (report.entries, report.selected, len(report.imported)) == (361, 361, 258)
    assert report.by_reason() == [
        ("mode", 33),
        ("wildcard", 4),
        ("per-second", 3),
        ("per-request", 2),
        ("per-character", 6),
        ("no-price", 2),
        ("free", 9),
        ("no-limits", 26),
        ("bad-value", 1),
        ("duplicate", 11),
    ]
    skipped = {s.key: (s.reason, s.detail) for s in report.skipped}
    assert skipped["bedrock/ap-northeast-1/1-month-commitment/anthropic.claude-v1"] == (
        "per-second",
        "cost_per_second, input_cost_per_second",
    )
    assert skipped["perplexity/pplx-70b-online"] == ("per-request", "input_cost_per_request")
    assert skipped["vertex_ai/gemini-2.0-flash"] == ("per-character", "input_cost_per_character")
    assert skipped["bedrock/*/1-month-commitment/cohere.command-text-v14"] == ("wildcard", "")
    assert skipped["azure/container"] == (
        "no-price",
        "no input_cost_per_token and no output_cost_per_token",
    )
    assert skipped["azure/eu/gpt-5"] == ("no-limits", "no max_input_tokens")
    assert skipped["aihubmix/grok-4-20-reasoning"] == (
        "no-limits",
        "no max_output_tokens or max_tokens",
    )
    assert skipped["vercel_ai_gateway/amazon/titan-embed-text-v2"] == (
        "bad-value",
        "`max_input_tokens` is 0",
    )
    # `@cf/…` ids are ids; a model priced $0 per token is left out
    assert skipped["cloudflare/@cf/google/gemma-7b-it-lora"] == ("free", "$0 per token")
    assert _model(imported, "cloudflare", "@cf/deepseek-ai/deepseek-r1-distill-qwen-32b")
    # the `<provider>/<id>` key wins over the bare id
    assert skipped["deepseek-chat"] == (
        "duplicate",
        "deepseek/deepseek-chat is kept (different prices or limits)",
    )
    assert skipped["deepseek-reasoner"] == (
        "duplicate",
        "deepseek/deepseek-reasoner is kept (same prices and limits)",
    )
    assert skipped["sample_spec"] == ("mode", "none")
    # LiteLLM's `alias_of` rows become aliases of the model they name
    assert [(a.provider, a.id, a.key) for a in report.aliases][:2] == [
        ("azure", "gpt-astra-latest", "azure/gpt-astra-latest"),
        ("azure", "gpt-luna-latest", "azure/gpt-luna-latest"),
    ]
    assert _model(imported, "azure", "gpt-5.4-mini")["aliases"] == ["gpt-mini-latest"]
    # every skipped entry is a skip, not a $0 model
    names = {(i.provider, i.id) for i in report.imported}
    assert ("bedrock", "ap-northeast-1/1-month-commitment/anthropic.claude-v1") not in names
    assert report.unmapped[:6] == (
        ("supports_tool_choice", 204),
        ("source", 194),
        ("supports_system_messages", 102),
        ("supports_parallel_function_calling", 91),
        ("input_cost_per_token_batches", 86),
        ("search_context_cost_per_query", 86),
    )
    unmapped = dict(report.unmapped)
    assert len(unmapped) == 112
    for variant in (
        "input_cost_per_token_priority",
        "input_cost_per_token_flex",
        "off_peak_pricing",
        "cache_creation_input_token_cost_above_1hr",
        "output_cost_per_reasoning_token",
        "input_cost_per_audio_token",
    ):
        assert unmapped[variant] > 0, variant
    mapped = {"input_cost_per_token", "max_input_tokens", "supports_vision", "tiered_pricing"}
    assert not mapped & set(unmapped)
    assert "input_cost_per_token_above_200k_tokens" not in unmapped


def test_report_lines(imported: ImportResult) -> None:
    lines = imported.report.lines()
    assert lines[:3] == [
        "imported 258 models (and 6 aliases of them) from 361 entries",
        "skipped 97:",
        "  33  mode: not a chat or responses model (audio_speech 2, audio_transcription 2,"
        " completion 2, decisions 2, embedding 2, evaluation 2, extraction 2, image_edit 2,"
        " image_generation 2, moderation 2, ocr 2, realtime 2, rerank 2, search 2,"
        " video_generation 2, guardrail 1, none 1, vector_store 1)",
    ]
    assert "   3  per-second: priced per second (not per token)" in lines
    assert "unmapped fields (112; imported entries carrying each):" in lines
    assert lines[lines.index("unmapped fields (112; imported entries carrying each):") + 1] == (
        "  supports_tool_choice 204, source 194, supports_system_messages 102,"
    )


# ---------------------------------------------------------------- the mapping


def test_prices_limits_capabilities_and_dates(imported: ImportResult) -> None:
    pro = _model(imported, "gemini", "gemini-2.5-pro")
    assert pro == {
        "id": "gemini-2.5-pro",
        "provider": "gemini",
        "context_window": 1048576,
        "max_tokens": 65536,
        "supports": list(CAPABILITIES),
        "pricing": {
            "input": 1.25,
            "output": 10.0,
            "cached_input": 0.125,
            "tiers": [{"above": 200000, "input": 2.5, "output": 15.0, "cached_input": 0.25}],
        },
        "latency_prior_ms": {"p50": 900.0, "p95": 2800.0},
        "retires": "2026-12-01",
    }
    haiku = _model(imported, "anthropic", "claude-haiku-5-5")["pricing"]
    assert haiku == {
        "input": 0.1,
        "output": 0.5,
        "cached_input": 0.01,
        "cache_write": 0.125,
        "tiers": [
            {"above": 100000, "input": 0.5, "output": 2.5, "cached_input": 0.05,
             "cache_write": 0.625},
        ],
    }  # fmt: skip


def test_xai_thresholds_are_inclusive(imported: ImportResult, excerpt: dict[str, Any]) -> None:
    """LiteLLM charges xAI's higher tier from 200,000 input tokens on (>=): `above: 199999`
    is the same rule for whole token counts."""
    assert excerpt["xai/grok-4.20"]["input_cost_per_token_above_200k_tokens"] == 2.5e-06
    tiers = _model(imported, "xai", "grok-4.20")["pricing"]["tiers"]
    assert tiers == [{"above": 199999, "input": 2.5, "output": 5.0, "cached_input": 0.4}]
    grok = _catalog(imported).find("xai", "grok-4.20")
    assert grok is not None
    assert grok.cost(199_999, 0) == pytest.approx(199_999 * 1.25 / 1e6)
    assert grok.cost(200_000, 0) == pytest.approx(200_000 * 2.5 / 1e6)


def test_tiered_pricing_ranges(imported: ImportResult) -> None:
    """Dashscope's `tiered_pricing` ranges: the first is the base price, each further range
    a tier from its start; a range without cache prices charges its input price for them."""
    coder = _model(imported, "dashscope", "qwen3-coder-flash")["pricing"]
    assert coder["input"] == 0.3 and coder["cached_input"] == 0.08
    assert [t["above"] for t in coder["tiers"]] == [32000, 128000, 256000]
    flash = _model(imported, "dashscope", "qwen-flash")["pricing"]
    assert flash == {
        "input": 0.05,
        "output": 0.4,
        "cached_input": 0.05,
        "cache_write": 0.05,
        "tiers": [
            {"above": 256000, "input": 0.25, "output": 2.0, "cached_input": 0.25,
             "cache_write": 0.25},
        ],
    }  # fmt: skip


def test_provider_defaults_images_regions_and_streaming(imported: ImportResult) -> None:
    fw = _model(imported, "fireworks_ai", "accounts/fireworks/models/chronos-hermes-13b-v2")
    assert fw["pricing"] == {"input": 0.2, "output": 0.2, "cached_input": 0.1}  # half of input
    assert fw["latency_prior_ms"] == {"p50": 700.0, "p95": 2200.0}
    deep = _model(imported, "gemini", "deep-research-pro-preview-12-2025")
    assert deep["pricing"]["image"] == 0.0011  # USD per image, not per token
    maas = _model(
        imported, "vertex_ai-deepseek_models", "vertex_ai/deepseek-ai/deepseek-r1-0528-maas"
    )
    assert maas["regions"] == ["us-central1"]
    # supports_native_streaming: false
    assert "streaming" not in _model(imported, "openai", "gpt-5-pro")["supports"]
    assert "streaming" in _model(imported, "openai", "gpt-4")["supports"]
    # supports_response_schema grants json and json_schema; its absence neither
    jamba = _model(imported, "ai21", "jamba-1.5-large@001")
    assert jamba["supports"] == ["streaming"]
    # an unknown provider takes the default prior
    assert jamba["latency_prior_ms"] == dict(
        zip(("p50", "p95"), DEFAULT_LATENCY_PRIOR, strict=True)
    )


def test_odd_ids_are_kept_as_providers_spell_them(imported: ImportResult) -> None:
    ids = {(i.provider, i.id): i.key for i in imported.report.imported}
    assert ids[("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0")] == (
        "bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0"
    )
    assert ids[("ai21", "jamba-1.5-large@001")] == "jamba-1.5-large@001"
    assert ids[("aiand", "deepseek-ai/deepseek-v4-flash")] == "aiand/deepseek-ai/deepseek-v4-flash"
    assert ids[("openai", "ft:gpt-4o-2024-08-06")] == "ft:gpt-4o-2024-08-06"


def test_the_document_loads_and_yaml_equals_json(imported: ImportResult, tmp_path: Path) -> None:
    header = ["a header line"]
    (tmp_path / "c.yaml").write_text(render_yaml(imported.document, header))
    (tmp_path / "c.json").write_text(render_json(imported.document, header))
    from_yaml = load_catalog(tmp_path / "c.yaml")
    from_json = load_catalog(tmp_path / "c.json")
    assert len(from_yaml.models) == 258
    assert from_yaml.models == from_json.models
    assert (tmp_path / "c.yaml").read_text().startswith("# a header line\nversion: 2\nmodels:\n")
    assert json.loads((tmp_path / "c.json").read_text()) == {
        **imported.document,
        "generated": "a header line",
    }
    keys = [(m.provider, m.id) for m in from_json.models]
    assert keys == sorted(keys)


def test_output_is_deterministic(excerpt: dict[str, Any]) -> None:
    backwards = dict(reversed(list(excerpt.items())))
    a, b = convert(excerpt), convert(backwards)
    assert render_json(a.document) == render_json(b.document)
    assert a.report == b.report


def test_providers_filter(excerpt: dict[str, Any]) -> None:
    result = convert(excerpt, providers=["anthropic", "xai"])
    assert {m["provider"] for m in result.document["models"]} == {"anthropic", "xai"}
    assert result.report.selected < result.report.entries == 361
    assert result.report.lines()[0].endswith("of other providers left out)")
    with pytest.raises(CatalogError) as err:
        convert(excerpt, providers=["anthropc", "nosuch"])
    assert err.value.messages == [
        "--providers: no entry has litellm_provider `anthropc`; did you mean `anthropic`?",
        "--providers: no entry has litellm_provider `nosuch`",
    ]


def _entry(**fields: Any) -> dict[str, Any]:
    base = {
        "litellm_provider": "acme",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "max_input_tokens": 1000,
        "max_output_tokens": 100,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [
        ({"input_cost_per_token": "1e-6"}, "bad-value", "`input_cost_per_token` is '1e-6'"),
        ({"output_cost_per_token": True}, "bad-value", "`output_cost_per_token` is True"),
        ({"input_cost_per_token": -1e-6}, "bad-value", "`input_cost_per_token` is -1e-06"),
        ({"max_input_tokens": 10.5}, "bad-value", "`max_input_tokens` is 10.5"),
        ({"supports_vision": "yes"}, "bad-value", "`supports_vision` is 'yes'"),
        ({"output_cost_per_token": None}, "no-price", "no output_cost_per_token"),
        ({"max_output_tokens": None}, "no-limits", "no max_output_tokens or max_tokens"),
        ({"litellm_provider": "a b"}, "bad-provider", "'a b'"),
        ({"mode": "embedding"}, "mode", "embedding"),
        ({"output_cost_per_second": 0.01}, "per-second", "output_cost_per_second"),
        (
            {"tiered_pricing": [{"range": [0, 10], "input_cost_per_token": 1e-6},
                                {"range": [20, 30], "input_cost_per_token": 2e-6}]},
            "tiers",
            "`tiered_pricing` ranges leave a gap or overlap at 10 tokens",
        ),
        (
            {"tiered_pricing": [{"range": [5, 10], "input_cost_per_token": 1e-6}]},
            "tiers",
            "`tiered_pricing` does not start at 0 tokens",
        ),
    ],
)  # fmt: skip
def test_entries_that_cannot_be_imported(fields: dict[str, Any], reason: str, detail: str) -> None:
    result = convert({"acme/m": _entry(**fields)})
    assert result.document["models"] == []
    assert [(s.key, s.reason, s.detail) for s in result.report.skipped] == [
        ("acme/m", reason, detail)
    ]


def test_aliases_of_entries_not_imported() -> None:
    result = convert(
        {
            "acme/m": _entry(),
            "acme/m-latest": {"alias_of": "acme/m"},
            "acme/x-latest": {"alias_of": "acme/x"},
            "acme/e-latest": {"alias_of": "acme/e"},
            "acme/e": _entry(mode="embedding"),
            "acme/m2": _entry(aliases=["acme/m", "acme/m-newest"]),
        }
    )
    (m, m2) = result.document["models"]
    assert (m["id"], m["aliases"], m2["id"], m2["aliases"]) == (
        "m",
        ["m-latest"],
        "m2",
        ["m-newest"],
    )
    assert [(s.key, s.reason, s.detail) for s in result.report.skipped] == [
        ("acme/e", "mode", "embedding"),
        ("acme/e-latest", "alias", "alias of acme/e, which is skipped (mode)"),
        ("acme/m", "duplicate", "alias of acme/m2: `acme/m` already names a model"),
        ("acme/x-latest", "alias", "alias of acme/x, which is not a model entry"),
    ]
    assert result.report.lines()[0] == "imported 2 models (and 2 aliases of them) from 6 entries"
    parse_catalog(render_json(result.document), "aliases.json")  # the loader takes them


def test_a_tier_keeps_the_prices_it_does_not_name() -> None:
    result = convert(
        {
            "acme/m": _entry(
                cache_read_input_token_cost=1e-07,
                input_cost_per_token_above_100k_tokens=3e-06,
                output_cost_per_token_above_200k_tokens=9e-06,
                max_input_tokens=1_000_000,
                max_tokens=50,
                max_output_tokens=None,
                deprecation_date="2026-02-30",
            )
        }
    )
    (model,) = result.document["models"]
    assert model["max_tokens"] == 50  # LiteLLM's older `max_tokens`
    assert model["pricing"]["tiers"] == [
        {"above": 100000, "input": 3.0, "output": 2.0, "cached_input": 0.1},
        {"above": 200000, "input": 3.0, "output": 9.0, "cached_input": 0.1},
    ]
    assert "retires" not in model
    assert dict(result.report.unmapped) == {"deprecation_date (not a YYYY-MM-DD date)": 1}


# ---------------------------------------------------------------- latency priors


def test_latency_priors_file(excerpt: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "priors.yaml"
    path.write_text("default: {p50: 500, p95: 900}\nproviders:\n  xai: {p50: 100, p95: 200}\n")
    priors, default = read_latency_priors(path)
    assert (priors, default) == ({"xai": (100.0, 200.0)}, (500.0, 900.0))
    result = convert(excerpt, latency_priors=priors, default_prior=default)
    assert _model(result, "xai", "grok-4.20")["latency_prior_ms"] == {"p50": 100.0, "p95": 200.0}
    assert _model(result, "ai21", "jamba-1.5-large@001")["latency_prior_ms"] == {
        "p50": 500.0,
        "p95": 900.0,
    }
    # a provider the file does not name keeps the module's table
    anthropic = LATENCY_PRIORS["anthropic"]
    assert _model(result, "anthropic", "claude-haiku-5-5")["latency_prior_ms"] == {
        "p50": anthropic[0],
        "p95": anthropic[1],
    }


def test_latency_priors_errors(tmp_path: Path) -> None:
    path = tmp_path / "priors.json"
    path.write_text('{"providers": {"xai": {"p50": 300, "p95": 200}, "b c": {"p50": 1}}, "x": 1}')
    with pytest.raises(CatalogError) as err:
        read_latency_priors(path)
    assert err.value.messages == [
        f"{path}: field `providers.xai`: p50 (300) is greater than p95 (200)",
        f"{path}: field `providers`: `b c` is not a valid provider name: a name starts with"
        " a letter or digit and holds only letters, digits, `.`, `_`, `:` and `-`",
        f"{path}: field `providers.b c.p95`: field required",
        f"{path}: field `x`: extra inputs are not permitted",
    ]


# ---------------------------------------------------------------- the command line


def _policyctl(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    base["XDG_STATE_HOME"] = str(workdir / "xdg-state")
    base["POLICYCTL_NOW"] = NOW
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=workdir,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_cli_import_writes_yaml_with_a_header_and_reports(tmp_path: Path) -> None:
    done = _policyctl(
        tmp_path, "catalog", "import", "litellm", str(EXCERPT), "--providers",
        "anthropic,gemini,xai", "--output", "models.yaml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = (tmp_path / "models.yaml").read_text()
    assert text.startswith(
        "# policyctl model catalog, generated by `policyctl catalog import litellm`\n"
        "# from litellm_excerpt.json on 2026-11-28: 40 models.\n"
        "# providers: anthropic, gemini, xai\n"
        "# Regenerate it rather than edit it; see docs/catalog.md.\n"
        "version: 2\nmodels:\n- id: "
    )
    err = done.stderr.splitlines()
    assert err[0] == (
        f"{EXCERPT}: imported 40 models from 361 entries (314 of other providers left out)"
    )
    assert err[1:5] == [
        "skipped 7:",
        "  2  per-character: priced per character",
        "  1  free: priced $0 per input and output token (a free preview, or not billed by the"
        " token): cost routing would always pick it; add it by hand to route to it",
        "  4  duplicate: names the same provider and id as another entry",
    ]
    catalog = load_catalog(tmp_path / "models.yaml")
    assert len(catalog.models) == 40
    assert set(catalog.providers) == {"anthropic", "gemini", "xai"}


def test_cli_import_json_and_stdout(tmp_path: Path) -> None:
    done = _policyctl(tmp_path, "catalog", "import", "litellm", str(EXCERPT), "--output", "c.json")
    assert done.returncode == 0, done.stderr
    assert len(load_catalog(tmp_path / "c.json").models) == 258
    to_stdout = _policyctl(tmp_path, "catalog", "import", "litellm", str(EXCERPT))
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.startswith("# policyctl model catalog")
    doc = yaml.safe_load(to_stdout.stdout)
    assert doc["version"] == 2 and len(doc["models"]) == 258


def test_cli_import_of_no_importable_entry_writes_nothing_and_names_the_broken_ones(
    tmp_path: Path,
) -> None:
    """A table none of whose entries can be imported is an error: no catalog of no model is
    written (`catalog show` itself could not read it), and each broken entry is named with
    what is wrong with it (the first three of a reason, then how many more)."""
    chat = {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 1000}
    table = {
        "gpt-9": {**chat, "input_cost_per_token": "free", "output_cost_per_token": 1e-6},
        **{
            f"gpt-9-{n}": {**chat, "input_cost_per_token": -1e-6, "output_cost_per_token": 1e-6}
            for n in range(4)
        },
        "text-embedding-9": {"litellm_provider": "openai", "mode": "embedding"},
    }
    (tmp_path / "prices.json").write_text(json.dumps(table))
    done = _policyctl(
        tmp_path, "catalog", "import", "litellm", "prices.json", "--output", "models.yaml"
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "prices.json: imported 0 models from 6 entries",
        "skipped 6:",
        "  1  mode: not a chat or responses model (embedding 1)",
        "  5  bad-value: a price, limit or flag that is not a valid number or boolean",
        "      gpt-9: `input_cost_per_token` is 'free'",
        "      gpt-9-0: `input_cost_per_token` is -1e-06",
        "      gpt-9-1: `input_cost_per_token` is -1e-06",
        "      … and 2 more",
        "policyctl: error: `prices.json`: no entry could be imported, so nothing was written"
        " (see the reasons above)",
    ]
    assert not (tmp_path / "models.yaml").exists()


def test_cli_import_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    done = _policyctl(tmp_path, "catalog", "import", "litellm", "bad.json")
    assert (done.returncode, done.stderr) == (
        2,
        "bad.json: not a LiteLLM price table: expected an object of model entries\n",
    )
    done = _policyctl(tmp_path, "catalog", "import", "litellm", "missing.json")
    assert (done.returncode, done.stderr) == (
        2,
        "missing.json: cannot read the LiteLLM table: No such file or directory\n",
    )
    done = _policyctl(tmp_path, "catalog", "import", "litellm", str(EXCERPT), "--providers", "xia")
    assert (done.returncode, done.stderr) == (
        2,
        "--providers: no entry has litellm_provider `xia`; did you mean `xai`?\n",
    )
    done = _policyctl(tmp_path, "catalog", "import", "openrouter")
    assert done.returncode == 2 and "invalid choice: 'openrouter'" in done.stderr


def test_cli_import_without_litellm_names_the_way_out(tmp_path: Path) -> None:
    """With litellm not importable and no FILE, the error says what to do."""
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; sys.modules['litellm'] = None\n"
            "from engine.cli import main\n"
            "sys.exit(main(['catalog', 'import', 'litellm']))",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "policyctl: error: litellm is not installed: give its price table as FILE (a"
        " model_prices_and_context_window.json) or `pip install litellm`\n"
    )


def test_cli_show_filters(tmp_path: Path) -> None:
    _policyctl(tmp_path, "catalog", "import", "litellm", str(EXCERPT), "--output", "c.json")
    done = _policyctl(tmp_path, "catalog", "show", "c.json", "--provider", "xai",
                      "--supports", "vision,reasoning", "--format", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    expected = [
        m for m in load_catalog(tmp_path / "c.json").models
        if m.provider == "xai" and {"vision", "reasoning"} <= m.supports
    ]  # fmt: skip
    assert [r["id"] for r in rows] == [m.id for m in expected] and rows
    assert rows[0]["tiers"][0]["above"] == 199999
    table = _policyctl(tmp_path, "catalog", "show", "c.json", "--provider", "gemini")
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "PROVIDER", "ID", "CONTEXT", "MAX_OUT", "INPUT", "OUTPUT", "CACHED", "CACHE_WRITE",
        "IMAGE", "TIERS", "SUPPORTS", "RETIRES",
    ]  # fmt: skip
    pro = next(line for line in lines if " gemini-2.5-pro " in line)
    assert pro.split()[2:10] == ["1048576", "65536", "$1.25", "$10", "$0.125", "-", "-", "1"]
    assert pro.endswith("2026-12-01")  # not yet retired on 2026-11-28
    deep = next(line for line in lines if " deep-research-pro-preview-12-2025 " in line)
    assert deep.endswith("2026-10-23 (retired)")
    assert lines[-1].endswith("models (c.json); prices in USD per 1M tokens")


def test_cli_show_default_catalog_and_errors(tmp_path: Path) -> None:
    done = _policyctl(tmp_path, "catalog", "show", "--format", "json")
    assert done.returncode == 0, done.stderr
    packaged = load_catalog(ROOT / "policies" / "models.json")
    assert [r["id"] for r in json.loads(done.stdout)] == [m.id for m in packaged.models]
    done = _policyctl(tmp_path, "catalog", "show", "--supports", "visoin")
    assert (done.returncode, done.stderr) == (
        2,
        "policyctl: error: --supports: unknown capability `visoin`; did you mean `vision`? use"
        " `streaming`, `tools`, `vision`, `json`, `json_schema`, `pdf`, `audio`, `reasoning`,"
        " `prompt_caching`\n",
    )
    done = _policyctl(tmp_path, "catalog", "show", str(ROOT / "policies" / "models.json"),
                      "--provider", "gemni")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.endswith("models.json; did you mean `gemini`?\n")


def test_cli_diff(tmp_path: Path, excerpt: dict[str, Any]) -> None:
    old = dict(excerpt)
    new = {k: dict(v) if isinstance(v, dict) else v for k, v in excerpt.items()}
    del new["xai/grok-4.20"]  # removed
    new["acme/new-model"] = _entry()  # added
    new["gemini/gemini-2.5-pro"]["input_cost_per_token"] = 1.5e-06  # repriced
    new["gemini/gemini-2.5-pro"]["deprecation_date"] = "2027-01-31"
    new["claude-haiku-5-5"]["max_output_tokens"] = 32768  # a limit, not a price
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    for name in ("old", "new"):
        done = _policyctl(tmp_path, "catalog", "import", "litellm", f"{name}.json",
                          "--output", f"{name}.yaml")  # fmt: skip
        assert done.returncode == 0, done.stderr
    done = _policyctl(tmp_path, "catalog", "diff", "old.yaml", "new.yaml")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "+ acme/new-model  $1 in, $2 out",
        "- xai/grok-4.20",
        "~ anthropic/claude-haiku-5-5  max_tokens 128,000 -> 32,768",
        "~ gemini/gemini-2.5-pro  input $1.25 -> $1.5; retires 2026-12-01 -> 2027-01-31",
        "1 added, 1 removed, 1 repriced, 1 otherwise changed (258 models before, 258 after)",
    ]
    as_json = json.loads(_policyctl(tmp_path, "catalog", "diff", "old.yaml", "new.yaml",
                                    "--format", "json").stdout)  # fmt: skip
    assert [m["id"] for m in as_json["added"]] == ["new-model"]
    assert as_json["changed"][1] == {
        "model": "gemini/gemini-2.5-pro",
        "changes": [
            {"field": "input", "old": 1.25, "new": 1.5},
            {"field": "retires", "old": "2026-12-01", "new": "2027-01-31"},
        ],
    }
    same = _policyctl(tmp_path, "catalog", "diff", "old.yaml", "old.yaml")
    assert (same.returncode, same.stdout) == (
        0,
        "0 added, 0 removed, 0 repriced, 0 otherwise changed (258 models before, 258 after)\n",
    )
    (tmp_path / "broken.yaml").write_text("models: []\n")
    broken = _policyctl(tmp_path, "catalog", "diff", "broken.yaml", "nope.yaml")
    assert (broken.returncode, broken.stderr) == (
        2,
        "broken.yaml: the catalog has no models\n"
        "nope.yaml: cannot read catalog: No such file or directory\n",
    )


def test_diff_is_by_provider_and_id(imported: ImportResult) -> None:
    catalog = _catalog(imported)
    assert diff(catalog, catalog).same


# ---------------------------------------------------------------- against litellm itself


class _NoNetwork:
    """Every DNS lookup and outbound connection fails, and is recorded."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refuse(self, what: str) -> None:
        self.attempts.append(what)
        raise OSError(f"network refused in tests: {what}")


@pytest.fixture(scope="module")
def no_network() -> Iterator[_NoNetwork]:
    guard = _NoNetwork()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", lambda *a, **k: guard.refuse(f"getaddrinfo {a[:2]}"))
        mp.setattr(socket, "create_connection", lambda *a, **k: guard.refuse(f"connect {a[:1]}"))
        mp.setattr(socket.socket, "connect", lambda self, a: guard.refuse(f"connect {a}"))
        yield guard


@pytest.fixture(scope="module")
def litellm(no_network: _NoNetwork) -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import litellm as module
        yield module
    assert no_network.attempts == []


def _litellm_cost(
    litellm: ModuleType, key: str, provider: str, i: int, o: int, c: int, w: int
) -> float:
    kwargs = {
        "model": key,
        "prompt_tokens": i,
        "completion_tokens": o,
        "cache_read_input_tokens": c,
        "cache_creation_input_tokens": w,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if provider not in NEEDS_PROVIDER:
            try:
                return float(sum(litellm.cost_per_token(**kwargs)))
            except Exception:  # a key litellm does not resolve without its provider
                pass
        return float(sum(litellm.cost_per_token(**kwargs, custom_llm_provider=provider)))


def _cases(model: Model) -> list[tuple[int, int, int, int]]:
    """(input, output, cached read, cache write): a small and a cached request, and around
    every tier: at the threshold, just over it, over it with reads, over it with writes."""
    cases = [(1000, 200, 0, 0), (5000, 700, 3000, 0), (5000, 700, 1000, 2000)]
    for t in model.tiers:
        cases += [(t.above, 300, 10, 0), (t.above + 1, 300, 0, 0),
                  (t.above + 2, 300, (t.above + 2) // 3, 0),
                  (t.above + 2, 300, 0, (t.above + 2) // 3)]  # fmt: skip
    return cases


def _agreement(
    litellm: ModuleType, table: dict[str, Any], result: ImportResult
) -> tuple[int, int, set[str], list[str]]:
    """(cases, cases above a tier, providers, disagreements)"""
    catalog = _catalog(result)
    count, tiered, providers, wrong = 0, 0, set(), []
    for source in (*result.report.imported, *result.report.aliases):
        if source.provider in NOT_FROM_THE_TABLE:
            continue
        entry = table.get(source.key, {})
        entry = table.get(entry.get("alias_of"), entry)  # an alias row: the entry it names
        if "off_peak_pricing" in entry:
            continue  # litellm charges by the time of day; the catalog has the standard price
        model = catalog.find(source.provider, source.id)
        assert model is not None
        for i, o, c, w in _cases(model):
            want = _litellm_cost(litellm, source.key, source.provider, i, o, c, w)
            got = model.cost(i, o, c, w)
            count += 1
            tiered += any(i > t.above for t in model.tiers)
            providers.add(source.provider)
            if abs(got - want) > 1e-9 * max(abs(want), abs(got)):
                wrong.append(f"{source.key} {(i, o, c, w)}: catalog {got!r}, litellm {want!r}")
    return count, tiered, providers, wrong


def test_cost_agrees_with_litellm_on_the_excerpt(
    litellm: ModuleType, excerpt: dict[str, Any], imported: ImportResult, no_network: _NoNetwork
) -> None:
    count, tiered, providers, wrong = _agreement(litellm, excerpt, imported)
    assert wrong == []
    assert count >= 200 and tiered >= 100 and len(providers) >= 20
    assert no_network.attempts == []


def test_the_installed_litellm_table(litellm: ModuleType, no_network: _NoNetwork) -> None:
    """The whole table of the pinned litellm: the report's figures, and cost agreement on
    every model imported from it."""
    assert litellm.__name__ == "litellm"
    table = bundled_table()
    assert (table.litellm_version, table.source) == (PINNED, f"litellm {PINNED}")
    # the file is the table litellm uses (which serves an alias row as the row it names)
    served = litellm.model_cost
    assert all(served[k] == v for k, v in table.data.items() if "alias_of" not in v and k in served)
    result = convert(table.data)
    report = result.report
    assert (report.entries, len(report.imported), len(report.aliases)) == (4878, 3134, 98)
    assert report.by_reason() == [
        ("mode", 1104), ("wildcard", 4), ("per-second", 24), ("per-request", 4),
        ("per-character", 6), ("no-price", 92), ("free", 75), ("no-limits", 322),
        ("bad-value", 4), ("duplicate", 11),
    ]  # fmt: skip
    assert len(report.unmapped) == 168
    count, tiered, providers, wrong = _agreement(litellm, table.data, result)
    assert wrong == []
    assert count >= 10_000 and tiered >= 1_000 and len(providers) >= 90
    assert no_network.attempts == []


def test_the_docs_latency_prior_table_is_the_modules() -> None:
    """docs/catalog.md shows the latency priors; they must be the ones the importer uses."""
    text = (ROOT / "docs" / "catalog.md").read_text()
    section = text.split("## Latency priors", 1)[1].split("\n\n", 3)[2]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    shown = {name.strip().strip("`"): (float(p50), float(p95)) for name, p50, p95 in rows}
    assert shown == {**LATENCY_PRIORS, "any other": DEFAULT_LATENCY_PRIOR}


def test_current_leaves_out_retired_models(excerpt: dict[str, Any]) -> None:
    everything = convert(excerpt)
    retiring = {
        (m["provider"], m["id"]): m["retires"]
        for m in everything.document["models"]
        if "retires" in m
    }
    today = date(2026, 12, 1)
    current = convert(excerpt, current_on=today)
    kept = {(m["provider"], m["id"]) for m in current.document["models"]}
    gone = {name for name, day in retiring.items() if day <= today.isoformat()}
    assert gone and not gone & kept  # the excerpt has retired models, and they are left out
    assert {name for name, day in retiring.items() if day > today.isoformat()} <= kept
    assert len(kept) == len(everything.document["models"]) - len(gone)
    retired = [s for s in current.report.skipped if s.reason == "retired"]
    assert (len(retired), len(gone)) == (50, 48)  # two of the keys name a model twice
    assert ("gemini", "gemini-2.5-pro") in gone  # its deprecation_date is 2026-12-01


def test_a_models_own_latency_prior_wins(excerpt: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "priors.yaml"
    path.write_text(
        "providers: {gemini: {p50: 800, p95: 2000}}\n"
        "models: {gemini/gemini-2.5-flash-lite: {p50: 300, p95: 900}}\n"
    )
    priors, default = read_latency_priors(path)
    result = convert(excerpt, latency_priors=priors, default_prior=default)
    assert _model(result, "gemini", "gemini-2.5-flash-lite")["latency_prior_ms"] == {
        "p50": 300,
        "p95": 900,
    }
    assert _model(result, "gemini", "gemini-2.5-pro")["latency_prior_ms"] == {
        "p50": 800,
        "p95": 2000,
    }
    path.write_text("models: {gemini-2.5-pro: {p50: 1, p95: 2}}\n")
    with pytest.raises(CatalogError) as err:
        read_latency_priors(path)
    assert err.value.messages == [
        f"{path}: field `models`: `gemini-2.5-pro` is not a `provider/id`"
    ]

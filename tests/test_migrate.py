"""`policyctl migrate litellm CONFIG` and the room under it (`engine.migrate`).

Every translated policy is written out with its catalog and loaded by the real checker
(`load_policy`, what `policyctl check` runs); decisions are made by a real `PolicyEngine` on
the written files. Prices come from the price table bundled with the installed litellm
(read as a file; the `test` extra pins litellm 1.110.2, so the figures below hold).

The example proxy configs shipped inside that litellm package (every YAML file in it with a
top-level `model_list`) are each translated: each gives a policy that checks, or nothing and
a list of what could not be translated; every deployment is either in the catalog or named
by a note, and every note reads `file:line:col: key.path: message`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import date
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the table

from engine import PolicyEngine
from engine.catalog.litellm import bundled_table, render_json
from engine.catalog.load import load_catalog
from engine.language.loader import Loaded, load_policy
from engine.migrate.config import ConfigError, parse_config, read_config
from engine.migrate.report import Migration
from engine.migrate.translate import STRATEGY_MAP, translate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "litellm" / "config.yaml"
NOW = "2026-11-28T17:46:05Z"
TODAY = date(2026, 11, 28)
TABLE = bundled_table().data
NOTE_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>[\w.\[\]*-]+): .+$")


def _litellm_dir() -> Path:
    spec = find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations, "the test extra installs litellm"
    return Path(next(iter(spec.submodule_search_locations)))


def _shipped() -> list[Path]:
    """The LiteLLM proxy configs inside the installed package: YAML with a `model_list`."""
    found = []
    for path in sorted(_litellm_dir().rglob("*.y*ml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and "model_list" in doc:
            found.append(path)
    return found


SHIPPED = _shipped()


def _migrate(text: str, tmp_path: Path, today: date | None = TODAY) -> tuple[Migration, Loaded]:
    """Translate config text, write the outputs, and load them with the real checker."""
    config = parse_config(textwrap.dedent(text), "config.yaml")
    migration = translate(config, TABLE, "config.models.json", today)
    assert migration.policy is not None and migration.catalog is not None, migration.report.lines()
    return migration, _written(migration, tmp_path)


def _written(migration: Migration, folder: Path) -> Loaded:
    assert migration.policy is not None and migration.catalog is not None
    (folder / "config.policy").write_text(migration.policy, encoding="utf-8")
    (folder / "config.models.json").write_text(render_json(migration.catalog), encoding="utf-8")
    return load_policy(folder / "config.policy")


def _engine(folder: Path) -> PolicyEngine:
    return PolicyEngine(folder / "config.policy", clock=lambda: 1_796_000_000.0)


def _notes(migration: Migration, kind: str = "untranslated") -> dict[str, str]:
    return {n.where.path: n.message for n in migration.report.notes if n.kind == kind}


# ---------------------------------------------------------------- LiteLLM's own configs

# litellm 1.110.2's shipped configs: (outcome, deployments translated, of how many)
EXPECTED: dict[str, tuple[str, int, int]] = {
    "proxy/dev_config.yaml": ("partial", 39, 40),
    "proxy/example_config_yaml/_health_check_test_config.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/adaptive_router_example.yaml": ("partial", 2, 3),
    "proxy/example_config_yaml/agentcore_websearch_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/aliases_config.yaml": ("partial", 2, 3),
    "proxy/example_config_yaml/azure_config.yaml": ("failed", 0, 2),
    "proxy/example_config_yaml/bing_grounding_websearch_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/code_interpreter_interception_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/disable_schema_update.yaml": ("partial", 1, 2),
    "proxy/example_config_yaml/enterprise_config.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/langfuse_config.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/load_balancer.yaml": ("partial", 2, 4),
    "proxy/example_config_yaml/multi_instance_simple_config.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/oai_misc_config.yaml": ("partial", 1, 5),
    "proxy/example_config_yaml/opentelemetry_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/otel_test_config.yaml": ("partial", 2, 7),
    "proxy/example_config_yaml/pass_through_config.yaml": ("partial", 4, 7),
    "proxy/example_config_yaml/reject_clientside_metadata_tags_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/simple_config.yaml": ("full", 1, 1),
    "proxy/example_config_yaml/spend_tracking_config.yaml": ("partial", 1, 1),
    "proxy/example_config_yaml/store_model_db_config.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/test_pipeline_config.yaml": ("partial", 2, 2),
    "proxy/example_config_yaml/tool_permission_example.yaml": ("failed", 0, 1),
    "proxy/example_config_yaml/websearch_interception_config.yaml": ("partial", 1, 1),
    "proxy/guardrails/guardrail_hooks/generic_guardrail_api/example_config.yaml": ("partial", 1, 1),
    "proxy/guardrails/guardrail_hooks/llm_shield_proxy/example_config.yaml": ("partial", 1, 1),
    "proxy/model_config.yaml": ("partial", 1, 2),
    "proxy/proxy_config.yaml": ("partial", 6, 7),
    "proxy/wildcard_config.yaml": ("failed", 0, 7),
}


def test_the_shipped_configs_are_found() -> None:
    names = {p.relative_to(_litellm_dir()).as_posix() for p in SHIPPED}
    assert len(SHIPPED) == 29
    assert "proxy/example_config_yaml/load_balancer.yaml" in names
    assert "proxy/proxy_config.yaml" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(_litellm_dir()).as_posix())
def test_each_shipped_config_checks_or_says_what_it_could_not_translate(
    path: Path, tmp_path: Path
) -> None:
    config = read_config(path)
    migration = translate(config, TABLE, "config.models.json", TODAY)
    report = migration.report
    lines = report.lines()
    assert lines[0].startswith(f"{path}: translated {len(report.translated)} of ")
    # every note is `file:line:col: key.path: message`, at a real position of the file
    text_lines = path.read_text(encoding="utf-8").splitlines()
    for note in report.notes:
        line = note.line(str(path))
        assert NOTE_LINE.match(line.replace(str(path), "F")), line
        assert note.where.line is not None and 1 <= note.where.line <= len(text_lines)
    # every deployment is translated, or a note names it (its own path or a key under it)
    translated = {t.index for t in report.translated}
    for d in config.deployments:
        if d.index not in translated:
            assert any(
                n.where.path.startswith(f"model_list[{d.index}]") for n in report.untranslated
            ), f"model_list[{d.index}] is neither translated nor explained"
    rel = path.relative_to(_litellm_dir()).as_posix()
    if report.outcome == "failed":
        assert EXPECTED[rel] == ("failed", 0, report.deployments)
        assert migration.policy is None and migration.catalog is None
        assert report.untranslated
        return
    loaded = _written(migration, tmp_path)  # raises PolicyError if it did not check
    routes = [r.name for r in loaded.program.routes]
    assert len(routes) >= len(report.routes)
    for t in report.translated:
        assert any(m.provider == t.provider and m.id == t.id for m in loaded.program.catalog.models)
    assert (report.outcome, len(report.translated), report.deployments) == EXPECTED[rel]


def test_the_shipped_configs_in_figures() -> None:
    """The summary docs/migrate.md gives: outcomes, and the keys most often left out."""
    outcomes: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    deployments = translated = 0
    for path in SHIPPED:
        report = translate(read_config(path), TABLE, "config.models.json", TODAY).report
        outcomes[report.outcome] += 1
        keys.update(dict(report.key_counts()))
        deployments += report.deployments
        translated += len(report.translated)
    assert dict(outcomes) == {"full": 1, "partial": 20, "failed": 8}
    assert (translated, deployments) == (72, 107)
    assert keys.most_common(4) == [
        ("model group", 34),
        ("unknown model", 15),
        ("general_settings", 14),
        ("wildcard model", 14),
    ]


# ---------------------------------------------------------------- model_list and groups

TWO_GROUPS = """
model_list:
  - model_name: fast
    litellm_params:
      model: openai/gpt-4o-mini
  - model_name: smart
    litellm_params:
      model: anthropic/claude-opus-4-5
  - model_name: smart
    litellm_params:
      model: gpt-4o
"""


def test_each_model_group_is_a_route_on_request_model(tmp_path: Path) -> None:
    migration, loaded = _migrate(TWO_GROUPS, tmp_path)
    assert migration.report.outcome == "full"
    assert [r.name for r in loaded.program.routes] == ["fast", "smart"]
    assert 'route fast when request.model == "fast" {' in migration.policy
    keys = [f"{t.provider}/{t.id}" for t in migration.report.translated]
    assert keys == ["openai/gpt-4o-mini", "anthropic/claude-opus-4-5", "openai/gpt-4o"]
    with _engine(tmp_path) as engine:
        picked = {engine.evaluate({"id": f"r{i}", "model": "smart"}).model for i in range(40)}
        assert picked == {"claude-opus-4-5", "gpt-4o"}  # both deployments of the group
        fast = engine.evaluate({"id": "f", "model": "fast"})
        assert (fast.route, fast.provider, fast.model) == ("fast", "openai", "gpt-4o-mini")
        other = engine.evaluate({"id": "o", "model": "something-else"})
        assert other.route == "default"  # no group: the defaults over the whole catalog


def test_catalog_entries_take_litellm_prices_and_model_info_overrides(tmp_path: Path) -> None:
    migration, loaded = _migrate(
        """
        model_list:
          - model_name: a
            litellm_params: {model: openai/gpt-4o-mini}
            model_info: {max_output_tokens: 1000, supports_vision: false}
          - model_name: b
            litellm_params:
              model: azure/my-deployment
              input_cost_per_token: 0.000001
            model_info: {base_model: azure/gpt-4o}
        """,
        tmp_path,
    )
    by_key = {m.key: m for m in loaded.program.catalog.models}
    mini = by_key["openai/gpt-4o-mini"]
    assert (mini.input_price, mini.output_price, mini.max_tokens) == (0.15, 0.6, 1000)
    assert "vision" not in mini.supports and "tools" in mini.supports
    mine = by_key["azure/my-deployment"]
    assert (mine.input_price, mine.output_price, mine.context_window) == (1.0, 10.0, 128000)
    assert {t.table_key for t in migration.report.translated} == {"gpt-4o-mini", "azure/gpt-4o"}


def test_an_unknown_model_needs_model_info(tmp_path: Path) -> None:
    known, loaded = _migrate(
        """
        model_list:
          - model_name: bot
            litellm_params: {model: hosted_vllm/acme/llama-8b}
            model_info:
              max_input_tokens: 32768
              max_output_tokens: 4096
              input_cost_per_token: 0.0000002
              output_cost_per_token: 0.0000006
        """,
        tmp_path,
    )
    assert 'prefer hosted_vllm/"acme/llama-8b"' in known.policy
    (model,) = loaded.program.catalog.models
    assert (model.context_window, model.input_price, model.output_price) == (32768, 0.2, 0.6)
    config = parse_config(
        "model_list:\n  - model_name: bot\n    litellm_params: {model: hosted_vllm/acme/x}\n"
        "    model_info: {max_input_tokens: 32768}\n",
        "c.yaml",
    )
    unknown = translate(config, TABLE, "c.models.json", TODAY)
    assert unknown.policy is None and unknown.report.outcome == "failed"
    assert [n.line("c.yaml") for n in unknown.report.untranslated] == [
        "c.yaml:2:5: model_list[0].model_name: model group `bot`: no deployment translated;"
        " requests for it take the default route",
        "c.yaml:3:22: model_list[0].litellm_params.model: `hosted_vllm/acme/x` is not in"
        " LiteLLM's price table: give model_info max_input_tokens, max_output_tokens,"
        " input_cost_per_token and output_cost_per_token",
    ]


def test_what_cannot_be_a_chat_model_is_listed(tmp_path: Path) -> None:
    migration, _ = _migrate(
        """
        model_list:
          - model_name: chat
            litellm_params: {model: gpt-4o-mini}
          - model_name: emb
            litellm_params: {model: openai/text-embedding-3-small}
          - model_name: "openai/*"
            litellm_params: {model: "openai/*"}
          - model_name: env
            litellm_params: {model: os.environ/MY_MODEL}
          - model_name: bare
            litellm_params: {model: no-such-model-anywhere}
          - litellm_params: {model: gpt-4o}
          - model_name: 42
            litellm_params: {model: gpt-4o}
        """,
        tmp_path,
    )
    notes = _notes(migration)
    assert notes["model_list[1].litellm_params.model"] == (
        "`openai/text-embedding-3-small`: not a chat or responses model (embedding)"
    )
    assert notes["model_list[2].litellm_params.model"].startswith(
        "wildcard `openai/*` passes any model name through"
    )
    assert notes["model_list[3].litellm_params.model"] == (
        "the model is read from the environment when LiteLLM starts; write the model name"
    )
    assert notes["model_list[4].litellm_params.model"].startswith(
        "cannot tell the provider of `no-such-model-anywhere`"
    )
    assert notes["model_list[5]"] == "no `model_name`: clients cannot name this deployment"
    assert notes["model_list[6].model_name"] == (
        "`model_name` is not a name: clients cannot name this deployment"
    )
    assert [t.index for t in migration.report.translated] == [0]
    assert migration.report.outcome == "partial"


def test_two_deployments_of_one_model_are_two_providers_with_their_own_limits(
    tmp_path: Path,
) -> None:
    migration, loaded = _migrate(
        """
        model_list:
          - model_name: g
            litellm_params: {model: gpt-4o-mini, api_key: sk-one, rpm: 1}
          - model_name: g
            litellm_params: {model: gpt-4o-mini, api_key: sk-two, rpm: 1}
        """,
        tmp_path,
    )
    assert [m.key for m in loaded.program.catalog.models] == [
        "openai/gpt-4o-mini",
        "openai-2/gpt-4o-mini",
    ]
    assert 'limit model "openai-2/gpt-4o-mini" 1 per 1m' in migration.policy
    with _engine(tmp_path) as engine:
        first = engine.evaluate({"id": "a", "model": "g"})
        second = engine.evaluate({"id": "b", "model": "g"})
        third = engine.evaluate({"id": "c", "model": "g"})
    assert {first.provider, second.provider} == {"openai", "openai-2"}  # each had room once
    assert not third.allowed  # both deployments at their rpm


def test_region_name_and_custom_llm_provider(tmp_path: Path) -> None:
    _, loaded = _migrate(
        """
        model_list:
          - model_name: eu
            litellm_params: {model: gpt-4o-mini, region_name: eu}
          - model_name: x
            litellm_params: {model: claude-haiku-4-5, custom_llm_provider: anthropic}
          - model_name: bad
            litellm_params: {model: gpt-4o, region_name: "not a region"}
        """,
        tmp_path,
    )
    by_key = {m.key: m for m in loaded.program.catalog.models}
    assert by_key["openai/gpt-4o-mini"].regions == ("eu",)
    assert by_key["anthropic/claude-haiku-4-5"].input_price == 1.0
    assert by_key["openai/gpt-4o"].regions == ()


def test_a_retired_model_is_noted(tmp_path: Path) -> None:
    config = "model_list:\n  - model_name: g\n    litellm_params: {model: gemini/gemini-2.5-pro}\n"
    before, _ = _migrate(config, tmp_path, today=date(2026, 11, 30))
    assert _notes(before, "approximated") == {}
    after, _ = _migrate(config, tmp_path, today=date(2026, 12, 1))
    assert _notes(after, "approximated") == {
        "model_list[0].litellm_params.model": "`gemini/gemini-2.5-pro` is retired on 2026-12-01"
        " by LiteLLM's table: no decision picks it (LiteLLM would still call it); delete its"
        " `retires` in the catalog to route to it"
    }


# ---------------------------------------------------------------- router settings


@pytest.mark.parametrize(("litellm", "expected"), sorted(STRATEGY_MAP.items()))
def test_each_routing_strategy_maps(
    litellm: str, expected: tuple[str, str | None], tmp_path: Path
) -> None:
    migration, loaded = _migrate(
        TWO_GROUPS + f"router_settings:\n  routing_strategy: {litellm}\n", tmp_path
    )
    strategy, differs = expected
    assert loaded.program.default_route.settings.strategy == strategy
    assert all(r.settings.strategy == strategy for r in loaded.program.routes)
    notes = _notes(migration, "approximated")
    if differs is None:
        assert "router_settings.routing_strategy" not in notes
    else:
        assert notes["router_settings.routing_strategy"] == (
            f"`{litellm}` is `strategy {strategy}`: {differs}"
        )
    assert {"latency", "cost", "round-robin", "model-specific"} >= {strategy}


def test_an_unknown_routing_strategy_is_listed(tmp_path: Path) -> None:
    migration, loaded = _migrate(
        TWO_GROUPS + "router_settings:\n  routing_strategy: provider-budget-routing\n", tmp_path
    )
    assert loaded.program.default_route.settings.strategy == "model-specific"
    assert migration.report.untranslated[0].line("config.yaml") == (
        "config.yaml:13:3: router_settings.routing_strategy: unknown routing strategy"
        " `provider-budget-routing` (known: `simple-shuffle`, `latency-based-routing`,"
        " `least-busy`, `usage-based-routing`, `usage-based-routing-v2`, `cost-based-routing`);"
        " LiteLLM's default simple-shuffle is used"
    )


@pytest.mark.parametrize(("metric", "scale"), [("weight", 1), ("rpm", 100), ("tpm", 100_000)])
def test_shuffle_weights_come_from_weight_else_rpm_else_tpm(
    metric: str, scale: int, tmp_path: Path
) -> None:
    migration, loaded = _migrate(
        f"""
        model_list:
          - model_name: g
            litellm_params: {{model: gpt-4o-mini, {metric}: {9 * scale}}}
          - model_name: g
            litellm_params: {{model: gpt-4o, {metric}: {scale}}}
        """,
        tmp_path,
    )
    (route,) = loaded.program.routes
    assert route.weights == {"openai/gpt-4o-mini": 9.0 * scale, "openai/gpt-4o": 1.0 * scale}
    with _engine(tmp_path) as engine:
        models = Counter(
            engine.evaluate({"id": f"r{i}", "model": "g"}, dry_run=True).model for i in range(400)
        )
    assert models["gpt-4o-mini"] > 300 and models["gpt-4o"] > 10  # drawn about 9 to 1
    assert migration.report.notes == ()


def test_equal_or_missing_weights(tmp_path: Path) -> None:
    even, loaded = _migrate(
        """
        model_list:
          - model_name: g
            litellm_params: {model: gpt-4o-mini, rpm: 10}
          - model_name: g
            litellm_params: {model: gpt-4o, rpm: 10}
        """,
        tmp_path,
    )
    assert "weight" not in even.policy  # an even draw
    uneven, loaded = _migrate(
        """
        model_list:
          - model_name: g
            litellm_params: {model: gpt-4o-mini, weight: 3}
          - model_name: g
            litellm_params: {model: gpt-4o}
        """,
        tmp_path,
    )
    (route,) = loaded.program.routes
    assert route.weights == {"openai/gpt-4o-mini": 3.0, "openai/gpt-4o": 0.003}
    assert _notes(uneven, "approximated") == {
        "model_list[1]": "group `g`: model_list[1] set no `weight`, so LiteLLM's shuffle picks"
        " them only when the others are out; here weight 0.003"
    }


def test_rpm_and_tpm_are_model_limits(tmp_path: Path) -> None:
    migration, loaded = _migrate(
        """
        model_list:
          - model_name: g
            litellm_params: {model: gpt-4o-mini, rpm: 2, tpm: 100000}
          - model_name: g
            tpm: 5000
            litellm_params: {model: gpt-4o}
          - model_name: h
            litellm_params: {model: gpt-4o, rpm: "lots", tpm: os.environ/TPM}
        """,
        tmp_path,
    )
    limits = [line for line in migration.policy.splitlines() if line.startswith("limit")]
    assert limits == [
        'limit model "openai/gpt-4o-mini" 2 per 1m              # model_list[0].litellm_params.rpm',
        'limit model "openai/gpt-4o-mini" tokens 100000 per 1m  # model_list[0].litellm_params.tpm',
        'limit model "openai/gpt-4o" tokens 5000 per 1m         # model_list[1].tpm',
    ]
    assert len(loaded.program.limits) == 3
    notes = _notes(migration)
    assert notes["model_list[2].litellm_params.rpm"] == "not a positive number"
    assert (
        notes["model_list[2].litellm_params.tpm"] == "read from the environment; write the number"
    )


def test_model_group_alias(tmp_path: Path) -> None:
    migration, _ = _migrate(
        TWO_GROUPS
        + "router_settings:\n  model_group_alias:\n    gpt-4: smart\n"
        + "    hidden-one: {model: fast, hidden: true}\n    broken: nowhere\n",
        tmp_path,
    )
    assert 'route smart when request.model in ["smart", "gpt-4"] {' in migration.policy
    assert 'route fast when request.model in ["fast", "hidden-one"] {' in migration.policy
    with _engine(tmp_path) as engine:
        assert engine.evaluate({"id": "a", "model": "gpt-4"}).route == "smart"
    assert _notes(migration)["router_settings.model_group_alias"] == (
        "alias `broken`: `nowhere` is not a translated model group"
    )


def test_cooldown(tmp_path: Path) -> None:
    both, loaded = _migrate(
        TWO_GROUPS + "router_settings:\n  allowed_fails: 2\n  cooldown_time: 30\n", tmp_path
    )
    assert "    cooldown after 3 failures for 30s\n" in both.policy
    settings = loaded.program.default_route.settings
    assert (settings.cooldown_failures, settings.cooldown_ms) == (3, 30_000.0)
    fails_only, _ = _migrate(TWO_GROUPS + "litellm_settings:\n  allowed_fails: 0\n", tmp_path)
    assert "    cooldown after 1 failure for 5s\n" in fails_only.policy  # LiteLLM's default time
    time_only, _ = _migrate(TWO_GROUPS + "router_settings:\n  cooldown_time: 0.5\n", tmp_path)
    assert "cooldown" not in time_only.policy.split("defaults {")[1].split("}")[0]
    assert _notes(time_only)["router_settings.cooldown_time"].startswith(
        "without `allowed_fails` LiteLLM cools a deployment down by its failure rate"
    )
    disabled, _ = _migrate(
        TWO_GROUPS + "router_settings:\n  allowed_fails: 2\n  disable_cooldowns: true\n", tmp_path
    )
    assert "cooldown after" not in disabled.policy
    bad, _ = _migrate(TWO_GROUPS + "router_settings:\n  allowed_fails: many\n", tmp_path)
    assert _notes(bad)["router_settings.allowed_fails"] == "not a whole number"


def test_context_window_fallbacks_route_long_inputs_to_the_other_group(tmp_path: Path) -> None:
    migration, loaded = _migrate(
        """
        model_list:
          - model_name: small
            litellm_params: {model: gpt-4o-mini}
          - model_name: big
            litellm_params: {model: gemini/gemini-2.5-flash-lite}
        router_settings:
          context_window_fallbacks: [{"small": ["big"]}, {"nope": ["big"]}]
        """,
        tmp_path,
    )
    assert [r.name for r in loaded.program.routes] == ["small-long", "small", "big"]
    assert (
        'route small-long when request.model == "small" and request.input_tokens > 128000 {'
        in migration.policy
    )
    with _engine(tmp_path) as engine:
        short = engine.evaluate({"id": "s", "model": "small", "input_tokens": 1000})
        long = engine.evaluate({"id": "l", "model": "small", "input_tokens": 500_000})
    assert (short.route, short.model) == ("small", "gpt-4o-mini")
    assert (long.route, long.model) == ("small-long", "gemini-2.5-flash-lite")
    assert _notes(migration)["router_settings.context_window_fallbacks"] == (
        "`nope`: no model group of model_list"
    )
    assert "router_settings.context_window_fallbacks" in _notes(migration, "approximated")


def test_fallbacks_and_retries_are_listed_and_kept_as_comments(tmp_path: Path) -> None:
    migration, _ = _migrate(
        TWO_GROUPS
        + "router_settings:\n  fallbacks: [{fast: [smart]}]\n  num_retries: 3\n"
        + "  default_fallbacks: [smart]\n  routing_strategy_args: {ttl: 10}\n"
        + "  enable_tag_filtering: true\nlitellm_settings:\n  drop_params: true\n"
        + "  num_retries: 9\ngeneral_settings:\n  master_key: sk-1234\n",
        tmp_path,
    )
    assert "#   fast -> smart\n" in migration.policy
    notes = _notes(migration)
    assert set(notes) == {
        "router_settings.fallbacks",
        "router_settings.num_retries",
        "router_settings.default_fallbacks",
        "router_settings.routing_strategy_args",
        "router_settings.enable_tag_filtering",
        "litellm_settings.drop_params",
        "litellm_settings.num_retries",  # router_settings' is the one LiteLLM's Router uses
        "general_settings",
    }
    assert notes["general_settings"] == "a proxy section policyctl does not read"
    assert notes["litellm_settings.num_retries"] == (
        "also set in `router_settings.num_retries`, which the Router uses"
    )


def test_deployment_keys_that_are_routing_facts_are_listed(tmp_path: Path) -> None:
    migration, _ = _migrate(
        """
        model_list:
          - model_name: g
            litellm_params:
              model: gpt-4o-mini
              tags: [teamA]
              max_parallel_requests: 10
              timeout: 5
              api_base: https://example.invalid/v1
            model_info: {id: dep-1, access_groups: [beta]}
            extra_key: 1
        """,
        tmp_path,
    )
    assert set(_notes(migration)) == {
        "model_list[0].litellm_params.tags",
        "model_list[0].model_info.access_groups",
        "model_list[0].extra_key",
    }
    assert migration.report.left == (("api_base", 1), ("timeout", 1))
    # max_parallel_requests is an in-flight cap
    assert 'limit model "openai/gpt-4o-mini" concurrent 10' in migration.policy
    assert "#   openai/gpt-4o-mini = model_list[0] (model_info.id dep-1)\n" in migration.policy


# ---------------------------------------------------------------- errors and secrets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: [\n",
            "config.yaml:4:1: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        (
            "model_list:\n  - model_name: a\n   bad: indent\n",
            "config.yaml:3:4: invalid YAML: expected <block end>, but found"
            " '<block mapping start>'",
        ),
        (
            "- just\n- a list\n",
            "config.yaml: not a LiteLLM config: expected a mapping with a `model_list`",
        ),
        ("router_settings: {}\n", "config.yaml: not a LiteLLM config: no `model_list`"),
        (
            "\nmodel_list: gpt-4o\n",
            "config.yaml:2:1: model_list: expected a list of deployments (`- model_name: …`)",
        ),
        (
            "model_list: []\nrouter_settings: [a]\n",
            "config.yaml:2:1: router_settings: expected a mapping of settings",
        ),
    ],
)
def test_config_errors_name_the_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml")
    assert str(caught.value) == message


def test_aliases_are_read_once_and_deep_nesting_is_an_error() -> None:
    """`&a [*b, *b, …]` nine levels deep names 10**9 values: read as shared nodes, not walked
    one by one (that would not finish)."""
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    text = "\n".join(["model_list: []", "litellm_settings:", *("  " + x for x in levels)])
    config = parse_config(text + "\n", "laughs.yaml")
    assert [name for name, _ in config.other] == [f"l{i}" for i in range(10)]
    with pytest.raises(ConfigError) as caught:
        parse_config("model_list: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    assert str(caught.value) == "deep.yaml: invalid YAML: nested too deeply"


SECRET_CONFIG = """\
model_list:
  - model_name: g
    litellm_params:
      model: gpt-4o-mini
      api_key: sk-live-TOPSECRET-0001
      api_base: https://user:hunter2@llm.example.invalid/v1
      organization: org-SECRETORG
  - model_name: g
    litellm_params:
      model: gpt-4o
      api_key: os.environ/OPENAI_API_KEY_SECRET_NAME
      aws_secret_access_key: AKIA-SECRET-KEY
router_settings:
  redis_password: redis-SECRET-pw
  redis_host: redis.secret.invalid
general_settings:
  master_key: sk-master-SECRET
  database_url: postgres://admin:dbSECRET@db.invalid/litellm
environment_variables:
  SOME_TOKEN: tok-SECRET-env
"""
SECRETS = (
    "TOPSECRET",
    "hunter2",
    "SECRETORG",
    "OPENAI_API_KEY_SECRET_NAME",
    "AKIA-SECRET",
    "redis-SECRET",
    "redis.secret",
    "sk-master",
    "dbSECRET",
    "tok-SECRET",
    "os.environ",
)


# ---------------------------------------------------------------- the command line


def _policyctl(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env.update(
        POLICYCTL_NOW=NOW,
        XDG_STATE_HOME=str(workdir / "xdg-state"),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_no_secret_reaches_any_output(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text(SECRET_CONFIG)
    done = _policyctl(tmp_path, "migrate", "litellm", "secret.yaml")
    assert done.returncode == 0, done.stderr
    outputs = [done.stdout, done.stderr]
    outputs += [(tmp_path / n).read_text() for n in ("secret.policy", "secret.models.json")]
    json_run = _policyctl(
        tmp_path,
        "migrate",
        "litellm",
        "secret.yaml",
        "--force",
        "--format",
        "json",
        "--catalog-format",
        "yaml",
    )
    assert json_run.returncode == 0, json_run.stderr
    outputs += [json_run.stdout, json_run.stderr, (tmp_path / "secret.models.yaml").read_text()]
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text
    report = json.loads(json_run.stdout)
    assert report["left"] == {
        "api_key": 2,
        "api_base": 1,
        "aws_secret_access_key": 1,
        "organization": 1,
        "redis_host": 1,
        "redis_password": 1,
        "environment_variables": 1,
    }


def test_cli_writes_both_files_that_check_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    out.mkdir()
    done = _policyctl(tmp_path, "migrate", "litellm", "config.yaml", "--output-dir", "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "wrote out/config.policy and out/config.models.json\n"
    assert done.stderr.startswith(
        "config.yaml: translated 5 of 6 deployments, 4 of 5 model groups\nnot translated (5):\n"
    )
    assert 'catalog "config.models.json"' in (out / "config.policy").read_text()
    catalog = load_catalog(out / "config.models.json")
    assert len(catalog.models) == 5
    check = _policyctl(tmp_path, "check", "out/config.policy")
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    again = _policyctl(tmp_path, "migrate", "litellm", "config.yaml", "--output-dir", "out")
    assert again.returncode == 2
    assert again.stderr == (
        "policyctl: error: `out/config.policy` and `out/config.models.json` exist; give --force"
        " to overwrite, or --output-dir\n"
    )
    forced = _policyctl(
        tmp_path, "migrate", "litellm", "config.yaml", "--output-dir", "out", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    request = tmp_path / "r.json"
    request.write_text('{"id": "r1", "model": "gpt-4", "input_tokens": 1000}')
    decided = _policyctl(
        tmp_path, "eval", "--policy", "out/config.policy", "--state", "memory://", "r.json"
    )
    assert decided.returncode == 0, decided.stderr
    assert json.loads(decided.stdout)["route"] == "gpt-4o"


def test_cli_makes_an_output_dir_that_does_not_exist_and_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(EXAMPLE.read_text())
    done = _policyctl(tmp_path, "migrate", "litellm", "config.yaml", "--output-dir", "new/dir")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "wrote new/dir/config.policy and new/dir/config.models.json\n"
    check = _policyctl(tmp_path, "check", "new/dir/config.policy")
    assert (check.returncode, check.stderr) == (0, "")
    (tmp_path / "a-file").write_text("")
    refused = _policyctl(tmp_path, "migrate", "litellm", "config.yaml", "--output-dir", "a-file")
    assert refused.returncode == 2
    assert refused.stderr == "policyctl: error: --output-dir: `a-file` is not a directory\n"


def test_cli_writes_nothing_when_nothing_translates(tmp_path: Path) -> None:
    (tmp_path / "wild.yaml").write_text(
        'model_list:\n  - model_name: "*"\n    litellm_params: {model: "openai/*"}\n'
    )
    done = _policyctl(tmp_path, "migrate", "litellm", "wild.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr.splitlines()[0]
        == "wild.yaml: translated 0 of 1 deployments, 0 of 1 model groups"
    )
    assert done.stderr.splitlines()[-1] == "nothing written: no deployment could be translated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wild.yaml"]


def test_cli_broken_yaml_golden(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: gpt-4o\n     rpm: 3\n"
    )
    done = _policyctl(tmp_path, "migrate", "litellm", "bad.yaml")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "bad.yaml:5:6: invalid YAML: expected <block end>, but found '<block mapping start>'\n"
    )
    missing = _policyctl(tmp_path, "migrate", "litellm", "missing.yaml")
    assert missing.returncode == 2
    assert missing.stderr == "missing.yaml: cannot read the config: No such file or directory\n"


def test_shipped_config_through_the_cli(tmp_path: Path) -> None:
    path = _litellm_dir() / "proxy" / "example_config_yaml" / "load_balancer.yaml"
    done = _policyctl(tmp_path, "migrate", "litellm", str(path))
    assert done.returncode == 0, done.stderr
    assert "sk-uj6F" not in (tmp_path / "load_balancer.policy").read_text() + done.stderr
    assert "gpt-3.5-turbo` is retired on 2026-10-23 by LiteLLM's table" in done.stderr
    check = _policyctl(tmp_path, "check", "load_balancer.policy")  # warns of what it noted
    assert check.returncode == 0
    assert check.stderr.startswith(
        "load_balancer.policy:13:7: warning[W0502]: every model route `gpt-3.5-turbo` can reach is"
        " retired (the last on 2026-10-23)\n"
    )


def test_cli_prices_file_json_report_and_yaml_catalog(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "model_list:\n  - model_name: g\n    litellm_params: {model: gpt-4o-mini, rpm: 5}\n"
        "  - model_name: h\n    litellm_params: {model: openai/gpt-4.1}\n"
    )
    prices = ROOT / "examples" / "litellm" / "prices.json"
    done = _policyctl(
        tmp_path,
        "migrate",
        "litellm",
        "c.yaml",
        "--prices",
        str(prices),
        "--catalog-format",
        "yaml",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "partial"
    assert report["files"] == ["c.policy", "c.models.yaml"]
    assert report["translated"] == [
        {
            "model_list": 0,
            "group": "g",
            "provider": "openai",
            "id": "gpt-4o-mini",
            "table_key": "gpt-4o-mini",
        }
    ]
    (note,) = [n for n in report["notes"] if n["kind"] == "untranslated" and n["line"] == 5]
    assert note["path"] == "model_list[1].litellm_params.model"
    catalog = (tmp_path / "c.models.yaml").read_text()
    assert catalog.startswith(
        "# policyctl model catalog, generated by `policyctl migrate litellm c.yaml`\n"
        "# on 2026-11-28 with prices from prices.json: 1 deployments.\n"
    )
    assert load_catalog(tmp_path / "c.models.yaml").models[0].input_price == 0.15
    check = _policyctl(tmp_path, "check", "c.policy")
    assert (check.returncode, check.stderr) == (0, "")


def test_without_litellm_and_prices_the_error_names_the_extra(tmp_path: Path) -> None:
    """A plain `pip install .` has no litellm: the command says which extra it needs."""
    root = Path(__file__).resolve().parent.parent
    config = str(root / "examples" / "litellm" / "config.yaml")
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; sys.modules['litellm'] = None\n"
            "from engine.cli import main\n"
            f"sys.exit(main(['migrate', 'litellm', {config!r}]))",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert "pip install 'policyctl[litellm]'" in done.stderr
    assert "--prices FILE" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written

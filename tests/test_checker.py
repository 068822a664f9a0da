"""The checker's semantics: what a policy set may say, and what it compiles to.

The exact wording of every diagnostic lives in the golden files (tests/test_golden.py);
these tests are about which programs are accepted, which are rejected (by code and place),
and what the accepted ones mean.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _design import CATALOG_LINE, DESIGN_CATALOG

from engine.diagnostics import Diagnostic, PolicyError
from engine.language import loader
from engine.language.loader import Loaded
from engine.language.program import Program


def compile_sources(
    sources: list[tuple[str, str]], paths: list[Path | None] | None = None
) -> Loaded:
    """`loader.compile_sources` on the design's catalog (the models these tests name), given
    as one more file of the set so that no line moves; a set naming its own catalog keeps it."""
    if any('catalog "' in text for _, text in sources):
        return loader.compile_sources(sources, paths)
    extra: list[Path | None] = [None]
    return loader.compile_sources(
        [*sources, ("design-catalog.policy", CATALOG_LINE)],
        None if paths is None else [*paths, *extra],
    )


def ok(*texts: str) -> Loaded:
    """Compile texts named a.policy, b.policy, …; fail on any warning."""
    loaded = compile_sources([(f"{chr(97 + i)}.policy", t) for i, t in enumerate(texts)])
    assert [d.render() for d in loaded.warnings] == []
    return loaded


def program(*texts: str) -> Program:
    return ok(*texts).program


def diagnostics(*sources: tuple[str, str]) -> tuple[Diagnostic, ...]:
    with pytest.raises(PolicyError) as info:
        compile_sources(list(sources))
    return info.value.diagnostics


def errors(text: str) -> list[tuple[str, int, int]]:
    """(code, line, col) of every diagnostic of one file, in order."""
    found = diagnostics(("t.policy", text))
    return [(d.code, d.span.line, d.span.col) if d.span else (d.code, 0, 0) for d in found]


def codes(text: str) -> list[str]:
    return [code for code, _, _ in errors(text)]


def route(cond: str, body: str = "strategy cost") -> str:
    return f"route r when {cond} {{\n    {body}\n}}\n"


# ---------------------------------------------------------------- what conditions may say


@pytest.mark.parametrize(
    "cond",
    [
        'request.metadata.tier == "free"',
        "request.metadata.tier == 5",
        "request.metadata.seats > 100",
        "request.metadata.beta == true",
        'request.metadata.tier in ["free", "trial"]',
        '"x" in request.metadata.note',
        "request.metadata.tier",  # a metadata value may be a boolean
    ],
)
def test_metadata_values_are_any(cond: str) -> None:
    program(route(cond))


@pytest.mark.parametrize(
    "cond",
    [
        "request.region == null",
        "request.region != null",
        "null == request.max_cost",
        "request.metadata.team == null",
        "request.tags == null",
    ],
)
def test_comparing_with_null_tests_presence(cond: str) -> None:
    program(route(cond))


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordering_with_null_is_an_error(op: str) -> None:
    assert codes(route(f"request.max_cost {op} null")) == ["E0330"]


@pytest.mark.parametrize(
    "cond",
    [
        'request.tags contains "x"',
        '"x" in request.tags',
        '"x" not in request.tags',
        "request.tags contains request.region",
        'request.prompt contains "refund"',  # a substring test
        'request.region in ["eu", "uk"]',
        'request.region not in ["us"]',
        "request.region in []",
        'request.tags == ["a", "b"]',
    ],
)
def test_membership(cond: str) -> None:
    program(route(cond))


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (
            "request.tags == [1]",
            "unit mismatch: cannot compare a list of strings (`request.tags`)"
            " with a list of numbers (`[1]`)",
        ),
        (
            "[1, 2] != request.tags",
            "unit mismatch: cannot compare a list of numbers (`[1, 2]`)"
            " with a list of strings (`request.tags`)",
        ),
    ],
)
def test_list_equality_compares_the_element_types(cond: str, message: str) -> None:
    (found,) = diagnostics(("t.policy", route(cond)))
    assert (found.code, found.message, found.help) == (
        "E0333",
        message,
        "both sides must have the same type",
    )


@pytest.mark.parametrize(
    "cond",
    [
        "request.max_cost <= $0.01",
        "request.max_latency <= 2s",
        "request.max_latency_ms < 250ms",
        "request.input_tokens > 100k",
        "request.max_tokens >= 1.5M",
        'request.region < "m"',  # strings have an order
        "request.stream == true",
        "request.stream != request.requires_json",
        "not request.stream and (request.requires_tools or request.requires_json)",
        "request.requires_reasoning",
        "request.requires_reasoning and request.input_tokens > 10k",
    ],
)
def test_units_that_agree(cond: str) -> None:
    program(route(cond))


@pytest.mark.parametrize(
    ("cond", "code"),
    [
        ("request.max_cost <= 2s", "E0333"),
        ("request.max_latency <= 2000", "E0333"),
        ("request.input_tokens > $5", "E0333"),
        ("request.max_cost > 10%", "E0333"),
        ('request.region == ["eu"]', "E0333"),
        ("request.stream < true", "E0332"),
        ("request.requires_reasoning == 1", "E0333"),
        ("request.requires_reasoning < true", "E0332"),
        ('request.tags < ["a"]', "E0332"),
        ('request.metadata.team < ["a"]', "E0331"),
        ('"x" in request.input_tokens', "E0340"),
        ('request.region in ["eu", 1]', "E0311"),
        ('request.region in [["eu"]]', "E0310"),
        ('["a"] in request.tags', "E0341"),
        ("request.tags contains 5", "E0342"),
        ("request.region", "E0300"),
        ("request.input_tokens and request.stream", "E0300"),
        ("not request.region", "E0300"),
        ("request.regoin == null", "E0324"),
        ("request.metadata == null", "E0323"),
        ("request.metadata.a.b == null", "E0323"),
        ("request == null", "E0322"),
        ("requst.region == null", "E0321"),
        ("model.regions == null", "E0320"),
    ],
)
def test_conditions_that_do_not_check(cond: str, code: str) -> None:
    assert codes(route(cond)) == [code]


@pytest.mark.parametrize(
    "cond",
    [
        '"eu" in model.regions',
        'model.regions contains "eu"',
        'model.supports contains "vision" and model.context_window >= 128k',
        "model.pricing.input <= $1 and model.pricing.output < $5",
        "model.latency_p95 < 3s",
        'model.provider != "openai"',
        "model.id == request.model",
        "request.max_tokens <= model.max_tokens",
    ],
)
def test_model_attributes_inside_require(cond: str) -> None:
    program(f"route r when request.stream {{\n    require {cond}\n}}\n")


def test_model_attributes_only_inside_require() -> None:
    assert codes(route('"eu" in model.regions')) == ["E0320"]
    assert codes('limit user 10 per 1m when model.provider == "openai"') == ["E0320"]
    assert codes("limit team = model.provider 10 per 1m") == ["E0320"]
    assert codes("route r {\n    require model.nope == 1\n}") == ["E0324"]


def test_errors_inside_one_condition_are_all_reported() -> None:
    text = route('request.regoin == "eu" or request.max_cost <= 2s or requst.x == 1')
    assert codes(text) == ["E0324", "E0333", "E0321"]


def test_an_error_inside_an_operand_is_not_reported_twice() -> None:
    # the unknown field makes its comparison untyped: no extra unit or condition error
    assert codes(route("not (request.regoin <= 2s)")) == ["E0324"]
    assert codes(route('request.region in [request.regoin, "eu"]')) == ["E0324"]


# ---------------------------------------------------------------- bare literals


def test_literal_conditions_check_and_compile() -> None:
    program("route r when request.stream {\n    require false\n}\n")
    program(
        "limit user 10 per 1m when true\n"
        'route r when request.stream {\n    require "eu" in model.regions\n}'
    )


def test_a_literal_true_route_makes_later_routes_unreachable() -> None:
    loaded = compile_sources(
        [("t.policy", "route all when true {}\nroute r when request.stream {}")]
    )
    assert [(d.code, d.span.text()) for d in loaded.warnings if d.span] == [("W0500", "r")]


def test_a_literal_that_is_not_a_condition() -> None:
    assert codes("route r when 80% {}") == ["E0300"]
    assert codes('limit user 1 per 1m when "yes"') == ["E0300"]


# ---------------------------------------------------------------- strategies and settings


def test_factor_percentages_must_add_up_to_100() -> None:
    assert errors("defaults {\n  strategy weighted(latency: 60%, cost: 30%)\n}") == [
        ("E0215", 2, 3)
    ]
    program("defaults {\n  strategy weighted(latency: 60%, cost: 40%)\n}")
    program("defaults {\n  strategy weighted(latency: 50%, cost: 30%, success: 20%)\n}")
    assert codes(route("request.stream", "strategy weighted(latency: 70%, cost: 40%)")) == ["E0215"]


@pytest.mark.parametrize(
    ("weights", "total"),
    [
        ("latency: 60%, cost: 39%", "99%"),
        ("latency: 60%, cost: 41%", "101%"),
        ("latency: 60.5%, cost: 39.4%", "99.9%"),
    ],
)
def test_factor_percentages_close_to_100_are_not_100(weights: str, total: str) -> None:
    """The sum must be 100% exactly (to float rounding), not within a tolerance."""
    (found,) = diagnostics(("t.policy", f"defaults {{\n  strategy weighted({weights})\n}}"))
    assert (found.code, found.message, found.help) == (
        "E0215",
        f"factor weights add up to {total}, not 100%",
        "make the percentages add up to 100%",
    )


def test_factor_weights_as_counts_are_normalised() -> None:
    p = program("defaults {\n  strategy weighted(latency: 3, cost: 1)\n}")
    assert p.default_route.settings.factors == (("latency", 0.75), ("cost", 0.25))
    assert p.default_route.factor_weights == (0.75, 0.25, 0.0)
    p = program(route("request.stream", "strategy weighted(cost: 1, success: 1)"))
    assert p.routes[0].factor_weights == (0.0, 0.5, 0.5)


def test_factor_percentages_are_kept() -> None:
    p = program("defaults {\n  strategy weighted(latency: 60%, cost: 40%)\n}")
    assert p.default_route.settings.factors == (("latency", 0.6), ("cost", 0.4))


def test_factor_weights_cannot_mix_percentages_and_counts() -> None:
    """`latency: 60%, cost: 40` would silently weigh cost at 40 / 40.6."""
    with pytest.raises(PolicyError) as info:
        compile_sources(
            [("t.policy", "defaults {\n  strategy weighted(latency: 60%, cost: 40)\n}")]
        )
    assert [d.span.line for d in info.value.diagnostics if d.span] == [2]


def test_a_bad_factor_weight_is_reported_once() -> None:
    # not also "factor weights add up to 40%": the duration is not a weight at all
    assert codes("defaults {\n  strategy weighted(latency: 2s, cost: 40%)\n}") == ["E0214"]


def test_weighted_without_factors_uses_the_default_factors() -> None:
    p = program(route("request.stream", "strategy weighted"))
    assert p.routes[0].settings.factors == (("latency", 0.6), ("cost", 0.4))


def test_settings_compile_to_their_values() -> None:
    p = program(
        "defaults {\n  strategy latency\n  min_success_rate 90%\n  min_samples 50\n"
        "  window 1h\n  fallback gemini, claude/claude-3-haiku\n}\n"
        + route("request.stream", "strategy cost\n    min_success_rate 95%")
    )
    base = p.default_route.settings
    assert (base.strategy, base.min_success_rate, base.min_samples, base.window_ms) == (
        "latency",
        0.9,
        50,
        3_600_000.0,
    )
    assert base.fallback == ("gemini", "claude")
    assert base.fallback_models == ("claude/claude-3-haiku-20240307",)
    r = p.routes[0].settings
    assert (r.strategy, r.min_success_rate, r.window_ms) == ("cost", 0.95, 3_600_000.0)


def test_a_route_window_warns_that_it_has_no_effect() -> None:
    """The live window is the engine's (the `defaults`' one): a route's `window` changes
    nothing, and the checker says so rather than accepting it silently."""
    loaded = compile_sources(
        [("a.policy", "defaults {\n  window 1h\n}\n" + route("request.stream", "window 10m"))]
    )
    assert [(d.code, d.span.line) for d in loaded.warnings if d.span] == [("W0510", 5)]
    in_defaults = compile_sources([("a.policy", "defaults { window 10m }")])
    assert [d.code for d in in_defaults.warnings] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("min_success_rate 0.8", "E0220"),
        ("min_samples 10%", "E0220"),
        ("window 24", "E0220"),
        ("min_success_rate 101%", "E0221"),
        ("min_samples 2.5", "E0222"),
        ("window 0ms", "E0223"),
        ("strategy cost\n  strategy latency", "E0203"),
        ("window 1h\n  window 2h", "E0203"),
        ("fallback claude\n  fallback gemini", "E0203"),
        ("strategy fastest", "E0210"),
        ("strategy latency(cost: 100%)", "E0211"),
        ("strategy weighted(speed: 100%)", "E0212"),
        ("strategy weighted(cost: 50%, cost: 50%)", "E0213"),
        ("strategy weighted(cost: 1s)", "E0214"),
        ("strategy weighted(cost: $1)", "E0014"),  # the grammar takes numbers only
        ("strategy weighted(cost: 0%, latency: 0%)", "E0215"),
        ("strategy weighted(cost: 0, latency: 0)", "E0216"),
    ],
)
def test_settings_that_do_not_check(body: str, code: str) -> None:
    assert codes(f"defaults {{\n  {body}\n}}") == [code]
    # a route's `window` has no effect (W0510), whatever its value
    assert sorted(codes(route("request.stream", body))) == sorted(
        [code] + ["W0510"] * body.count("window")
    )


def test_an_overlarge_min_samples_is_an_error_not_a_crash() -> None:
    with pytest.raises(PolicyError) as info:
        compile_sources([("t.policy", "defaults {\n  min_samples 1" + "0" * 400 + "\n}")])
    assert [(d.severity, d.span.line if d.span else 0) for d in info.value.diagnostics] == [
        ("error", 2)
    ]


# ---------------------------------------------------------------- model references


def test_prefer_weights_and_candidates() -> None:
    p = program(
        route(
            "request.stream",
            "prefer claude/claude-3-haiku weight 3\n    prefer gemini weight 2\n"
            "    exclude gemini/gemini-1.0-pro",
        )
    )
    r = p.routes[0]
    assert [m.key for m in r.candidates] == [
        "claude/claude-3-haiku-20240307",
        "gemini/gemini-1.5-pro-latest",
        "gemini/gemini-1.5-flash-latest",
    ]
    assert r.weights["claude/claude-3-haiku-20240307"] == 3.0
    assert r.weights["gemini/gemini-1.5-pro-latest"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("prefer gemni/gemini-1.5-pro-latest", "E0240"),
        ("prefer gemini-1.5-pro-latest", "E0240"),
        ("exclude mistral", "E0240"),
        ("fallback claude, opnai", "E0240"),
        ("prefer gemini/gemini-2-ultra", "E0241"),
        ("exclude openai/gpt-5", "E0241"),
        ("prefer claude/claude-3-haiku\n    prefer claude/claude-3-haiku-20240307", "E0230"),
        ("prefer claude\n    prefer claude/claude-3-opus", "E0230"),
        ("prefer claude weight 2s", "E0231"),
        ("prefer claude weight 1h", "E0231"),
        ("prefer claude weight $1", "E0014"),  # the grammar takes numbers only
        ("prefer claude weight 0", "E0232"),
    ],
)
def test_model_references_that_do_not_check(body: str, code: str) -> None:
    assert codes(route("request.stream", body)) == [code]


def test_a_provider_then_one_of_its_models_is_fine_the_other_way_round() -> None:
    # a specific model first, then "the rest of the provider"
    program(route("request.stream", "prefer claude/claude-3-opus weight 5\n    prefer claude"))


def test_aliases_resolve() -> None:
    p = program(route("request.stream", "prefer claude/claude-3-5-sonnet"))
    assert [m.key for m in p.routes[0].candidates] == ["claude/claude-3-5-sonnet-20241022"]


# ---------------------------------------------------------------- limits


def test_every_limit_form_of_the_spec() -> None:
    p = program(
        "limit global 10000 per 1m burst 1000\n"
        "limit user 100 per 1m burst 10\n"
        "limit provider 1000 per 1m burst 100\n"
        "limit ip 50 per 1m burst 5\n"
        "limit model 500 per 1m\n"
        'limit user "vip-user" 1000 per 1m burst 100 until 2026-12-28\n'
        "limit user tokens 200k per 1m\n"
        "limit user spend $5 per 1d\n"
        'limit team = request.metadata.team 500 per 1m when request.metadata.tier == "free"\n'
    )
    assert [
        (lim.scope, lim.key, lim.unit, lim.amount, lim.window_ms, lim.burst) for lim in p.limits
    ] == [
        ("global", None, "requests", 10_000.0, 60_000.0, 1000.0),
        ("user", None, "requests", 100.0, 60_000.0, 10.0),
        ("provider", None, "requests", 1000.0, 60_000.0, 100.0),
        ("ip", None, "requests", 50.0, 60_000.0, 5.0),
        ("model", None, "requests", 500.0, 60_000.0, 0.0),
        ("user", "vip-user", "requests", 1000.0, 60_000.0, 100.0),
        ("user", None, "tokens", 200_000.0, 60_000.0, 0.0),
        ("user", None, "spend", 5.0, 86_400_000.0, 0.0),
        ("team", None, "requests", 500.0, 60_000.0, 0.0),
    ]
    assert p.limits[5].until == 1_798_416_000.0
    assert p.limits[8].key_fn is not None and p.limits[8].when is not None


def test_an_expired_keyed_limit_is_allowed() -> None:
    program('limit user "old" 10 per 1m until 2001-01-01')


def test_a_named_scope_may_key_on_any_string_field() -> None:
    program("limit per_user = request.user 10 per 1m\nlimit per_model = request.model 10 per 1m")


def test_a_spend_limit_may_have_a_money_burst() -> None:
    p = program("limit user spend $5 per 1d burst $1")
    assert p.limits[0].burst == 1.0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("limit usr 100 per 1m", "E0400"),
        ("limit team 100 per 1m", "E0400"),
        ("limit user = request.user 100 per 1m", "E0401"),
        ("limit big = request.input_tokens 100 per 1m", "E0402"),
        ("limit flag = request.stream 100 per 1m", "E0402"),
        ("limit team = request.teem 100 per 1m", "E0324"),
        ('limit global "k" 100 per 1m', "E0404"),
        ('limit user "" 100 per 1m', "E0405"),
        ('limit ip "   " 100 per 1m', "E0405"),
        ("limit user 100 per 60", "E0410"),
        ("limit user 100 per 5%", "E0410"),
        ("limit user 100 per $1", "E0014"),  # the grammar takes numbers only
        ("limit user 100 per 0s", "E0411"),
        ("limit user spend 5 per 1d", "E0412"),
        ("limit user $5 per 1d", "E0412"),
        ("limit user tokens $5 per 1d", "E0412"),
        ("limit user 10% per 1d", "E0412"),
        ("limit user 100 per 1m burst 2s", "E0412"),
        ("limit user 0 per 1m", "E0413"),
        ("limit user spend $0 per 1d", "E0413"),
    ],
)
def test_limits_that_do_not_check(text: str, code: str) -> None:
    assert codes(text) == [code]


def test_a_zero_burst_is_allowed() -> None:
    program("limit user 100 per 1m burst 0")


def test_keyed_provider_limits_name_a_provider() -> None:
    """SPEC §2: an unknown provider is a compile-time error with a did-you-mean."""
    program('limit provider "openai" 100 per 1m')
    (diag,) = diagnostics(("t.policy", 'limit provider "opnai" 100 per 1m'))
    assert diag.severity == "error"
    assert diag.span is not None and diag.span.text() == '"opnai"'
    assert diag.help is not None and "did you mean `openai`?" in diag.help


def test_keyed_model_limits_name_a_model() -> None:
    """The limiter keys model limits by `provider/id`: a bare id would never match."""
    program('limit model "openai/gpt-4o" 100 per 1m')
    (diag,) = diagnostics(("t.policy", 'limit model "gpt-4o" 100 per 1m'))
    assert diag.span is not None and diag.span.text() == '"gpt-4o"'
    assert diag.help is not None and "`openai/gpt-4o`" in diag.help


def test_keyed_model_limits_resolve_aliases() -> None:
    p = program('limit model "claude/claude-3-haiku" 100 per 1m')
    assert p.limits[0].key == "claude/claude-3-haiku-20240307"


# ---------------------------------------------------------------- structure across files


def test_duplicate_route_names_across_files() -> None:
    (diag,) = diagnostics(
        ("a.policy", "route fast when request.stream {}\n"),
        ("b.policy", "# second file\n\nroute  fast when request.requires_json {}\n"),
    )
    assert diag.code == "E0202"
    assert diag.span is not None
    assert diag.span.location() == "b.policy:3:8"
    assert diag.help == "the first is at a.policy:1:7; rename one"


def test_route_names_may_repeat_across_kinds() -> None:
    program("route user when request.stream {}\nlimit user 10 per 1m")


def test_two_defaults_blocks() -> None:
    (diag,) = diagnostics(("t.policy", "defaults {}\nroute r {}\ndefaults {\n}\n"))
    assert (diag.code, diag.span.location() if diag.span else None) == ("E0201", "t.policy:3:1")
    assert diag.help == "merge it into the `defaults` at t.policy:1:1"


def test_two_defaults_blocks_across_files() -> None:
    (diag,) = diagnostics(("a.policy", "defaults {}"), ("b.policy", "\ndefaults { window 1h }"))
    assert diag.code == "E0201"
    assert diag.span is not None and diag.span.location() == "b.policy:2:1"
    assert diag.help == "merge it into the `defaults` at a.policy:1:1"


def test_routes_keep_file_then_statement_order() -> None:
    p = program(
        "route a1 when request.stream {}\nroute a2 when request.requires_tools {}", "route b1 {}"
    )
    assert [r.name for r in p.routes] == ["a1", "a2", "b1"]
    assert p.files == ("a.policy", "b.policy", "design-catalog.policy")


def _copy_catalog(directory: Path, name: str) -> Path:
    target = directory / name
    target.write_bytes(DESIGN_CATALOG.read_bytes())
    return target


def test_catalog_mismatch_across_files(tmp_path: Path) -> None:
    _copy_catalog(tmp_path, "models.yaml")
    _copy_catalog(tmp_path, "other.yaml")
    with pytest.raises(PolicyError) as info:
        compile_sources(
            [("a.policy", 'catalog "models.yaml"\n'), ("b.policy", '\ncatalog "other.yaml"\n')],
            [tmp_path / "a.policy", tmp_path / "b.policy"],
        )
    (diag,) = info.value.diagnostics
    assert diag.code == "E0204"
    assert diag.span is not None and diag.span.location() == "b.policy:2:9"
    assert diag.help == "`catalog` is already set to `models.yaml` at a.policy:1:1"


def test_the_same_catalog_named_twice_is_fine(tmp_path: Path) -> None:
    _copy_catalog(tmp_path, "models.yaml")
    (tmp_path / "sub").mkdir()
    loaded = compile_sources(
        [("a.policy", 'catalog "models.yaml"\n'), ("b.policy", 'catalog "../models.yaml"\n')],
        [tmp_path / "a.policy", tmp_path / "sub" / "b.policy"],
    )
    assert len(loaded.program.catalog.models) == 11


def test_the_packaged_catalog_is_the_default() -> None:
    catalog = loader.compile_sources([("a.policy", "route r {}")]).program.catalog
    assert len(catalog.models) == 117
    assert catalog.providers == ("anthropic", "gemini", "openai")
    assert catalog.source.endswith("models.json")
    assert program("route r {}").catalog.providers == ("claude", "gemini", "openai")  # design


def test_a_policy_checks_against_its_own_catalog(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "models:\n  - id: m1\n    provider: acme\n    context_window: 1000\n"
        "    max_tokens: 100\n    pricing: {input: 1, output: 1}\n"
        "    latency_prior_ms: {p50: 100, p95: 200}\n",
        encoding="utf-8",
    )
    sources = [("a.policy", 'catalog "tiny.yaml"\nroute r { prefer acme/m1 }\n')]
    compile_sources(sources, [tmp_path / "a.policy"])
    bad = [("a.policy", 'catalog "tiny.yaml"\nroute r { prefer claude }\n')]
    with pytest.raises(PolicyError) as info:
        compile_sources(bad, [tmp_path / "a.policy"])
    assert [d.code for d in info.value.diagnostics] == ["E0240"]


def test_errors_of_every_file_are_collected_and_sorted() -> None:
    found = diagnostics(
        ("b.policy", "limit usr 1 per 1m\nroute r when request.max_cost <= 2s {}\n"),
        ("a.policy", "route r {\n"),
        ("c.policy", "route r3 when request.regoin == null {}\n"),
    )
    assert [(d.code, d.span.location() if d.span else None) for d in found] == [
        ("E0013", "a.policy:1:10"),
        ("E0400", "b.policy:1:7"),
        ("E0333", "b.policy:2:34"),
        ("E0324", "c.policy:1:15"),
    ]


# ---------------------------------------------------------------- lint


def test_unreachable_routes_after_a_catch_all() -> None:
    loaded = compile_sources(
        [("t.policy", "route a when request.stream {}\nroute all {}\nroute b {}\nroute c {}\n")]
    )
    assert [(d.code, d.severity, d.span.text()) for d in loaded.warnings if d.span] == [
        ("W0500", "warning", "b"),
        ("W0500", "warning", "c"),
    ]
    assert [r.name for r in loaded.program.routes] == ["a", "all", "b", "c"]


def test_a_catch_all_in_an_earlier_file_shadows_later_files() -> None:
    loaded = compile_sources([("a.policy", "route all {}"), ("b.policy", "route b {}")])
    assert [(d.code, d.span.location()) for d in loaded.warnings if d.span] == [
        ("W0500", "b.policy:1:7")
    ]


@pytest.mark.parametrize(
    ("cond", "body"),
    [
        ("request.requires_vision", "prefer openai/gpt-3.5-turbo"),
        ("request.requires_vision == true", "prefer gemini/gemini-1.0-pro"),
        ("request.stream and request.requires_vision", "prefer openai/gpt-3.5-turbo"),
    ],
)
def test_capability_lint_warns(cond: str, body: str) -> None:
    loaded = compile_sources([("t.policy", route(cond, body))])
    assert [d.code for d in loaded.warnings] == ["W0501"]


@pytest.mark.parametrize(
    ("cond", "body"),
    [
        ("request.requires_vision", "prefer openai/gpt-3.5-turbo\n    prefer claude"),
        ("request.requires_vision", "strategy cost"),  # no prefer list: the whole catalog
        ("request.requires_vision or request.stream", "prefer openai/gpt-3.5-turbo"),
        ("request.requires_vision == false", "prefer openai/gpt-3.5-turbo"),
        ("request.requires_tools", "prefer openai/gpt-4o"),
    ],
)
def test_capability_lint_is_quiet(cond: str, body: str) -> None:
    program(route(cond, body))


@pytest.mark.parametrize(
    ("field", "model", "warned"),
    [
        ("requires_json_schema", "openai/gpt-audio", True),
        ("requires_pdf", "openai/gpt-audio", True),
        ("requires_reasoning", "openai/gpt-audio", True),
        ("requires_audio", "openai/o3", True),
        ("requires_audio", "openai/gpt-audio", False),
        ("requires_reasoning", "openai/o3", False),
    ],
)
def test_capability_lint_knows_every_required_capability(
    field: str, model: str, warned: bool
) -> None:
    """W0501 reads the request fields' capabilities from the schema's one list (`NEEDS`):
    pdf, audio, json_schema and reasoning too, not only vision, tools, json and stream (on
    the packaged catalog, whose models differ in them)."""
    packaged = Path(__file__).resolve().parent.parent / "policies" / "models.json"
    text = f'catalog "{packaged.as_posix()}"\n' + route(f"request.{field}", f"prefer {model}")
    loaded = compile_sources([("t.policy", text)])
    assert [d.code for d in loaded.warnings] == (["W0501"] if warned else [])


def test_warnings_do_not_block_and_errors_keep_them() -> None:
    text = route("request.requires_vision", "prefer openai/gpt-3.5-turbo")
    assert [d.code for d in compile_sources([("t.policy", text)]).warnings] == ["W0501"]
    found = diagnostics(("t.policy", text + "limit usr 1 per 1m\n"))
    assert [(d.code, d.severity) for d in found] == [("W0501", "warning"), ("E0400", "error")]


def test_the_packaged_default_policy_checks_clean() -> None:
    default = Path(__file__).parents[1] / "policies" / "default.policy"
    loaded = loader.compile_sources(
        [("default.policy", default.read_text(encoding="utf-8"))], [default]
    )
    assert loaded.warnings == ()


# ------------------------------------------ boundaries the mutation run found untested


@pytest.mark.parametrize("op", ["==", "!="])
def test_a_list_may_be_tested_for_equality_with_an_any_value(op: str) -> None:
    # only ordering a list is refused (E0331); `!=` is as fine as `==`
    program(route(f'request.metadata.team {op} ["a"]'))


@pytest.mark.parametrize("weight", ["1", "0.5", "1%"])
def test_a_small_positive_weight_is_fine(weight: str) -> None:
    p = program(route("request.stream", f"prefer claude weight {weight}\n    prefer gemini"))
    assert len(p.routes) == 1


@pytest.mark.parametrize("window", ["1ms", "1s"])
def test_the_shortest_window_is_fine(window: str) -> None:
    p = program(f"defaults {{\n    window {window}\n}}\n")
    assert p.default_route.settings.window_ms == {"1ms": 1.0, "1s": 1000.0}[window]


def test_a_cooldown_compiles_to_its_failures_and_duration() -> None:
    p = program("defaults {\n  cooldown after 1 failures for 1ms\n}\n")
    settings = p.default_route.settings
    assert (settings.cooldown_failures, settings.cooldown_ms) == (1, 1.0)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            "cooldown after 0 failures for 30s",
            "E0224",
            "a cooldown counts consecutive failures: a whole number from 1",
        ),
        (
            "cooldown after 2.5 failures for 30s",
            "E0224",
            "a cooldown counts consecutive failures: a whole number from 1",
        ),
        ("cooldown after 3s failures for 30s", "E0224", None),
        (
            "cooldown after 3 failures for 0s",
            "E0225",
            "a cooldown lasts a duration longer than zero",
        ),
        ("cooldown after 3 failures for 5", "E0225", None),
    ],
)
def test_cooldowns_that_do_not_check(body: str, code: str, message: str | None) -> None:
    found = diagnostics(("t.policy", f"defaults {{\n  {body}\n}}"))
    assert [d.code for d in found] == [code]
    if message is not None:
        assert found[0].message == message
        assert found[0].help == "for example `cooldown after 3 failures for 30s`"


def test_an_unknown_provider_key_is_e0406() -> None:
    assert codes('limit provider "opnai" 100 per 1m') == ["E0406"]


@pytest.mark.parametrize(
    ("text", "help_text"),
    [
        ("limit usr 100 per 1m", "did you mean `user`?"),
        (
            "limit team 100 per 1m",
            "scopes: `global`, `user`, `ip`, `provider`, `model`; a named scope needs a key:"
            " `limit team = request.metadata.team …`",
        ),
    ],
)
def test_an_unknown_scope_suggests_a_scope_or_a_key(text: str, help_text: str) -> None:
    (diag,) = diagnostics(("t.policy", text))
    assert (diag.code, diag.help) == ("E0400", help_text)


@pytest.mark.parametrize(
    ("mode", "help_text"),
    [
        ("opn", "did you mean `open`?"),
        ("closd", "did you mean `closed`?"),
        ("maybe", "`open` allows requests while the store is down, `closed` denies them"),
    ],
)
def test_an_unknown_on_store_error_mode(mode: str, help_text: str) -> None:
    (diag,) = diagnostics(("t.policy", f"defaults {{\n  on_store_error {mode}\n}}"))
    assert (diag.code, diag.message, diag.help) == (
        "E0226",
        f"`on_store_error` is `open` or `closed`, not `{mode}`",
        help_text,
    )


def test_looking_for_a_number_in_a_string_is_e0342() -> None:
    assert codes(route("5 in request.region")) == ["E0342"]


@pytest.mark.parametrize(
    ("text", "help_text"),
    [
        (route("request"), "for example `request.region`"),
        ("route r when request.stream {\n    require model\n}\n", "for example `model.regions`"),
    ],
)
def test_a_bare_root_needs_a_field(text: str, help_text: str) -> None:
    (diag,) = diagnostics(("t.policy", text))
    assert (diag.code, diag.help) == ("E0322", help_text)


def test_factor_weights_may_not_mix_percentages_and_numbers() -> None:
    assert codes(route("request.stream", "strategy weighted(cost: 50%, latency: 50)")) == ["E0217"]


@pytest.mark.parametrize(
    ("text", "code", "help_text"),
    [
        (
            'limit provider "zzzz" 100 per 1m',
            "E0406",
            "providers in the catalog: `claude`, `gemini`, `openai`",
        ),
        (
            'limit model "zzzz/qqqq" 100 per 1m',
            "E0407",
            "a model limit's key is `provider/model`, e.g. `openai/gpt-4o`",
        ),
    ],
)
def test_an_unknown_key_with_no_close_name_says_what_keys_are(
    text: str, code: str, help_text: str
) -> None:
    (diag,) = diagnostics(("t.policy", text))
    assert (diag.code, diag.help) == (code, help_text)


# ---------------------------------------------------------------- measured signals


@pytest.mark.parametrize(
    "condition",
    [
        "model.p95 > 3s",
        "model.p50 >= 800ms and model.samples > 20",
        "model.success_rate < 90% or model.p95 > model.latency_p95",
        "not (model.success_rate >= 99.5%)",
    ],
)
def test_measured_attributes_type_in_require_and_degraded_when(condition: str) -> None:
    defaults = f"defaults {{\n    degraded when {condition}\n}}\n"
    text = defaults + f"route r {{\n    require {condition}\n}}\n"
    compile_sources([("t.policy", text)])  # no error


@pytest.mark.parametrize(
    ("condition", "path"),
    [
        ("model.p95 > request.max_latency", "request.max_latency"),
        ("model.p95 > 3s and not request.stream", "request.stream"),
        ('model.provider in [request.metadata.team, "x"]', "request.metadata.team"),
    ],
)
def test_degraded_when_cannot_read_the_request(condition: str, path: str) -> None:
    (diag,) = diagnostics(("t.policy", f"defaults {{\n    degraded when {condition}\n}}"))
    assert (diag.code, diag.message, diag.span.text()) == (
        "E0227",
        f"`degraded when` cannot read `{path}`",
        path,
    )


@pytest.mark.parametrize(
    ("condition", "code"),
    [
        ("model.p95 > 80%", "E0333"),
        ("model.success_rate > 3s", "E0333"),
        ("model.samples > $1", "E0333"),
        ("model.p95", "E0300"),
    ],
)
def test_measured_attributes_have_their_units(condition: str, code: str) -> None:
    assert codes(f"route r {{\n    require {condition}\n}}\n") == [code]

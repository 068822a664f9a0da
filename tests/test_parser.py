"""The parser: policy text -> AST (engine/language/ast.py dataclasses), nothing else.

Shape tests compare whole nodes with spans stripped (`strip`), so a test says exactly which
nodes a statement becomes; span tests look at lines and columns separately. A property test
holds `parse` to its contract on arbitrary text: it returns an AST or raises PolicyError,
never anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.diagnostics import PolicyError, Source, Span
from engine.language import ast
from engine.language.ast import Unit
from engine.language.parser import MAX_NESTING, MAX_SOURCE_BYTES, parse

REPO = Path(__file__).resolve().parent.parent

_NOWHERE = Source("<test>", "")
S = Span(_NOWHERE, 0, 0)  # every span, after `strip`


def strip(node: Any) -> Any:
    """The node with every span replaced by `S`, recursively (spans compare by offsets)."""
    if isinstance(node, Span):
        return S
    if isinstance(node, tuple):
        return tuple(strip(n) for n in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: strip(getattr(node, f.name)) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    return node


def statements(text: str) -> tuple[ast.Statement, ...]:
    return strip(parse(text, "t.policy").statements)


def one(text: str) -> Any:
    (stmt,) = statements(text)
    return stmt


def when(expr_text: str) -> ast.Expr:
    """The AST of a route condition."""
    route = one(f"route r when {expr_text} {{\n}}\n")
    assert isinstance(route, ast.Route)
    assert route.when is not None
    return route.when


# small constructors for expected nodes (spans are `S`)
def name(text: str) -> ast.Name:
    return ast.Name(text, S)


def path(dotted: str) -> ast.Path:
    return ast.Path(tuple(dotted.split(".")), S)


def lit(value: object, unit: Unit, text: str) -> ast.Literal:
    return ast.Literal(value, unit, S, text)


def string_(value: str) -> ast.Literal:
    return lit(value, Unit.STRING, f'"{value}"')


def ref(provider: str, model: str | None = None) -> ast.ModelRef:
    return ast.ModelRef(name(provider), None if model is None else name(model), S)


def cmp(op: str, left: ast.Expr, right: ast.Expr) -> ast.Compare:
    return ast.Compare(op, left, right, S, S)


def count(text: str, value: float) -> ast.Literal:
    return lit(value, Unit.COUNT, text)


TRUE = lit(True, Unit.BOOL, "true")


def codes(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse(text, "t.policy")
    return [d.code for d in info.value.diagnostics]


# ---------------------------------------------------------------- statement forms (SPEC §2)


def test_catalog_statement() -> None:
    assert one('catalog "models.yaml"  # relative to this file\n') == ast.CatalogStmt(
        lit("models.yaml", Unit.STRING, '"models.yaml"'), S
    )


def test_defaults_block() -> None:
    text = """
defaults {
    strategy weighted(latency: 60%, cost: 40%)
    min_success_rate 80%
    min_samples 100
    window 24h
    fallback claude, gemini, openai
}
"""
    assert one(text) == ast.Defaults(
        (
            ast.StrategySetting(
                name("weighted"),
                (
                    ast.Factor(name("latency"), lit(0.6, Unit.PERCENT, "60%"), S),
                    ast.Factor(name("cost"), lit(0.4, Unit.PERCENT, "40%"), S),
                ),
                S,
            ),
            ast.ValueSetting(name("min_success_rate"), lit(0.8, Unit.PERCENT, "80%"), S),
            ast.ValueSetting(name("min_samples"), count("100", 100.0), S),
            ast.ValueSetting(name("window"), lit(86_400_000.0, Unit.DURATION, "24h"), S),
            ast.FallbackSetting((ref("claude"), ref("gemini"), ref("openai")), S),
        ),
        S,
    )


def test_empty_defaults_and_empty_file() -> None:
    assert one("defaults {}") == ast.Defaults((), S)
    assert statements("") == ()
    assert statements("# only a comment\n\n") == ()


def test_route_with_strategy_and_weighted_prefers() -> None:
    text = """
route vision when request.requires_vision {
    strategy model-specific
    prefer claude/claude-3-5-sonnet-20241022  weight 40
    prefer gemini/gemini-1.5-pro-latest       weight 35
}
"""
    assert one(text) == ast.Route(
        name("vision"),
        path("request.requires_vision"),
        (
            ast.StrategySetting(name("model-specific"), (), S),
            ast.Prefer(ref("claude", "claude-3-5-sonnet-20241022"), count("40", 40.0), S),
            ast.Prefer(ref("gemini", "gemini-1.5-pro-latest"), count("35", 35.0), S),
        ),
        S,
    )


def test_route_with_require() -> None:
    text = 'route eu_only when request.region == "eu" {\n  require model.regions contains "eu"\n}'
    assert one(text) == ast.Route(
        name("eu_only"),
        cmp("==", path("request.region"), string_("eu")),
        (ast.Require(cmp("contains", path("model.regions"), string_("eu")), S),),
        S,
    )


def test_route_without_when_and_every_body_item() -> None:
    text = """
route everything {
    strategy round-robin
    prefer openai
    exclude openai/gpt-4, claude/claude-3-opus
    fallback gemini/gemini-1.5-flash-latest, claude
    min_samples 10
}
"""
    assert one(text) == ast.Route(
        name("everything"),
        None,
        (
            ast.StrategySetting(name("round-robin"), (), S),
            ast.Prefer(ref("openai"), None, S),
            ast.Exclude((ref("openai", "gpt-4"), ref("claude", "claude-3-opus")), S),
            ast.FallbackSetting((ref("gemini", "gemini-1.5-flash-latest"), ref("claude")), S),
            ast.ValueSetting(name("min_samples"), count("10", 10.0), S),
        ),
        S,
    )


def _limit(**overrides: Any) -> ast.Limit:
    fields: dict[str, Any] = {
        "scope": name("user"),
        "key_expr": None,
        "key": None,
        "unit": None,
        "amount": count("100", 100.0),
        "window": lit(60_000.0, Unit.DURATION, "1m"),
        "burst": None,
        "when": None,
        "until": None,
        "span": S,
    }
    fields.update(overrides)
    return ast.Limit(**fields)


def test_limit_with_burst() -> None:
    assert one("limit global 10000 per 1m burst 1000") == _limit(
        scope=name("global"), amount=count("10000", 10_000.0), burst=count("1000", 1000.0)
    )


@pytest.mark.parametrize("scope", ["user", "provider", "ip", "model"])
def test_limit_standard_scopes(scope: str) -> None:
    assert one(f"limit {scope} 100 per 1m") == _limit(scope=name(scope))


def test_keyed_limit_with_until() -> None:
    assert one('limit user "vip-user" 1000 per 1m burst 100 until 2026-12-28') == _limit(
        key=string_("vip-user"),
        amount=count("1000", 1000.0),
        burst=count("100", 100.0),
        until=lit(1_798_416_000.0, Unit.DATE, "2026-12-28"),
    )


def test_tokens_and_spend_limits() -> None:
    assert one("limit user tokens 200k per 1m") == _limit(
        unit=name("tokens"), amount=count("200k", 200_000.0)
    )
    assert one("limit user spend $5 per 1d") == _limit(
        unit=name("spend"),
        amount=lit(5.0, Unit.MONEY, "$5"),
        window=lit(86_400_000.0, Unit.DURATION, "1d"),
    )
    assert one("limit user requests 100 per 1m") == _limit(unit=name("requests"))


def test_named_scope_with_key_expression_and_when() -> None:
    text = 'limit team = request.metadata.team  500 per 1m when request.metadata.tier == "free"'
    assert one(text) == _limit(
        scope=name("team"),
        key_expr=path("request.metadata.team"),
        amount=count("500", 500.0),
        when=cmp("==", path("request.metadata.tier"), string_("free")),
    )


def test_spec_example_parses_to_its_statements() -> None:
    golden = Path(__file__).parent / "golden" / "check" / "spec_example.policy"
    stmts = parse(golden.read_text(encoding="utf-8"), golden.name).statements
    kinds = [type(s).__name__ for s in stmts]
    assert kinds == ["CatalogStmt", "Defaults"] + ["Route"] * 4 + ["Limit"] * 8
    routes = [s for s in stmts if isinstance(s, ast.Route)]
    assert [r.name.text for r in routes] == ["vision", "budget", "fast", "eu_only"]
    limits = [s for s in stmts if isinstance(s, ast.Limit)]
    assert [lim.scope.text for lim in limits] == [
        *("global", "user", "provider", "ip", "user", "user", "user", "team"),
    ]


# ---------------------------------------------------------------- literals


def _literal(text: str) -> ast.Literal:
    """A literal as the right side of a comparison."""
    node = when(f"request.x == {text}")
    assert isinstance(node, ast.Compare)
    assert isinstance(node.right, ast.Literal)
    return node.right


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("250ms", 250.0, Unit.DURATION),
        ("2s", 2000.0, Unit.DURATION),
        ("1m", 60_000.0, Unit.DURATION),
        ("24h", 86_400_000.0, Unit.DURATION),
        ("1d", 86_400_000.0, Unit.DURATION),
        ("1.5s", 1500.0, Unit.DURATION),
        ("$0.001", 0.001, Unit.MONEY),
        ("$5", 5.0, Unit.MONEY),
        ("$1_000", 1000.0, Unit.MONEY),
        ("80%", 0.8, Unit.PERCENT),
        ("100%", 1.0, Unit.PERCENT),
        ("200k", 200_000.0, Unit.COUNT),
        ("1.5M", 1_500_000.0, Unit.COUNT),
        ("100", 100.0, Unit.COUNT),
        ("1_000", 1000.0, Unit.COUNT),
        ("0.5", 0.5, Unit.COUNT),
        ("true", True, Unit.BOOL),
        ("false", False, Unit.BOOL),
        ("null", None, Unit.NULL),
        ('"eu"', "eu", Unit.STRING),
        ('""', "", Unit.STRING),
    ],
)
def test_literal_normalisation(text: str, value: object, unit: Unit) -> None:
    got = _literal(text)
    assert (got.value, got.unit, got.text) == (value, unit, text)
    assert type(got.value) is type(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"back\\slash"', "back\\slash"),
        (r'"line\nbreak"', "line\nbreak"),
        (r'"tab\there"', "tab\there"),
        ('"# not a comment"', "# not a comment"),
    ],
)
def test_string_unescaping(text: str, value: str) -> None:
    got = _literal(text)
    assert got.value == value
    assert got.text == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-28", dt.datetime(2026, 12, 28, tzinfo=dt.UTC)),
        ("2026-12-28T18:00", dt.datetime(2026, 12, 28, 18, 0, tzinfo=dt.UTC)),
        ("2026-12-28T18:00Z", dt.datetime(2026, 12, 28, 18, 0, tzinfo=dt.UTC)),
        ("2026-12-28T18:00:30Z", dt.datetime(2026, 12, 28, 18, 0, 30, tzinfo=dt.UTC)),
        ("2026-12-28T18:00+02:00", dt.datetime(2026, 12, 28, 16, 0, tzinfo=dt.UTC)),
    ],
)
def test_dates_are_epoch_seconds_utc(text: str, expected: dt.datetime) -> None:
    limit = one(f'limit user "vip" 10 per 1m until {text}')
    assert limit.until == lit(expected.timestamp(), Unit.DATE, text)
    assert limit.until.value == expected.timestamp()


def test_list_literals() -> None:
    assert when('request.region in ["eu", "us"]') == cmp(
        "in", path("request.region"), ast.ListLit((string_("eu"), string_("us")), S)
    )
    assert when("request.region in []") == cmp("in", path("request.region"), ast.ListLit((), S))


# ---------------------------------------------------------------- spans


def test_spans_of_a_route_name_and_a_literal() -> None:
    text = "# header\n\nroute   fast when request.max_latency <= 2s {\n}\n"
    route = parse(text, "t.policy").statements[0]
    assert isinstance(route, ast.Route)
    assert (route.name.span.line, route.name.span.col) == (3, 9)
    assert route.name.span.text() == "fast"
    assert route.name.span.location() == "t.policy:3:9"
    assert isinstance(route.when, ast.Compare)
    right = route.when.right
    assert isinstance(right, ast.Literal)
    assert (right.span.line, right.span.col, right.span.text()) == (3, 42, "2s")
    assert route.when.op_span.text() == "<="
    assert route.when.span.text() == "request.max_latency <= 2s"
    assert route.span.text() == "route   fast when request.max_latency <= 2s {\n}"


def test_spans_of_limit_parts() -> None:
    text = 'limit user "vip-user"\n    1000 per 1m until 2026-12-28\n'
    limit = parse(text, "t.policy").statements[0]
    assert isinstance(limit, ast.Limit)
    assert limit.key is not None and limit.until is not None
    assert (limit.key.span.line, limit.key.span.col) == (1, 12)
    assert (limit.amount.span.line, limit.amount.span.col) == (2, 5)
    assert limit.until.span.text() == "2026-12-28"
    assert (limit.until.span.line, limit.until.span.col) == (2, 23)


def test_spans_of_model_refs_and_factors() -> None:
    text = "defaults {\n  strategy weighted(latency: 60%, cost: 40%)\n  fallback claude, gemini\n}"
    defaults = parse(text, "t.policy").statements[0]
    assert isinstance(defaults, ast.Defaults)
    strategy, fallback = defaults.settings
    assert isinstance(strategy, ast.StrategySetting)
    assert isinstance(fallback, ast.FallbackSetting)
    assert strategy.factors[1].span.text() == "cost: 40%"
    assert strategy.factors[1].weight.span.text() == "40%"
    assert [r.span.text() for r in fallback.refs] == ["claude", "gemini"]
    assert (fallback.refs[1].span.line, fallback.refs[1].span.col) == (3, 20)


def test_the_file_node() -> None:
    text = "route r {\n}\n"
    policy = parse(text, "dir/x.policy")
    assert policy.name == "dir/x.policy"
    assert (policy.span.start, policy.span.end) == (0, len(text))
    assert policy.span.source.name == "dir/x.policy"


# ---------------------------------------------------------------- expressions


def test_precedence_not_binds_tighter_than_and_tighter_than_or() -> None:
    assert when("a or b and not c") == ast.BoolOp(
        "or", (path("a"), ast.BoolOp("and", (path("b"), ast.Not(path("c"), S)), S)), S
    )


def test_chains_of_and_or_are_flat() -> None:
    assert when("a and b and c") == ast.BoolOp("and", (path("a"), path("b"), path("c")), S)
    assert when("a or b or c") == ast.BoolOp("or", (path("a"), path("b"), path("c")), S)


def test_parentheses_group() -> None:
    assert when("(a or b) and c") == ast.BoolOp(
        "and", (ast.BoolOp("or", (path("a"), path("b")), S), path("c")), S
    )
    assert when("((request.stream))") == path("request.stream")


def test_not_applies_to_a_comparison() -> None:
    assert when('not request.region == "eu"') == ast.Not(
        cmp("==", path("request.region"), string_("eu")), S
    )
    assert when("not not a") == ast.Not(ast.Not(path("a"), S), S)


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "in", "contains"])
def test_comparison_operators(op: str) -> None:
    assert when(f"request.x {op} request.y") == cmp(op, path("request.x"), path("request.y"))


def test_not_in() -> None:
    assert when('request.region not in ["eu"]') == cmp(
        "not in", path("request.region"), ast.ListLit((string_("eu"),), S)
    )
    # several spaces or a tab between the words
    assert when('request.region not \t in ["eu"]') == cmp(
        "not in", path("request.region"), ast.ListLit((string_("eu"),), S)
    )


def test_names_that_start_like_keywords_are_names() -> None:
    assert when("request.in_eu and request.notes") == ast.BoolOp(
        "and", (path("request.in_eu"), path("request.notes")), S
    )
    assert when("request.region not in request.tags_in") == cmp(
        "not in", path("request.region"), path("request.tags_in")
    )
    assert when("not inbox") == ast.Not(path("inbox"), S)


def test_contains() -> None:
    assert when('request.tags contains "x"') == cmp("contains", path("request.tags"), string_("x"))


def test_bare_literal_conditions_are_literal_nodes() -> None:
    """A condition that is only a literal is a Literal node, never a lark token."""
    assert when("true") == TRUE
    assert when("(false)") == lit(False, Unit.BOOL, "false")
    route = one("route r when request.stream {\n  require false\n}")
    assert route.items == (ast.Require(lit(False, Unit.BOOL, "false"), S),)
    limit = one("limit user 100 per 1m when true")
    assert limit.when == TRUE


def test_comments_are_ignored_everywhere() -> None:
    text = """# leading comment
route r # after the name
  when request.stream # inside the condition
    and request.requires_json # more
{ # after the brace
  strategy cost # trailing
  # a line of its own
} # after the block
limit user 100 per 1m # after a limit
"""
    route, limit = statements(text)
    assert route == ast.Route(
        name("r"),
        ast.BoolOp("and", (path("request.stream"), path("request.requires_json")), S),
        (ast.StrategySetting(name("cost"), (), S),),
        S,
    )
    assert limit == _limit()


def test_line_breaks_anywhere() -> None:
    broken = """
limit
  user
  "vip"
  1000
  per
  1m
  burst
  10
  when
  request.region
  ==
  "eu"
route
  r
  when
  request.region
  in
  [
    "eu",
    "us"
  ]
  and
  not
  request.stream
{
  prefer
    claude
    /
    claude-3-haiku
    weight
    5
  strategy
    weighted
    (
      latency
      :
      100%
    )
}
"""
    one_line = (
        'limit user "vip" 1000 per 1m burst 10 when request.region == "eu" '
        'route r when request.region in ["eu", "us"] and not request.stream '
        "{ prefer claude/claude-3-haiku weight 5 strategy weighted(latency: 100%) }"
    )
    assert statements(broken) == statements(one_line)
    assert len(statements(one_line)) == 2


def test_not_in_across_a_line_break() -> None:
    """Line breaks are whitespace (grammar/policy.lark), also between `not` and `in`."""
    expected = cmp("not in", path("request.region"), ast.ListLit((string_("eu"),), S))
    assert when('request.region not\n    in ["eu"]') == expected
    assert when('request.region not # why\n    in ["eu"]') == expected


# comments between `not` and `in` in every shape the `NOT_IN` terminal must walk through:
# several `#` on a line, `#` separated by spaces, blank comment lines, comments with words
_COMMENT_SHAPES = ("#" * 200 + "\n", "# " * 200 + "\n", "#\n" * 200, "# # why\n  \n" * 200)


@pytest.mark.parametrize("comments", _COMMENT_SHAPES)
def test_many_comments_between_not_and_in(comments: str) -> None:
    expected = cmp("not in", path("request.region"), ast.ListLit((string_("eu"),), S))
    assert when(f'request.region not {comments}  in ["eu"]') == expected


def test_in_inside_a_comment_is_not_the_operator() -> None:
    """A comment runs to the end of its line, also after `not`: `in` there is comment text."""
    expected = cmp("not in", path("request.region"), ast.ListLit((string_("eu"),), S))
    assert when('request.region not # in or not in\n  in ["eu"]') == expected
    with pytest.raises(PolicyError) as err:
        parse('route r when request.region not # in ["eu"]\n{}\n', "t.policy")
    assert str(err.value).splitlines()[0] == "t.policy:1:29: error[E0014]: unexpected `not`"


def test_a_failed_not_in_after_many_comments_is_linear(tmp_path: Path) -> None:
    """`not` and 400 comments not followed by `in`: the lexer tries `NOT_IN` and fails.

    A terminal that can split `# # #` several ways tries 2^200 splits before failing (26
    were 13 s). Run in a subprocess so that such a regression fails on the timeout instead
    of hanging the suite; the timeout is only a guard, nothing here measures time.
    """
    text = "route r when request.user not " + "# " * 200 + "\n" + "#\n" * 200 + "  inx {}\n"
    (tmp_path / "t.policy").write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "check", "t.policy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "t.policy:1:27: error[E0014]: unexpected `not`"


def test_several_statements_in_file_order() -> None:
    stmts = statements("limit ip 1 per 1s\nroute a {}\nroute b {}\ndefaults {}\n")
    assert [type(s).__name__ for s in stmts] == ["Limit", "Route", "Route", "Defaults"]


# ---------------------------------------------------------------- errors at parse time


def test_syntax_errors_are_policy_errors_with_codes() -> None:
    assert codes('route r when request.region == "eu {\n}') == ["E0010"]
    assert codes("route r when request.max_cost <= $ {}") == ["E0011"]
    assert codes("route r when request.region == 'eu' {}") == ["E0012"]
    assert codes("route r when request.stream {") == ["E0013"]
    assert codes("route a {\nroute b {}") == ["E0014"]
    assert codes("route fast when request.max_latency <= 2x {}") == ["E0102"]
    assert codes('limit user "k" 1 per 1m until 2026-02-30') == ["E0103"]


def test_every_bad_literal_is_reported() -> None:
    text = "route a when request.x <= 2x {}\nroute b when request.y <= 3q {}\n"
    with pytest.raises(PolicyError) as info:
        parse(text, "t.policy")
    assert [(d.code, d.span.line if d.span else None) for d in info.value.diagnostics] == [
        ("E0102", 1),
        ("E0102", 2),
    ]


def test_unexpected_end_of_file_points_at_the_end() -> None:
    with pytest.raises(PolicyError) as info:
        parse("route r when request.stream {\n  strategy cost\n\n\n", "t.policy")
    (diag,) = info.value.diagnostics
    assert diag.code == "E0013"
    assert diag.span is not None
    assert (diag.span.line, diag.span.col) == (2, 16)


def test_size_limit() -> None:
    at_limit = "#" * (MAX_SOURCE_BYTES - 1) + "\n"
    assert parse(at_limit).statements == ()
    assert codes(at_limit + "#") == ["E0001"]
    # the limit is on UTF-8 bytes, not characters
    assert codes("# " + "é" * (MAX_SOURCE_BYTES // 2)) == ["E0001"]


def _depth_text(depth: int) -> str:
    return "route r when " + "not " * depth + "request.stream {}"


def test_nesting_limit() -> None:
    assert isinstance(parse(_depth_text(MAX_NESTING)).statements[0], ast.Route)
    assert codes(_depth_text(MAX_NESTING + 1)) == ["E0002"]
    assert codes(_depth_text(5000)) == ["E0002"]
    lists = "route r when request.region in " + "[" * 5000 + "]" * 5000 + " {}"
    assert codes(lists) == ["E0002"]
    ors = "route r when " + "(request.stream or " * 5000 + "true" + ")" * 5000 + " {}"
    assert codes(ors) == ["E0002"]


def test_deep_parentheses_parse_without_a_nesting_error() -> None:
    """Parentheses only group: 5,000 of them around one name parse to that name."""
    text = "route r when " + "(" * 5000 + "request.stream" + ")" * 5000 + " {}"
    (route,) = parse(text).statements
    assert isinstance(route, ast.Route)
    assert strip(route.when) == path("request.stream")


# ---------------------------------------------------------------- arbitrary text

_TOKENS = [
    *("route", "r", "when", "request.stream", "request.region", "model.regions", "require"),
    *("prefer", "claude/claude-3-haiku", "weight", "exclude", "fallback", "strategy"),
    *("weighted", "(", "latency", ":", "60%", ",", ")", "defaults", "{", "}", "[", "]"),
    *("limit", "user", "global", "team", "=", "per", "1m", "burst", "until", "2026-02-30"),
    *("2026-12-28T18:00Z", "tokens", "spend", "$5", "$", "200k", "1.5M", "2x", "0"),
    *("==", "<=", "in", "not in", "not", "contains", "and", "or", "true", "false", "null"),
    *('"eu"', '"unterminated', "#", "\n", " ", "catalog", '"models.yaml"', "9" * 400),
]


def _no_lark_objects(node: Any) -> None:
    """Every value in the AST is an AST node, a span or a plain value: no lark Token/Tree."""
    assert type(node).__module__.split(".")[0] != "lark", repr(node)
    if isinstance(node, tuple):
        for item in node:
            _no_lark_objects(item)
    elif dataclasses.is_dataclass(node) and not isinstance(node, Span | Source):
        for f in dataclasses.fields(node):
            _no_lark_objects(getattr(node, f.name))


def _parse_or_policy_error(text: str) -> None:
    try:
        policy = parse(text, "fuzz.policy")
    except PolicyError as err:
        assert err.diagnostics
        str(err)  # renders
        return
    _no_lark_objects(policy)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.printable, max_size=400))
def test_random_printable_text_raises_only_policy_errors(text: str) -> None:
    _parse_or_policy_error(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(_TOKENS) | st.text(alphabet=string.printable, max_size=3), max_size=40
    ).map(" ".join)
)
def test_random_token_soup_raises_only_policy_errors(text: str) -> None:
    _parse_or_policy_error(text)


# --------------------------------------------------------------------------- parser cache

CACHE_PROBE = """\
import sys
from engine.language import parser
text = open(sys.argv[1], encoding="utf-8").read()
print(repr(parser.parse(text, "p.policy")))
"""


def _parse_in_subprocess(tmp_path: Path, cache: str) -> str:
    policy = REPO / "examples" / "policies" / "tour.policy"
    done = subprocess.run(
        [sys.executable, "-c", CACHE_PROBE, str(policy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "POLICYCTL_CACHE_DIR": cache},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


PARSED_PROBE = """\
import sys
from engine.language import parser
text = open(sys.argv[1], encoding="utf-8").read()
if len(sys.argv) > 2:
    text += sys.argv[2]
policy = parser.parse(text, "p.policy", cache=True)
print(repr(policy))
print("parser built:", parser._lark.cache_info().misses)
"""


def _parsed_in_subprocess(tmp_path: Path, cache: str, extra: str = "") -> tuple[str, str]:
    policy = REPO / "examples" / "policies" / "tour.policy"
    done = subprocess.run(
        [sys.executable, "-c", PARSED_PROBE, str(policy), *([extra] if extra else [])],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "POLICYCTL_CACHE_DIR": cache},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    shown, built = done.stdout.rsplit("\n", 2)[:2]
    return shown, built


def test_a_parsed_file_is_read_back_without_building_the_parser(tmp_path: Path) -> None:
    """The second process to parse the same text reads its AST from the cache directory:
    the same AST, and the LALR parser is never built; another text (or a damaged file) is
    parsed again."""
    cache = tmp_path / "cache"
    uncached, built = _parsed_in_subprocess(tmp_path, "")
    assert built == "parser built: 1"
    assert _parsed_in_subprocess(tmp_path, str(cache)) == (uncached, "parser built: 1")
    (parsed,) = cache.glob("parsed-*")
    assert _parsed_in_subprocess(tmp_path, str(cache)) == (uncached, "parser built: 0")
    changed, built = _parsed_in_subprocess(tmp_path, str(cache), "\n# another text\n")
    assert built == "parser built: 1" and len(list(cache.glob("parsed-*"))) == 2
    assert changed != uncached
    assert _parsed_in_subprocess(tmp_path, str(cache), "\n# another text\n")[1].endswith("0")
    parsed.write_bytes(b"not a pickle\n")
    assert _parsed_in_subprocess(tmp_path, str(cache)) == (uncached, "parser built: 1")
    assert _parsed_in_subprocess(tmp_path, str(cache)) == (uncached, "parser built: 0")


def test_the_formatter_reads_comments_with_a_parse_cached(tmp_path: Path) -> None:
    text = "# a comment\nlimit global 10 per 1m  # another\n"
    env = {**os.environ, "POLICYCTL_CACHE_DIR": str(tmp_path / "cache")}
    probe = (
        "import sys\nfrom engine.language import parser\n"
        "parser.parse(sys.argv[1], 'p.policy', cache=True)\n"
        "print(len(parser.parse_with_comments(sys.argv[1], 'p.policy')[1]))\n"
    )
    for _ in range(2):  # the second run has the parse cached
        done = subprocess.run(
            [sys.executable, "-c", probe, text], capture_output=True, text=True,
            timeout=120, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "2\n"


def test_the_parser_cache_is_written_once_read_after_and_survives_damage(tmp_path: Path) -> None:
    """The first run writes the parser's tables to the cache directory (0700); the next
    runs read them and parse exactly as a run with no cache; a damaged or foreign file in
    its place is rebuilt silently, never an error."""
    cache = tmp_path / "cache"
    uncached = _parse_in_subprocess(tmp_path, "")
    assert not cache.exists()
    assert _parse_in_subprocess(tmp_path, str(cache)) == uncached
    (written,) = cache.iterdir()
    assert written.name.startswith("parser-") and written.stat().st_size > 1000
    assert cache.stat().st_mode & 0o777 == 0o700
    first = written.read_bytes()
    assert _parse_in_subprocess(tmp_path, str(cache)) == uncached  # read, not rewritten
    assert written.read_bytes() == first
    for damage in (b"", b"not a pickle\n", first[: len(first) // 2]):
        written.write_bytes(damage)
        assert _parse_in_subprocess(tmp_path, str(cache)) == uncached
        rebuilt = written.read_bytes()  # rebuilt and written again (pickles of sets differ)
        assert rebuilt.split(b"\n", 1)[0] == first.split(b"\n", 1)[0]
        assert _parse_in_subprocess(tmp_path, str(cache)) == uncached
        assert written.read_bytes() == rebuilt  # and that one is read, not rewritten


def test_no_cache_when_the_directory_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expected = _parse_in_subprocess(tmp_path, "")
    assert _parse_in_subprocess(tmp_path, str(blocker / "sub")) == expected


@pytest.mark.parametrize("blank_lines", [0, 2])
def test_end_of_file_in_crlf_text_is_placed_as_in_lf_text(blank_lines: int) -> None:
    """Text with CRLF line ends (`from_text`, an editor's buffer) is not newline-translated
    as a file is: the end of file is still after the last character, not after a `\\r` or
    on a blank line at the end (it was `2:19`, and `4:2` with blank lines after)."""
    body = "route a when request.stream {\n    strategy cost\n" + "\n" * blank_lines
    rendered = []
    for text in (body, body.replace("\n", "\r\n")):
        with pytest.raises(PolicyError) as info:
            parse(text, "x.policy")
        rendered.append(str(info.value))
    assert rendered[0].startswith("x.policy:2:18: error[E0013]: unexpected end of file")
    assert rendered[1] == rendered[0]


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.mark.parametrize("ch", BIDI)
@pytest.mark.parametrize(
    "where",
    [
        'route r when request.user == "a{}b" {{\n}}\n',  # in a string
        "route r {{\n    strategy cost # a{}b\n}}\n",  # in a comment
        "route r{} {{\n}}\n",  # in the code
    ],
)
def test_a_text_direction_control_anywhere_is_e0016_at_it(ch: str, where: str) -> None:
    """ "Trojan Source": each of the direction controls, in a string, a comment or the code,
    is E0016 at the character, named escaped; the file is not parsed further."""
    text = where.format(ch)
    with pytest.raises(PolicyError) as info:
        parse(text)
    (found,) = info.value.diagnostics
    assert found.code == "E0016"
    assert found.message.startswith(f"text direction control character `\\u{ord(ch):04x}` (")
    assert found.span is not None
    assert (found.span.start, found.span.end) == (text.index(ch), text.index(ch) + 1)
    assert found.help == "remove it; write the text without direction overrides"
    assert ch not in found.render()  # the source line shows `�`, not the control itself


def test_text_without_direction_controls_but_right_to_left_words_parses() -> None:
    """Hebrew and Arabic letters carry their own direction: no control is needed, none is
    refused."""
    policy = parse('route r when request.metadata.team == "צוות" or request.user == "فريق" {\n}\n')
    assert len(policy.statements) == 1

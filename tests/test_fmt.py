"""`policyctl fmt` and the formatter (engine/language/formatter.py).

- Golden files: `tests/golden/fmt/<case>.policy` formatted is exactly `<case>.expected`
  (`UPDATE_GOLDEN=1` rewrites them; read every change before committing it).
- Over every policy in the repository and the test corpus that parses (shipped policies,
  examples, `check` goldens, hostile inputs, the docs' ```policy blocks, the fmt goldens):
  formatting is idempotent, the output parses to the same AST (spans aside, literals as
  written), and where the policy compiles, to the same program: the same routes, candidates,
  settings and limits, and the same answers of every `when`, `require` and limit key
  function on the example requests.
- Shipped policies and the docs' policy blocks are formatted (CI runs this file).
- Properties (hypothesis): re-spacing and re-indenting a policy does not change its
  formatted text; comments inserted anywhere all survive, in order, idempotently.
- The command line, through real subprocesses: stdout, --check, --diff, -w (atomic, mode
  kept), standard input, the default directory, and parse errors reported as `check` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _golden import update_requested
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import policyctl

from engine.diagnostics import PolicyError
from engine.language import ast
from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.language.parser import parse, parse_with_comments
from engine.language.program import CompiledLimit, CompiledRoute, Program
from engine.routing.request import RequestError, env_of

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "fmt"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
POLICY_BLOCK = re.compile(r"^```policy[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
# shipped policies that are broken on purpose (the docs show their errors)
BROKEN = {"examples/policies/unclosed.policy"}
SHIPPED = sorted(
    [
        *(ROOT / "policies").glob("*.policy"),
        *(ROOT / "examples").glob("*/*.policy"),
        *(ROOT / "bench").glob("*.policy"),
    ]
)
CASES = sorted(p.stem for p in GOLDEN.glob("*.policy"))


QUOTED_BLOCK = re.compile(r"^````[^\n]*\n.*?^````$", re.M | re.S)


def _doc_blocks() -> list[tuple[str, str]]:
    """(page:line, text) of every ```policy block of README.md and docs/*.md, except one
    quoted inside a four-backtick block (docs/errors.md shows a catalogue file's shape)."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        quoted = [(m.start(), m.end()) for m in QUOTED_BLOCK.finditer(text)]
        for m in POLICY_BLOCK.finditer(text):
            if any(a <= m.start() < b for a, b in quoted):
                continue
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((f"{page.relative_to(ROOT)}:{line}", m.group(1)))
    return blocks


def _readable(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _corpus() -> list[tuple[str, str, Path | None]]:
    """(name, text, path) of every policy text here that parses."""
    files = [
        *SHIPPED,
        *sorted((ROOT / "tests" / "golden" / "check").glob("*.policy")),
        *sorted((ROOT / "tests" / "hostile" / "policies").glob("*.policy")),
        *sorted(GOLDEN.glob("*.policy")),
        *sorted(GOLDEN.glob("*.expected")),
    ]
    texts: list[tuple[str, str, Path | None]] = []
    for path in files:
        text = _readable(path)
        if text is not None:
            texts.append((str(path.relative_to(ROOT)), text, path))
    texts.extend((name, text, None) for name, text in _doc_blocks())
    parsed = []
    for name, text, path in texts:
        try:
            parse(text, name)
        except PolicyError:
            continue
        parsed.append((name, text, path))
    return parsed


CORPUS = _corpus()


def test_the_corpus_is_the_whole_repository() -> None:
    names = {name for name, _, _ in CORPUS}
    shipped = {str(p.relative_to(ROOT)) for p in SHIPPED} - BROKEN
    assert shipped <= names
    assert sum(1 for n in names if n.startswith("tests/golden/check/")) >= 60
    assert sum(1 for n in names if ".md:" in n) >= 8


# ---------------------------------------------------------------- sameness


def _bare(node: Any) -> Any:
    """An AST without its spans: what the text says, not where."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = [f.name for f in dataclasses.fields(node) if f.name not in ("span", "op_span")]
        return (type(node).__name__, *(_bare(getattr(node, name)) for name in fields))
    if isinstance(node, tuple):
        return tuple(_bare(item) for item in node)
    return node


def same_tree(before: str, after: str) -> None:
    assert _bare(parse(after).statements) == _bare(parse(before).statements)


def _requests() -> list[dict[str, Any]]:
    found = []
    for path in sorted((ROOT / "examples" / "requests").iterdir()):
        lines = path.read_text(encoding="utf-8").splitlines() if path.suffix == ".jsonl" else []
        bodies = [json.loads(line) for line in lines if line.strip()] or (
            [json.loads(path.read_text(encoding="utf-8"))] if path.suffix == ".json" else []
        )
        for body in bodies:
            try:
                found.append(env_of(body))
            except RequestError:  # a deliberately bad example request
                continue
    return found


REQUESTS = _requests()


def _route_shape(route: CompiledRoute) -> tuple[Any, ...]:
    return (
        route.name,
        route.when is None,
        tuple(m.key for m in route.candidates),
        dict(route.weights),
        tuple(m.key for m, _ in route.dropped),  # the reason quotes the source text
        len(route.requires),
        len(route.measured_requires),
        route.settings,
        dict(route.provider_rank),
        route.provider_order,
        dict(route.fallback_order),
        None
        if route.split is None
        else (route.split.experiment, route.split.key_text, route.split.bounds, route.split.arms),
        route.arm_of,
        route.shadow,
    )


def _limit_shape(limit: CompiledLimit) -> tuple[Any, ...]:
    return (
        limit.name, limit.scope, limit.key, limit.key_fn is None, limit.key_field, limit.unit,
        limit.amount, limit.window_ms, limit.burst, limit.when is None, limit.until,
    )  # fmt: skip


def _answers(program: Program) -> list[Any]:
    """What every compiled condition and key function says about every example request."""
    out: list[Any] = []
    for env in REQUESTS:
        for route in program.routes:
            out.append(None if route.when is None else route.when(env, None))
            for pred, _ in route.requires:
                out.extend(pred(env, program.model_attrs[m.key]) for m in route.candidates)
        for limit in program.limits:
            out.append(None if limit.when is None else limit.when(env, None))
            out.append(None if limit.key_fn is None else limit.key_fn(env, None))
    models = program.catalog.models
    for env in REQUESTS:  # policy-wide `require`s and `deny` rules
        for rule in program.denies:
            out.append(rule.when(env, None))
        for require in program.requires:
            out.append(None if require.when is None else require.when(env, None))
            out.extend(
                require.holds(env, {**program.model_attrs[m.key], **measured})
                for m in models
                for measured in MEASUREMENTS[:3]
            )
    for route in (*program.routes, program.default_route):  # no request: measurements
        rule = route.settings.degraded
        checks = [pred for pred, _ in route.measured_requires]
        if rule is not None:
            checks.append(rule.holds)
        out.extend(
            check({}, {**program.model_attrs[m.key], **measured})
            for check in checks
            for m in route.candidates
            for measured in MEASUREMENTS
        )
    return out


# measured attributes a health rule is asked about (`model.p50`, `.p95`, …)
MEASUREMENTS = [
    {"p50": p50, "p95": p95, "success_rate": rate, "samples": samples}
    for p50 in (400.0, 1500.0)
    for p95 in (900.0, 2600.0, 4000.0)
    for rate in (0.85, 0.99)
    for samples in (10.0, 100.0)
]


def same_program(before: Program, after: Program) -> None:
    assert before.catalog.digest == after.catalog.digest
    assert [_route_shape(r) for r in after.routes] == [_route_shape(r) for r in before.routes]
    assert _route_shape(after.default_route) == _route_shape(before.default_route)
    assert [_limit_shape(x) for x in after.limits] == [_limit_shape(x) for x in before.limits]
    assert [(r.when is None, r.reads_request, r.measured) for r in after.requires] == [
        (r.when is None, r.reads_request, r.measured) for r in before.requires
    ]
    assert [d.reason for d in after.denies] == [d.reason for d in before.denies]
    assert after.live_requires == before.live_requires
    assert _answers(after) == _answers(before)


def _compiled(name: str, text: str, path: Path | None) -> Program | None:
    try:
        return compile_sources([(name, text)], [path]).program
    except PolicyError:
        return None


@pytest.mark.parametrize("name,text,path", CORPUS, ids=[c[0] for c in CORPUS])
def test_idempotent_and_meaning_preserving(name: str, text: str, path: Path | None) -> None:
    once = format_text(text, name)
    assert format_text(once, name) == once
    same_tree(text, once)
    before = _compiled(name, text, path)
    if before is not None:
        after = _compiled(name, once, path)
        assert after is not None, "the formatted text no longer compiles"
        same_program(before, after)


def test_programs_are_compared_for_most_of_the_corpus() -> None:
    """The program comparison above is not vacuous: most of the shipped policies compile,
    and the comparison sees a changed condition."""
    compiled = [n for n, t, p in CORPUS if _compiled(n, t, p) is not None]
    assert {"policies/default.policy", "examples/policies/tour.policy"} <= set(compiled)
    assert len(compiled) >= 30
    tour = ROOT / "examples" / "policies" / "tour.policy"
    text = tour.read_text(encoding="utf-8")
    before = _compiled("tour.policy", text, tour)
    changed = _compiled("tour.policy", text.replace('== "support"', '!= "support"'), tour)
    assert before is not None and changed is not None
    with pytest.raises(AssertionError):
        same_program(before, changed)


# ---------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    text = (GOLDEN / f"{case}.policy").read_text(encoding="utf-8")
    expected_path = GOLDEN / f"{case}.expected"
    got = format_text(text, f"{case}.policy")
    if update_requested():
        expected_path.write_text(got, encoding="utf-8")
    assert got == expected_path.read_text(encoding="utf-8")
    assert format_text(got) == got
    same_tree(text, got)


def test_every_golden_case_has_its_expected_output() -> None:
    assert len(CASES) >= 8
    for case in CASES:
        assert (GOLDEN / f"{case}.expected").is_file(), case


# ---------------------------------------------------------------- shipped text is formatted


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_policies_are_formatted(path: Path) -> None:
    name = str(path.relative_to(ROOT))
    text = path.read_text(encoding="utf-8")
    if name in BROKEN:
        with pytest.raises(PolicyError):
            format_text(text, name)
        return
    assert format_text(text, name) == text, f"run `policyctl fmt -w {name}`"


def test_docs_policy_blocks_are_formatted() -> None:
    unformatted = [where for where, text in _doc_blocks() if format_text(text, where) != text]
    assert unformatted == [], "format these ```policy blocks as `policyctl fmt` prints them"


# ---------------------------------------------------------------- properties

# one token of policy text: a string, a comment, spaces, a line break with its indent, or
# anything else up to the next of those
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[ \t]+|\n[ \t]*|[^\s"#]+')
FORMATTED = sorted({format_text(text) for _, text, _ in CORPUS if text.strip()})


def _tokens(text: str) -> list[str]:
    tokens = TOKEN.findall(text)
    assert "".join(tokens) == text
    return tokens


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FORMATTED), st.data())
def test_respacing_and_reindenting_change_nothing(text: str, data: st.DataObject) -> None:
    tokens = _tokens(text)
    out = []
    for i, tok in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else "\n"
        if tok.startswith("\n"):  # a line's indentation
            out.append("\n" + data.draw(st.sampled_from(["", " ", "  ", "\t", "        "])))
        elif tok[0] in " \t":
            choices = [" ", "  ", "\t", "     "]
            if not following.startswith(("#", "\n")):  # a break would not make a blank line
                choices.append("\n  ")  # nor turn a trailing comment into an own-line one
            out.append(data.draw(st.sampled_from(choices)))
        else:
            out.append(tok)
    assert format_text("".join(out)) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FORMATTED), st.data())
def test_inserted_comments_all_survive_in_order(text: str, data: st.DataObject) -> None:
    lines = text.split("\n")
    numbered = []
    n = 0
    for line in lines:
        if data.draw(st.booleans()):  # an own-line comment before this line
            numbered.append(f"# note{n}")
            n += 1
        if line.strip() and "#" not in line and data.draw(st.booleans()):
            line += f"  # note{n}"
            n += 1
        numbered.append(line)
    commented = "\n".join(numbered)
    once = format_text(commented)
    assert format_text(once) == once
    same_tree(text, once)
    assert [int(x) for x in re.findall(r"# note(\d+)", once)] == list(range(n))


ATOMS = [
    "request.stream",
    "request.max_tokens > 10",
    '"support" in request.tags',
    'request.region not in ["eu", "us"]',
    'request.metadata.team == "a-rather-long-team-name-for-wrapping"',
    "model.context_window >= 16k",
    "(request.max_cost <= $0.01) == true",
]


def _combined(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"({e})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
    )


CONDITIONS = st.recursive(st.sampled_from(ATOMS), _combined, max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONDITIONS, CONDITIONS, CONDITIONS, st.data())
def test_generated_conditions_format_idempotently_to_the_same_tree(
    when: str, require: str, limit: str, data: st.DataObject
) -> None:
    """Random `and` / `or` / `not` / parentheses nests, long enough to be broken over lines,
    with comments after random words."""
    text = f"route r when {when} {{\n    require {require}\n}}\nlimit user 1 per 1m when {limit}\n"
    words = text.split(" ")
    n = 0
    for i in range(len(words) - 1):
        if not words[i].startswith('"') and data.draw(st.integers(0, 9)) == 0:
            words[i] += f" # note{n}\n"
            n += 1
    commented = " ".join(words)
    once = format_text(commented)
    assert format_text(once) == once
    same_tree(text, once)
    assert [int(x) for x in re.findall(r"# note(\d+)", once)] == list(range(n))


# ---------------------------------------------------------------- the command line

MESSY = "route a   when request.stream{strategy cost}\n"
NEAT = "route a when request.stream {\n    strategy cost\n}\n"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "policies" / "team").mkdir(parents=True)
    (tmp_path / "policies" / "neat.policy").write_text(NEAT)
    (tmp_path / "policies" / "team" / "messy.policy").write_text(MESSY)
    yield tmp_path


def test_prints_the_formatted_file(work: Path) -> None:
    run = policyctl(work, "fmt", "policies/team/messy.policy")
    assert (run.code, run.out, run.err) == (0, NEAT, "")
    assert (work / "policies" / "team" / "messy.policy").read_text() == MESSY


def test_reads_standard_input(work: Path) -> None:
    run = policyctl(work, "fmt", "-", stdin=MESSY)
    assert (run.code, run.out) == (0, NEAT)


def test_check_lists_the_files_that_would_change(work: Path) -> None:
    run = policyctl(work, "fmt", "--check")  # ./policies, at any depth
    assert (run.code, run.out, run.err) == (1, "policies/team/messy.policy\n", "")
    clean = policyctl(work, "fmt", "--check", "policies/neat.policy")
    assert (clean.code, clean.out) == (0, "")


def test_diff_prints_a_unified_diff(work: Path) -> None:
    run = policyctl(work, "fmt", "--diff", "policies")
    assert run.code == 1
    assert run.out == (
        "--- a/policies/team/messy.policy\n"
        "+++ b/policies/team/messy.policy\n"
        "@@ -1 +1,3 @@\n"
        "-route a   when request.stream{strategy cost}\n"
        "+route a when request.stream {\n"
        "+    strategy cost\n"
        "+}\n"
    )
    assert policyctl(work, "fmt", "--diff", "policies/neat.policy").code == 0


def test_write_rewrites_in_place_keeping_the_mode(work: Path) -> None:
    messy = work / "policies" / "team" / "messy.policy"
    messy.chmod(0o640)
    neat_mtime = (work / "policies" / "neat.policy").stat().st_mtime_ns
    run = policyctl(work, "fmt", "-w")
    assert (run.code, run.out, run.err) == (0, "", "")
    assert messy.read_text() == NEAT
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640
    assert (work / "policies" / "neat.policy").stat().st_mtime_ns == neat_mtime  # untouched
    assert sorted(p.name for p in messy.parent.iterdir()) == ["messy.policy"]  # no temp left
    assert policyctl(work, "fmt", "--check").code == 0


def test_a_parse_error_is_reported_as_check_does_and_nothing_is_written(work: Path) -> None:
    broken = work / "policies" / "broken.policy"
    broken.write_text("defaults {\n    strategy latency\n\nroute a when request.stream {\n}\n")
    fmt = policyctl(work, "fmt", "-w")
    check = policyctl(work, "check", "policies/broken.policy")
    assert fmt.code == check.code == 2
    assert fmt.err == check.err
    assert "policies/broken.policy:4:1: error[E0014]: unexpected `route`" in fmt.err
    assert (work / "policies" / "team" / "messy.policy").read_text() == MESSY  # not written
    for flag in ("--check", "--diff"):
        run = policyctl(work, "fmt", flag)
        assert (run.code, run.out, run.err) == (2, "", check.err)


def test_a_text_direction_control_is_refused_and_the_file_kept(work: Path) -> None:
    """A right-to-left override in a comment (E0016): fmt must not rewrite the file, not
    even to drop the character, so a reviewer sees the file as the parser would read it."""
    text = MESSY.replace("\n", "  # \u202ereview me\n", 1)
    messy = work / "policies" / "team" / "messy.policy"
    messy.write_text(text, encoding="utf-8")
    check = policyctl(work, "check", "policies/team/messy.policy")
    assert check.code == 2
    assert (
        "policies/team/messy.policy:1:49: error[E0016]: text direction control character `\\u202e`"
        in check.err
    )
    for flags in (("-w",), ("--check",), ("--diff",), ()):
        run = policyctl(work, "fmt", *flags)
        assert (run.code, run.out, run.err) == (2, "", check.err)
    assert messy.read_text(encoding="utf-8") == text


def test_bad_input_exits_2(work: Path) -> None:
    missing = policyctl(work, "fmt", "nowhere.policy")
    assert missing.code == 2
    assert "nowhere.policy: error[E0004]: no such file or directory" in missing.err
    stdin_w = policyctl(work, "fmt", "-w", "-", stdin=MESSY)
    assert stdin_w.code == 2
    assert "cannot write standard input" in stdin_w.err
    both = policyctl(work, "fmt", "--check", "--diff")
    assert both.code == 2
    assert "not allowed with argument" in both.err
    (work / "latin1.policy").write_bytes(b"# caf\xe9\n")
    latin1 = policyctl(work, "fmt", "latin1.policy")
    assert latin1.code == 2
    assert (
        "latin1.policy:1:6: error[E0005]: not UTF-8 text (byte 5)\n"
        "  |\n1 | # caf\ufffd\n  |      ^\n"
    ) in latin1.err


def test_a_byte_order_mark_is_read_as_check_reads_it(work: Path) -> None:
    """A UTF-8 byte order mark (Windows editors) is no part of the text, from a file or from
    standard input (it was `unexpected character '\ufeff'`)."""
    (work / "bom.policy").write_bytes(b"\xef\xbb\xbf" + MESSY.encode())
    from_file = policyctl(work, "fmt", "bom.policy")
    from_stdin = policyctl(work, "fmt", "-", stdin="\ufeff" + MESSY)
    assert from_file.code == from_stdin.code == 0, from_file.err + from_stdin.err
    assert from_file.out == from_stdin.out == format_text(MESSY)


def test_with_no_policies_directory_the_packaged_set_is_read_never_written(
    tmp_path: Path,
) -> None:
    run = policyctl(tmp_path, "fmt", "--check")
    assert (run.code, run.out) == (0, "")
    write = policyctl(tmp_path, "fmt", "-w")
    assert write.code == 2
    assert "fmt -w needs a PATH" in write.err


def test_comment_tokens_are_collected_by_the_parser() -> None:
    text = 'route a when request.region not # between\n in ["x"] { # after\n}\n'
    _, comments = parse_with_comments(text)
    assert [c.text for c in comments] == ["# between", "# after"]
    assert all(isinstance(c, ast.Comment) for c in comments)
    assert [text[c.span.start : c.span.end] for c in comments] == ["# between", "# after"]
    assert parse_with_comments("route a {}")[1] == ()

"""Editor support: the Pygments lexer and the TextMate grammar of grammar/vscode/ tokenise
every shipped policy with no error token.

The corpus is every policy the repository ships or shows: `policies/`, `examples/` (the
files the parser accepts: `examples/policies/unclosed.policy` is an example of an error),
every ```policy block of README.md and docs/*.md, the golden cases of tests/golden/check/
that parse, and the policy blocks of the error-code catalogue that parse.

The TextMate grammar runs in the real VS Code engine: `vscode-textmate` over
`vscode-oniguruma`, under node, by tests/editors/tokenize.mjs. Its "error token" is the
grammar's last rule, `invalid.illegal.policy`, which takes any character no other rule
takes. The npm packages are pinned in tests/editors/package.json (and its lock file);
`.ci/run` installs them into tests/editors/node_modules (not committed), and the
`node_modules` fixture below does the same when they are missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from _golden import update_requested
from pygments.token import Error, Keyword, Name, Number, Operator, String

from engine.diagnostics import PolicyError
from engine.editors.pygments_lexer import PolicyLexer
from engine.editors.textmate import render
from engine.editors.words import words
from engine.language.explain import read
from engine.language.parser import parse
from engine.resources import codes_dir

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "grammar" / "vscode"
TM_GRAMMAR = VSCODE / "syntaxes" / "policy.tmLanguage.json"
NODE_DIR = Path(__file__).parent / "editors"
POLICY_BLOCK = re.compile(r"^```policy[^\n]*\n(.*?)^```", re.S | re.M)


def _parses(text: str) -> bool:
    try:
        parse(text)
    except PolicyError:
        return False
    return True


def corpus() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted([*ROOT.glob("policies/*.policy"), *ROOT.glob("examples/**/*.policy")]):
        text = path.read_text(encoding="utf-8")
        if _parses(text):
            found[str(path.relative_to(ROOT))] = text
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(POLICY_BLOCK.findall(page.read_text(encoding="utf-8"))):
            found[f"{page.relative_to(ROOT)}#{i + 1}"] = block
    for path in sorted((ROOT / "tests" / "golden" / "check").glob("*.policy")):
        text = path.read_text(encoding="utf-8")
        if _parses(text):
            found[str(path.relative_to(ROOT))] = text
    for path in sorted(codes_dir().glob("*.md")):
        entry = read(path)
        for i, block in enumerate((*entry.wrong, *entry.right)):
            if block.lang == "policy" and _parses(block.text):
                found[f"{path.relative_to(ROOT)}#{i + 1}"] = block.text
    return found


CORPUS = corpus()


def test_the_corpus_holds_what_the_repository_ships() -> None:
    assert "policies/default.policy" in CORPUS
    assert "examples/policies/design.policy" in CORPUS
    assert "examples/policies/unclosed.policy" not in CORPUS  # an example of an error
    assert sum(name.startswith("docs/") for name in CORPUS) >= 5
    assert sum(name.startswith("tests/golden/") for name in CORPUS) >= 20
    assert len(CORPUS) > 150


# ----------------------------------------------------------------------------- Pygments


def _tokens(text: str) -> list[tuple[object, str]]:
    return [(kind, value) for kind, value in PolicyLexer().get_tokens(text) if value.strip()]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_pygments_tokenises_a_shipped_policy_without_errors(name: str) -> None:
    errors = [value for kind, value in _tokens(CORPUS[name]) if kind in Error]
    assert errors == []


def test_pygments_marks_what_the_language_does_not_have() -> None:
    errors = [v for k, v in _tokens('route a when request.region == "eu" && x {}') if k in Error]
    assert errors == ["&", "&"]


def test_pygments_tells_the_kinds_of_words_apart() -> None:
    text = (
        'route vision when request.requires_vision and not request.region in ["eu"] {\n'
        "    prefer anthropic/claude-sonnet-4-6 weight 40  # the best\n"
        "}\n"
        "limit user spend $5 per 1d until 2026-12-31\n"
    )
    kinds = dict((value, kind) for kind, value in _tokens(text))
    assert kinds["route"] in Keyword.Declaration and kinds["limit"] in Keyword.Declaration
    assert kinds["prefer"] in Keyword and kinds["spend"] in Keyword and kinds["per"] in Keyword
    assert kinds["and"] in Operator.Word and kinds["in"] in Operator.Word
    assert kinds["request"] in Name.Builtin and kinds["requires_vision"] in Name.Attribute
    assert kinds["claude-sonnet-4-6"] in Name and kinds["vision"] in Name
    assert kinds["$5"] in Number and kinds["1d"] in Number and kinds["2026-12-31"] in Number
    assert kinds['"eu"'] in String
    assert kinds["# the best"] not in Name


# the words issue 20 added: in-flight caps, leases, shadow limits, waiting, affinity, priority
LLM_TRAFFIC = (
    "shadow limit user 100 per 1m\n"
    "limit user 60 per 1m wait up to 5s\n"
    'limit model "openai/gpt-4o" concurrent 8 lease 10m\n'
    "route agents when request.priority > 0 {\n"
    "    affinity by request.session for 30m\n"
    "    wait up to 2s\n"
    "}\n"
)
LLM_TRAFFIC_WORDS = ("shadow", "concurrent", "lease", "wait", "up", "to", "affinity", "by", "for")


def test_pygments_highlights_the_words_of_llm_traffic_limits() -> None:
    kinds = dict((value, kind) for kind, value in _tokens(LLM_TRAFFIC))
    assert {w: kinds[w] in Keyword for w in LLM_TRAFFIC_WORDS} == dict.fromkeys(
        LLM_TRAFFIC_WORDS, True
    )
    assert kinds["limit"] in Keyword.Declaration and kinds["route"] in Keyword.Declaration
    assert kinds["priority"] in Name.Attribute and kinds["session"] in Name.Attribute
    assert kinds["10m"] in Number and kinds["5s"] in Number
    assert not [value for kind, value in _tokens(LLM_TRAFFIC) if kind in Error]


def test_pygments_finds_the_lexer_by_the_entry_point_pyproject_declares(tmp_path: Path) -> None:
    """A distribution whose entry points are pyproject's, on the path of a fresh interpreter:
    Pygments' own plugin lookup (`get_lexer_by_name`) must find the lexer by it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["entry-points"]["pygments.lexers"]
    assert declared == {"policy": "engine.editors.pygments_lexer:PolicyLexer"}
    dist = tmp_path / "policyctl_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: policyctl-probe\nVersion: 0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in declared.items())
    (dist / "entry_points.txt").write_text(f"[pygments.lexers]\n{lines}")
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from pygments.lexers import get_lexer_by_name, get_lexer_for_filename\n"
        "print(type(get_lexer_by_name('policy')).__name__,"
        " type(get_lexer_for_filename('x.policy')).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["PolicyLexer", "PolicyLexer"]


# ----------------------------------------------------------------------------- TextMate


@pytest.fixture(scope="module")
def node_modules() -> Path:
    installed = NODE_DIR / "node_modules"
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"`{tool}` is not installed (.ci/run installs node and npm)"
    if not (installed / "vscode-textmate").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            check=True,
            timeout=600,
            capture_output=True,
        )
    return installed


def _textmate(texts: dict[str, str]) -> dict[str, dict[str, object]]:
    payload = json.dumps([{"name": name, "text": text} for name, text in texts.items()])
    out = subprocess.run(
        ["node", str(NODE_DIR / "tokenize.mjs"), str(TM_GRAMMAR)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {result["name"]: result for result in json.loads(out.stdout)}


def test_textmate_tokenises_every_shipped_policy_without_illegal_tokens(
    node_modules: Path,
) -> None:
    results = _textmate(CORPUS)
    assert set(results) == set(CORPUS)
    illegal = {name: r["illegal"] for name, r in results.items() if r["illegal"]}
    assert illegal == {}


def test_textmate_marks_what_the_language_does_not_have(node_modules: Path) -> None:
    (result,) = _textmate({"bad": 'route a when request.region == "eu" && x {\n}\n'}).values()
    assert result["illegal"] == [
        {"line": 1, "column": 37, "text": "&"},
        {"line": 1, "column": 38, "text": "&"},
    ]
    scopes = dict(result["tokens"])  # type: ignore[arg-type]
    assert scopes["route"] == "keyword.declaration.policy"
    assert scopes["request"] == "variable.language.policy"
    assert scopes["region"] == "variable.other.member.policy"


def test_textmate_highlights_the_words_of_llm_traffic_limits(node_modules: Path) -> None:
    (result,) = _textmate({"traffic": LLM_TRAFFIC}).values()
    assert result["illegal"] == []
    scopes = dict(result["tokens"])  # type: ignore[arg-type]
    assert {w: scopes[w] for w in LLM_TRAFFIC_WORDS} == dict.fromkeys(
        LLM_TRAFFIC_WORDS, "keyword.other.policy"
    )
    assert scopes["limit"] == "keyword.declaration.policy"
    assert scopes["priority"] == "variable.other.member.policy"


def _alternatives(pattern: str) -> set[str]:
    found = re.fullmatch(r"\\b\(\?:([a-z_|]+)\)\(\?!\[A-Za-z0-9_\.-\]\)", pattern)
    assert found is not None, pattern
    return set(found.group(1).split("|"))


def test_the_textmate_grammar_is_built_from_the_languages_words() -> None:
    """The committed JSON is `engine.editors.textmate`'s: after a keyword is added to the
    grammar, `UPDATE_GOLDEN=1` rewrites it (a static file cannot read the grammar)."""
    if update_requested():
        TM_GRAMMAR.write_text(render(), encoding="utf-8")
    assert TM_GRAMMAR.read_text(encoding="utf-8") == render()
    repository = json.loads(TM_GRAMMAR.read_text(encoding="utf-8"))["repository"]
    language = words()
    assert _alternatives(repository["statements"]["match"]) == language.statements
    assert _alternatives(repository["constants"]["match"]) == language.constants
    assert _alternatives(repository["operators"]["match"]) == language.operators
    assert _alternatives(repository["keywords"]["match"]) == language.keywords
    assert {"route", "require", "contains", "null"} <= language.all()


def test_the_vscode_extension_folder_is_complete() -> None:
    package = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    (language,) = package["contributes"]["languages"]
    (grammar,) = package["contributes"]["grammars"]
    assert language["extensions"] == [".policy"]
    assert (VSCODE / grammar["path"]).resolve() == TM_GRAMMAR.resolve()
    assert grammar["scopeName"] == json.loads(TM_GRAMMAR.read_text())["scopeName"]
    configuration = json.loads((VSCODE / language["configuration"]).read_text(encoding="utf-8"))
    assert configuration["comments"] == {"lineComment": "#"}
    assert ["{", "}"] in configuration["brackets"]
